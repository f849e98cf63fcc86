"""runner.limiter against the simulator, through the real SDK: the account's cap is never exceeded."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path
from typing import Any

import anthropic

from runner.limiter import Limiter, Limits
from runner.simulator import SimConfig, Simulator

SPAWN = mp.get_context("spawn")
CAP = 3


def _hold_three(state: str, ready: Any) -> None:
    limiter = Limiter(Path(state))
    for _ in range(CAP):
        limiter.acquire(10, 10)
    ready.set()
    time.sleep(60)


def _client_loop(state: str, url: str, requests: int, out: Any) -> None:
    limiter = Limiter(Path(state))
    client = anthropic.Anthropic(api_key="test", base_url=url, max_retries=0)
    done = errors = 0
    for i in range(requests):
        lease = limiter.acquire(200, 64, timeout=60)
        started = time.time()
        try:
            raw = client.messages.with_raw_response.create(
                model="claude-sonnet-5-5",
                max_tokens=64,
                messages=[{"role": "user", "content": f"Review request {i} from {os.getpid()}"}],
            )
        except anthropic.RateLimitError as exc:
            errors += 1
            limiter.record(status=429, latency=None)
            limiter.release(lease)
            limiter.penalize(float(exc.response.headers.get("retry-after", "1")))
            continue
        limiter.observe(raw.headers)
        limiter.record(status=raw.http_response.status_code, latency=time.time() - started)
        limiter.settle(lease, raw.parse().usage.model_dump())
        done += 1
    out.put((done, errors))


def test_killed_holder_is_reclaimed_and_the_cap_is_never_exceeded(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    Limiter(Path(state), Limits(rpm=600_000, itpm=10**9, otpm=10**9, max_concurrent=CAP)).close()
    ready = SPAWN.Event()
    holder = SPAWN.Process(target=_hold_three, args=(state, ready))
    holder.start()
    assert ready.wait(30)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(timeout=10)

    config = SimConfig(max_concurrent=CAP, latency=0.05, per_token=0.0005, output_mean=40)
    with Simulator(config) as sim:
        url = sim.base_url
        out = SPAWN.Queue()
        workers = [SPAWN.Process(target=_client_loop, args=(state, url, 8, out)) for _ in range(4)]
        for w in workers:
            w.start()
        results = [out.get(timeout=90) for _ in workers]
        for w in workers:
            w.join(timeout=10)
        stats = sim.stats()

    assert results == [(8, 0)] * 4  # every request answered, none refused
    assert stats["rate_limited"] == 0
    assert 1 <= stats["max_in_flight"] <= CAP
    doc = Limiter(Path(state)).status()
    assert doc["in_flight"] == [] and doc["waiters"] == []
    assert doc["recent_429s"] == 0 and doc["latency_p50"] is not None
