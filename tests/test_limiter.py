"""runner.limiter in one process: limits, debits, corrections, cooldown, health, errors, CLI."""

from __future__ import annotations

import json
import pickle
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from runner.cli import main
from runner.errors import RunnerInputError, StateError
from runner.limiter import DEFAULT_LIMITS, AcquireTimeout, Lease, Limiter, Limits
from runner.limiter.store import iso

# Fast enough that a first grant from an empty bucket takes milliseconds.
FAST = Limits(rpm=600_000, itpm=60_000_000, otpm=6_000_000, max_concurrent=8)


def stored_levels(state: Path) -> dict[str, float]:
    with sqlite3.connect(state / "limiter.db") as conn:
        return dict(conn.execute("SELECT name, level FROM buckets"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"rpm": 0}, "limit rpm must be positive, got 0", id="zero-rpm"),
        pytest.param({"itpm": -5}, "limit itpm must be positive, got -5", id="negative-itpm"),
        pytest.param({"max_concurrent": 0}, "limit max_concurrent must be positive", id="zero-cap"),
        pytest.param({"otpm": 1.5}, "limit otpm must be a whole number, got 1.5", id="float"),
        pytest.param({"rpm": True}, "limit rpm must be a whole number, got True", id="bool"),
    ],
)
def test_bad_limit_is_an_input_error_naming_it(kwargs: dict, message: str) -> None:
    with pytest.raises(RunnerInputError, match=message):
        Limits(**kwargs)


def test_defaults_then_config_then_min_with_headers(tmp_path: Path) -> None:
    limiter = Limiter(tmp_path)
    doc = limiter.status()
    assert {k: (v["value"], v["source"]) for k, v in doc["limits"].items()} == {
        "rpm": (DEFAULT_LIMITS.rpm, "default"),
        "itpm": (DEFAULT_LIMITS.itpm, "default"),
        "otpm": (DEFAULT_LIMITS.otpm, "default"),
        "max_concurrent": (DEFAULT_LIMITS.max_concurrent, "default"),
    }
    Limiter(tmp_path, Limits(rpm=100, itpm=50_000))
    limiter.observe(
        {
            "anthropic-ratelimit-requests-limit": "80",
            "Anthropic-RateLimit-Input-Tokens-Limit": "90000",
            "anthropic-ratelimit-output-tokens-limit": "16000",
        }
    )
    limits = Limiter(tmp_path).status()["limits"]  # a later process sees the persisted values
    assert (limits["rpm"]["value"], limits["rpm"]["source"]) == (80, "headers")
    assert (limits["itpm"]["value"], limits["itpm"]["source"]) == (50_000, "config")
    assert (limits["otpm"]["value"], limits["otpm"]["source"]) == (16_000, "headers")
    assert limits["itpm"]["headers"] == 90_000
    Limiter(tmp_path, Limits())  # explicit empty configuration clears it
    limits = Limiter(tmp_path).status()["limits"]
    assert (limits["itpm"]["value"], limits["itpm"]["source"]) == (90_000, "headers")
    assert limits["max_concurrent"]["source"] == "default"


def test_estimate_above_capacity_is_an_error_naming_the_limit(tmp_path: Path) -> None:
    limiter = Limiter(tmp_path, Limits(itpm=30_000, otpm=8_000))
    with pytest.raises(RunnerInputError) as err:
        limiter.acquire(100_000, 10)
    assert str(err.value) == (
        "input estimate of 100,000 tokens exceeds the itpm limit of 30,000 per minute "
        "(configured in [limits] or on the command line); it could never be granted"
    )
    with pytest.raises(RunnerInputError, match="output estimate of 9,000 tokens exceeds the otpm"):
        limiter.acquire(10, 9_000)
    with pytest.raises(RunnerInputError, match="input_tokens must be a non-negative integer"):
        limiter.acquire(-1, 10)
    doc = limiter.status()
    assert doc["in_flight"] == [] and doc["waiters"] == []


