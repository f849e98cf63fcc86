"""An admitted run on the Messages API, from recording its jobs to its summary.

`AdmittedRun` records the run's jobs in runs.db (or a resumed run's new ones), sends what is
left through the worker pool, writes each repo's report as it completes, and ends with every
repo's report, the run's status and its summary, all from runs.db and the ledger. The Message
Batches path (runner.run.batches) records and finishes a run through the same object.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jobs.agents import COMBINED
from jobs.manifest import RepoSpec
from jobs.outcome import RepoOutcome
from jobs.reports import write_repo_report, write_summary
from ledger.ledger import Admission
from ledger.modes import Mode
from runner.kinds import JobStatus, RunStatus, StopReason
from runner.reachability import remove_counter
from runner.run.config import RunConfig
from runner.run.incremental import Carried, carried_outcome
from runner.run.job import Job, JobOutcome
from runner.run.per_repo import admitted_jobs, mode_label, mode_reasons, remember_completed
from runner.run.plan import Plan
from runner.run.pool import run_pool
from runner.run.reporting import finish_reports, json_totals, write_if_complete
from runner.run.results import Progress, RunResult, Tally, job_counts, make_result
from runner.run.resume import Reconciled, manifest_sha256
from runner.run.state import State
from runner.run.tracker import Tracker
from runner.run.worker import WorkerConfig
from runner.runs import JobRow

__all__ = ["DEFERRING", "STOP_MESSAGES", "AdmittedRun"]

# What each stop says on the progress line.
STOP_MESSAGES = {
    StopReason.INTERRUPTED: "interrupted: no new requests; waiting for the requests in flight "
    "(Ctrl-C again to abandon them)",
    StopReason.BUDGET: "the month's budget is used up: the remaining jobs are deferred",
    StopReason.SPEND_CAP: "the account's spend limit is reached: sending nothing more",
    StopReason.AUTH: "the API rejected the credentials: stopping",
    StopReason.UNREACHABLE: "the remaining jobs are deferred (resume when the API is back)",
}
# Stops that leave the unsent jobs deferred, for a resume.
DEFERRING = (StopReason.BUDGET, StopReason.SPEND_CAP, StopReason.UNREACHABLE)


@dataclass
class AdmittedRun:
    """An admitted run, from recording its jobs to its summary."""

    config: RunConfig
    state: State
    run_id: str
    plan: Plan
    admission: Admission
    done_rows: Mapping[str, JobRow]
    concurrency: int
    tracker: Tracker
    pack_failures: Mapping[RepoSpec, str]  # repos that could not be packed, and why
    resumed: Reconciled
    carried: tuple[Carried, ...] = ()  # unchanged repos, not sent, with their last review
    report_errors: dict[str, str] = field(default_factory=dict)  # by slug: report not written
    reported: set[str] = field(default_factory=set)  # slugs whose report this attempt wrote

    @property
    def mode(self) -> Mode:
        return Mode(self.admission.mode)

    @property
    def jobs(self) -> tuple[Job, ...]:
        """What admission let through: the per-repo plan, or every repo single."""
        return admitted_jobs(self.plan, self.config.mode, self.admission.mode)

    @property
    def modes(self) -> dict[str, Mode]:
        return self.plan.repo_modes(self.jobs)

    @property
    def out_dir(self) -> Path:
        return self.config.out_root / self.run_id

    def run(self, on_progress: Callable[[Progress], None]) -> RunResult:
        self._record()
        todo = self._todo()
        reviews_done = sum(1 for j in self.done_rows.values() if not j.warm)
        tally = Tally(sum(1 for j in todo if not j.warm) + reviews_done, reviews_done)
        runs = self.state.runs
        reasons = mode_reasons(self.plan, self.jobs, self.admission.reason)
        stop_errors: dict[StopReason, str] = {}

        unknown_limits: set[str] = set()  # models whose API sends no rate-limit headers, said once

        def on_outcome(outcome: JobOutcome, in_flight: int) -> None:
            model = outcome.job.model
            if model not in unknown_limits and (note := self.state.limiter.headerless_note(model)):
                unknown_limits.add(model)
                on_progress(tally.progress(in_flight, message=note))
            if outcome.stop and outcome.error:
                stop_errors.setdefault(outcome.stop, outcome.error)
            if outcome.status != JobStatus.DONE:
                runs.finish_job(
                    outcome.job_id, outcome.status, error=outcome.error, attempts=outcome.attempts
                )
            tally.add(outcome)
            slug = outcome.job.slug
            error = write_if_complete(
                self.run_id, slug, self.modes[slug], self.out_dir, runs, self.tracker,
                self.reported, reasons.get(slug, ""),
            )  # fmt: skip
            on_progress(tally.progress(in_flight, outcome=outcome))
            if error:
                self.report_errors[slug] = error
                on_progress(tally.progress(in_flight, message=f"failed {slug}: {error}"))

        def on_stopping(reason: StopReason, in_flight: int) -> None:
            message = STOP_MESSAGES[reason]
            if reason == StopReason.UNREACHABLE:  # one line: the endpoint, the cause, what now
                message = f"{stop_errors.get(reason, 'the API cannot be reached')}; {message}"
            on_progress(tally.progress(in_flight, message=message))

        self.out_dir.mkdir(parents=True, exist_ok=True)
        on_progress(tally.progress(0))  # the starting line: what is left to do
        config = self._worker_config()
        try:
            pool = run_pool(
                todo,
                config,
                {w.spec.slug: w for w in self.plan.works},
                workers=self.concurrency,
                on_outcome=on_outcome,
                on_stopping=on_stopping,
                on_message=lambda text: on_progress(tally.progress(0, message=text)),
            )
        except BaseException:
            runs.update_run(self.run_id, status=RunStatus.INTERRUPTED)
            raise
        finally:
            if config.breaker is not None:
                remove_counter(config.breaker)
        if pool.stop in DEFERRING:
            for job in pool.unsent:
                runs.finish_job(job.id, JobStatus.DEFERRED, error=f"not sent: {pool.stop}")
        return self._finish(pool.stop)

    def _record(self) -> None:
        """Record the run (or the resumed run's new jobs) in runs.db, and mark it running."""
        runs, run_id = self.state.runs, self.run_id
        planned = [(j.id, j.slug, j.agent, j.warm) for j in self.jobs]
        unpacked = self._unpacked_jobs()
        if self.config.resume is not None:
            self.resumed.apply(runs, run_id, self.plan.works)
            runs.add_jobs(run_id, [*planned, *unpacked])
        else:
            runs.create_run(
                run_id,
                manifest=str(self.config.manifest.path),
                manifest_sha256=manifest_sha256(self.config.manifest.path),
                name=self.config.manifest.name,
                requested_mode=self.config.mode,
                out_dir=str(self.config.out_root),
                repos=self._repo_rows(),
                jobs=[*planned, *unpacked],
            )
        # A repo that could not be packed fails alone, its jobs marked with the reason.
        for job_id, slug, _, _ in unpacked:
            reason = next(r for s, r in self.pack_failures.items() if s.slug == slug)
            runs.finish_job(job_id, JobStatus.FAILED, error=reason)
        runs.update_run(
            run_id,
            status=RunStatus.RUNNING,
            mode=self.mode,
            reason=self.admission.reason,
        )

    def _repo_rows(self) -> list[Mapping[str, Any]]:
        """The run's repos for runs.db: each packed one with its pack, each unpackable one bare."""
        rows: list[Mapping[str, Any]] = [
            {
                "slug": w.spec.slug,
                "path": str(w.root),
                "model": w.spec.model,
                "pack": w.pack.summary(),
                "pack_sha256": w.pack.sha256,
            }
            for w in self.plan.works
        ]
        return rows + [
            {"slug": s.slug, "path": s.source, "model": s.model, "pack": {}, "pack_sha256": ""}
            for s in self.pack_failures
        ]

    def _unpacked_jobs(self) -> list[tuple[str, str, str, bool]]:
        """The job rows of the repos that could not be packed, as this run's mode names them."""
        rows = []
        for spec in self.pack_failures:
            agents = spec.agents if self.mode == Mode.CONCURRENT else (COMBINED,)
            rows += [(f"{self.run_id}/{spec.slug}/{a}", spec.slug, a, False) for a in agents]
        return rows

    def _todo(self) -> list[Job]:
        """The jobs still to send: reviews not done, and the warm-up of each repo they are in."""
        jobs = self.jobs
        left = [j for j in jobs if not j.warm and j.id not in self.done_rows]
        # A resumed repo's cache has likely expired: warm it again if any of its agents is left.
        slugs_left = {j.slug for j in left}
        return [j for j in jobs if j in left or (j.warm and j.slug in slugs_left)]

    def _worker_config(self) -> WorkerConfig:
        config = self.config
        return WorkerConfig(
            state_dir=config.state.root,
            burst=config.limits.burst_seconds,
            base_url=config.base_url,
            api_key=config.api_key,
            max_attempts=config.max_attempts,
            prompts_folder=config.manifest.prompts,
            max_output_tokens=config.manifest.max_output_tokens,
            # This execution's own connectivity counter (a resume starts from zero).
            breaker=config.state.reachability(self.run_id, os.getpid()),
        )

    def _finish(self, stop: StopReason | None) -> RunResult:
        """Reports of every repo, the run's status and summary, from runs.db and the ledger."""
        runs, run_id = self.state.runs, self.run_id
        rows = runs.jobs(run_id)
        modes = {**{spec.slug: self.mode for spec in self.pack_failures}, **self.modes}
        repo_outcomes = finish_reports(
            run_id, modes, self.out_dir, runs, rows, self.tracker, self.report_errors,
            self.reported,
        )  # fmt: skip
        repo_failed = any(o.status == JobStatus.FAILED for o in repo_outcomes)
        remember_completed(runs, run_id, self.plan.works, repo_outcomes, datetime.now(UTC), modes)
        reasons = mode_reasons(self.plan, self.jobs, self.admission.reason)
        repo_outcomes = [replace(o, mode_reason=reasons.get(o.slug, "")) for o in repo_outcomes]
        repo_outcomes += self._unchanged()
        tally = job_counts(rows)
        if stop == StopReason.INTERRUPTED:
            status = RunStatus.INTERRUPTED
        elif stop == StopReason.AUTH:
            status = RunStatus.FAILED
        elif tally[JobStatus.DEFERRED] or stop in DEFERRING:
            status = RunStatus.DEFERRED
        elif tally[JobStatus.FAILED] or tally[JobStatus.PENDING] or repo_failed:
            status = RunStatus.FAILED
        else:
            status = RunStatus.DONE
        totals = self.state.ledger.run_totals(run_id)
        write_summary(self.out_dir, run_id, repo_outcomes, totals=json_totals(totals))
        runs.update_run(run_id, status=status)
        result = make_result(
            run_id, self.admission, status, stop, tally, totals, self.out_dir, self.plan
        )
        return replace(
            result,
            mode=mode_label(self.jobs, self.admission.mode),
            decisions=tuple(self.plan.decisions_json(self.jobs)),
        )

    def _unchanged(self) -> list[RepoOutcome]:
        """The unchanged repos' reports: their last review's findings, carried forward."""
        outcomes = [
            self.tracker.track(carried_outcome(work, review)) for work, review in self.carried
        ]
        for outcome in outcomes:
            write_repo_report(self.out_dir, outcome)
        return outcomes

    # The batches path (runner.run.batches) records and finishes a run the same way.
    record_jobs = _record
    finish = _finish
