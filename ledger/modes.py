"""The modes of a run, one enumeration each: what the user asks for, what is sent, what is decided.

`jobs.manifest` validates the manifest's `mode` against the same three values (jobs may not
import ledger); runner uses these.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Decision", "Mode", "RequestedMode"]


class RequestedMode(StrEnum):
    """What a manifest or `--mode` asks for."""

    AUTO = "auto"
    CONCURRENT = "concurrent"
    SINGLE = "single"


class Mode(StrEnum):
    """How a repository's review is sent: four specialist requests, or one combined one."""

    CONCURRENT = "concurrent"
    SINGLE = "single"


class Decision(StrEnum):
    """What admission decides for a run: one of the modes, or a refusal."""

    CONCURRENT = "concurrent"
    SINGLE = "single"
    REFUSED = "refused"
