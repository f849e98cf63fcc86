"""Suppressions and baselines: findings a team has decided not to be told about again, and why.

Two sources, one effect. A suppressions file (``review-runner-suppressions.toml``, in the manifest's folder
for every repo, or at a repository's root for that repo) holds entries by path glob, category and
fingerprint, each with a reason and an optional expiry date; an expired entry is ignored and reported. A
baseline is a set of fingerprints accepted by someone at some time (``review-runner findings baseline``),
stored by the runner. A suppressed finding is never dropped: it is counted, listed apart in review.md and
carried in SARIF as a suppression; it is never reported as new.

File format::

    [[suppress]]
    path = "src/legacy/**"        # glob from the repo root: * within a folder, ** across folders
    category = "maintainability"  # optional
    fingerprint = "9f2c..."       # optional
    repo = "shop"                 # optional, the manifest folder's file only: limit to one repo
    reason = "rewrite planned"    # required
    expires = 2027-03-01          # optional; from that day the entry is ignored (and reported)

An entry needs at least one of ``path``, ``category`` and ``fingerprint``; all that it gives must match.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Any

from jobs.errors import JobsInputError
from jobs.findings import CATEGORIES, Finding

__all__ = [
    "SUPPRESSIONS_FILE",
    "Baseline",
    "BaselineEntry",
    "Rule",
    "Source",
    "Suppression",
    "Suppressions",
    "load_suppressions",
    "suppression_files",
]

SUPPRESSIONS_FILE = "review-runner-suppressions.toml"
_KEYS = {"path", "category", "fingerprint", "repo", "reason", "expires"}


class Source(StrEnum):
    """Where a suppression comes from."""

    MANIFEST = "manifest"  # the file in the manifest's folder
    REPOSITORY = "repository"  # the file at the reviewed repository's root
    BASELINE = "baseline"


@dataclass(frozen=True)
class Suppression:
    """Why one finding is suppressed: the source, the reason, and the rule or baseline entry that matched."""

    source: Source
    reason: str
    rule: str
    expires: str | None = None

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return {"source": str(self.source), "reason": self.reason, "rule": self.rule, "expires": self.expires}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping) -> Suppression:
        """Rebuild from ``to_dict``."""
        return cls(Source(str(data["source"])), str(data["reason"]), str(data["rule"]), data.get("expires"))  # fmt: skip


@dataclass(frozen=True)
class Rule:
    """One entry of a suppressions file."""

    origin: str  # "FILE entry N", for messages and reports
    source: Source
    reason: str
    path: str | None = None
    category: str | None = None
    fingerprint: str | None = None
    repo: str | None = None
    expires: date | None = None
    _path_rx: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    def matches(self, repo: str, finding: Finding) -> bool:
        """True when every criterion the entry gives holds for ``finding`` of ``repo``."""
        if self.repo is not None and self.repo != repo:
            return False
        if self.category is not None and self.category != finding.category:
            return False
        if self.fingerprint is not None and self.fingerprint != finding.fingerprint:
            return False
        if self._path_rx is not None:
            return finding.file is not None and self._path_rx.fullmatch(finding.file) is not None
        return True

    def describe(self) -> str:
        """The entry's criteria in words."""
        parts = [f"{k} {v}" for k, v in (("path", self.path), ("category", self.category), ("fingerprint", self.fingerprint), ("repo", self.repo)) if v]  # fmt: skip
        return f"{self.origin}: " + ", ".join(parts)


@dataclass(frozen=True)
class Suppressions:
    """The rules in force (``rules``) and those ignored because they expired (``expired``)."""

    rules: tuple[Rule, ...] = ()
    expired: tuple[Rule, ...] = ()

    def match(self, repo: str, finding: Finding) -> Suppression | None:
        """The first rule in force that matches ``finding``, as a Suppression; None when none does."""
        for rule in self.rules:
            if rule.matches(repo, finding):
                expires = rule.expires.isoformat() if rule.expires else None
                return Suppression(rule.source, rule.reason, rule.describe(), expires)
        return None

    def expired_for(self, repo: str) -> tuple[Rule, ...]:
        """Expired entries that would concern ``repo`` (reported, so nobody thinks they still apply)."""
        return tuple(r for r in self.expired if r.repo is None or r.repo == repo)


@dataclass(frozen=True)
class BaselineEntry:
    """One accepted fingerprint: who accepted it, when, and in which run it was seen."""

    fingerprint: str
    accepted_by: str
    accepted_at: str  # ISO-8601 UTC
    run_id: str
    reason: str = "accepted in the baseline"

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return {"fingerprint": self.fingerprint, "accepted_by": self.accepted_by, "accepted_at": self.accepted_at, "run_id": self.run_id, "reason": self.reason}  # fmt: skip


