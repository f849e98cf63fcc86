"""The ledger's outcomes on PostgreSQL take only their entry's row lock (no store lock): real
processes settling, releasing, marking unknown and sweeping the same reservations at once, and
racing admitted runs' holds for the last dollars, end with every aggregate equal to a recount
of the entries, each entry counted once, no deadlock, and the budget never passed."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
from support import collect

from ledger import AlreadyFinal, BudgetExceeded, Ledger
from ledger.ledger import Reservation
from ledger.projection import Projection

SPAWN = mp.get_context("spawn")
MODEL = "claude-sonnet-4-5"
TIMEOUT = 120
USAGE = {"input_tokens": 900, "cache_read_input_tokens": 50, "output_tokens": 120}


def reserve_some(led: Ledger, count: int, tag: str) -> list[int]:
    """`count` reservations spread over three runs, six reviews and two agents."""
    ids = []
    for i in range(count):
        run = f"run{i % 3}"
        res = led.reserve(
            run, f"{tag}{i}", MODEL, 1000 + i, 200, agent=f"agent{i % 2}", review=f"{run}/r{i % 6}"
        )
        ids.append(res.id)
    return ids


DEAD_HOLDER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from test_pg_ledger_races import reserve_some
from ledger import Ledger
ids = reserve_some(Ledger(Path(sys.argv[1])), 30, "dead")
print(",".join(map(str, ids)), flush=True)
time.sleep(120)
"""


def mover(path: str, seed: int, ids: list[int], start: Any, out: Any) -> None:
    """Try an outcome on every entry, in a random order, sweeping now and then; report wins."""
    rng = random.Random(seed)
    led = Ledger(Path(path))
    wins: dict[str, list[Any]] = {"settled": [], "released": [], "unknown": []}
    order = list(ids)
    rng.shuffle(order)
    start.wait(TIMEOUT)
    for entry_id in order:
        res = Reservation(id=entry_id, month="", worst_micros=0)
        roll = rng.random()
        try:
            if roll < 0.6:
                wins["settled"].append((entry_id, led.settle(res, USAGE)))
            elif roll < 0.8:
                led.release(res)
                wins["released"].append(entry_id)
            else:
                led.mark_unknown(res)
                wins["unknown"].append(entry_id)
        except AlreadyFinal:
            pass
        if rng.random() < 0.25:
            led.sweep()
    led.close()
    out.put(wins)


def recount(url: str) -> dict[str, Any]:
    """Assert every maintained aggregate equals a recount from the entries; return the entries."""
    with psycopg.connect(url) as conn:
        conn.execute("SET search_path = review_runner_ledger")

        def one(sql: str) -> Any:
            return conn.execute(sql).fetchall()

        assert one(
            "SELECT month, spent_micros, reserved_micros, reserved_tokens, unknown_count,"
            " unknown_micros, unknown_tokens, entries, settled, released, input_tokens,"
            " output_tokens, cache_read_input_tokens FROM month_totals ORDER BY month"
        ) == one(
            "SELECT month, sum(cost_micros), sum(CASE WHEN state = 'reserved' THEN worst_micros"
            " ELSE 0 END), sum(CASE WHEN state = 'reserved' THEN worst_tokens ELSE 0 END),"
            " count(*) FILTER (WHERE state = 'unknown'),"
            " coalesce(sum(worst_micros) FILTER (WHERE state = 'unknown'), 0),"
            " coalesce(sum(worst_tokens) FILTER (WHERE state = 'unknown'), 0), count(*),"
            " count(*) FILTER (WHERE state = 'settled'), count(*) FILTER (WHERE state ="
            " 'released'), sum(input_tokens), sum(output_tokens), sum(cache_read_input_tokens)"
            " FROM entries GROUP BY month ORDER BY month"
        )
        assert one(
            "SELECT run_id, reserved_micros, reserved_tokens, charged_micros, cost_micros,"
            " unknown, requests FROM runs ORDER BY run_id"
        ) == one(
            "SELECT run_id, sum(CASE WHEN state = 'reserved' THEN worst_micros ELSE 0 END),"
            " sum(CASE WHEN state = 'reserved' THEN worst_tokens ELSE 0 END), sum(cost_micros),"
            " coalesce(sum(cost_micros) FILTER (WHERE state = 'settled'), 0),"
            " count(*) FILTER (WHERE state = 'unknown'), count(*)"
            " FROM entries GROUP BY run_id ORDER BY run_id"
        )
        assert one(
            "SELECT review, outstanding, settled, unknown, cost_micros FROM reviews ORDER BY review"
        ) == one(
            "SELECT review, count(*) FILTER (WHERE state = 'reserved'),"
            " count(*) FILTER (WHERE state = 'settled'), count(*) FILTER (WHERE state ="
            " 'unknown'), coalesce(sum(cost_micros) FILTER (WHERE state = 'settled'), 0)"
            " FROM entries WHERE review IS NOT NULL GROUP BY review ORDER BY review"
        )
        assert one("SELECT day, spent_micros FROM day_totals ORDER BY day") == one(
            "SELECT day, sum(cost_micros) FROM entries WHERE state != 'reserved'"
            " GROUP BY day ORDER BY day"
        )
        assert one("SELECT agent, samples FROM calibrations ORDER BY 1") == one(
            "SELECT coalesce(agent, ''), count(*) FROM entries WHERE state = 'settled'"
            " GROUP BY agent ORDER BY 1"
        )
        return {row[0]: row[1:] for row in one("SELECT id, state, cost_micros FROM entries")}


