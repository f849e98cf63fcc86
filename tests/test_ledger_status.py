"""The ledger in one process: projection from priors and history, and what status reports."""

from __future__ import annotations

import json

import pytest
from ledger_support import MODEL, Clock

# Fixtures, found by pytest in this module's globals; `x as x` tells ruff the import is used.
from ledger_support import clock as clock
from ledger_support import ledger as ledger

from ledger import (
    JobEstimate,
    Ledger,
    LedgerInputError,
    UnknownModel,
)

# -- projection ---------------------------------------------------------------------------------


def test_projection_uses_priors_then_history(ledger: Ledger) -> None:
    jobs = [JobEstimate("security", MODEL, 10_000, 4000)]
    prior = ledger.project("single", jobs)
    # Prior: half of max_output; input as estimated (the worst case with ESTIMATE_MARGIN, 1.5x).
    assert (prior.requests, prior.input_tokens, prior.output_tokens) == (1, 10_000, 2000)
    assert prior.cost_micros == 10_000 * 3 + 2000 * 15
    assert prior.worst_micros == 15_000 * 3.75 + 4000 * 15
    assert prior.to_json() == {
        "requests": 1,
        "input_tokens": 10_000,
        "output_tokens": 2000,
        "cost_usd": 0.06,
        "worst_usd": 0.11625,
    }
    for _ in range(3):
        res = ledger.reserve("r", "j", MODEL, 10_000, 4000, agent="security")
        # Actual input is 1.2x the local estimate (part of it read from the cache).
        ledger.settle(
            res, {"input_tokens": 2000, "cache_read_input_tokens": 10_000, "output_tokens": 1000}
        )
    learned = ledger.project("single", jobs)
    assert (learned.input_tokens, learned.output_tokens) == (12_000, 1000)
    counted = ledger.project("single", [JobEstimate("security", MODEL, 10_000, 4000, counted=True)])
    assert counted.input_tokens == 10_000
    # Another agent has no output history yet, but shares the model's input calibration.
    other = ledger.project("single", [JobEstimate("architecture", MODEL, 10_000, 4000)])
    assert (other.input_tokens, other.output_tokens) == (12_000, 2000)


def test_projection_moving_average_follows_recent_outputs(ledger: Ledger) -> None:
    for out in (1000, 1000, 1000, 3000):
        res = ledger.reserve("r", "j", MODEL, 1000, 4000, agent="code_review")
        ledger.settle(res, {"input_tokens": 1000, "output_tokens": out})
    expected = ledger.project(
        "single", [JobEstimate("code_review", MODEL, 1000, 4000)]
    ).output_tokens
    assert 1000 < expected < 2000


def test_projection_refuses_unknown_models(ledger: Ledger) -> None:
    with pytest.raises(UnknownModel, match="no price for model 'gpt-9'"):
        ledger.project("concurrent", [JobEstimate("code_review", "gpt-9", 1, 1)])
    with pytest.raises(LedgerInputError, match="bad mode 'both'"):
        ledger.project("both", [])


# -- status ---------------------------------------------------------------------------------------


def review(ledger: Ledger, run: str, slug: str, mode: str, tokens: list[int]) -> None:
    for n, count in enumerate(tokens):
        res = ledger.reserve(run, f"{slug}-{n}", MODEL, count, 0, review=f"{run}/{slug}", mode=mode)
        ledger.settle(res, {"input_tokens": count})


def test_status_says_how_many_reviews_fit_142_single_or_73_concurrent(
    ledger: Ledger, clock: Clock
) -> None:
    ledger.set_budget(tokens=5_000_000)
    clock.set("2026-10-20T02:00:00Z")
    for n in range(3):
        review(ledger, "oct", f"single{n}", "single", [35_000])
        review(ledger, "oct", f"conc{n}", "concurrent", [17_000] * 4)
    clock.set("2026-11-01T00:00:00Z")
    status = ledger.status()
    assert status.remaining_tokens == 5_000_000
    assert status.reviews_fit == {"single": 142, "concurrent": 73}
    assert status.to_json()["review_average"]["concurrent"]["tokens"] == 3 * 68_000


def test_a_review_in_flight_or_with_an_unknown_request_is_not_averaged(ledger: Ledger) -> None:
    ledger.set_budget(usd=100)
    review(ledger, "r", "done", "single", [10_000])
    ledger.reserve("r", "x", MODEL, 10, 10, review="r/busy", mode="single")
    lost = ledger.reserve("r", "y", MODEL, 10, 10, review="r/lost", mode="single")
    ledger.mark_unknown(lost)
    assert ledger.status().review_average["single"]["reviews"] == 1


def test_status_json_has_the_documented_keys(ledger: Ledger, clock: Clock) -> None:
    ledger.set_budget(usd=30)
    clock.set("2026-11-02T10:00:00Z")
    ledger.settle(ledger.reserve("r", "a", MODEL, 0, 0), {"output_tokens": 200_000})  # $3
    clock.set("2026-11-10T10:00:00Z")
    data = ledger.status().to_json()
    for key in (
        "month",
        "budget_usd",
        "budget_tokens",
        "spent_usd",
        "reserved_usd",
        "held_usd",
        "remaining_usd",
        "spent_tokens",
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "unknown_reservations",
    ):
        assert key in data
    assert data["percent_used"] == 10.0
    assert len(data["daily_usd"]) == 10 and data["daily_usd"]["2026-11-02"] == 3.0
    assert data["burn_usd_per_day"] == 0.3
    assert data["projected_month_usd"] == 9.0
    json.dumps(data)
