"""Helpers for the end-to-end run tests: small repos, manifests, the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ledger.ledger import Ledger
from runner.simulator import Simulator

SOURCE = '''import os
import pickle
import subprocess


def load(path):
    # TODO: validate the path
    with open(path, "rb") as handle:
        return pickle.loads(handle.read())


def run(cmd):
    return subprocess.run(cmd, shell=True)


def area(width, height):
    """Area of a rectangle."""
    return width * height
'''


def make_repos(root: Path, count: int, *, lines: int = 0) -> list[Path]:
    """`count` small plain-folder repos, each a little different."""
    repos = []
    for i in range(count):
        repo = root / f"repo{i:02d}"
        (repo / "src").mkdir(parents=True)
        (repo / "src" / "app.py").write_text(SOURCE + f"\nVERSION = {i}\n")
        filler = "".join(f"def helper_{i}_{n}(x):\n    return x + {n}\n\n" for n in range(lines))
        (repo / "src" / "helpers.py").write_text(filler or "X = 1\n")
        (repo / "README.md").write_text(f"# repo {i}\n")
        repos.append(repo)
    return repos


def write_manifest(path: Path, repos: list[Path], **extra: Any) -> Path:
    limits = extra.pop(
        "limits", {"rpm": 600, "itpm": 400_000, "otpm": 100_000, "max_concurrent": 4}
    )
    body = {
        "name": "test",
        "model": "claude-sonnet-5-5",
        "mode": "auto",
        "max_output_tokens": 1024,
        "max_input_tokens": 20_000,
        "out": str(path.parent / "reports"),
        **extra,
    }
    lines = [f"{k} = {json.dumps(v)}" for k, v in body.items()]
    lines.append("repos = [" + ", ".join(json.dumps(str(r)) for r in repos) + "]")
    lines.append("[limits]")
    lines += [f"{k} = {v}" for k, v in limits.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def api_env(sim: Simulator) -> dict[str, str]:
    return {"ANTHROPIC_BASE_URL": sim.base_url, "ANTHROPIC_API_KEY": "test-key"}


def messages(sim: Simulator) -> list[dict[str, Any]]:
    return [r for r in sim.log() if r.get("path") == "/v1/messages"]


def ledger_of(state: Path) -> Ledger:
    return Ledger(state / "ledger.db")


def billed_micros(sim: Simulator, *, dropped: bool | None = None) -> int:
    return sum(
        r.get("cost_micros") or 0
        for r in messages(sim)
        if r.get("billed") and (dropped is None or bool(r.get("dropped")) == dropped)
    )


def spawn(*args: str, sim: Simulator, **popen: Any) -> subprocess.Popen[str]:
    """`python -m runner ARGS` in the background, against `sim`, in its own process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        env={**os.environ, **api_env(sim)},
        text=True,
        start_new_session=True,
        **popen,
    )


def ledger_entries(state: Path, where: str, *args: object) -> list[tuple[int, str]]:
    """(pid, job_id) of the ledger entries matching `where`; none while the file does not exist."""
    if not (state / "ledger.db").exists():
        return []
    with sqlite3.connect(state / "ledger.db") as conn:
        try:
            return conn.execute(f"SELECT pid, job_id FROM entries WHERE {where}", args).fetchall()
        except sqlite3.OperationalError:  # not migrated yet
            return []


def collect(results: Any, procs: list[Any], timeout: float = 120) -> list[Any]:
    """One result per process from the `results` queue; fails at once (not after `timeout`)
    if a process died without one (a deadlock error or a crash ends its process)."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < len(procs):
        try:
            got.append(results.get(timeout=0.2))
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not dead, f"a process died with exit code {dead[0]}"
            assert time.monotonic() < deadline, "the processes did not finish in time"
    return got
