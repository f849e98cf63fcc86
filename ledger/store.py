"""ledger.db: opening it, its schema (append-only migrations), and write transactions.

Every check-and-write runs in one `BEGIN IMMEDIATE` transaction: SQLite lets one writer in
at a time across all processes, so a budget check can never be overtaken by another
process's insert. Opening, WAL, the file lock and the newer-schema check are statedb's
`SQLiteStore`, shared with limiter.db and runs.db.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from ledger.errors import LedgerStoreError
from statedb import SQLiteStore

__all__ = ["MIGRATIONS", "Store"]

MIGRATIONS = Migrations("ledger")
BUSY_TIMEOUT_MS = 60_000


@MIGRATIONS()
def m001_initial(db: Database) -> None:
    """The first schema: budgets, entries and the aggregates status reads instead of scanning."""
    statements = [
        # month '*' is the standing monthly budget; YYYY-MM rows override it field by field.
        """CREATE TABLE budgets (
            id INTEGER PRIMARY KEY, month TEXT NOT NULL UNIQUE,
            usd_micros INTEGER, tokens INTEGER, set_at TEXT NOT NULL)""",
        # One row per request: its reservation and, later, its outcome.
        """CREATE TABLE entries (
            id INTEGER PRIMARY KEY, month TEXT NOT NULL, day TEXT NOT NULL,
            run_id TEXT NOT NULL, job_id TEXT NOT NULL, review TEXT, mode TEXT,
            agent TEXT, model TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('reserved','settled','released','unknown')),
            input_estimate INTEGER NOT NULL, max_output INTEGER NOT NULL, counted INTEGER NOT NULL,
            worst_micros INTEGER NOT NULL, worst_tokens INTEGER NOT NULL,
            cost_micros INTEGER NOT NULL DEFAULT 0,
            input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
            cache_creation_input_tokens INTEGER NOT NULL DEFAULT 0,
            cache_read_input_tokens INTEGER NOT NULL DEFAULT 0,
            request_id TEXT, service_tier TEXT, batch INTEGER NOT NULL DEFAULT 0,
            pid INTEGER NOT NULL, pid_start TEXT, host TEXT NOT NULL,
            reserved_at TEXT NOT NULL, final_at TEXT)""",
        # Partial indexes stay as small as the set of open/unknown entries, not the month.
        "CREATE INDEX entries_open ON entries(pid) WHERE state = 'reserved'",
        "CREATE INDEX entries_unknown ON entries(month) WHERE state = 'unknown'",
        """CREATE TABLE month_totals (
            id INTEGER PRIMARY KEY, month TEXT NOT NULL UNIQUE,
            spent_micros INTEGER NOT NULL DEFAULT 0, reserved_micros INTEGER NOT NULL DEFAULT 0,
            reserved_tokens INTEGER NOT NULL DEFAULT 0,
            input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
            cache_creation_input_tokens INTEGER NOT NULL DEFAULT 0,
            cache_read_input_tokens INTEGER NOT NULL DEFAULT 0,
            unknown_count INTEGER NOT NULL DEFAULT 0, unknown_micros INTEGER NOT NULL DEFAULT 0,
            unknown_tokens INTEGER NOT NULL DEFAULT 0,
            entries INTEGER NOT NULL DEFAULT 0, settled INTEGER NOT NULL DEFAULT 0,
            released INTEGER NOT NULL DEFAULT 0)""",
        """CREATE TABLE day_totals (
            id INTEGER PRIMARY KEY, day TEXT NOT NULL UNIQUE, month TEXT NOT NULL,
            spent_micros INTEGER NOT NULL DEFAULT 0, tokens INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX day_totals_month ON day_totals(month)",
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY, run_id TEXT NOT NULL UNIQUE, month TEXT NOT NULL,
            requested_mode TEXT, mode TEXT, reason TEXT, projected TEXT,
            hold_micros INTEGER NOT NULL DEFAULT 0, hold_tokens INTEGER NOT NULL DEFAULT 0,
            reserved_micros INTEGER NOT NULL DEFAULT 0, reserved_tokens INTEGER NOT NULL DEFAULT 0,
            charged_micros INTEGER NOT NULL DEFAULT 0, charged_tokens INTEGER NOT NULL DEFAULT 0,
            input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
            cache_creation_input_tokens INTEGER NOT NULL DEFAULT 0,
            cache_read_input_tokens INTEGER NOT NULL DEFAULT 0,
            cost_micros INTEGER NOT NULL DEFAULT 0, unknown INTEGER NOT NULL DEFAULT 0,
            requests INTEGER NOT NULL DEFAULT 0, active INTEGER NOT NULL DEFAULT 0,
            pid INTEGER, pid_start TEXT, host TEXT,
            started_at TEXT NOT NULL, admitted_at TEXT, ended_at TEXT, end_reason TEXT)""",
        "CREATE INDEX runs_active ON runs(month) WHERE active = 1",
        "CREATE INDEX runs_month ON runs(month)",
        # Per review (RUN_ID/REPO_SLUG): what status divides the remainder by.
        """CREATE TABLE reviews (
            id INTEGER PRIMARY KEY, review TEXT NOT NULL UNIQUE, run_id TEXT NOT NULL,
            mode TEXT, month TEXT NOT NULL,
            tokens INTEGER NOT NULL DEFAULT 0, cost_micros INTEGER NOT NULL DEFAULT 0,
            settled INTEGER NOT NULL DEFAULT 0, outstanding INTEGER NOT NULL DEFAULT 0,
            unknown INTEGER NOT NULL DEFAULT 0, last_at TEXT NOT NULL)""",
        "CREATE INDEX reviews_recent ON reviews(mode, id)",
        # Exponentially weighted sums per agent+model, for projection.
        """CREATE TABLE calibrations (
            id INTEGER PRIMARY KEY, agent TEXT NOT NULL, model TEXT NOT NULL,
            samples INTEGER NOT NULL DEFAULT 0,
            output_weight REAL NOT NULL DEFAULT 0, output_sum REAL NOT NULL DEFAULT 0,
            input_weight REAL NOT NULL DEFAULT 0,
            input_estimate_sum REAL NOT NULL DEFAULT 0, input_actual_sum REAL NOT NULL DEFAULT 0,
            updated_at TEXT NOT NULL, UNIQUE (agent, model))""",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY, kind TEXT NOT NULL, month TEXT NOT NULL, run_id TEXT,
            at TEXT NOT NULL)""",
        "CREATE INDEX events_month ON events(month, kind)",
    ]
    for sql in statements:
        db.execute(sql)


@MIGRATIONS()
def m002_beats(db: Database) -> None:
    """Heartbeats of the processes holding reservations, for hosts that share one database."""
    db.execute(
        """CREATE TABLE beats (
            id INTEGER PRIMARY KEY, pid INTEGER NOT NULL, pid_start TEXT, host TEXT NOT NULL,
            beat_at TEXT NOT NULL, UNIQUE (pid, host))"""
    )


class Store(SQLiteStore):
    """ledger.db, migrated to the current schema (opened at once: a broken file fails early)."""

    label = "ledger database"
    error = LedgerStoreError

    def __init__(self, path: Path) -> None:
        super().__init__(Path(path), MIGRATIONS, busy_timeout=BUSY_TIMEOUT_MS / 1000)
        self.open()

    def write(self, *, exclusive: bool = True) -> AbstractContextManager[sqlite3.Connection]:
        """A `BEGIN IMMEDIATE` transaction: committed on success, rolled back on any error.

        `exclusive=False`: on PostgreSQL, no store-wide lock, only row locks (for moving one
        entry to an outcome; ledger.entries says why that is safe beside a reservation)."""
        return self.transaction(exclusive)
