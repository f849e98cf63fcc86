"""The writes behind reserve/settle/release/unknown, keeping every aggregate in step.

Each function runs inside the caller's `BEGIN IMMEDIATE` transaction and updates the entry
together with month_totals, day_totals, runs, reviews and calibrations, so status reads
aggregates instead of scanning a month of entries.

Two kinds of write transaction share the ledger (on SQLite both are BEGIN IMMEDIATE, one
writer at a time; the difference is PostgreSQL's, where `exclusive=False` takes no store lock):

- Check-and-writes (reserve, admit, budgets) are exclusive: one at a time across every host,
  so none is overtaken by another's insert.
- Moving one entry to an outcome (settle, release, unknown, reconcile, a sweep's dead entry;
  `transition`) is not exclusive, so that settles run beside a reservation's check. It is safe
  because such a transaction reads only its entry, locked first (`read_entry`, FOR UPDATE), and
  changes every shared row only by increments (`x = x + ?`, which PostgreSQL applies to the
  newest row version). So two moves of one entry are ordered by its row lock (the second sees
  the first's outcome: a double settle raises AlreadyFinal, a sweep never marks a settled entry
  unknown), moves of different entries commute, and a reservation that runs beside a move
  writes nothing the move reads, and only increments: the pair is equivalent to one of them
  first, then the other (the reservation first if its check did not see the move), a history
  the store lock allowed already. That needs what the check reads to be one snapshot, and under
  READ COMMITTED each statement has its own: month_totals and the runs' holds are therefore
  read in one statement (`_CHECK_SQL`, with the budgets). Read in two, a settle committing
  between them would be seen in the holds only: its worst case back in its run's hold but still
  in `reserved` (never an under-count, but a refusal neither serial order would make). The
  budgets change only under the store lock, and the input ratio only sizes the worst case that
  the check then counts.
- No deadlock: every transaction takes its row locks in one order, its entry first (a move
  has one: a sweep moves each dead entry in its own transaction), then the aggregates in the
  order month_totals, runs, day_totals, reviews, calibrations (the order of the statements in
  `insert_reservation`, `_unknown`, `_unreserve` and `_add_settled`, and of `transition`'s calls
  of them). An exclusive transaction takes the store lock before any row; a non-exclusive one
  never waits for the store lock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ledger.errors import AlreadyFinal, BudgetExceeded, LedgerError, LedgerInputError
from ledger.prices import USAGE_FIELDS, money
from ledger.projection import EMA_ALPHA
from statedb.dialect import FOR_UPDATE

__all__ = [
    "Committed",
    "check_fits",
    "check_reads",
    "effective_budget",
    "end_dead_runs",
    "input_ratio",
    "insert_reservation",
    "mark_lost",
    "normalise_usage",
    "read_entry",
    "reserve_reads",
    "transition",
]

FINAL_STATES = ("settled", "released")


@dataclass(frozen=True)
class Committed:
    """What a month has committed, in micro-dollars and tokens, seen from one run."""

    spent_micros: int
    reserved_micros: int
    others_held_micros: int
    own_held_micros: int
    spent_tokens: int
    reserved_tokens: int
    others_held_tokens: int
    own_held_tokens: int


_BUDGETS_SQL = "SELECT month, usd_micros, tokens FROM budgets WHERE month IN ('*', ?)"
# What a check reads, in one statement (one snapshot on PostgreSQL too: see the module doc),
# each row tagged by its first column: 0 the model's input ratio (see input_ratio; first, so
# that the last column's type is the ratio's on PostgreSQL), 1 the month's totals, 2 an active
# run's remaining hold (a hold shrinks by what its run has charged and reserved since
# admission), 3 a budget row.
_CHECK_SQL = (
    "SELECT 0, NULL, 0, 0, 0, 0, SUM(input_actual_sum) / SUM(input_estimate_sum)"
    " FROM calibrations WHERE model = ?2 AND input_estimate_sum > 0"
    " UNION ALL SELECT 1, NULL, spent_micros, reserved_micros, input_tokens + output_tokens"
    " + cache_creation_input_tokens + cache_read_input_tokens + unknown_tokens,"
    " reserved_tokens, NULL FROM month_totals WHERE month = ?1"
    " UNION ALL SELECT 2, run_id, MAX(0, hold_micros - charged_micros - reserved_micros),"
    " MAX(0, hold_tokens - charged_tokens - reserved_tokens), 0, 0, NULL"
    " FROM runs WHERE active = 1 AND month = ?1"
    " UNION ALL SELECT 3, month, usd_micros, tokens, 0, 0, NULL FROM budgets"
    " WHERE month IN ('*', ?1)"
)
_RATIO_SQL = (
    "SELECT SUM(input_actual_sum) / SUM(input_estimate_sum) FROM calibrations"
    " WHERE model = ? AND input_estimate_sum > 0"
)


def effective_budget(conn: sqlite3.Connection, month: str) -> tuple[int | None, int | None]:
    """(USD micros, tokens) for `month`: each field from its override, else the standing budget."""
    return _budget(conn.execute(_BUDGETS_SQL, (month,)).fetchall(), month)


def _budget(rows: list[Any], month: str) -> tuple[int | None, int | None]:
    found = {row[0]: row[1:] for row in rows}
    standing = found.get("*", (None, None))
    override = found.get(month, (None, None))
    usd = override[0] if override[0] is not None else standing[0]
    tokens = override[1] if override[1] is not None else standing[1]
    return usd, tokens


def check_reads(
    conn: sqlite3.Connection, month: str, run_id: str | None, model: str = "", issued: Any = None
) -> tuple[tuple[int | None, int | None], Committed, float | None]:
    """(budget, committed, input ratio) for `month`: the budget as effective_budget gives it;
    spent, reserved and held, holds split into `run_id`'s own and the others'; `model`'s ratio
    as input_ratio gives it.

    `issued`: the cursor of this query when the caller issued it already (see reserve_reads).
    """
    if issued is None:
        issued = conn.execute(_CHECK_SQL, (month, model))
    row: Any = (0, 0, 0, 0)
    held = {"own": [0, 0], "others": [0, 0]}
    budgets = []
    ratio = None
    for kind, key, *values, learned in issued.fetchall():
        if kind == 0:
            ratio = learned
        elif kind == 1:
            row = values
        elif kind == 2:
            side = held["own" if key == run_id else "others"]
            side[0] += values[0]
            side[1] += values[1]
        else:
            budgets.append((key, values[0], values[1]))
    seen = Committed(
        spent_micros=row[0],
        reserved_micros=row[1],
        others_held_micros=held["others"][0],
        own_held_micros=held["own"][0],
        spent_tokens=row[2],
        reserved_tokens=row[3],
        others_held_tokens=held["others"][1],
        own_held_tokens=held["own"][1],
    )
    return _budget(budgets, month), seen, ratio


def input_ratio(conn: sqlite3.Connection, model: str, issued: Any = None) -> float | None:
    """The weighted ratio of actual to locally estimated input for `model`, None without history."""
    if issued is None:
        issued = conn.execute(_RATIO_SQL, (model,))
    rows = issued.fetchall()
    return rows[0][0] if rows else None


def reserve_reads(
    conn: sqlite3.Connection, model: str, month: str, run_id: str, counted: bool
) -> tuple[float | None, tuple[int | None, int | None], Committed]:
    """(input ratio, budget, committed): what reserve() checks, in one statement issued with
    the store's lock, so that on PostgreSQL they travel together in one round trip. The ratio
    is None for a `counted` input (an exact count needs no history)."""
    budget, seen, ratio = check_reads(conn, month, run_id, model)
    return None if counted else ratio, budget, seen


def read_entry(conn: sqlite3.Connection, entry_id: int) -> sqlite3.Row:
    """Entry `entry_id`, readable by column name, locked until the transaction ends (on
    PostgreSQL: what orders two moves of one entry); LedgerError if there is none."""
    conn.row_factory = sqlite3.Row
    try:
        entry = conn.execute(
            "SELECT * FROM entries WHERE id = ?" + FOR_UPDATE, (entry_id,)
        ).fetchone()
    finally:
        conn.row_factory = None
    if entry is None:
        raise LedgerError(f"no reservation {entry_id} in the ledger")
    return entry


def insert_reservation(conn: sqlite3.Connection, row: Mapping[str, Any]) -> Any:
    """Insert a reserved entry and count it in the month, run and review; returns the INSERT's
    cursor, whose `lastrowid` is the entry's id (read once committed: on PostgreSQL the id then
    comes back with the COMMIT instead of in a round trip of its own)."""
    columns = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    inserted = conn.execute(
        f"INSERT INTO entries ({columns}, state) VALUES ({marks}, 'reserved')", tuple(row.values())
    )
    worst, worst_t, month = row["worst_micros"], row["worst_tokens"], row["month"]
    conn.execute(
        "INSERT INTO month_totals (month, reserved_micros, reserved_tokens, entries)"
        " VALUES (?, ?, ?, 1) ON CONFLICT(month) DO UPDATE SET"
        " reserved_micros = reserved_micros + excluded.reserved_micros,"
        " reserved_tokens = reserved_tokens + excluded.reserved_tokens, entries = entries + 1",
        (month, worst, worst_t),
    )
    conn.execute(
        "INSERT INTO runs (run_id, month, started_at, reserved_micros, reserved_tokens, requests)"
        " VALUES (?, ?, ?, ?, ?, 1) ON CONFLICT(run_id) DO UPDATE SET"
        " reserved_micros = reserved_micros + excluded.reserved_micros,"
        " reserved_tokens = reserved_tokens + excluded.reserved_tokens, requests = requests + 1",
        (row["run_id"], month, row["reserved_at"], worst, worst_t),
    )
    if row.get("review"):
        conn.execute(
            "INSERT INTO reviews (review, run_id, mode, month, outstanding, last_at)"
            " VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT(review) DO UPDATE SET"
            " outstanding = outstanding + 1, mode = COALESCE(excluded.mode, mode),"
            " last_at = excluded.last_at",
            (row["review"], row["run_id"], row.get("mode"), month, row["reserved_at"]),
        )
    return inserted


def normalise_usage(usage: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The API's usage (a dict, or the SDK's object) as a dict of non-negative integers."""
    if not isinstance(usage, Mapping):
        dump = getattr(usage, "model_dump", None)
        if dump is None:
            raise LedgerInputError(f"usage must be a mapping, got {type(usage).__name__}")
        usage = dump()
    out: dict[str, Any] = dict(usage)
    for field in USAGE_FIELDS:
        value = out.get(field) or 0
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise LedgerInputError(f"usage.{field}: expected a non-negative integer, got {value!r}")
        out[field] = value
    return out


