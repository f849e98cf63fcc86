"""Cross-process admission control for one API account on one host.

Three token buckets like the platform's (requests, input tokens, output tokens: continuous refill
at limit/60 per second, capacity the per-minute limit) plus a cap on requests in flight, shared by
every process through limiter.db. See "Limiter" in DESIGN.md.

Pacing rules worth knowing:
- Scopes: buckets and learned limits are kept per API base URL and model class (see
  runner/modelclass.py), so that models with separate limits are paced separately. The scope ''
  is the unscoped limiter (no model given). The in-flight cap and the cooldown are shared.
- Two pacing modes per account (API base URL), remembered in limiter.db. "burst" (the start):
  idle refill piles up to the bucket's capacity (or `burst` seconds of refill when that cap is
  given), and a server `-remaining` above our level raises it, as the platform's own buckets
  allow. "strict": refill piles up only to what the next request to be served needs, and the
  server's `-remaining` only ever lowers a level; grants are then spaced exactly limit/60 per
  second apart, as a minute's limit enforced over shorter intervals requires. The first 429 that
  arrives while the last `-remaining` headers (refilled at our share to when the request was
  granted, less the grants made in between) said there was room, or whose own headers show the
  bucket full again within half a minute (a bucket far smaller than its limit), switches the
  account to strict for good (`limits status` shows it). A `burst`
  of 0 is strict whatever the mode. In both modes a server `-remaining` below our level lowers it
  (another client of the same key spends from the same buckets).
- Limits: explicit configuration and the last `-limit` headers are both kept; the smaller one
  applies (never above what the server says, never above what the user asked for). A built-in
  default is a pacing assumption only: a request larger than a default bucket is granted alone,
  once the bucket is full and nothing else of its scope is in flight, so that its response
  headers teach the real limit; only a configured or learned limit makes acquire() refuse.
  The first request of a scope never seen before is also sent alone, for the same reason.
- A response's `-remaining` was counted when its request arrived: observe(lease=...) brings it
  forward by the refill since and past the grants made after it. Each bucket keeps the share
  of its nominal refill that is ours (another client of the key spends the rest): lowered by a
  429 that does not switch the pacing and by a server view behind ours beyond its rounding,
  creeping back with each response that agrees. Strict pacing debits a little slack per
  request (STRICT_SLACK) so that jitter at the edge of a short-interval server draws no 429s. A grant needs only one token of output room (the platform counts output as
  it is generated); the output estimate is still debited up front and settled later.
- A run without configured limits (`Limits()`) leaves the configuration of another live
  process in place: it never lowers what a running nightly set.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from runner.errors import RunnerError, RunnerInputError
from runner.limiter.bucket_rows import ATTEMPT_ROWS, BUCKET_ROWS, USAGE_TAU, adjust, write_buckets
from runner.limiter.health import Health, compute_health, status_document
from runner.limiter.reclaim import Reclaim
from runner.limiter.scopes import (
    account_of,
    account_of_scope,
    class_of_scope,
    scope_of,
)
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
    "TooLarge",
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
STRICT_SLACK = 0.02  # strict pacing debits 2% more per request and input (see _with_slack)
SHARE_AFTER_429 = 0.9  # a 429 under strict pacing that the headers did not foresee: refill less
SHARE_RECOVERY = 0.0005  # per response that agrees with us, so that a quiet key is used again
MIN_SHARE = 0.2  # the least of a bucket's refill assumed ours however busy the key's other clients
HEARTBEAT_TIMEOUT = 60.0  # another host's lease silent this long is reclaimed


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
    scope: str = ""  # whose buckets it drew on (see runner/limiter/scopes.py)
    # Each bucket's running total of grants just after this one (see observe()).
    marks: tuple[tuple[str, float], ...] = ()


class AcquireCancelled(RunnerError):
    """The caller's `cancelled()` turned true while it waited (the run is stopping)."""


class AcquireTimeout(RunnerError):
    """acquire() could not be granted within its timeout."""


class TooLarge(RunnerInputError):
    """A request larger than a configured or learned limit: it could never be granted."""


STRICT = "strict"
BURST = "burst"
_WHAT = {"requests": "requests", "input_tokens": "input", "output_tokens": "output"}


def _effective(config: int | None, header: int | None, default: int) -> tuple[int, str]:
    if config is not None and (header is None or config <= header):
        return config, "config"
    if header is not None:
        return header, "headers"
    return default, "default"


def _origin(source: str, scope: str) -> str:
    if source == "config":
        return "configured in [limits] or on the command line"
    where = f" for {class_of_scope(scope)} at {account_of_scope(scope)}" if scope else ""
    return f"learned from the API's rate-limit headers{where}"


