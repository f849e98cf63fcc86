"""Cross-process admission control for one API account on one host.

Three token buckets like the platform's (requests, input tokens, output tokens: continuous refill
at limit/60 per second, capacity the per-minute limit) plus a cap on requests in flight, shared by
every process through limiter.db. See "Limiter" in DESIGN.md.

Pacing rules worth knowing:
- A fresh database starts with empty buckets, and refill that piles up while nobody asks is
  kept only up to what the next request to be served needs (plus `burst` seconds of refill,
  0 by default). The platform may enforce a minute's limit over shorter intervals, so a
  minute's worth is never spent as one burst: grants are spaced exactly limit/60 per second
  apart, no window of W seconds sees more than W * rpm / 60 requests, and token windows exceed
  W * limit / 60 by at most the one request whose need was waiting at the window's start.
- Limits: explicit configuration and the last `-limit` headers are both kept; the smaller one
  applies (never above what the server says, never above what the user asked for).
- settle() and release() of a lease that was already reclaimed change nothing: its holder was
  judged dead (or the lease older than `lease_max_age`), so the estimate stays charged.
- Across hosts (one PostgreSQL database), a pid is only checked on its own host: a process
  heartbeats its leases every `heartbeat_timeout / 4` seconds, and another host's lease whose
  heartbeat is older than `heartbeat_timeout` is reclaimed (every host must use the same value).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import RunnerError, RunnerInputError
from runner.limiter.health import Health, compute_health, status_document
from runner.limiter.store import LimiterStore, host_name, iso, me, parse_iso
from statedb import process_alive

__all__ = [
    "BUCKETS",
    "DEFAULT_LIMITS",
    "AcquireCancelled",
    "AcquireTimeout",
    "Health",
    "Lease",
    "Limiter",
    "Limits",
]

log = logging.getLogger(__name__)

#: bucket name -> the limit that sizes it
BUCKETS: dict[str, str] = {"requests": "rpm", "input_tokens": "itpm", "output_tokens": "otpm"}
_LIMIT_NAMES = ("rpm", "itpm", "otpm", "max_concurrent")
_HEADER_PREFIX = {
    "requests": "anthropic-ratelimit-requests-",
    "input_tokens": "anthropic-ratelimit-input-tokens-",
    "output_tokens": "anthropic-ratelimit-output-tokens-",
}

MAX_SLEEP = 0.25  # a waiter re-checks at least this often (freed slots, cooldowns, dead holders)
MIN_SLEEP = 0.001
SLOT_POLL = 0.02  # a freed in-flight slot has no predictable time, so poll for it
WAITER_STALE = 30.0  # a live waiter heartbeats every MAX_SLEEP; silence this long means gone
AGE_SWEEP = 0.1  # seconds between one process's sweeps for leases past lease_max_age
ALIVE_TTL = 0.5  # how long one process trusts "process P is alive" before asking the kernel again
HEARTBEAT_TIMEOUT = 60.0  # another host's lease silent this long is reclaimed
USAGE_TAU = 60.0  # time constant of the per-bucket usage rate behind health utilisation

_HOLDERS_SQL = (
    "SELECT pid, COALESCE(pid_start, '') FROM leases WHERE host = ? OR host IS NULL"
    " UNION SELECT pid, COALESCE(pid_start, '') FROM waiters"
    " WHERE host = ? OR host IS NULL"
)
_ACCOUNT_SQL = (
    "SELECT (SELECT count(*) FROM leases), (SELECT until_at FROM cooldowns WHERE id = 1),"
    " (SELECT effective FROM limits WHERE name = 'max_concurrent'), w.id,"
    " w.input_tokens, w.output_estimate FROM (SELECT 1) AS one LEFT JOIN"
    " (SELECT id, input_tokens, output_estimate FROM waiters ORDER BY id LIMIT 1) AS w"
    " ON 1 = 1"
)
_BUCKETS_SQL = "SELECT name, capacity, level, updated_at, usage_rate FROM buckets"


def _per_bucket(values: Mapping[str, float]) -> tuple[str, list[Any]]:
    """`CASE name WHEN ? THEN ? ... END` and its parameters: one UPDATE writes every bucket
    (on PostgreSQL each statement costs client time even when no round trip waits on it)."""
    args: list[Any] = [item for pair in values.items() for item in pair]
    return "CASE name" + " WHEN ? THEN ?" * len(values) + " END", args


@dataclass(frozen=True)
class Limits:
    """Per-minute limits and the in-flight cap; None means "not set here"."""

    rpm: int | None = None
    itpm: int | None = None
    otpm: int | None = None
    max_concurrent: int | None = None

    def __post_init__(self) -> None:
        for name in _LIMIT_NAMES:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise RunnerInputError(f"limit {name} must be a whole number, got {value!r}")
            if value <= 0:
                raise RunnerInputError(f"limit {name} must be positive, got {value}")


#: Used when neither configuration nor response headers give a limit: the platform's
#: lowest tier for a Sonnet-class model, so a new account is never overrun.
DEFAULT_LIMITS = Limits(rpm=50, itpm=30_000, otpm=8_000, max_concurrent=4)


@dataclass(frozen=True)
class Lease:
    """One granted request: its debit and when it was granted (time.time())."""

    id: int
    input_tokens: int
    output_estimate: int
    granted_at: float


class AcquireCancelled(RunnerError):
    """The caller's `cancelled()` turned true while it waited (the run is stopping)."""


