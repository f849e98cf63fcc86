"""review-runner budget: set, status, history, reconcile, and every bad input (exit 2)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from ledger_support import MODEL, add_schema_step, digest

from ledger import Ledger, Projection
from runner.cli import main


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, ["budget", *args])


def ledger_at(home: Path, when: datetime | None = None) -> Ledger:
    home.mkdir(parents=True, exist_ok=True)
    return Ledger(home / "ledger.db", clock=(lambda: when) if when else None)


def status_json(*args: str) -> dict:
    result = cli("status", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_set_then_status(isolated_state: Path) -> None:
    result = cli("set", "--usd", "500")
    assert (result.exit_code, result.stdout) == (0, "Budget per month: $500.00, no token limit\n")
    result = cli("set", "--tokens", "5,000,000", "--month", "2030-01")
    assert (result.exit_code, result.stdout) == (
        0,
        "Budget for 2030-01: $500.00, 5,000,000 tokens\n",
    )
    data = status_json()
    assert (data["budget_usd"], data["budget_tokens"], data["remaining_usd"]) == (
        500.0,
        None,
        500.0,
    )
    data = status_json("--month", "2030-01")
    assert (data["month"], data["budget_tokens"], data["remaining_tokens"]) == (
        "2030-01",
        5_000_000,
        5_000_000,
    )
    text = cli("status")
    assert text.exit_code == 0
    assert "Budget " in text.stdout and ": $500.00, no token limit" in text.stdout
    assert "[........................................]   0.0% used" in text.stdout
    assert (isolated_state / "ledger.db").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--usd", "-5"],
            "Error: budget: expected a non-negative number of USD, got '-5'",
            id="negative",
        ),
        pytest.param(
            ["--usd", "five"],
            "Error: budget: expected a non-negative number of USD, got 'five'",
            id="text",
        ),
        pytest.param(
            ["--tokens", "-1"],
            "Error: budget: expected a non-negative number of tokens, got -1",
            id="neg-tokens",
        ),
        pytest.param(
            ["--tokens", "lots"],
            "Error: budget: expected a non-negative number of tokens, got 'lots'",
            id="text-tokens",
        ),
        pytest.param(
            ["--usd", "5", "--month", "2026-13"],
            "Error: bad month '2026-13': expected YYYY-MM, for example 2026-11",
            id="month",
        ),
        pytest.param([], "Error: give --usd X or --tokens N", id="nothing"),
    ],
)
def test_bad_budget_exits_2_and_changes_nothing(args: list[str], message: str) -> None:
    assert cli("set", "--usd", "20").exit_code == 0
    result = cli("set", *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stdout == ""
    assert status_json()["budget_usd"] == 20.0


def test_bad_month_for_status_exits_2() -> None:
    result = cli("status", "--month", "November")
    assert result.exit_code == 2
    assert result.stderr == "Error: bad month 'November': expected YYYY-MM, for example 2026-11\n"


def test_corrupt_ledger_exits_2_and_is_left_alone(isolated_state: Path) -> None:
    isolated_state.mkdir(parents=True)
    db = isolated_state / "ledger.db"
    db.write_bytes(b"\x00garbage" * 512)
    before = digest(db)
    for args in (["status"], ["set", "--usd", "5"], ["history"], ["reconcile"]):
        result = cli(*args)
        assert result.exit_code == 2
        assert result.stderr.startswith(f"Error: {db}: not a readable ledger database")
        assert "move it aside" in result.stderr
    assert digest(db) == before


def test_newer_ledger_exits_2_and_is_left_alone(isolated_state: Path) -> None:
    ledger_at(isolated_state).close()
    db = isolated_state / "ledger.db"
    add_schema_step(db, "m002_next")
    before = digest(db)
    result = cli("set", "--usd", "5")
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: {db}: written by a newer review-runner (schema step m002_next); "
        "upgrade review-runner to read it\n"
    )
    assert digest(db) == before


def reviews(led: Ledger, run: str, mode: str, per_review: list[int], count: int) -> None:
    for n in range(count):
        for k, tokens in enumerate(per_review):
            res = led.reserve(
                run, f"{mode}{n}-{k}", MODEL, tokens, 0, review=f"{run}/{mode}{n}", mode=mode
            )
            led.settle(res, {"input_tokens": tokens})


def test_status_says_142_single_or_73_concurrent(isolated_state: Path) -> None:
    with ledger_at(isolated_state, datetime(2000, 1, 10, tzinfo=UTC)) as led:
        led.set_budget(tokens=5_000_000)
        reviews(led, "old", "single", [35_000], 2)
        reviews(led, "old", "concurrent", [17_000, 17_000, 17_000, 17_000], 2)
    result = cli("status")
    assert result.exit_code == 0
    assert (
        "reviews that fit at the recent average: single: 142 ($0.10, 35,000 tokens each); "
        "concurrent: 73 ($0.20, 68,000 tokens each)"
    ) in result.stdout
    assert status_json()["reviews_fit"] == {"single": 142, "concurrent": 73}


def test_status_shows_spend_holds_chart_events_and_unknowns(isolated_state: Path) -> None:
    with ledger_at(isolated_state) as led:
        led.set_budget(usd="10")
        led.settle(led.reserve("r", "a", MODEL, 0, 0), {"output_tokens": 100_000})  # $1.50
        led.mark_unknown(led.reserve("r", "b", MODEL, 1000, 1000, counted=True))  # $0.01875 charged
        led.reserve("r", "c", MODEL, 1000, 1000, counted=True)
        led.record_event("rate_limited")
        led.record_event("spend_cap")
        # Held by a live run (this process).
        led.admit(
            "live", {"single": Projection("single", 1, 10, 10, 2_000_000, 3_000_000)}, "single"
        )
    result = cli("status")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert re.search(r"^spent +\$1\.52  100,000 tokens", out, re.M)
    assert re.search(r"^reserved +\$0\.02  2,000 tokens", out, re.M)
    assert re.search(r"^held +\$2\.00  20 tokens \(1 active run\)", out, re.M)
    assert re.search(r"^remaining +\$6\.46  no token limit", out, re.M)
    assert "unknown    1 reservation(s) charged at the worst case ($0.02)" in out
    assert f"429s in {datetime.now(UTC):%Y-%m}: 1; spend-cap hits: 1" in out
    assert "spend per day (peak $1.52)" in out
    assert "  |" + " " * (datetime.now(UTC).day - 1) + "#" in out
    data = status_json()
    assert data["unknown_reservations"] == 1
    assert data["spent_usd"] == pytest.approx(1.51875)
    assert data["held_usd"] == 2.0


def test_reconcile_lists_releases_and_charges(isolated_state: Path) -> None:
    with ledger_at(isolated_state) as led:
        a = led.reserve("r", "a", MODEL, 1000, 1000)
        b = led.reserve("r", "b", MODEL, 1000, 1000)
        led.mark_unknown(a)
        led.mark_unknown(b)
    listed = cli("reconcile", "--json")
    assert listed.exit_code == 0
    assert [e["id"] for e in json.loads(listed.stdout)["unknown"]] == [a.id, b.id]
    result = cli("reconcile", "--release", str(a.id), "--charge", str(b.id), "0.01")
    assert result.exit_code == 0
    assert f"entry {a.id}: released $0.00" in result.stdout
    assert f"entry {b.id}: charged $0.01" in result.stdout
    assert "No unknown reservations." in result.stdout
    assert status_json()["spent_usd"] == 0.01
    again = cli("reconcile", "--release", str(a.id))
    assert again.exit_code == 2
    assert again.stderr == f"Error: entry {a.id} is released, not unknown; nothing changed\n"
    missing = cli("reconcile", "--charge", "77", "abc")
    assert missing.exit_code == 2
    assert missing.stderr == "Error: no entry 77 in the ledger\n"


def test_history_shows_runs_projected_against_actual(isolated_state: Path) -> None:
    with ledger_at(isolated_state) as led:
        led.set_budget(usd="10")
        adm = led.admit(
            "run-1", {"single": Projection("single", 1, 10, 10, 2_000_000, 3_000_000)}, "auto"
        )
        assert adm.mode == "single"
        led.settle(led.reserve("run-1", "a", MODEL, 0, 0), {"output_tokens": 100_000})
        led.end_run("run-1")
    data = json.loads(cli("history", "--json").stdout)
    run = data["months"][0]["runs"][0]
    assert (run["run_id"], run["mode"], run["projected_usd"], run["actual_usd"]) == (
        "run-1",
        "single",
        2.0,
        1.5,
    )
    text = cli("history").stdout
    assert "spent $1.50 of $10.00, 100,000 tokens, 1 requests, 0 unknown" in text
    assert "run-1  single     projected      $2.00  actual $1.50  1 requests" in text


def test_module_entry_point_exit_code(isolated_state: Path) -> None:
    env = {**os.environ, "REVIEW_RUNNER_HOME": str(isolated_state)}
    done = subprocess.run(
        [sys.executable, "-m", "runner", "budget", "set", "--usd", "-1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == "Error: budget: expected a non-negative number of USD, got '-1'\n"
