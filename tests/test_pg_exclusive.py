"""transaction(exclusive=False): on PostgreSQL it runs beside a transaction holding the store's
lock (only row locks order it); on SQLite it is the same BEGIN IMMEDIATE as every write."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from ledger.store import Store
from statedb.dialect import FOR_UPDATE


def test_a_non_exclusive_write_commits_while_the_store_lock_is_held(
    tmp_path: Path, pg_url: str
) -> None:
    holder, other = Store(tmp_path / "ledger.db"), Store(tmp_path / "ledger.db")
    done = threading.Event()

    def write_beside() -> None:
        with other.write(exclusive=False) as conn:
            conn.execute("INSERT INTO events (kind, month, at) VALUES ('spend_cap', 'm', 'now')")
        done.set()

    with holder.write() as conn:
        conn.execute("SELECT 1").fetchone()  # the store lock is held from here to the commit
        thread = threading.Thread(target=write_beside)
        thread.start()
        # Bounded: a write that waited for the store lock would wait for this commit.
        assert done.wait(30), "the non-exclusive write waited for the store lock"
    thread.join(30)
    rows = other.query("SELECT kind FROM events")
    assert rows == [{"kind": "spend_cap"}]
    # And an exclusive write queues behind the lock as before: it commits only after it.
    order: list[str] = []
    with holder.write() as conn:
        conn.execute("SELECT 1").fetchone()
        thread = threading.Thread(target=lambda: _exclusive(other, order))
        thread.start()
        thread.join(0.5)
        order.append("holder")
    thread.join(30)
    assert order == ["holder", "other"]
    holder.close()
    other.close()


def test_without_the_lock_the_clock_is_still_the_databases(tmp_path: Path, pg_url: str) -> None:
    store = Store(tmp_path / "ledger.db")
    with store.write(exclusive=False) as conn:
        conn.execute("INSERT INTO events (kind, month, at) VALUES ('spend_cap', 'm', 'now')")
        first = store.clock(conn)  # read when first asked, then the same for the transaction
        assert store.clock(conn) == first
        database = conn.execute("SELECT extract(epoch FROM now())::float8").fetchone()[0]
    assert abs(first - database) < 3600 and first >= database
    assert store.query("SELECT count(*) AS n FROM events") == [{"n": 1}]
    store.close()


def _exclusive(store: Store, order: list[str]) -> None:
    with store.write() as conn:
        conn.execute("SELECT 1").fetchone()
    order.append("other")


def test_on_sqlite_it_is_begin_immediate_and_for_update_is_a_comment(tmp_path: Path) -> None:
    store = Store(tmp_path / "ledger.db")
    with store.write(exclusive=False) as conn:
        conn.execute("INSERT INTO events (kind, month, at) VALUES ('spend_cap', 'm', 'now')")
        assert conn.execute("SELECT kind FROM events" + FOR_UPDATE).fetchall() == [("spend_cap",)]
        # The write lock is held: a second connection cannot write until the commit.
        other = sqlite3.connect(tmp_path / "ledger.db", timeout=0)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        other.close()
    store.close()
