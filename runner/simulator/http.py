"""The simulator's HTTP side: HTTP/1.1 keep-alive, routes, error bodies, SSE streaming, drops.

It serves any `Backend` (runner/simulator/exchange.py) and never imports server.py, which
imports this module: no import cycle.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ledger.prices import USAGE_FIELDS
from runner.simulator.batches import new_id
from runner.simulator.exchange import Admitted, Backend
from runner.simulator.prompt import ApiError
from runner.simulator.replies import tool_use_block

__all__ = ["SimHTTPServer"]

STREAM_CHUNK_CHARS = 64  # a multiple of 4, so chunk token counts add up to the total
PRODUCE_CHUNK_TOKENS = 16
_REASONS = {529: "Overloaded"}
BATCHES_PATH = "/v1/messages/batches"
_DRAIN_CHUNK = 1 << 20


class SimHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that knows its Simulator and can close its open connections."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

    def __init__(self, address: tuple[str, int], sim: Backend) -> None:
        self.sim = sim
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup we never need.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_all(self) -> None:
        """Shut every open keep-alive connection so that its handler thread ends."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def _error_body(exc: ApiError, request_id: str) -> dict[str, Any]:
    error: dict[str, Any] = {"type": exc.error_type, "message": exc.message}
    if exc.details is not None:
        error["details"] = exc.details
    return {"type": "error", "error": error, "request_id": request_id}


