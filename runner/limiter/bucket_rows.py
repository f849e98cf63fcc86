"""The statements on limiter.db's bucket and lease rows that a grant and a settle make.

The pacing decisions (runner/limiter/limiter.py) say what to debit; these say how it is read
and stored. Their shape is the round trips: on PostgreSQL every result read while the store
lock is held is a round trip that holds it, so an attempt reads everything in one statement,
a grant writes every bucket in one UPDATE, and a settle reads nothing at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner.limiter.store import iso

__all__ = ["ATTEMPT_ROWS", "BUCKET_ROWS", "USAGE_TAU", "adjust", "write_buckets"]

USAGE_TAU = 60.0  # time constant of the per-bucket usage rate behind health utilisation

BUCKET_ROWS = (
    "SELECT name, capacity, level, updated_at, usage_rate, share, debited FROM buckets"
    " WHERE scope = ?"
)

# What one attempt reads, in one statement (one snapshot): each bucket of the scope, and on
# every row the leases in flight (all, of the scope), the cooldown, the in-flight cap, whether
# the scope's responses carry headers, the account's pacing and the scope's oldest waiter.
ATTEMPT_ROWS = (
    "SELECT b.name, b.capacity, b.level, b.updated_at, b.usage_rate, b.share, b.debited,"
    " (SELECT count(*) FROM leases), (SELECT count(*) FROM leases WHERE scope = ?1),"
    " (SELECT until_at FROM cooldowns WHERE id = 1),"
    " (SELECT effective FROM limits WHERE name = 'max_concurrent'),"
    " (SELECT headers FROM scopes WHERE scope = ?1),"
    " (SELECT pacing FROM accounts WHERE account = ?2),"
    " w.id, w.input_tokens, w.output_estimate FROM buckets AS b LEFT JOIN"
    " (SELECT id, input_tokens, output_estimate FROM waiters WHERE scope = ?1"
    " ORDER BY id LIMIT 1) AS w ON 1 = 1 WHERE b.scope = ?1"
)


def _per_bucket(values: Mapping[str, float]) -> tuple[str, list[Any]]:
    """`CASE name WHEN ? THEN ? ... END` and its parameters: one UPDATE writes every bucket."""
    args: list[Any] = [item for pair in values.items() for item in pair]
    return "CASE name" + " WHEN ? THEN ?" * len(values) + " END", args


def adjust(conn: Any, scope: str, debit: Mapping[str, float], held: tuple[int, str]) -> None:
    """Add a correction or refund to the stored levels without moving their refill clock,
    if the lease `held` (id, granted_at) is still there, and drop the lease: two statements
    whose results nobody reads, so on PostgreSQL they go out with the COMMIT (no round trip
    of their own)."""
    amounts = {name: float(amount) for name, amount in debit.items()}
    amount_sql, amount_args = _per_bucket(amounts)
    rate_sql, rate_args = _per_bucket({n: a / USAGE_TAU for n, a in amounts.items()})
    conn.execute(
        f"UPDATE buckets SET level = min(capacity, level - {amount_sql}),"
        f" usage_rate = max(0, usage_rate + {rate_sql})"
        f" WHERE scope = ? AND name IN ({', '.join('?' * len(amounts))})"
        " AND EXISTS (SELECT 1 FROM leases WHERE id = ? AND granted_at = ?)",
        (*amount_args, *rate_args, scope, *amounts, *held),
    )
    conn.execute("DELETE FROM leases WHERE id = ? AND granted_at = ?", held)


def write_buckets(
    conn: Any,
    now: float,
    scope: str,
    state: dict[str, list[float]],
    debit: Mapping[str, float],
) -> None:
    """Store each bucket's refilled level less `debit`, in one UPDATE (on PostgreSQL every
    statement costs client time while the store lock is held, even unawaited)."""
    levels, rates, amounts = {}, {}, {}
    for name, (capacity, level, rate) in state.items():
        amount = float(debit.get(name, 0.0))
        levels[name] = float(min(capacity, level - amount))
        rates[name] = float(max(0.0, rate + amount / USAGE_TAU))
        amounts[name] = amount
    level_sql, level_args = _per_bucket(levels)
    rate_sql, rate_args = _per_bucket(rates)
    debit_sql, debit_args = _per_bucket(amounts)
    conn.execute(
        f"UPDATE buckets SET level = {level_sql}, updated_at = ?, usage_rate = {rate_sql},"
        f" debited = debited + {debit_sql}"
        f" WHERE scope = ? AND name IN ({', '.join('?' * len(levels))})",
        (*level_args, iso(now), *rate_args, *debit_args, scope, *levels),
    )
