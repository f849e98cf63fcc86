"""Liveness across hosts: a process that holds reservations heartbeats, so that another host
sharing the database (PostgreSQL) can tell a dead holder from a live one. Pids mean nothing
across hosts; on its own host a process is still judged by pid + start time (statedb).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from ledger.errors import LedgerStoreError
from ledger.store import Store
from statedb import iso, process_alive

__all__ = ["BEAT_TIMEOUT", "Heartbeat", "dead_owners"]

log = logging.getLogger(__name__)

BEAT_TIMEOUT = 60.0  # seconds: another host's holder silent this long is taken as dead
KEEP = timedelta(days=1)  # beats of processes gone this long are dropped

Owner = tuple[int, str | None, str]


class Heartbeat:
    """A daemon thread (one per process) refreshing this process's row in `beats`."""

    def __init__(
        self, store: Store, me: Callable[[], Owner], now: Callable[[], datetime], timeout: float
    ) -> None:
        self._store, self._me, self._now, self.timeout = store, me, now, timeout
        self._beating = -1
        self._stop = threading.Event()

    def start(self) -> None:
        """Beat now and every timeout/4 seconds from here on (once per process)."""
        if self._beating == os.getpid():
            return
        self._beating = os.getpid()
        self._stop = threading.Event()
        self.beat()
        threading.Thread(target=self._loop, name="ledger-heartbeat", daemon=True).start()

    def stop(self) -> None:
        self._beating = -1
        self._stop.set()

    def beat(self) -> None:
        pid, start, host = self._me()
        now = self._now()
        with self._store.write() as conn:
            conn.execute(
                "INSERT INTO beats (pid, pid_start, host, beat_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(pid, host) DO UPDATE SET pid_start = excluded.pid_start,"
                " beat_at = excluded.beat_at",
                (pid, start, host, iso(now)),
            )
            conn.execute("DELETE FROM beats WHERE beat_at < ?", (iso(now - KEEP),))

    def _loop(self) -> None:
        pid, stop = os.getpid(), self._stop
        while not stop.wait(self.timeout / 4) and self._beating == pid:
            try:
                self.beat()
            except LedgerStoreError as exc:  # the next beat tries again
                log.warning("ledger heartbeat failed: %s", exc)


def dead_owners(conn: Any, owners: Iterable[Owner], now: datetime, timeout: float) -> list[Owner]:
    """The owners that are dead: by pid on this host; by a heartbeat older than `timeout` on
    another (an owner of another host with no heartbeat at all is taken as alive)."""
    beats = {
        (pid, host): at for pid, host, at in conn.execute("SELECT pid, host, beat_at FROM beats")
    }
    cutoff = iso(now - timedelta(seconds=timeout))
    dead = []
    for pid, start, host in owners:
        if not process_alive(pid, start, host) or beats.get((pid, host), cutoff) < cutoff:
            dead.append((pid, start, host))
    return dead
