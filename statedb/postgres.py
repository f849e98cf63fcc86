"""The PostgreSQL backend of the state stores: one database shared by several hosts.

`REVIEW_RUNNER_DATABASE_URL=postgresql://...` (or `--database-url`) puts every store there,
each in its own schema (review_runner_ledger, review_runner_limiter, review_runner_runs), so
the stores' SQL is the same on both backends (see statedb.dialect for the few spellings that
translate). What it guarantees, the same as the SQLite backend:

- `transaction()` serialises the writers of one store across every host: its first statement
  takes a transaction-scoped advisory lock on the store (the lock SQLite's `BEGIN IMMEDIATE`
  takes on the file), so a check-and-write can never be overtaken; the lock goes with the
  commit or rollback, and with the session if the process dies.
- `transaction(exclusive=False)` takes no store lock: it runs beside the exclusive ones and
  the other non-exclusive ones, ordered only by the row locks its statements take (READ
  COMMITTED; `SELECT ... FOR UPDATE`, spelled portably as statedb.dialect.FOR_UPDATE, and
  every UPDATE). For writes that read only rows they lock and change shared rows only by
  increments; the store that uses it says why each such write is safe (ledger.entries).
- The clock of a transaction is the database's (`clock_timestamp()` read once the lock is
  held; without the lock, when first asked), never the host's: hosts whose clocks disagree
  still refill one set of buckets.
- Round trips are what the lock's hold time is made of, so a write transaction is pipelined:
  BEGIN, the lock and the clock read go out with the first statement whose result is read,
  statements whose results are not read go out with the next one that is (or the COMMIT),
  and statements run prepared from their first use (`prepare_threshold=0`).
- Schema steps are the stores' append-only migrations, applied under the same lock and
  recorded per schema; a schema written by a newer review-runner raises the store's error.
- Commits wait for the WAL flush (the server's `synchronous_commit`), except in a store that
  asks otherwise (`durable=False`: the limiter, whose pacing state is re-learned after a
  server crash); the ledger's commits are money and always durable.
- One connection per process: one inherited across fork() is parked, never used or closed.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
from psycopg.adapt import Loader
from psycopg.pq import ExecStatus
from sqlite_utils.migrations import Migrations

from statedb.config import redact
from statedb.dialect import translate, translate_ddl

__all__ = ["PgConnection", "PostgresBackend", "Row"]

CONNECT_TIMEOUT = 10  # seconds before an unreachable server is reported
MIGRATIONS_TABLE = "_migrations"
CLOCK_SQL = "SELECT extract(epoch FROM clock_timestamp())::float8"
TUPLES_OK = ExecStatus.TUPLES_OK

_INHERITED: list[psycopg.Connection[Any]] = []


class _Number(Loader):
    """numeric (what sum() of integers gives) as int, or float when it has a fraction."""

    def load(self, data: Any) -> int | float:
        text = bytes(data).decode()
        try:
            return int(text)
        except ValueError:
            return float(text)


class Row(tuple[Any, ...]):
    """A result row readable by position and by column name, as sqlite3.Row is."""

    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            key = self._index[key]
        return super().__getitem__(key)

    def keys(self) -> list[str]:
        return list(self._index)


def _rows(cursor: Any) -> Any:
    # psycopg makes a row maker for every result, read or not (an INSERT's RETURNING often is
    # not): the column names are looked up once its first row is made, from the result itself
    # (cursor.description would build a Column object per column, each time).
    index: dict[str, int] = {}

    def make(values: Sequence[Any]) -> Row:
        if not index and values:
            result = cursor.pgresult
            index.update((result.fname(i).decode(), i) for i in range(result.nfields))
        return Row(values, index)

    return make


def _has_rows(cursor: psycopg.Cursor[Any]) -> bool:
    """`cursor.description is not None` without building the description."""
    result = cursor.pgresult
    return result is not None and (result.nfields > 0 or result.status == TUPLES_OK)


class _Cursor:
    """The slice of sqlite3.Cursor the stores use: fetch, iterate, rowcount, lastrowid,
    description. Inside a write transaction the statement is only queued (pipeline mode);
    asking for any of these sends the queue and waits, so a statement whose result nobody
    reads costs no round trip of its own."""

    def __init__(self, cursor: psycopg.Cursor[Any], conn: PgConnection, insert: bool) -> None:
        self._cursor = cursor
        self._conn = conn
        self._insert = insert
        self._id: list[Any] = []

    def _ready(self) -> psycopg.Cursor[Any]:
        if self._cursor.pgresult is None and self._conn.pipeline is not None:
            self._conn.pipeline.sync()
        return self._cursor

    @property
    def rowcount(self) -> int:
        return self._ready().rowcount

    @property
    def description(self) -> Any:
        return self._ready().description

    @property
    def lastrowid(self) -> Any:
        if self._insert and not self._id:
            first = self.fetchone()
            # A Row is a tuple: `in` would search its values, so ask its keys.
            has_id = first is not None and "id" in first.keys()  # noqa: SIM118
            self._id.append(first["id"] if has_id else None)
        return self._id[0] if self._id else None

    def fetchone(self) -> Any:
        cursor = self._ready()
        return cursor.fetchone() if _has_rows(cursor) else None

    def fetchall(self) -> list[Any]:
        cursor = self._ready()
        return cursor.fetchall() if _has_rows(cursor) else []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


class PgConnection:
    """A psycopg connection that takes the stores' SQLite-spelled SQL (see statedb.dialect)."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw
        self._now = 0.0  # the database's clock, read when the current transaction began
        self.row_factory: Any = None  # accepted and ignored: rows always read both ways
        self.pipeline: psycopg.Pipeline | None = None  # set inside a write transaction
        self.clock_cursor: psycopg.Cursor[Any] | None = None  # the lock's, until `now` is read
        self.clock_due = False  # a transaction without the lock reads the clock when asked

    @property
    def now(self) -> float:
        """The database's clock, read when the current transaction took its lock (without the
        lock: when first asked): asking for it sends what is queued (so the lock, the clock
        and the reads issued so far share one round trip)."""
        cursor, self.clock_cursor = self.clock_cursor, None
        if cursor is None and self.clock_due:
            cursor = self.raw.execute(CLOCK_SQL)
        self.clock_due = False
        if cursor is not None:
            if cursor.pgresult is None and self.pipeline is not None:
                self.pipeline.sync()
            row = cursor.fetchone()
            self._now = float(row[0]) if row else 0.0
        return self._now

    @now.setter
    def now(self, value: float) -> None:
        self._now, self.clock_cursor, self.clock_due = value, None, False

    def execute(self, sql: str, params: Any = ()) -> _Cursor:
        text, values = translate(sql, params)
        cursor = self.raw.cursor(row_factory=_rows)
        cursor.execute(text, values)
        return _Cursor(cursor, self, text.lstrip()[:6].upper() == "INSERT")

    def executemany(self, sql: str, rows: Sequence[Any]) -> None:
        # One execute per row: in a write transaction each is only queued (no round trip).
        for row in rows:
            self.execute(sql, row)

    def ddl(self, sql: str, params: Any = ()) -> None:
        """A migration statement: DDL types translated, then as execute()."""
        self.execute(translate_ddl(sql), params)