class Limiter:
    """Token buckets and an in-flight cap shared by every process using the same state_dir."""

    def __init__(
        self,
        state_dir: Path,
        limits: Limits | None = None,
        *,
        lease_max_age: float = 900.0,
        burst: float | None = 0.0,
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
        base_url: str | None = None,
        readonly: bool = False,
    ) -> None:
        """Open (creating if needed) the limiter state in `state_dir`.

        `limits`, when given, replaces the persisted configuration; `Limits()` (nothing set)
        clears it only if no other live process configured it. `burst` caps how many seconds of
        refill may be spent at once: 0 paces strictly, None leaves it to the account's pacing
        mode (a full bucket while the account tolerates bursts). `base_url` names the account
        of scoped calls (None: ANTHROPIC_BASE_URL or the platform). `readonly` writes nothing,
        not even a new file: for `plan`.
        """
        if lease_max_age <= 0:
            raise RunnerInputError(f"lease_max_age must be positive, got {lease_max_age}")
        if burst is not None and burst < 0:
            raise RunnerInputError(f"burst must be zero or positive, got {burst}")
        if heartbeat_timeout <= 0:
            raise RunnerInputError(f"heartbeat_timeout must be positive, got {heartbeat_timeout}")
        self.heartbeat_timeout = float(heartbeat_timeout)
        self._host = host_name()
        self._beating = -1  # the pid whose heartbeat thread runs
        self.burst = None if burst is None else float(burst)
        self.state_dir = Path(state_dir)
        self.limits = limits
        self.lease_max_age = float(lease_max_age)
        self.account = account_of(base_url)
        self.readonly = readonly
        self._store = LimiterStore(self.state_dir)
        self._reclaim = Reclaim(self._host, self.lease_max_age, self.heartbeat_timeout)
        self._ensured: set[str] = set()
        if not readonly:
            with self._store.write() as (conn, now):
                self._init_rows(conn, now, limits)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "state_dir": self.state_dir,
            "lease_max_age": self.lease_max_age,
            "burst": self.burst,
            "account": self.account,
            "heartbeat_timeout": self.heartbeat_timeout,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        # The configuration is already persisted; the new process only needs its own connection.
        self.state_dir = state["state_dir"]
        self.limits = None
        self.lease_max_age = state["lease_max_age"]
        self.burst = state["burst"]
        self.account = state["account"]
        self.readonly = False
        self.heartbeat_timeout = state.get("heartbeat_timeout", HEARTBEAT_TIMEOUT)
        self._host = host_name()
        self._beating = -1
        self._store = LimiterStore(self.state_dir)
        self._reclaim = Reclaim(self._host, self.lease_max_age, self.heartbeat_timeout)
        self._ensured = set()

    def scope(self, model: str | None) -> str:
        """The scope of `model`'s requests through this limiter ('' for None)."""
        return scope_of(self.account, model)

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
            self._configure(conn, stamp, limits)
        self._ensure(conn, now, "")
        conn.execute("INSERT OR IGNORE INTO cooldowns (id) VALUES (1)")
        self._recompute_limits(conn, now)

    def _configure(self, conn: Any, stamp: str, limits: Limits) -> None:
        """Store `limits` as the configuration, owned by this process; see __init__."""
        values = [getattr(limits, name) for name in _LIMIT_NAMES]
        mine = me()
        if all(v is None for v in values):
            owner = conn.execute(
                "SELECT config_pid, config_start, config_host FROM limits"
                " WHERE config_value IS NOT NULL AND config_pid IS NOT NULL LIMIT 1"
            ).fetchone()
            if owner is not None and tuple(owner) != tuple(mine) and process_alive(*owner):
                return  # another live run configured these: never lower them under it
        conn.executemany(
            "UPDATE limits SET config_value = ?, config_at = ?, config_pid = ?, config_start = ?,"
            " config_host = ? WHERE name = ?",
            [
                (value, stamp, mine.pid, mine.start, mine.host, name)
                for name, value in zip(_LIMIT_NAMES, values, strict=True)
            ],
        )

    def _ensure(self, conn: Any, now: float, scope: str) -> None:
        """Create `scope`'s buckets (and its row) the first time it is used."""
        if scope in self._ensured:
            return
        # A new bucket behaves as one left idle for a minute: it refills to what the pacing
        # mode allows (a full bucket while bursts are tolerated, one request's need if strict).
        idle_since = iso(now - 60.0)
        conn.executemany(
            "INSERT OR IGNORE INTO buckets (scope, name, capacity, level, updated_at)"
            " VALUES (?, ?, ?, 0, ?)",
            [
                (scope, bucket, float(value), idle_since)
                for bucket, (value, _source) in (
                    (b, self._scope_limits(conn, scope)[limit]) for b, limit in BUCKETS.items()
                )
            ],
        )
        if scope:
            conn.execute(
                "INSERT OR IGNORE INTO scopes (scope, account, model_class, first_seen)"
                " VALUES (?, ?, ?, ?)",
                (scope, account_of_scope(scope), class_of_scope(scope), iso(now)),
            )
        self._ensured.add(scope)

    def _config(self, conn: Any) -> dict[str, int | None]:
        return {
            name: value for name, value in conn.execute("SELECT name, config_value FROM limits")
        }

    def _scope_limits(
        self, conn: Any, scope: str, config: Mapping[str, int | None] | None = None
    ) -> dict[str, tuple[int, str]]:
        """name -> (value, source) of each limit in force for `scope`."""
        if config is None:
            config = self._config(conn)
        learned = dict(conn.execute("SELECT name, value FROM learned WHERE scope = ?", (scope,)))
        return {
            name: _effective(config.get(name), learned.get(name), getattr(DEFAULT_LIMITS, name))
            for name in _LIMIT_NAMES
        }

    def _recompute_limits(self, conn: Any, now: float) -> None:
        config = self._config(conn)
        for name, (value, source) in self._scope_limits(conn, "", config).items():
            conn.execute(
                "UPDATE limits SET effective = ?, source = ? WHERE name = ?", (value, source, name)
            )
        scopes = [row[0] for row in conn.execute("SELECT DISTINCT scope FROM buckets")]
        rows = []
        for scope in scopes:
            eff = self._scope_limits(conn, scope, config)
            rows += [(float(eff[limit][0]), scope, b) for b, limit in BUCKETS.items()]
        # No refill here: a new limit must not turn idle time into a burst.
        conn.executemany(
            "UPDATE buckets SET capacity = ?1, level = min(level, ?1) WHERE scope = ?2 AND name = ?3",
            rows,
        )

    def _strict(self, conn: Any, scope: str) -> bool:
        if self.burst == 0.0:
            return True
        row = conn.execute(
            "SELECT pacing FROM accounts WHERE account = ?", (account_of_scope(scope),)
        ).fetchone()
        return row is not None and row[0] == STRICT

    # -- buckets ------------------------------------------------------------------------------

    def _ceiling(self, capacity: float, need: float | None, strict: bool) -> float:
        """How far idle refill may pile up, given the next request's `need` (None: unknown)."""
        if strict:
            return capacity if need is None else min(capacity, need)
        if self.burst is None:
            return capacity
        allowance = self.burst * capacity / 60.0
        return min(capacity, allowance if need is None else max(need, allowance))

    def _buckets(
        self,
        conn: Any,
        now: float,
        need: Mapping[str, float] | None,
        scope: str = "",
        strict: bool | None = None,
    ) -> dict[str, list[float]]:
        """bucket -> [capacity, level now, usage rate now] of `scope`, refilled lazily to `now`.

        Refill stops where the pacing mode says (see module doc and _ceiling); `need=None`
        shows the credit up to capacity.
        """
        if strict is None:
            strict = self._strict(conn, scope)
        return self._refill(conn.execute(BUCKET_ROWS, (scope,)), now, need, strict)

    def _refill(
        self, rows: Any, now: float, need: Mapping[str, float] | None, strict: bool
    ) -> dict[str, list[float]]:
        """_buckets() of rows already read (starting with the columns of BUCKET_ROWS)."""
        out = {}
        for name, capacity, level, updated_at, rate, share, *_rest in rows:
            elapsed = max(0.0, now - parse_iso(updated_at))
            ceiling = capacity
            if need is not None:
                ceiling = self._ceiling(capacity, need[name], strict)
            if level < ceiling:
                level = min(ceiling, level + elapsed * share * capacity / 60.0)
            out[name] = [capacity, level, rate * math.exp(-elapsed / USAGE_TAU)]
        return out

    # -- acquire ------------------------------------------------------------------------------

    def acquire(
        self,
        input_tokens: int,
        output_estimate: int,
        timeout: float | None = None,
        *,
        model: str | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Lease:
        """Debit one request, its input tokens, its output estimate and an in-flight slot, or wait.

        All or nothing, in arrival order across processes, on the buckets of `model`'s scope.
        Raises TooLarge when the request exceeds a configured or learned limit (it could never
        be granted), AcquireTimeout when `timeout` seconds pass first, and AcquireCancelled when
        `cancelled()` turns true while waiting (checked on every wake-up, so a stopping run does
        not wait for a grant).
        """
        for label, value in (("input_tokens", input_tokens), ("output_estimate", output_estimate)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise RunnerInputError(f"{label} must be a non-negative integer, got {value!r}")
        if timeout is not None and timeout < 0:
            raise RunnerInputError(f"timeout must be non-negative, got {timeout}")
        need = {"requests": 1.0, "input_tokens": input_tokens, "output_tokens": output_estimate}
        scope = self.scope(model)
        deadline = None if timeout is None else time.monotonic() + timeout
        ticket: int | None = None
        try:
            while True:
                with self._store.locked() as conn:
                    grant, ticket, wait = self._attempt(conn, need, ticket, scope)
                self._reclaim.find_dead()
                if grant is not None:
                    ticket = None
                    self._start_heartbeat()
                    return grant()
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
                with self._store.locked() as conn:
                    conn.execute("DELETE FROM waiters WHERE id = ?", (ticket,))

    def _attempt(
        self, conn: Any, need: dict[str, float], ticket: int | None, scope: str
    ) -> tuple[Callable[[], Lease] | None, int | None, float]:
        """One locked look at the account: grant, or enqueue and say how long to sleep.

        A grant is returned as a function giving the Lease once the transaction has committed
        (its id comes back with the COMMIT). On PostgreSQL every result read while the store
        lock is held is a round trip that holds it, so a grant makes two: every read is issued
        before any result is used (they go out with the lock and the clock), and the writes go
        out with the COMMIT. Only a new scope, a request above a bucket's size and waiting add more.
        """
        reclaim = self._reclaim
        if scope not in self._ensured or reclaim.db_now is None:  # once per scope and process
            reclaim.db_now = self._store.clock(conn)
            self._ensure(conn, reclaim.db_now, scope)
        owners = reclaim.queue(conn)  # blind deletes first: they change the counts
        looked = conn.execute(ATTEMPT_ROWS, (scope, account_of_scope(scope)))
        queued = None
        if ticket is not None:
            queued = conn.execute("SELECT 1 FROM waiters WHERE id = ?", (ticket,))
        now = self._store.clock(conn)  # on PostgreSQL: sends everything above, one round trip
        reclaim.db_now = now
        if owners is not None:
            reclaim.owners = owners.fetchall()
        rows = looked.fetchall()
        in_flight, mine, until_at, max_concurrent, headers, pacing, *oldest = rows[0][7:]
        head = None if oldest[0] is None else tuple(oldest)
        # Idle refill piles up to the whole debit of the request served next (see _ceiling); a
        # grant needs only what _gate() says.
        served = need if head is None else dict(zip(need, (1.0, head[1], head[2]), strict=True))
        strict = self.burst == 0.0 or pacing == STRICT
        if strict:
            served = _with_slack(served)
        state = self._refill(rows, now, served, strict)
        # Alone: a request larger than a default bucket, or the first of a scope never seen,
        # goes with nothing else of its scope in flight, so that its headers teach the limits.
        alone = bool(scope) and headers is None
        for bucket, amount in need.items():
            capacity = state[bucket][0]
            if amount > capacity:
                value, source = self._scope_limits(conn, scope)[BUCKETS[bucket]]
                if source != "default":
                    raise TooLarge(self._too_big(bucket, int(amount), value, source, scope))
                alone = True
        if queued is not None and not queued.fetchone():
            ticket = None  # dropped as stale (this process was suspended): queue again
        first = (head is None and ticket is None) or (head is not None and head[0] == ticket)
        cooldown = parse_iso(until_at) - now if until_at else 0.0
        charge = _with_slack(need) if strict else need
        gate = _gate(charge)
        shares = {row[0]: row[5] for row in rows}
        rate = {b: state[b][0] * shares[b] / 60.0 for b in need}  # what refills for us
        deficit = max((min(gate[b], state[b][0]) - state[b][1]) / rate[b] for b in need)
        free = in_flight < max_concurrent and (not alone or mine == 0)
        if first and cooldown <= 0 and deficit <= 0 and free:
            write_buckets(conn, now, scope, state, charge)
            inserted = conn.execute(
                "INSERT INTO leases (pid, pid_start, host, input_tokens, output_estimate,"
                " granted_at, beat_at, granted_mono, scope) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    os.getpid(),
                    me().start,
                    self._host,
                    int(need["input_tokens"]),
                    int(need["output_tokens"]),
                    iso(now),
                    iso(now),
                    time.monotonic(),
                    scope,
                ),
            )
            if ticket is not None:
                conn.execute("DELETE FROM waiters WHERE id = ?", (ticket,))
            # Each bucket's running total of grants just after this one: the total read under
            # the lock plus this debit (only grants add to it, and they hold the lock).
            marks = tuple(sorted((row[0], row[6] + float(charge.get(row[0], 0.0))) for row in rows))

            def grant() -> Lease:
                return Lease(
                    inserted.lastrowid,
                    int(need["input_tokens"]),
                    int(need["output_tokens"]),
                    now,
                    scope,
                    marks,
                )

            return grant, None, 0.0
        stamp = iso(now)
        if ticket is None:
            ticket = conn.execute(
                "INSERT INTO waiters (pid, pid_start, host, input_tokens, output_estimate,"
                " created_at, seen_at, seen_mono, scope) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    os.getpid(),
                    me().start,
                    self._host,
                    int(need["input_tokens"]),
                    int(need["output_tokens"]),
                    stamp,
                    stamp,
                    time.monotonic(),
                    scope,
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
                " WHERE scope = ? AND id <= ?",
                (scope, ticket),
            ).fetchone()
            position = ahead[0]
            total = _gate(ahead)
            deficit = max((total[b] - state[b][1]) / rate[b] for b in need)
        wait = max(cooldown, deficit, 0.0)
        if wait <= 0 and (not free or not first):
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

    @staticmethod
    def _too_big(bucket: str, amount: int, value: int, source: str, scope: str) -> str:
        return (
            f"{_WHAT[bucket]} estimate of {amount:,} tokens exceeds the {BUCKETS[bucket]} limit "
            f"of {value:,} per minute ({_origin(source, scope)}); it could never be granted"
        )

    def refusal(self, model: str | None, input_tokens: int, output_estimate: int) -> str | None:
        """Why a request of this size would be refused by a configured or learned limit, if it
        would (a built-in default never refuses). Reads only."""
        need = {"requests": 1, "input_tokens": input_tokens, "output_tokens": output_estimate}
        limits = self.limits_with_sources(model)
        for bucket, amount in need.items():
            value, source = limits[BUCKETS[bucket]]
            if source != "default" and amount > value:
                return self._too_big(bucket, amount, value, source, self.scope(model))
        return None

    # -- settle, release, penalize, observe ----------------------------------------------------

    def settle(self, lease: Lease, usage: Mapping[str, Any]) -> None:
        """Correct the token buckets to the usage the API returned and free the slot.

        Input counts uncached input plus cache writes (cache reads do not count toward ITPM).
        A lease already reclaimed (its holder judged dead or too old) is left as charged.
        """
        actual_in = _input_of(usage)
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
        # No result is read and the clock is not asked: on PostgreSQL the lock, both
        # statements and the COMMIT go out together, so the store lock is held for their
        # execution on the server only, never across a round trip or this process's time.
        # (Without the store lock, transaction(exclusive=False), a settle would have to lock
        # its lease and its scope's bucket rows in order, and grants and observe() those rows
        # from their reads: two statements more per settle, and more CPU per pair on the
        # server, for a lock hold that is already this short; limiter_bench measured no gain.)
        with self._store.locked(maintenance=True) as conn:
            adjust(conn, lease.scope, debit, (lease.id, iso(lease.granted_at)))

    def penalize(
        self, retry_after: float, limit: str | None = None, *, model: str | None = None
    ) -> None:
        """After a 429: pause admission for every process until now + retry_after, and empty
        the bucket that was exceeded ("requests", "input_tokens", "output_tokens" or None)."""
        if limit is not None and limit not in BUCKETS:
            raise RunnerInputError(f"unknown limit {limit!r}; expected one of {', '.join(BUCKETS)}")
        retry_after = max(0.0, float(retry_after))
        scope = self.scope(model)
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
                    "UPDATE buckets SET level = min(level, 0), updated_at = ?"
                    " WHERE scope = ? AND name = ?",
                    (iso(now), scope, limit),
                )

    def rate_limited(
        self, lease: Lease, limit: str | None, headers: Mapping[str, str] | None = None
    ) -> bool:
        """Note a 429 on `lease`'s request, before its own headers are observed.

        If the server's last `-remaining` (refilled at our share of the limit's rate to when
        the lease was granted, less the grants made in between), or no headers at all, said
        there was room, or the 429's own headers show the bucket full again in under half a
        minute (a bucket much smaller than its limit: a short enforcement interval), the
        account does not tolerate our bursts: switch it to strict pacing, for good. Returns
        whether this call switched it.
        """
        needs = {
            "requests": 1.0,
            "input_tokens": float(lease.input_tokens),
            "output_tokens": float(lease.output_estimate),
        }
        bucket = limit if limit in BUCKETS else _short_bucket(headers or {}, needs)
        amount = needs[bucket]
        account = account_of_scope(lease.scope)
        with self._store.write() as (conn, now):
            row = conn.execute(
                "SELECT capacity, server_remaining, server_at, share FROM buckets"
                " WHERE scope = ? AND name = ?",
                (lease.scope, bucket),
            ).fetchone()
            room = True
            if row is not None and row[1] is not None:
                capacity, remaining, seen_at, share = row
                room = _had_room(
                    conn, lease, bucket, amount, (capacity, remaining, parse_iso(seen_at), share)
                )
            # A bucket that the 429's own headers show full again within a fraction of the
            # minute holds far less than the limit: the limit is enforced over a short interval.
            room = room or _refills_soon(headers or {}, bucket, now)
            if not room or self._strict(conn, lease.scope):
                # Our refill ran ahead of the server's: another client of the key spends from
                # it, so assume less of it is ours.
                conn.execute(
                    "UPDATE buckets SET share = max(?, share * ?) WHERE scope = ? AND name = ?",
                    (MIN_SHARE, SHARE_AFTER_429, lease.scope, bucket),
                )
                return False
            reason = (
                f"a 429 on {bucket} at {iso(now)} while the server's headers said there was room"
            )
            conn.execute(
                "INSERT INTO accounts (account, pacing, switched_at, reason) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (account) DO UPDATE SET pacing = excluded.pacing,"
                " switched_at = excluded.switched_at, reason = excluded.reason",
                (account, STRICT, iso(now), reason),
            )
            log.warning("%s: switching to strict pacing (%s)", account or "limiter", reason)
            return True

    def observe(
        self,
        headers: Mapping[str, str],
        *,
        model: str | None = None,
        lease: Lease | None = None,
        usage: Mapping[str, Any] | None = None,
    ) -> bool:
        """Learn limits from `anthropic-ratelimit-*-limit` headers and follow the server's
        `-remaining`: always down to it, up to it only while the account tolerates bursts.

        `lease` is the request these headers answer (observe before settle): the server counted
        `-remaining` when that request arrived, so the view is brought forward to now by the
        refill since its grant, less what was granted after it (and, for output, less its own
        output, generated after the count). Without a lease the headers are taken as of now.
        `usage` is that response's usage, when it has one: the server counted the request's
        actual input where our level still holds its estimate until settle() corrects it, so
        the view is put in the level's terms first (else settle would count the difference a
        second time, and the level would run ahead of the server by it, request after request).
        Returns whether the response carried any rate-limit header; a scope whose responses
        carry none is marked so (see headerless_note).
        """
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
        scope = self.scope(model)
        if not limits and not remaining:
            if scope:
                with self._store.write() as (conn, now):
                    self._ensure(conn, now, scope)
                    conn.execute(
                        "UPDATE scopes SET headers = 'none' WHERE scope = ? AND headers IS NULL",
                        (scope,),
                    )
            return False
        with self._store.write() as (conn, now):
            self._ensure(conn, now, scope)
            stamp = iso(now)
            conn.execute("UPDATE scopes SET headers = 'yes' WHERE scope = ?", (scope,))
            changed = False
            for bucket, value in limits.items():
                changed |= bool(
                    conn.execute(
                        "INSERT INTO learned (scope, name, value, learned_at) VALUES (?, ?, ?, ?)"
                        " ON CONFLICT (scope, name) DO UPDATE SET value = excluded.value,"
                        " learned_at = excluded.learned_at WHERE learned.value <> excluded.value",
                        (scope, BUCKETS[bucket], value, stamp),
                    ).rowcount
                )
                if not scope:  # the unscoped rows keep showing the last headers, as before
                    conn.execute(
                        "UPDATE limits SET header_value = ?, header_at = ? WHERE name = ?",
                        (value, stamp, BUCKETS[bucket]),
                    )
            if changed:
                self._recompute_limits(conn, now)
            strict = self._strict(conn, scope)
            state = self._buckets(conn, now, None, scope, strict)
            totals = dict(
                conn.execute("SELECT name, debited FROM buckets WHERE scope = ?", (scope,))
            )
            marks = dict(lease.marks) if lease is not None and lease.scope == scope else {}
            shares = dict(conn.execute("SELECT name, share FROM buckets WHERE scope = ?", (scope,)))
            for bucket, value in remaining.items():
                capacity, level, _rate = state[bucket]
                share = shares[bucket]
                server = float(value)
                if bucket in marks:
                    since = max(0.0, now - lease.granted_at) if lease else 0.0
                    server = min(capacity, server + since * share * capacity / 60.0)
                    server -= max(0.0, totals.get(bucket, 0.0) - marks[bucket])
                    if bucket == "output_tokens" and lease is not None:
                        server -= lease.output_estimate
                    if bucket == "input_tokens" and lease is not None and usage is not None:
                        server -= lease.input_tokens - _input_of(usage)
                share = _learn_share(share, level - server, bucket, value)
                target = level
                if level > server:
                    target = server  # the server has less: someone else spends too
                elif not strict:
                    target = max(level, min(server, self._ceiling(capacity, None, False)))
                conn.execute(
                    "UPDATE buckets SET server_remaining = ?, server_at = ?, share = ?"
                    + (", level = ?, updated_at = ?" if target != level else "")
                    + " WHERE scope = ? AND name = ?",
                    (server, stamp, share)
                    + ((target, stamp) if target != level else ())
                    + (scope, bucket),
                )
            return True

    # -- health and status ---------------------------------------------------------------------

    def record(self, *, status: int, latency: float | None) -> None:
        """Add a health sample for one response (200, 429, 529, 5xx...); keeps the last hour."""
        with self._store.write(maintenance=True) as (conn, now):
            conn.execute(
                "INSERT INTO samples (at, status, latency) VALUES (?, ?, ?)",
                (iso(now), int(status), None if latency is None else float(latency)),
            )
            conn.execute("DELETE FROM samples WHERE at < ?", (iso(now - 3600.0),))

    def _readable(self) -> bool:
        """False for a read-only limiter whose database does not exist yet (nothing to read)."""
        return not self.readonly or self._store.path.exists()

    def health(self, model: str | None = None) -> Health:
        """Whether more concurrency can help now: recent 429s/529s, utilisation, latency."""
        if not self._readable():
            return compute_health(None, time.time(), _default_buckets())
        with self._store.read() as (conn, now):
            state = self._buckets(conn, now, None, self.scope(model)) or _default_buckets()
            return compute_health(conn, now, state)

    def limits_with_sources(self, model: str | None = None) -> dict[str, tuple[int, str]]:
        """Each limit in force for `model`'s scope as (value, source): config, headers, default.

        A read-only limiter reports what a run with its `limits` would use.
        """
        if not self._readable():
            return self._scope_limits_offline()
        with self._store.read() as (conn, _):
            config: dict[str, int | None] | None = None
            if self.readonly and self.limits is not None:
                config = self._config_preview(conn)
            return self._scope_limits(conn, self.scope(model), config)

    def _config_preview(self, conn: Any) -> dict[str, int | None]:
        """The configuration a run with `self.limits` would leave in force (see _configure)."""
        assert self.limits is not None
        values = {name: getattr(self.limits, name) for name in _LIMIT_NAMES}
        if any(v is not None for v in values.values()):
            return values
        stored = self._config(conn)
        owner = conn.execute(
            "SELECT config_pid, config_start, config_host FROM limits"
            " WHERE config_value IS NOT NULL AND config_pid IS NOT NULL LIMIT 1"
        ).fetchone()
        if owner is not None and process_alive(*owner):
            return stored
        return values

    def _scope_limits_offline(self) -> dict[str, tuple[int, str]]:
        config = {name: getattr(self.limits or Limits(), name) for name in _LIMIT_NAMES}
        return {
            name: _effective(config[name], None, getattr(DEFAULT_LIMITS, name))
            for name in _LIMIT_NAMES
        }

    def limits_in_force(self, model: str | None = None) -> dict[str, int]:
        """Each limit's value now (rpm, itpm, otpm, max_concurrent), whatever its source."""
        return {name: value for name, (value, _) in self.limits_with_sources(model).items()}

    def headerless_note(self, model: str | None) -> str | None:
        """One line for a scope whose responses carry no rate-limit headers (a gateway, a proxy)."""
        scope = self.scope(model)
        with self._store.read() as (conn, _):
            row = conn.execute("SELECT headers FROM scopes WHERE scope = ?", (scope,)).fetchone()
        if row is None or row[0] != "none":
            return None
        d = DEFAULT_LIMITS
        return (
            f"{account_of_scope(scope)} sends no rate-limit headers: the limits of "
            f"{class_of_scope(scope)} are unknown, so pacing is at the built-in defaults "
            f"(rpm {d.rpm}, itpm {d.itpm:,}, otpm {d.otpm:,}) without refusing any request; "
            "a 429 slows it down"
        )

    def status(self, model: str | None = None) -> dict[str, Any]:
        """The `limits status --json` document (see runner/limiter/health.status_document):
        the top-level limits and levels are of `model`'s scope, else of the scope used last;
        `scopes` lists every scope and `accounts` each account's pacing mode."""
        with self._store.read() as (conn, now):
            scope = self.scope(model)
            if model is None:
                last = conn.execute(
                    "SELECT scope FROM buckets WHERE scope <> '' ORDER BY updated_at DESC LIMIT 1"
                ).fetchone()
                scope = last[0] if last else ""
            scopes = [row[0] for row in conn.execute("SELECT DISTINCT scope FROM buckets")]
            docs = {s: self._scope_doc(conn, now, s) for s in scopes if s}
            top = self._scope_doc(conn, now, scope)
            state = self._buckets(conn, now, None, scope) or _default_buckets()
            doc = status_document(conn, now, state)
            doc["limits"] = top["limits"]
            doc["scope"] = scope
            doc["pacing"] = top["pacing"]
            doc["scopes"] = docs
            doc["accounts"] = {
                account: {"pacing": pacing, "switched_at": at, "reason": reason}
                for account, pacing, at, reason in conn.execute(
                    "SELECT account, pacing, switched_at, reason FROM accounts ORDER BY account"
                )
            }
            return doc

    def _scope_doc(self, conn: Any, now: float, scope: str) -> dict[str, Any]:
        config = self._config(conn)
        learned = dict(conn.execute("SELECT name, value FROM learned WHERE scope = ?", (scope,)))
        limits = {
            name: {
                "value": value,
                "source": source,
                "config": config.get(name),
                "headers": learned.get(name),
            }
            for name, (value, source) in self._scope_limits(conn, scope, config).items()
        }
        row = conn.execute("SELECT headers FROM scopes WHERE scope = ?", (scope,)).fetchone()
        strict = self._strict(conn, scope)
        return {
            "account": account_of_scope(scope),
            "model_class": class_of_scope(scope),
            "headers": None if row is None else row[0],
            "pacing": STRICT if strict else BURST,
            "limits": limits,
            "levels": {
                name: {"level": round(level, 3), "capacity": capacity}
                for name, (capacity, level, _rate) in self._buckets(
                    conn, now, None, scope, strict
                ).items()
            },
        }

    def close(self) -> None:
        """Close this process's database connection; the Limiter reopens it if used again."""
        self._beating = -1
        self._store.close()


