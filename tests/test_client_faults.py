"""Time on the request path: short connects, long reads by streaming, black holes, no API at all.

Black holes are loopback sockets: one that accepts and never answers, one that never accepts
(its backlog is full). Timeouts are configured small; the tests assert outcomes, not timings.
"""

from __future__ import annotations

import http.server
import json
import re
import signal
import socket
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from support import cli, make_repos, messages, write_manifest

from jobs.agents import FINDINGS_TOOL_NAME
from jobs.manifest import load_manifest
from ledger.modes import Mode
from runner.client import CONNECT_TIMEOUT_S, READ_TIMEOUT_S, ApiClient, CallError, streams
from runner.kinds import Billed, ErrorKind, JobStatus, StopReason
from runner.reachability import Breaker
from runner.run.job import Job
from runner.run.plan import build_jobs, pack_all, with_prompts
from runner.run.worker import WorkerConfig, init_worker, request_tools, run_job
from runner.runs import Runs
from runner.simulator import SimConfig, Simulator
from statedb import StatePaths


def _entries(state: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(state / "ledger.db") as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM entries ORDER BY id").fetchall()


def _one_job(tmp_path: Path, state: Path) -> tuple[Job, dict]:
    manifest = load_manifest(write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 1)))
    works = with_prompts(pack_all(manifest.repos, state / "repos"), manifest)
    [job] = build_jobs("R", manifest, works, Mode.SINGLE)
    Runs(StatePaths(state).runs).open()
    return job, {w.spec.slug: w for w in works}


def _run_in_process(config: WorkerConfig, job: Job, repos: dict):
    previous = signal.getsignal(signal.SIGINT)
    try:
        init_worker(config, repos)  # it ignores SIGINT, as a worker process does
        return run_job(job)
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A loopback endpoint that accepts connections and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()


