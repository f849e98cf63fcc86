"""Resuming a run: refused while its process lives, `run MANIFEST --resume`, changed repos."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from support import api_env, cli, make_repos, messages, spawn, write_manifest

from runner.client import READ_TIMEOUT_S
from runner.runs import Runs
from runner.simulator import SimConfig, Simulator
from statedb import host_name, iso, process_identity, process_started
from statedb.process import _proc_stat

AGENTS = ("code_review", "architecture", "security", "multi_perspective")


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


def _shown(result: subprocess.CompletedProcess[str], out_dir: Path | None = None) -> str:
    """Everything a failed CLI assertion needs: exit code, stdout, stderr, and failed repos."""
    text = f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    summaries = sorted(out_dir.glob("*/summary.json")) if out_dir is not None else []
    for path in summaries:
        repos = json.loads(path.read_text())["repos"]
        failed = [(r["slug"], r["status"], r["error"]) for r in repos if r["status"] != "done"]
        text += f"\n--- {path}: repos not done: {failed}"
    return text


def _wait_running(state: Path, timeout: float = 120) -> str:
    """The id of the first run once runs.db shows it running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (state / "runs.db").exists():
            runs = Runs(state / "runs.db")
            rows = list(runs.db.query("SELECT id FROM runs WHERE status = 'running'"))
            runs.close()
            if rows:
                return str(rows[0]["id"])
        time.sleep(0.05)
    raise AssertionError("the first run never started")


def _interrupt(state: Path, run_id: str, job_ids: list[str]) -> None:
    """Make a finished run look like one stopped part-way: these jobs never got a reply."""
    with sqlite3.connect(state / "runs.db") as conn:
        conn.executemany(
            "UPDATE jobs SET status = 'pending', result = NULL, usage = NULL WHERE id = ?",
            [(j,) for j in job_ids],
        )
        conn.execute("UPDATE runs SET status = 'interrupted' WHERE id = ?", (run_id,))


def _done_run(tmp_path: Path, sim: Simulator, repos: int = 2) -> tuple[Path, dict]:
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", repos))
    result = cli("run", str(manifest), "--mode", "concurrent", "--json", env=api_env(sim))
    assert result.returncode == 0, result.stderr
    return manifest, json.loads(result.stdout)


