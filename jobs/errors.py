"""Errors raised by jobs. The CLI maps them to messages and exit codes."""

from __future__ import annotations

__all__ = ["JobsError", "JobsInputError"]


class JobsError(Exception):
    """Base of every jobs error."""


class JobsInputError(JobsError, ValueError):
    """Bad input: a malformed manifest, a missing repo, a broken prompt folder."""
