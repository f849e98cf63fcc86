"""Message Batches in the simulator through the real SDK: cache isolation, TTL, outcomes, billing,
the batch log, pagination and the platform's limits.

The simulator runs on a frozen clock that the test moves by hand (batch delays and cache TTLs
without sleeping), so every assertion is a count, a status or a sum.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anthropic
import pytest

from ledger.prices import cost_micros, load_prices, price_for
from runner.simulator import SimConfig, Simulator, count_tokens

MODEL = "claude-sonnet-5-5"
PACK = "<repository name='demo'>\n" + "def f(x):\n    return x + 1  # pad\n" * 400 + "</repository>"
SYSTEM = "You are one of four reviewers of this repository."
PREFIX = count_tokens(SYSTEM) + count_tokens(
    PACK
)  # what the cache breakpoint after the pack covers


class Clock:
    """A clock that moves only when told (epoch seconds)."""

    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="x", base_url=url, max_retries=0, timeout=30)


def params(agent: str, *, ttl: str | None = "1h", max_tokens: int = 300) -> dict[str, Any]:
    """One agent's request over the shared pack, the pack marked for caching."""
    control: dict[str, Any] = {"type": "ephemeral"}
    if ttl:
        control["ttl"] = ttl
    return {
        "model": MODEL,
        "max_tokens": max_tokens,
        "system": SYSTEM,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": PACK, "cache_control": control},
                    {"type": "text", "text": f"Review it as {agent}."},
                ],
            }
        ],
    }


