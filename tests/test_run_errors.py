"""Bad usage of `run` and `plan`: one `Error:` line, the documented exit code, nothing lost."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from support import cli, make_repos, write_manifest

from runner.runs import Runs


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


@pytest.fixture
def recorded_state(isolated_state: Path) -> Path:
    """A state directory with a budget and a runs.db holding one recorded run."""
    assert cli("budget", "set", "--usd", "12").returncode == 0
    runs = Runs(isolated_state / "runs.db").open()
    runs.create_run(
        "20261101-000000-abcd",
        manifest="/nowhere/m.toml",
        name="old",
        requested_mode="single",
        out_dir="/nowhere/reports",
        repos=[],
        jobs=[],
    )
    runs.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # all of it in the file we digest
    runs.db.conn.close()
    return isolated_state


def test_resuming_an_unknown_run_exits_2_and_changes_nothing(recorded_state: Path) -> None:
    before = _digest(recorded_state / "runs.db")
    result = cli("run", "--resume", "20990101-000000-ffff", "--simulate")
    assert result.returncode == 2, result.stderr
    [error] = _error_lines(result.stderr)
    assert "--resume 20990101-000000-ffff: no such run in" in error and "runs.db" in error
    assert _digest(recorded_state / "runs.db") == before
    status = json.loads(cli("budget", "status", "--json").stdout)
    assert status["budget_usd"] == 12


def test_resume_last_with_no_run_recorded_exits_2(isolated_state: Path) -> None:
    result = cli("run", "--resume", "last", "--simulate")
    assert result.returncode == 2, result.stderr
    [error] = _error_lines(result.stderr)
    assert "--resume last: no run recorded" in error


def test_run_needs_a_manifest_or_resume(tmp_path: Path) -> None:
    write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 1))
    result = cli("run", "--simulate")
    assert result.returncode == 2
    assert "give a MANIFEST, or --resume RUN_ID|last, or both" in result.stderr
    assert not (tmp_path / "reports").exists()


def test_a_runs_db_from_a_newer_version_is_reported_and_left_as_it_is(
    recorded_state: Path,
) -> None:
    with sqlite3.connect(recorded_state / "runs.db") as conn:
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
            " VALUES ('review-runner-runs', 'm999_from_the_future', '2027-01-01')"
        )
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # all of it in the file we digest
    before = _digest(recorded_state / "runs.db")
    result = cli("run", "--resume", "last", "--simulate")
    assert result.returncode == 2, result.stderr
    [error] = _error_lines(result.stderr)
    assert "runs.db: written by a newer review-runner (schema step m999_from_the_future)" in error
    assert _digest(recorded_state / "runs.db") == before


def test_plan_exits_3_when_the_ledger_would_refuse(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 2))
    assert cli("budget", "set", "--usd", "0.0001").returncode == 0
    result = cli("plan", str(manifest), "--json")
    assert result.returncode == 3, result.stderr
    doc = json.loads(result.stdout)
    assert doc["decision"]["mode"] == "refused"
    assert "concurrent needs" in doc["decision"]["reason"]
    status = json.loads(cli("budget", "status", "--json").stdout)
    assert status["held_usd"] == 0 and status["reserved_usd"] == 0
