"""The reserved worst case bounds what the API can bill for a request, on every path.

A 1-hour cache write is priced at its own rate; a repacked prompt is reserved for what is sent;
a local estimate (count_tokens failed) carries ESTIMATE_MARGIN; a gateway's own 5xx may come
after the API billed, so it stays charged as unknown, while the API's own 5xx is released.
"""

from __future__ import annotations

import http.server
import math
import signal
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support import make_repos, messages, write_manifest

from jobs.manifest import load_manifest
from jobs.pack_format import estimate_tokens
from ledger.ledger import JobEstimate, Ledger
from ledger.modes import Mode
from ledger.prices import load_prices, worst_case_micros
from ledger.projection import ESTIMATE_MARGIN
from runner.client import ApiClient, CallError
from runner.kinds import ErrorKind, JobStatus, RunStatus
from runner.run import RunOptions, load_config, run
from runner.run import worker as worker_module
from runner.run.job import Job
from runner.run.plan import TOOL_TOKENS, build_jobs, pack_all, with_prompts
from runner.run.worker import WorkerConfig, init_worker, run_job
from runner.runs import Runs
from runner.simulator import SimConfig, Simulator
from statedb import StatePaths

MODEL = "claude-sonnet-5-5"
PRICE = load_prices()[MODEL]


def _entries(state: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(state / "ledger.db") as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM entries ORDER BY id").fetchall()


def _works(tmp_path: Path, state: Path, *, lines: int = 300) -> tuple[Any, dict[str, Any]]:
    manifest = load_manifest(
        write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 1, lines=lines))
    )
    works = with_prompts(pack_all(manifest.repos, state / "repos"), manifest)
    Runs(StatePaths(state).runs).open()
    return manifest, {w.spec.slug: w for w in works}


def _in_process(config: WorkerConfig, repos: dict[str, Any]) -> None:
    previous = signal.getsignal(signal.SIGINT)
    init_worker(config, repos)  # it ignores SIGINT, as a worker process does
    signal.signal(signal.SIGINT, previous)


# -- 1-hour cache writes -----------------------------------------------------------------------


def test_a_one_hour_cache_write_is_reserved_at_its_own_rate(
    tmp_path: Path, isolated_state: Path
) -> None:
    with Ledger(isolated_state / "l.db") as ledger:
        five = ledger.reserve("r", "a", MODEL, 10_000, 1000, counted=True)
        hour = ledger.reserve("r", "b", MODEL, 10_000, 1000, counted=True, cache_ttl="1h")
    assert five.worst_micros == 10_000 * PRICE.cache_write_5m + 1000 * PRICE.output
    assert hour.worst_micros == 10_000 * PRICE.cache_write_1h + 1000 * PRICE.output
    estimate = JobEstimate("a", MODEL, 10_000, 0, counted=True, cache_write_tokens=10_000)
    with Ledger(isolated_state / "p.db") as ledger:
        projected = ledger.project("concurrent", [replace(estimate, cache_ttl="1h")])
    assert projected.worst_micros == 10_000 * PRICE.cache_write_1h
    assert projected.cost_micros == 10_000 * PRICE.cache_write_1h

    # Through the worker: a warm-up that writes the pack with the 1-hour TTL.
    manifest, repos = _works(tmp_path, isolated_state)
    work = next(iter(repos.values()))
    prefix = TOOL_TOKENS + estimate_tokens(work.prompts.system) + estimate_tokens(work.prompts.pack)
    warm = build_jobs(
        "R", manifest, list(repos.values()), Mode.CONCURRENT, {work.spec.slug: prefix}
    )[0]
    assert warm.warm
    with Simulator(SimConfig(seed=1)) as sim:
        _in_process(
            WorkerConfig(state_dir=isolated_state, base_url=sim.base_url, api_key="k"), repos
        )
        outcome = run_job(replace(warm, cache_ttl="1h"))
        [billed] = messages(sim)
    assert outcome.status == JobStatus.DONE
    [entry] = _entries(isolated_state)
    assert entry["worst_micros"] == worst_case_micros(PRICE, prefix, 0, cache_ttl="1h")
    assert entry["worst_micros"] == prefix * PRICE.cache_write_1h
    assert billed["usage"]["cache_creation"]["ephemeral_1h_input_tokens"] > 0
    assert entry["cost_micros"] == billed["cost_micros"] <= entry["worst_micros"]


# -- a repacked prompt -------------------------------------------------------------------------


class _TooLongOnce:
    """The real client, but the first request is refused as too long (as the API does)."""

    def __init__(self, real: ApiClient) -> None:
        self.real = real
        self.sent: list[dict[str, Any]] = []

    @property
    def endpoint(self) -> str:
        return self.real.endpoint

    def create(self, **request: Any) -> Any:
        self.sent.append(request)
        if len(self.sent) == 1:
            raise CallError(
                ErrorKind.TOO_LONG, "HTTP 400 invalid_request_error: prompt is too long", status=400
            )
        return self.real.create(**request)