def test_settle_corrects_to_actual_usage_without_cache_reads(tmp_path: Path) -> None:
    limiter = Limiter(tmp_path, FAST)
    lease = limiter.acquire(3_000, 1_000)
    assert isinstance(lease, Lease) and (lease.input_tokens, lease.output_estimate) == (
        3_000,
        1_000,
    )
    assert stored_levels(tmp_path) == {"requests": 0.0, "input_tokens": 0.0, "output_tokens": 0.0}
    limiter.settle(
        lease,
        {
            "input_tokens": 1_000,
            "cache_creation_input_tokens": 500,
            "cache_read_input_tokens": 5_000,
            "output_tokens": 1_200,
        },
    )
    # 3000 estimated, 1500 counted (cache reads are free for ITPM); 200 more output than estimated.
    assert stored_levels(tmp_path) == {
        "requests": 0.0,
        "input_tokens": 1_500.0,
        "output_tokens": -200.0,
    }
    assert limiter.status()["in_flight"] == []
    limiter.settle(lease, {"input_tokens": 0, "output_tokens": 0})  # twice: no second refund
    assert stored_levels(tmp_path)["input_tokens"] == 1_500.0


def test_release_refunds_the_whole_debit_and_frees_the_slot(tmp_path: Path) -> None:
    limiter = Limiter(tmp_path, FAST)
    lease = limiter.acquire(2_000, 500)
    assert [x["input_tokens"] for x in limiter.status()["in_flight"]] == [2_000]
    limiter.release(lease)
    assert stored_levels(tmp_path) == {
        "requests": 1.0,
        "input_tokens": 2_000.0,
        "output_tokens": 500.0,
    }
    assert limiter.status()["in_flight"] == []


def test_in_flight_cap_times_out_and_leaves_no_ticket(tmp_path: Path) -> None:
    limiter = Limiter(tmp_path, Limits(rpm=600_000, itpm=60_000_000, max_concurrent=2))
    first, second = limiter.acquire(10, 10), limiter.acquire(10, 10)
    with pytest.raises(AcquireTimeout, match=r"no grant for 10 input \+ 10 output tokens within"):
        limiter.acquire(10, 10, timeout=0.3)
    doc = limiter.status()
    assert len(doc["in_flight"]) == 2 and doc["waiters"] == []
    limiter.settle(first, {"input_tokens": 10, "output_tokens": 10})
    third = limiter.acquire(10, 10, timeout=5)
    assert third.id not in (first.id, second.id)


def test_penalize_pauses_admission_and_empties_the_bucket(tmp_path: Path) -> None:
    limiter = Limiter(tmp_path, FAST)
    limiter.release(limiter.acquire(1_000, 10))  # leaves input credit in the bucket
    assert stored_levels(tmp_path)["input_tokens"] > 0
    limiter.penalize(0.5, "input_tokens")
    doc = limiter.status()
    assert doc["cooldown_until"] is not None and doc["cooldown_limit"] == "input_tokens"
    assert stored_levels(tmp_path)["input_tokens"] <= 0
    until = time.time() + 0.4
    lease = limiter.acquire(10, 10, timeout=5)
    assert lease.granted_at >= until
    with pytest.raises(RunnerInputError, match="unknown limit 'tokens'"):
        limiter.penalize(1, "tokens")


def test_observe_clamps_levels_to_the_server_remaining(tmp_path: Path) -> None:
    limiter = Limiter(tmp_path, FAST)
    limiter.release(limiter.acquire(5_000, 1_000))
    limiter.observe(
        {
            "anthropic-ratelimit-input-tokens-remaining": "2000",
            "anthropic-ratelimit-output-tokens-remaining": "junk",
        }
    )
    levels = stored_levels(tmp_path)
    assert levels["input_tokens"] == 2_000.0 and levels["output_tokens"] == 1_000.0
    limiter.observe({"anthropic-ratelimit-input-tokens-remaining": "900000"})  # never raises
    assert stored_levels(tmp_path)["input_tokens"] == 2_000.0


