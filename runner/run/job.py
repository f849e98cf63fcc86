"""One Job from plan to worker, and what became of it.

A Job is made once, by the plan, and travels unchanged to the pool, the worker, the
limiter and the ledger: no field is copied into another record on the way. It holds no
pack: a repo's pack and prompt texts travel to each worker process once (runner.run.pool).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ledger.modes import Mode
from runner.kinds import JobStatus, StopReason

__all__ = ["WARM_KEY", "Job", "JobOutcome"]

#: The runs.db key of a repo's cache warm-up job (runs recorded before the warm flag used it too).
WARM_KEY = "_warm"


@dataclass(frozen=True)
class Job:
    """One request of a run: one agent's review of one repo, the combined review, or a warm-up.

    Input counts include the cached prefix. `counted` says the API's count_tokens measured
    `input_tokens` exactly: the ledger then reserves exactly that and learns nothing from it.
    """

    run_id: str
    slug: str
    agent: str  # for a warm-up: the agent whose prefix it writes (the repo's first)
    mode: Mode
    model: str
    input_tokens: int
    max_output: int
    counted: bool
    output_estimate: int = 0  # expected output, for the limiter's OTPM debit
    warm: bool = False  # the max_tokens=0 request that writes the prefix to the cache
    cache_write: int = 0  # prefix tokens this request writes to the cache
    cache_read: int = 0  # prefix tokens it is expected to read from the cache
    after: str | None = None  # id of the job that must finish first (the repo's warm-up)
    cache_ttl: str = "5m"

    @property
    def key(self) -> str:
        """The job's name within its repo: its agent, or WARM_KEY for the warm-up."""
        return WARM_KEY if self.warm else self.agent

    @property
    def id(self) -> str:
        """RUN_ID/REPO_SLUG/KEY, the job's id in runs.db and the ledger."""
        return f"{self.run_id}/{self.slug}/{self.key}"

    @property
    def review(self) -> str:
        """RUN_ID/REPO_SLUG, the review the ledger groups this request under."""
        return f"{self.run_id}/{self.slug}"

    @property
    def rate_tokens(self) -> int:
        """What counts toward ITPM: uncached input and cache writes, not cache reads."""
        return self.input_tokens - self.cache_read

    @property
    def cache(self) -> bool:
        """Whether the request marks the pack as a cacheable prefix."""
        return bool(self.cache_write or self.cache_read)


@dataclass(frozen=True)
class JobOutcome:
    """What became of a job. `stop` asks the parent to submit nothing more (auth, spend cap, budget)."""

    job: Job
    status: JobStatus
    result: dict[str, Any] | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    cost_micros: int = 0
    error: str | None = None
    attempts: int = 0
    rate_limited: int = 0
    stop: StopReason | None = None

    @property
    def job_id(self) -> str:
        """The job's id."""
        return self.job.id
