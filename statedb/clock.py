"""The one form of time every *_at column holds: ISO-8601 UTC, fixed width, to the microsecond.

Fixed width makes the text sort as the instants compare, so SQL can compare it directly.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["iso", "parse_iso", "utc_now"]


def utc_now() -> datetime:
    """The current instant, timezone-aware in UTC."""
    return datetime.now(UTC)


def iso(instant: datetime | float) -> str:
    """`instant` (a datetime, naive taken as UTC, or epoch seconds) as `YYYY-MM-DDTHH:MM:SS.ffffffZ`."""
    if isinstance(instant, int | float):
        instant = datetime.fromtimestamp(instant, UTC)
    elif instant.tzinfo is not None:
        instant = instant.astimezone(UTC)
    return instant.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> float:
    """ISO-8601 text (this module's form, or an older `+00:00` one) back to epoch seconds."""
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
