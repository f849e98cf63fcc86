"""The outcome of one repository's review in a run: the data that review.md, findings.json, SARIF and the
summary all render (jobs.reports and jobs.sarif read it; neither imports the other for it).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from jobs.errors import JobsInputError
from jobs.findings import SEVERITIES, AgentResult, Finding
from jobs.merging import merge
from jobs.suppressions import Baseline, Suppressions
from jobs.tracking import Seen, Tracked, Tracking, track

__all__ = ["RepoOutcome"]


@dataclass(frozen=True)
class RepoOutcome:
    """Everything known about one repository's review in a run."""

    slug: str
    mode: str
    model: str
    status: str
    error: str | None
    pack: Mapping[str, Any]
    results: tuple[AgentResult, ...]
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cost_usd: float
    # Tonight's findings against the last completed review (``with_tracking``); None: a first night.
    tracking: Tracking | None = None
    # Suppression entries ignored because they expired, in words, for the report.
    expired_suppressions: tuple[str, ...] = ()
    # Why the repo ran in its mode tonight (runner.run.incremental), for the summary.
    mode_reason: str = ""
    # "RUN_ID (YYYY-MM-DD)" when nothing changed and nothing was sent: the findings are that run's.
    unchanged_since: str | None = None
    findings: tuple[Finding, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "findings", merge(self.results))

    @property
    def complete(self) -> bool:
        """True only when the repo is done and every agent's reply parsed whole."""
        return (
            self.status == "done"
            and bool(self.results)
            and all(r.status == "ok" for r in self.results)
        )

    def severity_counts(self) -> dict[str, int]:
        """Merged findings per severity, every severity present."""
        counts = dict.fromkeys(SEVERITIES, 0)
        for finding in self.findings:
            counts[finding.severity] += 1
        return counts

    def to_dict(self) -> dict:
        """Return a JSON-able dict (what runs.db may store to rebuild the outcome on resume)."""
        return {
            "slug": self.slug,
            "mode": self.mode,
            "model": self.model,
            "status": self.status,
            "error": self.error,
            "pack": dict(self.pack),
            "results": [r.to_dict() for r in self.results],
            **self._usage(),
            "cost_usd": self.cost_usd,
            "tracking": self.tracking.to_dict() if self.tracking is not None else None,
            "expired_suppressions": list(self.expired_suppressions),
            "mode_reason": self.mode_reason,
            "unchanged_since": self.unchanged_since,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> RepoOutcome:
        """Rebuild from ``to_dict``; JobsInputError when the record is malformed."""
        try:
            return cls(
                slug=str(data["slug"]),
                mode=str(data["mode"]),
                model=str(data["model"]),
                status=str(data["status"]),
                error=None if data.get("error") is None else str(data["error"]),
                pack=dict(data.get("pack") or {}),
                results=tuple(AgentResult.from_dict(r) for r in data.get("results") or ()),
                input_tokens=int(data.get("input_tokens") or 0),
                output_tokens=int(data.get("output_tokens") or 0),
                cache_creation_input_tokens=int(data.get("cache_creation_input_tokens") or 0),
                cache_read_input_tokens=int(data.get("cache_read_input_tokens") or 0),
                cost_usd=float(data.get("cost_usd") or 0.0),
                tracking=Tracking.from_dict(data["tracking"]) if data.get("tracking") else None,
                expired_suppressions=tuple(str(e) for e in data.get("expired_suppressions") or ()),
                mode_reason=str(data.get("mode_reason") or ""),
                unchanged_since=data.get("unchanged_since") or None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise JobsInputError(f"malformed repo outcome record: {exc!r}") from exc

    def tracked(self, run_id: str, date: str) -> Tracking:
        """The outcome's tracking; without one, tonight as a first night (every verified finding new)."""
        if self.tracking is not None:
            return self.tracking
        return track((), self.findings, repo=self.slug, run=Seen(run_id, date), files={})

    def with_tracking(
        self,
        previous: Sequence[Tracked],
        *,
        run: Seen,
        files: Mapping[str, str],
        unreviewed: Collection[str] = (),
        truncated: Mapping[str, int] | None = None,
        suppressions: Suppressions | None = None,
        baseline: Baseline | None = None,
    ) -> RepoOutcome:
        """This outcome with its findings tracked against ``previous`` (see ``jobs.tracking.track``)."""
        tracking = track(
            previous, self.findings, repo=self.slug, run=run, files=files, unreviewed=unreviewed,
            truncated=truncated, suppressions=suppressions, baseline=baseline,
        )  # fmt: skip
        expired = suppressions.expired_for(self.slug) if suppressions else ()
        return replace(
            self,
            tracking=tracking,
            expired_suppressions=tuple(f"{r.describe()} (expired {r.expires})" for r in expired),
        )

    def unverified_by_agent(self) -> dict[str, int]:
        """Per agent, its findings whose evidence was not found in the file: a measure of its reliability."""
        return {r.agent: sum(f.verified is False for f in r.findings) for r in self.results}

    def usage(self) -> dict[str, int]:
        """The four token counts."""
        return self._usage()

    def _usage(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
        }