class Handler(BaseHTTPRequestHandler):
    """One connection; requests on it are served in order (keep-alive)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: SimHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log: the simulator keeps its own."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- plumbing ----------------------------------------------------------------------------

    def _body_limit(self, method: str, path: str) -> int | None:
        if method == "POST" and path == BATCHES_PATH:
            return self.server.sim.config.batch_max_bytes
        return None

    def _read_body(self, limit: int | None = None) -> bytes:
        """The request body; over `limit` bytes it is read and dropped, then a 413 is raised."""
        length = int(self.headers.get("content-length") or 0)
        if limit is not None and length > limit:
            # Drain it, so the client gets the 413 instead of a reset while still sending.
            left = length
            while left > 0:
                chunk = self.rfile.read(min(left, _DRAIN_CHUNK))
                if not chunk:
                    break
                left -= len(chunk)
            raise ApiError(
                413,
                "request_too_large",
                f"Request exceeds the maximum allowed number of bytes: a Message Batch may be "
                f"at most {limit} bytes, this one is {length}.",
            )
        return self.rfile.read(length) if length > 0 else b""

    def _json_body(self, raw: bytes) -> Any:
        try:
            return json.loads(raw or b"null")
        except ValueError as exc:
            raise ApiError(
                400, "invalid_request_error", f"request body is not valid JSON: {exc}"
            ) from None

    def _send(
        self,
        status: int,
        body: bytes,
        ctype: str,
        request_id: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status, _REASONS.get(status))
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.send_header("request-id", request_id)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(
        self, status: int, obj: Any, request_id: str, headers: dict[str, str] | None = None
    ) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", request_id, headers)

    def _api_key(self) -> str | None:
        key = self.headers.get("x-api-key")
        if key:
            return key
        auth = self.headers.get("authorization") or ""
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    def _dispatch(self, method: str) -> None:
        sim = self.server.sim
        url = urlsplit(self.path)
        path = url.path.rstrip("/")
        record = sim.new_record(method, path, self.headers.get("x-review-job"))
        try:
            raw = self._read_body(limit=self._body_limit(method, path))
            sim.check_key(self._api_key())
            if method == "POST" and path == "/v1/messages":
                self._messages(record, self._json_body(raw))
                return
            status, obj, ctype = self._route(record, method, path, url.query, raw)
        except ApiError as exc:
            self._fail(record, exc)
            return
        except OSError:
            self.close_connection = True  # the client went away; nothing left to answer
            return
        except Exception as exc:  # a simulator bug must still answer like the platform
            if record["end"] is None:
                self._fail(record, ApiError(500, "api_error", f"simulator error: {exc!r}"))
            raise
        sim.finish(record, status)
        if ctype == "application/json":
            self._send_json(status, obj, record["id"])
        else:
            self._send(status, obj, ctype, record["id"])

    def _fail(self, record: dict[str, Any], exc: ApiError) -> None:
        sim = self.server.sim
        sim.finish(record, exc.status, exc)
        headers = dict(exc.headers)
        if exc.limit == "spend":
            headers["x-should-retry"] = "false"
        self._send_json(exc.status, _error_body(exc, record["id"]), record["id"], headers)

    def _route(
        self, record: dict[str, Any], method: str, path: str, query: str, raw: bytes
    ) -> tuple[int, Any, str]:
        sim = self.server.sim
        json_ct = "application/json"
        if method == "POST" and path == "/v1/messages/count_tokens":
            return 200, sim.count_tokens(self._json_body(raw)), json_ct
        prefix = BATCHES_PATH
        if path == prefix:
            if method == "POST":
                created = sim.batches("create", body=self._json_body(raw), record=record)
                return 200, created, json_ct
            if method == "GET":
                return 200, sim.batches("list", query=dict(parse_qsl(query))), json_ct
        elif path.startswith(prefix + "/"):
            parts = path[len(prefix) + 1 :].split("/")
            batch_id = parts[0]
            if len(parts) == 1 and method == "GET":
                return 200, sim.batches("retrieve", batch_id), json_ct
            if len(parts) == 1 and method == "DELETE":
                return 200, sim.batches("delete", batch_id), json_ct
            if parts[1:] == ["cancel"] and method == "POST":
                return 200, sim.batches("cancel", batch_id), json_ct
            if parts[1:] == ["results"] and method == "GET":
                return 200, sim.batches("results", batch_id), "application/binary"
        raise ApiError(404, "not_found_error", f"no route for {method} {path}")

    # -- /v1/messages ------------------------------------------------------------------------

    def _messages(self, record: dict[str, Any], body: Any) -> None:
        sim = self.server.sim
        adm = sim.admit(record, body)  # ApiError goes to _dispatch's handler
        released = False
        try:
            reply = sim.reply_for(adm)
            if sim.config.latency:
                time.sleep(sim.config.latency)
            if adm.body.get("stream") and not adm.drop:
                released = True  # _stream releases before its last events
                self._stream(adm)
                return
            self._generate(adm, reply.text)
            sim.bill(record, sim.usage_of(adm), adm.price)
            sim.release()
            released = True
            if adm.drop:
                record["dropped"] = True
                sim.finish(record, None)
                self._drop()
                return
            message = sim.message_of(adm, new_id("msg_"))
            sim.finish(record, 200)
            self._send_json(200, message, record["id"], adm.headers)
        finally:
            if not released:
                sim.release()

    def _generate(self, adm: Admitted, text: str) -> None:
        """Spend the per-token time and debit OTPM as output is produced (no streaming)."""
        sim = self.server.sim
        total = len(text)
        step = PRODUCE_CHUNK_TOKENS * 4
        if not sim.config.per_token:
            sim.produce(adm, -(-total // 4))
            return
        for i in range(0, total, step):
            tokens = -(-len(text[i : i + step]) // 4)
            time.sleep(sim.config.per_token * tokens)
            sim.produce(adm, tokens)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    @staticmethod
    def _event(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

    def _stream(self, adm: Admitted) -> None:
        """Server-sent events in the platform's order; the SDK assembles the same Message."""
        sim = self.server.sim
        record = adm.record
        reply = adm.reply
        assert reply is not None
        message = sim.message_of(adm, new_id("msg_"))
        final_usage = message["usage"]
        start_msg = {
            **message,
            "content": [],
            "stop_reason": None,
            "usage": {**final_usage, "output_tokens": 0},
        }
        released = False
        try:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream; charset=utf-8")
            self.send_header("cache-control", "no-cache")
            self.send_header("transfer-encoding", "chunked")
            self.send_header("request-id", record["id"])
            for name, value in adm.headers.items():
                self.send_header(name, value)
            self.end_headers()
            head = self._event("message_start", {"type": "message_start", "message": start_msg})
            if reply.text:
                head += self._event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": (
                            tool_use_block(reply, message["id"], streamed=True)
                            if reply.tool_input is not None
                            else {"type": "text", "text": ""}
                        ),
                    },
                )
                head += self._event("ping", {"type": "ping"})
            self._chunk(head)
            per_token = sim.config.per_token
            text = reply.text
            for i in range(0, len(text), STREAM_CHUNK_CHARS):
                piece = text[i : i + STREAM_CHUNK_CHARS]
                tokens = -(-len(piece) // 4)
                if per_token:
                    time.sleep(per_token * tokens)
                sim.produce(adm, tokens)
                self._chunk(
                    self._event(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": 0,
                            "delta": (
                                {"type": "input_json_delta", "partial_json": piece}
                                if reply.tool_input is not None
                                else {"type": "text_delta", "text": piece}
                            ),
                        },
                    )
                )
            tail = b""
            if text:
                tail += self._event(
                    "content_block_stop", {"type": "content_block_stop", "index": 0}
                )
            delta_usage = {k: final_usage[k] for k in USAGE_FIELDS}
            tail += self._event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                    "usage": delta_usage,
                },
            )
            tail += self._event("message_stop", {"type": "message_stop"})
            sim.bill(record, final_usage, adm.price)
            sim.release()
            released = True
            sim.finish(record, 200)
            self._chunk(tail)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            # The client went away mid-stream: the work was done, so it is billed.
            if not record["billed"]:
                sim.bill(record, final_usage, adm.price)
            if record["end"] is None:
                record["dropped"] = True
                sim.finish(record, None)
            self.close_connection = True
        finally:
            if not released:
                sim.release()
