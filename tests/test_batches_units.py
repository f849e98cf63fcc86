"""The batches path in pieces: phases, custom_ids, splitting, result kinds, the ledger's side."""

from __future__ import annotations

import re
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest
from support import make_repos, write_manifest

from jobs.manifest import load_manifest
from ledger.ledger import Ledger
from ledger.modes import Mode
from ledger.prices import Price, cost_micros, worst_case_micros
from runner.run.batches import split, unanswered
from runner.run.batchplan import batch_jobs, phase_seconds
from runner.run.batchrecords import BatchRecords, BatchStatus, past_durations
from runner.run.plan import build_jobs, pack_all, with_prompts
from runner.runs import Runs

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
PRICE = Price(
    input=Decimal(2),
    output=Decimal(10),
    cache_write_5m=Decimal("2.5"),
    cache_write_1h=Decimal(4),
    cache_read=Decimal("0.2"),
)


@pytest.fixture
def works(tmp_path: Path, isolated_state: Path) -> tuple:
    path = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 2, lines=150))
    manifest = load_manifest(path)
    return manifest, with_prompts(pack_all(manifest.repos, isolated_state / "repos"), manifest)


def test_concurrent_goes_in_two_phases_with_the_1h_ttl_and_no_warm_up(works: tuple) -> None:
    manifest, ws = works
    jobs = batch_jobs(build_jobs("R", manifest, ws, Mode.CONCURRENT))
    assert not any(j.warm for j in jobs) and len(jobs) == 8
    for slug in ("repo00", "repo01"):
        first, *rest = [j for j in jobs if j.slug == slug]
        assert first.after is None and first.cache_write > 0 and first.cache_read == 0
        assert all(j.after == first.id and j.cache_read == first.cache_write for j in rest)
        assert all(j.cache_ttl == "1h" for j in (first, *rest))


def test_single_mode_is_one_phase_without_cache_markers(works: tuple) -> None:
    manifest, ws = works
    jobs = batch_jobs(build_jobs("R", manifest, ws, Mode.SINGLE))
    assert len(jobs) == 2 and not any(j.cache or j.after for j in jobs)


def test_custom_ids_are_valid_unique_and_map_back_to_their_jobs(isolated_state: Path) -> None:
    runs = Runs(isolated_state / "runs.db")
    run_id = "20261204-181000-ab12"
    runs.create_run(
        run_id, manifest="m", name="n", requested_mode="auto", out_dir="o", repos=[], jobs=[]
    )
    records = BatchRecords(runs)
    jobs = [f"{run_id}/repo{i}/code_review" for i in range(3)]
    first, ids1 = records.record_intent(run_id, 1, jobs)
    _, ids2 = records.record_intent(run_id, 2, jobs)
    assert all(CUSTOM_ID.match(c) for c in ids1 + ids2)
    assert len(set(ids1 + ids2)) == 6
    assert [i.job_id for i in records.items(first.key)] == jobs
    assert first.status == BatchStatus.INTENT and records.in_flight(run_id) == set(jobs)
    records.submitted(first.key, "msgbatch_1")
    assert records.known_batch_ids() == {"msgbatch_1"}
    # A long run id is cut, never made invalid.
    long_id = "x" * 80 + "/.:"
    runs.create_run(
        long_id, manifest="m", name="n", requested_mode="auto", out_dir="o", repos=[], jobs=[]
    )
    _, ids = records.record_intent(long_id, 1, ["a"])
    assert CUSTOM_ID.match(ids[0])


def test_split_keeps_each_batch_within_the_request_and_size_limits(works: tuple) -> None:
    manifest, ws = works
    jobs = list(batch_jobs(build_jobs("R", manifest, ws, Mode.CONCURRENT)))  # 8
    assert [len(c) for c in split(jobs, [10] * 8, max_requests=3)] == [3, 3, 2]
    assert [len(c) for c in split(jobs, [1000] * 8, max_bytes=2300)] == [2, 2, 2, 2]
    assert [c for chunk in split(jobs, [1] * 8) for c in chunk] == jobs  # order kept
    assert split([], []) == []


@pytest.mark.parametrize(
    ("result", "text", "final"),
    [
        pytest.param(
            {
                "type": "errored",
                "error": {"error": {"type": "invalid_request_error", "message": "max_tokens: bad"}},
            },
            "batch request errored: invalid_request_error: max_tokens: bad",
            True,
            id="invalid-fails",
        ),
        pytest.param(
            {
                "type": "errored",
                "error": {"error": {"type": "overloaded_error", "message": "Overloaded"}},
            },
            "batch request errored: overloaded_error: Overloaded",
            False,
            id="overloaded-again",
        ),
        pytest.param({"type": "expired"}, "batch request expired (not billed)", False, id="exp"),
        pytest.param({"type": "canceled"}, "batch request canceled (not billed)", False, id="can"),
    ],
)
def test_unanswered_results_say_what_and_whether_final(
    result: dict, text: str, final: bool
) -> None:
    assert unanswered(result) == (text, final)


def test_batch_prices_are_half_and_1h_writes_priced_as_such() -> None:
    usage = {"input_tokens": 1000, "output_tokens": 100, "cache_creation_input_tokens": 0}
    assert cost_micros(PRICE, usage, batch=True) * 2 == cost_micros(PRICE, usage)
    assert worst_case_micros(PRICE, 1000, 100, batch=True) * 2 == worst_case_micros(
        PRICE, 1000, 100
    )
    # The 1-hour write (4/M) is the worst input price, above the 5-minute one.
    assert worst_case_micros(PRICE, 1000, 0, cache_ttl="1h") == 4000


def test_batch_reservations_outlive_their_process_and_show_as_processing(
    isolated_state: Path,
) -> None:
    isolated_state.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(isolated_state / "ledger.db")
    # Counted: the local estimate's safety margin is not this test's subject.
    ledger.reserve(
        "R", "R/a/x", "claude-sonnet-5-5", 1000, 100, batch=True, cache_ttl="1h", counted=True
    )
    ledger.reserve("R", "R/a/y", "claude-sonnet-5-5", 1000, 100)
    with sqlite3.connect(isolated_state / "ledger.db") as conn:
        conn.execute("UPDATE entries SET pid = 999999999")  # both owners are dead now
    assert ledger.sweep() == 1  # only the Messages request becomes unknown
    status = ledger.status()
    assert status.batch_processing == 1 and status.unknown_reservations == 1
    assert status.to_json()["batch_requests_processing"] == 1
    # Held at the 1-hour write price, halved: (1000 * 4 + 100 * 10) / 2 micro-dollars.
    assert status.reserved_micros == 2500


def test_phase_time_is_the_median_of_past_batches_or_the_prior(isolated_state: Path) -> None:
    assert phase_seconds([]) == 3600.0
    assert phase_seconds([10.0, 30.0, 20.0]) == 20.0
    assert past_durations(Runs(isolated_state / "runs.db")) == []  # no file: nothing is created
    assert not (isolated_state / "runs.db").exists()
