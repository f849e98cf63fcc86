"""The run, in one folder: its config, its Jobs, the plan, the pool and workers, the reports.

config.py     RunConfig: manifest + CLI overrides merged once (load_config)
job.py        Job (frozen, from plan to worker) and JobOutcome
plan.py       packs, prompts built once per repo, every Job built once, both modes projected
batch.py      run() and plan(): admission, then the run's execution; resume
execution.py  an admitted run on the Messages API: its jobs recorded, sent, reported, totalled
state.py      the limiter, ledger and runs.db a run opens
pool.py       the worker processes (each gets every repo's pack and prompts once)
worker.py     one request start to finish: limiter, ledger, API, runs.db
reporting.py  reports from runs.db rows
"""

from __future__ import annotations

from runner.run.batch import plan, run
from runner.run.config import LimitsConfig, RunConfig, RunOptions, load_config
from runner.run.job import Job, JobOutcome
from runner.run.results import PlanResult, Progress, RunResult

__all__ = [
    "Job",
    "JobOutcome",
    "LimitsConfig",
    "PlanResult",
    "Progress",
    "RunConfig",
    "RunOptions",
    "RunResult",
    "load_config",
    "plan",
    "run",
]
