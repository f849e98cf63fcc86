"""Three "hosts" (separate state directories) sharing one PostgreSQL database: the limiter and
the ledger hold across them as they hold across the processes of one host on SQLite."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anthropic
import psycopg
import pytest
from support import collect

from ledger import BudgetExceeded, Ledger
from runner.limiter import AcquireTimeout, Limiter, Limits
from runner.simulator import SimConfig, Simulator

SPAWN = mp.get_context("spawn")
MODEL = "claude-sonnet-5-5"
CAP = 3
TIMEOUT = 120


def hosts(root: Path, count: int) -> list[Path]:
    """`count` state directories, one per pretend host."""
    dirs = [root / f"host{i}" for i in range(count)]
    for path in dirs:
        path.mkdir(parents=True)
    return dirs


def client_loop(state: str, url: str, requests: int, out: Any) -> None:
    """Acquire, send through the real SDK, settle; count the 429s our own traffic caused."""
    limiter = Limiter(Path(state))
    client = anthropic.Anthropic(api_key="test", base_url=url, max_retries=0)
    done = refused = 0
    for i in range(requests):
        lease = limiter.acquire(200, 64, timeout=60)
        try:
            raw = client.messages.with_raw_response.create(
                model=MODEL,
                max_tokens=64,
                messages=[{"role": "user", "content": f"Review {i} from {os.getpid()}"}],
            )
        except anthropic.RateLimitError:
            refused += 1
            limiter.release(lease)
            continue
        limiter.observe(raw.headers)
        limiter.settle(lease, raw.parse().usage.model_dump())
        done += 1
    out.put((done, refused))


def test_three_hosts_share_the_account_limits_without_a_429(tmp_path: Path, pg_url: str) -> None:
    dirs = hosts(tmp_path, 3)
    # Binding on both sides: the simulator refuses a 4th request in flight and a 601st per minute.
    Limiter(dirs[0], Limits(rpm=600, itpm=10**7, otpm=10**7, max_concurrent=CAP)).close()
    config = SimConfig(rpm=600, max_concurrent=CAP, latency=0.05, per_token=0.0005)
    with Simulator(config) as sim:
        out = SPAWN.Queue()
        workers = [
            SPAWN.Process(target=client_loop, args=(str(state), sim.base_url, 6, out))
            for state in dirs
            for _ in range(2)
        ]
        for worker in workers:
            worker.start()
        results = collect(out, workers, TIMEOUT)
        for worker in workers:
            worker.join(TIMEOUT)
        stats = sim.stats()
    assert results == [(6, 0)] * 6  # every request answered, none refused
    assert stats["rate_limited"] == 0
    assert 1 <= stats["max_in_flight"] <= CAP
    assert Limiter(dirs[1]).status()["in_flight"] == []


def racer(state: str, seed: int, start: Any, results: Any) -> None:
    """Reserve and settle (or release, or leave unknown) random amounts until refused."""
    rng = random.Random(seed)
    led = Ledger(Path(state) / "ledger.db")
    charged = settled = 0
    start.wait(TIMEOUT)
    for n in range(5000):  # bounded even if the budget were never reached
        estimate, cap = rng.randint(1000, 20_000), rng.randint(100, 4000)
        try:
            res = led.reserve(f"run{seed}", f"job{n}", MODEL, estimate, cap, agent="a")
        except BudgetExceeded:
            break
        roll = rng.random()
        if roll < 0.1:
            led.release(res)
        elif roll < 0.15:
            led.mark_unknown(res)
            charged += res.worst_micros
        else:
            usage = {
                "input_tokens": rng.randint(0, estimate // 2),
                "cache_read_input_tokens": rng.randint(0, estimate // 4),
                "output_tokens": rng.randint(0, cap),
            }
            charged += led.settle(res, usage)
            settled += 1
    led.close()
    results.put((seed, charged, settled))


def test_eight_processes_on_three_hosts_never_overspend_the_last_dollars(
    tmp_path: Path, pg_url: str
) -> None:
    dirs = hosts(tmp_path, 3)
    with Ledger(dirs[0] / "ledger.db") as led:
        led.set_budget(usd="3.00")
        # Half the month is gone already: the race is for the last dollars.
        res = led.reserve("earlier", "big", MODEL, 700_000, 1000)
        led.settle(res, {"input_tokens": 700_000, "output_tokens": 0})
        before = led.status().spent_micros
    assert 1_000_000 < before < 2_000_000
    start, results = SPAWN.Event(), SPAWN.Queue()
    procs = [
        SPAWN.Process(target=racer, args=(str(dirs[seed % 3]), seed, start, results))
        for seed in range(8)
    ]
    for proc in procs:
        proc.start()
    start.set()
    outcomes = collect(results, procs, TIMEOUT)
    for proc in procs:
        proc.join(TIMEOUT)
        assert proc.exitcode == 0
    with Ledger(dirs[2] / "ledger.db") as led:
        status = led.status()
    assert status.spent_micros + status.reserved_micros <= 3_000_000
    assert status.reserved_micros == 0
    assert status.spent_micros == before + sum(charged for _, charged, _ in outcomes)
    # Each racer stops at its first refusal, whose worst case is at most 90,000 micro-dollars.
    assert status.spent_micros > 3_000_000 - 8 * 90_000
    # The maintained aggregates equal a recount of the entries in the database.
    with psycopg.connect(pg_url) as conn:
        spent, settled = conn.execute(
            "SELECT sum(cost_micros), sum(CASE WHEN state = 'settled' THEN 1 ELSE 0 END)"
            " FROM review_runner_ledger.entries WHERE run_id != 'earlier'"
        ).fetchone()
    assert spent + before == status.spent_micros
    assert settled == sum(n for _, _, n in outcomes)


HOLDER = """
import sys, time
from pathlib import Path
from ledger import Ledger
from runner.limiter import Limiter
state = Path(sys.argv[1])
limiter = Limiter(state)
limiter.acquire(100, 100)
Ledger(state / "ledger.db").reserve("victim", "in-flight", "claude-sonnet-5-5", 10_000, 2000)
print("holding", flush=True)
time.sleep(120)
"""


def test_a_killed_hosts_lease_is_reclaimed_and_its_reservation_becomes_unknown(
    tmp_path: Path, pg_url: str
) -> None:
    victim, survivor = hosts(tmp_path, 2)
    Limiter(survivor, Limits(rpm=6000, itpm=10**7, otpm=10**7, max_concurrent=1)).close()
    with Ledger(survivor / "ledger.db") as led:
        led.set_budget(usd="1.00")
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(victim)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "holding"
        limiter = Limiter(survivor)
        held = limiter.status()["in_flight"]
        assert [lease["pid"] for lease in held] == [child.pid]  # the only slot is the victim's
        with Ledger(survivor / "ledger.db") as led:
            worst = led.status().reserved_micros
        assert worst > 0
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(TIMEOUT)
        assert child.stdout is not None
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    # The other host goes on: the dead holder's slot is reclaimed, its money shown as unknown.
    lease = limiter.acquire(100, 100, timeout=30)
    assert [x["pid"] for x in limiter.status()["in_flight"]] == [os.getpid()]
    limiter.settle(lease, {"input_tokens": 100, "output_tokens": 100})
    limiter.close()
    with Ledger(survivor / "ledger.db") as led:
        status = led.status()
        assert status.unknown_reservations == 1
        assert status.reserved_micros == 0
        assert status.spent_micros == status.unknown_micros == worst  # charged at the worst case
        res = led.reserve("survivor", "next", MODEL, 1000, 100)
        cost = led.settle(res, {"input_tokens": 1000, "output_tokens": 100})
        assert led.status().spent_micros == worst + cost == worst + 1000 * 2 + 100 * 10


OTHER_HOST = """
import sys, time
from pathlib import Path
from runner.limiter import Limiter
limiter = Limiter(Path(sys.argv[1]), heartbeat_timeout=float(sys.argv[2]))
limiter.acquire(100, 100)
print("holding", flush=True)
time.sleep(float(sys.argv[3]))
"""


def hold_on_other_host(state: Path, timeout: float, hold: float) -> subprocess.Popen[str]:
    """A process that says it runs on another host, holding one lease for `hold` seconds."""
    child = subprocess.Popen(
        [sys.executable, "-c", OTHER_HOST, str(state), str(timeout), str(hold)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "REVIEW_RUNNER_HOST": "ci-runner-2"},
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "holding"
    return child


def test_another_hosts_lease_lives_by_its_heartbeat_not_by_its_pid(
    tmp_path: Path, pg_url: str
) -> None:
    here, there = hosts(tmp_path, 2)
    Limiter(here, Limits(rpm=6000, itpm=10**7, otpm=10**7, max_concurrent=1)).close()
    limiter = Limiter(here, heartbeat_timeout=2.0)
    # Alive and heartbeating for 5 s: never reclaimed, though its pid means nothing here.
    alive = hold_on_other_host(there, 2.0, 5.0)
    try:
        with pytest.raises(AcquireTimeout):
            limiter.acquire(100, 100, timeout=3.5)  # past the timeout: the heartbeat kept it
    finally:
        alive.wait(TIMEOUT)
        assert alive.stdout is not None
        alive.stdout.close()
    # That process ended without settling (its host went away): its lease goes once its
    # heartbeat is older than the timeout, not at once, since its pid cannot be checked.
    gone_at = time.monotonic()
    lease = limiter.acquire(100, 100, timeout=30)
    assert time.monotonic() - gone_at > 0.5
    doc = limiter.status()
    assert [x["pid"] for x in doc["in_flight"]] == [os.getpid()]
    limiter.settle(lease, {"input_tokens": 100, "output_tokens": 100})
    limiter.close()


RESERVER = """
import sys, time
from pathlib import Path
from ledger import Ledger
led = Ledger(Path(sys.argv[1]) / "ledger.db", heartbeat_timeout=2.0)
led.reserve("far", "in-flight", "claude-sonnet-5-5", 10_000, 2000)
print("reserved", flush=True)
time.sleep(120)
"""


def test_another_hosts_reservation_becomes_unknown_once_its_heartbeat_stops(
    tmp_path: Path, pg_url: str
) -> None:
    here, there = hosts(tmp_path, 2)
    with Ledger(here / "ledger.db", heartbeat_timeout=2.0) as led:
        led.set_budget(usd="1.00")
    child = subprocess.Popen(
        [sys.executable, "-c", RESERVER, str(there)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "REVIEW_RUNNER_HOST": "ci-runner-2"},
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "reserved"
        time.sleep(3.0)  # past the timeout: alive and beating, so still reserved
        with Ledger(here / "ledger.db", heartbeat_timeout=2.0) as led:
            alive = led.status()
        assert alive.unknown_reservations == 0 and alive.reserved_micros > 0
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(TIMEOUT)
        assert child.stdout is not None
        child.stdout.close()
    # Its pid means nothing here; its silence does.
    deadline = time.monotonic() + 30
    with Ledger(here / "ledger.db", heartbeat_timeout=2.0) as led:
        while (status := led.status()).unknown_reservations == 0:
            assert time.monotonic() < deadline, "the dead host's reservation stayed reserved"
            time.sleep(0.2)
    assert status.reserved_micros == 0
    assert status.unknown_micros == status.spent_micros == alive.reserved_micros
