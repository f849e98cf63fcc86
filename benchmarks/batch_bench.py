"""Batch wall time against the true lower bound, and 429s, for three ways to send the same
reviews, in three scenarios of how the account enforces its limits.

    python benchmarks/batch_bench.py [--requests 200] [--rpm 120] [--itpm 60000] [--otpm 20000]
                                     [--scenarios plain,per-second,external]

(a) review-runner (`run --mode concurrent`, the shared limiter, 4 workers), with no [limits] in
    its manifest: it learns the limits from the response headers, from a fresh state directory;
(b) a pool of 4 threads calling the SDK with its own retries (max_retries=10);
(c) one request after another with the SDK (max_retries=10).

Scenarios (the simulator's flags): "plain" a token bucket per limit, refilled at limit/60 per
second, full at the start (as the platform's are); "per-second" the same limits enforced per
second (`--enforce-interval 1`: a bucket of limit/60, the platform's documented behaviour);
"external" another client of the same key spends 30% of every refill (`--external-load 0.3`).

All three talk to the simulator on loopback with the same limits and latency (0.3 s to first
byte plus per-token time) and send the same agent prompts for the same repos. The true lower
bound of a workload is the largest of, for each limit, (amount - the bucket's capacity at the
start) / the refill rate left to this client, and latency x requests / concurrency; it counts
one full bucket at the start. Wall time is from the first request's arrival to the last
response. Targets for (a): plain within 1.05x the bound with 0 429s; per-second at most one
429, then none; external 429s under 1% of requests and within 1.10x the bound; and faster in
wall time than (b) in every scenario.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs.agents import build_prompt, load_prompts  # noqa: E402
from jobs.manifest import AGENTS  # noqa: E402
from jobs.pack import pack_repo  # noqa: E402
from runner.simulator import SimConfig, Simulator  # noqa: E402

LATENCY = 0.3
PER_TOKEN = 0.001
OUTPUT_MEAN = 250
MAX_OUTPUT = 1024
CONCURRENCY = 4
MODEL = "claude-sonnet-5-5"

CODE = """import subprocess


def run(cmd):
    # TODO: quote the command
    return subprocess.run(cmd, shell=True)


def parse(text):
    try:
        return int(text)
    except:
        return None
"""


def make_repos(root: Path, count: int) -> list[Path]:
    repos = []
    for i in range(count):
        repo = root / f"repo{i:03d}"
        (repo / "src").mkdir(parents=True)
        (repo / "src" / "main.py").write_text(CODE + f"\nVERSION = {i}\n")
        repos.append(repo)
    return repos


SCENARIOS: dict[str, dict[str, float]] = {
    "plain": {},
    "per-second": {"enforce_interval": 1.0},
    "external": {"external_load": 0.3},
}


def bound(stats: dict[str, Any], limits: dict[str, int], scenario: dict[str, float]) -> float:
    """The true lower bound in seconds: each limit's bucket starts full (see the module doc)."""
    requests = stats["answered"]
    interval = scenario.get("enforce_interval", 60.0)
    share = 1.0 - scenario.get("external_load", 0.0)
    rate_in = stats["input_tokens"] + stats["cache_creation_input_tokens"]
    mean_latency = LATENCY + PER_TOKEN * stats["output_tokens"] / max(1, requests)
    waits = [mean_latency * requests / CONCURRENCY]
    for amount, limit in (
        (requests, limits["rpm"]),
        (rate_in, limits["itpm"]),
        (stats["output_tokens"], limits["otpm"]),
    ):
        capacity = limit * interval / 60.0
        waits.append(max(0.0, amount - capacity) / (share * limit / 60.0))
    return max(waits)


def span(sim: Simulator) -> float:
    """Seconds from the first request's arrival to the last response; notes the answered count."""
    records = [r for r in sim.log() if r["path"] == "/v1/messages"]
    sim.answered = sum(r["status"] == 200 for r in records)
    return max(r["end"] for r in records) - min(r["arrival"] for r in records)


def _stats(sim: Simulator) -> dict[str, Any]:
    busy = span(sim)
    return {**sim.stats(), "answered": sim.answered, "busy": busy}


def review_runner(
    repos: list[Path], config: SimConfig, work: Path
) -> tuple[dict, float, float, int]:
    manifest = work / "bench.toml"
    manifest.write_text(
        f'name = "bench"\nmodel = "{MODEL}"\nmode = "concurrent"\n'
        f"max_output_tokens = {MAX_OUTPUT}\nmax_input_tokens = 20000\n"
        f'out = "{work / "reports"}"\n'
        "repos = [" + ", ".join(json.dumps(str(r)) for r in repos) + "]\n"
    )
    with Simulator(config) as sim:
        env = {
            **os.environ,
            "ANTHROPIC_BASE_URL": sim.base_url,
            "ANTHROPIC_API_KEY": "bench",
            "REVIEW_RUNNER_HOME": str(work / "state"),
        }
        subprocess.run(
            [sys.executable, "-m", "runner", "budget", "set", "--usd", "1000"],
            env=env,
            capture_output=True,
            check=True,
        )
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "runner", "run", str(manifest), "--json"],
            env=env,
            capture_output=True,
            text=True,
        )
        total = time.monotonic() - started
        if done.returncode not in (0, 1):
            raise SystemExit(f"review-runner failed ({done.returncode}): {done.stderr[-2000:]}")
        failed = json.loads(done.stdout)["jobs"]["failed"]
        stats = _stats(sim)
        return stats, stats["busy"], total, failed


