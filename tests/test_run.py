"""End-to-end runs: the real CLI in a subprocess, the real SDK, the simulator on loopback."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

import pytest
from support import (
    api_env,
    billed_micros,
    cli,
    ledger_of,
    make_repos,
    messages,
    spawn,
    write_manifest,
)

from runner.runs import Runs
from runner.simulator import SimConfig, Simulator


@pytest.fixture
def twelve(tmp_path: Path) -> Path:
    return write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 12))


def test_twelve_repos_concurrent_ledger_equals_billing(twelve: Path, isolated_state: Path) -> None:
    # Tight limits: the run has to be paced, and must never cause a 429 itself.
    with Simulator(SimConfig(rpm=240, itpm=150_000, otpm=40_000, seed=1)) as sim:
        cli("budget", "set", "--usd", "50")
        result = cli(
            "run",
            str(twelve),
            "--json",
            "--rpm",
            "240",
            "--itpm",
            "150000",
            "--otpm",
            "40000",
            env=api_env(sim),
        )
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        stats = sim.stats()
    assert doc["mode"] == "concurrent"
    assert doc["jobs"] == {"done": 48, "failed": 0, "deferred": 0, "pending": 0, "skipped": 0}
    assert stats["rate_limited"] == 0
    out = Path(doc["out_dir"])
    for i in range(12):
        for name in ("review.md", "findings.json", "findings.sarif"):
            assert (out / f"repo{i:02d}" / name).is_file()
    assert (out / "summary.json").is_file() and (out / "summary.md").is_file()
    totals = ledger_of(isolated_state).run_totals(doc["run_id"])
    assert totals["cost_micros"] == stats["billed_micros"]
    for key in ("input_tokens", "output_tokens", "cache_read_input_tokens"):
        assert doc[key] == stats[key]


def test_budget_fits_single_only_runs_single_and_says_why(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 3))
    with Simulator(SimConfig(seed=2)) as sim:
        plan = json.loads(cli("plan", str(manifest), "--json").stdout)
        single = plan["modes"]["single"]["cost_usd"]
        concurrent = plan["modes"]["concurrent"]["cost_usd"]
        assert single < concurrent
        cli("budget", "set", "--usd", f"{(single + concurrent) / 2:.6f}")
        result = cli("run", str(manifest), "--json", env=api_env(sim))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["mode"] == "single"
    assert "concurrent" in doc["reason"] and "single" in doc["reason"]
    assert doc["jobs"]["done"] == 3


def test_budget_fitting_neither_refuses_with_exit_3_and_sends_nothing(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 2))
    cli("budget", "set", "--usd", "0.0001")
    with Simulator(SimConfig(seed=3)) as sim:
        result = cli("run", str(manifest), env=api_env(sim))
        assert messages(sim) == []
    assert result.returncode == 3
    assert "Refused" in result.stdout
    assert "--mode single" in result.stderr and "budget set" in result.stderr


def test_faults_every_job_completes_and_ledger_matches_billing(
    tmp_path: Path, isolated_state: Path
) -> None:
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 8))
    config = SimConfig(overloaded_rate=0.05, server_error_rate=0.02, drop_rate=0.01, seed=7)
    with Simulator(config) as sim:
        result = cli("run", str(manifest), "--json", "--mode", "concurrent", env=api_env(sim))
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        ledger = ledger_of(isolated_state)
        totals = ledger.run_totals(doc["run_id"])
        unknown = [e for e in ledger.unknown_entries() if e.get("run_id") == doc["run_id"]]
        dropped = [r for r in messages(sim) if r.get("dropped")]
        settled_billing = billed_micros(sim, dropped=False)
        dropped_billing = billed_micros(sim, dropped=True)
    assert doc["jobs"]["done"] == 32
    assert dropped, "the seed should drop at least one request"
    # Settled entries equal what the simulator billed for answered requests; a request
    # dropped after processing is shown as unknown, one entry each, held at its worst case,
    # which covers what the simulator billed for it.
    assert totals["cost_micros"] == settled_billing
    assert len(unknown) == len(dropped) == doc["unknown_requests"] == totals["unknown"]
    assert sum(e["worst_micros"] for e in unknown) >= dropped_billing


def test_sigkill_then_resume_sends_no_done_job_again(tmp_path: Path, isolated_state: Path) -> None:
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 6))
    with Simulator(SimConfig(latency=0.3, seed=5)) as sim:
        proc = spawn(
            "run",
            str(manifest),
            "--mode",
            "concurrent",
            sim=sim,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        runs = Runs(isolated_state / "runs.db")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (isolated_state / "runs.db").exists():
                rows = [j for r in _run_ids(runs) for j in runs.jobs(r)]
                if sum(j.status == "done" for j in rows) >= 8:
                    break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        run_id = _run_ids(runs)[0]
        done_before = {j.id for j in runs.jobs(run_id) if j.status == "done"}
        assert 8 <= len(done_before) < 24
        sent_before = len(messages(sim))
        result = cli("run", "--resume", "last", "--json", env=api_env(sim))
        assert result.returncode == 0, result.stderr
        resent = [r.get("job") for r in messages(sim)[sent_before:]]
    doc = json.loads(result.stdout)
    assert doc["run_id"] == run_id and doc["jobs"]["done"] == 24
    assert not done_before & set(resent)
    out = Path(doc["out_dir"])
    assert all((out / f"repo{i:02d}" / "review.md").is_file() for i in range(6))
    # Each job is settled at most once in the ledger: nothing is charged twice.
    with sqlite3.connect(isolated_state / "ledger.db") as conn:
        settled = [
            job
            for (job,) in conn.execute(
                "SELECT job_id FROM entries WHERE run_id = ? AND state = 'settled'", (run_id,)
            )
        ]
    assert len(settled) == len(set(settled))
    assert {j for j in settled if not j.endswith("/_warm")} >= done_before - {
        j for j in done_before if j.endswith("/_warm")
    }


def _run_ids(runs: Runs) -> list[str]:
    return [row["id"] for row in runs.db.query("SELECT id FROM runs ORDER BY created_at")]


def test_two_runs_at_once_share_the_limiter(tmp_path: Path) -> None:
    limits = {"rpm": 600, "itpm": 400_000, "otpm": 100_000, "max_concurrent": 3}
    first = write_manifest(tmp_path / "a.toml", make_repos(tmp_path / "a", 4), limits=limits)
    second = write_manifest(tmp_path / "b.toml", make_repos(tmp_path / "b", 4), limits=limits)
    with Simulator(SimConfig(latency=0.2, seed=9)) as sim:
        procs = [
            spawn(
                "run",
                str(m),
                "--mode",
                "concurrent",
                "--workers",
                "3",
                sim=sim,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for m in (first, second)
        ]
        errors = [p.communicate(timeout=240)[1] for p in procs]
        stats = sim.stats()
    assert [p.returncode for p in procs] == [0, 0], errors
    assert stats["ok"] >= 32
    assert stats["max_in_flight"] <= 3


HEAD = 'name = "x"\nmodel = "claude-sonnet-4-5"\n'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(f'{HEAD}repos = ["."]\nmodee = "auto"\n', "modee", id="unknown-key"),
        pytest.param(f'{HEAD}repos = ["./nope"]\n', "nope", id="missing-repo"),
        pytest.param(f"{HEAD}repos = [\n", "m.toml", id="malformed-toml"),
        pytest.param(
            f'{HEAD}repos = ["."]\nmax_output_tokens = "lots"\n',
            "max_output_tokens",
            id="wrong-type",
        ),
    ],
)
def test_bad_manifest_exits_2_with_one_line(tmp_path: Path, body: str, message: str) -> None:
    (tmp_path / "m.toml").write_text(body)
    result = cli("run", str(tmp_path / "m.toml"), "--simulate")
    assert result.returncode == 2, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and message in error[0]


def test_unwritable_output_folder_exits_2_before_sending(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 1))
    with Simulator() as sim:
        result = cli("run", str(manifest), "--out", str(blocker / "reports"), env=api_env(sim))
        assert messages(sim) == []
    assert result.returncode == 2
    assert "output folder is not writable" in result.stderr


def test_rejected_key_stops_the_run_with_exit_2(tmp_path: Path, isolated_state: Path) -> None:
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 2))
    cli("budget", "set", "--usd", "5")
    with Simulator(SimConfig(api_key="the-right-key")) as sim:
        result = cli("run", str(manifest), env={**api_env(sim), "ANTHROPIC_API_KEY": "wrong-key"})
    assert result.returncode == 2
    assert "rejected" in result.stderr and "ANTHROPIC_API_KEY" in result.stderr
    assert "wrong-key" not in result.stderr + result.stdout
    # Nothing lost, nothing held: the budget is whole again.
    status = json.loads(cli("budget", "status", "--json").stdout)
    assert status["spent_usd"] == 0 and status["reserved_usd"] == 0 and status["held_usd"] == 0


def test_dry_run_sends_nothing_and_holds_nothing(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 2))
    with Simulator() as sim:
        result = cli("run", str(manifest), "--dry-run", "--json", env=api_env(sim))
        assert sim.log() == []
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["status"] == "planned" and doc["mode"] in ("concurrent", "single")
    status = json.loads(cli("budget", "status", "--json").stdout)
    assert status["held_usd"] == 0


def test_embedded_simulator_is_used_and_announced_without_a_key(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 1))
    result = cli("run", str(manifest), "--mode", "single")
    assert result.returncode == 0, result.stderr
    assert "built-in simulator" in result.stderr
    summary = json.loads(next((tmp_path / "reports").glob("*/summary.json")).read_text())
    assert summary["repos"]


def test_state_is_private_to_its_owner(tmp_path: Path, isolated_state: Path) -> None:
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 1))
    assert cli("run", str(manifest), "--mode", "single", "--simulate").returncode == 0
    assert stat.S_IMODE(isolated_state.stat().st_mode) == 0o700
    files = [p for p in isolated_state.iterdir() if p.is_file()]
    assert {p.name for p in files} >= {"ledger.db", "limiter.db", "runs.db", "limiter.lock"}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {
        p.name: oct(0o600) for p in files
    }


def test_a_pack_larger_than_the_itpm_limit_exits_2_before_sending(tmp_path: Path) -> None:
    repos = make_repos(tmp_path / "repos", 1, lines=400)
    manifest = write_manifest(
        tmp_path / "m.toml",
        repos,
        limits={"rpm": 600, "itpm": 2_000, "otpm": 100_000, "max_concurrent": 4},
    )
    with Simulator() as sim:
        result = cli("run", str(manifest), env=api_env(sim))
        assert messages(sim) == []
    assert result.returncode == 2, result.stderr
    assert "exceeds the itpm limit of 2,000 per minute (configured in [limits]" in result.stderr
    assert "max_input_tokens" in result.stderr


def test_the_api_key_never_reaches_a_file_or_the_output(
    tmp_path: Path, isolated_state: Path
) -> None:
    key = "sk-ant-api03-NEVER-WRITE-ME-0123456789abcdef"
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 2))
    with Simulator() as sim:
        result = cli("run", str(manifest), "--json", env={**api_env(sim), "ANTHROPIC_API_KEY": key})
    assert result.returncode == 0, result.stderr
    assert key not in result.stdout + result.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "ledger.db" for p in written)
    assert any(p.name == "review.md" for p in written)
    for path in written:
        assert key.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("command", [["run", "--resume", "last"], ["run", "MANIFEST"]])
def test_a_corrupt_runs_db_is_reported_and_left_as_it_is(
    tmp_path: Path, isolated_state: Path, command: list[str]
) -> None:
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 1))
    isolated_state.mkdir(parents=True, exist_ok=True)
    garbage = b"this is not a database" * 100
    (isolated_state / "runs.db").write_bytes(garbage)
    args = [str(manifest) if a == "MANIFEST" else a for a in command]
    result = cli(*args, "--simulate")
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [
        f"Error: {isolated_state / 'runs.db'}: not a readable runs database (file is not a database);"
        " move it aside to start a new one"
    ]
    assert "packed" not in result.stderr  # it failed before doing any work
    assert (isolated_state / "runs.db").read_bytes() == garbage
