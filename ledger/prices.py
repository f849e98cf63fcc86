"""Prices per model, from a data table, and the cost of one request's usage.

Prices are USD per million tokens, which is the same number as micro-dollars per
token, so costs come out in integer micro-dollars without float drift.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from ledger.errors import LedgerInputError, UnknownModel

__all__ = [
    "USAGE_FIELDS",
    "Price",
    "cost_micros",
    "load_prices",
    "money",
    "price_for",
    "usd",
    "usd_to_micros",
    "worst_case_micros",
]

PRICE_FIELDS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
# The token counts of an API usage object that are billed (and summed in every total).
USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


@dataclass(frozen=True)
class Price:
    """One model's prices in USD per million tokens (= micro-dollars per token)."""

    input: Decimal
    output: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal
    batch_discount: Decimal = Decimal("0.5")


def _parse_table(data: Any, where: str) -> dict[str, Price]:
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise LedgerInputError(f"{where}: expected an object with a 'models' table")
    table: dict[str, Price] = {}
    for model, row in models.items():
        if not isinstance(row, dict):
            raise LedgerInputError(f"{where}: models.{model}: expected a table of prices")
        values: dict[str, Decimal] = {}
        for field in (*PRICE_FIELDS, "batch_discount"):
            raw = row.get(field, "0.5" if field == "batch_discount" else None)
            try:
                value = Decimal(str(raw))
            except ArithmeticError:
                value = Decimal(-1)
            if raw is None or isinstance(raw, bool) or not value.is_finite() or value < 0:
                raise LedgerInputError(
                    f"{where}: models.{model}.{field}: expected a non-negative number, got {raw!r}"
                )
            values[field] = value
        table[model] = Price(**values)
    return table


def load_prices(override: Path | None = None) -> dict[str, Price]:
    """The shipped price table, with the models of `override` (if it exists) replacing them."""
    shipped = resources.files("ledger").joinpath("prices.json").read_text(encoding="utf-8")
    table = _parse_table(json.loads(shipped), "ledger/prices.json")
    if override is not None and override.exists():
        try:
            data = json.loads(override.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LedgerInputError(f"{override}: not a readable JSON price table ({exc})") from exc
        table.update(_parse_table(data, str(override)))
    return table


def price_for(table: Mapping[str, Price], model: str) -> Price:
    """The price of `model`, or UnknownModel naming the models that have one."""
    try:
        return table[model]
    except KeyError:
        known = ", ".join(sorted(table))
        raise UnknownModel(
            f"no price for model {model!r}; known models: {known} "
            "(add it to prices.json in the state directory)"
        ) from None


def cost_micros(price: Price, usage: Mapping[str, Any], *, batch: bool = False) -> int:
    """Cost of one response's `usage` (the API's usage object as a dict), in micro-dollars.

    Cache writes are split into 5-minute and 1-hour parts by `usage["cache_creation"]` when
    present; otherwise all cache writes are priced as 5-minute writes, the API's default TTL.
    """
    cache_creation = usage.get("cache_creation") or {}
    writes = int(usage.get("cache_creation_input_tokens") or 0)
    w1h = int(cache_creation.get("ephemeral_1h_input_tokens") or 0)
    w5m = int(cache_creation.get("ephemeral_5m_input_tokens") or (writes - w1h))
    total = (
        int(usage.get("input_tokens") or 0) * price.input
        + int(usage.get("output_tokens") or 0) * price.output
        + w5m * price.cache_write_5m
        + w1h * price.cache_write_1h
        + int(usage.get("cache_read_input_tokens") or 0) * price.cache_read
    )
    if batch:
        total *= 1 - price.batch_discount
    return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def worst_case_micros(
    price: Price,
    input_tokens: int,
    max_output: int,
    *,
    cache_ttl: str = "5m",
    batch: bool = False,
) -> int:
    """The most a request can cost: every input token written to the cache, full output
    (at the batch discount for a Message Batches request)."""
    write = price.cache_write_1h if cache_ttl == "1h" else price.cache_write_5m
    worst_input = max(price.input, write)
    total = input_tokens * worst_input + max_output * price.output
    if batch:
        total *= 1 - price.batch_discount
    return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def usd(micros: int) -> float:
    """Micro-dollars as a USD number for output (JSON, messages)."""
    return micros / 1_000_000


def money(micros: int) -> str:
    """Micro-dollars as text for people: $1,234.56 (negative with a leading minus)."""
    sign = "-" if micros < 0 else ""
    return f"{sign}${abs(micros) / 1_000_000:,.2f}"


# USD text as people write it: plain digits or comma-grouped thousands, optional cents.
# Anything else ("1,5", "1e30", "nan") is refused rather than guessed at: "1,5" is $1.50
# in much of Europe and $15 with the commas stripped.
_USD_TEXT = re.compile(r"\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\$?\.\d+")
# Far above any real budget, and far below what a SQLite integer holds in micro-dollars
# (2**63 - 1 micros is about $9.2e12): a larger figure is a typo, not a budget.
MAX_USD = Decimal(1_000_000_000)


def usd_to_micros(value: Decimal | str | float | int, what: str) -> int:
    """USD as given by a person or a price table ("$1,250.50", 0.5) as integer micro-dollars.

    Text must be plain decimal notation (thousands grouped by commas of three digits);
    numbers must be finite, non-negative and at most MAX_USD. LedgerInputError otherwise.
    """
    expected = f"{what}: expected a non-negative number of USD"
    if isinstance(value, bool):
        raise LedgerInputError(f"{expected}, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        digits = text.removeprefix("-")
        if _USD_TEXT.fullmatch(digits):
            # The sign is kept apart so that "-$5" is refused below as negative, like "-5".
            sign = "-" if digits != text else ""
            amount = Decimal(sign + digits.lstrip("$").replace(",", ""))
        else:
            raise LedgerInputError(
                f"{expected}, got {value!r} (written like 500, 12.50 or 1,250.50: no exponent,"
                " commas only between thousands)"
            )
    else:
        amount = Decimal(str(value))  # a float's or int's str() is always a valid Decimal
    if not amount.is_finite() or amount < 0:
        raise LedgerInputError(f"{expected}, got {value!r}")
    if amount > MAX_USD:
        limit = money(int(MAX_USD) * 1_000_000)
        raise LedgerInputError(f"{expected}, got {value!r}: more than the {limit} ceiling")
    return int((amount * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))
