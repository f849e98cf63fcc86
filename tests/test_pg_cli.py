"""The CLI on PostgreSQL: the same documents as on SQLite, a full run and its resume, and the
errors of a database that is unreachable, misnamed or newer (exit 2, nothing sent)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import psycopg
import pytest
from support import api_env, cli, make_repos, messages, write_manifest

from ledger.store import MIGRATIONS as LEDGER_MIGRATIONS
from runner.runs import Runs
from runner.simulator import SimConfig, Simulator


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def documents() -> tuple[dict, dict]:
    """`budget status --json` and `limits status --json` after the same two settings."""
    assert cli("budget", "set", "--usd", "12.50").returncode == 0
    budget = cli("budget", "status", "--json")
    limits = cli("limits", "status", "--json")
    assert budget.returncode == 0 and limits.returncode == 0, budget.stderr + limits.stderr
    return json.loads(budget.stdout), json.loads(limits.stdout)


def test_budget_and_limits_status_read_the_same_on_both_backends(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_pg = documents()
    monkeypatch.delenv("REVIEW_RUNNER_DATABASE_URL")
    on_sqlite = documents()
    assert on_pg == on_sqlite
    assert on_pg[0]["budget_usd"] == 12.5 and on_pg[0]["remaining_usd"] == 12.5
    with psycopg.connect(pg_url) as conn:
        schemas = {
            name
            for (name,) in conn.execute(
                "SELECT schema_name FROM information_schema.schemata"
                " WHERE schema_name LIKE 'review_runner_%'"
            )
        }
        steps = conn.execute("SELECT count(*) FROM review_runner_ledger._migrations").fetchone()
    assert schemas == {"review_runner_ledger", "review_runner_limiter"}  # runs: only by `run`
    # Each step applied once, however many commands opened the store.
    assert steps == (len(LEDGER_MIGRATIONS._migrations),)


def test_a_run_and_its_resume_keep_their_state_in_postgresql(
    tmp_path: Path, pg_url: str, isolated_state: Path
) -> None:
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 3))
    with Simulator(SimConfig(seed=3)) as sim:
        assert cli("budget", "set", "--usd", "20").returncode == 0
        first = cli("run", str(manifest), "--json", env=api_env(sim))
        assert first.returncode == 0, first.stderr
        sent = len(messages(sim))
        again = cli("run", "--resume", "last", "--json", env=api_env(sim))
        assert again.returncode == 0, again.stderr
        resent = len(messages(sim)) - sent
        billed = sim.stats()["billed_micros"]
    doc = json.loads(first.stdout)
    assert doc["jobs"]["done"] == 12 and doc["jobs"]["failed"] == 0
    assert json.loads(again.stdout)["run_id"] == doc["run_id"] and resent == 0
    # Nothing of it is in the state directory's SQLite files: all of it is in the database.
    assert not list(isolated_state.glob("*.db"))
    runs = Runs(isolated_state / "runs.db")
    assert runs.run("last").id == doc["run_id"]
    assert {job.status for job in runs.jobs(doc["run_id"])} == {"done"}
    status = json.loads(cli("budget", "status", "--json").stdout)
    assert round(status["spent_usd"] * 1_000_000) == billed


def test_an_unreachable_database_is_exit_2_and_nothing_is_sent(tmp_path: Path) -> None:
    url = f"postgresql://review:s3cret-pw@127.0.0.1:{closed_port()}/state"
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 1))
    with Simulator() as sim:
        result = cli("--database-url", url, "run", str(manifest), env=api_env(sim))
        assert messages(sim) == []
    assert result.returncode == 2
    assert "cannot reach the" in result.stderr and "127.0.0.1" in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout  # the password is never shown
    status = cli("budget", "status", env={"REVIEW_RUNNER_DATABASE_URL": url})
    assert status.returncode == 2
    assert status.stderr.startswith("Error: postgresql://review:***@127.0.0.1:")
    assert "cannot reach the ledger database" in status.stderr


def test_a_url_that_is_not_postgresql_is_exit_2() -> None:
    result = cli("budget", "status", env={"REVIEW_RUNNER_DATABASE_URL": "mysql://db/state"})
    assert result.returncode == 2
    assert "REVIEW_RUNNER_DATABASE_URL=mysql://db/state: expected a postgresql://" in result.stderr


def test_a_schema_from_a_newer_version_is_exit_2_and_left_untouched(pg_url: str) -> None:
    assert cli("budget", "set", "--usd", "5").returncode == 0
    with psycopg.connect(pg_url) as conn:
        conn.execute(
            "INSERT INTO review_runner_ledger._migrations VALUES ('ledger', 'm999_future', 'x')"
        )
    result = cli("budget", "status")
    assert result.returncode == 2
    assert "written by a newer review-runner (schema step m999_future)" in result.stderr
    with psycopg.connect(pg_url) as conn:
        (usd,) = conn.execute("SELECT usd_micros FROM review_runner_ledger.budgets").fetchone()
    assert usd == 5_000_000