def test_resume_of_a_live_run_refuses_and_sends_nothing_then_resumes_once_it_is_dead(
    tmp_path: Path, isolated_state: Path
) -> None:
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 2))
    # No reply reaches the first run before its read timeout, however slow the machine: it is
    # alive with every request in flight while the resumes are refused, and when it is killed.
    # (Replies in ~10-30 s let a loaded machine kill it at any point of recording one.)
    with (
        Simulator(SimConfig(latency=READ_TIMEOUT_S + 30)) as slow,
        Simulator(SimConfig()) as second_sim,
    ):
        first = spawn(
            "run",
            str(manifest),
            "--mode",
            "concurrent",
            sim=slow,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            run_id = _wait_running(isolated_state)
            stat = _proc_stat(first.pid)
            assert stat is not None
            started = process_started(stat[1])
            assert started is not None
            refused = cli("run", "--resume", run_id, "--json", env=api_env(second_sim))
            refused_last = cli("run", str(manifest), "--resume", "last", env=api_env(second_sim))
            assert second_sim.log() == []  # not even count_tokens
            owner = Runs(isolated_state / "runs.db").run(run_id)
            assert (owner.pid, owner.status) == (first.pid, "running")
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(10)
        for result in (refused, refused_last):
            assert result.returncode == 2, _shown(result)
            assert result.stdout == "", _shown(result)
            [error] = _error_lines(result.stderr)
            assert error == (
                f"Error: run {run_id} is still running: pid {first.pid} on host "
                f"{host_name()}, started {iso(started)}; wait for it to end, or stop "
                "it, before resuming"
            )
        # Its owner SIGKILLed, the run resumes normally, and ends with every job done.
        resumed = cli("run", "--resume", run_id, "--json", env=api_env(second_sim))
        assert resumed.returncode == 0, _shown(resumed, tmp_path / "reports")
        doc = json.loads(resumed.stdout)
        assert doc["run_id"] == run_id and doc["jobs"]["done"] == 8, _shown(resumed)
        # The first run had no reply: the resume sent every review.
        assert len({r["job"] for r in messages(second_sim) if r["status"] == 200}) == 8
    me = process_identity()
    row = Runs(isolated_state / "runs.db").run(run_id)
    assert row.status == "done" and row.host == me.host and row.pid != first.pid


def test_run_manifest_resume_last_resumes_the_newest_run_of_that_manifest(
    tmp_path: Path, isolated_state: Path
) -> None:
    with Simulator(SimConfig()) as sim:
        manifest, first = _done_run(tmp_path, sim)
        other = write_manifest(tmp_path / "other.toml", make_repos(tmp_path / "more", 1))
        newer = cli("run", str(other), "--mode", "single", "--json", env=api_env(sim))
        assert newer.returncode == 0, newer.stderr
        run_id = first["run_id"]
        _interrupt(isolated_state, run_id, [f"{run_id}/repo01/security"])
        sent = len(messages(sim))
        # The cron form: the nightly's own line with `--resume last` added.
        result = cli("run", str(manifest), "--resume", "last", "--json", env=api_env(sim))
        assert result.returncode == 0, result.stderr
        resent = [r["job"] for r in messages(sim)[sent:]]
    doc = json.loads(result.stdout)
    assert doc["run_id"] == run_id != json.loads(newer.stdout)["run_id"]
    assert doc["status"] == "done" and doc["jobs"]["done"] == 8
    assert f"{run_id}/repo01/security" in resent
    assert not [j for j in resent if j and "/repo00/" in j]


def test_a_copy_of_the_manifest_elsewhere_is_the_runs_own(tmp_path: Path) -> None:
    with Simulator(SimConfig()) as sim:
        manifest, first = _done_run(tmp_path, sim)
        copy = tmp_path / "elsewhere" / "nightly.toml"
        copy.parent.mkdir()
        copy.write_bytes(manifest.read_bytes())
        sent = len(sim.log())
        result = cli("run", str(copy), "--resume", first["run_id"], "--json", env=api_env(sim))
        assert result.returncode == 0, result.stderr
        assert len(sim.log()) == sent  # every job done: nothing to send
    assert json.loads(result.stdout)["run_id"] == first["run_id"]


def test_resume_with_another_manifest_is_refused_naming_both(tmp_path: Path) -> None:
    with Simulator(SimConfig()) as sim:
        manifest, first = _done_run(tmp_path, sim)
        other = write_manifest(tmp_path / "other.toml", make_repos(tmp_path / "more", 1))
        sent = len(sim.log())
        result = cli("run", str(other), "--resume", first["run_id"], env=api_env(sim))
        last = cli("run", str(other), "--resume", "last", env=api_env(sim))
        assert len(sim.log()) == sent
    assert result.returncode == 2, result.stderr
    [error] = _error_lines(result.stderr)
    assert error == (
        f"Error: --resume {first['run_id']}: that run's manifest is {manifest.resolve()}, not "
        f"{other.resolve()}; give the run's own manifest, or none"
    )
    assert last.returncode == 2, last.stderr
    [error] = _error_lines(last.stderr)
    assert error.startswith(f"Error: --resume last: no run of {other.resolve()} recorded in ")


def test_resume_after_a_repo_changed_reviews_all_its_agents_on_the_new_pack(
    tmp_path: Path, isolated_state: Path
) -> None:
    with Simulator(SimConfig()) as sim:
        _manifest, first = _done_run(tmp_path, sim)
        run_id, out = first["run_id"], Path(first["out_dir"])
        old_pack = json.loads((out / "repo00" / "findings.json").read_text())["pack"]
        _interrupt(isolated_state, run_id, [f"{run_id}/repo00/security"])
        (tmp_path / "repos" / "repo00" / "src" / "extra.py").write_text(
            "def added():\n    return 1\n"
        )
        sent = len(messages(sim))
        result = cli("run", "--resume", run_id, "--json", env=api_env(sim))
        assert result.returncode == 0, result.stderr
        resumed = {r["job"]: r["id"] for r in messages(sim)[sent:] if r["status"] == 200}
    doc = json.loads(result.stdout)
    assert doc["status"] == "done" and doc["jobs"]["done"] == 8
    # Every agent of the changed repo again (its done ones too); the other repo untouched.
    assert {j for j in resumed if "/repo00/" in j} >= {f"{run_id}/repo00/{a}" for a in AGENTS}
    assert not [j for j in resumed if "/repo01/" in j]
    with sqlite3.connect(isolated_state / "runs.db") as conn:
        replies = dict(
            conn.execute(
                "SELECT agent, request_id FROM jobs WHERE run_id = ? AND slug = 'repo00'"
                " AND warm = 0",
                (run_id,),
            ).fetchall()
        )
    assert replies == {a: resumed[f"{run_id}/repo00/{a}"] for a in AGENTS}
    new_pack = json.loads((out / "repo00" / "findings.json").read_text())["pack"]
    assert new_pack["sha256"] != old_pack["sha256"]
    assert (
        new_pack["sha256"]
        == Runs(isolated_state / "runs.db").repos(run_id, slug="repo00")[0]["pack_sha256"]
    )
    assert "src/extra.py" in {f["path"] for f in new_pack["files"]}


def test_resume_after_a_repo_left_the_manifest_skips_it_and_ends_done(
    tmp_path: Path, isolated_state: Path
) -> None:
    with Simulator(SimConfig()) as sim:
        manifest, first = _done_run(tmp_path, sim)
        run_id = first["run_id"]
        _interrupt(isolated_state, run_id, [f"{run_id}/repo01/{a}" for a in AGENTS[1:]])
        write_manifest(manifest, [tmp_path / "repos" / "repo00"])
        sent = len(sim.log())
        result = cli("run", "--resume", run_id, "--json", env=api_env(sim))
        assert result.returncode == 0, result.stderr
        assert len(sim.log()) == sent
    doc = json.loads(result.stdout)
    assert doc["status"] == "done"
    jobs_doc = doc["jobs"]
    assert (jobs_doc["done"], jobs_doc["skipped"], jobs_doc["pending"]) == (5, 3, 0)
    jobs = {j.agent: j for j in Runs(isolated_state / "runs.db").jobs(run_id, slug="repo01")}
    assert [a for a in AGENTS if jobs[a].status == "skipped"] == list(AGENTS[1:])
    assert {jobs[a].error for a in AGENTS[1:]} == {"no longer in the manifest"}
    summary = json.loads((Path(doc["out_dir"]) / "summary.json").read_text())
    [row] = [r for r in summary["repos"] if r["slug"] == "repo01"]
    assert row["status"] == "skipped"
    assert row["error"].count(": no longer in the manifest") == 3


CLAIM = """
import sys, time
from pathlib import Path
from runner.runs import Runs
runs = Runs(Path(sys.argv[1])).open()
while time.time() < float(sys.argv[3]):
    time.sleep(0.001)
print("refused" if runs.claim(sys.argv[2]) else "owner", flush=True)
sys.stdin.read()  # stay alive, the owner, until every other claim is made
"""


def test_resumes_racing_for_a_dead_run_exactly_one_takes_it(
    tmp_path: Path, isolated_state: Path
) -> None:
    with Simulator(SimConfig()) as sim:
        _manifest, first = _done_run(tmp_path, sim, repos=1)
    run_id = first["run_id"]
    _interrupt(isolated_state, run_id, [f"{run_id}/repo00/security"])  # its process is gone
    start = time.time() + 3
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIM, str(isolated_state / "runs.db"), run_id, str(start)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        said = sorted(p.stdout.readline().strip() for p in racers if p.stdout)
    finally:
        for p in racers:
            p.communicate(timeout=30)
    assert said == ["owner", "refused", "refused", "refused"]


def test_a_repo_completed_but_not_reported_when_its_run_died_is_reported_on_resume(
    tmp_path: Path, isolated_state: Path
) -> None:
    with Simulator(SimConfig()) as sim:
        _manifest, first = _done_run(tmp_path, sim)
        run_id, out = first["run_id"], Path(first["out_dir"])
        # SIGKILL between repo00's last reply (in runs.db) and its report; repo01 unfinished.
        for name in ("review.md", "findings.json", "findings.sarif"):
            (out / "repo00" / name).unlink()
        _interrupt(isolated_state, run_id, [f"{run_id}/repo01/security"])
        result = cli("run", "--resume", run_id, "--json", env=api_env(sim))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["jobs"]["done"] == 8
    assert {p.name for p in (out / "repo00").iterdir()} == {
        "review.md",
        "findings.json",
        "findings.sarif",
    }
