"""A plan on the Message Batches API: its Jobs per mode, their phases, batch prices and times.

Items of one batch never read each other's cache writes, so concurrent mode goes in two
phases: the first agent of each repo writes the pack with the 1-hour TTL (a batch may take an
hour), and the other agents go in a later batch, once the first has ended, and read it. A batch
refuses `max_tokens: 0`, so there is no warm-up request. Single mode sends no cache markers
(nothing would read them).
"""

from __future__ import annotations

import statistics
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from enum import StrEnum
from typing import Any

from ledger.ledger import Ledger
from ledger.modes import Mode
from ledger.projection import Projection
from runner.run.job import Job
from runner.run.plan import Plan, job_estimates

__all__ = [
    "BATCH_PHASE_PRIOR_S",
    "Api",
    "api_reason",
    "apis_json",
    "phase_seconds",
    "to_batches",
    "unsent_only",
]

# Without history: the platform says most batches end within an hour.
BATCH_PHASE_PRIOR_S = 3600.0


class Api(StrEnum):
    """The two APIs a run can use (the manifest's `api`, `--api`)."""

    MESSAGES = "messages"
    BATCHES = "batches"


def batch_jobs(jobs: Sequence[Job]) -> tuple[Job, ...]:
    """The Messages plan's jobs of one mode, as Message Batches requests (see the module doc)."""
    warm = {j.slug: j for j in jobs if j.warm}
    firsts: dict[str, Job] = {}
    out: list[Job] = []
    for job in jobs:
        if job.warm:
            continue
        prefix = warm.get(job.slug)
        if prefix is None:  # single mode, or a prefix too short to cache
            out.append(replace(job, cache_write=0, cache_read=0, after=None))
        elif job.slug not in firsts:
            first = replace(
                job, cache_write=prefix.cache_write, cache_read=0, after=None, cache_ttl="1h"
            )
            firsts[job.slug] = first
            out.append(first)
        else:
            out.append(
                replace(
                    job,
                    cache_write=0,
                    cache_read=prefix.cache_write,
                    after=firsts[job.slug].id,
                    cache_ttl="1h",
                )
            )
    return tuple(out)


def phase_seconds(durations: Sequence[float]) -> float:
    """Expected seconds from submitting a batch to its end: the median of past ones, or the prior."""
    return statistics.median(durations) if durations else BATCH_PHASE_PRIOR_S


def to_batches(plan: Plan, ledger: Ledger, phase_s: float) -> Plan:
    """`plan` on the batches API: its jobs as batch requests, projected at batch prices."""
    jobs = {mode: batch_jobs(plan.jobs[mode]) for mode in Mode}
    projections = {mode: _project(ledger, mode, jobs[mode]) for mode in Mode}
    times = {
        mode: phase_s * (2 if any(j.after for j in jobs[mode]) else 1) if jobs[mode] else 0.0
        for mode in Mode
    }
    per_jobs = batch_jobs(plan.per_repo_jobs)  # each repo in its own mode (runner.run.per_repo)
    per = plan.per_repo
    if per is not None:
        per = ledger.project(per.mode, job_estimates(per_jobs), batch=True)
    return replace(
        plan, jobs=jobs, projections=projections, wall_time_s=times, per_repo_jobs=per_jobs,
        per_repo=per,
    )  # fmt: skip


def unsent_only(plan: Plan, ledger: Ledger, sent: Collection[str]) -> Plan:
    """A resumed `plan` on the batches API projecting only the jobs still to submit.

    The `sent` jobs are done (charged) or inside a submitted batch (reserved at their worst
    case): projecting them again would count them twice and refuse a resume that fits.
    """
    projections = {
        mode: _project(ledger, mode, (j for j in plan.jobs[mode] if j.id not in sent))
        for mode in Mode
    }
    per = plan.per_repo  # each repo in its own mode: what admission is offered first
    if per is not None:
        unsent = (j for j in plan.per_repo_jobs if j.id not in sent)
        per = ledger.project(per.mode, job_estimates(unsent), batch=True)
    return replace(plan, projections=projections, per_repo=per)


def _project(ledger: Ledger, mode: Mode, jobs: Iterable[Job]) -> Projection:
    return ledger.project(mode, job_estimates(jobs), batch=True)


def apis_json(plans: Mapping[str, Plan]) -> dict[str, Any]:
    """Each mode on each API: requests, tokens, cost and expected time (`plan --json` "apis")."""
    return {api: p.modes_json() for api, p in plans.items()}


def api_reason(api: str, reason: str, messages_reason: str | None = None) -> str:
    """The ledger's reason on `api`, with what the messages API would have allowed if different."""
    if api != Api.BATCHES:
        return reason
    text = f"on the batches API (batch prices): {reason}"
    if messages_reason and messages_reason != reason:
        text += f"; on the messages API: {messages_reason}"
    return text
