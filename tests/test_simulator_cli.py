"""`review-runner simulator serve` as a real process: URL on stdout, SDK works, clean stop on signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import anthropic
import pytest

MODEL = "claude-sonnet-5-5"


def start(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "simulator", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()  # printed and flushed before serving
    assert url.startswith("http://127.0.0.1:"), (
        url,
        proc.stderr.read() if proc.poll() is not None else "",
    )
    return proc, url


@pytest.mark.parametrize(
    "sig", [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]
)
def test_serve_prints_url_serves_and_stops_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    log = tmp_path / "requests.jsonl"
    proc, url = start("--port", "0", "--rpm", "2", "--log", str(log))
    try:
        api = anthropic.Anthropic(api_key="x", base_url=url, max_retries=0, timeout=20)
        body = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
        raw = api.messages.with_raw_response.create(**body)
        assert raw.headers["anthropic-ratelimit-requests-limit"] == "2"
        api.messages.create(**body)
        with pytest.raises(anthropic.RateLimitError):
            api.messages.create(**body)
    finally:
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "simulator stopped: 3 requests, 1 rate-limited" in err
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["status"] for r in records] == [200, 200, 429]
    assert records[2]["limit"] == "requests"


def test_serve_limit_flags_reach_the_simulator() -> None:
    proc, url = start(
        "--rpm", "6", "--enforce-interval", "10", "--class-limit", "opus-5:rpm=1",
        "--no-limit-headers", "--batch-error-rate", "1",
    )  # fmt: skip
    try:
        api = anthropic.Anthropic(api_key="x", base_url=url, max_retries=0, timeout=20)
        statuses: dict[str, list[int]] = {}
        for model in (MODEL, "claude-opus-5-5"):
            for _ in range(2):
                body = {
                    "model": model,
                    "max_tokens": 5,
                    "messages": [{"role": "user", "content": "q"}],
                }
                try:
                    raw = api.messages.with_raw_response.create(**body)
                    status, headers = raw.status_code, raw.headers
                except anthropic.RateLimitError as exc:
                    status, headers = 429, exc.response.headers
                    # A bucket of one request refilled in 10 s; Opus: 1 RPM, a bucket of 1/6.
                    wait = int(headers["retry-after"])
                    assert 1 <= wait <= 10 if model == MODEL else 50 <= wait <= 60
                assert not [h for h in headers if h.startswith("anthropic-ratelimit-")]
                statuses.setdefault(model, []).append(status)
        batch = api.messages.batches.create(requests=[{"custom_id": "a", "params": body}])
        result = next(iter(api.messages.batches.results(batch.id))).result
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert statuses == {MODEL: [200, 429], "claude-opus-5-5": [200, 429]}
    assert result.type == "errored"
    assert result.error.error.type in {"api_error", "overloaded_error"}


def test_fault_rate_shorthand_splits_three_ways(tmp_path: Path) -> None:
    proc, url = start("--fault-rate", "0.9", "--seed", "3")
    try:
        api = anthropic.Anthropic(api_key="x", base_url=url, max_retries=0, timeout=20)
        kinds = set()
        for i in range(40):
            try:
                api.messages.create(
                    model=MODEL, max_tokens=5, messages=[{"role": "user", "content": str(i)}]
                )
                kinds.add("ok")
            except anthropic.APIStatusError as exc:
                kinds.add(exc.status_code)
            except anthropic.APIConnectionError:
                kinds.add("dropped")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert {500, 529, "dropped"} <= kinds


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", "simulator", "serve", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_serve_help() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for option in (
        "--rpm",
        "--itpm",
        "--otpm",
        "--max-concurrent",
        "--latency",
        "--per-token",
        "--fault-rate",
        "--spend-cap-usd",
        "--seed",
        "--log",
        "--enforce-interval",
        "--external-load",
        "--class-limit",
        "--no-limit-headers",
        "--batch-expire-rate",
        "--batch-error-rate",
    ):
        assert option in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(("--fault-rate", "2"), "--fault-rate", id="rate-above-one"),
        pytest.param(("--rpm", "0"), "--rpm", id="zero-rpm"),
        pytest.param(("--latency", "-1"), "--latency", id="negative-latency"),
        pytest.param(("--enforce-interval", "0"), "--enforce-interval", id="interval-zero"),
        pytest.param(("--external-load", "1"), "--external-load", id="load-one"),
        pytest.param(
            ("--class-limit", "opus-5:tpm=3"), "'tpm=3' is not rpm=N", id="class-limit-key"
        ),
        pytest.param(("--class-limit", "opus-5"), "expected CLASS:rpm=N", id="class-limit-shape"),
    ],
)
def test_serve_rejects_bad_options(args: tuple[str, ...], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_serve_rejects_fault_rates_over_one() -> None:
    result = run_cli("--overloaded-rate", "0.6", "--server-error-rate", "0.6")
    assert result.returncode == 2
    assert "Error: simulator fault rates must be >= 0 and sum to at most 1" in result.stderr


def test_serve_reports_a_busy_port() -> None:
    proc, url = start()
    try:
        port = url.rsplit(":", 1)[1]
        result = run_cli("--port", port)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert result.returncode == 2
    assert f"Error: simulator cannot listen on 127.0.0.1:{port}" in result.stderr