def test_a_repacked_prompt_is_reserved_for_the_prompt_sent(
    tmp_path: Path, isolated_state: Path
) -> None:
    manifest, repos = _works(tmp_path, isolated_state)
    [job] = build_jobs("R", manifest, list(repos.values()), Mode.SINGLE)
    with Simulator(SimConfig(seed=2)) as sim:
        _in_process(
            WorkerConfig(state_dir=isolated_state, base_url=sim.base_url, api_key="k"), repos
        )
        assert worker_module._CTX is not None
        fake = _TooLongOnce(worker_module._CTX.client)
        worker_module._CTX.client = fake  # type: ignore[assignment]
        outcome = run_job(job)
        [billed] = messages(sim)
    assert outcome.status == JobStatus.DONE
    first, second = _entries(isolated_state)
    assert first["state"] == "released" and second["state"] == "settled"
    # The second request is the shrunk prompt; its reservation is sized on exactly those texts.
    resent = fake.sent[1]
    assert len(resent["blocks"][0]["text"]) < len(fake.sent[0]["blocks"][0]["text"])
    sent_estimate = (
        TOOL_TOKENS
        + estimate_tokens(resent["system"])
        + sum(estimate_tokens(b["text"]) for b in resent["blocks"])
    )
    assert second["input_estimate"] == sent_estimate and second["counted"] == 0
    assert second["worst_tokens"] == math.ceil(sent_estimate * ESTIMATE_MARGIN) + job.max_output
    assert (
        billed["usage"]["input_tokens"] + billed["usage"]["output_tokens"] <= second["worst_tokens"]
    )
    assert second["cost_micros"] <= second["worst_micros"]


# -- count_tokens unavailable ------------------------------------------------------------------


def test_a_failed_count_tokens_reserves_the_local_estimate_with_its_margin(
    tmp_path: Path, isolated_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 2), mode="single")

    def refused(self: ApiClient, **_: Any) -> int:
        raise CallError(
            ErrorKind.NOT_SENT, "could not reach the API ([Errno 111] Connection refused)"
        )

    monkeypatch.setattr(ApiClient, "count_tokens", refused)  # in this process: the plan's count
    config = load_config(load_manifest(manifest), RunOptions(), isolated_state)
    said: list[str] = []
    with Simulator(SimConfig(seed=3)) as sim:
        result = run(config.with_api(sim.base_url, "k"), on_message=said.append)
    assert result.status is RunStatus.DONE
    assert (
        "count_tokens unavailable (could not reach the API ([Errno 111] Connection refused));"
        " using local estimates"
    ) in said
    entries = _entries(isolated_state)
    assert len(entries) == 2
    for entry in entries:
        assert entry["counted"] == 0 and entry["state"] == "settled"
        worst_in = math.ceil(entry["input_estimate"] * ESTIMATE_MARGIN)
        assert entry["worst_tokens"] == worst_in + entry["max_output"]
        assert entry["worst_micros"] == worst_case_micros(PRICE, worst_in, entry["max_output"])
        assert entry["cost_micros"] <= entry["worst_micros"]


# -- 5xx: the API's own, or a gateway's -------------------------------------------------------


class _Gateway(http.server.BaseHTTPRequestHandler):
    """A proxy whose upstream timed out: its own 502 page, no API error body, no request id."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        self.send_response(502)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _single_job(tmp_path: Path, state: Path) -> tuple[Job, dict[str, Any]]:
    manifest, repos = _works(tmp_path, state, lines=0)
    [job] = build_jobs("R", manifest, list(repos.values()), Mode.SINGLE)
    return job, repos


def test_a_gateways_own_5xx_stays_charged_and_the_apis_own_is_released(
    tmp_path: Path, isolated_state: Path, gateway: str
) -> None:
    job, repos = _single_job(tmp_path, isolated_state)
    config = WorkerConfig(
        state_dir=isolated_state, base_url=gateway, api_key="k", max_attempts=2, backoff_base=0.01
    )
    _in_process(config, repos)
    outcome = run_job(job)
    assert outcome.status == JobStatus.FAILED
    assert outcome.error == (
        f"HTTP 502 from the gateway at {gateway}, not from the API; the request may have been"
        " forwarded and billed (after 2 attempts)"
    )
    entries = _entries(isolated_state)
    assert [e["state"] for e in entries] == ["unknown", "unknown"]
    with Ledger(isolated_state / "ledger.db") as ledger:
        status = ledger.status()
    assert status.unknown_reservations == 2
    assert status.spent_micros == sum(e["worst_micros"] for e in entries)

    # The API's own 500 (its error body and request id), from a loopback host all the same:
    # the API does not bill its errors, whoever relays them.
    with Simulator(SimConfig(seed=4, server_error_rate=1.0)) as sim:
        _in_process(replace(config, base_url=sim.base_url), repos)
        relayed = run_job(replace(job, run_id="S"))
    assert relayed.status == JobStatus.FAILED
    assert relayed.error is not None and relayed.error.startswith("HTTP 500 api_error")
    assert [e["state"] for e in _entries(isolated_state)[2:]] == ["released", "released"]
