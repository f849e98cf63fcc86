"""Reclaim of limiter.db's leases and tickets whose holders are gone, and of rows past their
age limits, for one Limiter in one process.

A holder of this host is its pid + start time (a recycled pid is another process), asked of
statedb's one liveness check; rows from before the start time was recorded have ''. Another
host's lease is judged by its heartbeat, and a row of any host by its age.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from runner.limiter.store import iso, me
from statedb import process_alive

__all__ = ["AGE_SWEEP", "ALIVE_TTL", "WAITER_STALE", "Reclaim"]

log = logging.getLogger(__name__)

WAITER_STALE = 30.0  # a live waiter heartbeats every MAX_SLEEP; silence this long means gone
AGE_SWEEP = 0.1  # seconds between one process's sweeps for leases past lease_max_age
ALIVE_TTL = 0.5  # how long one process trusts "process P is alive" before asking the kernel again

_OWNERS = (
    "SELECT pid, COALESCE(pid_start, '') FROM leases WHERE host = ? OR host IS NULL"
    " UNION SELECT pid, COALESCE(pid_start, '') FROM waiters WHERE host = ? OR host IS NULL"
)


class Reclaim:
    """What one process knows of the holders of this host, and when it last swept."""

    def __init__(self, host: str, lease_max_age: float, heartbeat_timeout: float) -> None:
        self.host = host
        self.lease_max_age = lease_max_age
        self.heartbeat_timeout = heartbeat_timeout
        self.alive_cache: dict[tuple[int, str], float] = {}
        self.next_sweep = 0.0
        self.db_now: float | None = None  # the database clock of this process's last attempt
        self.owners: list[Any] = []  # this host's holders, as the last attempt read them
        self.dead: list[tuple[int, str, str]] = []  # holders found dead, for the next attempt

    def queue(self, conn: Any) -> Any:
        """Queue the deletes of the rows of dead holders (found after the last attempt) and,
        every AGE_SWEEP seconds, of rows past their age limits, and the look-up of this host's
        holders (for find_dead); returns its cursor, else None.

        None needs a result before the attempt's own reads, so on PostgreSQL they share the
        lock's round trip. A dead holder is found at most AGE_SWEEP, and deleted one attempt,
        later than a look on every attempt would (a live one is trusted ALIVE_TTL anyway).
        Other hosts' rows age by the database clock last read (`db_now`, this process's last
        attempt): a cutoff a little in the past reclaims a little late, never early.
        """
        dead, self.dead = self.dead, []
        if dead:
            log.info("reclaiming leases and tickets of dead processes %s", [d[0] for d in dead])
            for table in ("leases", "waiters"):
                conn.executemany(
                    f"DELETE FROM {table} WHERE pid = ? AND COALESCE(pid_start, '') = ?"
                    " AND (host = ? OR host IS NULL)",
                    dead,
                )
        mono = time.monotonic()
        if mono < self.next_sweep or self.db_now is None:
            return None  # ages change slowly; no need to look on every grant
        self.next_sweep = mono + AGE_SWEEP
        now = self.db_now
        # A row of this host ages by the monotonic clock (system-wide, so every process of
        # the host shares it; a wall-clock step neither frees nor keeps a lease); other
        # hosts' clocks cannot be compared, so theirs (and rows without one) by wall clock.
        for table, stem, max_age in (
            ("leases", "granted", self.lease_max_age),
            ("waiters", "seen", WAITER_STALE),
        ):
            conn.execute(
                f"DELETE FROM {table} WHERE (host = ? AND {stem}_mono < ?) OR ((host IS NULL"
                f" OR host <> ? OR {stem}_mono IS NULL) AND {stem}_at < ?)",
                (self.host, mono - max_age, self.host, iso(now - max_age)),
            )
        conn.execute(
            "DELETE FROM leases WHERE host != ? AND beat_at < ?",
            (self.host, iso(now - self.heartbeat_timeout)),
        )
        return conn.execute(_OWNERS, (self.host, self.host))

    def find_dead(self) -> None:
        """Note this host's dead holders among those the last attempt read, for the next
        attempt to delete; run outside the store lock (a liveness check may ask the kernel)."""
        owners: Sequence[Any]
        owners, self.owners = self.owners, []
        mine, mono = me(), time.monotonic()
        myself = (mine.pid, mine.start or "")
        for pid, start in owners:
            owner = (pid, start)
            if owner == myself or self.alive_cache.get(owner, 0.0) > mono:
                continue
            if process_alive(pid, start or None, self.host):
                self.alive_cache[owner] = mono + ALIVE_TTL
            else:
                self.dead.append((pid, start, self.host))
