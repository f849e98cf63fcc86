"""The ledger in one process: run admission by the mode rule, and the holds it places."""

from __future__ import annotations

from decimal import Decimal

import pytest
from ledger_support import MODEL

# Fixtures, found by pytest in this module's globals; `x as x` tells ruff the import is used.
from ledger_support import clock as clock
from ledger_support import ledger as ledger

from ledger import (
    BudgetExceeded,
    Ledger,
    LedgerInputError,
    Projection,
)

# -- holds and admission ------------------------------------------------------------------------


def proj(mode: str, cost_usd: str, tokens: int = 1000) -> Projection:
    micros = int(Decimal(cost_usd) * 1_000_000)
    return Projection(mode, 4 if mode == "concurrent" else 1, tokens, 0, micros, micros * 2)


BOTH = {"concurrent": proj("concurrent", "4.10"), "single": proj("single", "2.00")}


@pytest.mark.parametrize(
    ("budget", "requested", "health", "mode", "reason"),
    [
        pytest.param(
            "12",
            "auto",
            True,
            "concurrent",
            "concurrent needs $4.10, $12.00 remains",
            id="auto-fits",
        ),
        pytest.param(
            "3",
            "auto",
            True,
            "single",
            "concurrent needs $4.10, $3.00 remains; single needs $2.00, $3.00 remains",
            id="auto-falls-back",
        ),
        pytest.param(
            "12",
            "auto",
            False,
            "single",
            "limiter health is poor (429s in the last minute); single needs $2.00, $12.00 remains",
            id="auto-poor-health",
        ),
        pytest.param(
            "1",
            "auto",
            True,
            "refused",
            "concurrent needs $4.10, $1.00 remains; single needs $2.00, $1.00 remains",
            id="auto-refused",
        ),
        pytest.param(
            "3",
            "concurrent",
            True,
            "refused",
            "concurrent needs $4.10, $3.00 remains",
            id="explicit",
        ),
        pytest.param(
            "12",
            "concurrent",
            False,
            "concurrent",
            "concurrent needs $4.10",
            id="explicit-ignores-health",
        ),
        pytest.param(
            "1", "single", True, "refused", "single needs $2.00, $1.00 remains", id="single-refused"
        ),
        pytest.param(
            None,
            "auto",
            True,
            "concurrent",
            "concurrent projects $4.10; no budget is set",
            id="no-budget",
        ),
    ],
)
def test_admission_rule(
    ledger: Ledger, budget: str | None, requested: str, health: bool, mode: str, reason: str
) -> None:
    if budget is not None:
        ledger.set_budget(usd=budget)
    adm = ledger.admit(
        "run1", BOTH, requested, health_ok=health, health_reason="429s in the last minute"
    )
    assert adm.mode == mode
    assert adm.reason.startswith(reason)
    assert adm.remaining_micros == (None if budget is None else int(Decimal(budget) * 1_000_000))
    held = {"concurrent": 4_100_000, "single": 2_000_000, "refused": 0}[mode]
    assert adm.hold_micros == held
    assert ledger.status().held_micros == held


def test_admission_input_errors(ledger: Ledger) -> None:
    with pytest.raises(
        LedgerInputError, match="bad mode 'fast': expected one of auto, concurrent, single"
    ):
        ledger.admit("r", BOTH, "fast")
    with pytest.raises(LedgerInputError, match="no projection for mode concurrent"):
        ledger.admit("r", {"single": BOTH["single"]}, "concurrent")


def test_admission_by_token_budget(ledger: Ledger) -> None:
    ledger.set_budget(tokens=1500)
    adm = ledger.admit(
        "r",
        {"concurrent": proj("concurrent", "1", 2000), "single": proj("single", "1", 1000)},
        "auto",
    )
    assert adm.mode == "single"
    assert (
        adm.reason
        == "concurrent needs 2,000 tokens, 1,500 tokens remain; single needs 1,000 tokens, 1,500 tokens remain"
    )


def test_a_hold_covers_its_own_run_shrinks_as_it_spends_and_ends(ledger: Ledger) -> None:
    ledger.set_budget(usd="1.00")
    adm = ledger.admit("big", {"single": proj("single", "0.80")}, "single")
    assert adm.mode == "single" and adm.hold_micros == 800_000
    # Another run may only use what the hold leaves.
    with pytest.raises(BudgetExceeded, match=r"\$0.80 held by other runs"):
        ledger.reserve("other", "x", MODEL, 20_000, 10_000, counted=True)  # worst $0.225
    # The run's own reservation comes out of its hold.
    own = ledger.reserve("big", "a", MODEL, 20_000, 10_000, counted=True)
    status = ledger.status()
    assert (status.reserved_micros, status.held_micros) == (225_000, 575_000)
    ledger.settle(own, {"input_tokens": 20_000, "output_tokens": 2000})  # $0.09
    status = ledger.status()
    assert (status.spent_micros, status.reserved_micros, status.held_micros) == (90_000, 0, 710_000)
    assert status.remaining_micros == 200_000
    ledger.end_run("big")
    status = ledger.status()
    assert (status.held_micros, status.remaining_micros) == (0, 910_000)
    ledger.reserve("other", "x", MODEL, 20_000, 10_000)
    history = ledger.history()[0]["runs"]
    assert history[0]["run_id"] == "big"
    assert history[0]["projected_usd"] == 0.8 and history[0]["actual_usd"] == 0.09


def test_readmitting_a_run_replaces_its_hold(ledger: Ledger) -> None:
    ledger.set_budget(usd="10")
    ledger.admit("r", {"single": proj("single", "3")}, "single")
    ledger.settle(ledger.reserve("r", "a", MODEL, 0, 0), {"output_tokens": 100_000})  # $1.50
    adm = ledger.admit("r", {"single": proj("single", "1")}, "single")  # resume: $1 more to go
    assert adm.remaining_micros == 10_000_000 - 1_500_000
    assert ledger.status().held_micros == 1_000_000