def test_old_leases_are_reclaimed_at_the_next_acquire(tmp_path: Path) -> None:
    limiter = Limiter(tmp_path, FAST, lease_max_age=0.2)
    stale = limiter.acquire(10, 10)
    time.sleep(0.3)
    fresh = limiter.acquire(10, 10)
    assert [x["id"] for x in limiter.status()["in_flight"]] == [fresh.id]
    limiter.settle(stale, {"input_tokens": 0, "output_tokens": 0})  # reclaimed: no refund
    assert [x["id"] for x in limiter.status()["in_flight"]] == [fresh.id]


def test_health_turns_busy_after_rate_limit_errors(tmp_path: Path) -> None:
    limiter = Limiter(tmp_path, FAST)
    for latency in (1.0, 2.0, 3.0, 4.0):
        limiter.record(status=200, latency=latency)
    health = limiter.health()
    assert health.ok and health.recent_429s == 0
    assert (health.latency_p50, health.latency_p95) == (3.0, 4.0)
    assert set(health.utilisation) == {"requests", "input_tokens", "output_tokens"}
    for _ in range(3):
        limiter.record(status=429, latency=None)
    health = limiter.health()
    assert not health.ok and health.recent_429s == 3
    assert (
        health.reason == "3 rate-limit or overload errors in the last 10 minutes (3 x 429, 0 x 529)"
    )
    assert limiter.status()["recent_429s"] == 3


def test_samples_older_than_an_hour_are_pruned(tmp_path: Path) -> None:
    limiter = Limiter(tmp_path, FAST)
    with sqlite3.connect(tmp_path / "limiter.db") as conn:
        conn.execute(
            "INSERT INTO samples (at, status, latency) VALUES (?, 429, NULL)",
            (iso(time.time() - 3700),),
        )
    limiter.record(status=200, latency=0.5)
    with sqlite3.connect(tmp_path / "limiter.db") as conn:
        assert conn.execute("SELECT status FROM samples").fetchall() == [(200,)]


def test_pickled_limiter_reopens_its_own_connection(tmp_path: Path) -> None:
    limiter = Limiter(tmp_path, FAST)
    clone = pickle.loads(pickle.dumps(limiter))
    lease = clone.acquire(10, 10)
    assert [x["id"] for x in limiter.status()["in_flight"]] == [lease.id]
    clone.close()
    limiter.close()


def test_state_files_are_private(tmp_path: Path) -> None:
    Limiter(tmp_path / "state").close()
    for name in ("limiter.db", "limiter.lock"):
        assert (tmp_path / "state" / name).stat().st_mode & 0o777 == 0o600


def test_corrupt_database_is_a_state_error_and_cli_exit_2(
    tmp_path: Path, isolated_state: Path
) -> None:
    isolated_state.mkdir(parents=True)
    bad = isolated_state / "limiter.db"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match=f"{bad}: not a readable limiter database"):
        Limiter(isolated_state)
    result = CliRunner().invoke(main, ["limits", "status"])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {bad}: not a readable limiter database")
    assert bad.read_bytes() == b"this is not a database" * 100  # never reset


def test_unwritable_database_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "limiter.db").mkdir()  # works even as root, unlike chmod
    with pytest.raises(
        StateError, match=f"{tmp_path / 'limiter.db'}: cannot open the limiter database"
    ):
        Limiter(tmp_path)


def test_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    Limiter(tmp_path).close()
    with sqlite3.connect(tmp_path / "limiter.db") as conn:
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
            " VALUES ('review_runner.limiter', 'm099_from_the_future', '2030-01-01')"
        )
    before = (tmp_path / "limiter.db").read_bytes()
    with pytest.raises(StateError, match="written by a newer review-runner"):
        Limiter(tmp_path)
    assert (tmp_path / "limiter.db").read_bytes() == before


