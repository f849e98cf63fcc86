"""One review request, start to finish, inside a worker process.

Each attempt goes: limiter acquire, ledger reserve, the call, then limiter observe and
settle, the reply recorded in runs.db, ledger settle. Every path out of an attempt
settles or releases both the lease and the reservation, so a failed request never
leaves the account paced or the budget held.

The process receives every repo's pack and prompt texts once, at start (`serve`); a Job
names its repo by slug. A stopping run (Ctrl-C, a state store that cannot be used) sets a
shared event: a job checks it before each acquire, while waiting for the limiter and right
before each send, so no new request leaves after it, not even a retry.
"""

from __future__ import annotations

import pickle
import random
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from jobs.agents import FINDINGS_TOOL_NAME, findings_tool, findings_tool_choice, load_prompts
from jobs.findings import parse_content
from jobs.pack import pack_repo
from jobs.pack_format import estimate_tokens
from ledger.errors import BudgetExceeded
from ledger.ledger import Ledger, Reservation
from runner.client import CONNECT_TIMEOUT_S, READ_TIMEOUT_S, ApiClient, CallError, Reply
from runner.kinds import Billed, ErrorKind, JobStatus, StopReason
from runner.limiter import AcquireCancelled, AcquireTimeout, Lease, Limiter, TooLarge
from runner.reachability import UNREACHABLE_AFTER, Breaker
from runner.run.job import Job, JobOutcome
from runner.run.plan import TOOL_TOKENS, RepoWork, repo_prompts
from runner.runs import Runs
from statedb import StatePaths

__all__ = [
    "Raised",
    "WorkerConfig",
    "init_worker",
    "request_blocks",
    "request_tools",
    "run_job",
    "serve",
]

# A 429 is the limiter's business (shared cooldown), not a failure of the job, but a job
# that keeps meeting them is not going to get through: give up after this many.
MAX_RATE_LIMITED = 20
# The share of the pack kept when the API says the prompt is too long (once per job).
SHRINK = 0.7
# Attempts of one job that got no response within the read timeout: each may have been billed,
# and an endpoint that took two requests and answered neither is not going to answer a third.
MAX_TIMED_OUT = 2
# Failures that never reached the API: they count toward the run's connectivity breaker.
UNREACHED = (ErrorKind.NOT_SENT, ErrorKind.TIMED_OUT)


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker process needs. Holds no secret: the SDK reads the key from the environment."""

    state_dir: Path
    base_url: str | None
    burst: float | None = None  # see LimitsConfig.burst_seconds
    api_key: str | None = None  # only ever the simulator's dummy key
    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    acquire_timeout: float | None = 3600.0
    read_timeout: float = READ_TIMEOUT_S
    connect_timeout: float = CONNECT_TIMEOUT_S
    breaker: Path | None = None  # the run's shared connectivity counter (None: no breaker)
    unreachable_after: int = UNREACHABLE_AFTER
    prompts_folder: Path | None = None  # the manifest's prompt folder, to rebuild a shrunk prompt
    max_output_tokens: int = 4096  # the manifest's, written into the instructions


@dataclass
class _Context:
    config: WorkerConfig
    limiter: Limiter
    ledger: Ledger
    runs: Runs
    client: ApiClient
    repos: dict[str, RepoWork]
    stop: Any = None  # the pool's multiprocessing Event: set when the run stops sending
    breaker: Breaker | None = None

    def stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less when the run stops meanwhile."""
        if self.stop is None:
            time.sleep(seconds)
        else:
            self.stop.wait(seconds)


@dataclass(frozen=True)
class Raised:
    """What a worker sends back instead of an outcome when a job raised: the error itself."""

    error: BaseException

    @classmethod
    def of(cls, exc: BaseException) -> Raised:
        """`exc`, or a plain RuntimeError naming it when it does not survive the pipe."""
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:
            return cls(RuntimeError(f"{type(exc).__name__}: {exc}"))
        return cls(exc)


@dataclass
class _Attempts:
    """One job's counters across its attempts."""

    sent: int = 0
    rate_limited: int = 0
    timed_out: int = 0
    unreached: int = 0  # attempts in a row that did not reach the API
    shrunk: RepoWork | None = None  # this job's own smaller pack, after "prompt too long"


_CTX: _Context | None = None


