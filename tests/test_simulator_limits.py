"""The simulator's limits and faults through the real SDK: buckets, retry-after, caps, fault rates."""

from __future__ import annotations

import math
import threading
import time
from datetime import datetime
from typing import Any

import anthropic
import pytest

from runner.simulator import Simulator, count_tokens

MODEL = "claude-sonnet-5-5"


def client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="x", base_url=url, max_retries=0, timeout=20)


def small(content: str = "hi", max_tokens: int = 50) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": content}],
    }


def send(api: anthropic.Anthropic, body: dict[str, Any]) -> tuple[int, Any]:
    """(status, raw response or exception) without raising."""
    try:
        raw = api.messages.with_raw_response.create(**body)
        return raw.status_code, raw
    except anthropic.APIStatusError as exc:
        return exc.status_code, exc


def replay_requests_bucket(limit: int, arrivals: list[float]) -> int:
    """How many of these arrivals a continuously refilled bucket admits (reference model)."""
    level, stamp, admitted = float(limit), arrivals[0], 0
    for t in arrivals:
        level = min(float(limit), level + (t - stamp) * limit / 60)
        stamp = t
        if level >= 1:
            level -= 1
            admitted += 1
    return admitted


def test_burst_of_twice_rpm_gets_exactly_the_expected_429s() -> None:
    rpm = 10
    with Simulator(rpm=rpm) as sim:
        api = client(sim.base_url)
        statuses = [send(api, small(f"burst {i}"))[0] for i in range(2 * rpm)]
    log = sim.log()
    arrivals = [r["arrival"] for r in log]
    expected_ok = replay_requests_bucket(rpm, arrivals)
    # The bucket starts full (rpm) and refills one request per 6 s: a burst that takes less
    # than 6 s gets exactly rpm 200s and rpm 429s.
    assert arrivals[-1] - arrivals[0] < 60 / rpm
    assert expected_ok == rpm
    assert statuses.count(200) == expected_ok
    assert statuses.count(429) == 2 * rpm - expected_ok == rpm
    assert statuses[:rpm] == [200] * rpm  # admitted in order until the bucket is empty
    stats = sim.stats()
    assert stats["rate_limited_by"]["requests"] == rpm == stats["rate_limited"]
    assert all(r["limit"] == "requests" for r in log if r["status"] == 429)


def test_retry_after_is_the_true_wait_for_requests() -> None:
    with Simulator(rpm=6) as sim:
        api = client(sim.base_url)
        for i in range(6):
            status, ok = send(api, small(f"r{i}"))
            assert status == 200
        assert ok.headers["anthropic-ratelimit-requests-limit"] == "6"
        assert ok.headers["anthropic-ratelimit-requests-remaining"] == "0"
        status, err = send(api, small("over"))
    assert status == 429 and isinstance(err, anthropic.RateLimitError)
    assert err.body["error"]["type"] == "rate_limit_error"
    log = sim.log()
    # After 6 takes from a full bucket of 6, the level is 0.1/s * (elapsed since the first).
    true_wait = (1 - 0.1 * (log[-1]["arrival"] - log[0]["arrival"])) / 0.1
    retry_after = int(err.response.headers["retry-after"])
    # Whole seconds, rounded up and at least 1 (on a loaded machine the six requests can take
    # nearly the whole refill, so the true wait may be close to 0); a second either way for
    # the moments between the log's arrival stamps and the simulator's checks.
    expected = max(1, math.ceil(true_wait))
    assert max(1, expected - 1) <= retry_after <= expected + 1
    reset = datetime.fromisoformat(err.response.headers["anthropic-ratelimit-requests-reset"])
    assert reset.tzinfo is not None
    assert err.response.headers["request-id"] == err.body["request_id"]


def test_input_tokens_limit_counts_uncached_input_and_cache_writes() -> None:
    itpm = 6000  # 100 tokens per second
    big = "y" * 20_000  # 5,000 tokens
    with Simulator(itpm=itpm) as sim:
        api = client(sim.base_url)
        status, first = send(api, small(big))
        assert status == 200
        remaining = int(first.headers["anthropic-ratelimit-input-tokens-remaining"])
        assert remaining % 1000 == 0 and remaining <= 1000
        assert first.headers["anthropic-ratelimit-input-tokens-limit"] == str(itpm)
        status, err = send(api, small(big + "!"))
    assert status == 429
    log = sim.log()
    level = itpm - count_tokens(big) + 100 * (log[1]["arrival"] - log[0]["arrival"])
    true_wait = (count_tokens(big + "!") - level) / 100
    assert abs(int(err.response.headers["retry-after"]) - true_wait) <= 1
    assert log[1]["limit"] == "input_tokens"
    assert sim.stats()["rate_limited_by"]["input_tokens"] == 1


