"""statedb: the store base every database uses, the one liveness check, the one time form."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlite_utils

from statedb import (
    SQLiteStore,
    StatePaths,
    StoreError,
    iso,
    parse_iso,
    process_alive,
    process_identity,
    state_dir,
)

MIGRATIONS = sqlite_utils.Migrations("statedb-test")


@MIGRATIONS()
def m001(db: sqlite_utils.Database) -> None:
    db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)")


class ToyError(StoreError):
    pass


class Toy(SQLiteStore):
    label = "toy database"
    error = ToyError

    def __init__(self, path: Path, **kwargs: object) -> None:
        super().__init__(path, MIGRATIONS, **kwargs)  # type: ignore[arg-type]


def _names(store: Toy) -> list[str]:
    with store.read() as conn:
        return [row[0] for row in conn.execute("SELECT name FROM items ORDER BY id")]


def test_a_new_store_is_private_in_wal_and_migrated(tmp_path: Path) -> None:
    store = Toy(tmp_path / "state" / "toy.db").open()
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    for name in ("toy.db", "toy.lock"):
        assert (tmp_path / "state" / name).stat().st_mode & 0o777 == 0o600
    with store.read() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert _names(store) == []


@pytest.mark.parametrize("lock_writes", [False, True], ids=["sqlite-lock", "file-lock"])
def test_a_transaction_commits_or_rolls_back_as_a_whole(tmp_path: Path, lock_writes: bool) -> None:
    store = Toy(tmp_path / "toy.db", lock_writes=lock_writes)
    with store.transaction() as conn:
        conn.execute("INSERT INTO items (name) VALUES ('a')")
    with pytest.raises(RuntimeError, match="boom"), store.transaction() as conn:
        conn.execute("INSERT INTO items (name) VALUES ('b')")
        raise RuntimeError("boom")
    assert _names(store) == ["a"]
    failed = r"toy.db: cannot be opened or written as a toy database"
    with pytest.raises(ToyError, match=failed), store.transaction() as conn:
        conn.execute("INSERT INTO items (name) VALUES ('c')")
        conn.execute("INSERT INTO nowhere VALUES (1)")
    assert _names(store) == ["a"]  # 'c' went with the failed statement's transaction


def test_a_corrupt_file_is_a_clear_error_and_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "toy.db"
    garbage = b"not a database at all" * 100
    path.write_bytes(garbage)
    with pytest.raises(
        ToyError, match=r"toy.db: not a readable toy database \(.*\); move it aside"
    ):
        Toy(path).open()
    assert path.read_bytes() == garbage


def test_a_newer_schema_is_refused_and_never_reset(tmp_path: Path) -> None:
    path = tmp_path / "toy.db"
    store = Toy(path).open()
    with store.transaction() as conn:
        conn.execute("INSERT INTO items (name) VALUES ('kept')")
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
            " VALUES ('statedb-test', 'm999_future', '2030-01-01')"
        )
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = path.read_bytes()
    with pytest.raises(
        ToyError,
        match=r"written by a newer review-runner \(schema step m999_future\); upgrade",
    ):
        Toy(path).open()
    assert path.read_bytes() == before


def test_a_store_opened_before_fork_opens_its_own_connection_in_the_child(
    tmp_path: Path,
) -> None:
    store = Toy(tmp_path / "toy.db").open()
    parent_conn = store.connection()
    child = mp.get_context("fork").Process(target=_use_inherited, args=(store,))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert store.connection() is parent_conn  # the parent's stays in use
    assert _names(store) == ["from-fork"]


def _use_inherited(store: Toy) -> None:
    with store.transaction() as conn:
        conn.execute("INSERT INTO items (name) VALUES ('from-fork')")


def test_state_dir_and_file_names_come_from_one_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REVIEW_RUNNER_HOME", str(tmp_path / "home"))
    root = state_dir()
    assert root == tmp_path / "home" and root.stat().st_mode & 0o777 == 0o700
    paths = StatePaths(root)
    assert [p.name for p in (paths.ledger, paths.limiter, paths.limiter_lock, paths.runs)] == [
        "ledger.db",
        "limiter.db",
        "limiter.lock",
        "runs.db",
    ]
    monkeypatch.delenv("REVIEW_RUNNER_HOME")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert state_dir() == tmp_path / "xdg" / "review-runner"


def test_liveness_tells_the_living_the_dead_and_a_recycled_pid() -> None:
    me = process_identity()
    assert process_alive(*me)
    assert process_alive(me.pid)  # start and host unknown: the pid decides
    assert not process_alive(me.pid, "not-my-start-time", me.host)  # a recycled pid
    assert process_alive(10**7, None, "some-other-host")  # cannot check: taken as alive
    code = "import os; print(os.getpid())"
    done = subprocess.run([sys.executable, "-c", code], text=True, capture_output=True, check=True)
    assert not process_alive(int(done.stdout), None, me.host)


def test_a_zombie_counts_as_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 60  # a bound on the wait, not a timing claim
    while time.monotonic() < deadline:  # exited, not yet reaped: /proc says Z
        with open(f"/proc/{child.pid}/stat") as fh:
            if fh.read().rpartition(")")[2].split()[0] == "Z":
                break
        time.sleep(0.01)
    assert not process_alive(child.pid)
    child.wait()


def test_one_time_form_that_sorts_as_it_compares() -> None:
    instant = datetime(2026, 12, 4, 5, 6, 7, 89, tzinfo=UTC)
    assert iso(instant) == "2026-12-04T05:06:07.000089Z"
    assert iso(instant.timestamp()) == iso(instant)
    assert parse_iso(iso(instant)) == instant.timestamp()
    assert parse_iso("2026-12-04T05:06:07.000089+00:00") == instant.timestamp()  # older rows
    stamps = [iso(1_800_000_000 + d) for d in (0.5, 10, 0.000001, 100_000)]
    assert sorted(stamps) == [iso(1_800_000_000 + d) for d in (0.000001, 0.5, 10, 100_000)]