def _bump_day(conn: sqlite3.Connection, day: str, month: str, micros: int, tokens: int) -> None:
    conn.execute(
        "INSERT INTO day_totals (day, month, spent_micros, tokens) VALUES (?, ?, ?, ?)"
        " ON CONFLICT(day) DO UPDATE SET spent_micros = spent_micros + excluded.spent_micros,"
        " tokens = tokens + excluded.tokens",
        (day, month, micros, tokens),
    )


def _calibrate(
    conn: sqlite3.Connection, entry: sqlite3.Row, usage: dict[str, Any], now: str
) -> None:
    actual_in = (
        usage["input_tokens"]
        + usage["cache_creation_input_tokens"]
        + usage["cache_read_input_tokens"]
    )
    keep = 1.0 - EMA_ALPHA
    # count_tokens figures are exact, so only local estimates teach the input ratio.
    teach_input = 0 if entry["counted"] or entry["input_estimate"] <= 0 else 1
    conn.execute(
        "INSERT INTO calibrations (agent, model, samples, output_weight, output_sum,"
        " input_weight, input_estimate_sum, input_actual_sum, updated_at)"
        " VALUES (:agent, :model, 1, 1, :out, :ti, :ti * :est, :ti * :act, :now)"
        " ON CONFLICT(agent, model) DO UPDATE SET samples = samples + 1,"
        " output_weight = output_weight * :keep + 1, output_sum = output_sum * :keep + :out,"
        " input_weight = CASE :ti WHEN 1 THEN input_weight * :keep + 1 ELSE input_weight END,"
        " input_estimate_sum = CASE :ti WHEN 1 THEN input_estimate_sum * :keep + :est"
        "   ELSE input_estimate_sum END,"
        " input_actual_sum = CASE :ti WHEN 1 THEN input_actual_sum * :keep + :act"
        "   ELSE input_actual_sum END,"
        " updated_at = :now",
        {
            "agent": entry["agent"] or "",
            "model": entry["model"],
            "out": usage["output_tokens"],
            "ti": teach_input,
            "est": entry["input_estimate"],
            "act": actual_in,
            "keep": keep,
            "now": now,
        },
    )


