"""What a run and a plan return (frozen, rendered by the CLI), and the run's counts.

One source for each total: job counts come from runs.db (the rows the workers wrote),
tokens and money from the ledger's run totals; progress counts start from the rows and
add the outcomes as they arrive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.select import shown_name
from ledger.ledger import Admission
from ledger.modes import Decision
from runner.kinds import JobStatus, RunStatus, StopReason
from runner.run.job import Job, JobOutcome
from runner.run.plan import Plan
from runner.run.reporting import json_totals
from runner.runs import JobRow

__all__ = ["PlanResult", "Progress", "RunResult", "Tally", "job_counts", "make_result"]

_COUNTED = (
    JobStatus.DONE,
    JobStatus.FAILED,
    JobStatus.DEFERRED,
    JobStatus.PENDING,
    JobStatus.SKIPPED,
)


@dataclass(frozen=True)
class Progress:
    """A job finished (or the run is stopping)."""

    total: int
    done: int
    failed: int
    deferred: int
    in_flight: int
    cost_micros: int
    rate_limited: int
    outcome: JobOutcome | None = None
    message: str | None = None


@dataclass(frozen=True)
class RunResult:
    """What a run did, for the CLI to render."""

    run_id: str
    mode: str
    reason: str
    status: RunStatus
    stop: StopReason | None
    jobs: Mapping[str, int]
    totals: Mapping[str, Any]
    out_dir: Path | None
    plan: Plan | None
    decisions: tuple[Mapping[str, Any], ...] = ()  # per repo: sent or unchanged, mode, reason

    def to_json(self) -> dict[str, Any]:
        """The `run --json` document (keys from DESIGN.md, and more)."""
        resumable = (
            RunStatus.INTERRUPTED,
            RunStatus.DEFERRED,
            RunStatus.FAILED,
            RunStatus.SUBMITTED,
        )
        return {
            "run_id": self.run_id,
            "status": self.status,
            "mode": self.mode,
            "reason": self.reason,
            "stop": self.stop,
            "jobs": dict(self.jobs),
            **json_totals(self.totals),
            "out_dir": str(self.out_dir) if self.out_dir else None,
            "decisions": [dict(d) for d in self.decisions],
            "unchanged": sum(1 for d in self.decisions if d.get("action") == "unchanged"),
            "resume": f"review-runner run --resume {self.run_id}"
            if self.status in resumable
            else None,
        }


@dataclass(frozen=True)
class PlanResult:
    """What `plan` found: both modes, the money left, and what admission would decide."""

    manifest: Path
    plan: Plan
    remaining_usd: float | None
    decision: Decision
    reason: str
    jobs: tuple[Job, ...] = ()  # what the decision would send (per repo)
    api: str = "messages"  # the API `modes` and the decision are on
    apis: Mapping[str, Any] = field(default_factory=dict)  # each API's modes (batches.apis_json)
    failed: Mapping[str, str] = field(default_factory=dict)  # repos that cannot be packed: why

    def to_json(self) -> dict[str, Any]:
        """The `plan --json` document (keys from DESIGN.md, and more)."""
        return {
            "manifest": str(self.manifest),
            "repos": len(self.plan.works),
            "api": self.api,
            "modes": self.plan.modes_json(),
            "apis": dict(self.apis),
            "remaining_usd": self.remaining_usd,
            "decision": {"mode": self.decision, "reason": self.reason},
            "per_repo": self.plan.per_repo.to_json() if self.plan.per_repo else None,
            "decisions": self.plan.decisions_json(self.jobs),
            "limits": dict(self.plan.limits),
            "failed": [{"slug": slug, "reason": why} for slug, why in self.failed.items()],
        }

    def redactions(self) -> list[dict[str, Any]]:
        """Every redaction in every repo's pack, for `plan --redactions`: where and what kind, never the value."""
        return [
            {
                "repo": work.pack.slug,
                "path": shown_name(site.path),
                "line": site.line,
                "kind": site.kind,
                "sent": work.pack.sent(site),
            }
            for work in self.plan.works
            for site in work.pack.redaction_sites
        ]


def job_counts(rows: Sequence[JobRow]) -> dict[str, int]:
    """Reviews (warm-ups aside) by status: the run's job totals, from runs.db."""
    return {str(key): sum(1 for r in rows if r.status == key and not r.warm) for key in _COUNTED}


class Tally:
    """The progress counts: the done rows of earlier attempts, plus each outcome as it comes."""

    def __init__(self, total: int, already_done: int) -> None:
        self.total = total
        self.counts = {JobStatus.DONE: already_done, JobStatus.FAILED: 0, JobStatus.DEFERRED: 0}
        self.cost = self.rate_limited = 0

    def add(self, outcome: JobOutcome) -> None:
        self.counts[outcome.status] += not outcome.job.warm
        self.cost += outcome.cost_micros
        self.rate_limited += outcome.rate_limited

    def progress(self, in_flight: int, **extra: Any) -> Progress:
        return Progress(
            total=self.total,
            done=self.counts[JobStatus.DONE],
            failed=self.counts[JobStatus.FAILED],
            deferred=self.counts[JobStatus.DEFERRED],
            in_flight=in_flight,
            cost_micros=self.cost,
            rate_limited=self.rate_limited,
            **extra,
        )


def make_result(
    run_id: str,
    admission: Admission,
    status: RunStatus,
    stop: StopReason | None,
    tally: Mapping[str, int],
    totals: Mapping[str, int],
    out_dir: Path | None,
    the_plan: Plan,
) -> RunResult:
    """The RunResult of `run_id` with the decided mode, its job counts and ledger totals."""
    return RunResult(
        run_id=run_id,
        mode=admission.mode,
        reason=admission.reason,
        status=status,
        stop=stop,
        jobs={str(key): int(tally.get(key, 0)) for key in _COUNTED},
        totals=totals,
        out_dir=out_dir,
        plan=the_plan,
    )