class AcquireTimeout(RunnerError):
    """acquire() could not be granted within its timeout."""


def _effective(config: int | None, header: int | None, default: int) -> tuple[int, str]:
    if config is not None and (header is None or config <= header):
        return config, "config"
    if header is not None:
        return header, "headers"
    return default, "default"


class Limiter:
    """Token buckets and an in-flight cap shared by every process using the same state_dir."""

    def __init__(
        self,
        state_dir: Path,
        limits: Limits | None = None,
        *,
        lease_max_age: float = 900.0,
        burst: float = 0.0,
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
    ) -> None:
        """Open (creating if needed) the limiter state in `state_dir`.

        `limits`, when given, replaces the persisted configuration (None fields clear it).
        `burst` is how many seconds of refill may pile up while idle beyond what the next
        request needs: 0 paces strictly, 60 behaves like the platform's full bucket.
        """
        if lease_max_age <= 0:
            raise RunnerInputError(f"lease_max_age must be positive, got {lease_max_age}")
        if burst < 0:
            raise RunnerInputError(f"burst must be zero or positive, got {burst}")
        if heartbeat_timeout <= 0:
            raise RunnerInputError(f"heartbeat_timeout must be positive, got {heartbeat_timeout}")
        self.heartbeat_timeout = float(heartbeat_timeout)
        self._host = host_name()
        self._beating = -1  # the pid whose heartbeat thread runs
        self.burst = float(burst)
        self.state_dir = Path(state_dir)
        self.limits = limits
        self.lease_max_age = float(lease_max_age)
        self._store = LimiterStore(self.state_dir)
        self._alive_cache: dict[tuple[int, str], float] = {}
        self._next_age_sweep = 0.0
        with self._store.write() as (conn, now):
            self._init_rows(conn, now, limits)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "state_dir": self.state_dir,
            "lease_max_age": self.lease_max_age,
            "burst": self.burst,
            "heartbeat_timeout": self.heartbeat_timeout,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        # The configuration is already persisted; the new process only needs its own connection.
        self.state_dir = state["state_dir"]
        self.limits = None
        self.lease_max_age = state["lease_max_age"]
        self.burst = state["burst"]
        self.heartbeat_timeout = state.get("heartbeat_timeout", HEARTBEAT_TIMEOUT)
        self._host = host_name()
        self._beating = -1
        self._store = LimiterStore(self.state_dir)
        self._alive_cache = {}
        self._next_age_sweep = 0.0

    # -- limits -------------------------------------------------------------------------------

    def _init_rows(self, conn: Any, now: float, limits: Limits | None) -> None:
        stamp = iso(now)
        for name in _LIMIT_NAMES:
            default = getattr(DEFAULT_LIMITS, name)
            conn.execute(
                "INSERT OR IGNORE INTO limits (name, effective, source) VALUES (?, ?, 'default')",
                (name, default),
            )
            if limits is not None:
                conn.execute(
                    "UPDATE limits SET config_value = ?, config_at = ? WHERE name = ?",
                    (getattr(limits, name), stamp, name),
                )
        # A new bucket behaves as one left idle for a minute: the first request goes at once
        # (its need is refilled), and strict pacing holds from there on.
        idle_since = iso(now - 60.0)
        for bucket in BUCKETS:
            conn.execute(
                "INSERT OR IGNORE INTO buckets (name, capacity, level, updated_at)"
                " VALUES (?, 1, 0, ?)",
                (bucket, idle_since),
            )
        conn.execute("INSERT OR IGNORE INTO cooldowns (id) VALUES (1)")
        self._recompute_limits(conn, now)

    def _recompute_limits(self, conn: Any, now: float) -> None:
        rows = conn.execute("SELECT name, config_value, header_value FROM limits").fetchall()
        eff = {}
        for name, config, header in rows:
            value, source = _effective(config, header, getattr(DEFAULT_LIMITS, name))
            eff[name] = value
            conn.execute(
                "UPDATE limits SET effective = ?, source = ? WHERE name = ?", (value, source, name)
            )
        # No refill here: a new limit must not turn idle time into a burst.
        conn.executemany(
            "UPDATE buckets SET capacity = ?1, level = min(level, ?1) WHERE name = ?2",
            [(float(eff[limit]), bucket) for bucket, limit in BUCKETS.items()],
        )

    # -- buckets ------------------------------------------------------------------------------

    def _buckets(
        self, conn: Any, now: float, need: Mapping[str, float] | None, rows: Any = None
    ) -> dict[str, list[float]]:
        """bucket -> [capacity, level now, usage rate now], refilled lazily to `now` (from
        `rows` of _BUCKETS_SQL when the caller read them already).

        Refill stops at what the next request to be served (`need`) uses, plus the burst
        allowance (see module doc); `need=None` shows the credit up to capacity.
        """
        out = {}
        if rows is None:
            rows = conn.execute(_BUCKETS_SQL).fetchall()
        for name, capacity, level, updated_at, rate in rows:
            elapsed = max(0.0, now - parse_iso(updated_at))
            ceiling = capacity
            if need is not None:
                ceiling = min(capacity, max(need[name], self.burst * capacity / 60.0))
            if level < ceiling:
                level = min(ceiling, level + elapsed * capacity / 60.0)
            out[name] = [capacity, level, rate * math.exp(-elapsed / USAGE_TAU)]
        return out

    def _write_buckets(
        self, conn: Any, now: float, state: dict[str, list[float]], debit: Mapping[str, float]
    ) -> None:
        stamp = iso(now)
        levels, rates = {}, {}
        for name, (capacity, level, rate) in state.items():
            amount = debit.get(name, 0.0)
            levels[name] = min(capacity, level - amount)
            rates[name] = max(0.0, rate + amount / USAGE_TAU)
        level_sql, level_args = _per_bucket(levels)
        rate_sql, rate_args = _per_bucket(rates)
        conn.execute(
            f"UPDATE buckets SET level = {level_sql}, updated_at = ?, usage_rate = {rate_sql}"
            f" WHERE name IN ({', '.join('?' * len(levels))})",
            (*level_args, stamp, *rate_args, *levels),
        )

    # -- reclaim ------------------------------------------------------------------------------

    def _reclaim(self, conn: Any, now: float, holders: Any) -> bool:
        """Drop the leases and tickets of dead processes, and rows past their age limits;
        True when anything may have gone.

        `holders` are the rows of _HOLDERS_SQL. A holder of this host is its pid + start time
        (a recycled pid is another process), asked of statedb's one liveness check; rows from
        before the start time was recorded have ''. Another host's lease is judged by its
        heartbeat.
        """
        mine, mono = me(), time.monotonic()
        myself = (mine.pid, mine.start or "")
        dead = []
        for pid, start in holders:
            owner = (pid, start)
            if owner == myself or self._alive_cache.get(owner, 0.0) > mono:
                continue
            if process_alive(pid, start or None, self._host):
                self._alive_cache[owner] = mono + ALIVE_TTL
            else:
                dead.append((pid, start, self._host))
        if dead:
            log.info("reclaiming leases and tickets of dead processes %s", [d[0] for d in dead])
            for table in ("leases", "waiters"):
                conn.executemany(
                    f"DELETE FROM {table} WHERE pid = ? AND COALESCE(pid_start, '') = ?"
                    " AND (host = ? OR host IS NULL)",
                    dead,
                )
        if mono >= self._next_age_sweep:  # ages change slowly; no need to look on every grant
            self._next_age_sweep = mono + AGE_SWEEP
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
                    (self._host, mono - max_age, self._host, iso(now - max_age)),
                )
            conn.execute(
                "DELETE FROM leases WHERE host != ? AND beat_at < ?",
                (self._host, iso(now - self.heartbeat_timeout)),
            )
            return True
        return bool(dead)

    # -- acquire ------------------------------------------------------------------------------

    def acquire(
        self,
        input_tokens: int,
        output_estimate: int,
        timeout: float | None = None,
        *,
        cancelled: Callable[[], bool] | None = None,
    ) -> Lease:
        """Debit one request, its input tokens, its output estimate and an in-flight slot, or wait.

        All or nothing, in arrival order across processes. Raises RunnerInputError when the
        request exceeds a bucket's capacity (it could never be granted), AcquireTimeout
        when `timeout` seconds pass first, and AcquireCancelled when `cancelled()` turns true
        while waiting (checked on every wake-up, so a stopping run does not wait for a grant).
        """
        for label, value in (("input_tokens", input_tokens), ("output_estimate", output_estimate)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise RunnerInputError(f"{label} must be a non-negative integer, got {value!r}")
        if timeout is not None and timeout < 0:
            raise RunnerInputError(f"timeout must be non-negative, got {timeout}")
        need = {"requests": 1.0, "input_tokens": input_tokens, "output_tokens": output_estimate}
        deadline = None if timeout is None else time.monotonic() + timeout
        ticket: int | None = None
        try:
            while True:
                with self._store.locked() as conn:
                    reads = self._reads(conn, ticket)
                    now = self._store.clock(conn)  # one round trip on PG: lock, clock, reads
                    grant, ticket, wait = self._attempt(conn, now, need, ticket, reads)
                if grant is not None:
                    ticket = None
                    self._start_heartbeat()
                    cursor, granted_at = grant  # the lease's id, read once committed
                    return Lease(
                        cursor.lastrowid,
                        int(need["input_tokens"]),
                        int(need["output_tokens"]),
                        granted_at,
                    )
                if cancelled is not None and cancelled():
                    raise AcquireCancelled("stopped while waiting for the limiter")
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise AcquireTimeout(
                            f"no grant for {input_tokens} input + {output_estimate} output "
                            f"tokens within {timeout:g} s"
                        )
                    wait = min(wait, remaining)
                time.sleep(min(MAX_SLEEP, max(MIN_SLEEP, wait)))
        finally:
            if ticket is not None:
                with self._store.write() as (conn, _now):
                    conn.execute("DELETE FROM waiters WHERE id = ?", (ticket,))

    def _reads(self, conn: Any, ticket: int | None) -> list[Any]:
        """Issue what an attempt reads (holders, account, buckets, the ticket) before using
        any of it: on PostgreSQL they travel together, in the lock's round trip."""
        return [
            conn.execute(_HOLDERS_SQL, (self._host, self._host)),
            *self._account_reads(conn, ticket),
        ]

    def _account_reads(self, conn: Any, ticket: int | None) -> list[Any]:
        reads = [conn.execute(_ACCOUNT_SQL), conn.execute(_BUCKETS_SQL)]
        if ticket is not None:
            reads.append(conn.execute("SELECT 1 FROM waiters WHERE id = ?", (ticket,)))
        return reads

    def _attempt(
        self, conn: Any, now: float, need: dict[str, float], ticket: int | None, reads: list[Any]
    ) -> tuple[tuple[Any, float] | None, int | None, float]:
        """One locked look at the account: grant (the lease's INSERT cursor and its time), or
        enqueue and say how long to sleep."""
        rows = [read.fetchall() for read in reads]  # every statement done before any write
        if self._reclaim(conn, now, rows[0]):
            # Something may have been deleted: read the account again, after the deletes.
            rows[1:] = [read.fetchall() for read in self._account_reads(conn, ticket)]
        in_flight, until_at, max_concurrent, *oldest = rows[1][0]
        head = None if oldest[0] is None else tuple(oldest)
        served = need if head is None else dict(zip(need, (1.0, head[1], head[2]), strict=True))
        state = self._buckets(conn, now, served, rows[2])
        for bucket, amount in need.items():
            capacity = state[bucket][0]
            if amount > capacity:
                raise RunnerInputError(self._too_big(conn, bucket, int(amount), capacity))
        if ticket is not None and not rows[3]:
            ticket = None  # dropped as stale (this process was suspended): queue again
        first = (head is None and ticket is None) or (head is not None and head[0] == ticket)
        cooldown = parse_iso(until_at) - now if until_at else 0.0
        deficit = max((need[b] - state[b][1]) * 60.0 / state[b][0] for b in need)
        if first and cooldown <= 0 and deficit <= 0 and in_flight < max_concurrent:
            self._write_buckets(conn, now, state, need)
            inserted = conn.execute(
                "INSERT INTO leases (pid, pid_start, host, input_tokens, output_estimate,"
                " granted_at, beat_at, granted_mono) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    os.getpid(),
                    me().start,
                    self._host,
                    int(need["input_tokens"]),
                    int(need["output_tokens"]),
                    iso(now),
                    iso(now),
                    time.monotonic(),
                ),
            )
            if ticket is not None:
                conn.execute("DELETE FROM waiters WHERE id = ?", (ticket,))
            return (inserted, now), None, 0.0
        stamp = iso(now)
        if ticket is None:
            ticket = conn.execute(
                "INSERT INTO waiters (pid, pid_start, host, input_tokens, output_estimate,"
                " created_at, seen_at, seen_mono) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    os.getpid(),
                    me().start,
                    self._host,
                    int(need["input_tokens"]),
                    int(need["output_tokens"]),
                    stamp,
                    stamp,
                    time.monotonic(),
                ),
            ).lastrowid
            if head is None:
                first = True
        else:
            conn.execute(
                "UPDATE waiters SET seen_at = ?, seen_mono = ? WHERE id = ?",
                (stamp, time.monotonic(), ticket),
            )
        position = 1
        if not first:
            # Sleep until everything queued up to and including this ticket has refilled.
            ahead = conn.execute(
                "SELECT count(*), sum(input_tokens), sum(output_estimate) FROM waiters"
                " WHERE id <= ?",
                (ticket,),
            ).fetchone()
            position = ahead[0]
            total = dict(zip(need, ahead, strict=True))
            deficit = max((total[b] - state[b][1]) * 60.0 / state[b][0] for b in need)
        wait = max(cooldown, deficit, 0.0)
        if wait <= 0 and (in_flight >= max_concurrent or not first):
            # Only a settle frees a slot and its time is unknown; later waiters check less often.
            wait = SLOT_POLL * position
        return None, ticket, wait

    def _start_heartbeat(self) -> None:
        """Once per process: a daemon thread that refreshes this process's leases' heartbeat."""
        if self._beating == os.getpid():
            return
        self._beating = os.getpid()
        threading.Thread(target=self._heartbeat, name="limiter-heartbeat", daemon=True).start()

    def _heartbeat(self) -> None:
        pid = os.getpid()
        while self._beating == pid:
            time.sleep(self.heartbeat_timeout / 4)
            try:
                with self._store.write() as (conn, now):
                    conn.execute(
                        "UPDATE leases SET beat_at = ? WHERE pid = ? AND host = ?",
                        (iso(now), pid, self._host),
                    )
            except RunnerError as exc:  # the next beat tries again; a lost one costs nothing
                log.warning("limiter heartbeat failed: %s", exc)

    def _too_big(self, conn: Any, bucket: str, amount: int, capacity: float) -> str:
        limit = BUCKETS[bucket]
        source = conn.execute("SELECT source FROM limits WHERE name = ?", (limit,)).fetchone()[0]
        what = {"requests": "requests", "input_tokens": "input", "output_tokens": "output"}[bucket]
        return (
            f"{what} estimate of {amount} tokens exceeds the {limit} limit of {int(capacity)} per "
            f"minute (from {source}); it could never be granted"
        )

    # -- settle, release, penalize, observe ----------------------------------------------------

    def settle(self, lease: Lease, usage: Mapping[str, Any]) -> None:
        """Correct the token buckets to the usage the API returned and free the slot.

        Input counts uncached input plus cache writes (cache reads do not count toward ITPM).
        A lease already reclaimed (its holder judged dead or too old) is left as charged.
        """
        actual_in = int(usage.get("input_tokens") or 0) + int(
            usage.get("cache_creation_input_tokens") or 0
        )
        actual_out = int(usage.get("output_tokens") or 0)
        correction = {
            "input_tokens": float(actual_in - lease.input_tokens),
            "output_tokens": float(actual_out - lease.output_estimate),
        }
        self._finish(lease, correction)

    def release(self, lease: Lease) -> None:
        """Free the slot and refund the whole debit: nothing was sent."""
        refund = {
            "requests": -1.0,
            "input_tokens": -float(lease.input_tokens),
            "output_tokens": -float(lease.output_estimate),
        }
        self._finish(lease, refund)

    def _finish(self, lease: Lease, debit: Mapping[str, float]) -> None:
        # No result is read, so on PostgreSQL the whole transaction is one round trip: the
        # adjustment applies only while the lease is still there, and then the lease goes.
        held = (lease.id, iso(lease.granted_at))
        with self._store.locked(maintenance=True) as conn:
            amount_sql, amount_args = _per_bucket(debit)
            rate_sql, rate_args = _per_bucket({n: a / USAGE_TAU for n, a in debit.items()})
            conn.execute(
                f"UPDATE buckets SET level = min(capacity, level - {amount_sql}),"
                f" usage_rate = max(0, usage_rate + {rate_sql})"
                f" WHERE name IN ({', '.join('?' * len(debit))})"
                " AND EXISTS (SELECT 1 FROM leases WHERE id = ? AND granted_at = ?)",
                (*amount_args, *rate_args, *debit, *held),
            )
            conn.execute("DELETE FROM leases WHERE id = ? AND granted_at = ?", held)

    def penalize(self, retry_after: float, limit: str | None = None) -> None:
        """After a 429: pause admission for every process until now + retry_after, and empty
        the bucket that was exceeded ("requests", "input_tokens", "output_tokens" or None)."""
        if limit is not None and limit not in BUCKETS:
            raise RunnerInputError(f"unknown limit {limit!r}; expected one of {', '.join(BUCKETS)}")
        retry_after = max(0.0, float(retry_after))
        with self._store.write() as (conn, now):
            until = now + retry_after
            (current,) = conn.execute("SELECT until_at FROM cooldowns WHERE id = 1").fetchone()
            if current is None or parse_iso(current) < until:
                conn.execute(
                    "UPDATE cooldowns SET until_at = ?, limit_name = ?, set_at = ? WHERE id = 1",
                    (iso(until), limit, iso(now)),
                )
            if limit is not None:
                conn.execute(
                    "UPDATE buckets SET level = min(level, 0), updated_at = ? WHERE name = ?",
                    (iso(now), limit),
                )

    def observe(self, headers: Mapping[str, str]) -> None:
        """Learn limits from `anthropic-ratelimit-*-limit` headers and clamp local levels down
        to the server's `-remaining` (another client may share the account)."""
        lower = {str(k).lower(): v for k, v in headers.items()}
        limits: dict[str, int] = {}
        remaining: dict[str, int] = {}
        for bucket, prefix in _HEADER_PREFIX.items():
            for suffix, into in (("limit", limits), ("remaining", remaining)):
                raw = lower.get(prefix + suffix)
                try:
                    value = int(str(raw).strip()) if raw is not None else None
                except ValueError:
                    value = None
                if value is not None and (value > 0 or suffix == "remaining") and value >= 0:
                    into[bucket] = value
        if not limits and not remaining:
            return
        with self._store.write() as (conn, now):
            changed = False
            for bucket, value in limits.items():
                changed |= bool(
                    conn.execute(
                        "UPDATE limits SET header_value = ?, header_at = ?"
                        " WHERE name = ? AND header_value IS NOT ?",
                        (value, iso(now), BUCKETS[bucket], value),
                    ).rowcount
                )
            if changed:
                self._recompute_limits(conn, now)
            state = self._buckets(conn, now, None)
            for bucket, value in remaining.items():
                if state[bucket][1] > value:
                    conn.execute(
                        "UPDATE buckets SET level = ?, updated_at = ? WHERE name = ?",
                        (float(value), iso(now), bucket),
                    )

    # -- health and status ---------------------------------------------------------------------

    def record(self, *, status: int, latency: float | None) -> None:
        """Add a health sample for one response (200, 429, 529, 5xx...); keeps the last hour."""
        with self._store.write(maintenance=True) as (conn, now):
            conn.execute(
                "INSERT INTO samples (at, status, latency) VALUES (?, ?, ?)",
                (iso(now), int(status), None if latency is None else float(latency)),
            )
            conn.execute("DELETE FROM samples WHERE at < ?", (iso(now - 3600.0),))

    def health(self) -> Health:
        """Whether more concurrency can help now: recent 429s/529s, utilisation, latency."""
        with self._store.read() as (conn, now):
            return compute_health(conn, now, self._buckets(conn, now, None))

    def limits_in_force(self) -> dict[str, int]:
        """Each limit's value now (rpm, itpm, otpm, max_concurrent), whatever its source."""
        with self._store.read() as (conn, _):
            return {
                name: int(value)
                for name, value in conn.execute("SELECT name, effective FROM limits")
            }

    def status(self) -> dict[str, Any]:
        """The `limits status --json` document (see runner/limiter/health.status_document)."""
        with self._store.read() as (conn, now):
            return status_document(conn, now, self._buckets(conn, now, None))

    def close(self) -> None:
        """Close this process's database connection; the Limiter reopens it if used again."""
        self._beating = -1
        self._store.close()
