"""Packing speed: jobs.pack against repomix on the same file sets, side by side.

    python benchmarks/pack_bench.py [--files 10000] [--runs 3]

Two trees: a generated one (>= 10,000 files of Python, JS, Markdown, tests and config, some with
planted secrets, in a temporary folder) and this project itself. For each, `pack_repo` runs with a
budget large enough to include every file (the same work as repomix, which has no budget), then
repomix packs exactly the files we selected (`--stdin`), with line numbers and its secret scan on
(we redact too), XML style, written to a file. Both timings are wall clock, best of --runs, and
repomix's include its node start-up, as a user would run it. repomix comes from the npm registry,
installed once into benchmarks/.work/npm (git-ignored); the script stops by itself within ~2 minutes.

    python benchmarks/pack_bench.py --memory [--memory-mb 200] [--tokens 150000] [--before f06b30e]

Peak memory instead: a generated repository of --memory-mb MB (~100 kB source, test and doc files)
is packed to --tokens tokens in a fresh interpreter, which reports its peak RSS (ru_maxrss) above
its own baseline (the RSS after importing jobs.pack), then packs again under tracemalloc for the
peak of the Python heap alone. The same run is made with the jobs package
of the --before commit (extracted with `git archive` into a temporary folder), side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from jobs.pack import pack_repo  # noqa: E402

NPM_DIR = HERE / ".work" / "npm"
REPOMIX_VERSION = "1.14.0"
TIMEOUT_S = 100
WORDS = (
    "alpha",
    "beta",
    "gamma",
    "delta",
    "value",
    "total",
    "count",
    "index",
    "record",
    "parse",
    "build",
    "render",
)


def generate(root: Path, n_files: int, seed: int = 7) -> None:
    """A deterministic multi-language tree of `n_files` files, ~1.5 KB each."""
    rng = random.Random(seed)
    (root / ".gitignore").write_text("*.log\nbuild/\n")
    for i in range(n_files - 1):
        pkg = f"pkg{i % 50:02d}/mod{(i // 50) % 20:02d}"
        kind = i % 10
        if kind < 5:
            rel = f"src/{pkg}/file_{i:05d}.py"
            body = "".join(
                f"def {rng.choice(WORDS)}_{j}(x):\n    return x * {j} + {rng.randint(0, 999)}\n\n"
                for j in range(20)
            )
        elif kind < 7:
            rel = f"web/{pkg}/comp_{i:05d}.js"
            body = "".join(
                f"export function {rng.choice(WORDS)}{j}(a) {{ return a + {j}; }}\n"
                for j in range(30)
            )
        elif kind < 9:
            rel = f"tests/{pkg}/test_{i:05d}.py"
            body = "".join(f"def test_{j}():\n    assert {j} + 1 == {j + 1}\n\n" for j in range(25))
        else:
            rel = f"docs/{pkg}/page_{i:05d}.md"
            body = "".join(
                f"## {rng.choice(WORDS).title()} {j}\n\nSome prose about {rng.choice(WORDS)}.\n\n"
                for j in range(20)
            )
        if i % 997 == 0:  # a few planted secrets, so both tools' scanners find something
            body += f'\nAPI_TOKEN = "{"".join(rng.choice("abcdefghijkmnpqrstuvwxyzABCDEFGH23456789") for _ in range(32))}"\n'
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)


def repomix_bin() -> list[str]:
    """The repomix command, installed from the npm registry into benchmarks/.work/npm on first use."""
    local = NPM_DIR / "node_modules" / ".bin" / "repomix"
    if not local.exists():
        NPM_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "npm",
                "install",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(NPM_DIR),
                f"repomix@{REPOMIX_VERSION}",
            ],
            check=True,
            timeout=TIMEOUT_S,
            capture_output=True,
        )
    return [str(local)]


def time_ours(root: Path, runs: int) -> tuple[float, object]:
    best, pack = float("inf"), None
    for _ in range(runs):
        t0 = time.perf_counter()
        pack = pack_repo(root, slug=root.name, max_input_tokens=10**9, size_cap=1_000_000)
        best = min(best, time.perf_counter() - t0)
    return best, pack


def time_repomix(root: Path, paths: list[str], runs: int, out: Path) -> tuple[float, int]:
    cmd = [
        *repomix_bin(),
        "--stdin",
        "--style",
        "xml",
        "--output-show-line-numbers",
        "--quiet",
        "-o",
        str(out),
    ]
    best = float("inf")
    for _ in range(runs):
        out.unlink(missing_ok=True)
        t0 = time.perf_counter()
        subprocess.run(
            cmd,
            input="\n".join(paths) + "\n",
            text=True,
            cwd=root,
            check=True,
            timeout=TIMEOUT_S,
            capture_output=True,
        )
        best = min(best, time.perf_counter() - t0)
    text = out.read_text(encoding="utf-8", errors="replace")
    return best, sum(1 for line in text.splitlines() if line.startswith("<file path="))


def generate_big(root: Path, total_mb: int, seed: int = 11) -> int:
    """A deterministic tree of ~100 kB text files adding up to `total_mb` MB; returns the bytes."""
    rng = random.Random(seed)
    line = "    {w}_{j} = compute_{w}({j}, {k}) + offset  # {w} step {j} of an ordinary module\n"
    written, i = 0, 0
    while written < total_mb * 1_000_000:
        kind = i % 10
        rel = (
            f"src/pkg{i % 40:02d}/mod_{i:05d}.py"
            if kind < 6
            else f"tests/pkg{i % 40:02d}/test_{i:05d}.py"
            if kind < 9
            else f"docs/pkg{i % 40:02d}/page_{i:05d}.md"
        )
        w = rng.choice(WORDS)
        body = "def run():\n" + "".join(
            line.format(w=w, j=j, k=rng.randint(0, 999)) for j in range(1100)
        )
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
        written += len(body)
        i += 1
    return written


_CHILD = """
import json, resource, sys
from pathlib import Path
from jobs.pack import pack_repo
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pack = pack_repo(Path(sys.argv[1]), slug="big", max_input_tokens=int(sys.argv[2]))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import tracemalloc  # a second pack, traced: the Python heap's own peak, finer than RSS pages
tracemalloc.start()
pack_repo(Path(sys.argv[1]), slug="big", max_input_tokens=int(sys.argv[2]))
traced = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
print(json.dumps({"base_kb": base, "peak_kb": peak, "tokens": pack.token_estimate, "sha": pack.sha256, "traced": traced,
                  "pack_bytes": len(pack.text.encode()), "files": len(pack.files),
                  "shown": sum(1 for f in pack.files if f.status != "omitted")}))
