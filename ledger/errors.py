"""Errors raised by the ledger. The CLI maps them to messages and exit codes."""

from __future__ import annotations

__all__ = [
    "AlreadyFinal",
    "BudgetExceeded",
    "LedgerError",
    "LedgerInputError",
    "LedgerStoreError",
    "RunRefused",
    "UnknownModel",
]


class LedgerError(Exception):
    """Base of every ledger error."""


class LedgerInputError(LedgerError, ValueError):
    """Bad input from the user: a negative budget, a malformed month, an unknown model."""


class UnknownModel(LedgerInputError, KeyError):
    """A model with no price: planning with it would silently cost zero."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class LedgerStoreError(LedgerError):
    """ledger.db is corrupt, from a newer schema, locked or unwritable."""


class BudgetExceeded(LedgerError):
    """A reservation would take spent + reserved + held past the month's budget."""


class RunRefused(LedgerError):
    """The ledger would not admit a run in any allowed mode."""


class AlreadyFinal(LedgerError):
    """settle/release/mark_unknown on a reservation that already has its outcome: nothing changes."""