@dataclass(frozen=True)
class Baseline:
    """The accepted fingerprints of one repo: the data shape the runner stores (``to_dict``/``from_dict``)."""

    entries: Mapping[str, BaselineEntry] = field(default_factory=dict)

    def match(self, finding: Finding) -> Suppression | None:
        """The finding's baseline suppression, or None when its fingerprint was never accepted."""
        entry = self.entries.get(finding.fingerprint)
        if entry is None:
            return None
        rule = (
            f"baseline: accepted by {entry.accepted_by} at {entry.accepted_at} (run {entry.run_id})"
        )
        return Suppression(Source.BASELINE, entry.reason, rule)

    def accept(
        self, fingerprints: Iterable[str], *, by: str, at: str, run_id: str, reason: str = ""
    ) -> Baseline:
        """A new Baseline with ``fingerprints`` added (an entry already there keeps its first acceptance)."""
        entries = dict(self.entries)
        for fp in fingerprints:
            entries.setdefault(fp, BaselineEntry(fp, by, at, run_id, reason or "accepted in the baseline"))  # fmt: skip
        return Baseline(entries)

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return {"entries": [e.to_dict() for e in sorted(self.entries.values(), key=lambda e: e.fingerprint)]}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping) -> Baseline:
        """Rebuild from ``to_dict``; JobsInputError when malformed."""
        try:
            entries = [BaselineEntry(**{k: str(v) for k, v in e.items()}) for e in data.get("entries") or ()]  # fmt: skip
        except (TypeError, AttributeError) as exc:
            raise JobsInputError(f"malformed baseline record: {exc}") from exc
        return cls({e.fingerprint: e for e in entries})


def suppression_files(
    manifest_dir: Path | None, repo_root: Path | None
) -> list[tuple[Path, Source]]:
    """The suppressions files that exist for a repo: the manifest folder's, then the repository's own."""
    found = []
    for folder, source in ((manifest_dir, Source.MANIFEST), (repo_root, Source.REPOSITORY)):
        if folder is not None and (Path(folder) / SUPPRESSIONS_FILE).is_file():
            found.append((Path(folder) / SUPPRESSIONS_FILE, source))
    return found


def load_suppressions(files: Sequence[tuple[Path, Source]], *, today: date) -> Suppressions:
    """Read suppressions files; JobsInputError naming the file, the entry and the key for anything wrong."""
    rules: list[Rule] = []
    expired: list[Rule] = []
    for path, source in files:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise JobsInputError(f"suppressions file {path}: {exc}") from exc
        unknown = sorted(set(data) - {"suppress"})
        if unknown:
            raise JobsInputError(f"suppressions file {path}: unknown key {unknown[0]!r} (expected [[suppress]] entries)")  # fmt: skip
        entries = data.get("suppress", [])
        if not isinstance(entries, list):
            raise JobsInputError(f"suppressions file {path}: suppress must be an array of tables ([[suppress]])")  # fmt: skip
        for n, entry in enumerate(entries, 1):
            rule = _rule(entry, f"{path} entry {n}", source)
            (expired if rule.expires is not None and rule.expires <= today else rules).append(rule)
    return Suppressions(tuple(rules), tuple(expired))


def _rule(entry: Any, origin: str, source: Source) -> Rule:
    if not isinstance(entry, dict):
        raise JobsInputError(f"{origin}: expected a table")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise JobsInputError(f"{origin}: unknown key {unknown[0]!r} (expected {', '.join(sorted(_KEYS))})")  # fmt: skip
    for key in ("path", "category", "fingerprint", "repo", "reason"):
        if key in entry and (not isinstance(entry[key], str) or not entry[key].strip()):
            raise JobsInputError(f"{origin}: {key} must be a non-empty string")
    if "reason" not in entry:
        raise JobsInputError(f"{origin}: reason is required (say why the finding is suppressed)")
    if not any(k in entry for k in ("path", "category", "fingerprint")):
        raise JobsInputError(f"{origin}: give at least one of path, category, fingerprint")
    if "category" in entry and entry["category"] not in CATEGORIES:
        raise JobsInputError(f"{origin}: category must be one of {', '.join(CATEGORIES)}, got {entry['category']!r}")  # fmt: skip
    if source is Source.REPOSITORY and "repo" in entry:
        raise JobsInputError(f"{origin}: repo is only allowed in the manifest folder's file")
    expires = entry.get("expires")
    if expires is not None and (not isinstance(expires, date) or hasattr(expires, "hour")):
        raise JobsInputError(f"{origin}: expires must be a TOML date such as 2027-03-01")
    path = entry.get("path")
    return Rule(
        origin=origin,
        source=source,
        reason=entry["reason"].strip(),
        path=path,
        category=entry.get("category"),
        fingerprint=entry.get("fingerprint"),
        repo=entry.get("repo"),
        expires=expires,
        _path_rx=_glob(path) if path else None,
    )


def _glob(pattern: str) -> re.Pattern[str]:
    """A path glob as a regex: ``**/`` any folders (or none), ``**`` anything, ``*`` and ``?`` within a name."""
    out, i = [], 0
    pattern = pattern.strip().lstrip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    # A folder pattern ("src/legacy/") covers everything below it.
    if pattern.endswith("/"):
        out.append(".*")
    return re.compile("".join(out))