def _config(limits: dict[str, int], scenario: dict[str, float]) -> SimConfig:
    return SimConfig(
        rpm=limits["rpm"],
        itpm=limits["itpm"],
        otpm=limits["otpm"],
        latency=LATENCY,
        per_token=PER_TOKEN,
        output_mean=OUTPUT_MEAN,
        seed=11,
        enforce_interval=scenario.get("enforce_interval", 60.0),
        external_load=scenario.get("external_load", 0.0),
    )


def prompts_for(repos: list[Path]) -> list[tuple[str, str]]:
    texts = load_prompts(None)
    out = []
    for repo in repos:
        pack = pack_repo(repo, slug=repo.name, max_input_tokens=20000)
        for agent in AGENTS:
            prompt = build_prompt(pack, agent, texts, max_output_tokens=MAX_OUTPUT)
            out.append((prompt.system, prompt.pack + "\n" + prompt.instructions))
    return out


def sdk_pool(
    prompts: list[tuple[str, str]], config: SimConfig, threads: int
) -> tuple[dict, float, float, int]:
    with Simulator(config) as sim:
        client = anthropic.Anthropic(api_key="bench", base_url=sim.base_url, max_retries=10)
        failures = 0

        def send(item: tuple[str, str]) -> bool:
            system, text = item
            try:
                client.messages.create(
                    model=MODEL,
                    max_tokens=MAX_OUTPUT,
                    system=system,
                    messages=[{"role": "user", "content": text}],
                )
                return True
            except anthropic.APIError:
                return False

        started = time.monotonic()
        with ThreadPoolExecutor(threads) as pool:
            failures = sum(not ok for ok in pool.map(send, prompts))
        total = time.monotonic() - started
        stats = _stats(sim)
        return stats, stats["busy"], total, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rpm", type=int, default=120)
    parser.add_argument("--itpm", type=int, default=60_000)
    parser.add_argument("--otpm", type=int, default=20_000)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    limits = {"rpm": args.rpm, "itpm": args.itpm, "otpm": args.otpm}
    repos_needed = max(1, args.requests // len(AGENTS))
    print(
        f"{repos_needed} repos x {len(AGENTS)} agents, limits {limits}, "
        f"latency {LATENCY}s + {PER_TOKEN}s/token, {CONCURRENCY} in flight",
        flush=True,
    )
    header = (
        f"{'scenario':<11} {'strategy':<38} {'requests':>8} {'429s':>5} {'failed':>6} "
        f"{'wall s':>7} {'bound s':>7} {'wall/bound':>10} {'vs (b)':>7} {'total s':>8}"
    )
    lines = []
    for name in args.scenarios.split(","):
        scenario = SCENARIOS[name]
        config = _config(limits, scenario)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            repos = make_repos(work / "repos", repos_needed)
            rows = [("(a) review-runner", *review_runner(repos, config, work))]
            print(f"  {name}: (a) done", flush=True)
            prompts = prompts_for(repos)
            rows.append(("(b) SDK, 4 threads, built-in retries", *sdk_pool(prompts, config, 4)))
            print(f"  {name}: (b) done", flush=True)
            rows.append(("(c) SDK, one after another", *sdk_pool(prompts, config, 1)))
            print(f"  {name}: (c) done", flush=True)
        peer = rows[1][2]
        for strategy, stats, busy, total, failed in rows:
            low = bound(stats, limits, scenario)
            lines.append(
                f"{name:<11} {strategy:<38} {stats['answered']:>8} {stats['rate_limited']:>5} "
                f"{failed:>6} {busy:>7.1f} {low:>7.1f} {busy / low:>10.2f} "
                f"{busy / peer:>7.2f} {total:>8.1f}"
            )
    print()
    print(header)
    print("\n".join(lines))
    print(
        "\nwall = first arrival to last response at the simulator; total adds start-up and"
        " packing.\nrequests = answered Messages requests; (a) adds one cache warm-up per"
        " repository.\nbound counts one full bucket at the start; under external load, the"
        " capacity left to us.\nvs (b) = wall time over that of (b) in the same scenario."
    )
    print(
        "Targets for (a): plain <= 1.05x with 0 429s; per-second at most one 429; external"
        " 429s < 1% and <= 1.10x; vs (b) < 1 everywhere."
    )


if __name__ == "__main__":
    main()
