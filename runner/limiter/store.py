"""The limiter's storage: limiter.db (statedb's SQLiteStore) guarded by limiter.lock.

Every write is one `BEGIN IMMEDIATE` transaction taken while holding an exclusive `flock` on
limiter.lock, with the clock read inside it, so that check-and-debit is atomic across processes.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import sqlite_utils

from runner.errors import StateError
from statedb import ProcessId, SQLiteStore, StatePaths, host_name, iso, parse_iso, process_identity

__all__ = ["LimiterStore", "host_name", "iso", "me", "parse_iso"]

CHECKPOINT_EVERY = 200  # commits of one process between its WAL checkpoints
MIGRATIONS = sqlite_utils.Migrations("review_runner.limiter")


@MIGRATIONS()
def m001_create_tables(db: sqlite_utils.Database) -> None:
    """Buckets, limits, leases, waiters, the shared cooldown and health samples."""
    db.execute(
        """CREATE TABLE buckets (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            capacity REAL NOT NULL,
            level REAL NOT NULL,
            updated_at TEXT NOT NULL,
            usage_rate REAL NOT NULL DEFAULT 0)"""
    )
    db.execute(
        """CREATE TABLE limits (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            config_value INTEGER,
            config_at TEXT,
            header_value INTEGER,
            header_at TEXT,
            effective INTEGER NOT NULL,
            source TEXT NOT NULL)"""
    )
    db.execute(
        """CREATE TABLE leases (
            id INTEGER PRIMARY KEY,
            pid INTEGER NOT NULL,
            input_tokens INTEGER NOT NULL,
            output_estimate INTEGER NOT NULL,
            granted_at TEXT NOT NULL)"""
    )
    db.execute("CREATE INDEX leases_granted_at ON leases (granted_at)")
    # The rowid is the ticket: SQLite gives a new row max(id) + 1, so a later arrival always
    # has a larger ticket than every waiter still queued.
    db.execute(
        """CREATE TABLE waiters (
            id INTEGER PRIMARY KEY,
            pid INTEGER NOT NULL,
            input_tokens INTEGER NOT NULL,
            output_estimate INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            seen_at TEXT NOT NULL)"""
    )
    db.execute(
        """CREATE TABLE cooldowns (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            until_at TEXT,
            limit_name TEXT,
            set_at TEXT)"""
    )
    db.execute(
        """CREATE TABLE samples (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            status INTEGER NOT NULL,
            latency REAL)"""
    )
    db.execute("CREATE INDEX samples_at ON samples (at)")


@MIGRATIONS()
def m002_lease_hosts(db: sqlite_utils.Database) -> None:
    """The host of each lease and waiter, and a lease's last heartbeat: pids mean nothing
    across hosts sharing one database, so another host's lease is judged by its heartbeat."""
    db.execute("ALTER TABLE leases ADD COLUMN host TEXT")
    db.execute("ALTER TABLE leases ADD COLUMN beat_at TEXT")
    db.execute("ALTER TABLE waiters ADD COLUMN host TEXT")


@MIGRATIONS()
def m003_scopes_and_pacing(db: sqlite_utils.Database) -> None:
    """Limits learned and buckets kept per scope (API base URL + model class), the pacing mode
    each account has shown it tolerates, and the owner of the configured limits.

    The scope '' is the unscoped limiter of earlier versions (and of direct library use).
    """
    db.execute(
        """CREATE TABLE scoped_buckets (
            id INTEGER PRIMARY KEY,
            scope TEXT NOT NULL,
            name TEXT NOT NULL,
            capacity REAL NOT NULL,
            level REAL NOT NULL,
            updated_at TEXT NOT NULL,
            usage_rate REAL NOT NULL DEFAULT 0,
            server_remaining REAL,
            server_at TEXT,
            UNIQUE (scope, name))"""
    )
    db.execute(
        "INSERT INTO scoped_buckets (scope, name, capacity, level, updated_at, usage_rate)"
        " SELECT '', name, capacity, level, updated_at, usage_rate FROM buckets"
    )
    db.execute("DROP TABLE buckets")
    db.execute("ALTER TABLE scoped_buckets RENAME TO buckets")
    db.execute(
        """CREATE TABLE learned (
            id INTEGER PRIMARY KEY,
            scope TEXT NOT NULL,
            name TEXT NOT NULL,
            value INTEGER NOT NULL,
            learned_at TEXT NOT NULL,
            UNIQUE (scope, name))"""
    )
    db.execute(
        "INSERT INTO learned (scope, name, value, learned_at) SELECT '', name, header_value,"
        " header_at FROM limits WHERE header_value IS NOT NULL AND header_at IS NOT NULL"
    )
    db.execute(
        """CREATE TABLE scopes (
            scope TEXT PRIMARY KEY,
            account TEXT NOT NULL,
            model_class TEXT NOT NULL,
            headers TEXT,
            first_seen TEXT NOT NULL)"""
    )
    db.execute(
        """CREATE TABLE accounts (
            account TEXT PRIMARY KEY,
            pacing TEXT NOT NULL,
            switched_at TEXT,
            reason TEXT)"""
    )
    for column in ("config_pid INTEGER", "config_start TEXT", "config_host TEXT"):
        db.execute(f"ALTER TABLE limits ADD COLUMN {column}")
    for table in ("leases", "waiters"):
        db.execute(f"ALTER TABLE {table} ADD COLUMN scope TEXT NOT NULL DEFAULT ''")


