"""Benchmark: how close the limiter's pacing comes to the platform's rule, on this machine now.

    python benchmarks/limiter_pacing_bench.py

The figures that depend on CPU time, moved here from tests/test_limiter_procs.py and
tests/test_limiter.py (the tests keep the bounds that hold under any load). Printed side by
side with what the platform's token bucket would allow (the peer: the rule itself):
  1. grants in 10 s at rpm 120 from 4 processes (the bucket allows 20 from empty);
  2. the spread of grants across 4 processes at rpm 1,200 for 4 s (even: 25% each);
  3. requests granted after 1.2 s idle at rpm 120 with burst 0 and burst 60 (1 and 2).
Stops by itself in about 30 seconds.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.limiter import AcquireTimeout, Limiter, Limits

SPAWN = mp.get_context("spawn")


def _hammer(state: str, seconds: float, start_at: float, out: Any) -> None:
    limiter = Limiter(Path(state))
    count = 0
    while time.time() < start_at:
        time.sleep(0.005)
    stop_at = start_at + seconds
    while time.time() < stop_at:
        try:
            lease = limiter.acquire(1, 1, timeout=max(0.01, stop_at - time.time()))
        except AcquireTimeout:
            break
        count += 1
        limiter.settle(lease, {"input_tokens": 1, "output_tokens": 1})
    out.put((os.getpid(), count))


def _grants(rpm: int, procs: int, seconds: float) -> list[int]:
    with tempfile.TemporaryDirectory() as state:
        Limiter(Path(state), Limits(rpm=rpm, itpm=10**9, otpm=10**9, max_concurrent=64)).close()
        out = SPAWN.Queue()
        start_at = time.time() + 1.5
        workers = [
            SPAWN.Process(target=_hammer, args=(state, seconds, start_at, out))
            for _ in range(procs)
        ]
        for w in workers:
            w.start()
        counts = [out.get(timeout=seconds + 60)[1] for _ in workers]
        for w in workers:
            w.join(timeout=10)
        return counts


def _after_idle(burst: float) -> int:
    with tempfile.TemporaryDirectory() as state:
        limiter = Limiter(Path(state), Limits(rpm=120, itpm=10**9, otpm=10**9), burst=burst)
        try:
            while True:
                limiter.settle(limiter.acquire(1, 1, timeout=0), {"output_tokens": 1})
        except AcquireTimeout:
            pass
        time.sleep(1.2)
        granted = 0
        try:
            for _ in range(10):
                limiter.acquire(1, 1, timeout=0)
                granted += 1
        except AcquireTimeout:
            pass
        return granted


def main() -> None:
    """Run the three measurements and print them beside the rule's figures."""
    print(f"{'measurement':<52} {'ours':>8} {'rule':>8}")
    total = sum(_grants(120, 4, 10.0))
    print(f"{'grants in 10 s at rpm 120, 4 processes':<52} {total:>8} {20:>8}")
    counts = _grants(1_200, 4, 4.0)
    share = max(counts) / max(1, sum(counts))
    print(f"{'busiest of 4 processes, share of grants':<52} {share:>8.0%} {'25%':>8}")
    print(f"{'grants per second at rpm 1,200, 4 processes':<52} {sum(counts) / 4:>8.1f} {20:>8}")
    for burst, rule in ((0.0, 1), (60.0, 2)):
        label = f"granted after 1.2 s idle, rpm 120, burst {burst:g}"
        print(f"{label:<52} {_after_idle(burst):>8} {rule:>8}")


if __name__ == "__main__":
    main()
