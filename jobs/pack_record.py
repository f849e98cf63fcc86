"""The record of one packed repository: its text, and what became of each file.

`Pack` is what the runner sends and stores (`summary()` for reports and runs.db), with each
selected file as a `PackedFile` and each redacted secret as a `RedactionSite` (never the value).
Made by jobs.pack; frozen, and picklable across processes (review workers receive packs).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from jobs.select import shown_name

__all__ = ["Pack", "PackedFile", "RedactionSite"]


def _unpickle_pack(state: dict[str, Any]) -> Pack:
    state["redactions"] = MappingProxyType(state["redactions"])
    state["coverage"] = MappingProxyType(state["coverage"])
    return Pack(**state)


class RedactionSite(NamedTuple):
    """Where one secret was redacted: the file, the 1-based line and the kind. Never the value."""

    path: str
    line: int
    kind: str


@dataclass(frozen=True)
class PackedFile:
    """One selected file and what became of it in the pack."""

    path: str
    bytes: int
    lines: int
    tokens: int
    status: str  # "included" | "truncated" | "omitted"
    shown: tuple[int, int] | None = None
    priority: str = "source"  # "source" | "tests" | "docs"


@dataclass(frozen=True)
class Pack:
    """The packed text of one repository and the record of what it holds."""

    slug: str
    root: Path
    text: str = field(repr=False)
    sha256: str
    token_estimate: int
    files: tuple[PackedFile, ...]
    skipped: tuple[tuple[str, str], ...]
    redactions: MappingProxyType[str, int]
    coverage: MappingProxyType[str, float]
    method: str = "git"  # "git" (ls-files) or "gitignore" (plain folder)
    max_input_tokens: int = 0
    over_budget: bool = False  # the tree alone exceeded max_input_tokens
    redaction_sites: tuple[RedactionSite, ...] = ()  # in every packed file, sent or not

    _shown_lines: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {f.path: f.lines for f in self.files if f.status != "omitted"}
        object.__setattr__(self, "_shown_lines", MappingProxyType(index))  # frozen: set once, here

    def __reduce__(self) -> tuple[Any, ...]:
        # Packs cross process boundaries (packing and review workers); proxies do not pickle.
        state = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        state["redactions"] = dict(self.redactions)
        state["coverage"] = dict(self.coverage)
        return (_unpickle_pack, (state,))

    def sent(self, site: RedactionSite) -> bool:
        """Whether the line of `site` is in the pack's text (its file included, or shown if truncated)."""
        for f in self.files:
            if f.path == site.path:
                return f.status == "included" or (f.shown is not None and site.line <= f.shown[1])
        return False

    def line_count(self, path: str) -> int | None:
        """Total lines of an included or truncated file; None if `path` is not shown in the pack."""
        return self._shown_lines.get(path)

    def summary(self) -> dict[str, Any]:
        """Everything but the text, JSON-able, for reports and runs.db."""
        counts = Counter(f.status for f in self.files)
        return {
            "slug": self.slug,
            "root": shown_name(str(self.root)),
            "method": self.method,
            "sha256": self.sha256,
            "token_estimate": self.token_estimate,
            "max_input_tokens": self.max_input_tokens,
            "over_budget": self.over_budget,
            "counts": {
                "selected": len(self.files),
                "included": counts["included"],
                "truncated": counts["truncated"],
                "omitted": counts["omitted"],
                "skipped": len(self.skipped),
            },
            "coverage": dict(self.coverage),
            "redactions": dict(self.redactions),
            "files": [
                {
                    "path": f.path,
                    "bytes": f.bytes,
                    "lines": f.lines,
                    "tokens": f.tokens,
                    "status": f.status,
                    "shown": list(f.shown) if f.shown else None,
                    "priority": f.priority,
                }
                for f in self.files
            ],
            "skipped": [[p, r] for p, r in self.skipped],
        }