def init_worker(config: WorkerConfig, repos: Mapping[str, RepoWork], stop: Any = None) -> None:
    """Pool initializer: this process's limiter, ledger, runs db, API client, and every repo's
    pack and prompts (shipped once per process, not once per job).

    Workers ignore SIGINT: the parent decides what a Ctrl-C means (finish what is in flight).
    """
    global _CTX
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    paths = StatePaths(config.state_dir)
    client = ApiClient(
        config.base_url,
        config.api_key,
        read_timeout=config.read_timeout,
        connect_timeout=config.connect_timeout,
    )
    breaker = None
    if config.breaker is not None:
        breaker = Breaker(config.breaker, client.endpoint, config.unreachable_after)
    _CTX = _Context(
        config=config,
        # limits None: the main process stored the configuration; workers share it.
        limiter=Limiter(config.state_dir, None, burst=config.burst, base_url=config.base_url),
        ledger=Ledger(paths.ledger, price_override=paths.prices),
        runs=Runs(paths.runs),
        client=client,
        repos=dict(repos),
        stop=stop,
        breaker=breaker,
    )


def serve(conn: Connection, config: WorkerConfig, repos: Mapping[str, RepoWork], stop: Any) -> None:
    """A worker process: run each Job received on `conn` and send back its outcome (or Raised).

    `None` received, or the pool's end of the pipe closed, ends the process. A failure to
    set up (a state database that cannot be opened) is the answer to every job.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    broken: Raised | None = None
    try:
        init_worker(config, repos, stop)
    except Exception as exc:
        broken = Raised.of(exc)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        answer: JobOutcome | Raised
        if broken is not None:
            answer = broken
        else:
            try:
                answer = run_job(job)
            except Exception as exc:
                answer = Raised.of(exc)
        conn.send(answer)


def request_blocks(
    pack_text: str, instructions: str | None, *, cache_ttl: str | None = None
) -> list[dict[str, Any]]:
    """The user content: the pack first (a cacheable prefix when `cache_ttl` is set), then the
    agent's instructions (none for a cache warm-up)."""
    pack: dict[str, Any] = {"type": "text", "text": pack_text}
    if cache_ttl:
        pack["cache_control"] = {"type": "ephemeral"}
        if cache_ttl == "1h":
            pack["cache_control"]["ttl"] = "1h"
    return [pack] if instructions is None else [pack, {"type": "text", "text": instructions}]


def request_tools() -> dict[str, Any]:
    """The ``tools`` and forced ``tool_choice`` of every request, the warm-up's too.

    Tools come first in the prompt order, so they are part of the cached prefix: identical for every agent
    (and a warm-up without them, or with another tool_choice, would cache a prefix nobody reads).
    """
    return {"tools": [findings_tool()], "tool_choice": findings_tool_choice()}


def _backoff(attempt: int, config: WorkerConfig) -> float:
    # Full jitter: spreads retries of many workers hit by the same outage.
    return random.uniform(0, min(config.backoff_cap, config.backoff_base * 2**attempt))


def run_job(job: Job) -> JobOutcome:
    """Run one job to an outcome, retrying as its errors allow. Never raises for API errors."""
    assert _CTX is not None, "init_worker was not called"
    ctx = _CTX
    tries = _Attempts()
    while True:
        reason = ctx.breaker.opened() if ctx.breaker else None
        if reason:  # another worker found the API unreachable: defer, send nothing
            return _unreachable(job, reason, tries)
        # Built before anything is held: nothing below the acquire may fail unaccounted.
        system, blocks = _request(tries.shrunk or ctx.repos[job.slug], job)
        unsent = JobOutcome(job, JobStatus.PENDING, attempts=tries.sent)
        if ctx.stopping():
            return unsent
        try:
            lease = ctx.limiter.acquire(
                job.rate_tokens,
                job.output_estimate,
                timeout=ctx.config.acquire_timeout,
                model=job.model,
                cancelled=ctx.stopping,
            )
        except AcquireCancelled:
            return unsent
        except (AcquireTimeout, TooLarge) as exc:  # TooLarge: a limit learned since the plan
            return JobOutcome(job, JobStatus.FAILED, error=str(exc), attempts=tries.sent)
        try:
            reservation = ctx.ledger.reserve(
                job.run_id,
                job.id,
                job.model,
                job.input_tokens,
                job.max_output,
                counted=job.counted,  # an exact count is reserved as it is
                cache_ttl=job.cache_ttl,  # a 1-hour cache write bills at its own, higher rate
                agent=job.key,
                review=job.review,
                mode=job.mode,
            )
        except BudgetExceeded as exc:
            ctx.limiter.release(lease)
            return JobOutcome(
                job, JobStatus.DEFERRED, error=str(exc), stop=StopReason.BUDGET, attempts=tries.sent
            )
        except BaseException:
            ctx.limiter.release(lease)
            raise
        if ctx.stopping():  # the last look before the request leaves
            ctx.ledger.release(reservation)
            ctx.limiter.release(lease)
            return unsent
        tries.sent += 1
        try:
            reply = ctx.client.create(
                model=job.model,
                system=system,
                blocks=blocks,
                max_tokens=job.max_output,
                extra_headers={"x-review-job": job.id},
                tools=request_tools(),
            )
        except CallError as err:
            _account_failure(ctx, err, lease, reservation, job)
            outcome, job = _after_failure(ctx, job, err, tries)
            if outcome is None:
                continue
            return outcome
        except BaseException:
            # Interrupted mid-request: it may have been processed, keep it charged.
            ctx.ledger.mark_unknown(reservation)
            ctx.limiter.release(lease)
            raise
        return _account_success(ctx, job, reply, (lease, reservation), tries)


