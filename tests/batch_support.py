"""Helpers for the Message Batches tests: the runs.db batch records and the simulator's log."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from support import api_env, cli

from runner.simulator import Simulator

POLL = "0.1"


def run_batches(manifest: Path, sim: Simulator, *args: str) -> subprocess.CompletedProcess[str]:
    """`run MANIFEST --api batches --json` against `sim`, polling fast."""
    return cli(
        "run",
        str(manifest),
        "--api",
        "batches",
        "--poll-interval",
        POLL,
        "--json",
        *args,
        env=api_env(sim),
    )


def resume(sim: Simulator, *args: str) -> subprocess.CompletedProcess[str]:
    """`run --resume last --json` against `sim`, polling fast."""
    return cli(
        "run", "--resume", "last", "--poll-interval", POLL, "--json", *args, env=api_env(sim)
    )


def items_by_custom_id(state: Path) -> dict[str, str]:
    """custom_id -> job id, from runs.db."""
    with sqlite3.connect(state / "runs.db") as conn:
        return dict(conn.execute("SELECT custom_id, job_id FROM batch_items"))


def batch_rows(state: Path) -> list[dict[str, Any]]:
    """Every recorded batch (runs.db), oldest first."""
    with sqlite3.connect(state / "runs.db") as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM message_batches ORDER BY rowid")]


def submitted_jobs(sim: Simulator, state: Path) -> list[str]:
    """The job of every request the simulator ever accepted in a batch (repeats included)."""
    jobs = items_by_custom_id(state)
    return [jobs[c] for entry in sim.batch_log() for c in entry["custom_ids"]]


def ledger_entries(state: Path, run_id: str) -> list[dict[str, Any]]:
    with sqlite3.connect(state / "ledger.db") as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM entries WHERE run_id = ?", (run_id,))]


def doc_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.stdout, result.stderr
    return json.loads(result.stdout)
