"""The limiter's storage: limiter.db (SQLite, WAL) guarded by limiter.lock, one connection per process.

Every write is one `BEGIN IMMEDIATE` transaction taken while holding an exclusive `flock` on
limiter.lock, with the clock read inside it, so that check-and-debit is atomic across processes.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils

from runner.errors import StateError
from runner.state import private_file

__all__ = ["LimiterStore", "iso", "parse_iso", "pid_alive"]

DB_NAME = "limiter.db"
LOCK_NAME = "limiter.lock"

CHECKPOINT_EVERY = 200  # commits of one process between its WAL checkpoints
MIGRATIONS = sqlite_utils.Migrations("review_runner.limiter")

# Connections inherited across fork() must never be used or closed by the child (SQLite forbids
# it), so they are parked here for the life of the process instead of being garbage-collected.
_INHERITED: list[object] = []


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


def iso(t: float) -> str:
    """Epoch seconds as fixed-width ISO-8601 UTC text (sorts as it compares)."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds")


def parse_iso(text: str) -> float:
    """ISO-8601 text written by `iso` back to epoch seconds."""
    return datetime.fromisoformat(text).timestamp()


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a live process on this host (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # A SIGKILLed child not yet reaped is a zombie: dead for our purposes.
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


class LimiterStore:
    """Opens limiter.db lazily in each process and runs locked write transactions."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.db_path = self.state_dir / DB_NAME
        self.lock_path = self.state_dir / LOCK_NAME
        self._pid = -1
        self._conn: sqlite3.Connection | None = None
        self._lock_fd = -1
        self._thread_lock = threading.Lock()
        self._commits = 0

    def _fail(self, exc: BaseException) -> StateError:
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            what = "is locked by another process for too long"
        elif isinstance(exc, sqlite3.DatabaseError) and not isinstance(
            exc, sqlite3.OperationalError
        ):
            what = "is corrupt or not a limiter database"
        else:
            what = "cannot be opened or written"
        return StateError(f"limiter state {self.db_path} {what}: {exc}")

    def _ensure_open(self) -> sqlite3.Connection:
        if self._pid == os.getpid() and self._conn is not None:
            return self._conn
        if self._conn is not None:
            _INHERITED.append(self._conn)
        self._conn = None
        self._pid = os.getpid()
        # A threading.Lock held by another thread at fork time would stay held in the child.
        self._thread_lock = threading.Lock()
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            private_file(self.lock_path)
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CLOEXEC)
            if not self.db_path.is_dir():
                private_file(self.db_path)
            conn = sqlite3.connect(
                self.db_path, isolation_level=None, timeout=10.0, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise self._fail(exc) from exc
        try:
            with self._flock():
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode != "wal":
                    raise sqlite3.DatabaseError(f"cannot switch to WAL (journal_mode={mode})")
                # NORMAL in WAL: a power failure may lose the last pacing state, never corrupt it.
                conn.execute("PRAGMA synchronous=NORMAL")
                # Checkpoints (and their fsync) run after the file lock is released, see write().
                conn.execute("PRAGMA wal_autocheckpoint=0")
                self._migrate(conn)
        except StateError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise self._fail(exc) from exc
        self._conn = conn
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        db = sqlite_utils.Database(conn)
        known = {m.name for m in MIGRATIONS._migrations}
        applied = {m.name for m in MIGRATIONS.applied(db)}
        unknown = sorted(applied - known)
        if unknown:
            raise StateError(
                f"limiter state {self.db_path} was written by a newer review-runner "
                f"(unknown schema migrations: {', '.join(unknown)}); upgrade review-runner, "
                "the file is left untouched"
            )
        if not known <= applied:
            MIGRATIONS.apply(db)

    @contextmanager
    def _flock(self) -> Iterator[None]:
        # flock(2) blocks in the kernel and wakes the next waiter on release; no sleep-polling.
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @contextmanager
    def write(self, maintenance: bool = False) -> Iterator[tuple[sqlite3.Connection, float]]:
        """One BEGIN IMMEDIATE transaction under the file lock; yields (connection, now).

        `maintenance=True` marks a caller off the request path (settle, record): the WAL
        checkpoint, with its fsync, runs there after the lock is released, never in acquire.
        """
        conn = self._ensure_open()
        with self._thread_lock, self._flock():
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._fail(exc) from exc
            try:
                yield conn, time.time()
            except BaseException as exc:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._fail(exc) from exc
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._fail(exc) from exc
            self._commits += 1
            checkpoint = maintenance and self._commits >= CHECKPOINT_EVERY
        if checkpoint:
            self._commits = 0
            # PASSIVE never blocks writers, so other processes keep being granted meanwhile.
            with self._thread_lock, suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    @contextmanager
    def read(self) -> Iterator[tuple[sqlite3.Connection, float]]:
        """A consistent read snapshot without the file lock (WAL readers never block writers)."""
        conn = self._ensure_open()
        with self._thread_lock:
            try:
                conn.execute("BEGIN")
                try:
                    yield conn, time.time()
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._fail(exc) from exc

    def close(self) -> None:
        """Close this process's connection and lock descriptor (reopened on next use)."""
        if self._pid == os.getpid():
            if self._conn is not None:
                with suppress(sqlite3.Error):
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                self._conn.close()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
        self._conn = None
        self._lock_fd = -1
        self._pid = -1
