"""Token buckets like the platform's, one set per model class.

A limit of L per minute refills continuously at L/60 per second. Its capacity is what may be
spent at once: L when the limit is enforced per minute, L*S/60 when the platform enforces it over
a shorter interval of S seconds (a 60 RPM limit enforced as 1 per second). Another client of the
same key (`external_load` F) spends F of every refill, so the bucket refills at (1-F)*L/60 and
the `-remaining` headers show less than the requests seen here would leave.

Not thread-safe by themselves: the simulator calls them under its one state lock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from runner.errors import RunnerInputError

__all__ = ["Admission", "ClassLimits", "RateLimits", "TokenBucket", "parse_class_limit"]

# Header name part for each limit, in the order admission checks them.
LIMIT_NAMES = ("requests", "input_tokens", "output_tokens")
_EPSILON = 1e-9
_LIMIT_KEYS = {"rpm": "requests", "itpm": "input_tokens", "otpm": "output_tokens"}


class TokenBucket:
    """A bucket of `limit` per minute with continuous refill; its level may go negative."""

    def __init__(
        self, limit: int, now: float, *, interval: float = 60.0, external_load: float = 0.0
    ) -> None:
        self.limit = limit
        self.capacity = limit * interval / 60.0
        self.rate = limit / 60.0
        # What is left of each refill once the other client has spent its share.
        self.net_rate = self.rate * (1.0 - external_load)
        self.level = self.capacity
        self.stamp = now

    def refill(self, now: float) -> float:
        """Bring the level up to `now` and return it."""
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.net_rate)
            self.stamp = now
        return self.level

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` can be taken (0 if now).

        An amount larger than the whole bucket is admitted once the bucket is full (the level
        then goes negative), so no request is refused forever; under a short enforcement interval
        this is how a 10 RPM limit enforced per second still admits one request every 6 s.
        """
        need = min(float(amount), self.capacity)
        level = self.refill(now)
        # The tolerance absorbs float drift, so that a wait of exactly retry-after is enough.
        return 0.0 if level >= need - _EPSILON else (need - level) / self.net_rate

    def take(self, amount: float, now: float) -> None:
        """Debit `amount` (the level may go below zero)."""
        self.refill(now)
        self.level -= amount

    def reset_at(self, now: float) -> float:
        """When the bucket will be full again."""
        level = self.refill(now)
        return now + max(0.0, self.capacity - level) / self.net_rate


@dataclass(frozen=True)
class ClassLimits:
    """Per-minute limits of one model class; None = not enforced (or, in an override, inherited)."""

    rpm: int | None = None
    itpm: int | None = None
    otpm: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "itpm", "otpm"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise RunnerInputError(
                    f"simulator {name} must be at least 1 (or unset), got {value}"
                )

    def over(self, default: ClassLimits) -> ClassLimits:
        """These limits where set, `default`'s elsewhere."""
        return ClassLimits(
            default.rpm if self.rpm is None else self.rpm,
            default.itpm if self.itpm is None else self.itpm,
            default.otpm if self.otpm is None else self.otpm,
        )


def parse_class_limit(text: str) -> tuple[str, ClassLimits]:
    """Parse "CLASS:rpm=N,itpm=N,otpm=N" (any subset of the three) into (class, limits)."""
    cls, sep, spec = text.partition(":")
    cls = cls.strip().lower()
    if not sep or not cls or not spec.strip():
        raise RunnerInputError(f"class limit {text!r}: expected CLASS:rpm=N,itpm=N,otpm=N")
    values: dict[str, int] = {}
    for part in spec.split(","):
        key, eq, raw = part.partition("=")
        key = key.strip().lower()
        if not eq or key not in _LIMIT_KEYS:
            raise RunnerInputError(
                f"class limit {text!r}: {part.strip()!r} is not rpm=N, itpm=N or otpm=N"
            )
        try:
            values[key] = int(raw)
        except ValueError:
            raise RunnerInputError(
                f"class limit {text!r}: {key} must be a whole number, got {raw.strip()!r}"
            ) from None
    return cls, ClassLimits(**values)


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
    """The three buckets of one model class; a limit of None is not enforced and not advertised."""

    def __init__(
        self,
        limits: ClassLimits,
        now: float,
        *,
        interval: float = 60.0,
        external_load: float = 0.0,
    ) -> None:
        self.buckets: dict[str, TokenBucket] = {}
        values = (limits.rpm, limits.itpm, limits.otpm)
        for name, limit in zip(LIMIT_NAMES, values, strict=True):
            if limit is not None:
                self.buckets[name] = TokenBucket(
                    limit, now, interval=interval, external_load=external_load
                )

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
        """The anthropic-ratelimit-* headers: token counts rounded down to the thousand.

        `-limit` is the per-minute limit whatever the enforcement interval, as on the platform.
        """
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
