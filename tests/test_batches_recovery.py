"""A crash between submitting a batch and recording its id: the next run finds it, or says so.

The crash is reproduced exactly in runs.db: a batch submitted by `--no-wait` has its id taken
back out, so the record says "intent" (recorded before the submission, never after), as a
SIGKILL between the two would leave it.
"""

from __future__ import annotations

import socket
import sqlite3
import time
from pathlib import Path

import pytest
from batch_support import (
    batch_rows,
    doc_of,
    ledger_entries,
    resume,
    run_batches,
    submitted_jobs,
)
from support import cli, ledger_of, make_repos, write_manifest

from runner.client import ApiClient, BatchApi
from runner.simulator import SimConfig, Simulator


def _forget_batch_id(state: Path) -> str:
    """Make the last recorded batch an intent again; returns the time its intent was recorded."""
    with sqlite3.connect(state / "runs.db") as conn:
        conn.execute(
            "UPDATE message_batches SET status = 'intent', batch_id = NULL, submitted_at = NULL"
        )
        (intent_at,) = conn.execute("SELECT intent_at FROM message_batches").fetchone()
    return str(intent_at)


def _submitted_unrecorded(tmp_path: Path, sim: Simulator, state: Path) -> str:
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 2, lines=150))
    first = run_batches(manifest, sim, "--mode", "single", "--no-wait")
    assert first.returncode == 0, first.stderr
    assert len(sim.batch_log()) == 1
    return _forget_batch_id(state)


@pytest.mark.parametrize(
    "delay", [pytest.param(0.0, id="batch-ended"), pytest.param(1.5, id="batch-in-progress")]
)
def test_an_unrecorded_submission_is_found_in_the_list_not_submitted_again(
    tmp_path: Path, isolated_state: Path, delay: float
) -> None:
    with Simulator(SimConfig(seed=11, batch_delay=delay)) as sim:
        intent_at = _submitted_unrecorded(tmp_path, sim, isolated_state)
        result = resume(sim)
        assert result.returncode == 0, result.stderr
        log = sim.batch_log()
        stats = sim.stats()
        jobs = submitted_jobs(sim, isolated_state)
    assert len(log) == 1 and len(jobs) == len(set(jobs)) == 2
    assert (
        f"the batch submitted at {intent_at} was found ({log[0]['id']}): "
        "collecting it, not submitting again"
    ) in result.stderr
    doc = doc_of(result)
    assert doc["status"] == "done" and doc["jobs"]["done"] == 2
    assert [r["batch_id"] for r in batch_rows(isolated_state)] == [log[0]["id"]]
    assert (
        ledger_of(isolated_state).run_totals(doc["run_id"])["cost_micros"]
        == stats["batch_billed_micros"]
    )


def test_an_intent_never_submitted_is_released_and_sent_once(
    tmp_path: Path, isolated_state: Path
) -> None:
    with Simulator(SimConfig(seed=12, batch_delay=5.0)) as elsewhere:
        intent_at = _submitted_unrecorded(tmp_path, elsewhere, isolated_state)
    # The account the resume talks to never saw that batch.
    with Simulator(SimConfig(seed=13)) as sim:
        result = resume(sim)
        assert result.returncode == 0, result.stderr
        log = sim.batch_log()
        stats = sim.stats()
    assert (
        f"the batch whose submission began at {intent_at} was never created "
        "(no such batch in the API's list): its 2 jobs go in a new batch"
    ) in result.stderr
    assert [len(b["custom_ids"]) for b in log] == [2]
    doc = doc_of(result)
    assert doc["jobs"]["done"] == 2
    rows = batch_rows(isolated_state)
    assert [r["status"] for r in rows] == ["not_sent", "collected"]
    # The first reservations were released, the new ones settled: charged once.
    assert (
        ledger_of(isolated_state).run_totals(doc["run_id"])["cost_micros"]
        == stats["batch_billed_micros"]
    )


