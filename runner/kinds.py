"""The runner's closed sets, one enumeration each (the modes are ledger.modes).

StrEnum members compare equal to their text, so rows written as plain text read back as
members and JSON documents show the text.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Billed", "ErrorKind", "JobStatus", "RunStatus", "StopReason"]


class JobStatus(StrEnum):
    """A job's state in runs.db."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    DEFERRED = "deferred"
    SKIPPED = "skipped"  # resumed after its repo left the manifest: never sent


class RunStatus(StrEnum):
    """A run's state in runs.db and in `run --json`."""

    PLANNED = "planned"  # recorded, or a dry run: nothing sent
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    DEFERRED = "deferred"
    REFUSED = "refused"
    INTERRUPTED = "interrupted"
    SUBMITTED = "submitted"  # Message Batches sent, not collected yet (run --no-wait)


class StopReason(StrEnum):
    """Why a run stopped submitting jobs before the end."""

    INTERRUPTED = "interrupted"
    BUDGET = "budget"
    SPEND_CAP = "spend_cap"
    AUTH = "auth"
    UNREACHABLE = "unreachable"  # the API could not be reached: every worker stops


class ErrorKind(StrEnum):
    """What a failed API call was (runner.client.CallError.kind)."""

    RATE_LIMITED = "rate_limited"
    SPEND_CAP = "spend_cap"
    OVERLOADED = "overloaded"
    SERVER = "server"
    NOT_SENT = "not_sent"
    DROPPED = "dropped"
    TIMED_OUT = "timed_out"  # sent, and no response at all within the read timeout
    GATEWAY = "gateway"  # a 5xx from a gateway in front of the API, not from the API itself
    AUTH = "auth"
    TOO_LONG = "too_long"
    BAD_REQUEST = "bad_request"


class Billed(StrEnum):
    """Whether a failed call may have been billed: release its reservation, or keep it charged."""

    NO = "no"
    UNKNOWN = "unknown"
