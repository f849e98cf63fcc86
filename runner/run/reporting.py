"""Reports from runs.db: a repo's outcome from its job rows, written when its jobs are done.

Built from the database rather than from memory, so a resumed run reports the jobs of
every attempt, and a report never depends on which process finished which job.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.findings import AgentResult
from jobs.reports import RepoOutcome, write_repo_report
from ledger.prices import USAGE_FIELDS, usd
from runner.kinds import JobStatus
from runner.runs import JobRow, Runs

if TYPE_CHECKING:
    from runner.run.tracker import Tracker

__all__ = ["finish_reports", "json_totals", "repo_outcome", "write_if_complete"]


def repo_outcome(repo: Mapping[str, Any], mode: str, rows: Sequence[JobRow]) -> RepoOutcome:
    """A repo's outcome from its job rows; the warm-up's tokens and cost count, its status not."""
    statuses = {row.status for row in rows if not row.warm}
    if statuses == {JobStatus.DONE}:
        status = JobStatus.DONE
    elif JobStatus.SKIPPED in statuses and statuses <= {JobStatus.DONE, JobStatus.SKIPPED}:
        status = JobStatus.SKIPPED
    else:
        status = JobStatus.FAILED if JobStatus.FAILED in statuses else JobStatus.DEFERRED
    usage = {key: sum(int((row.usage or {}).get(key) or 0) for row in rows) for key in USAGE_FIELDS}
    errors = [
        f"{row.agent}: {row.error}"
        for row in rows
        if row.error and row.status != JobStatus.DONE and not row.warm
    ]
    return RepoOutcome(
        slug=repo["slug"],
        mode=mode,
        model=repo["model"],
        status=status,
        error="; ".join(errors) or None,
        pack=repo["pack"],
        results=tuple(AgentResult.from_dict(row.result) for row in rows if row.result),
        cost_usd=usd(sum(row.cost_micros for row in rows)),
        input_tokens=usage["input_tokens"],
        output_tokens=usage["output_tokens"],
        cache_creation_input_tokens=usage["cache_creation_input_tokens"],
        cache_read_input_tokens=usage["cache_read_input_tokens"],
    )


def _complete(rows: Sequence[JobRow]) -> bool:
    finished = (JobStatus.DONE, JobStatus.FAILED)
    return bool(rows) and all(r.status in finished for r in rows if not r.warm)


def _write(out_dir: Path, outcome: RepoOutcome) -> str | None:
    """Write one repo's report; the reason it could not be written, if so (it fails alone)."""
    try:
        write_repo_report(out_dir, outcome)
    except Exception as exc:
        return f"report not written: {type(exc).__name__}: {exc}"
    return None


def write_if_complete(
    run_id: str,
    slug: str,
    mode: str,
    out_dir: Path,
    runs: Runs,
    tracker: Tracker | None = None,
    written: set[str] | None = None,
) -> str | None:
    """Write a repo's report once all its agents are done or failed (tracked across nights by ``tracker``).

    Returns why the report could not be written, if so: that repo fails, the run goes on. A
    report written is added to ``written`` (slugs).
    """
    rows = runs.jobs(run_id, slug=slug)
    if not _complete(rows):
        return None
    outcome = repo_outcome(runs.repos(run_id, slug=slug)[0], mode, rows)
    error = _write(out_dir, tracker.track(outcome) if tracker else outcome)
    if error is None and written is not None:
        written.add(slug)
    return error


def finish_reports(
    run_id: str,
    mode: str,
    out_dir: Path,
    runs: Runs,
    rows: Sequence[JobRow],
    tracker: Tracker | None = None,
    report_errors: Mapping[str, str] | None = None,
    written: Collection[str] = (),
) -> list[RepoOutcome]:
    """Every repo's outcome at the end of a run, from the run's job `rows`.

    Complete repos were reported (and tracked) as they completed (`written`, by slug); one that
    completed without its report (a process killed in between, then resumed) is reported now; a repo
    stopped part-way gets a report of what it has, if anything, so that no reply goes unreported.
    A repo whose report could not be written (`report_errors`, by slug, or now) is failed with
    that reason.
    """
    errors = dict(report_errors or {})
    result = []
    for repo in runs.repos(run_id):
        mine = [r for r in rows if r.slug == repo["slug"]]
        outcome = repo_outcome(repo, mode, mine)
        complete = _complete(mine)
        partial = not complete and any(r.result for r in mine)
        if tracker is not None and (partial or complete):
            outcome = tracker.track(outcome, reuse=not partial)
        if partial or (complete and repo["slug"] not in written):
            error = _write(out_dir, outcome)
            if error:
                errors[repo["slug"]] = error
        if repo["slug"] in errors:
            why = "; ".join(e for e in (outcome.error, errors[repo["slug"]]) if e)
            outcome = replace(outcome, status=JobStatus.FAILED, error=why)
        result.append(outcome)
    return result


def json_totals(totals: Mapping[str, Any]) -> dict[str, Any]:
    """The ledger's run totals as the JSON documents show them (tokens, USD, unknown requests)."""
    return {
        **{key: int(totals.get(key, 0)) for key in USAGE_FIELDS},
        "cost_usd": usd(int(totals.get("cost_micros", 0))),
        "unknown_requests": int(totals.get("unknown", 0)),
    }
