"""The ledger across real processes: racing reservations, simultaneous admission, SIGKILL."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support import collect

from ledger import BudgetExceeded, Ledger, Projection
from ledger.store import MIGRATIONS

MODEL = "claude-haiku-4-5"  # per Mtok: $1 in, $5 out, $1.25 cache write (5m), $0.10 read
SPAWN = mp.get_context("spawn")
TIMEOUT = 60


def racer(path: str, seed: int, start: Any, results: Any) -> None:
    """Reserve and settle (or release, or leave unknown) random amounts until refused."""
    rng = random.Random(seed)
    led = Ledger(Path(path))
    charged = settled = 0
    start.wait(TIMEOUT)
    for n in range(5000):  # bounded even if the budget were never reached
        estimate, cap = rng.randint(1000, 20_000), rng.randint(100, 4000)
        try:
            res = led.reserve(f"run{seed}", f"job{n}", MODEL, estimate, cap, agent="a")
        except BudgetExceeded:
            break
        roll = rng.random()
        if roll < 0.1:
            led.release(res)
        elif roll < 0.15:
            led.mark_unknown(res)
            charged += res.worst_micros
        else:
            usage = {
                "input_tokens": rng.randint(0, estimate // 2),
                "cache_read_input_tokens": rng.randint(0, estimate // 4),
                "cache_creation_input_tokens": rng.randint(0, estimate // 4),
                "output_tokens": rng.randint(0, cap),
            }
            charged += led.settle(res, usage)
            settled += 1
    led.close()
    results.put((seed, charged, settled))


@pytest.mark.parametrize("kind", ["usd", "tokens"])
def test_racing_processes_never_overspend_and_every_entry_is_counted(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as led:
        if kind == "usd":
            led.set_budget(usd="3.00")
        else:
            led.set_budget(tokens=2_000_000)
    start, results = SPAWN.Event(), SPAWN.Queue()
    procs = [
        SPAWN.Process(target=racer, args=(str(path), seed, start, results)) for seed in range(8)
    ]
    for proc in procs:
        proc.start()
    start.set()
    outcomes = collect(results, procs, TIMEOUT)
    for proc in procs:
        proc.join(TIMEOUT)
        assert proc.exitcode == 0
    with Ledger(path) as led:
        status = led.status()
    recorded = sum(charged for _, charged, _ in outcomes)
    assert status.spent_micros == recorded
    assert status.reserved_micros == 0
    if kind == "usd":
        assert status.spent_micros + status.reserved_micros <= 3_000_000
        # Each process stops at its first refusal, so the budget ends up mostly used.
        assert status.spent_micros > 3_000_000 - 8 * 50_000
    else:
        used = status.spent_tokens + status.unknown_tokens + status.reserved_tokens
        assert used <= 2_000_000
        assert used > 2_000_000 - 8 * 24_000
    # The maintained aggregates equal a full recount of the entries.
    conn = sqlite3.connect(path)
    spent, tokens, settled = conn.execute(
        "SELECT SUM(cost_micros), SUM(input_tokens + output_tokens + cache_creation_input_tokens"
        " + cache_read_input_tokens), SUM(state = 'settled') FROM entries"
    ).fetchone()
    conn.close()
    assert spent == status.spent_micros
    assert tokens == status.spent_tokens
    assert settled == sum(n for _, _, n in outcomes)


def admitter(path: str, run_id: str, barrier: Any, results: Any) -> None:
    led = Ledger(Path(path))
    projections = {
        "concurrent": Projection("concurrent", 4, 40_000, 8000, 6_000_000, 9_000_000),
        "single": Projection("single", 1, 10_000, 2000, 3_000_000, 4_000_000),
    }
    barrier.wait(TIMEOUT)
    adm = led.admit(run_id, projections, "auto")
    results.put((run_id, adm.mode, adm.reason))
    led.close()


@pytest.mark.parametrize("round_", range(3))
def test_two_runs_admitted_at_once_cannot_share_the_remainder(tmp_path: Path, round_: int) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as led:
        led.set_budget(usd="10.00")  # one concurrent run ($6) fits, two do not
    barrier, results = SPAWN.Barrier(2), SPAWN.Queue()
    procs = [
        SPAWN.Process(target=admitter, args=(str(path), f"run{n}", barrier, results))
        for n in range(2)
    ]
    for proc in procs:
        proc.start()
    decided = sorted(collect(results, procs, TIMEOUT), key=lambda r: r[1])
    for proc in procs:
        proc.join(TIMEOUT)
    modes = [mode for _, mode, _ in decided]
    assert modes == ["concurrent", "single"]
    assert decided[1][2] == (
        "concurrent needs $6.00, $4.00 remains; single needs $3.00, $4.00 remains"
    )
    with Ledger(path) as led:
        # The admitting processes have exited, so their holds were released.
        assert led.status().held_micros == 0
        assert {r["run_id"]: r["end_reason"] for r in led.history()[0]["runs"]} == {
            "run0": "process died",
            "run1": "process died",
        }


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ledger import Ledger, Projection
    led = Ledger(Path(sys.argv[1]))
    led.admit("victim", {"single": Projection("single", 1, 1, 1, 500_000, 600_000)}, "single")
    done = led.reserve("victim", "done", "claude-haiku-4-5", 1000, 1000, agent="a")
    led.settle(done, {"input_tokens": 1000, "output_tokens": 10})
    led.reserve("victim", "in-flight", "claude-haiku-4-5", 10_000, 2000, agent="a", counted=True)
    print("reserved", flush=True)
    time.sleep(60)
    """
)


