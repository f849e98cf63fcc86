"""Limits learned from the account (issue 11): a default never refuses, learned limits do, each
model class has its own buckets, and the pacing mode follows what the account tolerates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support import api_env, cli, make_repos, messages, write_manifest

import runner.limiter.store as limiter_store
from runner.limiter import AcquireTimeout, Limiter, Limits, TooLarge
from runner.simulator import SimConfig, Simulator
from runner.simulator.buckets import ClassLimits

BIG = 3300  # helper lines: a pack of ~40,000 tokens, more than the default itpm of 30,000


def _big_manifest(tmp_path: Path, repos: int) -> Path:
    paths = make_repos(tmp_path / "repos", repos, lines=BIG)
    return write_manifest(tmp_path / "m.toml", paths, limits={}, max_input_tokens=40_000)


def test_headerless_api_fresh_state_runs_a_request_larger_than_the_default(
    tmp_path: Path, isolated_state: Path
) -> None:
    manifest = _big_manifest(tmp_path, 1)
    with Simulator(SimConfig(send_limit_headers=False)) as sim:
        result = cli("run", str(manifest), "--mode", "single", "--json", env=api_env(sim))
        sent = messages(sim)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["jobs"]["done"] == 1
    usage = sent[0]["usage"]
    assert len(sent) == 1 and usage["input_tokens"] + usage["cache_creation_input_tokens"] > 30_000
    note = "sends no rate-limit headers: the limits of sonnet-5 are unknown"
    assert result.stderr.count(note) == 1, result.stderr
    assert "pacing is at the built-in defaults (rpm 50, itpm 30,000, otpm 8,000)" in result.stderr
    status = json.loads(cli("limits", "status", "--json").stdout)
    assert status["limits"]["itpm"] == {
        "value": 30_000,
        "source": "default",
        "config": None,
        "headers": None,
    }


def test_learned_itpm_refuses_after_the_one_request_that_taught_it(
    tmp_path: Path, isolated_state: Path
) -> None:
    manifest = _big_manifest(tmp_path, 2)
    with Simulator(SimConfig(itpm=30_000)) as sim:
        first = cli("run", str(manifest), "--mode", "single", "--json", env=api_env(sim))
        assert len(messages(sim)) == 1  # the request that taught the limit, and no other
        again = cli("run", str(manifest), "--mode", "single", env=api_env(sim))
        assert len(messages(sim)) == 1  # the next run refuses before sending anything
    learned = "the itpm limit of 30,000 per minute (learned from the API's rate-limit headers"
    assert first.returncode == 1, first.stderr
    assert json.loads(first.stdout)["jobs"] == {
        "done": 1,
        "failed": 1,
        "deferred": 0,
        "pending": 0,
        "skipped": 0,
    }
    assert learned in first.stderr
    assert again.returncode == 2
    assert learned in again.stderr and "lower max_input_tokens in the manifest" in again.stderr
    assert "for sonnet-5 at http://127.0.0.1:" in again.stderr


def test_two_models_in_one_manifest_are_paced_on_separate_buckets(
    tmp_path: Path, isolated_state: Path
) -> None:
    repos = make_repos(tmp_path / "repos", 4)
    manifest = tmp_path / "two.toml"
    models = ["claude-sonnet-5-5", "claude-opus-5", "claude-sonnet-5-5", "claude-opus-5"]
    entries = ", ".join(
        f'{{path = "{r}", model = "{m}"}}' for r, m in zip(repos, models, strict=True)
    )
    manifest.write_text(
        'name = "two"\nmodel = "claude-sonnet-5-5"\nmode = "concurrent"\n'
        f'max_output_tokens = 512\nout = "{tmp_path / "reports"}"\nrepos = [{entries}]\n'
    )
    classes = {
        "sonnet-5": ClassLimits(rpm=300, itpm=200_000, otpm=50_000),
        "opus-5": ClassLimits(rpm=120, itpm=90_000, otpm=20_000),
    }
    with Simulator(SimConfig(class_limits=classes)) as sim:
        cli("budget", "set", "--usd", "50")
        result = cli("run", str(manifest), "--json", env=api_env(sim))
        stats = sim.stats()
        url = sim.base_url.rstrip("/")
    assert result.returncode == 0, result.stderr
    assert stats["rate_limited"] == 0
    status = json.loads(cli("limits", "status", "--json").stdout)
    learned = {
        doc["model_class"]: {k: (v["value"], v["source"]) for k, v in doc["limits"].items()}
        for doc in status["scopes"].values()
    }
    assert learned["sonnet-5"]["itpm"] == (200_000, "headers")
    assert learned["opus-5"]["itpm"] == (90_000, "headers")
    assert learned["opus-5"]["rpm"] == (120, "headers")
    assert {doc["account"] for doc in status["scopes"].values()} == {url}
    text = cli("limits", "status").stdout
    assert f"{url} sonnet-5" in text and f"{url} opus-5" in text


class _Clock:
    """limiter.db's clock (read inside each transaction), moved by hand."""

    def __init__(self, start: float) -> None:
        self.now = start

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock(1_900_000_000.0)
    monkeypatch.setattr(limiter_store.LimiterStore, "clock", lambda _self, _conn: fake.time())
    return fake