def _after_failure(
    ctx: _Context, job: Job, err: CallError, tries: _Attempts
) -> tuple[JobOutcome | None, Job]:
    """What a failed attempt leads to: an outcome, or None to try again (with this job)."""
    stopped = _reachability(ctx, job, err, tries)
    if stopped is not None:
        return stopped, job
    if err.kind == ErrorKind.RATE_LIMITED:
        tries.rate_limited += 1
        ctx.ledger.record_event("rate_limited", run_id=job.run_id)
        # The shared cooldown makes every process wait, this one included.
        ctx.limiter.penalize(err.retry_after or 1.0, err.limit, model=job.model)
        if tries.rate_limited <= MAX_RATE_LIMITED:
            tries.sent -= 1
            return None, job
    elif err.kind == ErrorKind.SPEND_CAP:
        ctx.ledger.record_event("spend_cap", run_id=job.run_id)
        stop = StopReason.SPEND_CAP
        return JobOutcome(
            job, JobStatus.DEFERRED, error=str(err), stop=stop, attempts=tries.sent
        ), job
    elif err.kind == ErrorKind.AUTH:
        stop = StopReason.AUTH
        return JobOutcome(
            job, JobStatus.FAILED, error=str(err), stop=stop, attempts=tries.sent
        ), job
    elif err.kind == ErrorKind.TOO_LONG and tries.shrunk is None:
        tries.shrunk = _shrunk(ctx, ctx.repos[job.slug])
        return None, _resized(job, tries.shrunk)
    elif err.retryable and tries.sent < ctx.config.max_attempts:
        ctx.pause(_backoff(tries.sent, ctx.config))
        return None, job
    return _failed(job, err, tries), job


def _reachability(ctx: _Context, job: Job, err: CallError, tries: _Attempts) -> JobOutcome | None:
    """Count `err` toward the run's connectivity breaker: DEFERRED when the API counts as
    unreachable, FAILED after MAX_TIMED_OUT silent attempts, None to go on as the error says."""
    if err.kind not in UNREACHED:
        tries.unreached = 0
        if ctx.breaker:
            ctx.breaker.success()  # an HTTP answer: the API can be reached
        return None
    tries.unreached += 1
    if err.kind == ErrorKind.TIMED_OUT:
        tries.timed_out += 1
    gave_up = tries.timed_out >= MAX_TIMED_OUT or tries.sent >= ctx.config.max_attempts
    if ctx.breaker:
        reason = ctx.breaker.failure(str(err), gave_up_after=tries.unreached if gave_up else None)
        if reason:
            return _unreachable(job, reason, tries)
    return _failed(job, err, tries) if tries.timed_out >= MAX_TIMED_OUT else None


def _failed(job: Job, err: CallError, tries: _Attempts) -> JobOutcome:
    return JobOutcome(
        job,
        JobStatus.FAILED,
        error=f"{err} (after {tries.sent} attempts)",
        attempts=tries.sent,
        rate_limited=tries.rate_limited,
    )


def _unreachable(job: Job, reason: str, tries: _Attempts) -> JobOutcome:
    """Deferred, for a resume: the API could not be reached (the run stops submitting)."""
    return JobOutcome(
        job,
        JobStatus.DEFERRED,
        error=reason,
        stop=StopReason.UNREACHABLE,
        attempts=tries.sent,
        rate_limited=tries.rate_limited,
    )


