"""The limiter's grant and settle on PostgreSQL, from processes on two "hosts" at once.

A grant reads everything in one statement and writes with the COMMIT; settle and release are
one blind round trip. With refill switched off, every grant, correction and refund is visible
in the stored levels, so the test can ask for exact sums, not bounds.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import time
from pathlib import Path
from typing import Any

import psycopg
from support import collect

from runner.limiter import AcquireTimeout, Limiter, Limits
from statedb import iso

SPAWN = mp.get_context("spawn")
CAP = 2
GRANTS = 240  # what the requests bucket holds; it never refills during the test
START = 10**8  # the input and output levels at the start (never binding)
TIMEOUT = 120


def pairs(state: str, host: str, seed: int, flight: Any, out: Any) -> None:
    """Acquire until the requests bucket is empty; settle with a random usage, or release."""
    os.environ["REVIEW_RUNNER_HOST"] = host
    limiter = Limiter(Path(state), burst=None)
    rng = random.Random(seed)
    grants = releases = used_in = used_out = 0
    while True:
        try:
            lease = limiter.acquire(100, 50, timeout=5)
        except AcquireTimeout:
            break
        grants += 1
        with flight.get_lock():
            flight[0] += 1
            flight[1] = max(flight[1], flight[0])
        if rng.random() < 0.2:
            with flight.get_lock():
                flight[0] -= 1
            limiter.release(lease)  # refunds the request too: one more grant for someone
            releases += 1
            continue
        usage = {"input_tokens": rng.choice((0, 100, 300)), "output_tokens": rng.choice((0, 250))}
        with flight.get_lock():
            flight[0] -= 1
        limiter.settle(lease, usage)
        used_in += usage["input_tokens"]
        used_out += usage["output_tokens"]
    limiter.close()
    out.put((grants, releases, used_in, used_out))


def test_processes_on_two_hosts_get_exactly_the_bucket_and_settle_every_token(
    tmp_path: Path, pg_url: str
) -> None:
    dirs = [tmp_path / "host0", tmp_path / "host1"]  # a state directory per pretend host
    for path in dirs:
        path.mkdir()
    limits = Limits(rpm=10**6, itpm=10**9, otpm=10**9, max_concurrent=CAP)
    Limiter(dirs[0], limits, burst=None).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        # Refill off: a share of a billionth (1e-5 requests, 0.02 tokens a second) from
        # levels stamped an hour ahead (no refill at all until a grant stamps them now).
        conn.execute(
            "UPDATE review_runner_limiter.buckets SET share = 1e-9, updated_at = %s,"
            " level = CASE name WHEN 'requests' THEN %s ELSE %s END WHERE scope = ''",
            (iso(time.time() + 3600), float(GRANTS), float(START)),
        )
    flight = SPAWN.Array("i", [0, 0])  # in flight now, most ever seen
    results = SPAWN.Queue()
    procs = [
        SPAWN.Process(target=pairs, args=(str(dirs[i % 2]), f"host-{i % 2}", i, flight, results))
        for i in range(4)
    ]
    for proc in procs:
        proc.start()
    try:
        got = collect(results, procs, TIMEOUT)
    finally:
        for proc in procs:
            proc.join(30)
    grants = sum(g for g, _r, _i, _o in got)
    releases = sum(r for _g, r, _i, _o in got)
    used_in = sum(i for _g, _r, i, _o in got)
    used_out = sum(o for _g, _r, _i, o in got)
    # Each grant took one request; each release gave one back: exactly the bucket, never more.
    assert grants - releases == GRANTS
    assert flight[1] <= CAP
    with psycopg.connect(pg_url, autocommit=True) as conn:
        levels = dict(
            conn.execute("SELECT name, level FROM review_runner_limiter.buckets WHERE scope = ''")
        )
        (left,) = conn.execute("SELECT count(*) FROM review_runner_limiter.leases").fetchone()
    assert left == 0  # every slot freed
    # Every settle's correction and every refund landed once: what is gone is what was used.
    # (The tolerance is the refill a share of a billionth allows in a minute: under 2 tokens.)
    assert 0 <= levels["requests"] < 1
    assert abs(levels["input_tokens"] - (START - used_in)) < 2
    assert abs(levels["output_tokens"] - (START - used_out)) < 2
