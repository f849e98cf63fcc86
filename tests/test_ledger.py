"""The ledger in one process: cost arithmetic, months, budgets, reservations, the db file."""

from __future__ import annotations

import ast
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from ledger_support import MODEL, Clock, add_schema_step, digest

# Fixtures, found by pytest in this module's globals; `x as x` tells ruff the import is used.
from ledger_support import clock as clock
from ledger_support import ledger as ledger

import ledger as ledger_pkg
from ledger import (
    AlreadyFinal,
    BudgetExceeded,
    Ledger,
    LedgerError,
    LedgerInputError,
    LedgerStoreError,
    UnknownModel,
    cost_micros,
    load_prices,
)

# -- cost arithmetic -----------------------------------------------------------------------------

SONNET = load_prices(None)[MODEL]


@pytest.mark.parametrize(
    ("usage", "expected", "batch"),
    [
        pytest.param({"input_tokens": 1000}, 3000, 1500, id="input"),
        pytest.param({"output_tokens": 2000}, 30000, 15000, id="output"),
        pytest.param(
            {"cache_creation_input_tokens": 1000}, 3750, 1875, id="cache-write-default-5m"
        ),
        pytest.param(
            {
                "cache_creation_input_tokens": 3000,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 1000,
                    "ephemeral_1h_input_tokens": 2000,
                },
            },
            15750,
            7875,
            id="cache-write-5m-and-1h",
        ),
        pytest.param(
            {
                "cache_creation_input_tokens": 2000,
                "cache_creation": {"ephemeral_1h_input_tokens": 2000},
            },
            12000,
            6000,
            id="cache-write-1h-only",
        ),
        pytest.param({"cache_read_input_tokens": 4000}, 1200, 600, id="cache-read"),
        pytest.param({"cache_read_input_tokens": 3}, 1, 0, id="rounds-0.9-up-0.45-down"),
        pytest.param(
            {
                "input_tokens": 1000,
                "output_tokens": 2000,
                "cache_creation_input_tokens": 3000,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 1000,
                    "ephemeral_1h_input_tokens": 2000,
                },
                "cache_read_input_tokens": 4000,
            },
            3000 + 30000 + 3750 + 12000 + 1200,
            24975,
            id="every-field",
        ),
    ],
)
def test_cost_of_each_usage_field_matches_hand_computed(
    usage: dict, expected: int, batch: int
) -> None:
    assert cost_micros(SONNET, usage) == expected
    assert cost_micros(SONNET, usage, batch=True) == batch


def test_settle_charges_the_usage_cost_and_batch_halves_it(ledger: Ledger) -> None:
    ledger.set_budget(usd=10)
    usage = {
        "input_tokens": 1000,
        "output_tokens": 2000,
        "cache_creation_input_tokens": 3000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
        "cache_read_input_tokens": 4000,
    }
    first = ledger.reserve("r", "j1", MODEL, 9000, 4000)
    second = ledger.reserve("r", "j2", MODEL, 9000, 4000)
    assert ledger.settle(first, usage, request_id="req_1", service_tier="standard") == 49950
    assert ledger.settle(second, usage, batch=True) == 24975
    status = ledger.status()
    assert status.spent_micros == 49950 + 24975
    assert status.reserved_micros == 0
    assert (status.input_tokens, status.output_tokens) == (2000, 4000)
    assert (status.cache_creation_input_tokens, status.cache_read_input_tokens) == (6000, 8000)
    assert status.to_json()["spent_tokens"] == 20000


def test_worst_case_reservation_prices_input_as_cache_writes(ledger: Ledger) -> None:
    reservation = ledger.reserve("r", "j", MODEL, 10_000, 4096, counted=True)
    # Every input token might be a 5-minute cache write ($3.75) and output is full ($15).
    assert reservation.worst_micros == 10_000 * 3.75 + 4096 * 15
    assert ledger.status().reserved_micros == reservation.worst_micros


# -- months ---------------------------------------------------------------------------------------


