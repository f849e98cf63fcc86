"""What reviews cost: budgets, usage entries, reservations, prices, projection, admission."""

from __future__ import annotations
