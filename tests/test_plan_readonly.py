"""`plan` sends, holds and writes nothing; a run without [limits] never lowers the limits that
another live run configured (issue 9)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from support import api_env, cli, make_repos, messages, write_manifest

from runner.simulator import Simulator

DATABASES = ("limiter.db", "ledger.db", "runs.db")


def _rows(state: Path) -> dict[str, dict[str, list[tuple]]]:
    """Every data row of every table of the three databases (absent files: {}); the schema's
    own bookkeeping (_sqlite_migrations, written when a file is created) is not data."""
    out: dict[str, dict[str, list[tuple]]] = {}
    for name in DATABASES:
        path = state / name
        if not path.exists():
            out[name] = {}
            continue
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = [
                t
                for (t,) in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name NOT LIKE '\\_sqlite%' ESCAPE '\\' ORDER BY name"
                )
            ]
            out[name] = {t: sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"'))) for t in tables}
        finally:
            conn.close()
    return out


def _limits(state: Path) -> dict[str, tuple[int, str]]:
    doc = json.loads(cli("limits", "status", "--json").stdout)
    return {k: (v["value"], v["source"]) for k, v in doc["limits"].items()}


def test_plan_writes_no_row_of_any_database(tmp_path: Path, isolated_state: Path) -> None:
    repos = make_repos(tmp_path / "repos", 2)
    configured = write_manifest(tmp_path / "with.toml", repos)
    bare = write_manifest(tmp_path / "bare.toml", repos, limits={})
    with Simulator() as sim:
        cli("budget", "set", "--usd", "20")
        done = cli("run", str(configured), env=api_env(sim))
        assert done.returncode == 0, done.stderr
        before = _rows(isolated_state)
        sent = len(sim.log())
        for manifest in (bare, configured):
            result = cli("plan", str(manifest), "--json", env=api_env(sim))
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout)["decision"]["mode"] in ("concurrent", "single")
        assert len(sim.log()) == sent  # sends nothing
    assert _rows(isolated_state) == before
    # The configured limits stay as the run left them (plan of a bare manifest reset them).
    assert _limits(isolated_state)["itpm"] == (400_000, "config")


def test_plan_on_a_fresh_state_creates_no_limiter_database(
    tmp_path: Path, isolated_state: Path
) -> None:
    bare = write_manifest(tmp_path / "bare.toml", make_repos(tmp_path / "repos", 1), limits={})
    result = cli("plan", str(bare), "--json")
    assert result.returncode == 0, result.stderr
    assert not (isolated_state / "limiter.db").exists()
    assert all(rows == {} or not any(rows.values()) for rows in _rows(isolated_state).values())


CONFIGURER = """
import sys
from pathlib import Path
from runner.limiter import Limiter, Limits
Limiter(Path(sys.argv[1]), Limits(rpm=900, itpm=400_000, otpm=90_000, max_concurrent=6)).close()
print("configured", flush=True)
sys.stdin.read()
"""


def test_a_run_without_limits_never_lowers_what_a_live_run_configured(
    tmp_path: Path, isolated_state: Path
) -> None:
    repos = make_repos(tmp_path / "repos", 1)
    bare = write_manifest(tmp_path / "bare.toml", repos, limits={})
    live = subprocess.Popen(
        [sys.executable, "-c", CONFIGURER, str(isolated_state)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        assert live.stdout is not None and live.stdout.readline().strip() == "configured"
        with Simulator() as sim:
            result = cli("run", str(bare), "--dry-run", env=api_env(sim))
            assert result.returncode == 0, result.stderr
            assert messages(sim) == []
        limits = _limits(isolated_state)
        assert limits["itpm"] == (400_000, "config")
        assert limits["max_concurrent"] == (6, "config")
    finally:
        os.kill(live.pid, signal.SIGKILL)
        live.wait(timeout=30)
    # Its owner gone, the configuration no longer outlives it: the next bare run drops it.
    again = cli("run", str(bare), "--dry-run")
    assert again.returncode == 0, again.stderr
    assert _limits(isolated_state)["itpm"] == (30_000, "default")
