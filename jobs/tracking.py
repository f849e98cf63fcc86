"""Across nights: tonight's findings of a repo compared with its last completed review.

``track`` is a pure function: the previous review's open findings, tonight's merged findings, tonight's packed
files and what was not packed in, give each finding its status:

- tonight's verified findings are ``new`` or ``persisting`` (same fingerprint as an open earlier finding,
  ``first_seen`` carried), or ``suppressed`` when a suppressions entry or the baseline covers them (never
  ``new``: a baseline-accepted fingerprint seen for the first time keeps the baseline's run as first seen);
- an earlier open finding not reported tonight is ``fixed`` only when its evidence is gone from its file (or
  the file is gone from the repo), ``not_reported`` when the evidence is still there (the model's recall varies:
  it stays open), ``not_reviewed`` when its file was not in tonight's pack (left out, skipped): carried too.

A file renamed (the old path gone, tonight's finding quoting the same evidence in the same category under a
new path) keeps the finding ``persisting`` with its ``first_seen``; its fingerprint is the new path's, and the
old one is kept as ``previous_fingerprint``. Unverified findings (their quote is not in the file) are not
tracked: they are listed apart and never become new, persisting or fixed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from jobs.errors import JobsInputError
from jobs.evidence import Located, file_texts, locate, normalise_evidence, packed_files
from jobs.findings import Finding
from jobs.suppressions import Baseline, Suppression, Suppressions

if TYPE_CHECKING:
    from jobs.pack_record import Pack

__all__ = ["OPEN", "Seen", "Status", "Tracked", "Tracking", "tonight_files", "track"]


class Status(StrEnum):
    """A finding's status across nights."""

    NEW = "new"
    PERSISTING = "persisting"
    SUPPRESSED = "suppressed"
    FIXED = "fixed"
    NOT_REPORTED = "not_reported"
    NOT_REVIEWED = "not_reviewed"


# Statuses of findings that are still open and tracked into the next night.
OPEN = frozenset(
    {Status.NEW, Status.PERSISTING, Status.SUPPRESSED, Status.NOT_REPORTED, Status.NOT_REVIEWED}
)


@dataclass(frozen=True)
class Seen:
    """A run and its date (ISO-8601 UTC, a day or a time)."""

    run_id: str
    date: str

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return {"run_id": self.run_id, "date": self.date}