def transition(
    conn: sqlite3.Connection,
    entry_id: int,
    new_state: str,
    now: str,
    *,
    cost: int = 0,
    usage: dict[str, Any] | None = None,
    request_id: str | None = None,
    service_tier: str | None = None,
    batch: bool = False,
    entry: sqlite3.Row | None = None,
) -> sqlite3.Row:
    """Move entry `entry_id` to `new_state`, undoing its old contribution to every aggregate.

    From 'reserved' any outcome is allowed; from 'unknown' only settled or released (what
    reconcile does); a settled or released entry raises AlreadyFinal, so nothing is counted
    twice. `entry`: the entry as read_entry() gave it in this transaction, when the caller has
    it already. Returns the entry as it was before.
    """
    if entry is None:
        entry = read_entry(conn, entry_id)
    old = entry["state"]
    if old in FINAL_STATES or (old == "unknown" and new_state == "unknown"):
        raise AlreadyFinal(f"reservation {entry_id} is already {old}; nothing was changed")
    if new_state not in ("settled", "released", "unknown"):
        raise LedgerInputError(f"bad entry state {new_state!r}")
    worst = entry["worst_micros"]
    # reserved -> settled (every answered request) takes the reservation out in the same
    # statements that add the cost: fewer statements per settle.
    folded = old == "reserved" and new_state == "settled"
    usage = usage or dict.fromkeys(USAGE_FIELDS, 0)
    # Take the old state out of the aggregates and put the new one in. Every change is an
    # increment, so their order is free: it is the one that takes each aggregate's row lock in
    # the ledger's one order (month_totals, runs, day_totals, reviews, calibrations; see the
    # module doc), the unknown charge (which reaches day_totals) before the reservation.
    if old == "unknown":  # charged at the worst case until now
        _unknown(conn, entry, -1)
    if new_state == "unknown":
        _unknown(conn, entry, +1)
    if old == "reserved" and not folded:
        _unreserve(conn, entry)
    if new_state == "settled":
        _add_settled(conn, entry, usage, cost, now, unreserve=folded)
    elif new_state == "released":
        conn.execute(
            "UPDATE month_totals SET released = released + 1 WHERE month = ?",
            (entry["month"],),
        )
    conn.execute(
        "UPDATE entries SET state = ?, cost_micros = ?, input_tokens = ?, output_tokens = ?,"
        " cache_creation_input_tokens = ?, cache_read_input_tokens = ?, request_id = ?,"
        # A Message Batches entry stays one whatever becomes of it (MAX keeps the flag).
        " service_tier = ?, batch = MAX(batch, ?), final_at = ? WHERE id = ?",
        (
            new_state,
            worst if new_state == "unknown" else cost,
            *(usage[f] for f in USAGE_FIELDS),
            request_id,
            service_tier,
            int(batch),
            now,
            entry_id,
        ),
    )
    return entry


