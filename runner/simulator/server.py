"""The simulator's state and lifecycle: admission, per-class buckets, billing, the logs, counters.

One lock guards everything shared (buckets, cache, batches, counters, the fault generators), so
a check-and-debit is atomic and a fixed seed gives reproducible fault counts for a fixed order
of requests. The HTTP side lives in runner/simulator/http.py and knows this class only through
the `Backend` protocol (runner/simulator/exchange.py).
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import fields, replace
from datetime import UTC, datetime
from typing import Any

from ledger.errors import UnknownModel
from ledger.prices import USAGE_FIELDS, Price, cost_micros, load_prices, price_for, usd
from runner.errors import RunnerError, RunnerInputError
from runner.modelclass import model_class
from runner.simulator.batches import BatchStore, new_id
from runner.simulator.batchside import BatchSide
from runner.simulator.buckets import RateLimits
from runner.simulator.cache import PromptCache
from runner.simulator.config import SimConfig
from runner.simulator.exchange import Admitted
from runner.simulator.http import SimHTTPServer
from runner.simulator.prompt import ApiError, validate_message_request
from runner.simulator.replies import Realism, Reply, make_reply, request_digest, tool_use_block

__all__ = ["Admitted", "SimConfig", "Simulator"]

COUNTERS = (
    "requests", "messages", "ok", "rate_limited", "spend_capped", "overloaded", "server_errors",
    "dropped", "bad_requests", "auth_errors", "not_found", "too_large", "max_in_flight",
    "input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
    "billed_micros", "batch_billed_micros", "batches", "batch_succeeded", "batch_errored",
    "batch_expired", "batch_canceled",
)  # fmt: skip
LIMIT_KEYS = ("requests", "input_tokens", "output_tokens", "concurrency")
_STATUS_COUNTERS = {529: "overloaded", 500: "server_errors", 400: "bad_requests"}
_STATUS_COUNTERS.update({401: "auth_errors", 404: "not_found", 413: "too_large"})


def _now_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Simulator(BatchSide):
    """An Anthropic-compatible API server on 127.0.0.1, for tests, the embedded default and planning."""

    def __init__(self, config: SimConfig | None = None, **overrides: Any) -> None:
        config = config or SimConfig()
        known = {f.name for f in fields(SimConfig)}
        unknown = set(overrides) - known
        if unknown:
            raise RunnerInputError(f"unknown simulator option(s): {', '.join(sorted(unknown))}")
        self.config = replace(config, **overrides) if overrides else config
        self.base_url = ""
        self._clock = self.config.clock or time.time
        self._lock = threading.Lock()
        self._rng = random.Random(self.config.seed)
        # Batch outcomes draw from their own generator, so adding batches to a test does not
        # change the fault sequence its Messages requests see.
        self._batch_rng = random.Random(f"batch-{self.config.seed}")
        self._prices = load_prices(self.config.prices_path)
        self._limits: dict[str, RateLimits] = {}  # per model class, made on first use
        self._cache = PromptCache(self.config.min_cacheable_tokens)
        self._batches = BatchStore(lambda: self.base_url, self.config.batch_delay)
        self._log: list[dict[str, Any]] = []
        self._log_file: Any = None
        self._in_flight = 0
        self._stats = self._zero_stats()
        self._server: SimHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def now(self) -> float:
        """The simulator's clock (epoch seconds): `SimConfig.clock` if given, else time.time."""
        return self._clock()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, port: int = 0) -> str:
        """Bind 127.0.0.1:`port` (0 = any free port), serve in a daemon thread, return the base URL."""
        if self._server is not None:
            raise RunnerError(f"simulator already running at {self.base_url}")
        if self.config.log_path is not None:
            try:
                self._log_file = open(self.config.log_path, "a", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise RunnerInputError(f"simulator log {self.config.log_path}: {exc}") from exc
        try:
            self._server = SimHTTPServer(("127.0.0.1", port), self)
        except OSError as exc:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
            raise RunnerInputError(f"simulator cannot listen on 127.0.0.1:{port}: {exc}") from exc
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="simulator",
            daemon=True,
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        """Stop serving, close every connection and the log file; safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.close_all()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def __enter__(self) -> Simulator:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection --------------------------------------------------------------------------

    def log(self) -> list[dict[str, Any]]:
        """One record per request, in completion order (copies).

        Times (`arrival`, `start`, `end`) are epoch seconds; `start` is None for a request that
        was refused. Each Message Batches request adds a record of its own when its batch ends
        (method "BATCH", `batch: True`, `batch_id`, `custom_id`, `result`), so the sum of
        `cost_micros` is always `stats()["billed_micros"]`. With `SimConfig.keep_bodies`, a valid
        /v1/messages record also has the request's parsed JSON `body`.
        """
        with self._lock:
            return [dict(r) for r in self._log]

    def stats(self) -> dict[str, Any]:
        """Counters since start: requests, outcomes, 429s by limit, tokens, cost.

        `requests` counts every HTTP request, `messages` only POST /v1/messages; `rate_limited`
        excludes the spend-cap 429s (`spend_capped`). Tokens and `billed_micros` include batches;
        `batch_billed_micros` is the batches' part (already at the batch discount), so the
        Messages part is the difference. `batches` counts accepted batches, `batch_<result>`
        their requests by result.
        """
        with self._lock:
            self._advance_batches(self.now())
            out = dict(self._stats)
            out["rate_limited_by"] = dict(self._stats["rate_limited_by"])
            out["in_flight"] = self._in_flight
        out["cost_usd"] = usd(out["billed_micros"])
        out["batch_cost_usd"] = usd(out["batch_billed_micros"])
        return out

    @staticmethod
    def _zero_stats() -> dict[str, Any]:
        stats: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
        stats["rate_limited_by"] = dict.fromkeys(LIMIT_KEYS, 0)
        return stats

    # -- request handling (called by the HTTP handler) ---------------------------------------

    def new_record(self, method: str, path: str, job: str | None) -> dict[str, Any]:
        """A fresh log record for a request that just arrived."""
        now = self.now()
        return {
            "id": new_id("req_"),
            "arrival": now,
            "arrival_at": _now_iso(now),
            "start": None,
            "end": None,
            "method": method,
            "path": path,
            "status": None,
            "error_type": None,
            "limit": None,
            "model": None,
            "model_class": None,
            "stream": False,
            "usage": None,
            "cost_micros": 0,
            "billed": False,
            "dropped": False,
            "job": job,
        }

    def check_key(self, key: str | None) -> None:
        """401 unless the key is acceptable."""
        if not key or (self.config.api_key is not None and key != self.config.api_key):
            raise ApiError(401, "authentication_error", "invalid x-api-key")

    def _price(self, model: str) -> Price:
        try:
            return price_for(self._prices, model)
        except UnknownModel:
            raise ApiError(404, "not_found_error", f"model: {model}") from None

    def _spend_capped(self) -> bool:
        cap = self.config.spend_cap_usd
        return cap is not None and self._stats["billed_micros"] >= round(cap * 1_000_000)

    def _spend_cap_error(self) -> ApiError:
        return ApiError(
            429,
            "rate_limit_error",
            "You have reached your specified API usage limits. You will regain access once "
            "the limit is raised or the period resets.",
            details={"error_code": "enforced_spend_limit_reached"},
            limit="spend",
        )

    def _class_limits(self, cls: str, now: float) -> RateLimits:
        """The buckets of model class `cls`; a class seen for the first time starts full."""
        limits = self._limits.get(cls)
        if limits is None:
            cfg = self.config
            limits = RateLimits(
                cfg.limits_of(cls),
                now,
                interval=cfg.enforce_interval,
                external_load=cfg.external_load,
            )
            self._limits[cls] = limits
        return limits

    def _headers(self, limits: RateLimits, now: float) -> dict[str, str]:
        return limits.headers(now) if self.config.send_limit_headers else {}

    def count_tokens(self, body: Any) -> dict[str, int]:
        """POST /v1/messages/count_tokens: the total input tokens, as messages would bill them."""
        if isinstance(body, dict) and "max_tokens" not in body:
            body = {**body, "max_tokens": 1}  # count_tokens does not take max_tokens
        prompt = validate_message_request(body)
        self._price(prompt.model)
        return {"input_tokens": prompt.total_tokens}

    def admit(self, record: dict[str, Any], body: Any) -> Admitted:
        """Validate, then atomically: spend cap, concurrency, faults, rate limits, cache plan."""
        prompt = validate_message_request(body)
        cls = model_class(prompt.model)
        record.update(model=prompt.model, model_class=cls, stream=bool(body.get("stream")))
        # What a test checks about every request: the tools it carried and the tool it forced.
        tools = body.get("tools")
        record.update(
            tools=[t.get("name") for t in tools if isinstance(t, dict)]
            if isinstance(tools, list)
            else [],
            tool_choice=body.get("tool_choice"),
        )
        if self.config.keep_bodies:  # so a benchmark can replay exactly what a client sent
            record["body"] = body
        price = self._price(prompt.model)
        cfg = self.config
        with self._lock:
            now = self.now()
            self._advance_batches(now)  # an ended batch's cache writes are readable from now
            limits = self._class_limits(cls, now)
            if self._spend_capped():
                raise self._spend_cap_error()
            if cfg.max_concurrent is not None and self._in_flight >= cfg.max_concurrent:
                raise ApiError(
                    429,
                    "rate_limit_error",
                    f"Number of concurrent requests exceeds the limit of {cfg.max_concurrent}.",
                    # A slot frees when any response ends: the shortest whole-second wait.
                    headers={"retry-after": "1", **self._headers(limits, now)},
                    limit="concurrency",
                )
            draw = self._rng.random()
            if draw < cfg.overloaded_rate:
                raise ApiError(529, "overloaded_error", "Overloaded")
            if draw < cfg.overloaded_rate + cfg.server_error_rate:
                raise ApiError(500, "api_error", "Internal server error (simulated)")
            drop = draw < cfg.overloaded_rate + cfg.server_error_rate + cfg.drop_rate
            plan = self._cache.plan(prompt, now)
            admission = limits.admit(plan.input_tokens + plan.write_tokens, now)
            headers = self._headers(limits, now)
            if admission.limit is not None:
                what = admission.limit.replace("_", " ")
                raise ApiError(
                    429,
                    "rate_limit_error",
                    f"This request would exceed the rate limit for your organization of "
                    f"{limits.buckets[admission.limit].limit} {what} per minute "
                    f"(model class {cls}).",
                    # retry-after stays without the ratelimit headers: a gateway passes it on.
                    headers={"retry-after": str(admission.retry_after), **headers},
                    limit=admission.limit,
                )
            self._cache.commit(plan, now, ready_at=now + cfg.latency)
            self._in_flight += 1
            self._stats["max_in_flight"] = max(self._stats["max_in_flight"], self._in_flight)
        record["start"] = now
        return Admitted(record, body, prompt, plan, price, drop, headers, limits)

    def reply_for(self, adm: Admitted) -> Reply:
        """The reply text for an admitted request (deterministic in its content and the seed)."""
        cfg = self.config
        digest = request_digest(adm.body)
        adm.reply = make_reply(
            adm.prompt.text,
            adm.prompt.system_text,
            digest,
            cfg.seed,
            cfg.output_mean,
            cfg.output_spread,
            adm.body["max_tokens"],
            tools=adm.body.get("tools"),
            tool_choice=adm.body.get("tool_choice"),
            realism=Realism(cfg.reword_rate, cfg.misline_rate, cfg.misquote_rate),
        )
        reply = adm.reply
        if not cfg.tool_use and reply.tool_input is not None:
            # A gateway without tool use: the same findings JSON, as text.
            stop = "end_turn" if reply.stop_reason == "tool_use" else reply.stop_reason
            adm.reply = Reply(reply.text, stop, reply.output_tokens)
        adm.record["stop_reason"] = adm.reply.stop_reason
        return adm.reply

    def produce(self, adm: Admitted, tokens: int) -> None:
        """Debit output tokens from the OTPM bucket of the request's class as they are generated."""
        if adm.limits is None:
            return
        with self._lock:
            adm.limits.debit_output(tokens, self.now())

    def usage_of(self, adm: Admitted, *, tier: str = "standard") -> dict[str, Any]:
        """The platform's usage object for an admitted request."""
        usage = adm.plan.usage()
        usage["output_tokens"] = adm.reply.output_tokens if adm.reply else 0
        usage["service_tier"] = tier
        return usage

    def bill(self, record: dict[str, Any], usage: dict[str, Any], price: Price) -> None:
        """Add a processed /v1/messages request's usage and cost to the record and the counters."""
        micros = cost_micros(price, usage)
        record.update(usage=usage, cost_micros=micros, billed=True)
        with self._lock:
            self._count_billed(usage, micros)

    def _count_billed(self, usage: dict[str, Any], micros: int, *, batch: bool = False) -> None:
        """Add billed usage to the counters; the caller holds the lock."""
        st = self._stats
        for key in USAGE_FIELDS:
            st[key] += int(usage.get(key) or 0)
        st["billed_micros"] += micros
        if batch:
            st["batch_billed_micros"] += micros

    def release(self) -> None:
        """A served /v1/messages request is no longer in flight."""
        with self._lock:
            self._in_flight -= 1

    def message_of(self, adm: Admitted, message_id: str) -> dict[str, Any]:
        """The complete Message object."""
        reply = adm.reply
        assert reply is not None
        content: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
        if reply.tool_input is not None:
            content = [tool_use_block(reply, message_id)]
        return {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": adm.prompt.model,
            "content": content,
            "stop_reason": reply.stop_reason,
            "stop_sequence": None,
            "usage": self.usage_of(adm),
        }

    def finish(
        self, record: dict[str, Any], status: int | None, error: ApiError | None = None
    ) -> None:
        """Close a request's record: counters, the in-memory log and the JSONL file."""
        record["end"] = self.now()
        record["status"] = status
        if error is not None:
            record["error_type"] = error.error_type
            record["limit"] = error.limit
        with self._lock:
            st = self._stats
            st["requests"] += 1
            if record["path"] == "/v1/messages":
                st["messages"] += 1
            if record["dropped"]:
                st["dropped"] += 1
            elif status == 200:
                st["ok"] += 1
            elif error is not None and error.limit == "spend":
                st["spend_capped"] += 1
            elif status == 429:
                st["rate_limited"] += 1
                st["rate_limited_by"][error.limit if error and error.limit else "requests"] += 1
            elif status in _STATUS_COUNTERS:
                st[_STATUS_COUNTERS[status]] += 1
            self._write_record(record)

    def _write_record(self, record: dict[str, Any]) -> None:
        self._log.append(record)
        if self._log_file is not None:
            self._log_file.write(json.dumps(record) + "\n")
            self._log_file.flush()