def _short_bucket(headers: Mapping[str, str], needs: Mapping[str, float]) -> str:
    """The bucket a 429 most likely ran out of: the one whose `-remaining` in its headers held
    the least of what the request needed ("requests" when the headers do not say)."""
    lower = {str(k).lower(): v for k, v in headers.items()}
    best, least = "requests", math.inf
    for bucket, prefix in _HEADER_PREFIX.items():
        try:
            left = float(str(lower[prefix + "remaining"]).strip())
        except (KeyError, ValueError):
            continue
        ratio = left / max(1.0, needs[bucket])
        if ratio < least:
            best, least = bucket, ratio
    return best


SHORT_BUCKET = 0.5  # a bucket that holds under this share of its limit is enforced per interval


def _refills_soon(headers: Mapping[str, str], bucket: str, now: float) -> bool:
    """Whether a 429's headers show `bucket`'s server bucket holding under SHORT_BUCKET of its
    limit: what remains plus the refill until its `-reset` (when it is full again)."""
    lower = {str(k).lower(): v for k, v in headers.items()}
    prefix = _HEADER_PREFIX[bucket]
    try:
        limit = float(str(lower[prefix + "limit"]).strip())
        remaining = float(str(lower[prefix + "remaining"]).strip())
        reset = datetime.fromisoformat(str(lower[prefix + "reset"]).strip()).timestamp()
    except (KeyError, ValueError):
        return False
    return limit > 0 and remaining + max(0.0, reset - now) * limit / 60.0 < SHORT_BUCKET * limit


