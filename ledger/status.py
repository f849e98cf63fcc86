"""What `budget status` and `budget history` report, read from the maintained aggregates."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ledger.entries import effective_budget
from ledger.months import days_in_month, month_of
from ledger.prices import usd

__all__ = ["RECENT_REVIEWS", "BudgetStatus", "build_history", "build_status"]

RECENT_REVIEWS = 20  # "recent average": the last this-many finished reviews per mode


def _usd_or_none(micros: int | None) -> float | None:
    return None if micros is None else usd(micros)


@dataclass(frozen=True)
class BudgetStatus:
    """One month of the ledger. Money in micro-dollars; None means no budget of that kind."""

    month: str
    budget_micros: int | None
    budget_tokens: int | None
    spent_micros: int
    reserved_micros: int
    held_micros: int
    remaining_micros: int | None
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    reserved_tokens: int
    held_tokens: int
    remaining_tokens: int | None
    unknown_reservations: int
    unknown_micros: int
    unknown_tokens: int
    days_elapsed: int
    days_in_month: int
    daily_micros: tuple[tuple[str, int], ...]
    rate_limited: int
    spend_cap_hits: int
    active_runs: int
    review_average: dict[str, dict[str, int]] = field(default_factory=dict)
    reviews_fit: dict[str, int | None] = field(default_factory=dict)
    batch_spent_micros: int = 0  # of spent_micros, settled Message Batches requests
    batch_processing: int = 0  # Message Batches requests submitted and not collected yet

    @property
    def spent_tokens(self) -> int:
        """The four token kinds summed (unknown entries have no usage, so are not in it)."""
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )

    @property
    def percent_used(self) -> float | None:
        """Spent as a percentage of the USD budget (else of the token budget)."""
        if self.budget_micros:
            return 100.0 * self.spent_micros / self.budget_micros
        if self.budget_tokens:
            return 100.0 * (self.spent_tokens + self.unknown_tokens) / self.budget_tokens
        if self.budget_micros == 0 or self.budget_tokens == 0:
            return 100.0
        return None

    @property
    def burn_micros_per_day(self) -> int:
        """Average spend per elapsed day of the month."""
        return self.spent_micros // self.days_elapsed if self.days_elapsed else 0

    @property
    def projected_micros(self) -> int:
        """Spend at the end of the month if the burn rate holds."""
        return self.spent_micros + self.burn_micros_per_day * (
            self.days_in_month - self.days_elapsed
        )

    def to_json(self) -> dict[str, Any]:
        """The keys DESIGN.md promises, and more; USD as numbers, tokens as integers."""
        return {
            "month": self.month,
            "budget_usd": _usd_or_none(self.budget_micros),
            "budget_tokens": self.budget_tokens,
            "spent_usd": usd(self.spent_micros),
            "reserved_usd": usd(self.reserved_micros),
            "held_usd": usd(self.held_micros),
            "remaining_usd": _usd_or_none(self.remaining_micros),
            "spent_tokens": self.spent_tokens,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "reserved_tokens": self.reserved_tokens,
            "held_tokens": self.held_tokens,
            "remaining_tokens": self.remaining_tokens,
            "unknown_reservations": self.unknown_reservations,
            "unknown_usd": usd(self.unknown_micros),
            "percent_used": None if self.percent_used is None else round(self.percent_used, 2),
            "daily_usd": {day: usd(micros) for day, micros in self.daily_micros},
            "burn_usd_per_day": usd(self.burn_micros_per_day),
            "projected_month_usd": usd(self.projected_micros),
            "reviews_fit": dict(self.reviews_fit),
            "review_average": {
                mode: {
                    "reviews": avg["reviews"],
                    "tokens": avg["tokens"],
                    "cost_usd": usd(avg["micros"]),
                }
                for mode, avg in self.review_average.items()
            },
            "rate_limited": self.rate_limited,
            "spend_cap_hits": self.spend_cap_hits,
            "active_runs": self.active_runs,
            "batch_spent_usd": usd(self.batch_spent_micros),
            "batch_requests_processing": self.batch_processing,
        }


def _elapsed_days(month: str, now: datetime) -> int:
    current = month_of(now)
    if month < current:
        return days_in_month(month)
    if month > current:
        return 0
    return now.astimezone(UTC).day if now.tzinfo else now.day


def _review_averages(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    averages: dict[str, dict[str, int]] = {}
    for mode in ("single", "concurrent"):
        rows = conn.execute(
            "SELECT tokens, cost_micros FROM reviews WHERE mode = ? AND outstanding = 0"
            " AND unknown = 0 AND settled > 0 ORDER BY id DESC LIMIT ?",
            (mode, RECENT_REVIEWS),
        ).fetchall()
        if rows:
            averages[mode] = {
                "reviews": len(rows),
                "tokens": sum(r[0] for r in rows),
                "micros": sum(r[1] for r in rows),
            }
    return averages


def _fits(avg: dict[str, int], remaining: int | None, remaining_t: int | None) -> int | None:
    """floor(remaining / average) by money and by tokens, whichever allows fewer."""
    counts = []
    if remaining is not None and avg["micros"] > 0:
        counts.append(max(0, remaining) * avg["reviews"] // avg["micros"])
    if remaining_t is not None and avg["tokens"] > 0:
        counts.append(max(0, remaining_t) * avg["reviews"] // avg["tokens"])
    return min(counts) if counts else None


def build_status(conn: sqlite3.Connection, month: str, now: datetime) -> BudgetStatus:
    """Assemble `month`'s status from aggregates: a handful of indexed lookups, no scans."""
    budget, budget_t = effective_budget(conn, month)
    totals = (
        conn.execute(
            "SELECT spent_micros, reserved_micros, input_tokens, output_tokens,"
            " cache_creation_input_tokens, cache_read_input_tokens, reserved_tokens,"
            " unknown_count, unknown_micros, unknown_tokens FROM month_totals WHERE month = ?",
            (month,),
        ).fetchone()
        or (0,) * 10
    )
    held, held_t, active = conn.execute(
        "SELECT COALESCE(SUM(MAX(0, hold_micros - charged_micros - reserved_micros)), 0),"
        " COALESCE(SUM(MAX(0, hold_tokens - charged_tokens - reserved_tokens)), 0), COUNT(*)"
        " FROM runs WHERE active = 1 AND month = ?",
        (month,),
    ).fetchone()
    spent, reserved = totals[0], totals[1]
    tokens_used = sum(totals[2:6]) + totals[9]
    remaining = None if budget is None else budget - spent - reserved - held
    remaining_t = None if budget_t is None else budget_t - tokens_used - totals[6] - held_t
    events = dict(
        conn.execute(
            "SELECT kind, COUNT(*) FROM events WHERE month = ? GROUP BY kind", (month,)
        ).fetchall()
    )
    elapsed = _elapsed_days(month, now)
    by_day = dict(
        conn.execute(
            "SELECT day, spent_micros FROM day_totals WHERE month = ?", (month,)
        ).fetchall()
    )
    daily = tuple(
        (f"{month}-{d:02d}", by_day.get(f"{month}-{d:02d}", 0)) for d in range(1, elapsed + 1)
    )
    averages = _review_averages(conn)
    # Batch requests are few per month (one per job), so reading their entries stays cheap.
    batch_spent, batch_processing = conn.execute(
        "SELECT COALESCE(SUM(CASE WHEN state = 'settled' THEN cost_micros ELSE 0 END), 0),"
        " COALESCE(SUM(CASE WHEN state IN ('reserved', 'unknown') THEN 1 ELSE 0 END), 0)"
        " FROM entries WHERE month = ? AND batch = 1",
        (month,),
    ).fetchone()
    return BudgetStatus(
        month=month,
        budget_micros=budget,
        budget_tokens=budget_t,
        spent_micros=spent,
        reserved_micros=reserved,
        held_micros=held,
        remaining_micros=remaining,
        input_tokens=totals[2],
        output_tokens=totals[3],
        cache_creation_input_tokens=totals[4],
        cache_read_input_tokens=totals[5],
        reserved_tokens=totals[6],
        held_tokens=held_t,
        remaining_tokens=remaining_t,
        unknown_reservations=totals[7],
        unknown_micros=totals[8],
        unknown_tokens=totals[9],
        days_elapsed=elapsed,
        days_in_month=days_in_month(month),
        daily_micros=daily,
        rate_limited=events.get("rate_limited", 0),
        spend_cap_hits=events.get("spend_cap", 0),
        active_runs=active,
        review_average=averages,
        reviews_fit={
            mode: _fits(averages[mode], remaining, remaining_t) if mode in averages else None
            for mode in ("single", "concurrent")
        },
        batch_spent_micros=batch_spent,
        batch_processing=batch_processing,
    )