def test_cli_status_json_has_the_documented_keys(isolated_state: Path) -> None:
    limiter = Limiter(isolated_state, Limits(rpm=120, max_concurrent=3))
    lease = limiter.acquire(0, 0)
    result = CliRunner().invoke(main, ["limits", "status", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {"limits", "levels", "in_flight", "waiters", "cooldown_until", "recent_429s"} <= set(doc)
    assert {"latency_p50", "latency_p95"} <= set(doc)
    assert doc["limits"]["rpm"] == {
        "value": 120,
        "source": "config",
        "config": 120,
        "headers": None,
    }
    assert doc["limits"]["max_concurrent"]["value"] == 3
    assert [x["id"] for x in doc["in_flight"]] == [lease.id]
    assert set(doc["in_flight"][0]) >= {"pid", "age_s", "input_tokens", "output_estimate"}
    text = CliRunner().invoke(main, ["limits", "status"])
    assert text.exit_code == 0
    assert "rpm                    120 requests/min       (from config)" in text.stdout
    assert "In flight: 1" in text.stdout


def test_threads_of_one_process_share_the_in_flight_cap(tmp_path: Path) -> None:
    limiter = Limiter(tmp_path, Limits(rpm=600_000, itpm=10**9, otpm=10**9, max_concurrent=2))
    guard = threading.Lock()
    in_flight, peak, granted = 0, 0, []

    def work() -> None:
        nonlocal in_flight, peak
        for _ in range(20):
            lease = limiter.acquire(5, 5, timeout=30)
            with guard:
                in_flight += 1
                peak = max(peak, in_flight)
                granted.append(lease.id)
            time.sleep(0.002)
            with guard:
                in_flight -= 1
            limiter.settle(lease, {"input_tokens": 5, "output_tokens": 5})

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(granted) == 120
    assert peak <= 2
    assert limiter.status()["in_flight"] == []


@pytest.mark.parametrize(
    "burst",
    [
        pytest.param(0.0, id="strict-pacing-keeps-only-one-request"),
        pytest.param(60.0, id="platform-bucket-keeps-idle-refill"),
    ],
)
def test_idle_refill_is_kept_only_as_burst_allows(tmp_path: Path, burst: float) -> None:
    limiter = Limiter(tmp_path, Limits(rpm=120, itpm=10**9, otpm=10**9), burst=burst)
    # A new limiter is as if idle for a minute: strict pacing keeps one request of it, the
    # platform's bucket all 120. Spend it, so that only the idle time below refills.
    drained = 0
    with pytest.raises(AcquireTimeout):
        while drained <= 120:
            limiter.settle(
                limiter.acquire(1, 1, timeout=0), {"input_tokens": 1, "output_tokens": 1}
            )
            drained += 1
    assert drained == (120 if burst else 1)
    # 2 requests per second: at least 1.2 s idle refills at least 2.4 requests' worth. A busy
    # machine only sleeps longer, so the counts below are bounds by the time measured.
    idle_from = time.monotonic()
    time.sleep(1.2)
    leases = []
    with pytest.raises(AcquireTimeout):
        for _ in range(130):
            leases.append(limiter.acquire(1, 1, timeout=0))
    refilled = 2 * (time.monotonic() - idle_from)
    if burst:
        assert 2 <= len(leases) <= int(refilled) + 1
    else:
        # Strict pacing keeps one request's worth however long the idle time was; a second
        # needs another 0.5 s, which only a stalled acquire loop could have waited.
        assert 1 <= len(leases) <= 1 + int(refilled - 2 * 1.2 + 0.5)
    with pytest.raises(RunnerInputError, match="burst must be zero or positive, got -1"):
        Limiter(tmp_path, burst=-1)


def test_limits_in_force_are_the_values_status_shows(tmp_path: Path) -> None:
    limiter = Limiter(tmp_path, Limits(rpm=7, max_concurrent=2))
    shown = {name: row["value"] for name, row in limiter.status()["limits"].items()}
    assert (
        limiter.limits_in_force()
        == shown
        == {
            "rpm": 7,
            "itpm": 30_000,
            "otpm": 8_000,
            "max_concurrent": 2,
        }
    )
