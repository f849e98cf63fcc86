"""Reports: per repository review.md, findings.json and findings.sarif; per run summary.md and summary.json.

Every file is written whole (temporary file, then rename), so a crash never leaves half a report, and only
inside the run folder: a slug is sanitised, and the resolved target is checked again before writing.
An agent whose reply was unparsed, refused or truncated is shown as such at the top of every report; it is never
counted as "no findings". What a report counts as tonight's findings are the verified, unsuppressed ones (new
and persisting); unverified and suppressed findings are counted and listed apart, never dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jobs.errors import JobsInputError
from jobs.findings import SEVERITIES
from jobs.outcome import RepoOutcome
from jobs.review_md import escape_line as _md
from jobs.review_md import render_review, share
from jobs.sarif import build_sarif
from jobs.tracking import Status, Tracking

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
_REPORTED = (Status.NEW, Status.PERSISTING)
_COUNTED = (
    "new",
    "persisting",
    "fixed",
    "not_reported",
    "not_reviewed",
    "suppressed",
    "unverified",
)


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


def write_repo_report(
    run_dir: Path, outcome: RepoOutcome, *, include_unverified: bool = False
) -> Path:
    """Write review.md, findings.json and findings.sarif to ``run_dir/<slug>/``; return that folder.

    The run id is ``run_dir``'s name. An outcome without tracking is reported as a first night. SARIF leaves
    unverified findings out unless ``include_unverified``.
    """
    folder = _folder(Path(run_dir), safe_slug(outcome.slug))
    run_id = Path(run_dir).name
    tracking = outcome.tracked(run_id, _now())
    _write(folder / "findings.json", _json(_findings_doc(outcome, run_id, tracking)))
    sarif = build_sarif(outcome, run_id, tracking, include_unverified=include_unverified)
    _write(folder / "findings.sarif", _json(sarif))
    _write(folder / "review.md", render_review(outcome, run_id, tracking))
    return folder


def _findings_doc(outcome: RepoOutcome, run_id: str, tracking: Tracking) -> dict[str, Any]:
    unverified = [{**f.to_dict(), "status": "unverified", "first_seen": None} for f in tracking.unverified]  # fmt: skip
    return {
        "schema": FINDINGS_SCHEMA,
        "run_id": run_id,
        "slug": outcome.slug,
        "mode": outcome.mode,
        "model": outcome.model,
        "status": outcome.status,
        "error": outcome.error,
        "complete": outcome.complete,
        "findings_by_severity": _severities(tracking),
        "counts": _counts(tracking),
        "unverified_by_agent": outcome.unverified_by_agent(),
        # Tonight's findings: new, persisting, suppressed, then the unverified ones.
        "findings": [t.to_dict() for t in tracking.findings] + unverified,
        # Earlier findings still open though not repeated tonight (not_reported, not_reviewed).
        "open": [t.to_dict() for t in tracking.carried],
        "fixed": [t.to_dict() for t in tracking.fixed],
        "expired_suppressions": list(outcome.expired_suppressions),
        "agents": [r.to_dict() for r in outcome.results],
        "pack": dict(outcome.pack),
        **outcome.usage(),
        "cost_usd": outcome.cost_usd,
    }


def _severities(tracking: Tracking) -> dict[str, int]:
    counts = dict.fromkeys(SEVERITIES, 0)
    for t in tracking.findings:
        if t.status in _REPORTED:
            counts[t.finding.severity] += 1
    return counts


def _counts(tracking: Tracking) -> dict[str, int]:
    every = tracking.counts()
    return {k: every[k] for k in _COUNTED}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_summary(
    run_dir: Path, run_id: str, outcomes: Sequence[RepoOutcome], *, totals: Mapping[str, Any]
) -> Path:
    """Write summary.md and summary.json for the run to ``run_dir``; return ``run_dir``."""
    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    repos = [_summary_row(o, run_id) for o in outcomes]
    by_severity = dict.fromkeys(SEVERITIES, 0)
    for row in repos:
        for severity, n in row["findings"].items():
            if severity in by_severity:
                by_severity[severity] += n
    doc = {
        "schema": SUMMARY_SCHEMA,
        "run_id": run_id,
        "generated_at": _now(),
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


# --- summary ------------------------------------------------------------------------------------------------


def _summary_row(o: RepoOutcome, run_id: str) -> dict[str, Any]:
    coverage = o.pack.get("coverage") if isinstance(o.pack, Mapping) else None
    tracking = o.tracked(run_id, _now())
    unverified = o.unverified_by_agent()
    severities = _severities(tracking)
    return {
        "slug": o.slug,
        "folder": safe_slug(o.slug),
        "status": o.status,
        "error": o.error,
        "complete": o.complete,
        "mode": o.mode,
        "mode_reason": o.mode_reason,
        "unchanged": o.unchanged_since is not None,
        "unchanged_since": o.unchanged_since,
        "model": o.model,
        "agents": [
            {
                "agent": r.agent,
                "status": r.status,
                "findings": len(r.findings),
                "unverified": unverified.get(r.agent, 0),
                "dropped": r.dropped,
            }
            for r in o.results
        ],
        "findings": severities,
        "findings_total": sum(severities.values()),
        **_counts(tracking),
        **o.usage(),
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
        "new",
        "fixed",
        "persisting",
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
            a["agent"]
            + ("" if a["status"] == "ok" else f" **{a['status']}**")
            + (f" ({a['unverified']} unverified)" if a["unverified"] else "")
            for a in row["agents"]
        )
        cov = ", ".join(f"{k} {share(v)}" for k, v in sorted(row["coverage"].items()))
        link = f"[{_md(row['slug'])}]({row['folder']}/review.md)"
        status = (
            row["status"] if row["complete"] or row["status"] != "done" else "done (incomplete)"
        )
        if row.get("unchanged_since"):
            status = f"unchanged since {_md(row['unchanged_since'])}"
        cells = [
            link,
            status,
            f"{row['mode']} ({_md(row['mode_reason'])})" if row.get("mode_reason") else row["mode"],
            agents or "-",
            *(str(row[k]) for k in ("new", "fixed", "persisting")),
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
