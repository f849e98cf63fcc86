"""Reports from runs.db: a repo's outcome from its job rows, written when its jobs are done.

Built from the database rather than from memory, so a resumed run reports the jobs of
every attempt, and a report never depends on which process finished which job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jobs.findings import AgentResult
from jobs.reports import RepoOutcome, write_repo_report
from ledger.prices import usd
from runner.plan import WARM
from runner.runs import JobRow, Runs

__all__ = ["USAGE_KEYS", "json_totals", "outcomes", "repo_outcome", "write_if_complete"]

USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


def repo_outcome(repo: Mapping[str, Any], mode: str, rows: Sequence[JobRow]) -> RepoOutcome:
    """A repo's outcome from its job rows; the warm-up's tokens and cost count, its status not."""
    statuses = {row.status for row in rows if row.agent != WARM}
    status = "done" if statuses == {"done"} else "failed" if "failed" in statuses else "deferred"
    usage = {key: sum(int((row.usage or {}).get(key) or 0) for row in rows) for key in USAGE_KEYS}
    errors = [
        f"{row.agent}: {row.error}"
        for row in rows
        if row.error and row.status != "done" and row.agent != WARM
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
        **usage,
    )


def outcomes(run_id: str, mode: str, runs: Runs) -> list[RepoOutcome]:
    rows = runs.jobs(run_id)
    return [
        repo_outcome(repo, mode, [r for r in rows if r.slug == repo["slug"]])
        for repo in runs.repos(run_id)
    ]


def write_if_complete(
    run_id: str, slug: str, mode: str, out_dir: Path, runs: Runs, *, final: bool = False
) -> None:
    rows = [r for r in runs.jobs(run_id) if r.slug == slug]
    complete = all(r.status in ("done", "failed") for r in rows if r.agent != WARM)
    if not rows or not (complete or (final and any(r.result for r in rows))):
        return
    repo = next(r for r in runs.repos(run_id) if r["slug"] == slug)
    write_repo_report(out_dir, repo_outcome(repo, mode, rows))


def json_totals(totals: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **{key: int(totals.get(key, 0)) for key in USAGE_KEYS},
        "cost_usd": usd(int(totals.get("cost_micros", 0))),
        "unknown_requests": int(totals.get("unknown", 0)),
    }
