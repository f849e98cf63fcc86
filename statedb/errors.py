"""The error of a state store; each owning package raises its own subclass (see SQLiteStore.error)."""

from __future__ import annotations

__all__ = ["StoreError"]


class StoreError(Exception):
    """A state database is corrupt, from a newer version, locked or unwritable."""
