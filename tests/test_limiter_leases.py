"""Limiter leases belong to a process (pid + start time + host) and age by the monotonic clock."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.limiter import AcquireTimeout, Limiter, Limits
from statedb import host_name, iso
from statedb.process import _proc_stat

# A real process that takes the one in-flight slot and holds it until its stdin closes.
HOLD = """
import sys
from pathlib import Path
from runner.limiter import Limiter
lease = Limiter(Path(sys.argv[1])).acquire(1, 1, timeout=60)
print(lease.id, flush=True)
sys.stdin.read()
"""


@pytest.fixture
def limiter(tmp_path: Path) -> Iterator[Limiter]:
    one_slot = Limits(rpm=600_000, itpm=10**9, otpm=10**9, max_concurrent=1)
    lim = Limiter(tmp_path, one_slot, lease_max_age=900)
    yield lim
    lim.close()


def _hold(state: Path) -> tuple[subprocess.Popen[str], int]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(state)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    return holder, int(holder.stdout.readline())


def _leases(state: Path) -> list[tuple]:
    with sqlite3.connect(state / "limiter.db") as conn:
        return conn.execute("SELECT id, pid, pid_start, host FROM leases").fetchall()


def _set(state: Path, lease_id: int, column: str, value: object) -> None:
    with sqlite3.connect(state / "limiter.db") as conn:
        conn.execute(f"UPDATE leases SET {column} = ? WHERE id = ?", (value, lease_id))


def test_a_lease_whose_pid_now_belongs_to_another_process_is_reclaimed(
    tmp_path: Path, limiter: Limiter
) -> None:
    holder, lease_id = _hold(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    # The kernel gives the dead holder's pid to a new process: same pid, other start time.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _set(tmp_path, lease_id, "pid", stranger.pid)
        lease = limiter.acquire(1, 1, timeout=20)
    finally:
        stranger.kill()
        stranger.wait(10)
    assert [row[:2] for row in _leases(tmp_path)] == [(lease.id, os.getpid())]


def test_a_live_lease_is_kept_even_when_the_wall_clock_jumps(
    tmp_path: Path, limiter: Limiter
) -> None:
    holder, lease_id = _hold(tmp_path)
    try:
        # Granted "two hours ago" by the wall clock (a clock step), a moment ago by the
        # monotonic one: its age is the monotonic one, under lease_max_age, so it stays.
        _set(tmp_path, lease_id, "granted_at", iso(time.time() - 7200))
        with pytest.raises(AcquireTimeout, match="within 1 s"):
            limiter.acquire(1, 1, timeout=1)
        [doc] = limiter.status()["in_flight"]
        assert (doc["id"], doc["pid"]) == (lease_id, holder.pid) and doc["age_s"] < 900
        stat = _proc_stat(holder.pid)
        assert stat is not None  # the lease names its holder as the liveness check knows it
        assert _leases(tmp_path) == [(lease_id, holder.pid, stat[1], host_name())]
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
    limiter.acquire(1, 1, timeout=20)  # its holder gone, the slot is free again


def test_a_live_lease_past_its_monotonic_age_limit_is_reclaimed(
    tmp_path: Path, limiter: Limiter
) -> None:
    holder, lease_id = _hold(tmp_path)
    try:
        _set(tmp_path, lease_id, "granted_mono", time.monotonic() - 1000)  # lease_max_age 900
        lease = limiter.acquire(1, 1, timeout=20)
        assert [row[:2] for row in _leases(tmp_path)] == [(lease.id, os.getpid())]
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)


WAIT = """
import sys
from pathlib import Path
from runner.limiter import Limiter
Limiter(Path(sys.argv[1])).acquire(1, 1, timeout=120)
"""


def test_a_queued_ticket_whose_pid_now_belongs_to_another_process_is_reclaimed(
    tmp_path: Path, limiter: Limiter
) -> None:
    mine = limiter.acquire(1, 1, timeout=20)  # the one slot: the other process must queue
    waiter = subprocess.Popen([sys.executable, "-c", WAIT, str(tmp_path)])
    deadline = time.monotonic() + 60
    while not _waiters(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.02)
    [(ticket, pid)] = _waiters(tmp_path)
    assert pid == waiter.pid
    waiter.send_signal(signal.SIGKILL)
    waiter.wait(10)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        with sqlite3.connect(tmp_path / "limiter.db") as conn:
            conn.execute("UPDATE waiters SET pid = ? WHERE id = ?", (stranger.pid, ticket))
        limiter.release(mine)
        # Queued behind the dead one's ticket, this would wait until it went stale (30 s).
        limiter.acquire(1, 1, timeout=5)
    finally:
        stranger.kill()
        stranger.wait(10)
    assert _waiters(tmp_path) == []


def _waiters(state: Path) -> list[tuple]:
    with sqlite3.connect(state / "limiter.db") as conn:
        return conn.execute("SELECT id, pid FROM waiters").fetchall()