"""


def measure_memory(jobs_parent: Path, root: Path, tokens: int) -> dict[str, int]:
    """Pack `root` in a fresh interpreter importing jobs from `jobs_parent`; its RSS figures."""
    env = {**os.environ, "PYTHONPATH": str(jobs_parent)}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(root), str(tokens)],
        capture_output=True,
        text=True,
        env=env,
        cwd=jobs_parent,
        check=True,
    )
    return json.loads(out.stdout)


def memory_main(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="pack-mem-"))
    try:
        root = work / "big"
        total = generate_big(root, args.memory_mb)
        before = work / "before"
        before.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.before, "jobs"],
            capture_output=True,
            check=True,
        )
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive.stdout, check=True)
        rows = [
            ("this tree", measure_memory(ROOT, root, args.tokens)),
            (args.before, measure_memory(before, root, args.tokens)),
        ]
        print(
            f"peak RSS above baseline, packing a generated {total / 1e6:.0f} MB repo "
            f"to {args.tokens} tokens (ru_maxrss of a fresh interpreter)"
        )
        print(
            f"{'jobs from':<12}{'baseline MB':>13}{'peak MB':>9}{'above MB':>10}{'tokens':>9}{'pack kB':>9}{'shown/files':>13}"
        )
        for label, r in rows:
            above = (r["peak_kb"] - r["base_kb"]) / 1024
            print(
                f"{label:<12}{r['base_kb'] / 1024:>13.1f}{r['peak_kb'] / 1024:>9.1f}{above:>10.1f}"
                f"{r['tokens']:>9}{r['pack_bytes'] / 1000:>9.0f}{r['shown']:>7}/{r['files']:<5}"
                f"{r['traced'] / 2**20:>11.1f}"
            )
        same = "yes" if rows[0][1]["sha"] == rows[1][1]["sha"] else "NO"
        print(f"same pack text (sha256) from both: {same}; target: under 100 MB above the baseline")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--memory", action="store_true", help="measure peak memory instead")
    parser.add_argument("--memory-mb", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=150_000)
    parser.add_argument("--before", default="f06b30e", help="commit whose jobs/ to compare")
    args = parser.parse_args()
    if args.memory:
        return memory_main(args)
    work = Path(tempfile.mkdtemp(prefix="pack-bench-"))
    try:
        gen = work / "generated"
        gen.mkdir()
        generate(gen, args.files)
        rows = []
        for label, root in (("generated", gen), ("this project", ROOT)):
            ours_s, pack = time_ours(root, args.runs)
            shown = [f.path for f in pack.files if f.status != "omitted"]  # type: ignore[attr-defined]
            theirs_s, their_files = time_repomix(
                root, shown, args.runs, work / f"repomix-{root.name}.xml"
            )
            rows.append((label, len(shown), their_files, ours_s, theirs_s, pack))
        print(
            f"jobs.pack vs repomix {REPOMIX_VERSION} (best of {args.runs}; wall clock; {os.cpu_count()} cpus)"
        )
        print(
            f"{'tree':<14}{'files ours':>11}{'files repomix':>15}{'ours s':>9}{'repomix s':>11}{'repomix/ours':>14}{'our tokens':>12}{'MB':>7}"
        )
        for label, n_ours, n_theirs, ours_s, theirs_s, pack in rows:
            mb = len(pack.text.encode()) / 1e6
            print(
                f"{label:<14}{n_ours:>11}{n_theirs:>15}{ours_s:>9.2f}{theirs_s:>11.2f}{theirs_s / ours_s:>13.1f}x"
                f"{pack.token_estimate:>12}{mb:>7.1f}"
            )
            print(f"{'':<14}redactions {dict(pack.redactions)}; skipped {len(pack.skipped)}")
        print("ratio > 1 means jobs.pack is faster than repomix on the same file set")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
