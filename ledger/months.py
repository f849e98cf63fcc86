"""Calendar months in UTC: parsing, the month of an instant, and day arithmetic."""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from datetime import UTC, datetime

from ledger.errors import LedgerInputError
from statedb.clock import iso, utc_now

__all__ = ["Clock", "days_in_month", "iso", "month_of", "parse_month", "utc_now"]

Clock = Callable[[], datetime]

_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def parse_month(text: str) -> str:
    """`text` if it is a YYYY-MM month, else LedgerInputError naming the expected form."""
    if not isinstance(text, str) or not _MONTH.match(text.strip()):
        raise LedgerInputError(f"bad month {text!r}: expected YYYY-MM, for example 2026-11")
    return text.strip()


def month_of(instant: datetime) -> str:
    """The UTC calendar month of `instant` as YYYY-MM (naive instants are taken as UTC)."""
    if instant.tzinfo is not None:
        instant = instant.astimezone(UTC)
    return f"{instant.year:04d}-{instant.month:02d}"


def days_in_month(month: str) -> int:
    """How many days `month` (YYYY-MM) has."""
    year, mon = (int(part) for part in parse_month(month).split("-"))
    return calendar.monthrange(year, mon)[1]
