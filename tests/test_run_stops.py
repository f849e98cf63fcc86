"""How a run stops: the spend cap, a budget used up mid-run, Ctrl-C, and poor limiter health."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from support import api_env, cli, make_repos, messages, spawn, write_manifest

from runner.limiter import Limiter
from runner.runs import Runs
from runner.simulator import SimConfig, Simulator


def _open_entries(state: Path) -> int:
    with sqlite3.connect(state / "ledger.db") as conn:
        return conn.execute("SELECT count(*) FROM entries WHERE state = 'reserved'").fetchone()[0]


def test_spend_cap_sends_nothing_more_defers_the_rest_and_exits_3(
    tmp_path: Path, isolated_state: Path
) -> None:
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 8))
    with Simulator(SimConfig(spend_cap_usd=0.02, seed=4)) as sim:
        result = cli(
            "run", str(manifest), "--mode", "single", "--workers", "1", "--json", env=api_env(sim)
        )
        capped = [r for r in messages(sim) if r.get("limit") == "spend"]
    assert result.returncode == 3, result.stderr
    doc = json.loads(result.stdout)
    assert doc["stop"] == "spend_cap" and doc["status"] == "deferred"
    assert doc["jobs"]["done"] >= 1 and doc["jobs"]["deferred"] >= 1
    assert doc["jobs"]["done"] + doc["jobs"]["deferred"] == 8
    # One worker: after the first spend-cap 429 nothing more is sent.
    assert len(capped) == 1
    assert "spend limit" in result.stderr
    assert _open_entries(isolated_state) == 0
    status = json.loads(cli("budget", "status", "--json").stdout)
    assert status["reserved_usd"] == 0 and status["held_usd"] == 0


def test_budget_used_up_mid_run_defers_then_resume_finishes(
    tmp_path: Path, isolated_state: Path
) -> None:
    repos = make_repos(tmp_path / "repos", 3)
    manifest = write_manifest(tmp_path / "m.toml", repos, max_output_tokens=8192)
    plan = json.loads(cli("plan", str(manifest), "--mode", "single", "--json").stdout)
    projected = plan["modes"]["single"]["cost_usd"]
    # Enough for the projection, not for four worst cases in flight at once.
    cli("budget", "set", "--usd", f"{projected * 1.02:.6f}")
    # Slow replies, so that the four workers hold their reservations at the same time.
    with Simulator(SimConfig(latency=4.0, seed=6)) as sim:
        result = cli("run", str(manifest), "--mode", "single", "--json", env=api_env(sim))
        assert result.returncode == 3, result.stderr
        doc = json.loads(result.stdout)
        assert doc["stop"] == "budget" and doc["jobs"]["deferred"] >= 1
        assert doc["jobs"]["failed"] == 0
        assert "budget" in result.stderr and "--resume" in result.stderr
        cli("budget", "set", "--usd", "10")
        sent = len(messages(sim))
        again = cli("run", "--resume", doc["run_id"], "--json", env=api_env(sim))
        assert again.returncode == 0, again.stderr
        resent = len(messages(sim)) - sent
    final = json.loads(again.stdout)
    assert final["jobs"]["done"] == 3
    assert resent == doc["jobs"]["deferred"]
    assert _open_entries(isolated_state) == 0


def test_ctrl_c_waits_for_requests_in_flight_and_exits_130(
    tmp_path: Path, isolated_state: Path
) -> None:
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 8))
    with Simulator(SimConfig(latency=0.6, seed=8)) as sim:
        proc = spawn(
            "run",
            str(manifest),
            "--mode",
            "single",
            sim=sim,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any(r.get("start") for r in messages(sim)):
            time.sleep(0.05)
        # Like a terminal: the whole process group gets SIGINT.
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=90)
        records = messages(sim)
    assert proc.returncode == 130, err
    assert "Resume with: review-runner run --resume" in err
    # Every request that was sent got its answer: nothing abandoned, nothing left reserved.
    assert records and all(r["status"] == 200 for r in records)
    assert _open_entries(isolated_state) == 0
    runs = Runs(isolated_state / "runs.db")
    run_id = runs.run("last").id
    assert runs.run(run_id).status == "interrupted"
    done = [j for j in runs.jobs(run_id) if j.status == "done"]
    assert len(done) == len(records) < 8


def test_poor_limiter_health_makes_auto_prefer_single_and_say_why(
    tmp_path: Path, isolated_state: Path
) -> None:
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 2))
    limiter = Limiter(isolated_state)
    for _ in range(3):
        limiter.record(status=429, latency=0.1)
    limiter.close()
    result = cli("plan", str(manifest), "--json")
    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout)["decision"]
    assert decision["mode"] == "single"
    assert "health" in decision["reason"] and "429" in decision["reason"]