def build_history(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Per month, newest first: budget, spend, tokens, unknowns and each run projected vs actual."""
    months = [
        row[0]
        for row in conn.execute(
            "SELECT month FROM month_totals UNION SELECT month FROM runs ORDER BY 1 DESC"
        )
    ]
    history = []
    for month in months:
        budget, budget_t = effective_budget(conn, month)
        totals = conn.execute(
            "SELECT spent_micros, input_tokens + output_tokens + cache_creation_input_tokens"
            " + cache_read_input_tokens, entries, unknown_count FROM month_totals WHERE month = ?",
            (month,),
        ).fetchone() or (0, 0, 0, 0)
        runs = []
        for row in conn.execute(
            "SELECT run_id, requested_mode, mode, reason, projected, cost_micros, charged_micros,"
            " input_tokens + output_tokens + cache_creation_input_tokens + cache_read_input_tokens,"
            " requests, unknown, started_at, ended_at, end_reason FROM runs WHERE month = ?"
            " ORDER BY id",
            (month,),
        ):
            projected = json.loads(row[4]) if row[4] else {}
            chosen = projected.get(row[2] or "", {})
            runs.append(
                {
                    "run_id": row[0],
                    "requested_mode": row[1],
                    "mode": row[2],
                    "reason": row[3],
                    "projected_usd": chosen.get("cost_usd"),
                    "projected_tokens": (
                        chosen.get("input_tokens", 0) + chosen.get("output_tokens", 0)
                    )
                    if chosen
                    else None,
                    "actual_usd": usd(row[6]),
                    "settled_usd": usd(row[5]),
                    "actual_tokens": row[7],
                    "requests": row[8],
                    "unknown": row[9],
                    "started_at": row[10],
                    "ended_at": row[11],
                    "end_reason": row[12],
                }
            )
        history.append(
            {
                "month": month,
                "budget_usd": _usd_or_none(budget),
                "budget_tokens": budget_t,
                "spent_usd": usd(totals[0]),
                "spent_tokens": totals[1],
                "entries": totals[2],
                "unknown_reservations": totals[3],
                "runs": runs,
            }
        )
    return history