def _unreserve(conn: sqlite3.Connection, entry: sqlite3.Row) -> None:
    """Take a reserved entry's worst case out of the month's, the run's and the review's sums."""
    worst, worst_t = entry["worst_micros"], entry["worst_tokens"]
    conn.execute(
        "UPDATE month_totals SET reserved_micros = reserved_micros - ?,"
        " reserved_tokens = reserved_tokens - ? WHERE month = ?",
        (worst, worst_t, entry["month"]),
    )
    conn.execute(
        "UPDATE runs SET reserved_micros = reserved_micros - ?,"
        " reserved_tokens = reserved_tokens - ? WHERE run_id = ?",
        (worst, worst_t, entry["run_id"]),
    )
    if entry["review"]:
        conn.execute(
            "UPDATE reviews SET outstanding = outstanding - 1 WHERE review = ?",
            (entry["review"],),
        )


def _add_settled(
    conn: sqlite3.Connection,
    entry: sqlite3.Row,
    usage: dict[str, Any],
    cost: int,
    now: str,
    *,
    unreserve: bool = False,
) -> None:
    """Add a settled entry's cost and usage to every aggregate, and teach calibration;
    `unreserve` also takes its reservation out (what _unreserve does), in the same statements."""
    month, run_id, review = entry["month"], entry["run_id"], entry["review"]
    tokens = sum(usage[field] for field in USAGE_FIELDS)
    held = (entry["worst_micros"], entry["worst_tokens"]) if unreserve else (0, 0)
    conn.execute(
        "UPDATE month_totals SET spent_micros = spent_micros + ?,"
        " input_tokens = input_tokens + ?, output_tokens = output_tokens + ?,"
        " cache_creation_input_tokens = cache_creation_input_tokens + ?,"
        " cache_read_input_tokens = cache_read_input_tokens + ?, settled = settled + 1,"
        " reserved_micros = reserved_micros - ?, reserved_tokens = reserved_tokens - ?"
        " WHERE month = ?",
        (cost, *(usage[f] for f in USAGE_FIELDS), *held, month),
    )
    conn.execute(
        "UPDATE runs SET charged_micros = charged_micros + ?, charged_tokens = charged_tokens + ?,"
        " cost_micros = cost_micros + ?, input_tokens = input_tokens + ?,"
        " output_tokens = output_tokens + ?,"
        " cache_creation_input_tokens = cache_creation_input_tokens + ?,"
        " cache_read_input_tokens = cache_read_input_tokens + ?,"
        " reserved_micros = reserved_micros - ?, reserved_tokens = reserved_tokens - ?"
        " WHERE run_id = ?",
        (cost, tokens, cost, *(usage[f] for f in USAGE_FIELDS), *held, run_id),
    )
    _bump_day(conn, entry["day"], month, cost, tokens)
    if review:
        conn.execute(
            "UPDATE reviews SET tokens = tokens + ?, cost_micros = cost_micros + ?,"
            " settled = settled + 1, last_at = ?, outstanding = outstanding - ? WHERE review = ?",
            (tokens, cost, now, int(unreserve), review),
        )
    _calibrate(conn, entry, usage, now)


