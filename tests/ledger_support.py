"""Helpers and fixtures for the in-process ledger tests: a settable clock, a ledger on tmp_path.

The fixtures are imported by name into each test module that uses them (pytest finds a fixture
through the module's globals), so conftest.py stays limited to what every test needs. Import
`clock` wherever `ledger` is imported: the ledger fixture asks for it.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ledger import Ledger

__all__ = ["MODEL", "Clock", "add_schema_step", "at", "clock", "digest", "ledger"]

MODEL = "claude-sonnet-4-5"  # per Mtok: $3 in, $15 out, $3.75 / $6 cache writes, $0.30 reads


def at(text: str) -> datetime:
    """The UTC datetime for an ISO-8601 text such as "2026-11-15T12:00:00Z"."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@dataclass
class Clock:
    """A clock for `Ledger(clock=...)` that stands still until a test sets it."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def set(self, text: str) -> None:
        """Move the clock to `text` (ISO-8601)."""
        self.now = at(text)


@pytest.fixture
def clock() -> Clock:
    """A Clock at mid-November 2026."""
    return Clock(at("2026-11-15T12:00:00Z"))


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock) -> Iterator[Ledger]:
    """A Ledger in a fresh file under tmp_path on the `clock` fixture, closed after the test."""
    led = Ledger(tmp_path / "ledger.db", clock=clock)
    yield led
    led.close()


def digest(path: Path) -> str:
    """The SHA-256 of a file's bytes, to show it was left untouched."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def add_schema_step(path: Path, name: str) -> None:
    """Record schema step `name` in the ledger at `path`, as a newer review-runner would."""
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES ('ledger', ?, 'x')",
        (name,),
    )
    conn.commit()
    conn.close()
