"""One review request, start to finish, inside a worker process.

Each attempt goes: limiter acquire, ledger reserve, the call, then limiter observe and
settle, the reply recorded in runs.db, ledger settle. Every path out of an attempt
settles or releases both the lease and the reservation, so a failed request never
leaves the account paced or the budget held.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jobs.agents import COMBINED, build_prompt
from jobs.findings import parse
from jobs.pack import Pack, pack_repo
from ledger.errors import BudgetExceeded
from ledger.ledger import Ledger, Reservation
from runner.client import ApiClient, CallError
from runner.limiter import AcquireTimeout, Lease, Limiter, Limits
from runner.runs import Runs

__all__ = ["JobOutcome", "JobSpec", "WorkerConfig", "init_worker", "request_blocks", "run_job"]

# A 429 is the limiter's business (shared cooldown), not a failure of the job, but a job
# that keeps meeting them is not going to get through: give up after this many.
MAX_RATE_LIMITED = 20
# The share of the pack kept when the API says the prompt is too long (once per job).
SHRINK = 0.7


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker process needs. Holds no secret: the SDK reads the key from the environment."""

    state_dir: Path
    limits: Limits | None
    base_url: str | None
    burst: float = 0.0
    api_key: str | None = None  # only ever the simulator's dummy key
    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    acquire_timeout: float | None = 3600.0
    request_timeout: float = 600.0


@dataclass(frozen=True)
class JobSpec:
    """One request of a run: one agent's review of one repo (or the combined review)."""

    run_id: str
    job_id: str
    slug: str
    agent: str
    mode: str
    model: str
    max_output: int
    output_estimate: int
    input_tokens: int  # all of it, for the ledger's worst case
    rate_tokens: int  # what counts toward ITPM (cache reads do not), for the limiter
    pack: Pack
    prompts: Mapping[str, str]
    repo_root: Path
    cache: bool = False  # mark the pack as a cacheable prefix
    warm: bool = False  # the max_tokens=0 request that writes the prefix to the cache
    after: str | None = None  # job id that must finish first
    cache_ttl: str = "5m"


@dataclass(frozen=True)
class JobOutcome:
    """What became of a job. `stop` asks the parent to submit nothing more (auth, spend cap, budget)."""

    job_id: str
    slug: str
    agent: str
    status: str  # "done" | "failed" | "deferred"
    result: dict[str, Any] | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    cost_micros: int = 0
    error: str | None = None
    attempts: int = 0
    rate_limited: int = 0
    stop: str | None = None


@dataclass
class _Context:
    config: WorkerConfig
    limiter: Limiter
    ledger: Ledger
    runs: Runs
    client: ApiClient


_CTX: _Context | None = None


def init_worker(config: WorkerConfig) -> None:
    """Pool initializer: open this process's own limiter, ledger, runs db and API client.

    Workers ignore SIGINT: the parent decides what a Ctrl-C means (finish what is in flight).
    """
    global _CTX
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _CTX = _Context(
        config=config,
        limiter=Limiter(config.state_dir, config.limits, burst=config.burst),
        ledger=Ledger(
            config.state_dir / "ledger.db", price_override=config.state_dir / "prices.json"
        ),
        runs=Runs(config.state_dir / "runs.db"),
        client=ApiClient(config.base_url, config.api_key, timeout=config.request_timeout),
    )


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


def _backoff(attempt: int, config: WorkerConfig) -> float:
    # Full jitter: spreads retries of many workers hit by the same outage.
    return random.uniform(0, min(config.backoff_cap, config.backoff_base * 2**attempt))


