"""How the simulated account behaves: limits, their enforcement, faults, batches, billing."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runner.errors import RunnerInputError
from runner.simulator.buckets import ClassLimits

__all__ = ["BATCH_MAX_BYTES", "SimConfig"]

BATCH_MAX_BYTES = 256 * 1024 * 1024  # the platform's cap on one Message Batches request body


@dataclass(frozen=True)
class SimConfig:
    """How the simulated account behaves. Rates are probabilities per request (or batch item).

    `rpm`, `itpm` and `otpm` are the limits of every model class (see runner/modelclass.py);
    `class_limits` overrides them for named classes, field by field. Each class has buckets of
    its own, and its responses carry its own `anthropic-ratelimit-*` headers.
    """

    rpm: int | None = None  # None = no limit
    itpm: int | None = None  # uncached input + cache writes
    otpm: int | None = None  # actual output tokens
    max_concurrent: int | None = None  # in-flight cap -> 429 rate_limit_error when exceeded
    latency: float = 0.0  # seconds to first byte
    per_token: float = 0.0  # seconds per output token
    output_mean: int = 400  # output length: uniform in mean*(1±spread), capped by max_tokens
    output_spread: float = 0.5
    overloaded_rate: float = 0.0  # 529 overloaded_error
    server_error_rate: float = 0.0  # 500 api_error
    drop_rate: float = 0.0  # connection closed with no response after processing and billing
    spend_cap_usd: float | None = None  # then 429 enforced_spend_limit_reached, no retry-after
    seed: int = 0
    min_cacheable_tokens: int = 1024
    api_key: str | None = None  # if set, only this key is accepted; else any non-empty key
    log_path: Path | None = None  # JSONL request log
    keep_bodies: bool = False  # True: each /v1/messages log record keeps its request `body`
    batch_delay: float = 0.0  # seconds before a batch ends
    prices_path: Path | None = None  # a prices.json overriding the shipped table
    # Per finding, seeded by the request: title reworded, line cited off, evidence not in the file.
    reword_rate: float = 0.0
    misline_rate: float = 0.0
    misquote_rate: float = 0.0
    # Seconds over which a limit is enforced: capacity = limit * S / 60, refill still limit/60.
    enforce_interval: float = 60.0
    external_load: float = 0.0  # share of every refill another client of the key spends
    class_limits: Mapping[str, ClassLimits] = field(default_factory=dict)
    send_limit_headers: bool = True  # False: no anthropic-ratelimit-* headers (a gateway)
    tool_use: bool = (
        True  # False: replies in text even to a forced tool call (a gateway without tools)
    )
    batch_expire_rate: float = 0.0  # a batch item ends `expired` (not billed)
    batch_error_rate: float = 0.0  # a batch item ends `errored`: api_error or overloaded_error
    batch_max_bytes: int = BATCH_MAX_BYTES  # larger batch bodies get 413 request_too_large
    clock: Callable[[], float] | None = None  # epoch seconds; None = time.time (tests pass one)

    def __post_init__(self) -> None:
        ClassLimits(self.rpm, self.itpm, self.otpm)  # validates the defaults
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise RunnerInputError(
                f"simulator max_concurrent must be at least 1 (or unset), got {self.max_concurrent}"
            )
        rates = (self.overloaded_rate, self.server_error_rate, self.drop_rate)
        if any(r < 0 for r in rates) or sum(rates) > 1:
            raise RunnerInputError("simulator fault rates must be >= 0 and sum to at most 1")
        if not all(0 <= r <= 1 for r in (self.reword_rate, self.misline_rate, self.misquote_rate)):
            raise RunnerInputError("simulator reword/misline/misquote rates must be in [0, 1]")
        batch_rates = (self.batch_expire_rate, self.batch_error_rate)
        if any(r < 0 for r in batch_rates) or sum(batch_rates) > 1:
            raise RunnerInputError(
                "simulator batch expire/error rates must be >= 0 and sum to at most 1"
            )
        if self.latency < 0 or self.per_token < 0 or self.output_mean < 1 or self.output_spread < 0:
            raise RunnerInputError("simulator latency/per_token must be >= 0, output_mean >= 1")
        if not 0 < self.enforce_interval <= 60:
            raise RunnerInputError(
                f"simulator enforce_interval must be in (0, 60] seconds, got {self.enforce_interval}"
            )
        if not 0 <= self.external_load < 1:
            raise RunnerInputError(
                f"simulator external_load must be in [0, 1), got {self.external_load}"
            )
        if self.batch_max_bytes < 1:
            raise RunnerInputError("simulator batch_max_bytes must be at least 1")
        for cls, limits in self.class_limits.items():
            if not isinstance(limits, ClassLimits):
                raise RunnerInputError(
                    f"simulator class_limits[{cls!r}] must be a ClassLimits, got {limits!r}"
                )

    @property
    def default_limits(self) -> ClassLimits:
        """The limits of a class with no override."""
        return ClassLimits(self.rpm, self.itpm, self.otpm)

    def limits_of(self, cls: str) -> ClassLimits:
        """The limits of model class `cls`: its override where set, the defaults elsewhere."""
        override = self.class_limits.get(cls) or self.class_limits.get(cls.lower())
        return override.over(self.default_limits) if override else self.default_limits
