"""Unit tests of the run package: config, plan, worker, pool and batch, in this process.

The API is the simulator on loopback through the real SDK; the pool's workers are real
processes. The end-to-end CLI tests are test_run*.py.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from support import make_repos, messages, write_manifest

from jobs.manifest import load_manifest
from ledger.ledger import Ledger
from ledger.modes import Decision, Mode, RequestedMode
from runner.kinds import JobStatus, RunStatus
from runner.limiter import Limiter
from runner.run import Job, RunOptions, load_config, plan, run
from runner.run import worker as worker_module
from runner.run.plan import MIN_CACHEABLE_TOKENS, build_jobs, pack_all, with_prompts
from runner.run.pool import run_pool
from runner.run.state import open_state
from runner.run.worker import WorkerConfig, init_worker, run_job
from runner.runs import Runs
from runner.simulator import SimConfig, Simulator
from statedb import StatePaths

MODEL = "claude-sonnet-5-5"


@pytest.fixture
def manifest_path(tmp_path: Path) -> Path:
    return write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 2, lines=300))


def _works(manifest_path: Path, state: Path) -> tuple:
    manifest = load_manifest(manifest_path)
    return manifest, with_prompts(pack_all(manifest.repos, state / "repos"), manifest)


def _entries(state: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(state / "ledger.db") as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM entries ORDER BY id").fetchall()


def _calibration_inputs(state: Path) -> list[tuple]:
    with sqlite3.connect(state / "ledger.db") as conn:
        return conn.execute(
            "SELECT agent, input_weight, input_estimate_sum, input_actual_sum FROM calibrations"
            " ORDER BY agent"
        ).fetchall()


# -- config ------------------------------------------------------------------------------------


def test_config_merges_manifest_limits_and_overrides_once(
    manifest_path: Path, isolated_state: Path
) -> None:
    options = RunOptions(mode="single", limits={"rpm": 7, "itpm": None, "burst_seconds": 3})
    config = load_config(load_manifest(manifest_path), options, isolated_state)
    assert config.mode is RequestedMode.SINGLE
    assert (config.limits.rpm, config.limits.itpm, config.limits.otpm) == (7, 400_000, 100_000)
    assert config.limits.burst_seconds == 3.0
    assert config.limits.simulator() == {"rpm": 7, "itpm": 400_000, "otpm": 100_000}
    assert config.limits.limiter().max_concurrent == 4
    assert config.out_root == manifest_path.parent / "reports"


# -- plan --------------------------------------------------------------------------------------


def test_plan_builds_each_job_once_with_the_warm_up_as_a_flag(
    manifest_path: Path, isolated_state: Path
) -> None:
    manifest, works = _works(manifest_path, isolated_state)
    jobs = build_jobs("R", manifest, works, Mode.CONCURRENT)
    agents = manifest.repos[0].agents
    assert len(jobs) == len(works) * (len(agents) + 1)
    for work in works:
        mine = [j for j in jobs if j.slug == work.spec.slug]
        warm, *reviews = mine
        assert warm.warm and warm.max_output == 0 and warm.cache_write >= MIN_CACHEABLE_TOKENS
        assert warm.agent == agents[0] and warm.id == f"R/{work.spec.slug}/_warm"
        assert [j.agent for j in reviews] == list(agents)
        assert all(not j.warm and j.after == warm.id for j in reviews)
        assert all(j.cache_read == warm.cache_write for j in reviews)
    single = build_jobs("R", manifest, works, Mode.SINGLE)
    assert [j.agent for j in single] == ["combined"] * len(works)
    assert not any(j.warm or j.after or j.counted for j in single)


def test_plan_marks_api_counted_sizes_as_counted(manifest_path: Path, isolated_state: Path) -> None:
    manifest, works = _works(manifest_path, isolated_state)
    prefixes = {w.spec.slug: 5000 + i for i, w in enumerate(works)}
    jobs = build_jobs("R", manifest, works, Mode.CONCURRENT, prefixes)
    assert all(j.counted for j in jobs)
    for job in jobs:
        prefix = prefixes[job.slug]
        assert job.input_tokens == prefix if job.warm else job.input_tokens > prefix


def test_plan_result_sends_holds_and_records_nothing(
    manifest_path: Path, isolated_state: Path
) -> None:
    config = load_config(
        load_manifest(manifest_path), RunOptions(), isolated_state, check_runs=False
    )
    result = plan(config)
    doc = result.to_json()
    assert set(doc["modes"]) == {"concurrent", "single"}
    assert doc["modes"]["concurrent"]["requests"] == 2 * 5
    assert doc["modes"]["single"]["requests"] == 2
    assert result.decision is Decision.CONCURRENT and doc["decision"]["mode"] == "concurrent"
    assert not (isolated_state / "runs.db").exists()
    assert _entries(isolated_state) == []


# -- worker ------------------------------------------------------------------------------------


def _teach_ratio(ledger: Ledger) -> None:
    """Give the model a learned actual/estimate input ratio of 2 from a local estimate."""
    reservation = ledger.reserve("old", "old/x/code_review", MODEL, 1000, 10, agent="code_review")
    ledger.settle(reservation, {"input_tokens": 2000, "output_tokens": 10})


def test_a_counted_request_reserves_its_counted_input_and_teaches_nothing(
    manifest_path: Path, isolated_state: Path
) -> None:
    manifest, works = _works(manifest_path, isolated_state)
    paths = StatePaths(isolated_state)
    _teach_ratio(Ledger(paths.ledger))
    learned = _calibration_inputs(isolated_state)
    counted = {w.spec.slug: 3000 for w in works}
    [job] = [
        j
        for j in build_jobs("R", manifest, works, Mode.SINGLE, counted)
        if j.slug == works[0].spec.slug
    ]
    uncounted = replace(job, counted=False, run_id="U")
    Runs(paths.runs).open()
    with Simulator(SimConfig(seed=1)) as sim:
        init_worker(
            WorkerConfig(state_dir=isolated_state, base_url=sim.base_url, api_key="k"),
            {w.spec.slug: w for w in works},
        )
        outcomes = [run_job(job), run_job(uncounted)]
    assert [o.status for o in outcomes] == [JobStatus.DONE, JobStatus.DONE]
    counted_entry, local_entry = _entries(isolated_state)[1:]
    assert counted_entry["counted"] == 1
    assert counted_entry["input_estimate"] == job.input_tokens
    assert counted_entry["worst_tokens"] == job.input_tokens + job.max_output  # no inflation
    # The same size as a local estimate is raised by the learned ratio of 2.
    assert local_entry["worst_tokens"] == 2 * job.input_tokens + job.max_output
    after = dict((a, rest) for a, *rest in _calibration_inputs(isolated_state))
    before = dict((a, rest) for a, *rest in learned)
    # The counted reply changed no input sum; only the local one (agent "combined") did.
    assert after["code_review"] == before["code_review"]
    assert after["combined"][0] == 1  # one sample: the uncounted one


def test_worker_sends_the_prompt_built_by_the_plan(
    manifest_path: Path, isolated_state: Path
) -> None:
    manifest, works = _works(manifest_path, isolated_state)
    jobs = build_jobs("R", manifest, works[:1], Mode.CONCURRENT)
    Runs(StatePaths(isolated_state).runs).open()
    with Simulator(SimConfig(seed=2)) as sim:
        init_worker(
            WorkerConfig(state_dir=isolated_state, base_url=sim.base_url, api_key="k"),
            {works[0].spec.slug: works[0]},
        )
        outcomes = [run_job(j) for j in jobs]
        sent = messages(sim)
    assert [o.status for o in outcomes] == [JobStatus.DONE] * len(jobs)
    assert outcomes[0].result is None and all(o.result for o in outcomes[1:])
    assert len(sent) == len(jobs)
    assert worker_module._CTX is not None
    assert worker_module._CTX.repos[works[0].spec.slug] is not None


# -- pool --------------------------------------------------------------------------------------


def test_pool_runs_every_job_warm_up_first_on_real_processes(
    manifest_path: Path, isolated_state: Path
) -> None:
    manifest, works = _works(manifest_path, isolated_state)
    jobs = build_jobs("R", manifest, works, Mode.CONCURRENT)
    Limiter(isolated_state, None).close()
    Runs(StatePaths(isolated_state).runs).open()
    order: list[Job] = []
    with Simulator(SimConfig(seed=3)) as sim:
        result = run_pool(
            jobs,
            WorkerConfig(state_dir=isolated_state, base_url=sim.base_url, api_key="k"),
            {w.spec.slug: w for w in works},
            workers=2,
            on_outcome=lambda outcome, _: order.append(outcome.job),
        )
    assert result.stop is None and result.unsent == ()
    assert sorted(j.id for j in order) == sorted(j.id for j in jobs)
    for work in works:
        mine = [j for j in order if j.slug == work.spec.slug]
        assert mine[0].warm  # the agents waited for their repo's warm-up
    assert {o.status for o in result.outcomes} == {JobStatus.DONE}


# -- batch -------------------------------------------------------------------------------------


def test_batch_run_totals_agree_with_runs_db_and_the_ledger(
    manifest_path: Path, isolated_state: Path
) -> None:
    config = load_config(
        load_manifest(manifest_path), RunOptions(mode="concurrent"), isolated_state
    )
    with Simulator(SimConfig(seed=4)) as sim:
        result = run(config.with_api(sim.base_url, "k"))
        billed = sum(r.get("cost_micros") or 0 for r in messages(sim))
    assert result.status is RunStatus.DONE
    assert dict(result.jobs) == {"done": 8, "failed": 0, "deferred": 0, "pending": 0, "skipped": 0}
    rows = Runs(StatePaths(isolated_state).runs).jobs(result.run_id)
    assert sum(1 for r in rows if r.warm) == 2 and len(rows) == 10
    assert all(r.status == JobStatus.DONE for r in rows)
    assert result.totals["cost_micros"] == sum(r.cost_micros for r in rows) == billed
    assert result.to_json()["unknown_requests"] == 0


def test_batch_dry_run_admits_and_sends_nothing(manifest_path: Path, isolated_state: Path) -> None:
    options = RunOptions(dry_run=True)
    config = load_config(load_manifest(manifest_path), options, isolated_state)
    result = run(config)
    assert result.status is RunStatus.PLANNED
    assert result.mode == "concurrent"
    assert _entries(isolated_state) == []
    state = open_state(config)
    status = state.ledger.status().to_json()
    assert (status["reserved_usd"], status["held_usd"]) == (0, 0)  # the hold ended with the run