@MIGRATIONS()
def m004_bucket_debit_totals(db: sqlite_utils.Database) -> None:
    """A running total of what each bucket granted: a lease remembers it, so that a response's
    `-remaining` (the server's view when that request arrived) can be brought forward past the
    grants made since."""
    db.execute("ALTER TABLE buckets ADD COLUMN debited REAL NOT NULL DEFAULT 0")


@MIGRATIONS()
def m005_bucket_share(db: sqlite_utils.Database) -> None:
    """The share of each bucket's nominal refill that is ours (other clients of the key spend
    the rest), learned from the server's `-remaining`."""
    db.execute("ALTER TABLE buckets ADD COLUMN share REAL NOT NULL DEFAULT 1")


@MIGRATIONS()
def m006_owner_identity(db: sqlite_utils.Database) -> None:
    """Leases and waiters name their process as ledger reservations do (pid + start + host),
    so a recycled pid is not taken for their holder; each also keeps the monotonic clock of
    its grant (of its last heartbeat, for a waiter), for its age on its own host."""
    for table, mono in (("leases", "granted_mono"), ("waiters", "seen_mono")):
        db.execute(f"ALTER TABLE {table} ADD COLUMN pid_start TEXT")
        db.execute(f"ALTER TABLE {table} ADD COLUMN {mono} REAL")


_me: ProcessId | None = None


def me() -> ProcessId:
    """This process as leases record it (looked up again after a fork)."""
    global _me
    if _me is None or _me.pid != os.getpid():
        _me = process_identity()
    return _me


class LimiterStore(SQLiteStore):
    """limiter.db, opened lazily in each process; every write under limiter.lock."""

    label = "limiter database"
    error = StateError
    # On PostgreSQL, commits do not wait for the WAL flush (synchronous_commit = off): a server
    # crash may lose the last fraction of a second of pacing commits, and the limiter re-learns
    # that state (buckets refill by the clock, leases are re-taken by the requests that retry,
    # the next responses' headers and 429s re-teach limits and cooldowns), as after a power
    # cut with SQLite's synchronous=NORMAL. The ledger never does this: its commits are money.
    durable = False

    def __init__(self, state_dir: Path) -> None:
        paths = StatePaths(Path(state_dir))
        super().__init__(
            paths.limiter,
            MIGRATIONS,
            lock_path=paths.limiter_lock,
            busy_timeout=10.0,
            lock_writes=True,
        )
        self.state_dir = paths.root
        self.db_path = self.path
        self._commits = 0

    def configure(self, conn: sqlite3.Connection) -> None:
        """NORMAL sync (a power cut may lose the last pacing state, never corrupt it); no
        automatic checkpoints: they run after the file lock is released, see write()."""
        super().configure(conn)
        conn.execute("PRAGMA wal_autocheckpoint=0")

    @contextmanager
    def write(self, maintenance: bool = False) -> Iterator[tuple[sqlite3.Connection, float]]:
        """One BEGIN IMMEDIATE transaction under the file lock; yields (connection, now).

        `maintenance=True` marks a caller off the request path (settle, record): the WAL
        checkpoint, with its fsync, runs there after the lock is released, never in acquire.
        """
        with self.locked(maintenance) as conn:
            yield conn, self.clock(conn)  # the clock is read inside the lock (the database's on PG)

    @contextmanager
    def locked(self, maintenance: bool = False) -> Iterator[sqlite3.Connection]:
        """write() without reading the clock: the caller reads `self.clock(conn)` when it needs
        it, after issuing its reads, so that on PostgreSQL they share the lock's round trip."""
        with self.transaction() as conn:
            yield conn
        self._commits += 1
        if maintenance and self._commits >= CHECKPOINT_EVERY and self.remote is None:
            self._commits = 0
            # PASSIVE never blocks writers, so other processes keep being granted meanwhile.
            with self._thread_lock, suppress(sqlite3.Error):
                self.connection().execute("PRAGMA wal_checkpoint(PASSIVE)")

    @contextmanager
    def read(self) -> Iterator[tuple[sqlite3.Connection, float]]:  # type: ignore[override]
        """A consistent read snapshot without the file lock (WAL readers never block writers)."""
        with super().read() as conn:
            yield conn, self.clock(conn)

    def close(self) -> None:
        """Checkpoint, then close this process's connection (reopened on next use)."""
        if self._conn is not None and self._pid == os.getpid():
            with suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        super().close()
