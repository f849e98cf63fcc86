"""The Message Batches path on PostgreSQL: its runs.db records go through the store's query(),
so a `--no-wait` submit and its resume keep every batch in the database and charge once."""

from __future__ import annotations

from pathlib import Path

import psycopg
from batch_support import doc_of, resume, run_batches
from support import cli, ledger_of, make_repos, write_manifest

from runner.run.batchrecords import past_durations
from runner.runs import Runs
from runner.simulator import SimConfig, Simulator
from statedb import parse_iso


def test_a_batches_run_and_its_resume_keep_their_records_in_postgresql(
    tmp_path: Path, pg_url: str, isolated_state: Path
) -> None:
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 2, lines=150))
    with Simulator(SimConfig(seed=21, batch_delay=0.5)) as sim:
        first = run_batches(manifest, sim, "--mode", "concurrent", "--no-wait")
        assert first.returncode == 0, first.stderr
        assert doc_of(first)["status"] == "submitted"
        last = resume(sim)
        assert last.returncode == 0, last.stderr
        log = sim.batch_log()
        stats = sim.stats()
    doc = doc_of(last)
    assert doc["status"] == "done" and doc["jobs"]["done"] == 8
    assert [len(b["custom_ids"]) for b in log] == [2, 6]  # phase 1, then phase 2; once each
    assert not list(isolated_state.glob("*.db"))  # nothing in SQLite files
    with psycopg.connect(pg_url) as conn:
        batches = conn.execute(
            "SELECT batch_id, status FROM review_runner_runs.message_batches ORDER BY rowid"
        ).fetchall()
        ended = conn.execute(
            "SELECT submitted_at, ended_at FROM review_runner_runs.message_batches"
            " ORDER BY rowid DESC"
        ).fetchall()
        (items,) = conn.execute(
            "SELECT COUNT(*) FROM review_runner_runs.batch_items WHERE outcome = 'succeeded'"
        ).fetchone()
    assert batches == [(b["id"], "collected") for b in log] and items == 8
    assert (
        ledger_of(isolated_state).run_totals(doc["run_id"])["cost_micros"]
        == (stats["batch_billed_micros"])
    )
    status = doc_of(cli("budget", "status", "--json"))
    assert status["batch_requests_processing"] == 0
    # The next plan's expected batch time is learned from these batches, read from PostgreSQL.
    learned = past_durations(Runs(isolated_state / "runs.db"))
    assert learned == [parse_iso(end) - parse_iso(sent) for sent, end in ended]
    assert len(learned) == 2 and not list(isolated_state.glob("*.db"))
