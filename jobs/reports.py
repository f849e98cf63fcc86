"""Reports: per repository review.md, findings.json and findings.sarif; per run summary.md and summary.json.

Every file is written whole (temporary file, then rename), so a crash never leaves half a report, and only
inside the run folder: a slug is sanitised, and the resolved target is checked again before writing.
An agent whose reply was unparsed, refused or truncated is shown as such at the top of every report; it is never
counted as "no findings".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jobs.errors import JobsInputError
from jobs.findings import SEVERITIES, AgentResult, Finding, merge
from jobs.sarif import build_sarif

__all__ = [
    "FINDINGS_SCHEMA",
    "SUMMARY_SCHEMA",
    "RepoOutcome",
    "safe_slug",
    "write_repo_report",
    "write_summary",
]

FINDINGS_SCHEMA = "review-runner/findings/1"
SUMMARY_SCHEMA = "review-runner/summary/1"
_SLUG_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_LISTED = 50  # left-out files named in review.md before "and N more"
_STATUS_WORDS = {
    "unparsed": "reply could not be parsed: its findings are unknown (raw reply kept in findings.json)",
    "refused": "the model refused: this perspective was not reviewed",
    "truncated": "reply cut off at max_output_tokens: the review is incomplete",
}


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
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise JobsInputError(f"malformed repo outcome record: {exc!r}") from exc

    def _usage(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
        }


def safe_slug(name: str) -> str:
    """Return a folder name for ``name`` that cannot leave its parent; a safe name is returned unchanged.

    Anything else is reduced to ``[A-Za-z0-9._-]`` and given a short hash of the original, so that two names
    that sanitise alike ("a/b", "a:b") still get two folders.
    """
    if _SLUG_OK.match(name) and name not in (".", "..") and ".." not in name:
        return name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name)
    cleaned = re.sub(r"\.{2,}", ".", cleaned).strip(".-_")[:80] or "repo"
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{cleaned}-{digest}"


def write_repo_report(run_dir: Path, outcome: RepoOutcome) -> Path:
    """Write review.md, findings.json and findings.sarif to ``run_dir/<slug>/``; return that folder."""
    folder = _folder(Path(run_dir), safe_slug(outcome.slug))
    run_id = Path(run_dir).name
    findings_doc = {
        "schema": FINDINGS_SCHEMA,
        "run_id": run_id,
        "slug": outcome.slug,
        "mode": outcome.mode,
        "model": outcome.model,
        "status": outcome.status,
        "error": outcome.error,
        "complete": outcome.complete,
        "findings_by_severity": outcome.severity_counts(),
        "findings": [f.to_dict() for f in outcome.findings],
        "agents": [r.to_dict() for r in outcome.results],
        "pack": dict(outcome.pack),
        **outcome._usage(),
        "cost_usd": outcome.cost_usd,
    }
    _write(folder / "findings.json", _json(findings_doc))
    _write(folder / "findings.sarif", _json(build_sarif(outcome, run_id)))
    _write(folder / "review.md", _review_md(outcome, run_id))
    return folder


def write_summary(
    run_dir: Path, run_id: str, outcomes: Sequence[RepoOutcome], *, totals: Mapping[str, Any]
) -> Path:
    """Write summary.md and summary.json for the run to ``run_dir``; return ``run_dir``."""
    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    repos = [_summary_row(o) for o in outcomes]
    by_severity = dict.fromkeys(SEVERITIES, 0)
    for row in repos:
        for severity, n in row["findings"].items():
            if severity in by_severity:
                by_severity[severity] += n
    doc = {
        "schema": SUMMARY_SCHEMA,
        "run_id": run_id,
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "totals": dict(totals),
        "repos_by_status": _count(o.status for o in outcomes),
        "findings_by_severity": by_severity,
        "incomplete": [row["slug"] for row in repos if not row["complete"]],
        "repos": repos,
    }
    _write(_inside(root, root / "summary.json"), _json(doc))
    _write(_inside(root, root / "summary.md"), _summary_md(doc))
    return root


# --- writing ------------------------------------------------------------------------------------------------


def _folder(run_dir: Path, slug: str) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / slug
    if target.is_symlink():
        raise JobsInputError(f"report folder {target} is a symlink; refusing to write through it")
    target.mkdir(exist_ok=True)
    return _inside(run_dir, target)


def _inside(run_dir: Path, target: Path) -> Path:
    root = run_dir.resolve()
    resolved = target.resolve()
    if resolved != root and root not in resolved.parents:
        raise JobsInputError(f"report path {target} resolves outside the run folder {root}")
    return resolved


def _write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.replace(tmp, path)  # replaces a planted symlink itself, never writes through it
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


# --- review.md ----------------------------------------------------------------------------------------------


def _md(text: str) -> str:
    """One line of model- or repo-supplied text, unable to inject HTML or break a table."""
    return " ".join(str(text).split()).replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def _block(text: str, indent: str = "  ") -> str:
    lines = str(text).replace("<", "&lt;").replace(">", "&gt;").splitlines()
    return "\n".join(indent + line if line.strip() else "" for line in lines)


def _where(f: Finding) -> str:
    if f.file is None:
        return "repository-wide"
    if f.line is None:
        return f"`{f.file}`"
    span = f"{f.line}" if not f.end_line or f.end_line == f.line else f"{f.line}-{f.end_line}"
    return f"`{f.file}:{span}`"


def _review_md(o: RepoOutcome, run_id: str) -> str:
    out = [f"# Review of {_md(o.slug)}", ""]
    out += [
        f"Run `{_md(run_id)}` · mode {o.mode} · model `{_md(o.model)}` · status **{o.status}**",
        "",
    ]
    problems = []
    if o.status != "done":
        problems.append(
            f"- **The review of this repository {o.status}**"
            + (f": {_md(o.error)}" if o.error else "")
        )
    for r in o.results:
        if r.status != "ok":
            problems.append(f"- **{r.agent}: {r.status}**, {_STATUS_WORDS.get(r.status, r.status)}")
    if problems:
        out += [
            "> [!WARNING]",
            "> This review is incomplete. Missing findings do not mean there are none.",
            ">",
        ]
        out += ["> " + p for p in problems] + [""]
    out += ["## Summary", ""]
    if not o.results:
        out += ["No agent produced a result.", ""]
    for r in o.results:
        text = r.summary or ("(no summary)" if r.status == "ok" else f"({r.status})")
        out += [
            f"- **{r.agent}** ({r.status}, {len(r.findings)} finding(s), {r.dropped} dropped): {_md(text)}"
        ]
    counts = o.severity_counts()
    out += ["", "## Findings", ""]
    out += [
        " · ".join(f"{s}: {counts[s]}" for s in SEVERITIES) + f" · total: {len(o.findings)}",
        "",
    ]
    dropped = [f"{r.agent} {r.dropped}" for r in o.results if r.dropped]
    if dropped:
        out += [
            f"Dropped as invalid (a file or line not in the pack, a bad severity): {', '.join(dropped)}.",
            "",
        ]
    if not o.findings:
        out += [
            "No findings."
            if o.complete
            else "No findings were read, but the review is incomplete (see above).",
            "",
        ]
    for severity in SEVERITIES:
        group = [f for f in o.findings if f.severity == severity]
        if not group:
            continue
        out += [f"### {severity.capitalize()} ({len(group)})", ""]
        for f in group:
            meta = [f.category, "found by " + ", ".join(f.agents)]
            if f.confidence is not None:
                meta.append(f"confidence {f.confidence:.2f}")
            out.append(f"- **{_md(f.title)}** at {_where(f)} ({'; '.join(meta)})")
            if f.detail:
                out.append(_block(f.detail))
            if f.suggestion:
                out += ["", "  *Suggestion:*", _block(f.suggestion)]
            out.append("")
    out += _coverage_md(o.pack)
    out += ["## Tokens and cost", ""]
    out += [f"- {k.replace('_', ' ')}: {v:,}" for k, v in o._usage().items()]
    out += [f"- cost: ${o.cost_usd:,.4f}", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def _coverage_md(pack: Mapping[str, Any]) -> list[str]:
    out = ["## Coverage", ""]
    if not pack:
        return [*out, "No pack was built for this repository.", ""]
    files = [f for f in pack.get("files") or () if isinstance(f, Mapping)]
    by_status = _count(str(f.get("status")) for f in files)
    out.append(
        f"- files: {by_status.get('included', 0)} included, {by_status.get('truncated', 0)} truncated, "
        f"{by_status.get('omitted', 0)} left out to fit the input budget"
    )
    coverage = pack.get("coverage") or {}
    if isinstance(coverage, Mapping) and coverage:
        out.append(
            "- coverage: " + ", ".join(f"{k} {_share(v)}" for k, v in sorted(coverage.items()))
        )
    if pack.get("token_estimate") is not None:
        out.append(f"- pack size: about {pack['token_estimate']:,} tokens")
    if pack.get("over_budget"):
        out.append("- **the file tree alone exceeded max_input_tokens**: no file content fitted")
    redactions = pack.get("redactions") or {}
    total = sum(int(n) for n in redactions.values()) if isinstance(redactions, Mapping) else 0
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(redactions.items())) if total else ""
    out.append(f"- secrets redacted before sending: {total}" + (f" ({kinds})" if kinds else ""))
    out.append("")
    left_out = [f for f in files if f.get("status") in ("truncated", "omitted")]
    if left_out:
        out += ["### Left out or truncated", ""]
        for f in left_out[:_LISTED]:
            shown = f.get("shown")
            part = (
                f" (lines {shown[0]}-{shown[1]} shown)"
                if f.get("status") == "truncated" and shown
                else ""
            )
            out.append(f"- `{_md(f.get('path', '?'))}`: {f.get('status')}{part}")
        if len(left_out) > _LISTED:
            out.append(f"- ... and {len(left_out) - _LISTED} more (all listed in findings.json)")
        out.append("")
    skipped = [s for s in pack.get("skipped") or () if isinstance(s, list | tuple) and len(s) == 2]
    if skipped:
        reasons = _count(str(reason) for _, reason in skipped)
        out += ["### Skipped before packing", ""]
        out += [f"- {_md(reason)}: {n}" for reason, n in sorted(reasons.items())] + [""]
    return out


def _share(value: Any) -> str:
    return (
        f"{float(value):.0%}"
        if isinstance(value, int | float) and 0 <= value <= 1
        else _md(str(value))
    )


# --- summary ------------------------------------------------------------------------------------------------


def _summary_row(o: RepoOutcome) -> dict[str, Any]:
    coverage = o.pack.get("coverage") if isinstance(o.pack, Mapping) else None
    return {
        "slug": o.slug,
        "folder": safe_slug(o.slug),
        "status": o.status,
        "error": o.error,
        "complete": o.complete,
        "mode": o.mode,
        "model": o.model,
        "agents": [
            {
                "agent": r.agent,
                "status": r.status,
                "findings": len(r.findings),
                "dropped": r.dropped,
            }
            for r in o.results
        ],
        "findings": o.severity_counts(),
        "findings_total": len(o.findings),
        **o._usage(),
        "cost_usd": o.cost_usd,
        "coverage": dict(coverage) if isinstance(coverage, Mapping) else {},
    }


def _summary_md(doc: Mapping[str, Any]) -> str:
    out = [f"# Review run {_md(doc['run_id'])}", "", f"Generated {doc['generated_at']}.", ""]
    if doc["incomplete"]:
        out += ["> [!WARNING]", "> Incomplete reviews (failed, deferred, or an agent not ok): "]
        out[-1] += ", ".join(_md(s) for s in doc["incomplete"])
        out.append("")
    totals = doc["totals"]
    if totals:
        out += ["## Totals", ""] + [f"- {_md(k)}: {_md(str(v))}" for k, v in totals.items()] + [""]
    sev = doc["findings_by_severity"]
    out += ["## Findings", "", " · ".join(f"{s}: {sev[s]}" for s in SEVERITIES), ""]
    out += ["## Repositories", ""]
    head = [
        "repo",
        "status",
        "mode",
        "agents",
        *SEVERITIES,
        "input",
        "output",
        "cache w",
        "cache r",
        "cost",
        "coverage",
    ]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in doc["repos"]:
        agents = ", ".join(
            a["agent"] + ("" if a["status"] == "ok" else f" **{a['status']}**")
            for a in row["agents"]
        )
        cov = ", ".join(f"{k} {_share(v)}" for k, v in sorted(row["coverage"].items()))
        link = f"[{_md(row['slug'])}]({row['folder']}/review.md)"
        status = (
            row["status"] if row["complete"] or row["status"] != "done" else "done (incomplete)"
        )
        cells = [
            link,
            status,
            row["mode"],
            agents or "-",
            *(str(row["findings"][s]) for s in SEVERITIES),
        ]
        cells += [f"{row[k]:,}" for k in ("input_tokens", "output_tokens")]
        cells += [f"{row[k]:,}" for k in ("cache_creation_input_tokens", "cache_read_input_tokens")]
        cells += [f"${row['cost_usd']:,.4f}", cov or "-"]
        out.append("| " + " | ".join(cells) + " |")
    failed = [r for r in doc["repos"] if r["error"]]
    if failed:
        out += ["", "## Errors", ""] + [f"- {_md(r['slug'])}: {_md(r['error'])}" for r in failed]
    return "\n".join(out).rstrip("\n") + "\n"