def _input_of(usage: Mapping[str, Any]) -> int:
    """The input a response's usage counts toward ITPM: uncached input plus cache writes."""
    return int(usage.get("input_tokens") or 0) + int(usage.get("cache_creation_input_tokens") or 0)


def _had_room(
    conn: Any,
    lease: Lease,
    bucket: str,
    amount: float,
    seen: tuple[float, float, float, float],
) -> bool:
    """Whether the server's last view of `bucket` (capacity, remaining, seen_at, share), taken
    the way observe() takes it, left room for `lease` when it was granted: refilled by our
    share of the refill since (not the nominal rate: another client of the key spends the
    rest) and less what the leases granted between that view and this one took (they are
    all still in flight, as a settled one would have brought a newer view)."""
    capacity, remaining, seen_at, share = seen
    since = max(0.0, lease.granted_at - seen_at)
    column = {"requests": "1", "input_tokens": "input_tokens", "output_tokens": "output_estimate"}
    (taken,) = conn.execute(
        f"SELECT COALESCE(sum({column[bucket]}), 0) FROM leases"
        " WHERE scope = ? AND id <> ? AND granted_at > ? AND granted_at < ?",
        (lease.scope, lease.id, iso(seen_at), iso(lease.granted_at)),
    ).fetchone()
    view = min(capacity, remaining + since * share * capacity / 60.0) - float(taken)
    return view >= min(capacity, amount)


