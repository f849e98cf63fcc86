"""review.md: one repository's review for people, leading with what is new since the last review.

Order: the header, a warning when the review is incomplete, the night's counts, then new findings, fixed
ones, persisting ones, open ones the review did not repeat, unverified findings (their quote is not in the
file) and suppressed ones, then each agent's summary and reliability, coverage, tokens and cost. Every piece of
model- or repo-supplied text is escaped so that it cannot inject HTML or break the layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jobs.findings import SEVERITIES, Finding
from jobs.outcome import RepoOutcome
from jobs.tracking import Status, Tracked, Tracking

__all__ = ["STATUS_WORDS", "escape_line", "render_review", "share"]

_LISTED = 50  # left-out files named in review.md before "and N more"
STATUS_WORDS = {
    "unparsed": "reply could not be parsed: its findings are unknown (raw reply kept in findings.json)",
    "refused": "the model refused: this perspective was not reviewed",
    "truncated": "reply cut off at max_output_tokens: the review is incomplete",
}


def escape_line(text: str) -> str:
    """One line of model- or repo-supplied text, unable to inject HTML or break a table."""
    return " ".join(str(text).split()).replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


_md = escape_line


def _block(text: str, indent: str = "  ") -> str:
    lines = str(text).replace("<", "&lt;").replace(">", "&gt;").splitlines()
    return "\n".join(indent + line if line.strip() else "" for line in lines)


def _where(f: Finding) -> str:
    if f.file is None:
        return "repository-wide"
    if f.line is None:
        return f"`{_md(f.file)}`"
    span = f"{f.line}" if not f.end_line or f.end_line == f.line else f"{f.line}-{f.end_line}"
    return f"`{_md(f.file)}:{span}`"


def render_review(o: RepoOutcome, run_id: str, tracking: Tracking) -> str:
    """Return review.md's text for ``o`` with its ``tracking``."""
    out = [f"# Review of {_md(o.slug)}", ""]
    out += [
        f"Run `{_md(run_id)}` · mode {o.mode} · model `{_md(o.model)}` · status **{o.status}**",
        "",
    ]
    if o.unchanged_since:
        out += [f"Unchanged since {_md(o.unchanged_since)}: nothing was sent tonight; the findings are that review's, carried forward.", ""]  # fmt: skip
    elif o.mode_reason:
        out += [f"Mode {o.mode}: {_md(o.mode_reason)}.", ""]
    out += _problems(o)
    counts = tracking.counts()
    out += [
        "**"
        + " · ".join(f"{counts[k]} {k.replace('_', ' ')}" for k in ("new", "fixed", "persisting"))
        + "** · "
        + " · ".join(f"{counts[k]} {k.replace('_', ' ')}" for k in ("not_reported", "not_reviewed", "unverified", "suppressed"))
        + "",
        "",
    ]  # fmt: skip
    if o.tracking is None:
        out += ["No earlier review of this repository to compare with: every verified finding is new.", ""]  # fmt: skip
    new = tracking.with_status(Status.NEW)
    out += [f"## New ({len(new)})", ""]
    if not new:
        out += ["Nothing new." if o.complete else "Nothing new was read, but the review is incomplete (see above).", ""]  # fmt: skip
    out += _by_severity(new)
    out += _section("Fixed since the last review", tracking.fixed, "its quoted code is gone")
    out += _section("Persisting", tracking.with_status(Status.PERSISTING), "")
    carried = tracking.with_status(Status.NOT_REPORTED) + tracking.with_status(Status.NOT_REVIEWED)
    out += _section("Still open, not repeated tonight", carried, "the quoted code is still there, or was not reviewed")  # fmt: skip
    out += _unverified(tracking.unverified)
    out += _suppressed(tracking.with_status(Status.SUPPRESSED), o.expired_suppressions)
    out += _agents(o)
    out += coverage_md(o.pack)
    out += ["## Tokens and cost", ""]
    out += [f"- {k.replace('_', ' ')}: {v:,}" for k, v in o.usage().items()]
    out += [f"- cost: ${o.cost_usd:,.4f}", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def _problems(o: RepoOutcome) -> list[str]:
    problems = []
    if o.status != "done":
        problems.append(f"- **The review of this repository {o.status}**" + (f": {_md(o.error)}" if o.error else ""))  # fmt: skip
    for r in o.results:
        if r.status != "ok":
            problems.append(f"- **{r.agent}: {r.status}**, {STATUS_WORDS.get(r.status, r.status)}")
    if not problems:
        return []
    out = ["> [!WARNING]", "> This review is incomplete. Missing findings do not mean there are none.", ">"]  # fmt: skip
    return out + ["> " + p for p in problems] + [""]


def _item(f: Finding, extra: str = "") -> list[str]:
    meta = [f.severity, f.category, "found by " + ", ".join(f.agents)]
    if f.confidence is not None:
        meta.append(f"confidence {f.confidence:.2f}")
    out = [f"- **{_md(f.title)}** at {_where(f)} ({'; '.join(meta)}){extra}"]
    if f.evidence:
        out.append(_block("`" + "` / `".join(line.strip() for line in f.evidence.splitlines() if line.strip()) + "`"))  # fmt: skip
    if f.detail:
        out.append(_block(f.detail))
    if f.suggestion:
        out += ["", "  *Suggestion:*", _block(f.suggestion)]
    return [*out, ""]


def _seen(t: Tracked) -> str:
    return f", first seen {t.first_seen.date[:10]} in run `{_md(t.first_seen.run_id)}`"


def _by_severity(tracked: Sequence[Tracked]) -> list[str]:
    out: list[str] = []
    for severity in SEVERITIES:
        group = [t for t in tracked if t.finding.severity == severity]
        if group:
            out += [f"### {severity.capitalize()} ({len(group)})", ""]
            for t in group:
                out += _item(t.finding)
    return out


def _section(title: str, tracked: Sequence[Tracked], why: str) -> list[str]:
    out = [f"## {title} ({len(tracked)})", ""]
    if why and tracked:
        out += [f"({why})", ""]
    for t in tracked:
        status = (
            ""
            if t.status in (Status.PERSISTING, Status.FIXED)
            else f", {t.status.replace('_', ' ')}"
        )
        out += _item(t.finding, _seen(t) + status)
    return out


def _unverified(findings: Sequence[Finding]) -> list[str]:
    out = [f"## Unverified ({len(findings)})", ""]
    if findings:
        out += ["The code these findings quote is not in the file: they may be mistaken. They are left out of SARIF.", ""]  # fmt: skip
    for f in findings:
        out += _item(f)
    return out


def _suppressed(tracked: Sequence[Tracked], expired: Sequence[str]) -> list[str]:
    out = [f"## Suppressed ({len(tracked)})", ""]
    for t in tracked:
        sup = t.suppression
        why = f" — suppressed by {sup.source}: {_md(sup.reason)} ({_md(sup.rule)})" if sup else ""
        out.append(
            f"- **{_md(t.finding.title)}** at {_where(t.finding)} ({t.finding.severity}){why}"
        )
    if expired:
        out += ["", "Expired suppression entries, ignored:"] + [f"- {_md(e)}" for e in expired]
    return [*out, ""]


def _agents(o: RepoOutcome) -> list[str]:
    out = ["## Agents", ""]
    if not o.results:
        return [*out, "No agent produced a result.", ""]
    unverified = o.unverified_by_agent()
    for r in o.results:
        text = r.summary or ("(no summary)" if r.status == "ok" else f"({r.status})")
        out.append(
            f"- **{r.agent}** ({r.status}, {len(r.findings)} finding(s), {unverified.get(r.agent, 0)} unverified, "
            f"{r.dropped} dropped): {_md(text)}"
        )
    dropped = [f"{r.agent} {r.dropped}" for r in o.results if r.dropped]
    if dropped:
        out += ["", f"Dropped as invalid (a file or line not in the pack, a bad severity): {', '.join(dropped)}."]  # fmt: skip
    return [*out, ""]


def coverage_md(pack: Mapping[str, Any]) -> list[str]:
    """The coverage section: files included, truncated and left out, redactions, skipped files."""
    out = ["## Coverage", ""]
    if not pack:
        return [*out, "No pack was built for this repository.", ""]
    files = [f for f in pack.get("files") or () if isinstance(f, Mapping)]
    by_status: dict[str, int] = {}
    for f in files:
        by_status[str(f.get("status"))] = by_status.get(str(f.get("status")), 0) + 1
    out.append(
        f"- files: {by_status.get('included', 0)} included, {by_status.get('truncated', 0)} truncated, "
        f"{by_status.get('omitted', 0)} left out to fit the input budget"
    )
    coverage = pack.get("coverage") or {}
    if isinstance(coverage, Mapping) and coverage:
        out.append(
            "- coverage: " + ", ".join(f"{k} {share(v)}" for k, v in sorted(coverage.items()))
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
            part = f" (lines {shown[0]}-{shown[1]} shown)" if f.get("status") == "truncated" and shown else ""  # fmt: skip
            out.append(f"- `{_md(f.get('path', '?'))}`: {f.get('status')}{part}")
        if len(left_out) > _LISTED:
            out.append(f"- ... and {len(left_out) - _LISTED} more (all listed in findings.json)")
        out.append("")
    skipped = [s for s in pack.get("skipped") or () if isinstance(s, list | tuple) and len(s) == 2]
    if skipped:
        reasons: dict[str, int] = {}
        for _, reason in skipped:
            reasons[str(reason)] = reasons.get(str(reason), 0) + 1
        out += ["### Skipped before packing", ""]
        out += [f"- {_md(reason)}: {n}" for reason, n in sorted(reasons.items())] + [""]
    return out


def share(value: Any) -> str:
    """A share as a percentage, or the value escaped."""
    return f"{float(value):.0%}" if isinstance(value, int | float) and 0 <= value <= 1 else _md(str(value))  # fmt: skip