def _unknown(conn: sqlite3.Connection, entry: sqlite3.Row, sign: int) -> None:
    """Add (sign=1) or remove (sign=-1) an unknown entry's worst-case charge everywhere."""
    worst, worst_t = sign * entry["worst_micros"], sign * entry["worst_tokens"]
    conn.execute(
        "UPDATE month_totals SET spent_micros = spent_micros + ?, unknown_count = unknown_count + ?,"
        " unknown_micros = unknown_micros + ?, unknown_tokens = unknown_tokens + ? WHERE month = ?",
        (worst, sign, worst, worst_t, entry["month"]),
    )
    conn.execute(
        "UPDATE runs SET charged_micros = charged_micros + ?, charged_tokens = charged_tokens + ?,"
        " unknown = unknown + ? WHERE run_id = ?",
        (worst, worst_t, sign, entry["run_id"]),
    )
    _bump_day(conn, entry["day"], entry["month"], worst, 0)
    if entry["review"]:
        # A review with an unknown request has no true total: kept out of the averages.
        conn.execute(
            "UPDATE reviews SET unknown = unknown + ? WHERE review = ?", (sign, entry["review"])
        )


def check_fits(
    seen: Committed,
    usd_budget: int | None,
    token_budget: int | None,
    worst: int,
    worst_t: int,
    month: str,
    job_id: str,
) -> None:
    """BudgetExceeded, with the numbers, if holding `worst` more would pass a budget."""
    # One rule and one message for both budgets, USD first. Token counts name their unit only
    # on the amount and the budget; a dollar sign goes on every figure.
    usd_seen = (
        seen.spent_micros,
        seen.reserved_micros,
        seen.others_held_micros,
        seen.own_held_micros,
    )
    token_seen = (
        seen.spent_tokens,
        seen.reserved_tokens,
        seen.others_held_tokens,
        seen.own_held_tokens,
    )
    for budget, want, (spent, reserved, others, own), with_unit, bare in (
        (usd_budget, worst, usd_seen, money, money),
        (token_budget, worst_t, token_seen, _tokens, "{:,}".format),
    ):
        if budget is not None and spent + reserved + others + max(own, want) > budget:
            raise BudgetExceeded(
                f"job {job_id}: reserving {with_unit(want)} would pass the {month} budget of "
                f"{with_unit(budget)} ({bare(spent)} spent, {bare(reserved)} reserved, "
                f"{bare(others)} held by other runs, {bare(own)} left in this run's hold)"
            )


def _tokens(count: int) -> str:
    return f"{count:,} tokens"


def mark_lost(conn: sqlite3.Connection, entry_id: int, now: str) -> bool:
    """Mark one reservation of a dead process unknown, in a transaction of its own (one entry
    per move: see the module doc); False when it had its outcome meanwhile (a late settle)."""
    entry = read_entry(conn, entry_id)
    if entry["state"] != "reserved":
        return False
    transition(conn, entry_id, "unknown", now, entry=entry)
    return True


def end_dead_runs(conn: sqlite3.Connection, dead_runs: list[str], now: str) -> None:
    """End the holds of runs whose process died (in run_id order: the one order of row locks)."""
    for run_id in sorted(dead_runs):
        conn.execute(
            "UPDATE runs SET active = 0, ended_at = ?, end_reason = 'process died'"
            " WHERE run_id = ? AND active = 1",
            (now, run_id),
        )