def _granted_at_once(limiter: Limiter, model: str | None = None) -> int:
    granted = 0
    while True:
        try:
            limiter.acquire(1, 0, timeout=0, model=model)
        except AcquireTimeout:
            return granted
        granted += 1


ROOMY = {"anthropic-ratelimit-requests-limit": "60", "anthropic-ratelimit-requests-remaining": "60"}
MODEL = "claude-sonnet-5-5"
BASE = "http://127.0.0.1:9"


def _fresh(tmp_path: Path, burst: float | None) -> Limiter:
    limits = Limits(rpm=60, itpm=10**9, otpm=10**9, max_concurrent=1000)
    return Limiter(tmp_path, limits, burst=burst, base_url=BASE)


@pytest.mark.parametrize(("burst", "allowed"), [(None, 60), (10.0, 10), (0.0, 1)])
def test_after_observe_and_a_quiet_spell_no_more_than_the_mode_allows_at_once(
    tmp_path: Path, clock: _Clock, burst: float | None, allowed: int
) -> None:
    limiter = _fresh(tmp_path, burst)
    limiter.observe(ROOMY, model=MODEL)  # the scope is known: its requests need not go alone
    _granted_at_once(limiter, MODEL)  # drain
    clock.now += 600  # a quiet spell
    limiter.observe(ROOMY, model=MODEL)  # the server says its bucket is full
    assert _granted_at_once(limiter, MODEL) == allowed
    clock.now += 1.1  # a request's refill at 60 rpm, and strict pacing's slack
    limiter.observe(ROOMY, model=MODEL)
    assert _granted_at_once(limiter, MODEL) == (1 if burst == 0.0 else min(allowed, 60))


def test_strict_account_never_spends_more_than_its_own_accounting(
    tmp_path: Path, clock: _Clock
) -> None:
    limiter = _fresh(tmp_path, None)
    limiter.observe(ROOMY, model=MODEL)
    lease = limiter.acquire(1, 0, model=MODEL)
    assert limiter.rate_limited(lease, "requests") is True  # a 429 although the server said room
    _granted_at_once(limiter, MODEL)
    for _ in range(3):
        clock.now += 600
        limiter.observe(ROOMY, model=MODEL)
        assert _granted_at_once(limiter, MODEL) == 1  # only what the next request needs
    # The server's lower view still slows it down.
    clock.now += 600
    limiter.observe({**ROOMY, "anthropic-ratelimit-requests-remaining": "0"}, model=MODEL)
    assert _granted_at_once(limiter, MODEL) == 0


def test_a_429_explained_by_the_headers_keeps_the_burst_mode(tmp_path: Path, clock: _Clock) -> None:
    limiter = _fresh(tmp_path, None)
    limiter.observe(ROOMY, model=MODEL)
    lease = limiter.acquire(1, 0, model=MODEL)
    # Another reply, before this one's 429: the server's bucket is empty (another client).
    limiter.observe({**ROOMY, "anthropic-ratelimit-requests-remaining": "0"}, model=MODEL)
    assert limiter.rate_limited(lease, "requests") is False  # the headers had said: no room
    assert limiter.status(MODEL)["pacing"] == "burst"


def _status_json(state: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "runner", "limits", "status", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "REVIEW_RUNNER_HOME": str(state)},
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def test_switch_to_strict_after_a_429_with_room_persists_across_runs(
    tmp_path: Path, isolated_state: Path
) -> None:
    first = Limiter(isolated_state, None, burst=None, base_url=BASE)
    first.observe(ROOMY, model=MODEL)
    assert first.status(MODEL)["pacing"] == "burst"
    lease = first.acquire(1, 0, model=MODEL)
    assert first.rate_limited(lease, "requests") is True
    assert first.rate_limited(lease, "requests") is False  # already strict: no second switch
    first.close()
    doc = _status_json(isolated_state)  # another process, later
    account = doc["accounts"][BASE]
    assert account["pacing"] == "strict"
    assert "a 429 on requests" in account["reason"]
    assert doc["scopes"][f"{BASE} sonnet-5"]["pacing"] == "strict"
    text = cli("limits", "status").stdout
    assert f"{BASE}: strict pacing since" in text
    # A later run of the same account paces strictly from its first grant.
    later = Limiter(isolated_state, None, burst=None, base_url=BASE)
    assert later.status(MODEL)["pacing"] == "strict"
    # Another account keeps its own mode.
    other = Limiter(isolated_state, None, burst=None, base_url="http://127.0.0.1:10")
    assert other.status(MODEL)["pacing"] == "burst"