def run_job(spec: JobSpec) -> JobOutcome:
    """Run one job to an outcome, retrying as its errors allow. Never raises for API errors."""
    assert _CTX is not None, "init_worker was not called"
    ctx = _CTX
    attempts = rate_limited = 0
    shrunk = False
    blocks, system = _request(spec)
    while True:
        try:
            lease = ctx.limiter.acquire(
                spec.rate_tokens, spec.output_estimate, timeout=ctx.config.acquire_timeout
            )
        except AcquireTimeout as exc:
            return _outcome(spec, "failed", error=str(exc), attempts=attempts)
        try:
            reservation = ctx.ledger.reserve(
                spec.run_id,
                spec.job_id,
                spec.model,
                spec.input_tokens,
                spec.max_output,
                agent=spec.agent,
                review=f"{spec.run_id}/{spec.slug}",
                mode=spec.mode,
            )
        except BudgetExceeded as exc:
            ctx.limiter.release(lease)
            return _outcome(spec, "deferred", error=str(exc), stop="budget", attempts=attempts)
        except BaseException:
            ctx.limiter.release(lease)
            raise
        attempts += 1
        try:
            reply = ctx.client.create(
                model=spec.model,
                system=system,
                blocks=blocks,
                max_tokens=spec.max_output,
                extra_headers={"x-review-job": spec.job_id},
            )
        except CallError as err:
            _account_failure(ctx, err, lease, reservation, spec)
            if err.kind == "rate_limited":
                rate_limited += 1
                ctx.ledger.record_event("rate_limited", run_id=spec.run_id)
                # The shared cooldown makes every process wait, this one included.
                ctx.limiter.penalize(err.retry_after or 1.0, err.limit)
                if rate_limited <= MAX_RATE_LIMITED:
                    attempts -= 1
                    continue
            elif err.kind == "spend_cap":
                ctx.ledger.record_event("spend_cap", run_id=spec.run_id)
                return _outcome(
                    spec, "deferred", error=str(err), stop="spend_cap", attempts=attempts
                )
            elif err.kind == "auth":
                return _outcome(spec, "failed", error=str(err), stop="auth", attempts=attempts)
            elif err.kind == "too_long" and not shrunk:
                shrunk = True
                spec = _shrink(spec)
                blocks, system = _request(spec)
                continue
            elif err.retryable and attempts < ctx.config.max_attempts:
                time.sleep(_backoff(attempts, ctx.config))
                continue
            return _outcome(
                spec,
                "failed",
                error=f"{err} (after {attempts} attempts)",
                attempts=attempts,
                rate_limited=rate_limited,
            )
        except BaseException:
            # Interrupted mid-request: it may have been processed, keep it charged.
            ctx.ledger.mark_unknown(reservation)
            ctx.limiter.release(lease)
            raise
        return _account_success(ctx, spec, reply, lease, reservation, attempts, rate_limited)


def _request(spec: JobSpec) -> tuple[list[dict[str, Any]], str]:
    """The user content blocks and the system prompt of `spec`, built once per pack."""
    # A warm-up sends only the prefix (system + pack), the same for every agent; its
    # instructions are never sent, so any agent and output cap will do to build it.
    agent, cap = (COMBINED, 1) if spec.warm else (spec.agent, spec.max_output)
    prompt = build_prompt(spec.pack, agent, spec.prompts, max_output_tokens=cap)
    blocks = request_blocks(
        prompt.pack,
        None if spec.warm else prompt.instructions,
        cache_ttl=spec.cache_ttl if spec.cache else None,
    )
    return blocks, prompt.system


def _account_failure(
    ctx: _Context, err: CallError, lease: Lease, reservation: Reservation, spec: JobSpec
) -> None:
    if err.headers:
        ctx.limiter.observe(err.headers)
    if err.status is not None:
        ctx.limiter.record(status=err.status, latency=err.latency)
    if err.billed == "unknown":
        # Sent, no answer: the API may have processed and billed it.
        ctx.ledger.mark_unknown(reservation)
        ctx.limiter.settle(
            lease, {"input_tokens": spec.rate_tokens, "output_tokens": spec.output_estimate}
        )
    else:
        ctx.ledger.release(reservation)
        ctx.limiter.release(lease)


def _account_success(
    ctx: _Context,
    spec: JobSpec,
    reply: Any,
    lease: Lease,
    reservation: Reservation,
    attempts: int,
    rate_limited: int,
) -> JobOutcome:
    ctx.limiter.observe(reply.headers)
    ctx.limiter.settle(lease, reply.usage)
    ctx.limiter.record(status=200, latency=reply.latency)
    result = None
    if not spec.warm:
        result = parse(reply.text, reply.stop_reason, agent=spec.agent, pack=spec.pack).to_dict()
    # The reply is recorded before the ledger settles: if this process dies in between,
    # the job is not sent again and its reservation shows as unknown, never as free.
    ctx.runs.finish_job(
        spec.job_id,
        "done",
        result=result,
        usage=reply.usage,
        request_id=reply.request_id,
        attempts=attempts,
    )
    cost = ctx.ledger.settle(
        reservation, reply.usage, request_id=reply.request_id, service_tier=reply.service_tier
    )
    ctx.runs.set_job_cost(spec.job_id, cost)
    return _outcome(
        spec,
        "done",
        result=result,
        usage=reply.usage,
        cost_micros=cost,
        attempts=attempts,
        rate_limited=rate_limited,
    )


def _shrink(spec: JobSpec) -> JobSpec:
    budget = int(spec.pack.token_estimate * SHRINK)
    pack = pack_repo(spec.repo_root, slug=spec.slug, max_input_tokens=budget)
    return replace(
        spec,
        pack=pack,
        input_tokens=int(spec.input_tokens * SHRINK),
        rate_tokens=int(spec.rate_tokens * SHRINK),
    )


def _outcome(spec: JobSpec, status: str, **fields: Any) -> JobOutcome:
    return JobOutcome(job_id=spec.job_id, slug=spec.slug, agent=spec.agent, status=status, **fields)