@pytest.fixture
def full_backlog() -> Iterator[str]:
    """A loopback endpoint that never accepts: backlog 0, already filled by one connection,
    so the kernel drops every further SYN (the connect times out)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    filler = socket.create_connection(server.getsockname(), timeout=2)
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        filler.close()
        server.close()


def _closed_port() -> str:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: connection refused
    return f"http://127.0.0.1:{port}"


# -- timeouts and streaming --------------------------------------------------------------------


def test_the_sdk_connects_briefly_and_reads_long() -> None:
    timeout = ApiClient("http://127.0.0.1:9", "k").sdk.timeout
    assert (timeout.connect, timeout.read) == (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
    assert timeout.connect <= 10 < timeout.read  # seconds to connect, a minute of silence to read
    custom = ApiClient("http://127.0.0.1:9", "k", read_timeout=2.5, connect_timeout=0.5).sdk
    assert (custom.timeout.connect, custom.timeout.read) == (0.5, 2.5)


def test_a_reply_that_could_outlast_a_plain_read_is_streamed() -> None:
    blocks = [{"type": "text", "text": "def f():\n    return 1\n"}]
    assert not streams(1024) and streams(8192) and not streams(0)
    with Simulator(SimConfig(rpm=600, seed=1)) as sim:
        client = ApiClient(sim.base_url, "k")
        short = client.create(model="claude-sonnet-5-5", system="s", blocks=blocks, max_tokens=1024)
        long = client.create(model="claude-sonnet-5-5", system="s", blocks=blocks, max_tokens=8192)
        tool = client.create(
            model="claude-sonnet-5-5",
            system="s",
            blocks=blocks,
            max_tokens=8192,
            tools=request_tools(),
        )
        sent = messages(sim)
    assert [r["stream"] for r in sent] == [False, True, True]
    # The streamed reply is a whole one: content, usage and the headers the limiter reads.
    for reply, record in zip((short, long, tool), sent, strict=True):
        assert reply.content and reply.request_id == record["id"]
        assert reply.usage["output_tokens"] == record["usage"]["output_tokens"] > 0
        assert reply.headers["anthropic-ratelimit-requests-limit"] == "600"
    # A streamed tool call arrives whole: its input assembled from the stream's JSON deltas.
    [block] = [b for b in tool.content if b["type"] == "tool_use"]
    assert block["name"] == FINDINGS_TOOL_NAME and isinstance(block["input"]["findings"], list)


# -- black holes ---------------------------------------------------------------------------------


def test_an_endpoint_that_accepts_and_never_answers_fails_the_job_after_two_timeouts(
    tmp_path: Path, isolated_state: Path, silent_server: str
) -> None:
    job, repos = _one_job(tmp_path, isolated_state)
    config = WorkerConfig(
        state_dir=isolated_state,
        base_url=silent_server,
        api_key="k",
        read_timeout=0.5,
        connect_timeout=0.5,
        backoff_base=0.01,
    )
    outcome = _run_in_process(config, job, repos)
    assert outcome.status == JobStatus.FAILED
    assert outcome.attempts == 2  # not max_attempts (5) read timeouts
    assert outcome.error == (
        "no response from the API within the read timeout (0.5 s); the request may have been"
        " processed (after 2 attempts)"
    )
    # Each was sent and never answered: it may have been billed, so it stays charged.
    assert [e["state"] for e in _entries(isolated_state)] == ["unknown", "unknown"]


def test_an_endpoint_that_never_accepts_fails_the_job_with_nothing_charged(
    tmp_path: Path, isolated_state: Path, full_backlog: str
) -> None:
    job, repos = _one_job(tmp_path, isolated_state)
    config = WorkerConfig(
        state_dir=isolated_state,
        base_url=full_backlog,
        api_key="k",
        read_timeout=0.5,
        connect_timeout=0.3,
        backoff_base=0.01,
        max_attempts=3,
    )
    outcome = _run_in_process(config, job, repos)
    assert outcome.status == JobStatus.FAILED and outcome.attempts == 3
    assert outcome.error is not None
    assert outcome.error.startswith("could not reach the API (")
    assert outcome.error.endswith("(after 3 attempts)")
    # Never connected, never sent: nothing billed, nothing held.
    assert [e["state"] for e in _entries(isolated_state)] == ["released"] * 3


# -- an API that cannot be reached at all ------------------------------------------------------


def test_an_unreachable_api_stops_the_run_deferred_and_a_resume_completes_it(
    tmp_path: Path, isolated_state: Path
) -> None:
    repos = make_repos(tmp_path / "repos", 5)
    manifest = write_manifest(tmp_path / "m.toml", repos, mode="single")
    endpoint = _closed_port()
    down = {"ANTHROPIC_BASE_URL": endpoint, "ANTHROPIC_API_KEY": "test-key"}
    first = cli("run", str(manifest), "--workers", "2", "--json", env=down)
    assert first.returncode == 4, first.stderr
    doc = json.loads(first.stdout)
    assert doc["status"] == "deferred" and doc["stop"] == "unreachable"
    assert doc["jobs"] == {"done": 0, "failed": 0, "deferred": 5, "pending": 0, "skipped": 0}
    # One line names the endpoint and the cause, and says what became of the rest.
    [line] = [ln for ln in first.stderr.splitlines() if ln.startswith("the API at")]
    assert re.match(
        rf"the API at {re.escape(endpoint)} cannot be reached: \d+ attempts in a row failed,", line
    )
    assert "Connection refused" in line
    assert line.endswith("the remaining jobs are deferred (resume when the API is back)")
    assert f"Resume with: review-runner run --resume {doc['run_id']}" in first.stderr
    # Nothing reached the API: nothing is charged or held.
    assert {e["state"] for e in _entries(isolated_state)} == {"released"}
    assert not list(isolated_state.glob("reachability-*"))  # the run's counter is gone with it

    with Simulator(SimConfig(seed=5)) as sim:
        up = {"ANTHROPIC_BASE_URL": sim.base_url, "ANTHROPIC_API_KEY": "test-key"}
        second = cli("run", "--resume", doc["run_id"], "--json", env=up)
        sent = len(messages(sim))
    assert second.returncode == 0, second.stderr
    resumed = json.loads(second.stdout)
    assert resumed["run_id"] == doc["run_id"] and resumed["status"] == "done"
    assert resumed["jobs"] == {"done": 5, "failed": 0, "deferred": 0, "pending": 0, "skipped": 0}
    assert sent == 5


def test_a_black_hole_in_a_run_defers_the_job_and_opens_the_breaker(
    tmp_path: Path, isolated_state: Path, silent_server: str
) -> None:
    job, repos = _one_job(tmp_path, isolated_state)
    breaker = isolated_state / "reachability-R-1.json"
    config = WorkerConfig(
        state_dir=isolated_state,
        base_url=silent_server,
        api_key="k",
        read_timeout=0.5,
        connect_timeout=0.5,
        backoff_base=0.01,
        breaker=breaker,
    )
    outcome = _run_in_process(config, job, repos)
    # Out of attempts with no answer from anywhere since its first: the API is down, not the job.
    assert outcome.status == JobStatus.DEFERRED and outcome.stop == StopReason.UNREACHABLE
    assert outcome.attempts == 2
    assert outcome.error == (
        f"the API at {silent_server} cannot be reached: 2 attempts in a row failed, the last"
        " with: no response from the API within the read timeout (0.5 s); the request may have"
        " been processed"
    )
    assert [e["state"] for e in _entries(isolated_state)] == ["unknown", "unknown"]
    # Every other job of the run is deferred before it sends anything.
    later = _run_in_process(config, replace(job, run_id="R2"), repos)
    assert (later.status, later.attempts, later.error) == (JobStatus.DEFERRED, 0, outcome.error)
    assert len(_entries(isolated_state)) == 2


def test_the_breaker_counts_failures_in_a_row_and_any_answer_starts_again(tmp_path: Path) -> None:
    breaker = Breaker(tmp_path / "b.json", "http://api.example", threshold=3)
    assert breaker.failure("refused") is None and breaker.failure("refused") is None
    breaker.success()  # a blip: the API answered in between
    assert breaker.failure("refused") is None and breaker.failure("refused") is None
    assert breaker.opened() is None
    reason = "the API at http://api.example cannot be reached: 3 attempts in a row failed, the last with: dns"
    assert breaker.failure("dns") == reason
    breaker.success()  # a request that was already in flight answering does not close it
    assert breaker.opened() == reason
    # Another process sees the same state through the file.
    assert Breaker(tmp_path / "b.json", "http://api.example", threshold=3).opened() == reason
    breaker.remove()
    assert breaker.opened() is None and not list(tmp_path.iterdir())


class _BreaksMidStream(http.server.BaseHTTPRequestHandler):
    """A stream that begins (the message has started) and then carries an error event."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        start = {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": "claude-sonnet-5-5",
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": 1},
            },
        }
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("request-id", "req_1")
        self.end_headers()
        for name, data in (("message_start", start), ("error", error)):
            self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *_: object) -> None:
        pass


def test_a_stream_that_breaks_after_it_began_may_have_been_billed() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BreaksMidStream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = ApiClient(f"http://127.0.0.1:{server.server_address[1]}", "k")
        blocks = [{"type": "text", "text": "x = 1\n"}]
        with pytest.raises(CallError) as caught:
            client.create(model="claude-sonnet-5-5", system="s", blocks=blocks, max_tokens=8192)
    finally:
        server.shutdown()
        server.server_close()
    err = caught.value
    assert (err.kind, err.billed, err.retryable) == (ErrorKind.DROPPED, Billed.UNKNOWN, True)
    assert str(err) == (
        "the reply stream broke off (overloaded_error: Overloaded); the request may have been"
        " processed"
    )