def run_batch(api: anthropic.Anthropic, items: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Create a batch of `items` (custom_id -> params), wait for it to end, return its results."""
    batch = api.messages.batches.create(
        requests=[{"custom_id": cid, "params": p} for cid, p in items.items()]
    )
    assert api.messages.batches.retrieve(batch.id).processing_status == "ended"
    return {r.custom_id: r.result for r in api.messages.batches.results(batch.id)}


AGENTS = ("code_review", "architecture", "security", "multi_perspective")


def test_items_of_one_batch_never_read_each_others_cache_writes() -> None:
    with Simulator(clock=Clock()) as sim:
        api = client(sim.base_url)
        cold = run_batch(api, {a: params(a) for a in AGENTS})
        for result in cold.values():
            usage = result.message.usage
            assert usage.cache_read_input_tokens == 0
            assert usage.cache_creation.ephemeral_1h_input_tokens == PREFIX
        warm = run_batch(api, {f"{a}-2": params(a) for a in AGENTS})
        for result in warm.values():
            assert result.message.usage.cache_read_input_tokens == PREFIX
            assert result.message.usage.cache_creation_input_tokens == 0
        # And a Messages request after the batch ended reads it too.
        message = api.messages.create(**params("single"))
        assert message.usage.cache_read_input_tokens == PREFIX


def test_a_running_batch_writes_are_readable_only_once_it_ends() -> None:
    clock = Clock()
    with Simulator(batch_delay=600, clock=clock) as sim:
        api = client(sim.base_url)
        api.messages.batches.create(requests=[{"custom_id": "w", "params": params("code_review")}])
        clock.advance(300)
        during = api.messages.create(**params("single")).usage
    assert during.cache_read_input_tokens == 0 and during.cache_creation_input_tokens == PREFIX
    clock = Clock()
    with Simulator(batch_delay=600, clock=clock) as sim:
        api = client(sim.base_url)
        first = api.messages.batches.create(
            requests=[{"custom_id": "writer", "params": params("code_review")}]
        )
        clock.advance(600)
        # A Messages request arriving once the batch has ended reads the batch's write.
        assert api.messages.create(**params("single")).usage.cache_read_input_tokens == PREFIX
        assert api.messages.batches.retrieve(first.id).processing_status == "ended"
        written = next(iter(api.messages.batches.results(first.id))).result.message.usage
        assert written.cache_creation_input_tokens == PREFIX


def test_two_phases_share_the_pack_and_the_1h_ttl_is_honoured() -> None:
    clock = Clock()
    with Simulator(clock=clock) as sim:
        api = client(sim.base_url)
        phase1 = run_batch(api, {"repo-code_review": params("code_review")})
        assert phase1["repo-code_review"].message.usage.cache_creation_input_tokens == PREFIX
        clock.advance(50 * 60)  # beyond a 5-minute TTL, within the hour
        phase2 = run_batch(api, {f"repo-{a}": params(a) for a in AGENTS[1:]})
        assert {r.message.usage.cache_read_input_tokens for r in phase2.values()} == {PREFIX}
        clock.advance(3601)  # the last read refreshed the hour; now it has passed
        late = run_batch(api, {"late": params("security")})
        assert late["late"].message.usage.cache_read_input_tokens == 0
        assert late["late"].message.usage.cache_creation_input_tokens == PREFIX


def test_max_tokens_zero_in_a_batch_is_an_errored_invalid_request() -> None:
    with Simulator(clock=Clock()) as sim:
        api = client(sim.base_url)
        results = run_batch(
            api, {"prewarm": params("code_review", max_tokens=0), "real": params("security")}
        )
        batch = api.messages.batches.list().data[0]
    assert results["prewarm"].type == "errored"
    error = results["prewarm"].error.error
    assert error.type == "invalid_request_error" and "max_tokens" in error.message
    assert results["real"].type == "succeeded"
    # The refused pre-warm wrote nothing: the other item of the batch paid the write itself.
    assert results["real"].message.usage.cache_creation_input_tokens == PREFIX
    assert (batch.request_counts.errored, batch.request_counts.succeeded) == (1, 1)
    assert next(r for r in sim.log() if r.get("custom_id") == "prewarm")["billed"] is False


def test_batch_billing_is_half_price_and_counted_apart() -> None:
    price = price_for(load_prices(), MODEL)
    with Simulator(clock=Clock()) as sim:
        api = client(sim.base_url)
        message = api.messages.create(**params("security", ttl=None))
        results = run_batch(api, {"a": params("code_review", ttl=None), "b": params("security")})
        stats = sim.stats()
    messages_micros = cost_micros(price, message.usage.model_dump())
    batch_micros = sum(
        cost_micros(price, r.message.usage.model_dump(), batch=True) for r in results.values()
    )
    assert {r.message.usage.service_tier for r in results.values()} == {"batch"}
    full = cost_micros(price, results["b"].message.usage.model_dump())
    assert (
        abs(cost_micros(price, results["b"].message.usage.model_dump(), batch=True) * 2 - full) <= 1
    )
    assert stats["batch_billed_micros"] == batch_micros
    assert stats["billed_micros"] == messages_micros + batch_micros
    records = [r for r in sim.log() if r.get("batch")]
    assert sum(r["cost_micros"] for r in records) == batch_micros
    assert stats["batch_succeeded"] == 2 and stats["batches"] == 1


def outcomes(seed: int) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
    config = SimConfig(batch_expire_rate=0.25, batch_error_rate=0.25, seed=seed, clock=Clock())
    with Simulator(config) as sim:
        api = client(sim.base_url)
        small = {"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": "x"}]}
        results = run_batch(api, {f"r{i:02d}": small for i in range(40)})
        return {k: v.type for k, v in results.items()}, results, sim.stats()


def test_injected_batch_outcomes_are_seeded_and_only_successes_billed() -> None:
    kinds, results, stats = outcomes(seed=5)
    counts = {k: list(kinds.values()).count(k) for k in ("succeeded", "errored", "expired")}
    assert sum(counts.values()) == 40 and all(counts.values()), counts
    errors = {r.error.error.type for r in results.values() if r.type == "errored"}
    assert errors <= {"api_error", "overloaded_error"} and errors
    assert (stats["batch_succeeded"], stats["batch_errored"], stats["batch_expired"]) == (
        counts["succeeded"],
        counts["errored"],
        counts["expired"],
    )
    price = price_for(load_prices(), MODEL)
    billed = sum(
        cost_micros(price, r.message.usage.model_dump(), batch=True)
        for r in results.values()
        if r.type == "succeeded"
    )
    assert stats["batch_billed_micros"] == billed == stats["billed_micros"]
    assert outcomes(seed=5)[0] == kinds  # the same seed, the same outcome per custom_id
    assert outcomes(seed=6)[0] != kinds


def test_resubmitted_items_succeed_once_the_rates_are_zero() -> None:
    config = SimConfig(batch_error_rate=1.0, clock=Clock())
    with Simulator(config) as sim:
        api = client(sim.base_url)
        failed = run_batch(api, {"a": params("security"), "b": params("code_review")})
    assert {r.type for r in failed.values()} == {"errored"}
    assert sim.stats()["billed_micros"] == 0
    with Simulator(clock=Clock()) as sim:
        again = run_batch(client(sim.base_url), {"a": params("security")})
    assert again["a"].type == "succeeded"


def test_a_batch_not_done_within_24_hours_expires() -> None:
    clock = Clock()
    with Simulator(batch_delay=30 * 3600, clock=clock) as sim:
        api = client(sim.base_url)
        batch = api.messages.batches.create(
            requests=[{"custom_id": f"r{i}", "params": params("security")} for i in range(3)]
        )
        clock.advance(23 * 3600)
        assert api.messages.batches.retrieve(batch.id).processing_status == "in_progress"
        clock.advance(3600)
        ended = api.messages.batches.retrieve(batch.id)
        assert ended.processing_status == "ended" and ended.request_counts.expired == 3
        assert {r.result.type for r in api.messages.batches.results(batch.id)} == {"expired"}
    assert sim.stats()["billed_micros"] == 0 and sim.stats()["batch_expired"] == 3
    # Looked at only after its delay had passed: still expired, never processed late.
    clock = Clock()
    with Simulator(batch_delay=30 * 3600, clock=clock) as sim:
        api = client(sim.base_url)
        late = api.messages.batches.create(requests=[{"custom_id": "a", "params": params("x")}])
        clock.advance(31 * 3600)
        assert api.messages.batches.retrieve(late.id).request_counts.expired == 1


def test_batch_log_records_every_submission(tmp_path: Path) -> None:
    path = tmp_path / "sim.jsonl"
    clock = Clock()
    with Simulator(log_path=path, clock=clock) as sim:
        api = client(sim.base_url)
        small = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        one = api.messages.batches.create(
            requests=[{"custom_id": c, "params": small} for c in ("run1-a", "run1-b")]
        )
        clock.advance(10)
        two = api.messages.batches.create(requests=[{"custom_id": "run1-c", "params": small}])
        api.messages.batches.delete(one.id)
        log = sim.batch_log()
    assert [e["id"] for e in log] == [one.id, two.id]  # a deleted batch stays in the log
    assert [e["custom_ids"] for e in log] == [["run1-a", "run1-b"], ["run1-c"]]
    assert log[1]["created_at"] - log[0]["created_at"] == 10
    assert all(e["processing_status"] == "ended" for e in log)
    assert log[0]["request_counts"]["succeeded"] == 2
    submitted = [c for e in log for c in e["custom_ids"]]
    assert len(submitted) == len(set(submitted))
    records = [json.loads(line) for line in path.read_text().splitlines()]
    creates = [r for r in records if r["method"] == "POST" and r["path"] == "/v1/messages/batches"]
    assert [(r["batch_id"], r["custom_ids"]) for r in creates] == [
        (one.id, ["run1-a", "run1-b"]),
        (two.id, ["run1-c"]),
    ]


def test_batch_list_paginates_as_the_sdk_expects() -> None:
    with Simulator(batch_delay=60, clock=Clock()) as sim:
        api = client(sim.base_url)
        small = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        ids = [
            api.messages.batches.create(requests=[{"custom_id": f"b{i}", "params": small}]).id
            for i in range(5)
        ]
        newest_first = ids[::-1]
        page = api.messages.batches.list(limit=2)
        assert [b.id for b in page.data] == newest_first[:2]
        assert page.has_more and (page.first_id, page.last_id) == tuple(newest_first[:2])
        assert [b.id for b in api.messages.batches.list(limit=2)] == newest_first  # auto-pages
        after = api.messages.batches.list(limit=2, after_id=newest_first[1])
        assert [b.id for b in after.data] == newest_first[2:4] and after.has_more
        last = api.messages.batches.list(limit=2, after_id=newest_first[3])
        assert [b.id for b in last.data] == newest_first[4:] and not last.has_more
        before = api.messages.batches.list(limit=2, before_id=newest_first[4])
        assert [b.id for b in before.data] == newest_first[2:4] and before.has_more
        unknown = api.messages.batches.list(after_id="msgbatch_gone")
        assert unknown.data == [] and not unknown.has_more
        assert {b.processing_status for b in api.messages.batches.list()} == {"in_progress"}


def test_more_than_100000_requests_is_refused() -> None:
    with Simulator(clock=Clock()) as sim:
        item = {"custom_id": "", "params": {"model": MODEL, "max_tokens": 1, "messages": []}}
        requests = [{**item, "custom_id": f"r{i}"} for i in range(100_001)]
        data = json.dumps({"requests": requests}).encode()
        req = urllib.request.Request(
            sim.base_url + "/v1/messages/batches",
            data=data,
            headers={"x-api-key": "x", "content-type": "application/json"},
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=60)
        body = json.loads(err.value.read())
    assert err.value.code == 400 and body["error"]["type"] == "invalid_request_error"
    assert "at most 100000 items" in body["error"]["message"]
    assert sim.batch_log() == [] and sim.stats()["bad_requests"] == 1


def test_a_batch_over_the_size_limit_is_413_request_too_large() -> None:
    with Simulator(batch_max_bytes=10_000, clock=Clock()) as sim:
        api = client(sim.base_url)
        with pytest.raises(anthropic.APIStatusError) as err:
            api.messages.batches.create(requests=[{"custom_id": "big", "params": params("a")}])
        small = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        ok = api.messages.batches.create(requests=[{"custom_id": "small", "params": small}])
    assert err.value.status_code == 413
    assert err.value.body["error"]["type"] == "request_too_large"
    assert "at most 10000 bytes" in err.value.body["error"]["message"]
    assert [e["id"] for e in sim.batch_log()] == [ok.id]
    assert sim.stats()["too_large"] == 1


def test_batch_traffic_does_not_use_the_messages_buckets() -> None:
    with Simulator(rpm=1, itpm=2000, otpm=500, clock=Clock()) as sim:
        api = client(sim.base_url)
        results = run_batch(api, {a: params(a) for a in AGENTS})
        assert {r.type for r in results.values()} == {"succeeded"}
        small = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        raw = api.messages.with_raw_response.create(**small)
        assert raw.headers["anthropic-ratelimit-requests-remaining"] == "0"  # it had the 1
        with pytest.raises(anthropic.RateLimitError):
            api.messages.create(**small)
