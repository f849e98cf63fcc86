"""The state a Message Batches session shares between its steps (submit, collect, wait).

runner.run.batches runs the loop; runner.run.batchsubmit submits (and finds a submission that
was not recorded); runner.run.batchcollect collects ended batches. Each is a part of one
session object; this module holds what they all read and the helpers they all use.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ledger.errors import AlreadyFinal
from ledger.ledger import Admission, Reservation
from ledger.modes import Mode
from runner.client import ApiClient, BatchApi
from runner.kinds import JobStatus, StopReason
from runner.run.batchrecords import BatchRecords, ItemRow
from runner.run.config import RunConfig
from runner.run.job import Job, JobOutcome
from runner.run.plan import Plan, RepoWork
from runner.run.reporting import write_if_complete
from runner.run.results import Progress, RunResult, Tally, job_counts
from runner.run.state import State
from runner.run.tracker import Tracker

__all__ = ["Execution", "SessionState", "reservation_of"]


class Execution(Protocol):
    """What runner.run.batch hands over: an admitted run (runner.run.execution.AdmittedRun)."""

    config: RunConfig
    state: State
    run_id: str
    plan: Plan
    admission: Admission
    tracker: Tracker
    report_errors: dict[str, str]  # by slug: a report that could not be written
    reported: set[str]  # slugs whose report this attempt wrote

    @property
    def mode(self) -> Mode: ...

    @property
    def out_dir(self) -> Path: ...

    def record_jobs(self) -> None: ...

    def finish(self, stop: StopReason | None) -> RunResult: ...


@dataclass
class SessionState:
    """What the steps of a batches session share: the run, its records, its jobs, its tally."""

    execution: Execution
    on_progress: Callable[[Progress], None]
    records: BatchRecords = field(init=False)
    api: BatchApi = field(init=False)
    jobs: dict[str, Job] = field(init=False)
    works: dict[str, RepoWork] = field(init=False)
    tally: Tally = field(init=False)
    submit_failures: int = 0
    retry_submit: bool = False  # a submission failed and is worth another try
    budget_blocked: bool = False  # a reservation was refused; cleared when a batch is collected
    last_line: str = ""
    tries_before: dict[str, int] = field(default_factory=dict)  # attempts of earlier sessions

    def __post_init__(self) -> None:
        ex = self.execution
        self.records = BatchRecords(ex.state.runs)
        self.api = BatchApi(ApiClient(ex.config.base_url, ex.config.api_key))
        self.jobs = {j.id: j for j in ex.plan.jobs[ex.mode]}
        self.works = {w.spec.slug: w for w in ex.plan.works}
        if ex.config.resume is not None:
            self._retry_unfinished()
        rows = ex.state.runs.jobs(ex.run_id)
        counts = job_counts(rows)
        self.tally = Tally(sum(counts.values()), counts[JobStatus.DONE])

    @property
    def run_id(self) -> str:
        return self.execution.run_id

    def _retry_unfinished(self) -> None:
        """A resume tries failed and deferred jobs again, as on the Messages path."""
        runs = self.execution.state.runs
        busy = self.records.in_flight(self.run_id)
        for row in runs.jobs(self.run_id):
            unfinished = row.status in (JobStatus.FAILED, JobStatus.DEFERRED)
            if unfinished and row.id in self.jobs and row.id not in busy:
                runs.finish_job(row.id, JobStatus.PENDING, error=row.error)
        self.tries_before = self.records.tries(self.run_id)

    def _say(self, text: str) -> None:
        self.on_progress(self.tally.progress(self._in_flight(), message=text))

    def _in_flight(self) -> int:
        return len(self.records.in_flight(self.run_id))

    def _release(self, reservations: Any) -> None:
        for reservation in reservations:
            if reservation is None:
                continue
            with suppress(AlreadyFinal):  # released before a crash
                self.execution.state.ledger.release(reservation)

    def _outcome(self, outcome: JobOutcome) -> None:
        ex = self.execution
        self.tally.add(outcome)
        slug = outcome.job.slug
        error = write_if_complete(
            self.run_id, slug, ex.mode, ex.out_dir, ex.state.runs, ex.tracker, ex.reported
        )
        self.on_progress(self.tally.progress(self._in_flight(), outcome=outcome))
        if error:  # that repo fails alone, as on the Messages path
            ex.report_errors[slug] = error
            self._say(f"failed {slug}: {error}")


def reservation_of(item: ItemRow) -> Reservation | None:
    if item.reservation_id is None:
        return None
    return Reservation(id=item.reservation_id, month=item.reservation_month or "", worst_micros=0)
