"""ledger.db: opening it, its schema (append-only migrations), and write transactions.

Every check-and-write runs in one `BEGIN IMMEDIATE` transaction: SQLite lets one writer in
at a time across all processes, so a budget check can never be overtaken by another
process's insert. The file lock (ledger.lock beside the db) is only taken while migrating,
where two processes opening a fresh file at once would otherwise both create the schema.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from ledger.errors import LedgerStoreError

__all__ = ["MIGRATIONS", "Store", "process_alive", "process_identity"]

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


_KNOWN = {m.name for m in MIGRATIONS._migrations}


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of `pid` from /proc (Linux), or None where /proc cannot tell.

    The start time tells a recycled pid from the original; state "Z" is a process that has
    died but not yet been reaped by its parent.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return (fields[0], fields[19]) if len(fields) > 19 else None


def process_identity() -> tuple[int, str | None, str]:
    """(pid, start time or None, host) of this process, as recorded on reservations and holds."""
    pid = os.getpid()
    stat = _proc_stat(pid)
    return pid, stat[1] if stat else None, socket.gethostname()


def process_alive(pid: int, start: str | None, host: str) -> bool:
    """Whether the recorded process still runs. Other hosts cannot be checked: taken as alive."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, started = stat
    return state not in ("Z", "X") and (start is None or started == start)


class Store:
    """One connection to ledger.db, migrated to the current schema."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_suffix(".lock")
        # One transaction at a time per Store, so threads may share a Ledger.
        self._lock = threading.RLock()
        self._connect()

    def _connect(self) -> None:
        self._pid = os.getpid()
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            conn = sqlite3.connect(
                str(self.path),
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as exc:
            raise LedgerStoreError(f"{self.path}: cannot open the ledger ({exc})") from exc
        self.conn = conn
        try:
            self._prepare()
        except BaseException:
            conn.close()
            raise

    def _prepare(self) -> None:
        try:
            self.db = Database(self.conn, execute_plugins=False)
            applied = {m.name for m in MIGRATIONS.applied(self.db)}
        except sqlite3.DatabaseError as exc:
            raise LedgerStoreError(
                f"{self.path}: not a readable ledger database ({exc}); "
                "move it aside to start a new ledger"
            ) from exc
        newer = sorted(applied - _KNOWN)
        if newer:
            raise LedgerStoreError(
                f"{self.path}: written by a newer review-runner (schema step {newer[-1]}); "
                "upgrade review-runner to read it"
            )
        try:
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            journal = self.conn.execute("PRAGMA journal_mode").fetchone()[0]
            if journal != "wal" or _KNOWN - applied:
                # Only reached for readable, known-version files: nothing above modified the file.
                # Switching to WAL fails at once ("database is locked", no busy wait) when another
                # process does it too: under the lock the second one waits and finds it done.
                with filelock.FileLock(
                    str(self.lock_path), timeout=BUSY_TIMEOUT_MS / 1000, mode=0o600
                ):
                    self.db.enable_wal()
                    MIGRATIONS.apply(self.db)
            # A process crash loses nothing in WAL with NORMAL; only a power cut can drop the last commits.
            self.conn.execute("PRAGMA synchronous = NORMAL")
        except filelock.Timeout as exc:
            raise LedgerStoreError(f"{self.lock_path}: locked by another process") from exc
        except sqlite3.DatabaseError as exc:
            raise LedgerStoreError(f"{self.path}: cannot prepare the ledger ({exc})") from exc

    def _own_connection(self) -> sqlite3.Connection:
        # A connection inherited through fork() must not be used by the child: open its own.
        if os.getpid() != self._pid:
            self._connect()
        return self.conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A `BEGIN IMMEDIATE` transaction: committed on success, rolled back on any error."""
        with self._lock:
            yield from self._write()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot for every query inside it."""
        with self._lock:
            yield from self._read()

    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._own_connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise LedgerStoreError(f"{self.path}: cannot start a transaction ({exc})") from exc
        try:
            yield conn
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.DatabaseError):
                raise LedgerStoreError(f"{self.path}: {exc}") from exc
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise LedgerStoreError(f"{self.path}: cannot commit ({exc})") from exc

    def _read(self) -> Iterator[sqlite3.Connection]:
        conn = self._own_connection()
        try:
            conn.execute("BEGIN")
        except sqlite3.DatabaseError as exc:
            raise LedgerStoreError(f"{self.path}: cannot read ({exc})") from exc
        try:
            yield conn
        except sqlite3.DatabaseError as exc:
            raise LedgerStoreError(f"{self.path}: {exc}") from exc
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()
