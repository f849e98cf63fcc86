"""The one SQLite store base: open, WAL, file lock, schema check, `BEGIN IMMEDIATE` writes.

ledger.db, limiter.db and runs.db are each one subclass of `SQLiteStore`. What it guarantees:

- The file (and its lock file) is created 0600 in a 0700 directory.
- A database written by a newer review-runner (a schema step this one does not know), or one
  that is not a readable database at all, raises the store's error with a clear message and is
  left exactly as it is: the check runs before anything is written, and nothing ever resets it.
- Switching to WAL and migrating run under the store's file lock, so two processes opening a
  new file at once do not race (switching to WAL fails at once, with no busy wait, when another
  connection does it too); the second one waits and finds the work done.
- `transaction()` is one `BEGIN IMMEDIATE` transaction: SQLite lets one writer in at a time
  across processes, so a check-and-write can never be overtaken (`exclusive=False` is the
  same here; it matters on PostgreSQL only). A store with
  `lock_writes=True` also holds the file lock (flock) for it, so waiters queue in the kernel
  instead of sleep-polling on SQLite's busy handler.
- One connection per process: a connection inherited across fork() is never used or closed by
  the child (SQLite forbids both); it is parked and a new one opened.

The interface (`open`, `transaction`, `read`, `query`, `clock`, `close`) names no SQLite call:
with `REVIEW_RUNNER_DATABASE_URL` set, the same store runs on PostgreSQL instead
(statedb.postgres), and every method hands its work to that backend.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from statedb.config import database_url
from statedb.errors import StoreError
from statedb.paths import private_dir, private_file

if TYPE_CHECKING:
    from statedb.postgres import PostgresBackend

__all__ = ["SQLiteStore"]

# Connections inherited across fork() stay referenced for the life of the process, so that the
# garbage collector never closes them in the child.
_INHERITED: list[sqlite3.Connection] = []


class SQLiteStore:
    """One SQLite database file with append-only migrations, safe to share between processes."""

    #: What the file is, in messages: "ledger database", "runs database", ...
    label: ClassVar[str] = "state database"
    #: The error raised for every failure; each owning package names its own subclass.
    error: ClassVar[type[Exception]] = StoreError
    #: Whether a PostgreSQL commit waits for the WAL flush; False only for state that is
    #: re-learned after a server crash (the limiter's pacing), never for money.
    durable: ClassVar[bool] = True

    def __init__(
        self,
        path: Path,
        migrations: Migrations,
        *,
        lock_path: Path | None = None,
        busy_timeout: float = 60.0,
        lock_writes: bool = False,
        url: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.lock_path = Path(lock_path) if lock_path else self.path.with_suffix(".lock")
        self.migrations = migrations
        self.busy_timeout = busy_timeout
        self.lock_writes = lock_writes
        self._conn: sqlite3.Connection | None = None
        self._db: Database | None = None
        self._pid = -1
        self._lock_fd = -1
        # One transaction at a time per store object, so threads may share it.
        self._thread_lock = threading.RLock()
        try:
            url = url or database_url()
        except StoreError as exc:
            raise self.error(str(exc)) from exc
        #: The PostgreSQL backend when a database URL is configured; None is this SQLite file.
        self.remote: PostgresBackend | None = None
        if url:
            from statedb.postgres import PostgresBackend  # the driver only when it is used

            schema = f"review_runner_{self.path.stem}"
            self.remote = PostgresBackend(
                url, schema, migrations, label=self.label, error=self.error, durable=self.durable
            )

    @property
    def backend(self) -> str:
        """ "sqlite" or "postgresql": where this store's state lives."""
        return "sqlite" if self.remote is None else "postgresql"

    @property
    def location(self) -> str:
        """The file, or the database URL (password hidden) and schema, for messages."""
        return str(self.path) if self.remote is None else self.remote.where

    # -- opening ----------------------------------------------------------------------------

    def open(self) -> SQLiteStore:
        """Open (and migrate) now, so that a broken file fails before any work; returns self."""
        self.connection()
        return self

    def connection(self) -> sqlite3.Connection:
        """This process's connection, opened, checked and migrated on first use."""
        if self.remote is not None:
            # The PostgreSQL connection takes the same calls (statedb.postgres.PgConnection).
            return cast(sqlite3.Connection, self.remote.connection())
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if self._conn is not None:
            _INHERITED.append(self._conn)
        self._conn, self._db, self._lock_fd = None, None, -1
        self._pid = os.getpid()
        # A lock held by another thread at fork time would stay held in the child.
        self._thread_lock = threading.RLock()
        try:
            private_dir(self.path.parent)
            private_file(self.lock_path)
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CLOEXEC)
            if not self.path.is_dir():  # a directory in the way fails below, with its name
                private_file(self.path)
            conn = sqlite3.connect(
                str(self.path),
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as exc:
            raise self.error(f"{self.path}: cannot open the {self.label} ({exc})") from exc
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    @property
    def db(self) -> Database:
        """The connection wrapped as a sqlite_utils Database (for queries and migrations)."""
        if self.remote is not None:
            raise self.error(f"{self.location}: sqlite_utils needs the SQLite backend; use query()")
        conn = self.connection()
        if self._db is None or self._db.conn is not conn:
            self._db = Database(conn, execute_plugins=False)
        return self._db

    def _prepare(self, conn: sqlite3.Connection) -> None:
        db = Database(conn, execute_plugins=False)
        known = {m.name for m in self.migrations._migrations}
        try:
            applied = {m.name for m in self.migrations.applied(db)}
        except sqlite3.DatabaseError as exc:
            raise self.error(
                f"{self.path}: not a readable {self.label} ({exc}); "
                "move it aside to start a new one"
            ) from exc
        newer = sorted(applied - known)
        if newer:
            raise self.error(
                f"{self.path}: written by a newer review-runner (schema step {newer[-1]}); "
                "upgrade review-runner to read it"
            )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if journal != "wal" or known - applied:
                # Only reached for readable, known-version files: nothing above wrote to them.
                with self._flock():
                    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                    if mode != "wal":
                        raise sqlite3.DatabaseError(f"cannot switch to WAL (journal_mode={mode})")
                    self.migrations.apply(db)
            self.configure(conn)
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc

    def configure(self, conn: sqlite3.Connection) -> None:
        """Per-connection settings, after the schema is current. Subclasses may add to them."""
        # A process crash loses nothing in WAL with NORMAL; only a power cut can drop the last commits.
        conn.execute("PRAGMA synchronous = NORMAL")

    # -- transactions -----------------------------------------------------------------------

    @contextmanager
    def transaction(self, exclusive: bool = True) -> Iterator[sqlite3.Connection]:
        """One `BEGIN IMMEDIATE` write transaction: committed on success, rolled back on any error.

        `exclusive=False` is the same on SQLite (one writer at a time is all it has); on
        PostgreSQL it takes no store-wide lock, only row locks (see statedb.postgres): for a
        write that reads only rows it locks (`FOR_UPDATE`) and changes shared rows only by
        increments, so that it is safe beside a concurrent check-and-write.
        """
        if self.remote is not None:
            with self.remote.transaction(exclusive) as remote:
                yield cast(sqlite3.Connection, remote)
            return
        conn = self.connection()
        with self._thread_lock, self._flock() if self.lock_writes else nullcontext():
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._fail(exc) from exc
            try:
                yield conn
            except BaseException as exc:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._fail(exc) from exc
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise self._fail(exc) from exc

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot for every query inside it, no file lock."""
        if self.remote is not None:
            with self.remote.read() as remote:
                yield cast(sqlite3.Connection, remote)
            return
        conn = self.connection()
        with self._thread_lock:
            try:
                conn.execute("BEGIN")
            except sqlite3.Error as exc:
                raise self._fail(exc) from exc
            try:
                yield conn
            except sqlite3.Error as exc:
                raise self._fail(exc) from exc
            finally:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("COMMIT")

    def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[dict[str, Any]]:
        """The rows of one SELECT as dicts, read in one snapshot, on either backend."""
        if self.remote is not None:
            return self.remote.query(sql, params)
        return list(self.db.query(sql, dict(params) if isinstance(params, Mapping) else params))

    def clock(self, conn: sqlite3.Connection) -> float:
        """Epoch seconds now, read inside the transaction of `conn`: the host's clock for a
        SQLite file, the database's for PostgreSQL (shared by every host)."""
        if self.remote is not None:
            return float(getattr(conn, "now"))  # noqa: B009 (a PgConnection attribute)
        return time.time()

    def close(self) -> None:
        """Close this process's connection and lock descriptor (reopened on next use)."""
        if self.remote is not None:
            self.remote.close()
        if self._pid == os.getpid():
            if self._conn is not None:
                self._conn.close()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
        self._conn, self._db, self._lock_fd, self._pid = None, None, -1, -1

    # -- helpers ----------------------------------------------------------------------------

    @contextmanager
    def _flock(self) -> Iterator[None]:
        # flock(2) blocks in the kernel and wakes the next waiter on release: no sleep-polling.
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _fail(self, exc: BaseException) -> Exception:
        """The store's error for a failed SQLite call, saying which kind of failure it was."""
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            what = "is locked by another process for too long"
        elif isinstance(exc, sqlite3.DatabaseError) and not isinstance(
            exc, sqlite3.OperationalError
        ):
            what = f"is corrupt or not a {self.label}"
        else:
            what = f"cannot be opened or written as a {self.label}"
        return self.error(f"{self.path}: {what} ({exc})")
