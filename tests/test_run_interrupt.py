"""One Ctrl-C: no new request reaches the API after it; exit 130 with the resume command."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from support import make_repos, messages, spawn, write_manifest

from runner.runs import Runs
from runner.simulator import SimConfig, Simulator


def test_no_request_arrives_after_the_first_ctrl_c(tmp_path: Path, isolated_state: Path) -> None:
    limits = {"rpm": 600, "itpm": 400_000, "otpm": 100_000, "max_concurrent": 2}
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 6), limits=limits)
    # Four workers, two in-flight slots: two workers wait on the limiter while two requests
    # take their slow time; those two must not go out once Ctrl-C is pressed.
    with Simulator(SimConfig(latency=3.0, seed=5)) as sim:
        proc = spawn(
            "run",
            str(manifest),
            "--mode",
            "single",
            "--workers",
            "4",
            sim=sim,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 120
            while sim.stats()["in_flight"] < 2:
                assert time.monotonic() < deadline and proc.poll() is None, "no requests in flight"
                time.sleep(0.05)
            pressed = sim.now()
            os.killpg(proc.pid, signal.SIGINT)  # like a terminal: the whole process group
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        records = messages(sim)
    after = [r for r in records if r["arrival"] > pressed]
    assert after == []
    assert proc.returncode == 130, err
    assert "interrupted: no new requests" in err
    runs = Runs(isolated_state / "runs.db")
    run_id = runs.run("last").id
    assert f"Resume with: review-runner run --resume {run_id}" in err
    # The two requests in flight were awaited and recorded; the rest wait for the resume.
    assert len(records) == 2 and all(r["status"] == 200 for r in records)
    statuses = sorted(j.status for j in runs.jobs(run_id))
    assert statuses == ["done"] * 2 + ["pending"] * 4
    with sqlite3.connect(isolated_state / "ledger.db") as conn:
        states = dict(conn.execute("SELECT state, count(*) FROM entries GROUP BY state"))
    assert states.get("reserved", 0) == 0 and states.get("unknown", 0) == 0
