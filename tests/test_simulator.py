"""The simulator through the real anthropic SDK: endpoints, errors, replies, caching, batches, log."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anthropic
import pytest

from ledger.prices import cost_micros, load_prices, price_for
from runner.simulator import SimConfig, Simulator, count_tokens

MODEL = "claude-sonnet-5-5"

PACK = """<repository name="demo">
<tree>
app/main.py
app/db.py
</tree>
<file path="app/main.py" lines="9">
1| import pickle, subprocess, hashlib
2| from os import *
3| password = "hunter2"
4| def run(cmd):
5|     subprocess.run(cmd, shell=True)
6|     return eval(cmd)
7| try:
8|     pass
9| except:
</file>
<file path="app/db.py" lines="4">
1| def find(cur, name):
2|     # TODO: paginate
3|     cur.execute(f"SELECT * FROM users WHERE name = '{name}'")
4|     return hashlib.md5(name.encode()).hexdigest()
</file>
</repository>"""


def client(url: str, key: str = "x") -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=key, base_url=url, max_retries=0, timeout=20)


def ask(agent: str = "multi_perspective", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 4096,
        "system": f"You are the {agent} reviewer. Reply with findings JSON.",
        "messages": [{"role": "user", "content": PACK}],
    }
    body.update(extra)
    return body


def raw_post(url: str, path: str, data: bytes, headers: dict[str, str]) -> tuple[int, dict, Any]:
    req = urllib.request.Request(url + path, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


# -- messages and replies -----------------------------------------------------------------------


def test_reply_is_findings_json_with_real_files_and_lines(simulator_url: str) -> None:
    raw = client(simulator_url).messages.with_raw_response.create(**ask())
    message = raw.parse()
    assert raw.headers["request-id"].startswith("req_")
    assert message.stop_reason == "end_turn"
    reply = json.loads(message.content[0].text)
    assert "simulated" in reply["summary"].lower()
    where = {(f["file"], f["line"], f["category"]) for f in reply["findings"]}
    assert ("app/main.py", 3, "security") in where  # hard-coded password
    assert ("app/main.py", 5, "security") in where  # shell=True
    assert ("app/main.py", 6, "security") in where  # eval
    assert ("app/main.py", 9, "correctness") in where  # bare except
    assert ("app/db.py", 2, "maintainability") in where  # TODO
    assert ("app/db.py", 3, "security") in where  # SQL by f-string
    assert ("app/db.py", 4, "security") in where  # md5
    for finding in reply["findings"]:
        assert finding["severity"] in {"critical", "high", "medium", "low", "info"}
        assert 0 <= finding["confidence"] <= 1 and finding["end_line"] >= finding["line"]
    assert message.usage.output_tokens == count_tokens(message.content[0].text)
    assert message.usage.service_tier == "standard"
    # No limits configured: no rate-limit headers advertised.
    assert "anthropic-ratelimit-requests-limit" not in raw.headers


@pytest.mark.parametrize(
    ("agent", "allowed"),
    [
        pytest.param("security", {"security"}, id="security"),
        pytest.param("architecture", {"architecture", "maintainability", "performance"}, id="arch"),
    ],
)
def test_findings_vary_by_agent(simulator_url: str, agent: str, allowed: set[str]) -> None:
    message = client(simulator_url).messages.create(**ask(agent))
    reply = json.loads(message.content[0].text)
    assert reply["findings"]
    assert {f["category"] for f in reply["findings"]} <= allowed
    assert agent in reply["summary"]


def test_output_length_follows_distribution_and_max_tokens_cuts() -> None:
    with Simulator(output_mean=300, output_spread=0.5) as sim:
        api = client(sim.base_url)
        lengths = []
        for i in range(30):
            m = api.messages.create(
                model=MODEL, max_tokens=1000, messages=[{"role": "user", "content": f"hi {i}"}]
            )
            assert m.usage.output_tokens == count_tokens(m.content[0].text)
            json.loads(m.content[0].text)  # padded, still valid JSON
            lengths.append(m.usage.output_tokens)
        assert min(lengths) >= 150 and max(lengths) <= 450
        assert len(set(lengths)) > 10
        cut = api.messages.create(
            model=MODEL, max_tokens=40, messages=[{"role": "user", "content": "hi"}]
        )
        assert cut.stop_reason == "max_tokens"
        assert cut.usage.output_tokens == 40 == count_tokens(cut.content[0].text)


def test_streaming_assembles_the_same_message(simulator: Simulator) -> None:
    api = client(simulator.base_url)
    # 300 tokens cuts the findings (max_tokens); 4096 lets them end (end_turn).
    for max_tokens, stop_reason in ((300, "max_tokens"), (4096, "end_turn")):
        plain = api.messages.create(**ask(max_tokens=max_tokens))
        with api.messages.stream(**ask(max_tokens=max_tokens)) as stream:
            streamed = stream.get_final_message()
        assert streamed.model_dump(exclude={"id"}) == plain.model_dump(exclude={"id"})
        assert streamed.stop_reason == stop_reason
        first, second = simulator.log()[-2:]
        assert second["stream"] and not first["stream"]
        assert first["usage"] == second["usage"] and first["cost_micros"] == second["cost_micros"]
    with api.messages.with_streaming_response.create(**ask(max_tokens=3000), stream=True) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = list(resp.iter_lines())
    events = [line.split(": ", 1)[1] for line in lines if line.startswith("event: ")]
    datas = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert [d["type"] for d in datas] == events  # the SSE name repeats the data's type
    assert events[:3] == ["message_start", "content_block_start", "ping"]
    assert set(events[3:-3]) == {"content_block_delta"}
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_count_tokens_matches_billed_usage(simulator_url: str) -> None:
    api = client(simulator_url)
    counted = api.messages.count_tokens(
        model=MODEL, system=ask()["system"], messages=ask()["messages"]
    )
    message = api.messages.create(**ask())
    assert counted.input_tokens == message.usage.input_tokens > 0
    system = "You are the multi_perspective reviewer. Reply with findings JSON."
    assert counted.input_tokens == count_tokens(system) + count_tokens(PACK)


def test_count_tokens_heuristic() -> None:
    assert [count_tokens(t) for t in ("", "a", "abcd", "abcde", "x" * 400)] == [0, 1, 1, 2, 100]


# -- prompt caching -----------------------------------------------------------------------------

BIG = "def helper():\n    return 42\n" * 200  # 5,800 chars = 1,450 tokens


def cached_request(ttl: str | None = None, question: str = "Review it.", **extra: Any) -> dict:
    control: dict[str, str] = {"type": "ephemeral"}
    if ttl:
        control["ttl"] = ttl
    return {
        "model": MODEL,
        "max_tokens": 200,
        "system": [{"type": "text", "text": BIG, "cache_control": control}],
        "messages": [{"role": "user", "content": question}],
        **extra,
    }


@pytest.mark.parametrize("ttl", [pytest.param(None, id="5m"), pytest.param("1h", id="1h")])
def test_cache_write_then_read(simulator_url: str, ttl: str | None) -> None:
    api = client(simulator_url)
    prefix = count_tokens(BIG)
    first = api.messages.create(**cached_request(ttl))
    assert first.usage.cache_creation_input_tokens == prefix
    assert first.usage.cache_read_input_tokens == 0
    breakdown = first.usage.cache_creation
    assert (
        breakdown.ephemeral_1h_input_tokens if ttl else breakdown.ephemeral_5m_input_tokens
    ) == prefix
    second = api.messages.create(**cached_request(ttl, question="Another question, same prefix."))
    assert second.usage.cache_read_input_tokens == prefix
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.input_tokens == count_tokens("Another question, same prefix.")
    counted = api.messages.count_tokens(
        model=MODEL,
        system=cached_request()["system"],
        messages=[{"role": "user", "content": "Another question, same prefix."}],
    )
    u = second.usage
    assert (
        counted.input_tokens
        == u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens
    )


def test_top_level_cache_control_caches_the_whole_prompt(simulator_url: str) -> None:
    api = client(simulator_url)
    body = {
        "model": MODEL,
        "max_tokens": 50,
        "messages": [{"role": "user", "content": BIG}],
        "extra_body": {"cache_control": {"type": "ephemeral"}},
    }
    first = api.messages.create(**body)
    second = api.messages.create(**body)
    assert (
        first.usage.cache_creation_input_tokens
        == count_tokens(BIG)
        == second.usage.cache_read_input_tokens
    )
    assert second.usage.input_tokens == 0


def test_prefix_shorter_than_minimum_is_not_cached(simulator_url: str) -> None:
    api = client(simulator_url)
    body = cached_request()
    body["system"][0]["text"] = "short system prompt"
    for _ in range(2):
        usage = api.messages.create(**body).usage
        assert usage.cache_creation_input_tokens == 0 and usage.cache_read_input_tokens == 0


def test_different_content_is_a_different_prefix(simulator_url: str) -> None:
    api = client(simulator_url)
    api.messages.create(**cached_request())
    other = cached_request()
    other["system"][0]["text"] = BIG.replace("42", "43")
    assert api.messages.create(**other).usage.cache_read_input_tokens == 0


def test_max_tokens_zero_prewarms_the_cache(simulator_url: str) -> None:
    api = client(simulator_url)
    warm = api.messages.create(**cached_request(max_tokens=0))
    assert warm.content == [] and warm.usage.output_tokens == 0
    assert warm.stop_reason == "max_tokens"
    assert warm.usage.cache_creation_input_tokens == count_tokens(BIG)
    assert api.messages.create(**cached_request()).usage.cache_read_input_tokens == count_tokens(
        BIG
    )


def test_max_tokens_zero_cannot_stream(simulator_url: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as err:
        client(simulator_url).messages.create(**cached_request(max_tokens=0, stream=True))
    assert err.value.body["error"]["type"] == "invalid_request_error"
    assert "max_tokens: 0 is not supported with streaming" in err.value.body["error"]["message"]


def test_no_hit_before_the_writers_response_began() -> None:
    with Simulator(latency=1.0) as sim:
        api = client(sim.base_url)
        results: dict[str, Any] = {}
        writer = threading.Thread(
            target=lambda: results.update(w=api.messages.create(**cached_request()))
        )
        writer.start()
        deadline = time.monotonic() + 10
        while sim.stats()["in_flight"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        early = api.messages.create(**cached_request(question="sent while the writer waits"))
        writer.join(timeout=10)
        late = api.messages.create(**cached_request(question="sent after the writer answered"))
    log = {r["id"]: r for r in sim.log()}
    assert len(log) == 3
    assert results["w"].usage.cache_creation_input_tokens == count_tokens(BIG)
    assert early.usage.cache_read_input_tokens == 0
    assert early.usage.cache_creation_input_tokens == count_tokens(BIG)  # it paid the write too
    assert late.usage.cache_read_input_tokens == count_tokens(BIG)


def test_too_many_breakpoints_is_a_400(simulator_url: str) -> None:
    block = {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}
    with pytest.raises(anthropic.BadRequestError) as err:
        client(simulator_url).messages.create(
            model=MODEL,
            max_tokens=10,
            system=[block] * 5,
            messages=[{"role": "user", "content": "hi"}],
        )
    assert "maximum of 4" in err.value.message


# -- errors -------------------------------------------------------------------------------------


def test_authentication() -> None:
    with Simulator(api_key="right") as sim:
        with pytest.raises(anthropic.AuthenticationError) as err:
            client(sim.base_url, key="wrong").messages.create(**ask())
        assert err.value.status_code == 401
        assert err.value.body["error"]["type"] == "authentication_error"
        assert err.value.request_id == err.value.body["request_id"]
        body = json.dumps(ask()).encode()
        status, _, _ = raw_post(sim.base_url, "/v1/messages", body, {"x-api-key": "right"})
        assert status == 200
        status, _, reply = raw_post(sim.base_url, "/v1/messages", body, {})
        assert status == 401 and reply["type"] == "error"
        assert client(sim.base_url, key="right").messages.create(**ask()).content
    assert sim.stats()["auth_errors"] == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"temperature": 0.5}, "temperature", id="temperature"),
        pytest.param({"top_p": 0.9}, "top_p", id="top_p"),
        pytest.param({"top_k": 5}, "top_k", id="top_k"),
        pytest.param({"model": None}, "model", id="no-model"),
        pytest.param({"max_tokens": None}, "max_tokens", id="no-max-tokens"),
        pytest.param({"messages": None}, "messages", id="no-messages"),
        pytest.param({"max_tokens": -1}, "max_tokens", id="negative-max-tokens"),
    ],
)
def test_invalid_requests_are_400(simulator_url: str, change: dict, message: str) -> None:
    body = {k: v for k, v in {**ask(), **change}.items() if v is not None}
    status, headers, reply = raw_post(
        simulator_url, "/v1/messages", json.dumps(body).encode(), {"x-api-key": "x"}
    )
    assert status == 400
    assert reply["type"] == "error" and reply["error"]["type"] == "invalid_request_error"
    assert message in reply["error"]["message"]
    assert reply["request_id"] == headers["request-id"]


def test_sdk_sees_400_as_bad_request(simulator_url: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as err:
        client(simulator_url).messages.create(**ask(), extra_body={"temperature": 0.2})
    assert err.value.status_code == 400 and "temperature" in err.value.message


def test_malformed_json_is_400(simulator_url: str) -> None:
    status, _, reply = raw_post(simulator_url, "/v1/messages", b"{not json", {"x-api-key": "x"})
    assert status == 400 and reply["error"]["type"] == "invalid_request_error"
    assert "not valid JSON" in reply["error"]["message"]


def test_unknown_model_and_route_are_404(simulator_url: str) -> None:
    with pytest.raises(anthropic.NotFoundError) as err:
        client(simulator_url).messages.create(**ask(), extra_body={"model": "claude-nonexistent"})
    assert err.value.body["error"]["type"] == "not_found_error"
    assert "claude-nonexistent" in err.value.message
    status, _, reply = raw_post(simulator_url, "/v1/nothing", b"{}", {"x-api-key": "x"})
    assert status == 404 and reply["error"]["type"] == "not_found_error"


# -- batches ------------------------------------------------------------------------------------


def test_batches_create_retrieve_list_results_delete(simulator: Simulator) -> None:
    api = client(simulator.base_url)
    ok = {"model": MODEL, "max_tokens": 4096, "messages": [{"role": "user", "content": PACK}]}
    bad = {**ok, "temperature": 1.0}
    batch = api.messages.batches.create(
        requests=[{"custom_id": "good-1", "params": ok}, {"custom_id": "bad_2", "params": bad}]
    )
    assert batch.processing_status == "in_progress" and batch.request_counts.processing == 2
    assert batch.id.startswith("msgbatch_") and batch.results_url is None
    done = api.messages.batches.retrieve(batch.id)
    assert done.processing_status == "ended"
    assert (done.request_counts.succeeded, done.request_counts.errored) == (1, 1)
    results = {r.custom_id: r.result for r in api.messages.batches.results(batch.id)}
    assert results["good-1"].type == "succeeded"
    message = results["good-1"].message
    assert message.usage.service_tier == "batch"
    assert json.loads(message.content[0].text)["findings"]
    assert results["bad_2"].type == "errored"
    assert results["bad_2"].error.error.type == "invalid_request_error"
    price = price_for(load_prices(), MODEL)
    expected = cost_micros(price, message.usage.model_dump(), batch=True)
    assert simulator.stats()["billed_micros"] == expected
    assert 0 < expected < cost_micros(price, message.usage.model_dump())
    second = api.messages.batches.create(requests=[{"custom_id": "x", "params": ok}])
    page = api.messages.batches.list(limit=1)
    assert [b.id for b in page.data] == [second.id] and page.has_more
    assert [b.id for b in api.messages.batches.list()] == [second.id, batch.id]
    assert api.messages.batches.delete(batch.id).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        api.messages.batches.retrieve(batch.id)


def test_batch_cancel() -> None:
    with Simulator(batch_delay=60) as sim:
        api = client(sim.base_url)
        params = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
        batch = api.messages.batches.create(
            requests=[{"custom_id": f"r{i}", "params": params} for i in range(3)]
        )
        with pytest.raises(anthropic.AnthropicError, match="results_url"):
            list(api.messages.batches.results(batch.id))
        canceling = api.messages.batches.cancel(batch.id)
        assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at
        ended = api.messages.batches.retrieve(batch.id)
        assert ended.processing_status == "ended" and ended.request_counts.canceled == 3
        assert {r.result.type for r in api.messages.batches.results(batch.id)} == {"canceled"}
    assert sim.stats()["billed_micros"] == 0


@pytest.mark.parametrize(
    "requests",
    [
        pytest.param([], id="empty"),
        pytest.param([{"custom_id": "has space", "params": {}}], id="bad-custom-id"),
        pytest.param([{"custom_id": "a", "params": {}}] * 2, id="duplicate"),
    ],
)
def test_batch_create_rejects_bad_requests(simulator_url: str, requests: list) -> None:
    with pytest.raises(anthropic.BadRequestError) as err:
        client(simulator_url).messages.batches.create(requests=requests)
    assert err.value.body["error"]["type"] == "invalid_request_error"


# -- log ----------------------------------------------------------------------------------------


def test_request_log_in_memory_and_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "sim.jsonl"
    with Simulator(SimConfig(log_path=path)) as sim:
        api = client(sim.base_url)
        raw = api.messages.with_raw_response.create(
            **ask(), extra_headers={"x-review-job": "job-7"}
        )
        with pytest.raises(anthropic.BadRequestError):
            api.messages.create(**ask(), extra_body={"top_k": 1})
    log = sim.log()
    assert [json.loads(line) for line in path.read_text().splitlines()] == log
    ok, bad = log
    assert ok["id"] == raw.headers["request-id"] and ok["job"] == "job-7"
    assert ok["status"] == 200 and ok["billed"] and ok["model"] == MODEL
    assert ok["usage"] == raw.parse().usage.model_dump(exclude_none=True)
    assert ok["arrival"] <= ok["start"] <= ok["end"]
    price = price_for(load_prices(), MODEL)
    assert ok["cost_micros"] == cost_micros(price, ok["usage"]) == sim.stats()["billed_micros"]
    assert (
        bad["status"] == 400 and bad["error_type"] == "invalid_request_error" and not bad["billed"]
    )
    stats = sim.stats()
    assert (stats["requests"], stats["ok"], stats["bad_requests"]) == (2, 1, 1)
    assert stats["output_tokens"] == ok["usage"]["output_tokens"]
    assert stats["cost_usd"] == ok["cost_micros"] / 1_000_000


def test_request_bodies_are_kept_only_when_asked(tmp_path: Path) -> None:
    body = ask(tools=[{"name": "report", "input_schema": {"type": "object"}}])
    with Simulator() as sim:
        client(sim.base_url).messages.create(**ask())
    assert "body" not in sim.log()[0]
    path = tmp_path / "sim.jsonl"
    with Simulator(SimConfig(keep_bodies=True, log_path=path)) as sim:
        client(sim.base_url).messages.create(**body)
        with pytest.raises(anthropic.BadRequestError):
            client(sim.base_url).messages.create(**ask(max_tokens=-1))
    ok, bad = sim.log()
    assert ok["body"] == body and "body" not in bad
    assert json.loads(path.read_text().splitlines()[0])["body"] == body


def test_stop_is_idempotent_and_unknown_option_rejected() -> None:
    sim = Simulator()
    url = sim.start()
    assert url.startswith("http://127.0.0.1:")
    sim.stop()
    sim.stop()
    with pytest.raises(anthropic.APIConnectionError):
        client(url).messages.create(**ask())
    with pytest.raises(ValueError, match="unknown simulator option"):
        Simulator(rpn=5)


# -- the contract with jobs (pack format, agent prompts, findings parser) -----------------------


def test_reply_to_a_real_pack_parses_as_valid_findings(tmp_path: Path, simulator_url: str) -> None:
    from jobs.agents import build_prompt, load_prompts
    from jobs.findings import parse
    from jobs.pack import pack_repo

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "app.py").write_text(
        "import subprocess\n"
        'AWS_SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"\n'
        "def f(x):\n"
        "    subprocess.run(x, shell=True)\n"
        "    # TODO remove\n"
        "    return eval(x)\n"
    )
    pack = pack_repo(repo, slug="demo", max_input_tokens=10_000)
    prompts = load_prompts()
    api = client(simulator_url)
    lines_by_agent = {}
    for agent in ("code_review", "architecture", "security", "multi_perspective", "combined"):
        prompt = build_prompt(pack, agent, prompts, max_output_tokens=4096)
        message = api.messages.create(
            model=MODEL,
            max_tokens=4096,
            system=prompt.system,
            messages=[{"role": "user", "content": [
                {"type": "text", "text": prompt.pack, "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": prompt.instructions},
            ]}],
        )  # fmt: skip
        result = parse(message.content[0].text, message.stop_reason, agent=agent, pack=pack)
        assert result.status == "ok" and result.dropped == 0, result.note
        assert f"agent: {agent}" in result.summary
        lines_by_agent[agent] = {(f.file, f.line) for f in result.findings}
    assert lines_by_agent["security"] == {("app.py", 2), ("app.py", 4), ("app.py", 6)}
    assert lines_by_agent["architecture"] == {("app.py", 5)}
    everything = {("app.py", n) for n in (2, 4, 5, 6)}
    assert lines_by_agent["multi_perspective"] == lines_by_agent["combined"] == everything