@dataclass(frozen=True)
class Tracked:
    """One finding with its across-nights identity: what runs.db stores per repo (``to_dict``)."""

    finding: Finding
    status: Status
    first_seen: Seen
    last_seen: Seen  # the last run that reported it
    suppression: Suppression | None = None
    previous_fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """The finding's fingerprint."""
        return self.finding.fingerprint

    def to_dict(self) -> dict:
        """Return a JSON-able dict: the finding's fields plus status, first_seen, last_seen, suppression."""
        return {
            **self.finding.to_dict(),
            "status": str(self.status),
            "first_seen": self.first_seen.to_dict(),
            "last_seen": self.last_seen.to_dict(),
            "suppression": self.suppression.to_dict() if self.suppression else None,
            "previous_fingerprint": self.previous_fingerprint,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Tracked:
        """Rebuild from ``to_dict``; JobsInputError when the record is malformed."""
        try:
            sup = data.get("suppression")
            return cls(
                finding=Finding.from_dict(data),
                status=Status(str(data["status"])),
                first_seen=Seen(**data["first_seen"]),
                last_seen=Seen(**(data.get("last_seen") or data["first_seen"])),
                suppression=Suppression.from_dict(sup) if sup else None,
                previous_fingerprint=data.get("previous_fingerprint"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise JobsInputError(f"malformed tracked finding record: {exc!r}") from exc


@dataclass(frozen=True)
class Tracking:
    """The outcome of ``track`` for one repo and night."""

    findings: tuple[Tracked, ...]  # tonight's verified findings: new, persisting, suppressed
    carried: tuple[Tracked, ...]  # earlier ones still open: not_reported, not_reviewed
    fixed: tuple[Tracked, ...]
    unverified: tuple[Finding, ...]  # tonight's findings whose quote is not in the file

    def open(self) -> tuple[Tracked, ...]:
        """What to store as this repo's findings for the next night's ``track`` (fixed ones are closed)."""
        return self.findings + self.carried

    def with_status(self, status: Status) -> tuple[Tracked, ...]:
        """Every tracked finding (tonight's, carried, fixed) that has ``status``."""
        return tuple(t for t in self.findings + self.carried + self.fixed if t.status is status)

    def counts(self) -> dict[str, int]:
        """How many findings have each status, plus ``unverified``."""
        counts = {str(s): len(self.with_status(s)) for s in Status}
        counts["unverified"] = len(self.unverified)
        return counts

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return {
            "findings": [t.to_dict() for t in self.findings],
            "carried": [t.to_dict() for t in self.carried],
            "fixed": [t.to_dict() for t in self.fixed],
            "unverified": [f.to_dict() for f in self.unverified],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Tracking:
        """Rebuild from ``to_dict``; JobsInputError when malformed."""
        try:
            findings, carried, fixed = (
                tuple(Tracked.from_dict(t) for t in data.get(k) or ())
                for k in ("findings", "carried", "fixed")
            )
            unverified = tuple(Finding.from_dict(f) for f in data.get("unverified") or ())
            return cls(findings, carried, fixed, unverified)
        except (AttributeError, TypeError) as exc:
            raise JobsInputError(f"malformed tracking record: {exc!r}") from exc


def tonight_files(pack: Pack) -> dict[str, Any]:
    """``track``'s ``files``, ``unreviewed`` and ``truncated`` arguments from tonight's pack, as keywords."""
    unreviewed = {f.path for f in pack.files if f.status == "omitted"} | {
        p for p, _ in pack.skipped
    }
    truncated = {f.path: f.shown[1] for f in pack.files if f.status == "truncated" and f.shown}
    return {
        "files": file_texts(packed_files(pack.text)),
        "unreviewed": frozenset(unreviewed),
        "truncated": truncated,
    }


def track(
    previous: Sequence[Tracked],
    tonight: Sequence[Finding],
    *,
    repo: str,
    run: Seen,
    files: Mapping[str, str],
    unreviewed: Collection[str] = (),
    truncated: Mapping[str, int] | None = None,
    suppressions: Suppressions | None = None,
    baseline: Baseline | None = None,
) -> Tracking:
    """Classify tonight's findings of ``repo`` against ``previous`` (the last completed review's open ones).

    ``files``: tonight's packed files, path -> text as packed (``jobs.evidence.packed_files``); ``unreviewed``:
    paths that exist in the repo but were not in tonight's pack (omitted, skipped). A path in neither is gone.
    ``truncated``: path -> last line shown, for files shown in part (code below it was not reviewed).
    ``tonight_files(pack)`` gives all three.
    """
    earlier = [t for t in previous if t.status in OPEN]
    by_fp: dict[str, Tracked] = {}
    for t in earlier:
        by_fp.setdefault(t.fingerprint, t)
    matched: set[int] = set()
    out: list[Tracked] = []
    unverified: list[Finding] = []
    for finding in tonight:
        if finding.verified is False:
            unverified.append(finding)
            continue
        prior = by_fp.get(finding.fingerprint) or _renamed(finding, earlier, matched, files, unreviewed)  # fmt: skip
        if prior is not None:
            matched.add(id(prior))
        out.append(_tonight(finding, prior, repo, run, suppressions, baseline))
    carried: list[Tracked] = []
    fixed: list[Tracked] = []
    for prior in earlier:
        if id(prior) in matched:
            continue
        status, where = _absent_status(prior.finding, files, unreviewed, truncated or {})
        # Tonight's suppressions decide for a carried finding too (an entry may have expired since).
        suppression = _suppression(prior.finding, repo, suppressions, baseline)
        moved = prior.finding
        if where is not None and (moved.line, moved.end_line) != (where.line, where.end_line):
            # Still there but moved: point at where the code is tonight (SARIF shows this location).
            moved = replace(moved, line=where.line, end_line=where.end_line)
        kept = replace(prior, finding=moved, status=status, suppression=suppression)
        (fixed if status is Status.FIXED else carried).append(kept)
    return Tracking(tuple(out), tuple(carried), tuple(fixed), tuple(unverified))


def _tonight(
    finding: Finding,
    prior: Tracked | None,
    repo: str,
    run: Seen,
    suppressions: Suppressions | None,
    baseline: Baseline | None,
) -> Tracked:
    suppression = _suppression(finding, repo, suppressions, baseline)
    accepted = baseline.entries.get(finding.fingerprint) if baseline else None
    if prior is not None:
        first = prior.first_seen
        status = Status.PERSISTING
    elif accepted is not None:
        first = Seen(accepted.run_id, accepted.accepted_at)
        status = Status.PERSISTING
    else:
        first, status = run, Status.NEW
    renamed = prior.fingerprint if prior is not None and prior.fingerprint != finding.fingerprint else None  # fmt: skip
    return Tracked(
        finding=finding,
        status=Status.SUPPRESSED if suppression is not None else status,
        first_seen=first,
        last_seen=run,
        suppression=suppression,
        previous_fingerprint=renamed,
    )


def _suppression(
    finding: Finding, repo: str, suppressions: Suppressions | None, baseline: Baseline | None
) -> Suppression | None:
    """The suppressions file's entry first, else the baseline's; None when neither covers the finding."""
    found = suppressions.match(repo, finding) if suppressions else None
    if found is None and baseline is not None:
        found = baseline.match(finding)
    return found


def _gone(path: str | None, files: Mapping[str, str], unreviewed: Collection[str]) -> bool:
    return path is not None and path not in files and path not in unreviewed


def _renamed(
    finding: Finding,
    earlier: Sequence[Tracked],
    matched: set[int],
    files: Mapping[str, str],
    unreviewed: Collection[str],
) -> Tracked | None:
    """An open earlier finding whose file is gone and which quoted the same code in the same category."""
    quote = normalise_evidence(finding.evidence)
    if not quote:
        return None
    for prior in earlier:
        if (
            id(prior) not in matched
            and prior.finding.category == finding.category
            and _gone(prior.finding.file, files, unreviewed)
            and normalise_evidence(prior.finding.evidence) == quote
        ):
            return prior
    return None


def _absent_status(
    finding: Finding,
    files: Mapping[str, str],
    unreviewed: Collection[str],
    truncated: Mapping[str, int],
) -> tuple[Status, Located | None]:
    """Why an earlier finding was not reported tonight (its code is gone, still there, or not looked at),
    and where its code is when it is still there."""
    if finding.file is None or not finding.evidence.strip():
        # Nothing to look for: only the model could say it is gone, and it did not.
        return Status.NOT_REPORTED, None
    if finding.file in files:
        where = locate(finding.evidence, files[finding.file].split("\n"), finding.line)
        if where is not None:
            return Status.NOT_REPORTED, where
        if finding.file in truncated:
            # Not in the part shown tonight: it may be in the part that was not.
            return Status.NOT_REVIEWED, None
        return Status.FIXED, None
    if finding.file in unreviewed:
        return Status.NOT_REVIEWED, None
    return Status.FIXED, None
