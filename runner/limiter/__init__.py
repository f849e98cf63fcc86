"""The cross-process limiter: token buckets and leases (limiter.py), its store (store.py), the
statements a grant and a settle make on its rows (bucket_rows.py), the reclaim of leases whose
holders are gone (reclaim.py) and what it knows of the account's health (health.py)."""

from __future__ import annotations

from runner.limiter.health import Health
from runner.limiter.limiter import (
    BUCKETS,
    DEFAULT_LIMITS,
    AcquireCancelled,
    AcquireTimeout,
    Lease,
    Limiter,
    Limits,
    TooLarge,
)

__all__ = [
    "BUCKETS",
    "DEFAULT_LIMITS",
    "AcquireCancelled",
    "AcquireTimeout",
    "Health",
    "Lease",
    "Limiter",
    "Limits",
    "TooLarge",
]
