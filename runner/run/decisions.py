"""What tonight decided for each repository, and what it saw there (see runner.run.incremental)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ledger.modes import Mode

__all__ = ["RepoDecision", "RepoFacts"]


@dataclass(frozen=True)
class RepoFacts:
    """What the repo is tonight, for the memory once its review completes."""

    repo_key: str
    head_commit: str | None
    tree_sha256: str
    pack_sha256: str  # of the plain pack (no change preface), what the next night compares
    prompts_sha256: str
    files: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class RepoDecision:
    """Whether a repo is sent tonight, in which mode, and why.

    `mode` None: the run's own rule decides (auto: concurrent if the budget and health allow).
    """

    slug: str
    send: bool
    mode: Mode | None
    reason: str
    files_changed: int | None = None
    lines_changed: int | None = None
    unchanged_since: str | None = None  # "RUN_ID (YYYY-MM-DD)" when not sent

    def to_json(self, mode: str | None = None) -> dict[str, Any]:
        """The per-repo entry of `plan --json` (`mode`: the mode it would run in)."""
        return {
            "slug": self.slug,
            "action": "review" if self.send else "unchanged",
            "mode": mode if self.send else None,
            "reason": self.reason,
            "files_changed": self.files_changed,
            "lines_changed": self.lines_changed,
            "unchanged_since": self.unchanged_since,
        }