class _MigrationDb:
    """What a migration function is handed: `execute()` is all the stores' migrations use."""

    def __init__(self, conn: PgConnection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Any = ()) -> None:
        self._conn.ddl(sql, params)


class PostgresBackend:
    """One store's schema in a PostgreSQL database, behind the stores' one interface."""

    def __init__(
        self,
        url: str,
        schema: str,
        migrations: Migrations,
        *,
        label: str,
        error: type[Exception],
        durable: bool = True,
    ) -> None:
        self.url = url
        self.durable = durable
        self.schema = schema
        self.migrations = migrations
        self.label = label
        self.error = error
        self.where = f"{redact(url)} (schema {schema})"
        # The same key on every host: crc32 of the schema name.
        self.lock_key = zlib.crc32(f"review-runner:{schema}".encode())
        self._conn: PgConnection | None = None
        self._pid = -1
        self._thread_lock = threading.RLock()

    def connection(self) -> PgConnection:
        """This process's connection, opened, checked and migrated on first use."""
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if self._conn is not None:
            _INHERITED.append(self._conn.raw)
        self._conn, self._pid = None, os.getpid()
        self._thread_lock = threading.RLock()
        try:
            raw = psycopg.connect(
                self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT, prepare_threshold=None
            )
        except psycopg.Error as exc:
            raise self.error(
                f"{redact(self.url)}: cannot reach the {self.label} ({_first_line(exc)})"
            ) from exc
        raw.adapters.register_loader("numeric", _Number)
        conn = PgConnection(raw)
        try:
            self._prepare(conn)
        except BaseException:
            raw.close()
            raise
        # Statements run prepared from their first use from here on. Not during migrations:
        # their DDL makes psycopg drop its prepared statements, which in pipeline mode it does
        # only after preparing the next one ("prepared statement _pg3_N does not exist").
        raw.prepare_threshold = 0
        self._conn = conn
        return conn

    def _prepare(self, conn: PgConnection) -> None:
        known = [m.name for m in self.migrations._migrations]
        try:
            if not self.durable:
                # This connection is this store's alone, so the session setting is the same
                # as a SET LOCAL in each of its transactions, without the statement.
                conn.raw.execute("SET synchronous_commit = off")
            conn.raw.execute(f'SET search_path = "{self.schema}"')
            with self._locked(conn):
                conn.raw.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                conn.raw.execute(
                    f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (migration_set TEXT NOT NULL,"
                    " name TEXT NOT NULL, applied_at TEXT NOT NULL, PRIMARY KEY (migration_set, name))"
                )
                applied = {
                    name
                    for (name,) in conn.raw.execute(
                        f"SELECT name FROM {MIGRATIONS_TABLE} WHERE migration_set = %s",
                        (self.migrations.name,),
                    )
                }
                newer = sorted(applied - set(known))
                if newer:
                    raise self.error(
                        f"{self.where}: written by a newer review-runner (schema step "
                        f"{newer[-1]}); upgrade review-runner to read it"
                    )
                for migration in self.migrations._migrations:
                    if migration.name in applied:
                        continue
                    migration.fn(_MigrationDb(conn))  # type: ignore[arg-type]
                    conn.raw.execute(
                        f"INSERT INTO {MIGRATIONS_TABLE} VALUES (%s, %s, clock_timestamp()::text)",
                        (self.migrations.name, migration.name),
                    )
        except psycopg.Error as exc:
            raise self._fail(exc) from exc

    @contextmanager
    def _locked(self, conn: PgConnection, exclusive: bool = True) -> Iterator[PgConnection]:
        """BEGIN, this store's advisory lock (unless not `exclusive`) and the database's clock;
        then commit or roll back.

        The transaction runs in pipeline mode: statements whose results are not read go out
        together with the next one that is, and the COMMIT with them.
        """
        raw = conn.raw
        try:
            with raw.pipeline() as pipeline:
                conn.pipeline = pipeline
                raw.execute("BEGIN")
                if exclusive:
                    # Queued, not waited for: see PgConnection.now.
                    conn.clock_cursor = raw.execute(
                        f"{CLOCK_SQL} FROM (SELECT pg_advisory_xact_lock({self.lock_key})) AS held"
                    )
                else:  # a statement fewer for the writers that never ask (the ledger's)
                    conn.clock_due = True
                yield conn
                raw.execute("COMMIT")
        except BaseException:
            if raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                with suppress(psycopg.Error):
                    raw.execute("ROLLBACK")
            raise
        finally:
            conn.pipeline, conn.clock_cursor, conn.clock_due = None, None, False

    @contextmanager
    def transaction(self, exclusive: bool = True) -> Iterator[PgConnection]:
        """One write transaction holding the store's lock: committed on success, else rolled back.

        Not `exclusive`: no store lock, only the row locks its statements take (READ
        COMMITTED), for writes that are safe beside any other transaction (see
        SQLiteStore.transaction).
        """
        conn = self.connection()
        with self._thread_lock:
            try:
                with self._locked(conn, exclusive) as locked:
                    yield locked
            except psycopg.Error as exc:
                raise self._fail(exc) from exc

    @contextmanager
    def read(self) -> Iterator[PgConnection]:
        """A read-only snapshot (REPEATABLE READ): every query inside sees the same data."""
        conn = self.connection()
        with self._thread_lock:
            try:
                cursor = conn.raw.execute(
                    f"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {CLOCK_SQL}",
                    prepare=False,  # two statements in one message cannot be prepared
                )
                cursor.nextset()
                row = cursor.fetchone()
                conn.now = float(row[0]) if row else 0.0
            except psycopg.Error as exc:
                raise self._fail(exc) from exc
            try:
                yield conn
            except psycopg.Error as exc:
                raise self._fail(exc) from exc
            finally:
                with suppress(psycopg.Error):
                    conn.raw.execute("COMMIT")

    def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[dict[str, Any]]:
        """Rows as dicts, read in one snapshot; `rowid` left out, as SQLite's `SELECT *` does."""
        with self.read() as conn:
            rows = [dict(zip(row.keys(), row, strict=True)) for row in conn.execute(sql, params)]
        for row in rows:
            row.pop("rowid", None)
        return rows

    def close(self) -> None:
        """Close this process's connection (reopened on next use)."""
        if self._conn is not None and self._pid == os.getpid():
            with suppress(psycopg.Error):
                self._conn.raw.close()
        self._conn, self._pid = None, -1

    def _fail(self, exc: BaseException) -> Exception:
        if isinstance(exc, psycopg.OperationalError):
            what = f"is unreachable or refused the {self.label}"
        else:
            what = f"cannot be read or written as the {self.label}"
        return self.error(f"{self.where}: {what} ({_first_line(exc)})")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
