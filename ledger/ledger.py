"""The Ledger: budgets, reservations and their outcomes, run admission, projection, status.

Guarantee: every reservation is checked and inserted in one `BEGIN IMMEDIATE` transaction
against spent + reserved + every run's remaining hold, so no number of processes can commit
more than the month's budget. It holds while actual usage stays within the reservation
(input estimate + max_output); if the API bills more input than estimated, the overrun is
recorded as it is and later reservations are refused. On PostgreSQL the checks hold the store's
lock and the outcomes (settle, release, unknown, reconcile) take only their entry's row lock,
so they run beside a check; ledger.entries says why that keeps the guarantee.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from ledger import entries as ops
from ledger.admission import Admission, decide_for_month
from ledger.errors import LedgerError, LedgerInputError
from ledger.heartbeat import BEAT_TIMEOUT, Heartbeat, dead_owners
from ledger.months import Clock, iso, month_of, parse_month, utc_now
from ledger.prices import (
    USAGE_FIELDS,
    Price,
    cost_micros,
    load_prices,
    price_for,
    usd_to_micros,
    worst_case_micros,
)
from ledger.projection import JobEstimate, Projection, project, worst_input
from ledger.status import BudgetStatus, build_history, build_status
from ledger.store import Store
from statedb import process_identity

# Admission, JobEstimate and Projection are re-exported: the runner imports them from here.
__all__ = ["EVENT_KINDS", "Admission", "JobEstimate", "Ledger", "Projection", "Reservation"]

EVENT_KINDS = ("rate_limited", "spend_cap")
# A token budget above this is a typo (and would overflow a SQLite integer in the sums).
MAX_BUDGET_TOKENS = 10**15


@dataclass(frozen=True)
class Reservation:
    """A held worst case for one request; the entry belongs to `month` (UTC) whatever happens."""

    id: int
    month: str
    worst_micros: int


class Ledger:
    """The monthly budget ledger in one SQLite file, safe to share between processes."""

    def __init__(
        self,
        path: Path,
        *,
        prices: Mapping[str, Price] | None = None,
        price_override: Path | None = None,
        clock: Clock | None = None,
        heartbeat_timeout: float = BEAT_TIMEOUT,
    ) -> None:
        """`heartbeat_timeout`: seconds after which another host's silent holder is taken as
        dead (every host sharing a database must use the same value)."""
        if heartbeat_timeout <= 0:
            raise LedgerInputError(f"heartbeat_timeout must be positive, got {heartbeat_timeout}")
        self._store = Store(Path(path))
        self._prices = dict(prices) if prices is not None else None
        self._price_override = price_override
        self._clock = clock or utc_now
        self._identity: tuple[int, tuple[int, str | None, str]] | None = None
        self._heartbeat = Heartbeat(self._store, lambda: self._me, self._now, heartbeat_timeout)

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def prices(self) -> dict[str, Price]:
        """The price table in use (shipped, with the override file's models on top)."""
        if self._prices is None:
            self._prices = load_prices(self._price_override)
        return self._prices

    @property
    def _me(self) -> tuple[int, str | None, str]:
        """(pid, start, host) of the process using the ledger now (refreshed after a fork)."""
        pid = os.getpid()
        if self._identity is None or self._identity[0] != pid:
            self._identity = (pid, process_identity())
        return self._identity[1]

    def _now(self) -> datetime:
        return self._clock()

    def close(self) -> None:
        """Close the database connection (and stop this process's heartbeat)."""
        self._heartbeat.stop()
        self._store.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- budgets ----------------------------------------------------------------------------

    def set_budget(
        self,
        *,
        usd: Decimal | str | float | None = None,
        tokens: int | None = None,
        month: str | None = None,
    ) -> None:
        """Set the standing monthly budget (month None) or one month's override.

        Only the given fields change; an override's missing field falls back to the standing one.
        """
        if usd is None and tokens is None:
            raise LedgerInputError("give a budget in USD or in tokens (or both)")
        micros = None if usd is None else usd_to_micros(usd, "budget")
        if tokens is not None and (
            isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0
        ):
            raise LedgerInputError(
                f"budget: expected a non-negative number of tokens, got {tokens!r}"
            )
        if tokens is not None and tokens > MAX_BUDGET_TOKENS:
            raise LedgerInputError(
                f"budget: expected a non-negative number of tokens, got {tokens:,}: more than"
                f" the {MAX_BUDGET_TOKENS:,} ceiling"
            )
        key = "*" if month is None else parse_month(month)
        with self._store.write() as conn:
            conn.execute(
                "INSERT INTO budgets (month, usd_micros, tokens, set_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(month) DO UPDATE SET"
                " usd_micros = COALESCE(excluded.usd_micros, usd_micros),"
                " tokens = COALESCE(excluded.tokens, tokens), set_at = excluded.set_at",
                (key, micros, tokens, iso(self._now())),
            )

    def budget(self, month: str | None = None) -> tuple[int | None, int | None]:
        """(USD micros, tokens) in force for `month` (default: this month); None = no limit."""
        key = parse_month(month) if month else month_of(self._now())
        with self._store.read() as conn:
            return ops.effective_budget(conn, key)

    # -- projection and admission -------------------------------------------------------------

    def project(self, mode: str, jobs: Sequence[JobEstimate], *, batch: bool = False) -> Projection:
        """Expected and worst-case cost of `jobs` in `mode` (as Message Batches if `batch`);
        UnknownModel for an unpriced model."""
        with self._store.read() as conn:

            def expected_output(agent: str, model: str) -> float | None:
                row = conn.execute(
                    "SELECT output_sum / output_weight FROM calibrations"
                    " WHERE agent = ? AND model = ? AND output_weight > 0",
                    (agent, model),
                ).fetchone()
                return None if row is None else row[0]

            return project(
                mode,
                jobs,
                self.prices,
                expected_output,
                lambda model: ops.input_ratio(conn, model),
                batch=batch,
            )

    def admit(
        self,
        run_id: str,
        projections: Mapping[str, Projection],
        requested_mode: str,
        *,
        health_ok: bool = True,
        health_reason: str = "",
    ) -> Admission:
        """Decide the run's mode and place its hold, atomically against every other process.

        A refusal is a result (mode "refused"), not an exception. Admitting a run again
        (resume) replaces its hold with the new projection on top of what it already charged.
        """
        self.sweep()
        now = self._now()
        month = month_of(now)
        pid, start, host = self._me
        self._heartbeat.start()  # other hosts judge this process by it (once per process)
        with self._store.write() as conn:
            mode, reason, chosen, remaining, remaining_t = decide_for_month(
                conn, month, run_id, projections, requested_mode, health_ok, health_reason
            )
            hold = chosen.cost_micros if chosen else 0
            hold_t = chosen.tokens if chosen else 0
            projected = json.dumps({m: p.to_json() for m, p in projections.items()})
            conn.execute(
                "INSERT INTO runs (run_id, month, started_at) VALUES (?, ?, ?)"
                " ON CONFLICT(run_id) DO NOTHING",
                (run_id, month, iso(now)),
            )
            # The hold is counted against what the run charges from now on.
            conn.execute(
                "UPDATE runs SET month = ?, requested_mode = ?, mode = ?, reason = ?, projected = ?,"
                " hold_micros = CASE WHEN ? > 0 THEN charged_micros + ? ELSE 0 END,"
                " hold_tokens = CASE WHEN ? > 0 THEN charged_tokens + ? ELSE 0 END,"
                " active = ?, pid = ?, pid_start = ?, host = ?, admitted_at = ?,"
                " ended_at = NULL, end_reason = NULL WHERE run_id = ?",
                (
                    month,
                    requested_mode,
                    mode,
                    reason,
                    projected,
                    int(chosen is not None),
                    hold,
                    int(chosen is not None),
                    hold_t,
                    int(chosen is not None),
                    pid,
                    start,
                    host,
                    iso(now),
                    run_id,
                ),
            )
        return Admission(
            run_id=run_id,
            mode=mode,
            reason=reason,
            hold_micros=hold,
            remaining_micros=remaining,
            remaining_tokens=remaining_t,
            hold_tokens=hold_t,
        )

    def decide(
        self,
        projections: Mapping[str, Projection],
        requested_mode: str,
        *,
        health_ok: bool = True,
        health_reason: str = "",
        run_id: str = "",
    ) -> Admission:
        """What `admit` would decide now, without placing a hold (for `plan`)."""
        self.sweep()
        with self._store.read() as conn:
            mode, reason, chosen, remaining, remaining_t = decide_for_month(
                conn,
                month_of(self._now()),
                run_id,
                projections,
                requested_mode,
                health_ok,
                health_reason,
            )
        return Admission(
            run_id=run_id,
            mode=mode,
            reason=reason,
            hold_micros=chosen.cost_micros if chosen else 0,
            remaining_micros=remaining,
            remaining_tokens=remaining_t,
            hold_tokens=chosen.tokens if chosen else 0,
        )

    def end_run(self, run_id: str) -> None:
        """Release what is left of the run's hold. Its reservations keep their own outcomes."""
        with self._store.write() as conn:
            conn.execute(
                "UPDATE runs SET active = 0, ended_at = ?, end_reason = 'ended'"
                " WHERE run_id = ? AND ended_at IS NULL",
                (iso(self._now()), run_id),
            )

    # -- reservations -------------------------------------------------------------------------

    def reserve(
        self,
        run_id: str,
        job_id: str,
        model: str,
        input_estimate: int,
        max_output: int,
        *,
        agent: str | None = None,
        review: str | None = None,
        mode: str | None = None,
        counted: bool = False,
        batch: bool = False,
        cache_ttl: str = "5m",
    ) -> Reservation:
        """Hold the worst case of one request, or raise BudgetExceeded with the numbers.

        The check (spent + reserved + other runs' holds + this, beyond the run's own hold)
        and the insert are one transaction. Records pid and host for crash detection. A local
        estimate (not `counted`) is raised by ESTIMATE_MARGIN, or by the model's learned
        actual/estimate ratio when that is higher, so the worst case stays a worst case; input
        is priced at the dearest rate it can bill, a cache write of `cache_ttl` ("5m" or "1h"). A
        `batch` request (Message Batches) is held at the batch price.
        """
        for name, value in (("input_estimate", input_estimate), ("max_output", max_output)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise LedgerInputError(f"{name}: expected a non-negative integer, got {value!r}")
        if cache_ttl not in ("5m", "1h"):
            raise LedgerInputError(f"cache_ttl: expected '5m' or '1h', got {cache_ttl!r}")
        price = price_for(self.prices, model)
        now = self._now()
        month = month_of(now)
        pid, start, host = self._me
        self._heartbeat.start()  # other hosts judge this process by it (once per process)
        with self._store.write() as conn:
            ratio, (usd_budget, token_budget), seen = ops.reserve_reads(
                conn, model, month, run_id, counted
            )
            # An exact count is held as it is; a local estimate with its safety margin (or the
            # model's learned actual/estimate ratio when history says estimates run lower).
            worst_in = input_estimate if counted else worst_input(input_estimate, ratio)
            worst = worst_case_micros(price, worst_in, max_output, cache_ttl=cache_ttl, batch=batch)
            worst_t = worst_in + max_output
            if usd_budget is not None or token_budget is not None:
                ops.check_fits(seen, usd_budget, token_budget, worst, worst_t, month, job_id)
            inserted = ops.insert_reservation(
                conn,
                {
                    "month": month,
                    "day": iso(now)[:10],
                    "run_id": run_id,
                    "job_id": job_id,
                    "review": review,
                    "mode": mode,
                    "agent": agent,
                    "model": model,
                    "input_estimate": input_estimate,
                    "max_output": max_output,
                    "counted": int(counted),
                    "batch": int(batch),
                    "worst_micros": worst,
                    "worst_tokens": worst_t,
                    "pid": pid,
                    "pid_start": start,
                    "host": host,
                    "reserved_at": iso(now),
                },
            )
        return Reservation(id=inserted.lastrowid, month=month, worst_micros=worst)

    def settle(
        self,
        reservation: Reservation,
        usage: Mapping[str, Any],
        *,
        request_id: str | None = None,
        service_tier: str | None = None,
        batch: bool = False,
    ) -> int:
        """Charge the actual cost of `usage` and return it in micro-dollars.

        Settling an unknown reservation (a late answer, or reconcile) replaces its worst-case
        charge. A settled or released reservation raises AlreadyFinal and changes nothing.
        """
        clean = ops.normalise_usage(usage)
        with self._store.write(exclusive=False) as conn:
            entry = ops.read_entry(conn, reservation.id)  # read once, for the price and the move
            cost = cost_micros(price_for(self.prices, entry["model"]), clean, batch=batch)
            ops.transition(
                conn,
                reservation.id,
                "settled",
                iso(self._now()),
                cost=cost,
                usage=clean,
                request_id=request_id,
                service_tier=service_tier or clean.get("service_tier"),
                batch=batch,
                entry=entry,
            )
        return cost

    def release(self, reservation: Reservation) -> None:
        """Charge nothing: the API did not bill (4xx, 5xx). AlreadyFinal if it has an outcome."""
        with self._store.write(exclusive=False) as conn:
            ops.transition(conn, reservation.id, "released", iso(self._now()))

    def batch_reservations(self, run_id: str) -> list[Reservation]:
        """The run's Message Batches requests still reserved (none is swept: see `sweep`)."""
        with self._store.read() as conn:
            rows = conn.execute(
                "SELECT id, month, worst_micros FROM entries"
                " WHERE run_id = ? AND batch = 1 AND state = 'reserved' ORDER BY id",
                (run_id,),
            ).fetchall()
        return [Reservation(id=r[0], month=r[1], worst_micros=r[2]) for r in rows]

    def mark_unknown(self, reservation: Reservation) -> None:
        """Sent, no answer: stays charged at the worst case, shown as unknown until reconciled."""
        with self._store.write(exclusive=False) as conn:
            ops.transition(conn, reservation.id, "unknown", iso(self._now()))

    def reconcile(self, entry_id: int, *, cost_usd: Decimal | str | float | None = None) -> int:
        """Resolve an unknown entry after checking the console: release it, or charge `cost_usd`.

        Returns the cost charged in micro-dollars (0 when released).
        """
        with self._store.write(exclusive=False) as conn:
            try:
                entry = ops.read_entry(conn, entry_id)  # locked: a racing move goes before or after
            except LedgerError:
                raise LedgerInputError(f"no entry {entry_id} in the ledger") from None
            if entry["state"] != "unknown":
                raise LedgerInputError(
                    f"entry {entry_id} is {entry['state']}, not unknown; nothing changed"
                )
            cost = 0 if cost_usd is None else usd_to_micros(cost_usd, "cost")
            outcome = "released" if cost_usd is None else "settled"
            ops.transition(conn, entry_id, outcome, iso(self._now()), cost=cost, entry=entry)
            return cost

    def sweep(self) -> int:
        """Mark reservations of dead processes unknown and end holds of dead runs; returns how many."""
        with self._store.read() as conn:
            owners = conn.execute(
                # A Message Batches request outlives its process: the batch holds it, and a
                # resume collects it, so it stays reserved ("processing"), never unknown.
                "SELECT DISTINCT pid, pid_start, host FROM entries"
                " WHERE state = 'reserved' AND batch = 0"
            ).fetchall()
            runs = conn.execute(
                "SELECT run_id, pid, pid_start, host FROM runs WHERE active = 1"
            ).fetchall()
            holders = [(r[1], r[2], r[3]) for r in runs if r[1] is not None]
            gone = set(
                dead_owners(
                    conn, [*map(tuple, owners), *holders], self._now(), self._heartbeat.timeout
                )
            )
        dead = [o for o in owners if tuple(o) in gone]
        dead_runs = [r[0] for r in runs if r[1] is not None and (r[1], r[2], r[3]) in gone]
        if not dead and not dead_runs:
            return 0
        lost: list[int] = []
        with self._store.read() as conn:
            for pid, start, host in dead:
                lost += [
                    row[0]
                    for row in conn.execute(
                        "SELECT id FROM entries WHERE state = 'reserved' AND batch = 0"
                        " AND pid = ? AND host = ? AND pid_start IS ?",
                        (pid, host, start),
                    )
                ]
        count = 0
        # One entry per transaction, locked and checked again there (see ledger.entries).
        for entry_id in sorted(lost):
            with self._store.write(exclusive=False) as conn:
                count += ops.mark_lost(conn, entry_id, iso(self._now()))
        if dead_runs:
            with self._store.write() as conn:
                ops.end_dead_runs(conn, dead_runs, iso(self._now()))
        return count + len(dead_runs)

    # -- reporting ------------------------------------------------------------------------------

    def record_event(self, kind: str, *, run_id: str | None = None) -> None:
        """Count a 429 ("rate_limited") or a spend-cap hit ("spend_cap") for this month's status."""
        if kind not in EVENT_KINDS:
            raise LedgerInputError(f"bad event {kind!r}: expected one of {', '.join(EVENT_KINDS)}")
        now = self._now()
        with self._store.write() as conn:
            conn.execute(
                "INSERT INTO events (kind, month, run_id, at) VALUES (?, ?, ?, ?)",
                (kind, month_of(now), run_id, iso(now)),
            )

    def run_totals(self, run_id: str) -> dict[str, int]:
        """Tokens by kind, cost_micros and the count of unknown entries over the run's entries."""
        fields = (*USAGE_FIELDS, "cost_micros", "unknown")
        with self._store.read() as conn:
            row = conn.execute(
                f"SELECT {', '.join(fields)} FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
        return dict(zip(fields, row or (0,) * len(fields), strict=True))

    def unknown_entries(self, month: str | None = None) -> list[dict[str, Any]]:
        """Unknown reservations (all months, or one), oldest first, for reconcile."""
        sql = "SELECT * FROM entries WHERE state = 'unknown'"
        params: tuple[str, ...] = ()
        if month:
            sql += " AND month = ?"
            params = (parse_month(month),)
        with self._store.read() as conn:
            cursor = conn.execute(sql + " ORDER BY id", params)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor]

    def status(self, month: str | None = None) -> BudgetStatus:
        """The month's budget, spend, holds, burn rate and reviews that still fit (default: now)."""
        self.sweep()
        now = self._now()
        key = parse_month(month) if month else month_of(now)
        with self._store.read() as conn:
            return build_status(conn, key, now)

    def history(self) -> list[dict[str, Any]]:
        """Per month (newest first): budget, spend, tokens and each run's projection and actual."""
        with self._store.read() as conn:
            return build_history(conn)
