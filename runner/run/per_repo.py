"""A run whose repos each have their own mode: what admission is asked, what is sent, what is kept.

Admission (ledger.admit) chooses between two plans. Under auto: the per-repo plan (each repo in
its preferred mode, labelled concurrent when any repo is) and, if it does not fit or the
limiter's health is poor, every repo single; a per-repo plan with no concurrent repo is just the
single one. Under an explicit mode the per-repo plan (the explicit mode, pins aside) is the only
one, refused if it does not fit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from jobs.agents import COMBINED
from jobs.outcome import RepoOutcome
from ledger.ledger import Projection
from ledger.modes import Mode, RequestedMode
from runner.repo_memory import Review, remember
from runner.run.job import Job
from runner.run.plan import Plan, RepoWork
from runner.runs import JobRow, Runs
from statedb import iso

__all__ = [
    "admitted_jobs",
    "as_recorded",
    "mode_label",
    "mode_reasons",
    "recorded_modes",
    "remember_completed",
    "wanted",
]

MIXED = "mixed"  # the run's mode when its repos run in both modes


def recorded_modes(rows: Sequence[JobRow]) -> dict[str, Mode]:
    """Each repo's mode as a run recorded its jobs (the combined agent is single mode)."""
    return {r.slug: Mode.SINGLE if r.agent == COMBINED else Mode.CONCURRENT for r in rows}


def as_recorded(works: Sequence[RepoWork], modes: Mapping[str, Mode]) -> tuple[RepoWork, ...]:
    """A resumed run's repos in the modes their jobs were recorded in, so no job is planned twice."""
    out = []
    for work in works:
        mode, decision = modes.get(work.spec.slug), work.decision
        if mode is not None and decision is not None:
            why = f"{decision.reason}; {mode} as the run recorded it (resumed)"
            work = replace(work, decision=replace(decision, mode=mode, reason=why))
        out.append(work)
    return tuple(out)


def wanted(the_plan: Plan, requested: str) -> dict[str, Projection]:
    """The projections admission may choose from, by the mode it calls them."""
    per = the_plan.per_repo
    assert per is not None
    if requested != RequestedMode.AUTO:
        return {requested: per}
    if per.mode == Mode.CONCURRENT:
        return {Mode.CONCURRENT: per, Mode.SINGLE: the_plan.projections[Mode.SINGLE]}
    return {Mode.SINGLE: per}


def admitted_jobs(the_plan: Plan, requested: str, decided: str) -> tuple[Job, ...]:
    """The jobs to send once admission decided `decided`: the per-repo plan, or all single."""
    per = the_plan.per_repo
    assert per is not None
    fell_back = requested == RequestedMode.AUTO and decided == Mode.SINGLE
    if fell_back and per.mode == Mode.CONCURRENT:
        return the_plan.jobs[Mode.SINGLE]
    return the_plan.per_repo_jobs


def mode_label(jobs: Sequence[Job], decided: str) -> str:
    """The run's mode as shown: the one mode its repos run in, or "mixed"."""
    modes = {j.mode for j in jobs}
    if len(modes) == 1:
        return str(next(iter(modes)))
    return MIXED if modes else decided


def mode_reasons(the_plan: Plan, jobs: Sequence[Job], run_reason: str) -> dict[str, str]:
    """Each sent repo's reason for its mode; a repo the budget moved to single says so."""
    modes = the_plan.repo_modes(jobs)
    out = {}
    for work in the_plan.works:
        slug = work.spec.slug
        reason = work.decision.reason if work.decision is not None else ""
        if work.preferred != modes.get(slug, work.preferred):
            reason = f"{reason}; {modes[slug]} by admission ({run_reason})"
        out[slug] = reason.lstrip("; ")
    return out


def remember_completed(
    runs: Runs,
    run_id: str,
    works: Sequence[RepoWork],
    outcomes: Sequence[RepoOutcome],
    now: datetime,
    modes: Mapping[str, str],
) -> int:
    """Record each complete review (every agent's reply parsed) as its repo's memory; how many."""
    by_slug = {w.spec.slug: w for w in works}
    count = 0
    for outcome in outcomes:
        work = by_slug.get(outcome.slug)
        if work is None or work.facts is None or not outcome.complete:
            continue
        facts = work.facts
        remember(
            runs,
            Review(
                repo_key=facts.repo_key,
                slug=outcome.slug,
                run_id=run_id,
                reviewed_at=iso(now),
                head_commit=facts.head_commit,
                tree_sha256=facts.tree_sha256,
                pack_sha256=facts.pack_sha256,
                prompts_sha256=facts.prompts_sha256,
                model=work.spec.model,
                mode=modes.get(outcome.slug, outcome.mode),
                agents=tuple(work.spec.agents),
                files=facts.files,
                tags=facts.tags,
                outcome=outcome.to_dict(),
            ),
        )
        count += 1
    return count