def test_cache_reads_do_not_count_toward_input_limit() -> None:
    prefix = "z" * 8000  # 2,000 tokens
    body = {
        "model": MODEL,
        "max_tokens": 20,
        "system": [{"type": "text", "text": prefix, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "q"}],
    }
    with Simulator(itpm=2500) as sim:
        api = client(sim.base_url)
        assert send(api, body)[0] == 200  # writes 2,000 (counted)
        status, raw = send(api, body)  # reads 2,000 (not counted), 1 uncached token
        assert status == 200
        assert raw.parse().usage.cache_read_input_tokens == 2000
        body["system"][0]["text"] = prefix + "different"
        assert send(api, body)[0] == 429  # a new write does count


def test_output_tokens_limit_debits_actual_output() -> None:
    otpm = 120  # 2 tokens per second
    with Simulator(otpm=otpm, output_mean=200, output_spread=0) as sim:
        api = client(sim.base_url)
        status, first = send(api, small("one", max_tokens=1000))
        assert status == 200
        out = first.parse().usage.output_tokens
        assert out == 200
        assert first.headers["anthropic-ratelimit-output-tokens-limit"] == str(otpm)
        status, err = send(api, small("two", max_tokens=1000))
    assert status == 429
    log = sim.log()
    # The output was debited while the first response was produced (between start and end).
    level = otpm - out + 2 * (log[1]["arrival"] - log[0]["end"])
    true_wait = (1 - level) / 2
    assert abs(int(err.response.headers["retry-after"]) - true_wait) <= 1
    assert log[1]["limit"] == "output_tokens"


def test_concurrency_cap() -> None:
    with Simulator(max_concurrent=2, latency=1.0) as sim:
        api = client(sim.base_url)
        codes: list[int] = []
        threads = [
            threading.Thread(target=lambda i=i: codes.append(send(api, small(f"t{i}"))[0]))
            for i in range(2)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while sim.stats()["in_flight"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        extra = [send(api, small(f"extra{i}")) for i in range(2)]
        for t in threads:
            t.join(timeout=10)
    assert codes == [200, 200]
    for status, err in extra:
        assert status == 429 and err.body["error"]["type"] == "rate_limit_error"
        assert "concurrent" in err.message
    stats = sim.stats()
    assert stats["max_in_flight"] == 2 and stats["rate_limited_by"]["concurrency"] == 2


def test_spend_cap() -> None:
    with Simulator(spend_cap_usd=0.001) as sim:
        api = client(sim.base_url)
        billed = 0
        for _ in range(50):
            status, result = send(api, small("spend", max_tokens=400))
            if status != 200:
                break
            billed += 1
        assert status == 429
        assert isinstance(result, anthropic.RateLimitError)
        assert result.body["error"]["details"]["error_code"] == "enforced_spend_limit_reached"
        assert result.error_code == "enforced_spend_limit_reached"
        assert "retry-after" not in result.response.headers
        assert send(api, small())[0] == 429  # every request from now on
        with pytest.raises(anthropic.RateLimitError):
            api.messages.batches.create(requests=[{"custom_id": "a", "params": small()}])
    stats = sim.stats()
    assert billed >= 1 and stats["billed_micros"] >= 1000
    assert stats["spend_capped"] == 3 and stats["rate_limited"] == 0


def run_faults(seed: int, n: int) -> dict[str, Any]:
    with Simulator(
        seed=seed, overloaded_rate=0.1, server_error_rate=0.1, drop_rate=0.1, output_mean=5
    ) as sim:
        api = client(sim.base_url)
        outcomes = {"ok": 0, "overloaded": 0, "server_errors": 0, "dropped": 0}
        for i in range(n):
            try:
                api.messages.create(**small(f"f{i}"))
                outcomes["ok"] += 1
            except anthropic.InternalServerError as exc:
                assert exc.body["error"]["type"] == (
                    "overloaded_error" if exc.status_code == 529 else "api_error"
                )
                assert exc.response.headers["request-id"] == exc.body["request_id"]
                key = "overloaded" if exc.status_code == 529 else "server_errors"
                outcomes[key] += 1
            except anthropic.APIConnectionError:
                outcomes["dropped"] += 1
        return {"outcomes": outcomes, "stats": sim.stats(), "log": sim.log()}


def test_fault_rates_within_tolerance_and_reproducible() -> None:
    n = 300
    first = run_faults(seed=7, n=n)
    outcomes, stats = first["outcomes"], first["stats"]
    tolerance = 4 * math.sqrt(n * 0.1 * 0.9)  # four standard deviations
    for kind in ("overloaded", "server_errors", "dropped"):
        assert abs(outcomes[kind] - 0.1 * n) <= tolerance, (kind, outcomes)
        assert stats[kind] == outcomes[kind]
    assert (
        stats["ok"]
        == outcomes["ok"]
        == n - sum(outcomes[k] for k in ("overloaded", "server_errors", "dropped"))
    )
    dropped = [r for r in first["log"] if r["dropped"]]
    assert len(dropped) == outcomes["dropped"] and all(
        r["billed"] and r["cost_micros"] > 0 for r in dropped
    )
    assert all(not r["billed"] for r in first["log"] if r["status"] in (500, 529))
    assert sum(r["cost_micros"] for r in first["log"]) == stats["billed_micros"]
    assert run_faults(seed=7, n=n)["outcomes"] == outcomes  # same seed, same counts
