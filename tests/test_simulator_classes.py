"""Per-model-class buckets, short enforcement intervals, external load, header-less mode.

The simulator runs on a frozen clock that the test moves by hand, so every count is exact
whatever the machine's load (no timing assertions).
"""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from runner.errors import RunnerInputError
from runner.modelclass import MODEL_CLASSES, model_class
from runner.simulator import ClassLimits, SimConfig, Simulator, parse_class_limit

SONNET, SONNET_OLD, OPUS = "claude-sonnet-5-5", "claude-sonnet-5", "claude-opus-5-5"


class Clock:
    """A clock that moves only when told (epoch seconds)."""

    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="x", base_url=url, max_retries=0, timeout=20)


def send(api: anthropic.Anthropic, model: str = SONNET, content: str = "hi") -> tuple[int, Any]:
    """(status, headers) of one small request, without raising."""
    body = {"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": content}]}
    try:
        raw = api.messages.with_raw_response.create(**body)
        return raw.status_code, raw.headers
    except anthropic.APIStatusError as exc:
        return exc.status_code, exc.response.headers


@pytest.mark.parametrize(
    ("model", "cls"),
    [
        pytest.param("claude-sonnet-5-5", "sonnet-5", id="sonnet-5-5"),
        pytest.param("claude-sonnet-5", "sonnet-5", id="sonnet-5"),
        pytest.param("claude-opus-5-5", "opus-5", id="opus-5-5"),
        pytest.param("claude-opus-4-1", "opus-4", id="opus-4-1"),
        pytest.param("claude-opus-4-20250514", "opus-4", id="dated"),
        pytest.param("claude-sonnet-4-5", "sonnet-4", id="sonnet-4-5"),
        pytest.param("claude-haiku-4-5", "haiku-4", id="haiku-4-5"),
        pytest.param("claude-3-7-sonnet-20250219", "sonnet-3-7", id="old-style"),
        pytest.param("claude-sonnet-6-1", "sonnet-6", id="unknown-generation"),
        pytest.param("claude-opus-40", "opus-40", id="not-a-prefix-of-a-number"),
        pytest.param("Some-Gateway-Model", "some-gateway-model", id="unknown-own-class"),
    ],
)
def test_model_class_table(model: str, cls: str) -> None:
    assert model_class(model) == cls


def test_model_class_table_covers_every_priced_model() -> None:
    from ledger.prices import load_prices

    classes = {cls for _, cls in MODEL_CLASSES}
    for model in load_prices():
        assert model_class(model) in classes, model


def test_each_model_class_has_its_own_buckets_and_headers() -> None:
    clock = Clock()
    config = SimConfig(rpm=2, class_limits={"opus-5": ClassLimits(rpm=3)}, clock=clock)
    with Simulator(config) as sim:
        api = client(sim.base_url)
        sonnet = [send(api, SONNET, f"s{i}") for i in range(2)]
        shared = send(api, SONNET_OLD, "same class")  # another Sonnet 5 version: same bucket
        opus = [send(api, OPUS, f"o{i}") for i in range(4)]
    assert [s for s, _ in sonnet] == [200, 200]
    assert [h["anthropic-ratelimit-requests-remaining"] for _, h in sonnet] == ["1", "0"]
    assert sonnet[0][1]["anthropic-ratelimit-requests-limit"] == "2"
    assert shared[0] == 429 and shared[1]["anthropic-ratelimit-requests-limit"] == "2"
    assert [s for s, _ in opus] == [200, 200, 200, 429]
    assert opus[0][1]["anthropic-ratelimit-requests-limit"] == "3"
    assert [h["anthropic-ratelimit-requests-remaining"] for _, h in opus[:3]] == ["2", "1", "0"]
    log = sim.log()
    assert [r["model_class"] for r in log] == ["sonnet-5"] * 3 + ["opus-5"] * 4
    assert sim.stats()["rate_limited_by"]["requests"] == 2


def test_class_limit_override_inherits_unset_limits() -> None:
    config = SimConfig(rpm=5, itpm=9000, class_limits={"opus-5": ClassLimits(itpm=3000)})
    assert config.limits_of("opus-5") == ClassLimits(rpm=5, itpm=3000)
    assert config.limits_of("sonnet-5") == ClassLimits(rpm=5, itpm=9000)
    assert parse_class_limit("Opus-5:rpm=5, otpm=400") == ("opus-5", ClassLimits(rpm=5, otpm=400))
    for bad, message in (
        ("opus-5", "expected CLASS:rpm=N"),
        ("opus-5:tpm=3", "'tpm=3' is not rpm=N"),
        ("opus-5:rpm=x", "rpm must be a whole number"),
        ("opus-5:rpm=0", "rpm must be at least 1"),
    ):
        with pytest.raises(RunnerInputError, match=message):
            parse_class_limit(bad)


def test_a_minute_limit_enforced_per_second() -> None:
    clock = Clock()
    with Simulator(rpm=60, enforce_interval=1, clock=clock) as sim:
        api = client(sim.base_url)
        first = send(api, content="a")
        second = send(api, content="b")
        clock.advance(1)
        third = send(api, content="c")
    assert first[0] == 200 and first[1]["anthropic-ratelimit-requests-limit"] == "60"
    assert second[0] == 429 and second[1]["retry-after"] == "1"
    assert third[0] == 200
    # The same limit enforced per minute lets the whole burst through.
    with Simulator(rpm=60, clock=Clock()) as sim:
        api = client(sim.base_url)
        assert [send(api, content=str(i))[0] for i in range(60)] == [200] * 60


