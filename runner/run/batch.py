"""A whole run: plan, admission by the ledger, then its execution, and resume; and `plan` alone.

Library code: it reports progress through callbacks and returns frozen result objects
(RunResult, PlanResult); the CLI renders them and chooses the exit code. An admitted run is
executed by runner.run.execution (Messages) or runner.run.batches (Message Batches); the
databases it opens are runner.run.state's.

Totals: see runner.run.results (job counts from runs.db, money from the ledger).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from jobs.agents import load_prompts
from jobs.manifest import Manifest, RepoSpec
from ledger.ledger import Admission, Projection
from ledger.modes import Decision, Mode
from runner.client import ApiClient, CallError
from runner.errors import RunnerInputError
from runner.kinds import ErrorKind, JobStatus, RunStatus
from runner.limiter import Limiter
from runner.run.batches import run_batches
from runner.run.batchplan import Api, api_reason, apis_json, phase_seconds, to_batches, unsent_only
from runner.run.batchrecords import BatchRecords, past_durations
from runner.run.config import RunConfig
from runner.run.execution import AdmittedRun
from runner.run.incremental import Carried, triage
from runner.run.per_repo import admitted_jobs, as_recorded, recorded_modes, wanted
from runner.run.plan import Plan, RepoWork, count_prefixes, make_plan, pack_all, with_prompts
from runner.run.results import PlanResult, Progress, RunResult, make_result
from runner.run.resume import Reconciled, gone_repos, reconcile, take_over
from runner.run.state import State, open_state
from runner.run.tracker import load_repo_suppressions, tracker_for
from runner.run.worker import request_blocks, request_tools
from runner.runs import JobRow

__all__ = ["plan", "run"]


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
    execution = AdmittedRun(
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
