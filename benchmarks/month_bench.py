"""A simulated month of nights: review-runner's incremental nights against two naive policies.

    python benchmarks/month_bench.py [--nights 30] [--repos 20] [--naive-every 7] [--seed 1]

Twenty generated git repositories (five modules each, a planted bug in one). Each night about 20%
of them get between 1 and 50 changed lines, half of those changes plant a new bug (a line the
simulator's reviewer flags, with a unique name), and each week one repository in five tags a
release. Every night is a real `run` (runner.run.run: pack, triage, plan, ledger admission, the
worker pool) against the built-in simulator on loopback, in its own state folder per policy:

- review-runner: `run` as shipped (mode auto, full_review_days 7). Between nights its memory is
  aged one day in runs.db (the nights run minutes apart, not days), so that full_review_days acts.
- full concurrent: `run --full --mode concurrent` (every repo, four agents, every night);
- full single: `run --full --mode single` (every repo, one combined request, every night).

The naive policies are run for real on every `--naive-every`-th night (1, 1+k, ...) of the same
month, and their month is the mean of those nights times the number of nights (they review the
same repos in full every night, so their cost barely moves); `--naive-every 1` runs them every
night. Also printed: the share of planted bugs that review-runner reports on the night they appear
(a finding whose evidence holds the bug's unique name, in that night's findings.json).
Targets: at most 0.20x the full-concurrent month, and 100% of planted bugs on their night.

Measured (defaults, seed 1, 2 shared cores under load ~16, 1248 s): review-runner $2.52, full
concurrent $16.96, full single $6.11 (0.149x and 0.360x of full concurrent); 116 changed
repo-nights, 17 releases; 36 concurrent, 137 single and 427 unchanged repo-nights; 59/59 planted
bugs reported on their night.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs.manifest import load_manifest  # noqa: E402
from runner.run import RunOptions, load_config, run  # noqa: E402
from runner.run.results import RunResult  # noqa: E402
from runner.simulator import SimConfig, Simulator  # noqa: E402
from statedb import iso, parse_iso  # noqa: E402

BUG_LINES = (
    "    return eval(bug{k}_expr)",
    "    subprocess.run(bug{k}_cmd, shell=True)",
    "    bug{k}_digest = hashlib.md5(data)",
    "    assert bug{k}_value > 0",
    "    global bug{k}_counter",
)
GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}
MODULES = 5


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], env=GIT_ENV, check=True,
                   capture_output=True, timeout=60)  # fmt: skip


def module_text(name: str, size: int) -> str:
    lines = ["import hashlib", "import subprocess", ""]
    for i in range(size):
        lines += [f"def {name}_f{i}(x):", f"    return x * {i} + 1", ""]
    return "\n".join(lines) + "\n"


@dataclass
class Month:
    """The generated repos and what the month did to them."""

    root: Path
    rng: random.Random
    repos: list[Path] = field(default_factory=list)
    next_bug: int = 1
    changes: int = 0
    releases: int = 0
    planted: dict[int, list[tuple[str, str]]] = field(
        default_factory=dict
    )  # night -> (slug, token)

    def create(self, count: int) -> None:
        for r in range(count):
            repo = self.root / "repos" / f"repo{r:02d}"
            repo.mkdir(parents=True)
            for m in range(MODULES):
                (repo / f"mod{m}.py").write_text(module_text(f"m{m}", 12 + (r + m) % 7))
            bug = self.bug_line()
            with open(repo / "mod0.py", "a") as handle:
                handle.write(f"\ndef seeded(data):\n{bug[1]}\n")
            git(repo, "init", "-q", "-b", "main")
            git(repo, "add", "-A")
            git(repo, "commit", "-qm", "initial")
            self.repos.append(repo)

    def bug_line(self) -> tuple[str, str]:
        k = self.next_bug
        self.next_bug += 1
        return f"bug{k}_", BUG_LINES[k % len(BUG_LINES)].format(k=k)

    def change(self, night: int, repo: Path) -> None:
        """1 to 50 changed lines in one module; every other change plants a bug among them."""
        lines = self.rng.randint(1, 50)
        body = [f"    step_{night}_{i} = x + {i}" for i in range(max(0, lines - 1))]
        if self.rng.random() < 0.5:
            token, bug = self.bug_line()
            body.insert(self.rng.randrange(len(body) + 1), bug)
            self.planted.setdefault(night, []).append((repo.name, token))
        else:
            body.append(f"    return {night}")
        text = [f"def night_{night}(x, data=None):", *body] if lines > 1 else body[-1:]
        target = repo / f"mod{self.rng.randrange(MODULES)}.py"
        with open(target, "a") as handle:
            handle.write("\n".join(text) + "\n")
        git(repo, "commit", "-qam", f"night {night}")
        self.changes += 1

    def release(self, night: int, repo: Path) -> None:
        git(repo, "tag", f"v{night}.{repo.name}")
        self.releases += 1


def write_manifest(path: Path, repos: list[Path], out: Path) -> Path:
    entries = ", ".join(json.dumps(str(r)) for r in repos)
    path.write_text(
        'name = "month"\nmodel = "claude-sonnet-5-5"\nmax_output_tokens = 1024\n'
        f"max_input_tokens = 20000\nout = {json.dumps(str(out))}\nrepos = [{entries}]\n"
        "[limits]\nrpm = 100000\nitpm = 100000000\notpm = 10000000\nmax_concurrent = 8\n"
    )
    return path


def one_night(manifest: Path, state: Path, sim: Simulator, **options: object) -> RunResult:
    config = load_config(
        load_manifest(manifest),
        RunOptions(count_tokens=False, **options),
        state,  # type: ignore[arg-type]
    ).with_api(sim.base_url, "bench-key")
    result = run(config)
    if result.status != "done":
        raise SystemExit(f"night failed: {result.status} ({result.reason})")
    return result


def age_memory(state: Path, days: float = 1.0) -> None:
    """Move every remembered review a day into the past (the nights run minutes apart)."""
    with sqlite3.connect(state / "runs.db") as db:
        rows = db.execute("SELECT id, reviewed_at FROM repo_reviews").fetchall()
        for row_id, at in rows:
            db.execute(
                "UPDATE repo_reviews SET reviewed_at = ? WHERE id = ?",
                [iso(parse_iso(at) - days * 86400), row_id],
            )


def reported(result: RunResult, slug: str, token: str) -> bool:
    assert result.out_dir is not None
    doc = json.loads((result.out_dir / slug / "findings.json").read_text())
    return any(token in (f.get("evidence") or "") for f in doc["findings"])


def cost(result: RunResult) -> float:
    return int(result.totals.get("cost_micros", 0)) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=30)
    parser.add_argument("--repos", type=int, default=20)
    parser.add_argument("--naive-every", type=int, default=7, help="run the naive policies "
                        "on every k-th night (1: every night)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="month-bench-") as tmp:
        root = Path(tmp)
        month = Month(root, random.Random(args.seed))
        month.create(args.repos)
        per_week = max(1, args.repos // 5)
        ours = {"cost": 0.0, "requests": 0, "concurrent": 0, "single": 0, "unchanged": 0}
        naive: dict[str, list[float]] = {"concurrent": [], "single": []}
        found = total = 0
        missed: list[str] = []
        with Simulator(SimConfig(seed=args.seed)) as sim:
            for n in range(1, args.nights + 1):
                if n > 1:
                    count = max(1, round(0.2 * args.repos))
                    for repo in month.rng.sample(month.repos, count):
                        month.change(n, repo)
                if (n - 1) % 7 == 0:  # this week's releases: repos and nights drawn now
                    week = month.rng.sample(month.repos, per_week)
                    nights = [month.rng.randrange(n, n + 7) for _ in week]
                    releases = dict(zip(week, nights, strict=True))
                for repo, night in releases.items():
                    if night == n:
                        month.release(n, repo)
                manifest = write_manifest(root / "ours.toml", month.repos, root / "out-ours")
                before = len([r for r in sim.log() if r.get("path") == "/v1/messages"])
                result = one_night(manifest, root / "state-ours", sim)
                after = len([r for r in sim.log() if r.get("path") == "/v1/messages"])
                ours["cost"] += cost(result)
                ours["requests"] += after - before
                for d in result.decisions:
                    key = "unchanged" if d["action"] == "unchanged" else str(d["mode"])
                    ours[key] += 1
                for slug, token in month.planted.get(n, []):
                    total += 1
                    if reported(result, slug, token):
                        found += 1
                    else:
                        missed.append(f"night {n} {slug} {token}")
                age_memory(root / "state-ours")
                if (n - 1) % args.naive_every == 0:
                    for mode in ("concurrent", "single"):
                        m = write_manifest(root / f"{mode}.toml", month.repos, root / f"out-{mode}")
                        r = one_night(m, root / f"state-{mode}", sim, full=True, mode=mode)
                        naive[mode].append(cost(r))
                print(f"night {n:>2}: ${cost(result):.4f}  (elapsed {time.monotonic() - started:.0f}s)",
                      file=sys.stderr, flush=True)  # fmt: skip
    nights = args.nights
    month_of = {m: sum(c) / len(c) * nights for m, c in naive.items()}
    full = month_of["concurrent"]
    print(f"month_bench: {nights} nights x {args.repos} repos, seed {args.seed}; "
          f"{month.changes} changed repo-nights, {month.releases} releases, {total} bugs planted")  # fmt: skip
    print(f"{'policy':<28}{'month USD':>12}{'vs full concurrent':>22}")
    print(f"{'review-runner (incremental)':<28}{ours['cost']:>12.4f}{ours['cost'] / full:>21.3f}x")
    for mode in ("concurrent", "single"):
        label = f"full {mode} (naive)"
        print(f"{label:<28}{month_of[mode]:>12.4f}{month_of[mode] / full:>21.3f}x")
    sampled = len(naive["concurrent"])
    print(
        f"naive months: mean of {sampled} night(s) run for real (every {args.naive_every}) x {nights}"
    )
    print(f"review-runner repo-nights: {ours['concurrent']} concurrent, {ours['single']} single, "
          f"{ours['unchanged']} unchanged (not sent); {ours['requests']} review requests")  # fmt: skip
    share = found / total if total else 1.0
    print(f"planted bugs reported on their night: {found}/{total} = {share:.0%}")
    for line in missed:
        print(f"  missed: {line}")
    print(f"targets: cost <= 0.20x full concurrent: {'met' if ours['cost'] <= 0.2 * full else 'NOT met'}; "
          f"100% of planted bugs on their night: {'met' if found == total else 'NOT met'}")  # fmt: skip
    print(f"wall time {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