def test_an_entry_belongs_to_the_month_of_its_reservation(ledger: Ledger, clock: Clock) -> None:
    clock.set("2026-01-31T23:59:59Z")
    late = ledger.reserve("r", "late", MODEL, 1000, 100)
    assert late.month == "2026-01"
    clock.set("2026-02-01T00:00:00Z")
    early = ledger.reserve("r", "early", MODEL, 1000, 100)
    assert early.month == "2026-02"
    # Settled after midnight, still January's.
    assert ledger.settle(late, {"input_tokens": 1000}) == 3000
    assert ledger.settle(early, {"input_tokens": 2000}) == 6000
    assert ledger.status("2026-01").spent_micros == 3000
    assert ledger.status("2026-02").spent_micros == 6000
    assert ledger.status().month == "2026-02"
    assert [m["month"] for m in ledger.history()] == ["2026-02", "2026-01"]


def test_month_budget_override_applies_to_its_month_only(ledger: Ledger, clock: Clock) -> None:
    ledger.set_budget(usd="100", tokens=1_000_000)
    ledger.set_budget(usd="5.5", month="2026-12")
    assert ledger.budget("2026-11") == (100_000_000, 1_000_000)
    # The override replaces only the field it sets.
    assert ledger.budget("2026-12") == (5_500_000, 1_000_000)
    clock.set("2026-12-31T23:59:59Z")
    assert ledger.status().budget_micros == 5_500_000
    clock.set("2027-01-01T00:00:00Z")
    assert ledger.status().budget_micros == 100_000_000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param(
            {"usd": -1}, "budget: expected a non-negative number of USD, got -1", id="negative"
        ),
        pytest.param(
            {"usd": "abc"}, "budget: expected a non-negative number of USD, got 'abc'", id="text"
        ),
        pytest.param({"usd": "nan"}, "got 'nan'", id="nan"),
        pytest.param({"usd": float("inf")}, "got inf", id="inf"),
        pytest.param(
            {"tokens": -5}, "expected a non-negative number of tokens, got -5", id="neg-tokens"
        ),
        pytest.param({"tokens": 1.5}, "got 1.5", id="float-tokens"),
        pytest.param(
            {"usd": 5, "month": "2026-13"}, "bad month '2026-13': expected YYYY-MM", id="month"
        ),
        pytest.param({"usd": 5, "month": "26-01"}, "bad month '26-01'", id="short-month"),
        pytest.param({}, "give a budget in USD or in tokens", id="nothing"),
    ],
)
def test_bad_budget_is_refused_and_changes_nothing(
    ledger: Ledger, kwargs: dict, message: str
) -> None:
    ledger.set_budget(usd=50)
    with pytest.raises(LedgerInputError, match=message.replace("(", r"\(")):
        ledger.set_budget(**kwargs)
    assert ledger.budget() == (50_000_000, None)


# -- reservations and outcomes ------------------------------------------------------------------


def test_reserve_refuses_past_the_budget_with_the_numbers(ledger: Ledger) -> None:
    ledger.set_budget(usd="1.00")
    first = ledger.reserve("r", "j1", MODEL, 100_000, 4000, counted=True)  # worst $0.435
    ledger.settle(first, {"input_tokens": 100_000, "output_tokens": 4000})  # $0.36
    ledger.reserve(
        "r", "j2", MODEL, 100_000, 4000, counted=True
    )  # $0.435 reserved, $0.795 committed
    with pytest.raises(BudgetExceeded) as err:
        ledger.reserve("r", "j3", MODEL, 100_000, 4000, counted=True)
    assert str(err.value) == (
        "job j3: reserving $0.43 would pass the 2026-11 budget of $1.00 "
        "($0.36 spent, $0.43 reserved, $0.00 held by other runs, $0.00 left in this run's hold)"
    )
    status = ledger.status()
    assert (status.spent_micros, status.reserved_micros) == (360_000, 435_000)
    assert ledger.history()[0]["entries"] == 2


def test_token_budget_is_enforced_too(ledger: Ledger) -> None:
    ledger.set_budget(tokens=10_000)
    ledger.reserve("r", "j1", MODEL, 5000, 1000, counted=True)
    with pytest.raises(
        BudgetExceeded,
        match="reserving 5,000 tokens would pass the 2026-11 budget of 10,000 tokens",
    ):
        ledger.reserve("r", "j2", MODEL, 4000, 1000, counted=True)


