"""Benchmark: runner.limiter against pyrate-limiter's SQLite bucket with its file lock.

    python benchmarks/limiter_bench.py [--seconds 3]

Prints, from one run, side by side with ratios:
  1. acquire+settle pairs per second from 1 and 4 processes with limits that never bind, and
     p50/p99/max acquire latency, for 1 and 100,000 tokens per request (pyrate: weight 1 for
     RPM and weight 1,000 for ITPM, since it stores one row per unit of weight), plus the share
     of grants taken by the busiest process;
  2. over-admission at 50 grants per second across 4 processes: the most grants in any sliding
     1 s window (by the time acquire returned) divided by 50;
  3. the cost of one filelock.FileLock acquire+release against one flock(2) pair, which is why
     the limiter takes its lock with flock directly;
  4. the PostgreSQL column: acquire+settle pairs per second from 4 processes on a throwaway
     local PostgreSQL server (tests/pg_support.py) beside the SQLite backend in the same run,
     with their ratio (target: >= 1,000 pairs/s on PostgreSQL).
Needs `pip install pyrate-limiter==4.5.1` and a PostgreSQL server installed (`.ci/run` installs
Debian's). Stops by itself in about a minute.
"""

from __future__ import annotations

import argparse
import fcntl
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.limiter import Limiter, Limits

NEVER = Limits(rpm=10**9, itpm=10**12, otpm=10**12, max_concurrent=10**6)


def _ours(state: str, tokens: int, limits: Limits | None) -> tuple[object, object]:
    limiter = Limiter(Path(state), limits)

    def pair() -> float:
        """One acquire+settle; returns the acquire's latency alone, as for pyrate."""
        t0 = time.perf_counter()
        lease = limiter.acquire(tokens, 1)
        latency = time.perf_counter() - t0
        limiter.settle(lease, {"input_tokens": tokens, "output_tokens": 1})
        return latency

    return pair, limiter.close


def _pyrate(state: str, weight: int, per_second: int | None) -> tuple[object, object]:
    from pyrate_limiter import Duration
    from pyrate_limiter.limiter_factory import create_sqlite_limiter

    if per_second is None:
        limiter = create_sqlite_limiter(
            rate_per_duration=10**9,
            duration=Duration.MINUTE,
            db_path=os.path.join(state, "pyrate.sqlite"),
            use_file_lock=True,
        )
    else:
        limiter = create_sqlite_limiter(
            rate_per_duration=per_second,
            duration=Duration.SECOND,
            db_path=os.path.join(state, "pyrate.sqlite"),
            use_file_lock=True,
        )

    def acquire() -> float:
        t0 = time.perf_counter()
        limiter.try_acquire("bench", weight=weight)
        return time.perf_counter() - t0

    return acquire, lambda: None


def _worker(kind, state, size, per_second, start_at, stop_at, out) -> None:  # type: ignore[no-untyped-def]
    if kind == "ours":
        limits = NEVER if per_second is None else Limits(rpm=per_second * 60, max_concurrent=64)
        acquire, close = _ours(state, size, limits)
    else:
        acquire, close = _pyrate(state, size, per_second)
    latencies, returned = [], []
    while time.time() < start_at:
        time.sleep(0.001)
    while time.time() < stop_at:
        latencies.append(acquire())  # type: ignore[operator]
        returned.append(time.time())
    close()  # type: ignore[operator]
    out.put((os.getpid(), latencies, returned))


