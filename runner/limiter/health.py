"""What the limiter knows about the account's recent health, and the `limits status` document."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from runner.limiter.store import me
from statedb.clock import iso, parse_iso

__all__ = ["HEALTH_WINDOW", "Health", "compute_health", "status_document"]

HEALTH_WINDOW = 600.0  # seconds of samples behind Health (the "peak hours" judgement)
STATUS_WINDOW = 3600.0  # seconds of samples behind `limits status`
MAX_RECENT_ERRORS = 3  # this many 429/529 in HEALTH_WINDOW: concurrency would only queue
MAX_UTILISATION = 0.9  # a bucket this busy over the last minute leaves no room to add requests
_LIMIT_OF = {"requests": "rpm", "input_tokens": "itpm", "output_tokens": "otpm"}


@dataclass(frozen=True)
class Health:
    """Whether adding concurrency can help right now, and the evidence."""

    ok: bool
    reason: str
    recent_429s: int
    utilisation: dict[str, float]
    latency_p50: float | None
    latency_p95: float | None


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def _samples(conn: Any, now: float, window: float) -> tuple[int, int, list[float]]:
    """(429 count, 529 count, sorted latencies of successful responses) over `window`."""
    since = iso(now - window)
    n429, n529 = conn.execute(
        "SELECT coalesce(sum(CASE WHEN status = 429 THEN 1 ELSE 0 END), 0),"
        " coalesce(sum(CASE WHEN status = 529 THEN 1 ELSE 0 END), 0)"
        " FROM samples WHERE at >= ?",
        (since,),
    ).fetchone()
    latencies = [
        row[0]
        for row in conn.execute(
            "SELECT latency FROM samples WHERE at >= ? AND status < 300 AND latency IS NOT NULL"
            " ORDER BY latency",
            (since,),
        )
    ]
    return int(n429), int(n529), latencies


def _cooldown_left(conn: Any, now: float) -> float:
    row = conn.execute("SELECT until_at FROM cooldowns WHERE id = 1").fetchone()
    until_at = row[0] if row else None  # no row: a database only a read-only limiter opened
    return max(0.0, parse_iso(until_at) - now) if until_at else 0.0


def _utilisation(buckets: dict[str, list[float]]) -> dict[str, float]:
    # usage_rate is an exponentially weighted debit rate per second (time constant one minute).
    return {
        name: round(min(1.0, max(0.0, rate / (capacity / 60.0))), 3)
        for name, (capacity, _level, rate) in buckets.items()
    }


def compute_health(conn: Any | None, now: float, buckets: dict[str, list[float]]) -> Health:
    """Health from the samples of the last HEALTH_WINDOW seconds and the buckets' usage rates.

    `conn` None: no database yet (a read-only look at a fresh state directory).
    """
    n429, n529, latencies = (0, 0, []) if conn is None else _samples(conn, now, HEALTH_WINDOW)
    utilisation = _utilisation(buckets)
    p50, p95 = _percentile(latencies, 0.5), _percentile(latencies, 0.95)
    minutes = int(HEALTH_WINDOW // 60)
    cooldown = 0.0 if conn is None else _cooldown_left(conn, now)
    # Ties go to the first name in order, whatever order the database returned the rows in.
    busiest = max(sorted(utilisation), key=lambda name: utilisation[name])
    errors = n429 + n529
    if cooldown > 0:
        ok, reason = False, f"a rate-limit cooldown is active for another {cooldown:.1f} s"
    elif errors >= MAX_RECENT_ERRORS:
        ok = False
        reason = (
            f"{errors} rate-limit or overload errors in the last {minutes} minutes "
            f"({n429} x 429, {n529} x 529)"
        )
    elif utilisation[busiest] >= MAX_UTILISATION:
        ok = False
        reason = (
            f"{busiest} at {utilisation[busiest]:.0%} of the {_LIMIT_OF[busiest]} limit over the "
            "last minute; more concurrency would only queue"
        )
    else:
        ok = True
        reason = (
            f"{errors} rate-limit or overload errors in the last {minutes} minutes; busiest "
            f"bucket {busiest} at {utilisation[busiest]:.0%}"
        )
    return Health(ok, reason, n429, utilisation, p50, p95)


def _requests(conn: Any, now: float, table: str, id_key: str, since: str) -> list[dict[str, Any]]:
    """Leases (in flight) or waiters (queued) in id order, each with its age in seconds.

    A lease of this host is aged by the monotonic clock it was granted on (see runner/limiter/reclaim.py).
    """
    # `table` and `since` (its timestamp column) are literals from this module, never input.
    mono = "granted_mono" if table == "leases" else "NULL"
    host, mono_now = me().host, time.monotonic()
    return [
        {
            id_key: row_id,
            "pid": pid,
            "host": row_host,
            "age_s": round(
                mono_now - granted
                if granted is not None and row_host == host
                else now - parse_iso(since_at),
                3,
            ),
            "input_tokens": input_tokens,
            "output_estimate": output_estimate,
        }
        for row_id, pid, row_host, input_tokens, output_estimate, since_at, granted in conn.execute(
            f"SELECT id, pid, host, input_tokens, output_estimate, {since}, {mono} FROM {table}"
            " ORDER BY id"
        )
    ]


def status_document(conn: Any, now: float, buckets: dict[str, list[float]]) -> dict[str, Any]:
    """The `limits status --json` document: limits and sources, levels, leases, waiters, health."""
    limits = {
        name: {"value": effective, "source": source, "config": config, "headers": header}
        for name, effective, source, config, header in conn.execute(
            "SELECT name, effective, source, config_value, header_value FROM limits ORDER BY id"
        )
    }
    levels = {
        name: {"level": round(level, 3), "capacity": capacity}
        for name, (capacity, level, _rate) in buckets.items()
    }
    in_flight = _requests(conn, now, "leases", "id", "granted_at")
    waiters = _requests(conn, now, "waiters", "ticket", "created_at")
    until_at, limit_name = conn.execute(
        "SELECT until_at, limit_name FROM cooldowns WHERE id = 1"
    ).fetchone() or (None, None)
    active = until_at is not None and parse_iso(until_at) > now
    n429, n529, latencies = _samples(conn, now, STATUS_WINDOW)
    health = compute_health(conn, now, buckets)
    return {
        "limits": limits,
        "levels": levels,
        "in_flight": in_flight,
        "waiters": waiters,
        "cooldown_until": until_at if active else None,
        "cooldown_limit": limit_name if active else None,
        "recent_429s": n429,
        "recent_529s": n529,
        "latency_p50": _percentile(latencies, 0.5),
        "latency_p95": _percentile(latencies, 0.95),
        "window_s": STATUS_WINDOW,
        "health": {
            "ok": health.ok,
            "reason": health.reason,
            "utilisation": health.utilisation,
        },
    }