def test_no_budget_means_no_limit(ledger: Ledger) -> None:
    ledger.reserve("r", "j", MODEL, 10_000_000, 100_000)
    status = ledger.status()
    assert status.remaining_micros is None and status.to_json()["remaining_usd"] is None


def test_outcomes_are_final_and_never_counted_twice(ledger: Ledger) -> None:
    ledger.set_budget(usd=10)
    a = ledger.reserve("r", "a", MODEL, 1000, 1000, counted=True)
    b = ledger.reserve("r", "b", MODEL, 1000, 1000, counted=True)
    c = ledger.reserve("r", "c", MODEL, 1000, 1000, counted=True)
    assert ledger.settle(a, {"input_tokens": 1000, "output_tokens": 100}) == 4500
    ledger.release(b)
    ledger.mark_unknown(c)
    before = ledger.status().to_json()
    for call, res, state in [
        (lambda r: ledger.settle(r, {"input_tokens": 1}), a, "settled"),
        (ledger.release, a, "settled"),
        (ledger.mark_unknown, a, "settled"),
        (ledger.release, b, "released"),
        (lambda r: ledger.settle(r, {"input_tokens": 1}), b, "released"),
        (ledger.mark_unknown, c, "unknown"),
    ]:
        with pytest.raises(
            AlreadyFinal, match=f"reservation {res.id} is already {state}; nothing was changed"
        ):
            call(res)
    assert ledger.status().to_json() == before
    assert before["unknown_reservations"] == 1
    # Unknown stays charged at the worst case: 1000 * $3.75 + 1000 * $15.
    assert before["spent_usd"] == pytest.approx((4500 + 18750) / 1e6)
    assert before["unknown_usd"] == pytest.approx(0.01875)
    # A late answer (or reconcile) replaces the worst case with the actual cost.
    assert ledger.settle(c, {"input_tokens": 1000}) == 3000
    status = ledger.status()
    assert (status.unknown_reservations, status.spent_micros) == (0, 7500)


def test_reconcile_releases_or_charges_unknown_entries(ledger: Ledger) -> None:
    a = ledger.reserve("r", "a", MODEL, 1000, 1000)
    b = ledger.reserve("r", "b", MODEL, 1000, 1000)
    ledger.mark_unknown(a)
    ledger.mark_unknown(b)
    assert [e["id"] for e in ledger.unknown_entries()] == [a.id, b.id]
    assert ledger.reconcile(a.id) == 0
    assert ledger.reconcile(b.id, cost_usd="0.0123") == 12300
    assert ledger.unknown_entries() == []
    assert ledger.status().spent_micros == 12300
    with pytest.raises(
        LedgerInputError, match=f"entry {a.id} is released, not unknown; nothing changed"
    ):
        ledger.reconcile(a.id)
    with pytest.raises(LedgerInputError, match="no entry 999 in the ledger"):
        ledger.reconcile(999)


def test_bad_reservation_inputs(ledger: Ledger) -> None:
    with pytest.raises(UnknownModel, match="no price for model 'claude-nope'; known models: "):
        ledger.reserve("r", "j", "claude-nope", 1, 1)
    with pytest.raises(
        LedgerInputError, match="input_estimate: expected a non-negative integer, got -1"
    ):
        ledger.reserve("r", "j", MODEL, -1, 1)
    res = ledger.reserve("r", "j", MODEL, 1, 1)
    with pytest.raises(
        LedgerInputError, match=r"usage.output_tokens: expected a non-negative integer"
    ):
        ledger.settle(res, {"output_tokens": -3})
    with pytest.raises(LedgerInputError, match="bad event 'boom'"):
        ledger.record_event("boom")
    assert ledger.history()[0]["entries"] == 1


