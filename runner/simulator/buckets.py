"""Token buckets like the platform's: capacity = the per-minute limit, refilled at limit/60 per second.

Not thread-safe by themselves: the simulator calls them under its one state lock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["Admission", "RateLimits", "TokenBucket"]

# Header name part for each limit, in the order admission checks them.
LIMIT_NAMES = ("requests", "input_tokens", "output_tokens")


class TokenBucket:
    """A bucket of `limit` per minute with continuous refill; its level may go negative."""

    def __init__(self, limit: int, now: float) -> None:
        self.limit = limit
        self.rate = limit / 60.0
        self.level = float(limit)
        self.stamp = now

    def refill(self, now: float) -> float:
        """Bring the level up to `now` and return it."""
        if now > self.stamp:
            self.level = min(float(self.limit), self.level + (now - self.stamp) * self.rate)
            self.stamp = now
        return self.level

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` can be taken (0 if now).

        An amount larger than the whole bucket is admitted once the bucket is full (the level
        then goes negative), so no request is refused forever.
        """
        need = min(float(amount), float(self.limit))
        level = self.refill(now)
        return 0.0 if level >= need else (need - level) / self.rate

    def take(self, amount: float, now: float) -> None:
        """Debit `amount` (the level may go below zero)."""
        self.refill(now)
        self.level -= amount

    def reset_at(self, now: float) -> float:
        """When the bucket will be full again."""
        level = self.refill(now)
        return now + max(0.0, self.limit - level) / self.rate


@dataclass(frozen=True)
class Admission:
    """The outcome of an admission check: refused by `limit` (None if admitted), wait in seconds."""

    limit: str | None
    wait: float

    @property
    def retry_after(self) -> int:
        """The wait as the platform's `retry-after`: whole seconds, rounded up."""
        return max(1, math.ceil(self.wait - 1e-9))


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(math.ceil(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RateLimits:
    """The three buckets of one account; a limit of None is not enforced and not advertised."""

    def __init__(self, rpm: int | None, itpm: int | None, otpm: int | None, now: float) -> None:
        self.buckets: dict[str, TokenBucket] = {}
        for name, limit in zip(LIMIT_NAMES, (rpm, itpm, otpm), strict=True):
            if limit is not None:
                self.buckets[name] = TokenBucket(limit, now)

    def admit(self, input_cost: int, now: float) -> Admission:
        """Check requests and input (uncached + cache writes) and an output bucket with room; debit all or nothing."""
        needs = {"requests": 1.0, "input_tokens": float(input_cost), "output_tokens": 1.0}
        refused: str | None = None
        wait = 0.0
        for name in LIMIT_NAMES:
            bucket = self.buckets.get(name)
            if bucket is None:
                continue
            w = bucket.wait_for(needs[name], now)
            if w > 0:
                refused = refused or name
                wait = max(wait, w)  # admission needs every bucket to have room
        if refused is not None:
            return Admission(refused, wait)
        if "requests" in self.buckets:
            self.buckets["requests"].take(1, now)
        if "input_tokens" in self.buckets:
            self.buckets["input_tokens"].take(input_cost, now)
        return Admission(None, 0.0)

    def debit_output(self, tokens: int, now: float) -> None:
        """Debit output tokens as they are produced."""
        bucket = self.buckets.get("output_tokens")
        if bucket is not None and tokens:
            bucket.take(tokens, now)

    def headers(self, now: float) -> dict[str, str]:
        """The anthropic-ratelimit-* headers: token counts rounded down to the thousand."""
        out: dict[str, str] = {}
        for name, bucket in self.buckets.items():
            part = name.replace("_", "-")
            level = bucket.refill(now)
            if name == "requests":
                remaining = max(0, math.floor(level))
            else:
                remaining = max(0, math.floor(level / 1000) * 1000)
            out[f"anthropic-ratelimit-{part}-limit"] = str(bucket.limit)
            out[f"anthropic-ratelimit-{part}-remaining"] = str(remaining)
            out[f"anthropic-ratelimit-{part}-reset"] = _rfc3339(bucket.reset_at(now))
        return out
