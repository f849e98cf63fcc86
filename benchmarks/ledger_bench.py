"""Ledger benchmark: reserve+settle pairs per second, `budget status` time at 1,000,000
entries, and ledger.db size per million entries. Run: python benchmarks/ledger_bench.py

Peers, run in the same process on the same machine:
- throughput: an unchecked log in sqlite-utils (one insert + one update per pair, each its own
  WAL transaction, no budget check, no aggregates): the floor any SQLite ledger starts from;
- status: the same status figures computed by scanning the month's entries (what a ledger
  without maintained aggregates would do).
Targets (issue 4): >= 1,000 pairs/s from 4 processes together; status <= 200 ms at 1M entries.
Last, the PostgreSQL column (issue 16): the same reserve+settle pairs from 4 processes on a
throwaway local PostgreSQL server beside SQLite, with the ratio (`--backends-only` runs only it).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from ledger import Ledger

MODEL = "claude-haiku-4-5"
PAIRS = 3000  # per process
ENTRIES = 1_000_000
SPAWN = mp.get_context("spawn")


def ours(path: str, n: int, start: Any, done: Any) -> None:
    led = Ledger(Path(path))
    start.wait()
    for i in range(n):
        res = led.reserve(
            f"run{os.getpid()}",
            f"j{i}",
            MODEL,
            12_000,
            4000,
            agent="code_review",
            review=f"run{os.getpid()}/repo{i % 40}",
            mode="concurrent",
        )
        led.settle(
            res, {"input_tokens": 11_000, "cache_read_input_tokens": 500, "output_tokens": 900}
        )
    led.close()
    done.put(n)


def peer(path: str, n: int, start: Any, done: Any) -> None:
    db = Database(path)
    db.execute("PRAGMA busy_timeout = 60000")
    db.execute("PRAGMA synchronous = NORMAL")
    table = db["entries"]
    start.wait()
    for i in range(n):
        pk = table.insert(
            {
                "run_id": "r",
                "job_id": f"j{i}",
                "model": MODEL,
                "state": "reserved",
                "worst": 35_000,
                "cost": 0,
            }
        ).last_pk
        table.update(
            pk, {"state": "settled", "cost": 15_550, "input_tokens": 11_000, "output_tokens": 900}
        )
    db.close()
    done.put(n)


def pairs_per_second(target: Any, path: Path, procs: int, pairs: int = PAIRS) -> float:
    start, done = SPAWN.Event(), SPAWN.Queue()
    workers = [
        SPAWN.Process(target=target, args=(str(path), pairs, start, done)) for _ in range(procs)
    ]
    for w in workers:
        w.start()
    time.sleep(1.5)  # let every process import and open the db before the clock starts
    began = time.perf_counter()
    start.set()
    total = sum(done.get(timeout=600) for _ in workers)
    elapsed = time.perf_counter() - began
    for w in workers:
        w.join(30)
    return total / elapsed


def throughput() -> list[tuple[str, float, float]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for procs in (1, 4):
            mine, theirs = Path(tmp, f"ours{procs}.db"), Path(tmp, f"peer{procs}.db")
            with Ledger(mine) as led:
                led.set_budget(usd="1000000")
            db = Database(theirs)
            db.enable_wal()
            db["entries"].create(
                {
                    "id": int,
                    "run_id": str,
                    "job_id": str,
                    "model": str,
                    "state": str,
                    "worst": int,
                    "cost": int,
                    "input_tokens": int,
                    "output_tokens": int,
                },
                pk="id",
            )
            db.close()
            rows.append(
                (
                    f"reserve+settle pairs/s, {procs} process(es)",
                    pairs_per_second(ours, mine, procs),
                    pairs_per_second(peer, theirs, procs),
                )
            )
    return rows


def fill(path: Path, month: str) -> None:
    """ENTRIES entries in `month`, written in bulk, then the aggregates rebuilt from them."""
    Ledger(path).close()  # schema
    db = Database(path)
    conn = db.conn
    agents = ("code_review", "architecture", "security", "multi_perspective")
    states = ("settled",) * 18 + ("released", "unknown")

    def rows() -> Any:
        for i in range(ENTRIES):
            state = states[i % 20]
            day = f"{month}-{1 + (i * 28) // ENTRIES:02d}"
            inp, out = (11_000 + i % 3000, 700 + i % 900) if state == "settled" else (0, 0)
            cost = inp + out * 5 if state == "settled" else (35_000 if state == "unknown" else 0)
            yield (
                month,
                day,
                f"run-{i // 4000:04d}",
                f"job-{i}",
                f"run-{i // 4000:04d}/repo{i // 4 % 1000}",
                "concurrent",
                agents[i % 4],
                MODEL,
                state,
                12_000,
                4000,
                0,
                35_000,
                16_000,
                cost,
                inp,
                out,
                0,
                i % 500,
                f"req_{i:024d}",
                "standard",
                4242,
                "55555",
                "bench-host",
                f"{day}T10:00:00.000000Z",
                f"{day}T10:00:01.000000Z",
            )

    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO entries (month, day, run_id, job_id, review, mode, agent, model, state,"
        " input_estimate, max_output, counted, worst_micros, worst_tokens, cost_micros, input_tokens,"
        " output_tokens, cache_creation_input_tokens, cache_read_input_tokens, request_id,"
        " service_tier, pid, pid_start, host, reserved_at, final_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows(),
    )
    # The same aggregates reserve/settle maintain one entry at a time.
    conn.execute(
        "INSERT INTO month_totals (month, spent_micros, input_tokens, output_tokens,"
        " cache_creation_input_tokens, cache_read_input_tokens, unknown_count, unknown_micros,"
        " unknown_tokens, entries, settled, released)"
        " SELECT month, SUM(cost_micros), SUM(input_tokens), SUM(output_tokens),"
        " SUM(cache_creation_input_tokens), SUM(cache_read_input_tokens), SUM(state = 'unknown'),"
        " SUM(CASE state WHEN 'unknown' THEN worst_micros ELSE 0 END),"
        " SUM(CASE state WHEN 'unknown' THEN worst_tokens ELSE 0 END), COUNT(*),"
        " SUM(state = 'settled'), SUM(state = 'released') FROM entries GROUP BY month"
    )
    conn.execute(
        "INSERT INTO day_totals (day, month, spent_micros, tokens) SELECT day, month, SUM(cost_micros),"
        " SUM(input_tokens + output_tokens + cache_creation_input_tokens + cache_read_input_tokens)"
        " FROM entries GROUP BY day"
    )
    conn.execute(
        "INSERT INTO reviews (review, run_id, mode, month, tokens, cost_micros, settled, last_at)"
        " SELECT review, run_id, mode, month, SUM(input_tokens + output_tokens"
        " + cache_creation_input_tokens + cache_read_input_tokens), SUM(cost_micros),"
        " SUM(state = 'settled'), MAX(final_at) FROM entries GROUP BY review"
    )
    conn.execute(
        "INSERT INTO runs (run_id, month, mode, charged_micros, cost_micros, requests, started_at)"
        " SELECT run_id, month, 'concurrent', SUM(cost_micros), SUM(cost_micros), COUNT(*),"
        " MIN(reserved_at) FROM entries GROUP BY run_id"
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


SCAN = (
    "SELECT SUM(cost_micros), SUM(CASE state WHEN 'reserved' THEN worst_micros ELSE 0 END),"
    " SUM(input_tokens), SUM(output_tokens), SUM(cache_creation_input_tokens),"
    " SUM(cache_read_input_tokens), SUM(state = 'unknown') FROM entries WHERE month = ?"
)


def status_timing() -> tuple[list[tuple[str, float, float]], float, int]:
    month = datetime.now(UTC).strftime("%Y-%m")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "ledger.db")
        began = time.perf_counter()
        fill(path, month)
        fill_s = time.perf_counter() - began
        size = path.stat().st_size
        with Ledger(path) as led:
            led.set_budget(usd="250000")
            led.status()  # warm the page cache like a second run would
            ours_ms = []
            for _ in range(20):
                t = time.perf_counter()
                status = led.status()
                ours_ms.append((time.perf_counter() - t) * 1000)
        db = Database(path)
        scan_ms = []
        for _ in range(3):
            t = time.perf_counter()
            scanned = db.execute(SCAN, [month]).fetchone()
            scan_ms.append((time.perf_counter() - t) * 1000)
        db.close()
        assert scanned[0] == status.spent_micros and scanned[6] == status.unknown_reservations
        assert status.input_tokens == scanned[2]
        env = {**os.environ, "REVIEW_RUNNER_HOME": tmp}
        cli_ms = []
        import subprocess

        for _ in range(3):
            t = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "runner", "budget", "status", "--json"],
                env=env,
                check=True,
                capture_output=True,
                timeout=60,
            )
            cli_ms.append((time.perf_counter() - t) * 1000)
    rows = [
        (
            "Ledger.status() ms, 1M entries (median of 20)",
            statistics.median(ours_ms),
            statistics.median(scan_ms),
        ),
        ("Ledger.status() ms, 1M entries (worst of 20)", max(ours_ms), max(scan_ms)),
    ]
    print(
        f"(filled {ENTRIES:,} entries in {fill_s:.1f} s; `review-runner budget status --json` end to end,"
        f" Python start-up included: median {statistics.median(cli_ms):.0f} ms)"
    )
    return rows, statistics.median(cli_ms), size


def backends(procs: int = 4, pairs: int = 500) -> None:
    """The same reserve+settle load on SQLite and on a throwaway local PostgreSQL, side by side."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from pg_support import PgCluster

    rates = {}
    cluster = PgCluster().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("SQLite", "PostgreSQL"):
                os.environ.pop("REVIEW_RUNNER_DATABASE_URL", None)
                if name == "PostgreSQL":
                    os.environ["REVIEW_RUNNER_DATABASE_URL"] = cluster.new_database()
                path = Path(tmp, f"{name}.db")
                with Ledger(path) as led:
                    led.set_budget(usd="1000000")
                rates[name] = pairs_per_second(ours, path, procs, pairs)
    finally:
        os.environ.pop("REVIEW_RUNNER_DATABASE_URL", None)
        cluster.stop()
    print(f"\nbackends, {procs} processes x {pairs} reserve+settle pairs (target >= 1,000/s on PG)")
    for name, rate in rates.items():
        print(f"  {name:<12} {rate:>9,.0f} pairs/s")
    print(f"  PostgreSQL / SQLite: {rates['PostgreSQL'] / rates['SQLite']:.2f}x")


def main() -> None:
    if "--backends-only" in sys.argv[1:]:
        backends()
        return
    print(f"ledger benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    rows = throughput()
    status_rows, _, size = status_timing()
    print()
    print(f"{'measure':<48} {'ours':>12} {'peer':>12} {'ours/peer':>10}")
    for label, mine, theirs in rows:
        print(f"{label:<48} {mine:>12,.0f} {theirs:>12,.0f} {mine / theirs:>10.2f}")
    for label, mine, theirs in status_rows:
        print(f"{label:<48} {mine:>12.2f} {theirs:>12.1f} {mine / theirs:>10.4f}")
    print(f"{'ledger.db MB per 1M entries (no peer)':<48} {size / ENTRIES:>12.1f}")
    four = rows[1][1]
    print()
    print(
        f"target >= 1,000 pairs/s from 4 processes: {'met' if four >= 1000 else 'MISSED'} ({four:,.0f})"
    )
    median = status_rows[0][1]
    print(
        f"target status <= 200 ms at 1M entries: {'met' if median <= 200 else 'MISSED'} ({median:.2f} ms)"
    )
    backends()


if __name__ == "__main__":
    main()
