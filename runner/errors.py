"""Errors raised by the runner. The CLI maps them to messages and exit codes."""

from __future__ import annotations

__all__ = ["RunnerError", "RunnerInputError", "StateError"]


class RunnerError(Exception):
    """Base of every runner error."""


class RunnerInputError(RunnerError, ValueError):
    """Bad input from the user (a zero limit, an estimate no bucket can ever hold)."""


class StateError(RunnerError):
    """A state database is corrupt, from a newer version, locked or unwritable."""
