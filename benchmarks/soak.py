"""A night that nothing stops: one run over many repos against a hostile simulator (issue 9).

    python benchmarks/soak.py [--repos 40] [--kill-every 20] [--quick] [--timeout 900]

One `review-runner run` (auto mode, 4 workers) of `--repos` generated git repositories,
against the built-in simulator on 127.0.0.1 with 8% 529 overloaded, 4% 500 and 2% dropped
connections (after billing), while a worker process that holds a reservation is SIGKILLed
every `--kill-every` seconds. Among the repos: one holding file names that are not UTF-8,
an unreadable file, a FIFO and a symlink loop; one whose `.git/config` plants commands
(`core.fsmonitor`, `core.pager`, `diff.external`, a `post-checkout` hook) that would create
marker files if git ran them. `--quick`: 8 repos, a kill every 10 s.

It prints, with the targets:
  jobs done of jobs possible                       (100%)
  marker files created                             (0)
  ledger spend (settled) + unknown worst cases against the simulator's billing (covers it)
  reservations left open                           (0)
and exits 1 when a target is missed. Loopback only; bounded by `--timeout`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runner.simulator import SimConfig, Simulator  # noqa: E402

GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "soak",
    "GIT_AUTHOR_EMAIL": "soak@example.invalid",
    "GIT_COMMITTER_NAME": "soak",
    "GIT_COMMITTER_EMAIL": "soak@example.invalid",
}

SOURCE = '''import subprocess


def run(cmd):
    # TODO: never use a shell here
    return subprocess.run(cmd, shell=True)


def scale(values, factor):
    """Multiply every value by factor."""
    return [v * factor for v in values]
'''


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        env={**os.environ, **GIT_ENV, "HOME": str(repo.parent)},
    )


def make_repos(root: Path, count: int, markers: Path) -> list[Path]:
    """`count` small git repos; the first is odd (bad names, unreadable files), the second hostile."""
    repos = []
    for i in range(count):
        repo = root / f"repo{i:02d}"
        (repo / "src").mkdir(parents=True)
        (repo / "src" / "app.py").write_text(SOURCE + f"\nVERSION = {i}\n")
        (repo / "src" / f"util_{i}.py").write_text(f"def helper(x):\n    return x + {i}\n")
        (repo / "README.md").write_text(f"# repo {i}\n")
        _git(repo, "init", "--quiet")
        _git(repo, "add", "-A")
        _git(repo, "commit", "--quiet", "-m", "init")
        repos.append(repo)
    odd = repos[0]
    (odd / os.fsdecode(b"caf\xe9.py")).write_bytes(b"X = 1\n")  # a Latin-1 name, not UTF-8
    (odd / os.fsdecode(b"r\xff\xfe.txt")).write_bytes(b"notes\n")
    secret = odd / "unreadable.py"
    secret.write_text("Y = 2\n")
    secret.chmod(0)  # unreadable for anyone but root; the FIFO below is for root
    os.mkfifo(odd / "pipe.py")
    (odd / "loop").symlink_to("loop")
    if len(repos) > 1:
        hostile = repos[1]
        config = hostile / ".git" / "config"
        hooks = hostile / ".git" / "hooks"
        (hooks / "post-checkout").write_text(f"#!/bin/sh\ntouch {markers}/hook\n")
        (hooks / "post-checkout").chmod(0o755)
        config.write_text(
            config.read_text()
            + f'[core]\n\tfsmonitor = "touch {markers}/fsmonitor; false"\n'
            + f'\tpager = "touch {markers}/pager; cat"\n'
            + f'[diff]\n\texternal = "touch {markers}/diff"\n'
        )
    return repos


def write_manifest(path: Path, repos: list[Path], out: Path) -> Path:
    lines = [
        'name = "soak"',
        'model = "claude-sonnet-5-5"',
        'mode = "auto"',
        "max_output_tokens = 1024",
        "max_input_tokens = 20000",
        f"out = {json.dumps(str(out))}",
        "repos = [" + ", ".join(json.dumps(str(r)) for r in repos) + "]",
        "[limits]",
        "rpm = 1200",
        "itpm = 2000000",
        "otpm = 400000",
        "max_concurrent = 4",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _parent(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Killer(threading.Thread):
    """Every `every` seconds, SIGKILL one worker of `run_pid` that holds a reservation."""

    def __init__(self, ledger: Path, run_pid: int, every: float) -> None:
        super().__init__(daemon=True)
        self.ledger, self.run_pid, self.every = ledger, run_pid, every
        self.killed: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.every):
            holders = self._holders()
            random.shuffle(holders)  # not always the oldest request: any worker may die
            for pid in holders:
                if _parent(pid) == self.run_pid:
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(pid)
                    break

    def _holders(self) -> list[int]:
        if not self.ledger.exists():
            return []
        try:
            with sqlite3.connect(self.ledger, timeout=5) as conn:
                rows = conn.execute("SELECT DISTINCT pid FROM entries WHERE state = 'reserved'")
                return [pid for (pid,) in rows]
        except sqlite3.Error:
            return []


def ledger_figures(ledger: Path) -> dict[str, int]:
    with sqlite3.connect(ledger) as conn:
        states = dict(conn.execute("SELECT state, count(*) FROM entries GROUP BY state"))
        settled = conn.execute(
            "SELECT coalesce(sum(cost_micros), 0) FROM entries WHERE state = 'settled'"
        ).fetchone()[0]
        unknown = conn.execute(
            "SELECT coalesce(sum(worst_micros), 0) FROM entries WHERE state = 'unknown'"
        ).fetchone()[0]
    return {
        "settled_micros": settled,
        "unknown_worst_micros": unknown,
        "unknown": states.get("unknown", 0),
        "reserved": states.get("reserved", 0),
        "released": states.get("released", 0),
    }


def soak(repos: int, kill_every: float, timeout: float) -> int:
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        base = Path(tmp)
        markers = base / "markers"
        markers.mkdir()
        made = make_repos(base / "repos", repos, markers)
        manifest = write_manifest(base / "soak.toml", made, base / "reports")
        state = base / "state"
        sim_config = SimConfig(
            overloaded_rate=0.08,
            server_error_rate=0.04,
            drop_rate=0.02,
            latency=1.0,
            per_token=0.0005,
            seed=9,
        )
        started = time.monotonic()
        with Simulator(sim_config) as sim:
            env = {
                **os.environ,
                "REVIEW_RUNNER_HOME": str(state),
                "ANTHROPIC_BASE_URL": sim.base_url,
                "ANTHROPIC_API_KEY": "soak-key",
            }
            env.pop("REVIEW_RUNNER_DEBUG", None)
            proc = subprocess.Popen(
                [sys.executable, "-m", "runner", "run", str(manifest), "--workers", "4", "--json"],
                cwd=ROOT,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            killer = Killer(state / "ledger.db", proc.pid, kill_every)
            killer.start()
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
                print(f"timed out after {timeout:.0f} s", file=sys.stderr)
            finally:
                killer.done.set()
                killer.join()
            stats = sim.stats()
        wall = time.monotonic() - started
        try:
            doc: dict[str, Any] = json.loads(out)
        except json.JSONDecodeError:
            print(err[-3000:], file=sys.stderr)
            print(f"no JSON from the run (exit {proc.returncode})")
            return 1
        jobs = doc["jobs"]
        possible = sum(jobs.values())
        created = sorted(p.name for p in markers.iterdir())
        money = ledger_figures(state / "ledger.db")
        billed = stats["billed_micros"]
        covered = money["settled_micros"] + money["unknown_worst_micros"]
        odd_row = next(
            r
            for r in json.loads((Path(doc["out_dir"]) / "summary.json").read_text())["repos"]
            if r["slug"] == made[0].name
        )
        print(f"soak: {repos} repos, {possible} jobs, mode {doc['mode']}, exit {proc.returncode}")
        print(
            f"  simulator: {stats['messages']} requests, {stats['overloaded']} x 529, "
            f"{stats['server_errors']} x 500, {stats['dropped']} dropped"
        )
        print(f"  workers SIGKILLed: {len(killer.killed)} (every {kill_every:g} s)")
        print(f"  jobs done of jobs possible: {jobs['done']}/{possible} (target 100%)")
        print(f"  odd repo {made[0].name}: {odd_row['status']} {odd_row['error'] or ''}")
        with sqlite3.connect(state / "runs.db") as conn:
            for job_id, error in conn.execute(
                "SELECT id, error FROM jobs WHERE status != 'done' ORDER BY id"
            ):
                print(f"    not done: {job_id}: {error}")
        print(f"  marker files created: {len(created)} {created or ''} (target 0)")
        print(
            f"  ledger settled ${money['settled_micros'] / 1e6:.4f} + unknown worst "
            f"${money['unknown_worst_micros'] / 1e6:.4f} ({money['unknown']} entries, "
            f"run's unknown_requests {doc['unknown_requests']}) = ${covered / 1e6:.4f}"
        )
        print(
            f"  simulator billed ${billed / 1e6:.4f}: "
            f"{'covered' if covered >= billed else 'NOT COVERED'}"
        )
        print(f"  reservations left open: {money['reserved']} (target 0)")
        print(f"  wall time: {wall:.0f} s")
        ok = (
            proc.returncode == 0
            and jobs["done"] == possible
            and not created
            and covered >= billed
            and money["reserved"] == 0
        )
        return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repos", type=int, default=40)
    parser.add_argument("--kill-every", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true", help="8 repos, a kill every 10 s")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    if args.quick:
        args.repos, args.kill_every = 8, 10.0
    return soak(max(2, args.repos), args.kill_every, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