def test_a_slow_limit_enforced_per_second_still_admits_at_its_rate() -> None:
    # 10 RPM over 1 s: a bucket of 1/6 request. One request empties it for 6 s, never forever.
    clock = Clock()
    with Simulator(rpm=10, enforce_interval=1, clock=clock) as sim:
        api = client(sim.base_url)
        statuses = [send(api, content="a")[0]]
        refused = send(api, content="b")
        clock.advance(5)
        statuses.append(send(api, content="c")[0])
        clock.advance(1)
        statuses.append(send(api, content="d")[0])
    assert refused[0] == 429 and refused[1]["retry-after"] == "6"
    assert statuses == [200, 429, 200]


def test_input_tokens_limit_enforced_per_second() -> None:
    clock = Clock()
    # 60,000 ITPM over 1 s: at most 1,000 tokens at once, refilled at 1,000 per second.
    with Simulator(itpm=60_000, enforce_interval=1, clock=clock) as sim:
        api = client(sim.base_url)
        big = "x" * 4 * 3000  # 3,000 tokens: admitted into a full bucket, which goes to -2,000
        assert send(api, content=big)[0] == 200
        clock.advance(2)
        status, headers = send(api, content="small")
        assert status == 429 and headers["retry-after"] == "1"
        assert headers["anthropic-ratelimit-input-tokens-limit"] == "60000"
        clock.advance(1)
        assert send(api, content="small")[0] == 200
    assert sim.stats()["rate_limited_by"]["input_tokens"] == 1


def test_external_load_shows_in_remaining_headers() -> None:
    clock = Clock()
    with Simulator(rpm=60, external_load=0.5, clock=clock) as sim:
        api = client(sim.base_url)
        burst = [send(api, content=str(i)) for i in range(60)]
        assert burst[-1][1]["anthropic-ratelimit-requests-remaining"] == "0"
        clock.advance(20)  # our own accounting: 20 requests refilled; the other client took half
        status, headers = send(api, content="after")
        assert status == 200
        assert headers["anthropic-ratelimit-requests-remaining"] == "9"
        more = [send(api, content=f"more {i}")[0] for i in range(10)]
    assert more == [200] * 9 + [429]
    refused = sim.log()[-1]
    assert refused["status"] == 429 and refused["limit"] == "requests"


def test_external_load_lengthens_retry_after() -> None:
    clock = Clock()
    with Simulator(rpm=6, external_load=0.5, clock=clock) as sim:
        api = client(sim.base_url)
        for i in range(6):
            assert send(api, content=str(i))[0] == 200
        status, headers = send(api, content="over")
    # One request refills in 10 s on our own; with half taken by the other client, 20 s.
    assert status == 429 and headers["retry-after"] == "20"


def test_no_limit_headers_mode_keeps_retry_after() -> None:
    with Simulator(rpm=1, send_limit_headers=False, clock=Clock()) as sim:
        api = client(sim.base_url)
        ok = send(api, content="a")
        refused = send(api, content="b")
    assert ok[0] == 200 and refused[0] == 429
    for _, headers in (ok, refused):
        assert not [h for h in headers if h.lower().startswith("anthropic-ratelimit-")]
    assert refused[1]["retry-after"] == "60"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"enforce_interval": 0}, "enforce_interval must be in", id="interval-0"),
        pytest.param({"enforce_interval": 61}, "enforce_interval must be in", id="interval-61"),
        pytest.param({"external_load": 1.0}, "external_load must be in", id="load-1"),
        pytest.param({"external_load": -0.1}, "external_load must be in", id="load-negative"),
        pytest.param({"class_limits": {"opus-5": 5}}, "must be a ClassLimits", id="bad-class"),
        pytest.param(
            {"batch_expire_rate": 0.6, "batch_error_rate": 0.6}, "batch expire", id="batch-rates"
        ),
    ],
)
def test_bad_config_is_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(RunnerInputError, match=message):
        SimConfig(**change)


def test_simulator_modules_import_no_cycle() -> None:
    """The import graph of runner/simulator (every import, TYPE_CHECKING ones too) is acyclic."""
    import ast
    from pathlib import Path

    import runner.simulator

    root = Path(runner.simulator.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in root.glob("*.py"):
        if path.stem == "__init__":
            continue
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            module = getattr(node, "module", None) if isinstance(node, ast.ImportFrom) else None
            if module and module.startswith("runner.simulator."):
                deps.add(module.rsplit(".", 1)[1])
        graph[path.stem] = deps
    assert "server" not in graph["http"] and "server" not in graph["exchange"]
    done: set[str] = set()

    def visit(module: str, stack: tuple[str, ...]) -> None:
        assert module not in stack, " -> ".join((*stack, module))
        if module in done:
            return
        for dep in graph.get(module, ()):
            visit(dep, (*stack, module))
        done.add(module)

    for module in graph:
        visit(module, ())