def _learn_share(share: float, gap: float, bucket: str, remaining: int) -> float:
    """The share of the nominal refill that is ours, after one look at the server's bucket.

    `gap` is our level less the server's (brought forward to now). The server rounds token
    counts down to the thousand, so only a gap beyond that rounding says something: ours ahead
    means another client spends too (refill less for us). A server ahead says nothing (strict
    pacing keeps our level below what the server holds), so the share only creeps back up, a
    little per response, for a key whose other clients have gone quiet.
    """
    grain = 1000.0 if bucket != "requests" and remaining % 1000 == 0 else 1.0
    if gap > grain:
        return max(MIN_SHARE, share * 0.95)
    return min(1.0, share + SHARE_RECOVERY)


def _with_slack(need: Mapping[str, float]) -> dict[str, float]:
    """Strict pacing's debit: each request and its input plus STRICT_SLACK of it, kept when the
    lease settles. Without it, grants spaced at exactly the refill time meet a server that
    enforces over short intervals right at its edge, where a few milliseconds of network jitter
    draw a 429. The slack is a share, never a fixed time per request: a fixed 20 ms per grant
    capped every account at 50 grants a second (under half of a 4,000 rpm limit)."""
    out = dict(need)
    for bucket in ("requests", "input_tokens"):
        out[bucket] = need[bucket] * (1.0 + STRICT_SLACK)
    return out


def _gate(need: Mapping[str, float] | Sequence[float]) -> dict[str, float]:
    """What must be in each bucket before a grant: the whole debit of requests and input, but
    only a token of output. The platform counts output as it is generated and admits while its
    output bucket is not empty; the limiter debits the estimate up front (so later grants wait
    for it), and settle() refunds what was not used."""
    values = list(need.values()) if isinstance(need, Mapping) else list(need)
    requests, input_tokens, output = (float(v or 0) for v in values)
    return {"requests": requests, "input_tokens": input_tokens, "output_tokens": min(output, 1.0)}


def _default_buckets() -> dict[str, list[float]]:
    return {b: [float(getattr(DEFAULT_LIMITS, lim)), 0.0, 0.0] for b, lim in BUCKETS.items()}
