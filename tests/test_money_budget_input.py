"""`budget set` refuses USD figures it would have to guess at: exit 2, the value named, nothing set.

Before: "1,5" became $15 (commas stripped) and "1e30" a decimal.InvalidOperation traceback.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from click.testing import CliRunner, Result

from ledger.errors import LedgerInputError
from ledger.prices import MAX_USD, usd_to_micros
from runner.cli import main

FORMAT_HINT = "(written like 500, 12.50 or 1,250.50: no exponent, commas only between thousands)"


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, ["budget", *args])


def budget_usd() -> float | None:
    result = cli("status", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["budget_usd"]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("1,5", id="decimal-comma"),
        pytest.param("1,50,000", id="bad-grouping"),
        pytest.param("1e30", id="exponent"),
        pytest.param("1E3", id="small-exponent"),
        pytest.param("nan", id="nan"),
        pytest.param("inf", id="inf"),
        pytest.param("", id="empty"),
    ],
)
def test_unclear_usd_is_exit_2_naming_the_value(value: str) -> None:
    assert cli("set", "--usd", "20").exit_code == 0
    result = cli("set", "--usd", value)
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"Error: budget: expected a non-negative number of USD, got {value!r} {FORMAT_HINT}\n"
    )
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert budget_usd() == 20.0


@pytest.mark.parametrize("value", ["-1,000", "-$5"])
def test_negative_usd_is_exit_2(value: str) -> None:
    result = cli("set", "--usd", value)
    assert result.exit_code == 2
    assert result.stderr == f"Error: budget: expected a non-negative number of USD, got {value!r}\n"
    assert budget_usd() is None


def test_usd_above_the_ceiling_is_exit_2() -> None:
    result = cli("set", "--usd", "1,000,000,001")
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: budget: expected a non-negative number of USD, got '1,000,000,001':"
        " more than the $1,000,000,000.00 ceiling\n"
    )
    assert budget_usd() is None


def test_token_budget_too_large_for_the_database_is_exit_2() -> None:
    result = cli("set", "--tokens", "100000000000000000000000")
    assert result.exit_code == 2
    assert "expected a non-negative number of tokens, got 100,000,000,000,000,000,000,000" in (
        result.stderr
    )
    assert "ceiling" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("value", "micros"),
    [
        pytest.param("500", 500_000_000, id="plain"),
        pytest.param("12.50", 12_500_000, id="cents"),
        pytest.param("$1,250.50", 1_250_500_000, id="grouped"),
        pytest.param(".5", 500_000, id="leading-dot"),
        pytest.param(" 7 ", 7_000_000, id="spaces"),
        pytest.param(Decimal("0.25"), 250_000, id="decimal"),
        pytest.param(3, 3_000_000, id="int"),
    ],
)
def test_clear_usd_is_accepted(value: object, micros: int) -> None:
    assert usd_to_micros(value, "budget") == micros  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), -0.5, 1e30, MAX_USD + 1, True],
    ids=["nan", "inf", "negative", "huge", "over-ceiling", "bool"],
)
def test_numbers_from_code_are_checked_too(value: object) -> None:
    with pytest.raises(LedgerInputError, match="expected a non-negative number of USD"):
        usd_to_micros(value, "budget")  # type: ignore[arg-type]