def test_default_limit_never_refuses_but_learned_and_configured_ones_do(
    tmp_path: Path, clock: _Clock
) -> None:
    limiter = Limiter(tmp_path, None, base_url=BASE)
    limiter.observe(ROOMY, model=MODEL)  # learned rpm only; itpm is still the default 30,000
    assert limiter.refusal(MODEL, 40_000, 100) is None
    lease = limiter.acquire(40_000, 100, model=MODEL, timeout=0)  # alone, the bucket full
    with pytest.raises(AcquireTimeout):  # nothing else of its scope goes beside it
        limiter.acquire(40_000, 100, model=MODEL, timeout=0)
    limiter.observe({"anthropic-ratelimit-input-tokens-limit": "30000"}, model=MODEL)
    limiter.settle(lease, {"input_tokens": 40_000, "output_tokens": 100})
    with pytest.raises(TooLarge, match="learned from the API's rate-limit headers for sonnet-5"):
        limiter.acquire(40_000, 100, model=MODEL, timeout=0)
    assert "itpm limit of 30,000" in (limiter.refusal(MODEL, 40_000, 100) or "")
    # Another model class has learned nothing: its default does not refuse.
    assert limiter.refusal("claude-opus-5", 40_000, 100) is None
    configured = Limiter(tmp_path / "c", Limits(itpm=20_000))
    with pytest.raises(TooLarge, match=r"configured in \[limits\]"):
        configured.acquire(25_000, 10, timeout=0)


def test_remaining_is_brought_forward_past_the_grants_made_since(
    tmp_path: Path, clock: _Clock
) -> None:
    limiter = _fresh(tmp_path, None)
    limiter.observe(ROOMY, model=MODEL)
    first = limiter.acquire(1, 0, model=MODEL)
    for _ in range(4):  # granted after `first` reached the server: not in its headers
        limiter.acquire(1, 0, model=MODEL)
    clock.now += 0.5  # half a request of refill since
    counted = {**ROOMY, "anthropic-ratelimit-requests-remaining": "59"}
    limiter.observe(counted, model=MODEL, lease=first)
    assert _granted_at_once(limiter, MODEL) == 55  # 59 + 0.5 - 4, not the stale 59


INPUT = "anthropic-ratelimit-input-tokens-"


def _input_level(limiter: Limiter) -> float:
    return float(limiter.status(MODEL)["levels"]["input_tokens"]["level"])


def test_a_response_whose_input_was_below_its_estimate_is_counted_once(
    tmp_path: Path, clock: _Clock
) -> None:
    limiter = _fresh(tmp_path, None)
    limiter.observe({INPUT + "limit": "60000", INPUT + "remaining": "60000"}, model=MODEL)
    lease = limiter.acquire(2000, 0, model=MODEL)
    usage = {"input_tokens": 1200, "cache_creation_input_tokens": 300, "output_tokens": 0}
    # The server counted the 1,500 it used; the level holds the estimate of 2,000 until settle.
    limiter.observe({INPUT + "remaining": "10000"}, model=MODEL, lease=lease, usage=usage)
    limiter.settle(lease, usage)
    assert _input_level(limiter) == 10_000  # the server's view, not 10,500 (the refund twice)


def test_a_429_after_grants_the_last_headers_did_not_cover_keeps_the_burst_mode(
    tmp_path: Path, clock: _Clock
) -> None:
    limiter = _fresh(tmp_path, None)
    limiter.observe({INPUT + "limit": "60000", INPUT + "remaining": "60000"}, model=MODEL)
    earlier = limiter.acquire(5000, 0, model=MODEL)
    limiter.observe({INPUT + "remaining": "1000"}, model=MODEL)  # room for one more of 800
    limiter.release(earlier)  # its refund lifts the level above the server's view
    clock.now += 0.001
    limiter.acquire(800, 0, model=MODEL)
    clock.now += 0.001
    second = limiter.acquire(800, 0, model=MODEL)
    # The 1,000 the headers showed went to the first: the 429 on the second was foreseen.
    assert limiter.rate_limited(second, "input_tokens") is False
    assert limiter.status(MODEL)["pacing"] == "burst"


def _reset_in(clock: _Clock, seconds: float) -> str:
    return datetime.fromtimestamp(clock.now + seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(("reset_in", "switched"), [(2.0, True), (50.0, False)])
def test_a_429_showing_a_bucket_full_again_in_seconds_switches_to_strict(
    tmp_path: Path, clock: _Clock, reset_in: float, switched: bool
) -> None:
    limiter = _fresh(tmp_path, None)
    limiter.observe({INPUT + "limit": "60000", INPUT + "remaining": "60000"}, model=MODEL)
    earlier = limiter.acquire(5000, 0, model=MODEL)
    limiter.observe({INPUT + "remaining": "1000"}, model=MODEL)
    limiter.release(earlier)
    lease = limiter.acquire(1600, 0, model=MODEL)  # more than the server's last view
    headers = {
        INPUT + "limit": "60000",
        INPUT + "remaining": "0",
        INPUT + "reset": _reset_in(clock, reset_in),
    }
    # Full in 2 s: the bucket holds ~2,000 of a 60,000 limit, enforced over a short interval.
    # Full in 50 s: a minute's bucket that another client emptied; pacing stays as it was.
    assert limiter.rate_limited(lease, "input_tokens", headers) is switched
    assert limiter.status(MODEL)["pacing"] == ("strict" if switched else "burst")
