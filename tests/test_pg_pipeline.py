"""The PostgreSQL backend's pipelined, prepared transactions keep working past the first few.

Statements are prepared from their first use after the migrations; a migration's DDL (and a
rolled-back transaction) makes psycopg drop its prepared statements, which in pipeline mode once
cost the next transaction its statement ("prepared statement _pg3_N does not exist") only after
a few dozen transactions. These tests run well past that on a fresh database.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from ledger import BudgetExceeded, Ledger
from runner.limiter import Limiter, Limits

MODEL = "claude-haiku-4-5"
OPEN = Limits(rpm=10**6, itpm=10**9, otpm=10**9, max_concurrent=1000)


def test_a_fresh_limiter_database_serves_a_hundred_pairs_and_frees_every_slot(
    tmp_path: Path, pg_url: str
) -> None:
    limiter = Limiter(tmp_path / "host", OPEN)
    leases = [limiter.acquire(100, 10) for _ in range(3)]
    for _ in range(100):
        lease = limiter.acquire(100, 10)
        limiter.settle(lease, {"input_tokens": 90, "output_tokens": 10})
    limiter.release(leases.pop())
    for lease in leases:
        limiter.settle(lease, {"input_tokens": 100, "output_tokens": 10})
    assert limiter.status()["in_flight"] == []
    limiter.close()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM review_runner_limiter.leases").fetchone() == (0,)


def test_a_refused_reservation_rolls_back_and_the_next_ones_still_commit(
    tmp_path: Path, pg_url: str
) -> None:
    with Ledger(tmp_path / "ledger.db") as led:
        led.set_budget(usd="1.00")
        settled = 0
        for i in range(40):
            res = led.reserve("run", f"j{i}", MODEL, 1000, 100, review="run/repo")
            settled += led.settle(res, {"input_tokens": 1000, "output_tokens": 100})
        held = []
        with pytest.raises(BudgetExceeded, match="would pass the") as refused:
            while True:  # until the budget refuses: that transaction rolls back
                held.append(led.reserve("run", f"h{len(held)}", MODEL, 100_000, 10_000))
        assert "budget of $1.00" in str(refused.value)
        for i, res in enumerate(held):
            settled += led.settle(res, {"input_tokens": 10, "output_tokens": 1})
            led.settle(led.reserve("run", f"after{i}", MODEL, 10, 1), {"input_tokens": 10})
        status = led.status()
    assert status.reserved_micros == 0
    with psycopg.connect(pg_url) as conn:
        spent, entries = conn.execute(
            "SELECT sum(cost_micros), count(*) FROM review_runner_ledger.entries"
        ).fetchone()
    assert spent == status.spent_micros
    assert entries == 40 + 2 * len(held) and held
