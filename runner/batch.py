"""A whole run: plan, admission by the ledger, the pool, reports, and resume.

Library code: it reports progress through callbacks and returns a RunResult; the CLI
renders both and chooses the exit code.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jobs.agents import COMBINED, build_prompt, load_prompts
from jobs.manifest import Manifest, load_manifest
from jobs.reports import write_summary
from ledger.ledger import Admission, Ledger
from ledger.prices import USAGE_FIELDS, usd
from runner.client import ApiClient, CallError
from runner.errors import RunnerInputError
from runner.limiter import Limiter, Limits
from runner.plan import WARM, Plan, RepoWork, make_plan, pack_all
from runner.pool import run_pool
from runner.reporting import finish_reports, json_totals, write_if_complete
from runner.runs import JobRow, Runs
from runner.worker import JobOutcome, JobSpec, WorkerConfig, request_blocks

__all__ = ["Progress", "RunOptions", "RunResult", "open_state", "plan_run", "run"]


@dataclass(frozen=True)
class RunOptions:
    mode: str | None = None  # None: the manifest's
    workers: int | None = None  # None: the in-flight cap
    out: Path | None = None
    resume: str | None = None
    dry_run: bool = False
    base_url: str | None = None
    api_key: str | None = (
        None  # only the simulator's dummy key; a real key stays in the environment
    )
    limits: Mapping[str, int] = field(default_factory=dict)  # CLI overrides of [limits]
    max_attempts: int = 5
    count_tokens: bool = True


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
    run_id: str
    mode: str
    reason: str
    status: str  # "done" | "failed" | "deferred" | "refused" | "interrupted" | "planned"
    stop: str | None
    jobs: Mapping[str, int]
    totals: Mapping[str, Any]
    out_dir: Path | None
    plan: Plan | None

    def to_json(self) -> dict[str, Any]:
        """The `run --json` document (keys from DESIGN.md, and more)."""
        return {
            "run_id": self.run_id,
            "status": self.status,
            "mode": self.mode,
            "reason": self.reason,
            "stop": self.stop,
            "jobs": dict(self.jobs),
            **{key: int(self.totals.get(key, 0)) for key in USAGE_FIELDS},
            "cost_usd": usd(int(self.totals.get("cost_micros", 0))),
            "unknown_requests": int(self.totals.get("unknown", 0)),
            "out_dir": str(self.out_dir) if self.out_dir else None,
            "resume": f"review-runner run --resume {self.run_id}"
            if self.status in ("interrupted", "deferred", "failed")
            else None,
        }


@dataclass
class State:
    state_dir: Path
    limiter: Limiter
    ledger: Ledger
    runs: Runs


def open_state(
    state_dir: Path, limits: Limits | None, runs: Runs | None = None, *, burst: float = 0.0
) -> State:
    """The three databases of a state directory."""
    return State(
        state_dir=state_dir,
        limiter=Limiter(state_dir, limits, burst=burst),
        ledger=Ledger(state_dir / "ledger.db", price_override=state_dir / "prices.json"),
        runs=runs or Runs(state_dir / "runs.db"),
    )


def limits_for(manifest: Manifest, overrides: Mapping[str, int]) -> Limits:
    """The configured limits: the manifest's [limits] with the CLI's overrides on top.

    Unset ones come from the API's headers, else the limiter's defaults.
    """
    merged = {**manifest.limits, **{k: v for k, v in overrides.items() if v is not None}}
    merged.pop("burst_seconds", None)
    return Limits(**merged)


def burst_for(manifest: Manifest, overrides: Mapping[str, int]) -> float:
    """Seconds of idle refill the limiter may spend at once (0: strict pacing, the default)."""
    chosen = overrides.get("burst_seconds")
    return float(manifest.limits.get("burst_seconds", 0) if chosen is None else chosen)


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


def _counter(
    client: ApiClient, prompts: Mapping[str, str], max_output: int
) -> Callable[[RepoWork], int]:
    """Count a repo's cacheable prefix (system + pack) with the API's count_tokens."""

    def count(work: RepoWork) -> int:
        prompt = build_prompt(work.pack, COMBINED, prompts, max_output_tokens=max_output)
        return client.count_tokens(
            model=work.spec.model, system=prompt.system, blocks=request_blocks(prompt.pack, None)
        )

    return count


def plan_run(
    manifest: Manifest,
    state: State,
    *,
    client: ApiClient | None,
    concurrency: int,
    on_message: Callable[[str], None] = lambda _: None,
) -> Plan:
    """Pack and project both modes; input counted by the API when a client is given."""
    works = pack_all(
        manifest.repos,
        state.state_dir / "repos",
        on_packed=lambda w: on_message(
            f"packed {w.spec.slug}: {len(w.pack.files)} files, ~{w.pack.token_estimate:,} tokens"
        ),
    )
    limits = state.limiter.limits_in_force()
    common: dict[str, Any] = {
        "cache_dir": state.state_dir / "repos",
        "limits": limits,
        "health": state.limiter.health(),
        "concurrency": concurrency,
        "works": works,
    }
    if client is None:
        return make_plan(manifest, state.ledger, **common)
    counter = _counter(client, load_prompts(manifest.prompts), manifest.max_output_tokens)
    try:
        return make_plan(manifest, state.ledger, counter=counter, **common)
    except CallError as exc:
        if exc.kind == "auth":  # a rejected key is bad input: exit 2, nothing sent
            raise RunnerInputError(str(exc)) from None
        on_message(f"count_tokens unavailable ({exc}); using local estimates")
        return make_plan(manifest, state.ledger, **common)


def run(
    manifest: Manifest | None,
    options: RunOptions,
    state_dir: Path,
    *,
    on_progress: Callable[[Progress], None] = lambda _: None,
    on_message: Callable[[str], None] = lambda _: None,
) -> RunResult:
    """Plan, admit and run `manifest` (None: resume the recorded run `options.resume`)."""
    runs = Runs(state_dir / "runs.db").open()
    previous = runs.run(options.resume) if options.resume else None
    if previous is not None:
        manifest = load_manifest(Path(previous.manifest))
        run_id, requested = previous.id, previous.mode or previous.requested_mode
        out_root = Path(previous.out_dir)
    else:
        assert manifest is not None
        run_id, requested = _new_run_id(), options.mode or manifest.mode
        out_root = options.out or manifest.out
    _check_out_dir(out_root)
    burst = burst_for(manifest, options.limits)
    state = open_state(state_dir, limits_for(manifest, options.limits), runs, burst=burst)
    concurrency = options.workers or state.limiter.limits_in_force()["max_concurrent"]

    done_rows: dict[str, JobRow] = {}
    if previous is not None:
        recorded = runs.jobs(run_id)
        done_rows = {j.id: j for j in recorded if j.status == "done"}
        manifest = _remaining(manifest, recorded)
    client = (
        None
        if options.dry_run or not options.count_tokens
        else ApiClient(options.base_url, options.api_key)
    )
    plan = plan_run(manifest, state, client=client, concurrency=concurrency, on_message=on_message)
    _check_limits(plan)
    projections = {m: p for m, p in plan.projections.items() if requested in ("auto", m)}
    admission = state.ledger.admit(
        run_id,
        projections,
        requested,
        health_ok=plan.health.ok,
        health_reason=plan.health.reason,
    )
    on_message(f"mode: {admission.mode} ({admission.reason})")
    if admission.mode == "refused" or options.dry_run:
        state.ledger.end_run(run_id)
        status = "refused" if admission.mode == "refused" else "planned"
        totals = state.ledger.run_totals(run_id)
        return _result(run_id, admission, status, None, {}, totals, None, plan)
    try:
        return _execute(
            run_id,
            manifest,
            plan,
            admission,
            options,
            state,
            out_root,
            previous is not None,
            done_rows,
            concurrency,
            on_progress,
            on_message,
        )
    finally:
        state.ledger.end_run(run_id)


def _check_limits(plan: Plan) -> None:
    """Refuse, before anything is sent, a request no ITPM bucket could ever hold."""
    itpm = plan.limits.get("itpm")
    for job in (j for jobs in plan.jobs.values() for j in jobs):
        if itpm and job.rate_tokens > itpm:
            raise RunnerInputError(
                f"repo {job.slug}: one request needs {job.rate_tokens:,} input tokens, more than "
                f"the itpm limit of {itpm:,} per minute; lower max_input_tokens in the manifest"
            )


def _remaining(manifest: Manifest, jobs: Sequence[JobRow]) -> Manifest:
    """The manifest narrowed to the repos of a resumed run that still have jobs to do."""
    todo = {job.slug for job in jobs if job.status != "done"}
    return replace(manifest, repos=tuple(r for r in manifest.repos if r.slug in todo))


def _execute(
    run_id: str,
    manifest: Manifest,
    plan: Plan,
    admission: Admission,
    options: RunOptions,
    state: State,
    out_root: Path,
    resumed: bool,
    done_rows: Mapping[str, JobRow],
    concurrency: int,
    on_progress: Callable[[Progress], None],
    on_message: Callable[[str], None],
) -> RunResult:
    mode, runs = admission.mode, state.runs
    out_dir = out_root / run_id
    planned = [(j.slug, j.agent) for j in plan.jobs[mode]]
    if resumed:
        runs.add_jobs(run_id, planned)
    else:
        runs.create_run(
            run_id,
            manifest=str(manifest.path),
            name=manifest.name,
            requested_mode=options.mode or manifest.mode,
            out_dir=str(out_root),
            repos=[
                {
                    "slug": w.spec.slug,
                    "path": str(w.root),
                    "model": w.spec.model,
                    "pack": w.pack.summary(),
                    "pack_sha256": w.pack.sha256,
                }
                for w in plan.works
            ],
            jobs=planned,
        )
    runs.update_run(run_id, status="running", mode=mode, reason=admission.reason, pid=os.getpid())
    projection = plan.projections[mode]
    output_estimate = max(1, -(-projection.output_tokens // max(1, projection.requests)))
    works = {w.spec.slug: w for w in plan.works}
    left = [
        j
        for j in plan.jobs[mode]
        if j.agent != WARM and f"{run_id}/{j.slug}/{j.agent}" not in done_rows
    ]
    # A resumed repo's cache has likely expired: warm it again if any of its agents is left.
    slugs_left = {j.slug for j in left}
    todo = [j for j in plan.jobs[mode] if j in left or (j.agent == WARM and j.slug in slugs_left)]
    specs = [
        JobSpec(
            run_id=run_id,
            job_id=f"{run_id}/{job.slug}/{job.agent}",
            slug=job.slug,
            agent=job.agent,
            mode=mode,
            model=job.model,
            max_output=job.max_output,
            output_estimate=min(output_estimate, job.max_output),
            input_tokens=job.input_tokens,
            rate_tokens=job.rate_tokens,
            pack=works[job.slug].pack,
            prompts=dict(plan.prompts),
            repo_root=works[job.slug].root,
            cache=bool(job.cache_write or job.cache_read),
            warm=job.agent == WARM,
            after=f"{run_id}/{job.slug}/{job.after}" if job.after else None,
        )
        for job in todo
    ]
    config = WorkerConfig(
        state_dir=state.state_dir,
        limits=None,  # the main process stored the configuration; workers share it
        burst=burst_for(manifest, options.limits),
        base_url=options.base_url,
        api_key=options.api_key,
        max_attempts=options.max_attempts,
    )
    reviews_done = sum(1 for j in done_rows.values() if j.agent != WARM)
    counts = {"done": reviews_done, "failed": 0, "deferred": 0, "cost": 0, "rate_limited": 0}
    total = sum(1 for s in specs if not s.warm) + reviews_done

    def on_outcome(outcome: JobOutcome, in_flight: int) -> None:
        if outcome.status != "done":
            runs.finish_job(
                outcome.job_id, outcome.status, error=outcome.error, attempts=outcome.attempts
            )
        counts[outcome.status] += outcome.agent != WARM
        counts["cost"] += outcome.cost_micros
        counts["rate_limited"] += outcome.rate_limited
        write_if_complete(run_id, outcome.slug, mode, out_dir, runs)
        on_progress(_progress(counts, total, in_flight, outcome=outcome))

    def on_stopping(reason: str, in_flight: int) -> None:
        message = {
            "interrupted": "interrupted: no new requests; waiting for the requests in flight "
            "(Ctrl-C again to abandon them)",
            "budget": "the month's budget is used up: the remaining jobs are deferred",
            "spend_cap": "the account's spend limit is reached: sending nothing more",
            "auth": "the API rejected the credentials: stopping",
        }[reason]
        on_progress(_progress(counts, total, in_flight, message=message))

    out_dir.mkdir(parents=True, exist_ok=True)
    on_progress(_progress(counts, total, 0))  # the starting line: what is left to do
    try:
        pool = run_pool(
            specs, config, workers=concurrency, on_outcome=on_outcome, on_stopping=on_stopping
        )
    except BaseException:
        runs.update_run(run_id, status="interrupted")
        raise
    if pool.stop in ("budget", "spend_cap"):
        for spec in pool.unsent:
            runs.finish_job(spec.job_id, "deferred", error=f"not sent: {pool.stop}")
    rows = runs.jobs(run_id)
    repo_outcomes = finish_reports(run_id, mode, out_dir, runs, rows)
    tally = {
        key: sum(1 for r in rows if r.status == key and r.agent != WARM)
        for key in ("done", "failed", "deferred", "pending")
    }
    if pool.stop == "interrupted":
        status = "interrupted"
    elif pool.stop == "auth":
        status = "failed"
    elif tally["deferred"] or pool.stop in ("budget", "spend_cap"):
        status = "deferred"
    elif tally["failed"] or tally["pending"]:
        status = "failed"
    else:
        status = "done"
    totals = state.ledger.run_totals(run_id)
    write_summary(out_dir, run_id, repo_outcomes, totals=json_totals(totals))
    runs.update_run(run_id, status=status)
    return _result(run_id, admission, status, pool.stop, tally, totals, out_dir, plan)


def _progress(counts: Mapping[str, int], total: int, in_flight: int, **extra: Any) -> Progress:
    return Progress(
        total=total,
        done=counts["done"],
        failed=counts["failed"],
        deferred=counts["deferred"],
        in_flight=in_flight,
        cost_micros=counts["cost"],
        rate_limited=counts["rate_limited"],
        **extra,
    )


def _result(
    run_id: str,
    admission: Admission,
    status: str,
    stop: str | None,
    tally: Mapping[str, int],
    totals: Mapping[str, int],
    out_dir: Path | None,
    plan: Plan,
) -> RunResult:
    return RunResult(
        run_id=run_id,
        mode=admission.mode,
        reason=admission.reason,
        status=status,
        stop=stop,
        jobs={key: int(tally.get(key, 0)) for key in ("done", "failed", "deferred", "pending")},
        totals=totals,
        out_dir=out_dir,
        plan=plan,
    )