def _request(work: RepoWork, job: Job) -> tuple[str, list[dict[str, Any]]]:
    """The system prompt and user content blocks of `job`, from its repo's prompts."""
    prompts = work.prompts
    assert prompts is not None
    # A warm-up sends only the prefix (system + pack), the same for every agent.
    blocks = request_blocks(
        prompts.pack,
        None if job.warm else prompts.instructions[job.agent],
        cache_ttl=job.cache_ttl if job.cache else None,
    )
    return prompts.system, blocks


def _account_failure(
    ctx: _Context, err: CallError, lease: Lease, reservation: Reservation, job: Job
) -> None:
    if err.kind == ErrorKind.RATE_LIMITED:  # before its headers: did the last ones say room?
        ctx.limiter.rate_limited(lease, err.limit, err.headers)
    if err.headers:
        ctx.limiter.observe(err.headers, model=job.model, lease=lease)
    if err.status is not None:
        ctx.limiter.record(status=err.status, latency=err.latency)
    if err.billed == Billed.UNKNOWN:
        # Sent, no answer: the API may have processed and billed it.
        ctx.ledger.mark_unknown(reservation)
        ctx.limiter.settle(
            lease, {"input_tokens": job.rate_tokens, "output_tokens": job.output_estimate}
        )
    else:
        ctx.ledger.release(reservation)
        ctx.limiter.release(lease)


def _account_success(
    ctx: _Context,
    job: Job,
    reply: Reply,
    held: tuple[Lease, Reservation],
    tries: _Attempts,
) -> JobOutcome:
    lease, reservation = held
    if ctx.breaker:
        ctx.breaker.success()
    ctx.limiter.observe(reply.headers, model=job.model, lease=lease, usage=reply.usage)
    ctx.limiter.settle(lease, reply.usage)
    ctx.limiter.record(status=200, latency=reply.latency)
    result = None
    if not job.warm:
        pack = (tries.shrunk or ctx.repos[job.slug]).pack
        # The forced tool call's input; a gateway that answers in text gets the tolerant text parser.
        content = reply.content or ({"type": "text", "text": reply.text},)
        result = parse_content(
            content, reply.stop_reason, agent=job.agent, tool_name=FINDINGS_TOOL_NAME, pack=pack
        ).to_dict()
    # The reply is recorded before the ledger settles: if this process dies in between,
    # the job is not sent again and its reservation shows as unknown, never as free.
    ctx.runs.finish_job(
        job.id,
        JobStatus.DONE,
        result=result,
        usage=reply.usage,
        request_id=reply.request_id,
        attempts=tries.sent,
    )
    cost = ctx.ledger.settle(
        reservation, reply.usage, request_id=reply.request_id, service_tier=reply.service_tier
    )
    ctx.runs.set_job_cost(job.id, cost)
    return JobOutcome(
        job,
        JobStatus.DONE,
        result=result,
        usage=reply.usage,
        cost_micros=cost,
        attempts=tries.sent,
        rate_limited=tries.rate_limited,
    )


def _shrunk(ctx: _Context, work: RepoWork) -> RepoWork:
    """`work` repacked to SHRINK of its size, with its prompts rebuilt (for one job only)."""
    pack = pack_repo(
        work.root, slug=work.spec.slug, max_input_tokens=int(work.pack.token_estimate * SHRINK)
    )
    assert work.prompts is not None
    texts = load_prompts(ctx.config.prompts_folder)
    agents = tuple(work.prompts.instructions)
    return replace(
        work, pack=pack, prompts=repo_prompts(pack, agents, texts, ctx.config.max_output_tokens)
    )


def _resized(job: Job, work: RepoWork) -> Job:
    """`job` sized for the prompt it now sends (`work`'s shrunk pack), so that its reservation is
    for that prompt: a local estimate of those very texts (the ledger adds its margin), never
    counted. The new prefix is in no cache yet: a cacheable request writes it, reads nothing."""
    prompts = work.prompts
    assert prompts is not None
    prefix = TOOL_TOKENS + estimate_tokens(prompts.system) + estimate_tokens(prompts.pack)
    instructions = 0 if job.warm else estimate_tokens(prompts.instructions[job.agent])
    return replace(
        job,
        input_tokens=prefix + instructions,
        cache_write=prefix if job.cache else 0,
        cache_read=0,
        counted=False,
    )
