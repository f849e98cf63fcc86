"""Choosing a run's mode against what remains of the month.

`decide` is the rule as a pure function; `decide_for_month` applies it to the ledger's numbers
inside the caller's transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass

from ledger.entries import check_reads
from ledger.errors import LedgerInputError
from ledger.modes import Decision, Mode, RequestedMode
from ledger.prices import money
from ledger.projection import Projection

__all__ = ["REQUESTED_MODES", "Admission", "decide", "decide_for_month"]

REQUESTED_MODES = tuple(RequestedMode)  # kept for importers; the enumeration is ledger.modes


@dataclass(frozen=True)
class Admission:
    """The ledger's decision for a run, and the hold it placed.

    `remaining_micros` / `remaining_tokens` are what remained before this hold; None when
    the month has no budget of that kind (no limit).
    """

    run_id: str
    mode: str
    reason: str
    hold_micros: int
    remaining_micros: int | None
    remaining_tokens: int | None = None
    hold_tokens: int = 0

    def to_json(self) -> dict[str, object]:
        """mode, reason, hold_usd, remaining_usd (null without a USD budget), remaining_tokens."""
        return {
            "run_id": self.run_id,
            "mode": self.mode,
            "reason": self.reason,
            "hold_usd": self.hold_micros / 1_000_000,
            "hold_tokens": self.hold_tokens,
            "remaining_usd": None
            if self.remaining_micros is None
            else self.remaining_micros / 1_000_000,
            "remaining_tokens": self.remaining_tokens,
        }


def _shortfall(
    mode: str, projection: Projection, remaining_micros: int | None, remaining_tokens: int | None
) -> str | None:
    """None if `projection` fits, else the sentence saying what it needs and what remains."""
    if remaining_micros is not None and projection.cost_micros > remaining_micros:
        return f"{mode} needs {money(projection.cost_micros)}, {money(remaining_micros)} remains"
    if remaining_tokens is not None and projection.tokens > remaining_tokens:
        return (
            f"{mode} needs {projection.tokens:,} tokens, {max(remaining_tokens, 0):,} tokens remain"
        )
    return None


def _fits_sentence(
    mode: str, projection: Projection, remaining_micros: int | None, remaining_tokens: int | None
) -> str:
    if remaining_micros is not None:
        return f"{mode} needs {money(projection.cost_micros)}, {money(remaining_micros)} remains"
    if remaining_tokens is not None:
        return f"{mode} needs {projection.tokens:,} tokens, {remaining_tokens:,} tokens remain"
    return f"{mode} projects {money(projection.cost_micros)}; no budget is set"


def decide(
    projections: Mapping[str, Projection],
    requested_mode: str,
    remaining_micros: int | None,
    remaining_tokens: int | None,
    *,
    health_ok: bool = True,
    health_reason: str = "",
) -> tuple[str, str, Projection | None]:
    """(mode, reason, projection to hold) by the rule in DESIGN.md.

    auto: concurrent if it fits and health is good, else single if it fits, else refused.
    An explicit mode is taken if it fits, else refused; there is no fallback from it.
    """
    if requested_mode not in REQUESTED_MODES:
        raise LedgerInputError(
            f"bad mode {requested_mode!r}: expected one of {', '.join(REQUESTED_MODES)}"
        )
    wanted = tuple(Mode) if requested_mode == RequestedMode.AUTO else (Mode(requested_mode),)
    missing = [mode for mode in wanted if mode not in projections]
    if len(missing) == len(wanted):
        raise LedgerInputError(f"no projection for mode {' or '.join(wanted)}")
    notes: list[str] = []
    for mode in wanted:
        projection = projections.get(mode)
        if projection is None:
            continue
        short = _shortfall(mode, projection, remaining_micros, remaining_tokens)
        if short is not None:
            notes.append(short)
            continue
        if mode == Mode.CONCURRENT and requested_mode == RequestedMode.AUTO and not health_ok:
            notes.append(f"limiter health is poor ({health_reason or 'no reason given'})")
            continue
        sentence = _fits_sentence(mode, projection, remaining_micros, remaining_tokens)
        return mode, "; ".join([*notes, sentence]), projection
    return Decision.REFUSED, "; ".join(notes), None


def decide_for_month(
    conn: sqlite3.Connection,
    month: str,
    run_id: str,
    projections: Mapping[str, Projection],
    requested_mode: str,
    health_ok: bool,
    health_reason: str,
) -> tuple[str, str, Projection | None, int | None, int | None]:
    """The mode rule against what remains of `month`, not counting `run_id`'s own hold."""
    (usd_budget, token_budget), seen, _ = check_reads(conn, month, run_id)
    remaining = remaining_t = None
    if usd_budget is not None:
        remaining = usd_budget - seen.spent_micros - seen.reserved_micros - seen.others_held_micros
    if token_budget is not None:
        remaining_t = (
            token_budget - seen.spent_tokens - seen.reserved_tokens - seen.others_held_tokens
        )
    mode, reason, chosen = decide(
        projections,
        requested_mode,
        remaining,
        remaining_t,
        health_ok=health_ok,
        health_reason=health_reason,
    )
    return mode, reason, chosen, remaining, remaining_t
