"""The Message Batches path end to end: the real CLI in a subprocess, the real SDK, the simulator.

What issue 12 asks to show: every report written and the ledger equal to the simulator's
billing in each mode; expired and errored items submitted again and then done; a SIGKILL while
waiting, then `--resume last`, submits nothing twice; `--no-wait` then `--resume`; a budget that
fits on batches and not on messages is admitted there, and `plan` says why.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from batch_support import (
    POLL,
    batch_rows,
    doc_of,
    ledger_entries,
    resume,
    run_batches,
    submitted_jobs,
)
from support import api_env, cli, ledger_of, make_repos, spawn, write_manifest

from runner.runs import Runs
from runner.simulator import SimConfig, Simulator

REPORTS = ("review.md", "findings.json", "findings.sarif")


def _manifest(tmp_path: Path, count: int, **extra: object) -> Path:
    # lines=150: packs long enough to cache (over 1,024 tokens), as real repos are.
    return write_manifest(
        tmp_path / "m.toml", make_repos(tmp_path / "repos", count, lines=150), **extra
    )


def _assert_reports(doc: dict, count: int) -> None:
    out = Path(doc["out_dir"])
    for i in range(count):
        for name in REPORTS:
            assert (out / f"repo{i:02d}" / name).is_file(), (i, name)
    assert (out / "summary.json").is_file()


def test_twelve_repos_in_each_mode_on_batches_ledger_equals_billing(
    tmp_path: Path, isolated_state: Path
) -> None:
    manifest = _manifest(tmp_path, 12)
    with Simulator(SimConfig(seed=1)) as sim:
        concurrent = run_batches(manifest, sim, "--mode", "concurrent")
        assert concurrent.returncode == 0, concurrent.stderr
        after_concurrent = sim.stats()
        log_concurrent = sim.batch_log()
        # The same repos again: --full, or unchanged repos are not sent (incremental nights).
        single = run_batches(manifest, sim, "--mode", "single", "--full")
        assert single.returncode == 0, single.stderr
        stats = sim.stats()
        records = sim.log()
    c_doc, s_doc = doc_of(concurrent), doc_of(single)
    assert c_doc["mode"] == "concurrent" and s_doc["mode"] == "single"
    assert c_doc["jobs"] == {"done": 48, "failed": 0, "deferred": 0, "pending": 0, "skipped": 0}
    assert s_doc["jobs"] == {"done": 12, "failed": 0, "deferred": 0, "pending": 0, "skipped": 0}
    _assert_reports(c_doc, 12)
    _assert_reports(s_doc, 12)
    # Replies became findings as on the Messages path (the findings tool's input, parsed).
    runs = Runs(isolated_state / "runs.db")
    results = [r.result for d in (c_doc, s_doc) for r in runs.jobs(d["run_id"])]
    assert len(results) == 60 and all(r and r["status"] == "ok" for r in results)
    assert sum(len(r["findings"]) for r in results if r) > 0
    # Two phases: the first agent of each repo, then the other three once it has ended.
    assert [len(b["custom_ids"]) for b in log_concurrent] == [12, 36]
    # Nothing went through the Messages API, so the per-minute limits were never used.
    assert not [r for r in records if r.get("path") == "/v1/messages"]
    ledger = ledger_of(isolated_state)
    c_cost = ledger.run_totals(c_doc["run_id"])["cost_micros"]
    s_cost = ledger.run_totals(s_doc["run_id"])["cost_micros"]
    assert c_cost == after_concurrent["batch_billed_micros"]
    assert c_cost + s_cost == stats["batch_billed_micros"] == stats["billed_micros"]
    # Phase 2 reads the pack phase 1 wrote: every one of its 36 requests is a cache hit.
    phase2 = {c for c in log_concurrent[1]["custom_ids"]}
    hits = [
        r for r in records if r.get("custom_id") in phase2 and r["usage"]["cache_read_input_tokens"]
    ]
    assert len(hits) == 36
    # Single mode sends no cache markers: nothing written, nothing read.
    single_entries = ledger_entries(isolated_state, s_doc["run_id"])
    assert all(e["cache_creation_input_tokens"] == 0 for e in single_entries)
    assert all(e["batch"] == 1 and e["state"] == "settled" for e in single_entries)
    status = cli("budget", "status", "--json")
    assert doc_of(status)["batch_spent_usd"] == pytest.approx((c_cost + s_cost) / 1e6)
    assert doc_of(status)["batch_requests_processing"] == 0


def test_expired_and_errored_items_are_submitted_again_then_done(
    tmp_path: Path, isolated_state: Path
) -> None:
    manifest = _manifest(tmp_path, 4)
    config = SimConfig(seed=4, batch_expire_rate=0.15, batch_error_rate=0.15)
    with Simulator(config) as sim:
        result = run_batches(manifest, sim, "--mode", "concurrent", "--max-attempts", "10")
        assert result.returncode == 0, result.stderr
        stats = sim.stats()
        jobs = submitted_jobs(sim, isolated_state)
    doc = doc_of(result)
    assert doc["jobs"]["done"] == 16
    assert stats["batch_expired"] > 0 and stats["batch_errored"] > 0
    # Each job was submitted once more per unanswered attempt, and answered exactly once.
    assert len(jobs) == 16 + stats["batch_expired"] + stats["batch_errored"]
    assert stats["batch_succeeded"] == 16
    entries = ledger_entries(isolated_state, doc["run_id"])
    assert Counter(e["state"] for e in entries) == {
        "settled": 16,
        "released": stats["batch_expired"] + stats["batch_errored"],
    }
    assert (
        ledger_of(isolated_state).run_totals(doc["run_id"])["cost_micros"]
        == stats["batch_billed_micros"]
    )
    _assert_reports(doc, 4)


def test_unknown_model_errors_are_retried_a_bounded_number_of_times_then_fail(
    tmp_path: Path, isolated_state: Path
) -> None:
    # The ledger has a price for the model, the simulated account does not serve it.
    isolated_state.mkdir(parents=True, exist_ok=True)
    (isolated_state / "prices.json").write_text(
        '{"models": {"claude-gone-1": {"input": 1, "output": 5, "cache_write_5m": 1.25,'
        ' "cache_write_1h": 2, "cache_read": 0.1}}}'
    )
    manifest = _manifest(tmp_path, 2, model="claude-gone-1")
    with Simulator(SimConfig(seed=6)) as sim:
        result = run_batches(manifest, sim, "--mode", "single", "--max-attempts", "3")
        batches = sim.batch_log()
    assert result.returncode == 1, result.stderr
    doc = doc_of(result)
    assert doc["status"] == "failed" and doc["jobs"]["failed"] == 2
    assert [len(b["custom_ids"]) for b in batches] == [2, 2, 2]
    assert (
        "batch request errored: not_found_error: model: claude-gone-1 (after 3 batch attempts)"
        in (result.stderr)
    )
    assert doc["cost_usd"] == 0
    review = (Path(doc["out_dir"]) / "repo00" / "review.md").read_text()
    assert "not_found_error" in review


def _wait_for(predicate, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def _submitted(state: Path, count: int):  # type: ignore[no-untyped-def]
    def check() -> bool:
        try:
            rows = batch_rows(state)
        except Exception:  # runs.db not there yet, or being created
            return False
        return sum(r["status"] == "submitted" for r in rows) >= count

    return check


def test_sigkill_while_waiting_then_resume_submits_nothing_twice(
    tmp_path: Path, isolated_state: Path
) -> None:
    manifest = _manifest(tmp_path, 4)
    with Simulator(SimConfig(seed=7, batch_delay=2.0)) as sim:
        proc = spawn(
            "run",
            str(manifest),
            "--api",
            "batches",
            "--mode",
            "concurrent",
            "--poll-interval",
            POLL,
            sim=sim,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for(_submitted(isolated_state, 1))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert len(sim.batch_log()) == 1
        # The kill left the batch's requests held, shown as processing, never as free.
        status = doc_of(cli("budget", "status", "--json"))
        assert status["batch_requests_processing"] == 4
        assert status["unknown_reservations"] == 0
        result = resume(sim)
        assert result.returncode == 0, result.stderr
        jobs = submitted_jobs(sim, isolated_state)
        stats = sim.stats()
    doc = doc_of(result)
    assert doc["jobs"]["done"] == 16
    assert sorted(jobs) == sorted(set(jobs)) and len(jobs) == 16  # no job submitted twice
    assert (
        ledger_of(isolated_state).run_totals(doc["run_id"])["cost_micros"]
        == stats["batch_billed_micros"]
    )
    _assert_reports(doc, 4)


def test_no_wait_submits_and_exits_0_then_resume_collects(
    tmp_path: Path, isolated_state: Path
) -> None:
    manifest = _manifest(tmp_path, 3)
    with Simulator(SimConfig(seed=8, batch_delay=1.0)) as sim:
        first = run_batches(manifest, sim, "--mode", "concurrent", "--no-wait")
        assert first.returncode == 0, first.stderr
        doc = doc_of(first)
        assert doc["status"] == "submitted"
        assert doc["resume"] == f"review-runner run --resume {doc['run_id']}"
        assert "Collect with" in first.stderr or "collect with" in first.stderr
        assert len(sim.batch_log()) == 1
        status = doc_of(cli("budget", "status", "--json"))
        assert status["batch_requests_processing"] == 3
        text = cli("budget", "status").stdout
        assert "spent at the batch price; 3 request(s) still processing" in text
        # A second --no-wait collects phase 1 once it has ended and submits phase 2.
        time.sleep(1.2)
        second = resume(sim, "--no-wait")
        assert second.returncode == 0, second.stderr
        assert doc_of(second)["status"] == "submitted"
        assert [len(b["custom_ids"]) for b in sim.batch_log()] == [3, 9]
        last = resume(sim)
        assert last.returncode == 0, last.stderr
        jobs = submitted_jobs(sim, isolated_state)
        stats = sim.stats()
    final = doc_of(last)
    assert final["run_id"] == doc["run_id"] and final["status"] == "done"
    assert final["jobs"]["done"] == 12 and len(jobs) == len(set(jobs)) == 12
    assert (
        ledger_of(isolated_state).run_totals(doc["run_id"])["cost_micros"]
        == stats["batch_billed_micros"]
    )
    assert doc_of(cli("budget", "status", "--json"))["batch_requests_processing"] == 0
    _assert_reports(final, 3)


def test_a_resume_near_the_budget_projects_only_what_is_still_to_submit(
    tmp_path: Path, isolated_state: Path
) -> None:
    manifest = _manifest(tmp_path, 2)
    with Simulator(SimConfig(seed=10, batch_delay=1.0)) as sim:
        first = run_batches(manifest, sim, "--mode", "single", "--no-wait")
        assert first.returncode == 0, first.stderr
        run_id = doc_of(first)["run_id"]
        held = sum(e["worst_micros"] for e in ledger_entries(isolated_state, run_id))
        with sqlite3.connect(isolated_state / "ledger.db") as conn:
            (projected,) = conn.execute(
                "SELECT projected FROM runs WHERE run_id = ?", [run_id]
            ).fetchone()
        expected = json.loads(projected)["single"]["cost_usd"] * 1_000_000
        # The batch in flight is held at its worst case; what remains cannot hold the run's
        # projection a second time, but nothing is left to submit.
        budget = (held + expected / 2) / 1_000_000
        assert cli("budget", "set", "--usd", f"{budget:.6f}").returncode == 0
        last = resume(sim)
        assert last.returncode == 0, last.stderr
        stats = sim.stats()
        log = sim.batch_log()
    doc = doc_of(last)
    assert doc["status"] == "done" and doc["jobs"]["done"] == 2
    assert "mode: single (on the batches API (batch prices): single needs $0.00" in last.stderr
    assert [len(b["custom_ids"]) for b in log] == [2]
    assert (
        ledger_of(isolated_state).run_totals(run_id)["cost_micros"] == stats["batch_billed_micros"]
    )


def test_a_budget_that_fits_on_batches_only_is_admitted_there_and_plan_says_why(
    tmp_path: Path, isolated_state: Path
) -> None:
    manifest = _manifest(tmp_path, 3)
    plan_m = doc_of(cli("plan", str(manifest), "--mode", "concurrent", "--json"))
    messages_cost = plan_m["apis"]["messages"]["concurrent"]["cost_usd"]
    batches_cost = plan_m["apis"]["batches"]["concurrent"]["cost_usd"]
    assert batches_cost < messages_cost * 0.6
    budget = round((messages_cost + batches_cost) / 2, 4)
    assert cli("budget", "set", "--usd", str(budget)).returncode == 0
    on_messages = cli("plan", str(manifest), "--mode", "concurrent")
    assert on_messages.returncode == 3
    assert "decision: refused (concurrent needs" in on_messages.stdout
    on_batches = cli("plan", str(manifest), "--mode", "concurrent", "--api", "batches", "--json")
    assert on_batches.returncode == 0, on_batches.stderr
    decision = doc_of(on_batches)["decision"]
    assert decision["mode"] == "concurrent"
    assert decision["reason"].startswith("on the batches API (batch prices): concurrent needs")
    assert "; on the messages API: concurrent needs" in decision["reason"]
    with Simulator(SimConfig(seed=9)) as sim:
        refused = cli("run", str(manifest), "--mode", "concurrent", "--json", env=api_env(sim))
        assert refused.returncode == 3 and doc_of(refused)["status"] == "refused"
        admitted = run_batches(manifest, sim, "--mode", "concurrent")
        assert admitted.returncode == 0, admitted.stderr
        stats = sim.stats()
    doc = doc_of(admitted)
    assert doc["mode"] == "concurrent" and doc["jobs"]["done"] == 12
    assert doc["cost_usd"] <= budget
    assert (
        ledger_of(isolated_state).run_totals(doc["run_id"])["cost_micros"]
        == stats["batch_billed_micros"]
    )


def test_api_in_the_manifest_and_a_bad_one(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, 1, api="batches")
    result = cli("plan", str(manifest), "--json")
    assert result.returncode == 0, result.stderr
    assert doc_of(result)["api"] == "batches"
    bad = _manifest(tmp_path / "b", 1, api="fast")
    result = cli("plan", str(bad))
    assert result.returncode == 2
    assert result.stderr == (
        f"Error: {bad}: key 'api': expected one of ['messages', 'batches'], got 'fast' (string)\n"
    )
    result = cli("plan", str(manifest), "--api", "slow")
    assert result.returncode == 2 and "Invalid value for '--api'" in result.stderr


def test_the_spend_cap_on_submission_defers_the_run_with_exit_3(
    tmp_path: Path, isolated_state: Path
) -> None:
    manifest = _manifest(tmp_path, 2)
    with Simulator(SimConfig(seed=10, spend_cap_usd=0)) as sim:
        result = run_batches(manifest, sim, "--mode", "single")
        assert sim.batch_log() == []
    assert result.returncode == 3, result.stderr
    doc = doc_of(result)
    assert doc["status"] == "deferred" and doc["jobs"]["deferred"] == 2
    assert "the account's spend limit is reached" in result.stderr
    entries = ledger_entries(isolated_state, doc["run_id"])
    assert entries and all(e["state"] == "released" for e in entries)


def test_a_reply_cut_at_max_tokens_is_marked_truncated_never_no_findings(
    tmp_path: Path, isolated_state: Path
) -> None:
    manifest = _manifest(tmp_path, 1, max_output_tokens=40)
    with Simulator(SimConfig(seed=16, output_mean=4000)) as sim:
        result = run_batches(manifest, sim, "--mode", "single")
    assert result.returncode == 0, result.stderr
    doc = doc_of(result)
    rows = Runs(isolated_state / "runs.db").jobs(doc["run_id"])
    assert [r.result["status"] for r in rows if r.result] == ["truncated"]
    review = (Path(doc["out_dir"]) / "repo00" / "review.md").read_text()
    assert "truncated" in review.lower()


def test_ctrl_c_while_waiting_exits_130_and_the_batches_are_collected_later(
    tmp_path: Path, isolated_state: Path
) -> None:
    manifest = _manifest(tmp_path, 2)
    # Long enough that a loaded machine delivers the SIGINT while the batch is still processing.
    with Simulator(SimConfig(seed=17, batch_delay=10.0)) as sim:
        proc = spawn(
            "run",
            str(manifest),
            "--api",
            "batches",
            "--mode",
            "single",
            "--poll-interval",
            POLL,
            sim=sim,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _wait_for(_submitted(isolated_state, 1))
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, f"exit {proc.returncode}\nstdout: {out}\nstderr: {err}"
        assert ": interrupted." in out
        assert "interrupted: the batches keep running; `run --resume` collects them" in err
        assert "Resume with: review-runner run --resume" in err
        result = resume(sim)
        assert result.returncode == 0, result.stderr
        jobs = submitted_jobs(sim, isolated_state)
    assert doc_of(result)["jobs"]["done"] == 2 and len(jobs) == 2


def test_no_wait_on_the_messages_api_is_a_usage_error(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, 1)
    result = cli("run", str(manifest), "--no-wait")
    assert result.returncode == 2
    assert "Error: --no-wait applies to Message Batches only (--api batches)" in result.stderr