def test_price_override_replaces_and_extends_models(tmp_path: Path, clock: Clock) -> None:
    override = tmp_path / "prices.json"
    row = {"input": 1, "output": 2, "cache_write_5m": 1, "cache_write_1h": 1, "cache_read": 0.1}
    override.write_text(json.dumps({"models": {MODEL: row, "my-model": row}}))
    with Ledger(tmp_path / "l.db", price_override=override, clock=clock) as led:
        res = led.reserve("r", "j", "my-model", 1000, 1000, counted=True)
        assert res.worst_micros == 3000
        assert led.settle(led.reserve("r", "k", MODEL, 10, 10), {"output_tokens": 1000}) == 2000


def test_run_totals_and_events(ledger: Ledger) -> None:
    a = ledger.reserve("run1", "a", MODEL, 1000, 1000)
    b = ledger.reserve("run1", "b", MODEL, 1000, 1000)
    ledger.reserve("run2", "c", MODEL, 1000, 1000)
    ledger.settle(
        a,
        {
            "input_tokens": 10,
            "output_tokens": 20,
            "cache_read_input_tokens": 30,
            "cache_creation_input_tokens": 40,
        },
    )
    ledger.mark_unknown(b)
    ledger.record_event("rate_limited", run_id="run1")
    ledger.record_event("rate_limited")
    ledger.record_event("spend_cap")
    assert ledger.run_totals("run1") == {
        "input_tokens": 10,
        "output_tokens": 20,
        "cache_creation_input_tokens": 40,
        "cache_read_input_tokens": 30,
        "cost_micros": 30 + 300 + 150 + 9,
        "unknown": 1,
    }
    assert ledger.run_totals("never")["cost_micros"] == 0
    status = ledger.status()
    assert (status.rate_limited, status.spend_cap_hits) == (2, 1)


# -- the database file ----------------------------------------------------------------------------


def test_corrupt_db_is_reported_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not a database" * 100)
    before = digest(path)
    with pytest.raises(
        LedgerStoreError, match=r"ledger.db: not a readable ledger database .*move it aside"
    ):
        Ledger(path)
    assert digest(path) == before


def test_newer_schema_is_reported_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger(path).close()
    add_schema_step(path, "m999_future")
    before = digest(path)
    with pytest.raises(
        LedgerStoreError, match=r"written by a newer review-runner .*m999_future.*upgrade"
    ):
        Ledger(path)
    assert digest(path) == before


def test_files_are_private_and_schema_is_migrated_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger(path).close()
    Ledger(path).close()
    assert path.stat().st_mode & 0o777 == 0o600
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT name FROM _sqlite_migrations").fetchall() == [
        ("m001_initial",),
        ("m002_beats",),
    ]
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_errors_share_the_ledger_base() -> None:
    for cls in (AlreadyFinal, BudgetExceeded, LedgerInputError, LedgerStoreError, UnknownModel):
        assert issubclass(cls, LedgerError)


def test_ledger_imports_nothing_of_the_runner_jobs_or_the_cli() -> None:
    # sqlite-utils itself imports click, so the rule is checked on our own import statements,
    # and the runner, jobs and tqdm must not be loaded at all.
    for source in Path(ledger_pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & {"runner", "jobs", "click", "tqdm", "anthropic"}, source.name
    code = (
        "import sys, ledger, ledger.ledger, ledger.store, ledger.status;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'runner', 'jobs', 'tqdm'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def test_worst_case_grows_when_local_estimates_have_run_low(ledger: Ledger) -> None:
    for _ in range(3):
        res = ledger.reserve("r", "j", MODEL, 10_000, 0, agent="a")
        ledger.settle(res, {"input_tokens": 15_000})  # 1.5x the estimate
    padded = ledger.reserve("r", "k", MODEL, 10_000, 0, agent="a")
    assert padded.worst_micros == 15_000 * 3.75
    exact = ledger.reserve("r", "k", MODEL, 10_000, 0, agent="a", counted=True)
    assert exact.worst_micros == 10_000 * 3.75


def test_budget_accepts_dollar_signs_and_thousands_separators(ledger: Ledger) -> None:
    ledger.set_budget(usd="$1,250.50")
    assert ledger.budget() == (1_250_500_000, None)
