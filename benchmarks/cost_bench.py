"""The cost of a night on each API and in each mode, side by side on one manifest and simulator.

    python benchmarks/cost_bench.py [--repos 12] [--lines 150] [--output-mean 400]

Four runs of the real CLI (`review-runner run --json`), each against its own built-in
simulator with the same settings (so that no run reads a cache another wrote) and from a fresh
state folder: concurrent and single mode on the Messages API, and the same on
the Message Batches API (`--api batches`). Each run's cost is the ledger's, checked equal to
what the simulator billed for it. Printed: the four costs, batches / messages for each mode,
concurrent / single on each API, and the cache hits of the second phase of concurrent batches
(its requests that read the pack the first phase wrote).

Targets (issue 12): concurrent on batches at most 0.60x concurrent on messages; single on
batches at most 0.52x single on messages; second-phase cache hits at least 95%. Exits 1 if
one is missed.

Why the concurrent ratio is above 0.50: on messages the pack is written once with the 5-minute
TTL (1.25x the input price) by a max_tokens=0 warm-up and read by four agents (4 x 0.1x); a
batch refuses max_tokens=0 and may take an hour, so its first agent writes the pack with the
1-hour TTL (2x) and three agents read it, all at half price: (2 + 0.3) / 2 = 1.15 against 1.65.
So the larger the pack against the replies, the closer the ratio gets to 1.15 / 1.65 = 0.70
(--lines 1500, ~18,000-token packs: 0.65x, the 0.60x target missed); the more output, to 0.50.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from support import make_repos, write_manifest  # noqa: E402

from runner.simulator import SimConfig, Simulator  # noqa: E402

RUNS = (
    ("messages", "concurrent"),
    ("messages", "single"),
    ("batches", "concurrent"),
    ("batches", "single"),
)
TARGETS = {"concurrent": 0.60, "single": 0.52}
PHASE2_HITS_TARGET = 0.95


def _run(manifest: Path, sim: Simulator, api: str, mode: str, home: Path) -> dict[str, Any]:
    env = {
        **os.environ,
        "REVIEW_RUNNER_HOME": str(home),
        "ANTHROPIC_BASE_URL": sim.base_url,
        "ANTHROPIC_API_KEY": "bench-key",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "runner",
            "run",
            str(manifest),
            "--api",
            api,
            "--mode",
            mode,
            "--poll-interval",
            "0.2",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"{api}/{mode} run failed ({result.returncode}):\n{result.stderr}")
    doc = json.loads(result.stdout)
    billed = sim.stats()["billed_micros"]
    if round(doc["cost_usd"] * 1_000_000) != billed:
        sys.exit(f"{api}/{mode}: ledger ${doc['cost_usd']} != simulator ${billed / 1e6}")
    return doc


def _phase2_hits(sim: Simulator, batch_id: str) -> tuple[int, int, float]:
    """(requests that read the cache, requests, share of their input read from the cache)."""
    records = [r for r in sim.log() if r.get("batch_id") == batch_id and r.get("usage")]
    hits = sum(1 for r in records if r["usage"].get("cache_read_input_tokens"))
    read = sum(r["usage"].get("cache_read_input_tokens") or 0 for r in records)
    total = sum(
        (r["usage"].get(k) or 0)
        for r in records
        for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    return hits, len(records), read / total if total else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", type=int, default=12)
    parser.add_argument("--lines", type=int, default=150, help="filler functions per repo")
    parser.add_argument("--output-mean", type=int, default=400, help="simulated reply length")
    args = parser.parse_args()
    config = SimConfig(seed=1, output_mean=args.output_mean)
    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        repos = make_repos(tmp / "repos", args.repos, lines=args.lines)
        limits = {"rpm": 4000, "itpm": 4_000_000, "otpm": 400_000, "max_concurrent": 4}
        manifest = write_manifest(tmp / "m.toml", repos, limits=limits)
        pack = sum(len(p.read_text()) for p in repos[0].rglob("*.py")) // 4
        costs: dict[tuple[str, str], float] = {}
        tokens: dict[tuple[str, str], str] = {}
        phase2: tuple[int, int, float] = (0, 0, 0.0)
        for api, mode in RUNS:
            # One simulator per run, all alike: a run must not read the cache another wrote.
            with Simulator(config) as sim:
                doc = _run(manifest, sim, api, mode, tmp / f"state-{api}-{mode}")
                if (api, mode) == ("batches", "concurrent"):
                    phase2 = _phase2_hits(sim, sim.batch_log()[1]["id"])
            costs[(api, mode)] = doc["cost_usd"]
            tokens[(api, mode)] = (
                f"in {doc['input_tokens']:,}, cache write {doc['cache_creation_input_tokens']:,}, "
                f"cache read {doc['cache_read_input_tokens']:,}, out {doc['output_tokens']:,}"
            )
    print(
        f"{args.repos} repos (~{pack:,} tokens of code each), simulated replies ~{args.output_mean} tokens"
    )
    print(f"{'':12}{'messages':>12}{'batches':>12}{'batches/messages':>18}   target")
    for (api, mode), text in tokens.items():
        print(f"  {api:9} {mode:11} {text}")
    failed = False
    for mode in ("concurrent", "single"):
        m, b = costs[("messages", mode)], costs[("batches", mode)]
        ok = b / m <= TARGETS[mode]
        failed |= not ok
        print(
            f"{mode:12}{m:>11.4f}${b:>11.4f}${b / m:>17.3f}x   <= {TARGETS[mode]:.2f}x "
            f"{'ok' if ok else 'MISSED'}"
        )
    for api in ("messages", "batches"):
        ratio = costs[(api, "concurrent")] / costs[(api, "single")]
        print(f"concurrent / single on {api}: {ratio:.2f}x")
    hits, requests, share = phase2
    ok = requests > 0 and hits / requests >= PHASE2_HITS_TARGET
    failed |= not ok
    print(
        f"second phase of concurrent batches: {hits}/{requests} requests read the cache "
        f"({hits / max(1, requests):.0%}; target >= {PHASE2_HITS_TARGET:.0%} "
        f"{'ok' if ok else 'MISSED'}), {share:.0%} of their input tokens"
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
