"""A worker process that dies mid-request is replaced; the run ends normally (issue 9)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from support import ledger_entries, make_repos, messages, spawn, write_manifest

from runner.simulator import SimConfig, Simulator


def _wait_for(condition, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_worker_killed_mid_request_is_replaced_and_its_job_retried(
    tmp_path: Path, isolated_state: Path
) -> None:
    repos = make_repos(tmp_path / "repos", 4)
    manifest = write_manifest(tmp_path / "m.toml", repos)
    # Slow replies: the killed worker is surely waiting on its request.
    with Simulator(SimConfig(latency=2.5, seed=3)) as sim:
        proc = spawn(
            "run",
            str(manifest),
            "--mode",
            "single",
            "--workers",
            "2",
            "--json",
            sim=sim,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            _wait_for(lambda: ledger_entries(isolated_state, "state = 'reserved'"))
            [(pid, job_id), *_] = ledger_entries(isolated_state, "state = 'reserved'")
            os.kill(pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        records = messages(sim)
    assert proc.returncode == 0, err
    assert f"died (exit -9) during {job_id}; replacing it" in err
    doc = json.loads(out)
    assert doc["status"] == "done"
    assert doc["jobs"]["done"] == 4 and doc["jobs"]["failed"] == 0
    unknown = ledger_entries(isolated_state, "state = 'unknown'")
    assert [j for _, j in unknown] == [job_id]
    assert doc["unknown_requests"] == len(unknown) == 1
    assert ledger_entries(isolated_state, "state = 'reserved'") == []
    # The killed job was sent again and settled by another process.
    settled = ledger_entries(isolated_state, "state = 'settled'")
    assert sorted(j for _, j in settled) == sorted({r["job"] for r in records})
    assert job_id in {j for _, j in settled} and pid not in {p for p, _ in settled}
    run_dir = Path(doc["out_dir"])
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == sorted(r.name for r in repos)
    assert all((run_dir / r.name / "review.md").is_file() for r in repos)


def test_a_broken_database_met_in_a_worker_is_one_line_and_exit_2(
    tmp_path: Path, isolated_state: Path
) -> None:
    repos = make_repos(tmp_path / "repos", 6)
    manifest = write_manifest(tmp_path / "m.toml", repos)
    with Simulator(SimConfig(latency=2.5, seed=3)) as sim:
        proc = spawn(
            "run",
            str(manifest),
            "--mode",
            "single",
            "--workers",
            "2",
            sim=sim,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            _wait_for(lambda: ledger_entries(isolated_state, "state = 'reserved'"))
            # The processes running keep their open file; a worker started now cannot open it.
            limiter_db = isolated_state / "limiter.db"
            limiter_db.rename(tmp_path / "limiter.db.kept")
            limiter_db.mkdir()
            [(pid, _), *_] = ledger_entries(isolated_state, "state = 'reserved'")
            os.kill(pid, signal.SIGKILL)
            _, err = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2, err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, err
    assert f"{limiter_db}: cannot open the limiter database" in errors[0]
    assert " failed " not in err and "Traceback" not in err
    # Nothing was failed: the jobs not done are pending, for a resume once the file is fixed.
    with sqlite3.connect(isolated_state / "runs.db") as conn:
        statuses = {s for (s,) in conn.execute("SELECT status FROM jobs")}
    assert statuses <= {"done", "pending"} and "pending" in statuses
    assert ledger_entries(isolated_state, "state = 'reserved'") == []
