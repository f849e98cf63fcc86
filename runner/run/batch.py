"""A whole run: plan, admission by the ledger, the pool, reports, and resume; and `plan` alone.

Library code: it reports progress through callbacks and returns frozen result objects
(RunResult, PlanResult); the CLI renders them and chooses the exit code.

Totals: see runner.run.results (job counts from runs.db, money from the ledger).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jobs.agents import COMBINED, load_prompts
from jobs.manifest import Manifest, RepoSpec
from jobs.outcome import RepoOutcome
from jobs.reports import write_repo_report, write_summary
from ledger.ledger import Admission, Ledger, Projection
from ledger.modes import Decision, Mode
from runner.client import ApiClient, CallError
from runner.errors import RunnerInputError
from runner.kinds import ErrorKind, JobStatus, RunStatus, StopReason
from runner.limiter import Limiter
from runner.reachability import remove_counter
from runner.run.batches import run_batches
from runner.run.batchplan import Api, api_reason, apis_json, phase_seconds, to_batches, unsent_only
from runner.run.batchrecords import BatchRecords, past_durations
from runner.run.config import RunConfig
from runner.run.incremental import Carried, carried_outcome, triage
from runner.run.job import Job, JobOutcome
from runner.run.per_repo import (
    admitted_jobs,
    as_recorded,
    mode_label,
    mode_reasons,
    recorded_modes,
    remember_completed,
    wanted,
)
from runner.run.plan import Plan, RepoWork, count_prefixes, make_plan, pack_all, with_prompts
from runner.run.pool import run_pool
from runner.run.reporting import finish_reports, json_totals, write_if_complete
from runner.run.results import PlanResult, Progress, RunResult, Tally, job_counts, make_result
from runner.run.resume import Reconciled, gone_repos, manifest_sha256, reconcile, take_over
from runner.run.tracker import Tracker, load_repo_suppressions, tracker_for
from runner.run.worker import WorkerConfig, request_blocks, request_tools
from runner.runs import JobRow, Runs
from statedb import StatePaths

__all__ = ["State", "open_state", "plan", "run"]

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
class State:
    """The three databases of a state directory."""

    paths: StatePaths
    limiter: Limiter
    ledger: Ledger
    runs: Runs


def open_state(config: RunConfig, *, readonly: bool = False) -> State:
    """Open the limiter (storing the configured limits unless `readonly`), the ledger and runs.db."""
    paths = config.state
    return State(
        paths=paths,
        limiter=Limiter(
            paths.root,
            config.limits.limiter(),
            burst=config.limits.burst_seconds,
            base_url=config.base_url,
            readonly=readonly,
        ),
        ledger=Ledger(paths.ledger, price_override=paths.prices),
        runs=Runs(paths.runs),
    )


def _concurrency(config: RunConfig, state: State) -> int:
    return config.workers or int(state.limiter.limits_in_force()["max_concurrent"])


def _counter(client: ApiClient) -> Callable[[RepoWork], int]:
    """Count a repo's cacheable prefix (system + pack) with the API's count_tokens."""

    def count(work: RepoWork) -> int:
        assert work.prompts is not None
        return client.count_tokens(
            model=work.spec.model,
            system=work.prompts.system,
            blocks=request_blocks(work.prompts.pack, None),
            tools=request_tools(),
        )

    return count


def _make_plan(
    run_id: str,
    manifest: Manifest,
    state: State,
    *,
    client: ApiClient | None,
    concurrency: int,
    on_message: Callable[[str], None],
    config: RunConfig,
    recorded: Mapping[str, Mode] | None = None,
    failed: dict[RepoSpec, str] | None = None,
) -> tuple[Plan, tuple[Carried, ...]]:
    """Pack, leave out the unchanged repos, build prompts and Jobs, and project both modes and
    the per-repo plan; input counted by the API if it can.

    With `failed`, a repo that cannot be packed is left out and recorded there with its reason.
    """

    def pack_failed(spec: RepoSpec, reason: str) -> None:
        assert failed is not None
        failed[spec] = reason
        on_message(f"failed {spec.slug}: {reason}")

    works = pack_all(
        manifest.repos,
        state.paths.repos,
        on_packed=lambda w: on_message(
            f"packed {w.spec.slug}: {len(w.pack.files)} files, ~{w.pack.token_estimate:,} tokens"
        ),
        on_failed=None if failed is None else pack_failed,
    )
    works, carried = triage(
        works, manifest, state.runs if state.paths.runs.exists() else None,  # plan makes no runs.db
        requested=config.mode, full=config.full, resumed=config.resume is not None,
        now=datetime.now(UTC), prompt_texts=load_prompts(manifest.prompts),
    )  # fmt: skip
    if recorded:
        works = as_recorded(works, recorded)
    for work, _ in carried:
        assert work.decision is not None
        on_message(f"{work.spec.slug}: {work.decision.reason}; not sent")
    works = with_prompts(works, manifest)
    prefixes = None
    if client is not None:
        try:
            prefixes = count_prefixes(works, _counter(client))
        except CallError as exc:
            if exc.kind == ErrorKind.AUTH:  # a rejected key is bad input: exit 2, nothing sent
                raise RunnerInputError(str(exc)) from None
            on_message(f"count_tokens unavailable ({exc}); using local estimates")
    the_plan = make_plan(
        run_id,
        manifest,
        works,
        state.ledger,
        limits=state.limiter.limits_in_force(manifest.model),
        health=state.limiter.health(manifest.model),
        concurrency=concurrency,
        prefixes=prefixes,
    )
    unchanged = tuple(w.decision for w, _ in carried if w.decision is not None)
    return replace(the_plan, unchanged=unchanged), carried


def plan(config: RunConfig, *, on_message: Callable[[str], None] = lambda _: None) -> PlanResult:
    """Pack and project both modes of `config.manifest` and say what admission would decide.

    Sends nothing (local estimates only), holds nothing and writes nothing.
    """
    state = open_state(config, readonly=True)
    pack_failures: dict[RepoSpec, str] = {}  # shown as failing, as `run` would fail them alone
    the_plan, _ = _make_plan(
        "plan",
        config.manifest,
        state,
        client=None,
        concurrency=_concurrency(config, state),
        on_message=on_message,
        config=config,
        failed=pack_failures,
    )
    # What `run` would refuse, `plan` says too: a broken suppressions file.
    load_repo_suppressions(config.manifest, {w.spec.slug: w for w in the_plan.works})
    messages_plan, the_plan = _on_api(the_plan, config, state)
    decision = state.ledger.decide(
        _wanted(the_plan, config),
        config.mode,
        health_ok=the_plan.health.ok,
        health_reason=the_plan.health.reason,
    )
    decision = _explained(decision, config, state, messages_plan)
    batches_plan = the_plan if config.api == Api.BATCHES else _batches_plan(messages_plan, state)
    sent = (
        ()
        if decision.mode == Decision.REFUSED
        else admitted_jobs(the_plan, config.mode, decision.mode)
    )
    return PlanResult(
        manifest=config.manifest.path,
        plan=the_plan,
        remaining_usd=state.ledger.status().to_json()["remaining_usd"],
        decision=Decision(decision.mode),
        reason=decision.reason,
        jobs=sent,
        api=config.api,
        apis=apis_json({Api.MESSAGES: messages_plan, Api.BATCHES: batches_plan}),
        failed={spec.slug: reason for spec, reason in pack_failures.items()},
    )


def _batches_plan(messages_plan: Plan, state: State) -> Plan:
    phase_s = phase_seconds(past_durations(state.runs))
    return to_batches(messages_plan, state.ledger, phase_s)


def _on_api(the_plan: Plan, config: RunConfig, state: State) -> tuple[Plan, Plan]:
    """(the Messages plan, the plan on the run's API): the same jobs, as batches if asked."""
    if config.api != Api.BATCHES:
        return the_plan, the_plan
    return the_plan, _batches_plan(the_plan, state)


def _explained(
    admission: Admission, config: RunConfig, state: State, messages_plan: Plan
) -> Admission:
    """The decision's reason, saying the API; on batches, what messages would have allowed."""
    if config.api != Api.BATCHES:
        return admission
    on_messages = state.ledger.decide(
        _wanted(messages_plan, config),
        config.mode,
        health_ok=messages_plan.health.ok,
        health_reason=messages_plan.health.reason,
        run_id=admission.run_id,
    )
    return replace(admission, reason=api_reason(config.api, admission.reason, on_messages.reason))


def _wanted(the_plan: Plan, config: RunConfig) -> dict[str, Projection]:
    """The projections the run may take: the per-repo plan (and all single, for auto)."""
    return wanted(the_plan, config.mode)


def run(
    config: RunConfig,
    *,
    on_progress: Callable[[Progress], None] = lambda _: None,
    on_message: Callable[[str], None] = lambda _: None,
) -> RunResult:
    """Plan, admit and run `config` (a new run, or the rest of `config.resume`)."""
    previous = config.resume
    run_id = previous.id if previous else _new_run_id()
    _check_out_dir(config.out_root)
    state = open_state(config)
    concurrency = _concurrency(config, state)
    manifest, done_rows, modes = config.manifest, {}, None
    gone: tuple[str, ...] = ()
    if previous is not None:
        take_over(state.runs, previous, dry_run=config.dry_run)  # before anything is sent
        recorded = state.runs.jobs(run_id)
        done_rows = {j.id: j for j in recorded if j.status == JobStatus.DONE}
        gone = gone_repos(manifest, recorded)
        manifest = _remaining(manifest, recorded)
        modes = recorded_modes([j for j in recorded if not j.warm])
    client = (
        None
        if config.dry_run or not config.count_tokens
        else ApiClient(config.base_url, config.api_key)
    )
    pack_failures: dict[RepoSpec, str] = {}
    the_plan, carried = _make_plan(
        run_id, manifest, state, client=client, concurrency=concurrency, on_message=on_message,
        config=config, recorded=modes, failed=pack_failures,
    )  # fmt: skip
    messages_plan, the_plan = _on_api(the_plan, config, state)
    if config.api == Api.MESSAGES:  # batch traffic does not use the per-minute limits
        _check_limits(the_plan, state.limiter)
    resumed = Reconciled()
    if previous is not None:
        resumed = reconcile(state.runs, run_id, gone, the_plan.works)
        done_rows = resumed.still_done(done_rows)
    if config.api == Api.BATCHES and previous is not None:
        # Project only what is still to submit: the rest is charged, or reserved in a batch.
        sent = {*done_rows, *BatchRecords(state.runs).in_flight(run_id)}
        the_plan = unsent_only(the_plan, state.ledger, sent)
    # Suppressions are read before admission: a broken file stops the run with nothing held or sent.
    tracker = tracker_for(
        config.manifest,
        the_plan.works + tuple(work for work, _ in carried),  # unchanged repos are tracked too
        state.runs,
        run_id,
        run_date=previous.created_at if previous else None,
        on_message=on_message,
    )
    admission = state.ledger.admit(
        run_id,
        _wanted(the_plan, config),
        config.mode,
        health_ok=the_plan.health.ok,
        health_reason=the_plan.health.reason,
    )
    admission = _explained(admission, config, state, messages_plan)
    on_message(f"mode: {admission.mode} ({admission.reason})")
    if admission.mode == Decision.REFUSED or config.dry_run:
        state.ledger.end_run(run_id)
        status = RunStatus.REFUSED if admission.mode == Decision.REFUSED else RunStatus.PLANNED
        if previous is not None and not config.dry_run:
            state.runs.update_run(run_id, status=status)  # ended: no longer running
        totals = state.ledger.run_totals(run_id)
        result = make_result(run_id, admission, status, None, {}, totals, None, the_plan)
        if admission.mode == Decision.REFUSED:
            return result
        admitted = admitted_jobs(the_plan, config.mode, admission.mode)
        return replace(result, decisions=tuple(the_plan.decisions_json(admitted)))
    execution = _Execution(
        config,
        state,
        run_id,
        the_plan,
        admission,
        done_rows,
        concurrency,
        tracker,
        pack_failures,
        resumed,
        carried,
    )
    try:
        if config.api == Api.BATCHES:
            return run_batches(execution, on_progress)
        return execution.run(on_progress)
    finally:
        state.ledger.end_run(run_id)


def _new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _check_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RunnerInputError(
            f"{out}: the output folder is not writable ({exc.strerror})"
        ) from exc


def _check_limits(the_plan: Plan, limiter: Limiter) -> None:
    """Refuse, before anything is sent, a request that a configured or learned limit could never
    hold (a built-in default never refuses: the request goes alone and its headers teach)."""
    for job in (j for jobs in the_plan.jobs.values() for j in jobs):
        why = limiter.refusal(job.model, job.rate_tokens, job.output_estimate)
        if why:
            raise RunnerInputError(
                f"repo {job.slug}: one request's {why}; lower max_input_tokens in the manifest"
            )


def _remaining(manifest: Manifest, jobs: Sequence[JobRow]) -> Manifest:
    """The manifest narrowed to the repos of a resumed run that still have jobs to do."""
    todo = {job.slug for job in jobs if job.status != JobStatus.DONE}
    return replace(manifest, repos=tuple(r for r in manifest.repos if r.slug in todo))


@dataclass
class _Execution:
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
