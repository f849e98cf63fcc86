"""A job whose worker keeps dying is failed alone; the other jobs finish (issue 9)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from support import ledger_entries, make_repos, messages, spawn, write_manifest

from runner.run.pool import MAX_DEATHS
from runner.simulator import SimConfig, Simulator


def _kill_each_worker_holding(state: Path, job_suffix: str, times: int) -> list[tuple[int, str]]:
    """SIGKILL the worker reserving `...job_suffix` each time a new one does, `times` times."""
    killed: list[tuple[int, str]] = []
    deadline = time.monotonic() + 150
    while len(killed) < times:
        assert time.monotonic() < deadline, f"timed out after killing {killed}"
        holders = ledger_entries(state, "state = 'reserved' AND job_id LIKE ?", f"%{job_suffix}")
        for pid, job_id in holders:
            if (pid, job_id) not in killed:
                os.kill(pid, signal.SIGKILL)
                killed.append((pid, job_id))
        time.sleep(0.05)
    return killed


def test_a_job_whose_worker_dies_max_deaths_times_fails_alone(
    tmp_path: Path, isolated_state: Path
) -> None:
    repos = make_repos(tmp_path / "repos", 3)
    manifest = write_manifest(tmp_path / "m.toml", repos)
    bad = repos[1].name
    # Slow replies: each worker holding the doomed job is surely waiting on its request.
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
            killed = _kill_each_worker_holding(isolated_state, f"/{bad}/combined", MAX_DEATHS)
            out, err = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        records = messages(sim)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    [job_id] = {j for _, j in killed}
    assert len({p for p, _ in killed}) == MAX_DEATHS  # a new worker each time
    for pid, _ in killed:
        assert f"worker {pid} died (exit -9) during {job_id}; replacing it" in err
    reason = f"its worker process died {MAX_DEATHS} times (last exit -9)"
    assert f"{job_id} failed {reason}" in err
    doc = json.loads(out)
    assert doc["status"] == "failed"
    jobs = doc["jobs"]
    assert (jobs["done"], jobs["failed"], jobs["deferred"], jobs["pending"]) == (2, 1, 0, 0)
    # Every killed request is an unknown entry, charged at its worst case; none is left reserved.
    unknown = ledger_entries(isolated_state, "state = 'unknown'")
    assert sorted(unknown) == sorted(killed)
    assert doc["unknown_requests"] == MAX_DEATHS
    assert ledger_entries(isolated_state, "state = 'reserved'") == []
    # The doomed job was never settled; the others were, once each.
    settled = [j for _, j in ledger_entries(isolated_state, "state = 'settled'")]
    assert job_id not in settled
    assert sorted(settled) == sorted({r["job"] for r in records} - {job_id})
    run_dir = Path(doc["out_dir"])
    rows = {r["slug"]: r for r in json.loads((run_dir / "summary.json").read_text())["repos"]}
    assert rows[bad]["status"] == "failed"
    assert rows[bad]["error"] == f"combined: {reason}"
    for good in (repos[0].name, repos[2].name):
        assert rows[good]["status"] == "done"
        assert (run_dir / good / "review.md").is_file()
