"""What reviews cost: budgets, usage entries, reservations, prices, projection, admission.

Knows nothing of the runner or the jobs: the runner calls it with plain values.
"""

from __future__ import annotations

from ledger.admission import Admission
from ledger.errors import (
    AlreadyFinal,
    BudgetExceeded,
    LedgerError,
    LedgerInputError,
    LedgerStoreError,
    RunRefused,
    UnknownModel,
)
from ledger.ledger import EVENT_KINDS, Ledger, Reservation
from ledger.prices import Price, cost_micros, load_prices, price_for, usd, worst_case_micros
from ledger.projection import JobEstimate, Projection
from ledger.status import BudgetStatus

__all__ = [
    "EVENT_KINDS",
    "Admission",
    "AlreadyFinal",
    "BudgetExceeded",
    "BudgetStatus",
    "JobEstimate",
    "Ledger",
    "LedgerError",
    "LedgerInputError",
    "LedgerStoreError",
    "Price",
    "Projection",
    "Reservation",
    "RunRefused",
    "UnknownModel",
    "cost_micros",
    "load_prices",
    "price_for",
    "usd",
    "worst_case_micros",
]