def run(kind: str, procs: int, size: int, seconds: float, per_second: int | None = None) -> dict:
    """Run `procs` processes for `seconds`; return throughput, latency and grant times."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as state:
        if kind == "ours":  # create the database before the clock starts
            Limiter(Path(state), NEVER if per_second is None else None).close()
        out = ctx.Queue()
        start_at = time.time() + 1.5  # spawn start-up is not part of the measurement
        stop_at = start_at + seconds
        workers = [
            ctx.Process(
                target=_worker, args=(kind, state, size, per_second, start_at, stop_at, out)
            )
            for _ in range(procs)
        ]
        for w in workers:
            w.start()
        results = [out.get(timeout=seconds + 60) for _ in workers]
        for w in workers:
            w.join(timeout=10)
    lat = sorted(x for _pid, lats, _ret in results for x in lats)
    counts = [len(lats) for _pid, lats, _ret in results]
    total = sum(counts)
    return {
        "rate": total / seconds,
        "p50": statistics.median(lat) if lat else float("nan"),
        "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
        "max": lat[-1] if lat else float("nan"),
        "top_share": max(counts) / total if total else float("nan"),
        "returned": sorted(t for _pid, _lats, ret in results for t in ret),
    }


def max_in_window(times: list[float], window: float) -> int:
    """Most events in any half-open window [t, t + window)."""
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def lock_cost(n: int = 5000) -> tuple[float, float]:
    """Microseconds per acquire+release: filelock.FileLock, then a bare flock(2)."""
    from filelock import FileLock

    with tempfile.TemporaryDirectory() as d:
        lock = FileLock(os.path.join(d, "a.lock"), thread_local=False)
        t0 = time.perf_counter()
        for _ in range(n):
            with lock:
                pass
        file_lock = (time.perf_counter() - t0) / n * 1e6
        fd = os.open(os.path.join(d, "b.lock"), os.O_CREAT | os.O_RDWR, 0o600)
        t0 = time.perf_counter()
        for _ in range(n):
            fcntl.flock(fd, fcntl.LOCK_EX)
            fcntl.flock(fd, fcntl.LOCK_UN)
        bare = (time.perf_counter() - t0) / n * 1e6
        os.close(fd)
    return file_lock, bare


def backends(secs: float, procs: int = 4) -> None:
    """Section 4: the same acquire+settle load on SQLite and on PostgreSQL, side by side."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from pg_support import PgCluster

    cluster = PgCluster().start()
    try:
        os.environ.pop("REVIEW_RUNNER_DATABASE_URL", None)
        sqlite = run("ours", procs, 1, secs)
        os.environ["REVIEW_RUNNER_DATABASE_URL"] = cluster.new_database()
        postgres = run("ours", procs, 1, secs)
    finally:
        os.environ.pop("REVIEW_RUNNER_DATABASE_URL", None)
        cluster.stop()
    print(f"\nbackends, {procs} processes, acquire+settle pairs/s (target >= 1,000 on PostgreSQL)")
    print(f"  {'':12} {'pairs/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name, res in (("SQLite", sqlite), ("PostgreSQL", postgres)):
        print(f"  {name:12} {res['rate']:9.0f} {res['p50'] * 1e3:8.2f} {res['p99'] * 1e3:8.2f}")
    print(f"  PostgreSQL / SQLite: {postgres['rate'] / sqlite['rate']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per run")
    parser.add_argument(
        "--backends-only", action="store_true", help="only section 4 (SQLite vs PostgreSQL)"
    )
    args = parser.parse_args()
    secs = args.seconds
    if args.backends_only:
        backends(secs)
        return
    print(f"limiter benchmark, {os.cpu_count()} CPUs, {secs:g} s per run, limits never bind\n")
    header = (
        f"{'case':34} {'pairs/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'top %':>6}"
        f" | {'pyrate/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'top %':>6} | {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for procs in (1, 4):
        for tokens, weight in ((1, 1), (100_000, 1000)):
            ours = run("ours", procs, tokens, secs)
            peer = run("pyrate", procs, weight, secs)
            label = f"{procs} proc, ours {tokens} tok / pyrate w{weight}"
            print(
                f"{label:34} {ours['rate']:9.0f} {ours['p50'] * 1e3:8.2f} {ours['p99'] * 1e3:8.2f}"
                f" {ours['max'] * 1e3:8.2f} {ours['top_share'] * 100:6.0f}"
                f" | {peer['rate']:9.0f} {peer['p50'] * 1e3:8.2f} {peer['p99'] * 1e3:8.2f}"
                f" {peer['max'] * 1e3:8.2f} {peer['top_share'] * 100:6.0f}"
                f" | {ours['rate'] / peer['rate']:6.1f}x",
                flush=True,
            )
    print("\nover-admission at 50/s across 4 processes (most grants in any 1 s window / 50)")
    secs_oa = max(secs, 5.0)
    ours = run("ours", 4, 1, secs_oa, per_second=50)
    peer = run("pyrate", 4, 1, secs_oa, per_second=50)
    for name, res in (("ours", ours), ("pyrate-limiter", peer)):
        peak = max_in_window(res["returned"], 1.0)
        print(
            f"  {name:15} {peak / 50:5.2f}  (peak {peak} in 1 s, {res['rate']:.1f}/s average,"
            f" busiest process {res['top_share'] * 100:.0f}% of grants)"
        )
    file_lock, bare = lock_cost()
    print(
        f"\nlock cost per acquire+release: filelock.FileLock {file_lock:.1f} us,"
        f" flock(2) {bare:.1f} us ({file_lock / bare:.0f}x)"
    )
    backends(secs)


if __name__ == "__main__":
    main()