def test_processes_settling_and_sweeping_the_same_reservations_count_each_once(
    tmp_path: Path, pg_url: str
) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as led:
        led.set_budget(usd="100.00")
        alive = reserve_some(led, 30, "alive")
    child = subprocess.Popen(
        [sys.executable, "-c", DEAD_HOLDER, str(path), str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    dead = [int(x) for x in child.stdout.readline().split(",")]
    os.kill(child.pid, signal.SIGKILL)
    child.wait(TIMEOUT)
    child.stdout.close()
    assert len(dead) == 30
    start, out = SPAWN.Event(), SPAWN.Queue()
    procs = [
        SPAWN.Process(target=mover, args=(str(path), seed, alive + dead, start, out))
        for seed in range(4)
    ]
    for proc in procs:
        proc.start()
    start.set()
    results = collect(out, procs, TIMEOUT)
    for proc in procs:
        proc.join(TIMEOUT)
        assert proc.exitcode == 0
    with Ledger(path) as led:
        led.sweep()  # whatever of the dead process no racer reached
    entries = recount(pg_url)
    settled = [pair for wins in results for pair in wins["settled"]]
    released = [i for wins in results for i in wins["released"]]
    marked = [i for wins in results for i in wins["unknown"]]
    # Each entry has at most one winning outcome, and its final state is that outcome's.
    assert len({i for i, _ in settled}) == len(settled)
    assert len(set(released)) == len(released)
    assert len(set(marked)) == len(marked)
    for entry_id, cost in settled:
        assert entries[entry_id] == ("settled", cost)
    for entry_id in released:
        assert entries[entry_id] == ("released", 0)
    finals = {i for i, _ in settled} | set(released)
    for entry_id in alive + dead:
        state = entries[entry_id][0]
        assert state in ("settled", "released", "unknown")  # the dead ones swept, none left
        assert (state != "unknown") == (entry_id in finals)
    assert len(settled) > 0 and len(released) > 0


def proj(cost: int) -> Projection:
    return Projection("single", 10, 1000, 100, cost, cost * 2)


def spender(path: str, seed: int, start: Any, out: Any) -> None:
    """Admit a run with a hold, then reserve and settle (or leave unknown) until refused."""
    rng = random.Random(seed)
    led = Ledger(Path(path))
    run = f"run{seed}"
    admitted = led.admit(run, {"single": proj(200_000)}, "single").mode
    charged = 0
    start.wait(TIMEOUT)
    for n in range(400):  # bounded even if the budget were never reached
        try:
            res = led.reserve(run, f"j{n}", MODEL, rng.randint(1000, 9000), rng.randint(100, 900))
        except BudgetExceeded:
            break
        if rng.random() < 0.1:
            led.mark_unknown(res)
            charged += res.worst_micros
        else:
            usage = {"input_tokens": rng.randint(0, 1000), "output_tokens": rng.randint(0, 100)}
            charged += led.settle(res, usage)
    led.end_run(run)
    led.close()
    out.put((admitted, charged))


def test_racing_admitted_runs_for_the_last_dollars_never_passes_the_budget(
    tmp_path: Path, pg_url: str
) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as led:
        led.set_budget(usd="1.50")
    start, out = SPAWN.Event(), SPAWN.Queue()
    procs = [SPAWN.Process(target=spender, args=(str(path), s, start, out)) for s in range(5)]
    for proc in procs:
        proc.start()
    start.set()
    seen = []
    with Ledger(path) as watcher:
        while any(proc.is_alive() for proc in procs) and len(seen) < 10_000:
            status = watcher.status()
            # Costs stay within their worst cases here, so the holds count too.
            seen.append(status.spent_micros + status.reserved_micros + status.held_micros)
    results = collect(out, procs, TIMEOUT)
    for proc in procs:
        proc.join(TIMEOUT)
        assert proc.exitcode == 0
    assert max(seen) <= 1_500_000
    entries = recount(pg_url)
    spent = sum(cost for state, cost in entries.values() if state != "reserved")
    assert spent == sum(charged for _, charged in results) <= 1_500_000
    assert all(state != "reserved" for state, _ in entries.values())
    # Every run was admitted with its hold, and the month was spent down to its last request.
    assert [mode for mode, _ in results] == ["single"] * 5
    assert spent > 1_500_000 - 6 * 65_000  # a worst case is at most ~$0.065
