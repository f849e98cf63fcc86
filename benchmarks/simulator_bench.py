"""Benchmark: small /v1/messages requests per second the simulator serves to several client processes.

    python benchmarks/simulator_bench.py [--seconds 4] [--clients 4]

Prints, from one run, side by side with ratios:
  1. the simulator (in a thread, no limits, tiny replies) under N keep-alive http.client processes,
     against the target of 500 requests/s (issue 2: it must never be the bottleneck);
  2. the same load on a bare stdlib ThreadingHTTPServer that returns a fixed JSON body: the
     ceiling of the HTTP layer the simulator is built on, so the ratio is the simulator's overhead;
  3. the simulator under N processes using the real anthropic SDK (heavier on the client side).
Stops by itself in about 20 s.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.simulator import Simulator

TARGET = 500.0
MODEL = "claude-sonnet-5-5"
BODY = json.dumps(
    {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "ping"}]}
).encode()


def _http_client(port: int, seconds: float, go: Any, out: mp.Queue) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {
        "content-type": "application/json",
        "x-api-key": "bench",
        "anthropic-version": "2023-06-01",
    }
    out.put("ready")
    go.wait()
    done = errors = 0
    end = time.time() + seconds
    while time.time() < end:
        conn.request("POST", "/v1/messages", BODY, headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status == 200:
            done += 1
        else:
            errors += 1
    conn.close()
    out.put((done, errors))


def _sdk_client(url: str, seconds: float, go: Any, out: mp.Queue) -> None:
    import anthropic  # takes seconds in a fresh process: done before the clock starts

    api = anthropic.Anthropic(api_key="bench", base_url=url, max_retries=0)
    out.put("ready")
    go.wait()
    done = errors = 0
    end = time.time() + seconds
    while time.time() < end:
        try:
            api.messages.create(
                model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "ping"}]
            )
            done += 1
        except anthropic.APIError:
            errors += 1
    out.put((done, errors))


def _load(target: object, arg: object, clients: int, seconds: float) -> tuple[float, int]:
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    go = ctx.Event()
    procs = [ctx.Process(target=target, args=(arg, seconds, go, out)) for _ in range(clients)]
    for p in procs:
        p.start()
    for _ in procs:
        assert out.get(timeout=120) == "ready"
    go.set()  # every client is connected and imported: start the clock together
    results = [out.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join(timeout=10)
    return sum(d for d, _ in results) / seconds, sum(e for _, e in results)


class _Fixed(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    payload = json.dumps({"type": "message", "content": [{"type": "text", "text": "{}"}]}).encode()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()

    with Simulator(output_mean=8, output_spread=0.0) as sim:
        port = int(sim.base_url.rsplit(":", 1)[1])
        ours, ours_err = _load(_http_client, port, args.clients, args.seconds)
        sdk, sdk_err = _load(_sdk_client, sim.base_url, args.clients, args.seconds)
        served = sim.stats()["ok"]

    bare_server = ThreadingHTTPServer(("127.0.0.1", 0), _Fixed)
    bare_server.daemon_threads = True
    thread = threading.Thread(target=bare_server.serve_forever, daemon=True)
    thread.start()
    bare, bare_err = _load(_http_client, bare_server.server_address[1], args.clients, args.seconds)
    bare_server.shutdown()
    bare_server.server_close()

    print(
        f"simulator_bench: {args.clients} client processes, {args.seconds:g} s each phase, "
        f"small requests (max_tokens 16, ~8 output tokens), keep-alive"
    )
    print(f"{'':44} {'req/s':>9} {'vs target 500/s':>16} {'vs bare stdlib':>15}")
    print(
        f"{'simulator, http.client clients':44} {ours:9.0f} {ours / TARGET:15.2f}x "
        f"{ours / bare:14.2f}x"
    )
    print(
        f"{'bare ThreadingHTTPServer (fixed reply)':44} {bare:9.0f} {bare / TARGET:15.2f}x "
        f"{1.0:14.2f}x"
    )
    print(
        f"{'simulator, anthropic SDK clients':44} {sdk:9.0f} {sdk / TARGET:15.2f}x "
        f"{sdk / bare:14.2f}x"
    )
    print(
        f"errors: simulator {ours_err}, sdk {sdk_err}, bare {bare_err}; "
        f"simulator counted {served} ok responses"
    )
    print(
        "PASS" if ours >= TARGET else "BELOW TARGET",
        f"(simulator {ours:.0f}/s, target {TARGET:.0f}/s)",
    )


if __name__ == "__main__":
    main()