def test_sigkill_between_reserve_and_settle_leaves_an_unknown_entry(isolated_state: Path) -> None:
    isolated_state.mkdir(parents=True, exist_ok=True)
    path = isolated_state / "ledger.db"
    with Ledger(path) as led:
        led.set_budget(usd="1.00")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "reserved"
        with Ledger(path) as led:
            alive = led.status()
        assert alive.reserved_micros == 10_000 * 1.25 + 2000 * 5
        assert alive.unknown_reservations == 0
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(TIMEOUT)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    with Ledger(path) as led:
        status = led.status()
        again = led.status()
        unknown = led.unknown_entries()
        totals = led.run_totals("victim")
    # Charged at the worst case, once, however often it is looked at.
    assert status.unknown_reservations == again.unknown_reservations == 1
    assert status.reserved_micros == 0
    assert status.spent_micros == again.spent_micros == 1050 + 22_500
    assert status.unknown_micros == 22_500
    assert [e["job_id"] for e in unknown] == ["in-flight"]
    assert totals["unknown"] == 1 and totals["cost_micros"] == 1050
    # The dead run's hold was released too.
    assert status.held_micros == 0
    # Shown by `budget status`, and released by `budget reconcile` after checking the console.
    # (Imported here: the spawned workers of the other tests import this module, and need
    # nothing of the runner.)
    from click.testing import CliRunner

    from runner.cli import main

    shown = CliRunner().invoke(main, ["budget", "status"])
    assert shown.exit_code == 0
    assert "unknown    1 reservation(s) charged at the worst case ($0.02)" in shown.stdout
    entry_id = str(unknown[0]["id"])
    listed = CliRunner().invoke(main, ["budget", "reconcile"])
    assert listed.stdout.split()[0] == entry_id
    released = CliRunner().invoke(main, ["budget", "reconcile", "--release", entry_id])
    assert released.exit_code == 0
    assert "No unknown reservations." in released.stdout
    with Ledger(path) as led:
        assert led.status().spent_micros == 1050


def test_threads_may_share_one_ledger(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as led:
        led.set_budget(usd="100")

        def work(n: int) -> int:
            res = led.reserve("r", f"t{n}", MODEL, 1000, 100, agent="a")
            return led.settle(res, {"input_tokens": 1000, "output_tokens": 100})

        with ThreadPoolExecutor(max_workers=4) as pool:
            costs = list(pool.map(work, range(40)))
        assert led.status().spent_micros == sum(costs) == 40 * 1500


def test_a_forked_child_opens_its_own_connection_and_identity(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as led:
        led.status()  # the connection exists before the fork
        child = mp.get_context("fork").Process(target=_forked_reserve, args=(led,))
        child.start()
        child.join(TIMEOUT)
        assert child.exitcode == 0
        led.sweep()
        entries = led.unknown_entries()
        # The child reserved under its own pid and died without settling: unknown, not ours.
        assert [(e["job_id"], e["pid"]) for e in entries] == [("forked", child.pid)]


def _forked_reserve(led: Ledger) -> None:
    led.reserve("r", "forked", MODEL, 1000, 100)
    os._exit(0)  # leave without settling, like a crash


def _open_and_reserve(path: str, n: int, start: Any, results: Any) -> None:
    start.wait(TIMEOUT)
    with Ledger(Path(path)) as led:
        led.reserve("r", f"first-open-{n}", MODEL, 10, 10)
    results.put(n)


def test_processes_opening_a_new_ledger_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "ledger.db"
    start, results = SPAWN.Event(), SPAWN.Queue()
    procs = [
        SPAWN.Process(target=_open_and_reserve, args=(str(path), n, start, results))
        for n in range(4)
    ]
    for proc in procs:
        proc.start()
    start.set()
    assert sorted(collect(results, procs, TIMEOUT)) == [0, 1, 2, 3]
    for proc in procs:
        proc.join(TIMEOUT)
    conn = sqlite3.connect(path)
    # Each step once, though the processes opened it at the same moment.
    assert conn.execute("SELECT COUNT(*) FROM _sqlite_migrations").fetchone() == (
        len(MIGRATIONS._migrations),
    )
    assert conn.execute("SELECT COUNT(*) FROM entries").fetchone() == (4,)
    conn.close()