def test_reservations_not_yet_recorded_in_runs_db_are_released_by_the_resume(
    tmp_path: Path, isolated_state: Path
) -> None:
    # The process died after reserving the requests in the ledger and before writing their
    # reservation ids into runs.db (so before submitting): an intent whose items claim none.
    with Simulator(SimConfig(seed=16, batch_delay=5.0)) as elsewhere:
        _submitted_unrecorded(tmp_path, elsewhere, isolated_state)
    with sqlite3.connect(isolated_state / "runs.db") as conn:
        conn.execute("UPDATE batch_items SET reservation_id = NULL, reservation_month = NULL")
    run_id = doc_run_id(isolated_state)
    assert [e["state"] for e in ledger_entries(isolated_state, run_id)] == ["reserved"] * 2
    with Simulator(SimConfig(seed=17)) as sim:
        result = resume(sim)
        assert result.returncode == 0, result.stderr
        log = sim.batch_log()
        stats = sim.stats()
    assert "2 reservations of this run that no batch claims were released" in result.stderr
    assert [len(b["custom_ids"]) for b in log] == [2]  # submitted once
    assert doc_of(result)["jobs"]["done"] == 2
    states = sorted(e["state"] for e in ledger_entries(isolated_state, run_id))
    assert states == ["released", "released", "settled", "settled"]
    assert (
        ledger_of(isolated_state).run_totals(run_id)["cost_micros"] == stats["batch_billed_micros"]
    )
    assert doc_of(cli("budget", "status", "--json"))["batch_requests_processing"] == 0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreadable_batch_list_stops_and_says_a_batch_may_exist(
    tmp_path: Path, isolated_state: Path
) -> None:
    with Simulator(SimConfig(seed=14, batch_delay=5.0)) as sim:
        intent_at = _submitted_unrecorded(tmp_path, sim, isolated_state)
    env = {"ANTHROPIC_BASE_URL": f"http://127.0.0.1:{_closed_port()}", "ANTHROPIC_API_KEY": "k"}
    result = cli("run", "--resume", "last", "--poll-interval", "0.1", env=env)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"Error: a Message Batch may already exist for this run: a submission began at "
        f"{intent_at} and was not recorded, and the API's list of batches cannot be read "
        "(could not reach the API"
    )
    assert last.endswith(
        "Nothing was submitted again; run `review-runner run --resume "
        f"{doc_run_id(isolated_state)}` once the API answers"
    )
    assert [r["status"] for r in batch_rows(isolated_state)] == ["intent"]


def test_two_unfinished_candidates_stop_without_submitting(
    tmp_path: Path, isolated_state: Path
) -> None:
    with Simulator(SimConfig(seed=15, batch_delay=30.0)) as sim:
        intent_at = _submitted_unrecorded(tmp_path, sim, isolated_state)
        # Another client of the account submits a batch of the same size meanwhile.
        other = BatchApi(ApiClient(sim.base_url, "k")).create(
            [
                {
                    "custom_id": f"other-{i}",
                    "params": {
                        "model": "claude-sonnet-5-5",
                        "max_tokens": 10,
                        "messages": [{"role": "user", "content": "hi"}],
                    },
                }
                for i in range(2)
            ]
        )
        time.sleep(0.01)
        result = resume(sim)
        log = sim.batch_log()
    assert result.returncode == 1
    assert len(log) == 2  # nothing submitted again
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(
        "Error: a Message Batch may already exist for this run: a submission of 2 requests "
        f"began at {intent_at} and was not recorded, and 2 unfinished batches of that size "
        "were created since ("
    )
    assert other.id in message and log[0]["id"] in message
    assert "Nothing was submitted again" in message


def doc_run_id(state: Path) -> str:
    with sqlite3.connect(state / "runs.db") as conn:
        (run_id,) = conn.execute("SELECT id FROM runs").fetchone()
    return str(run_id)
