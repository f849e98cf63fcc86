"""SARIF 2.1.0 for one repository's review, shaped for GitHub code scanning.

One run per repository, whatever the mode, with ``automationDetails.id`` = ``review-runner/REPO/RUN_ID``: code
scanning takes everything before the last ``/`` as the analysis category, so the category is
``review-runner/REPO`` every night (a concurrent night followed by a single night updates the same alerts
instead of leaving the agents' categories open forever). The agents that found each result are in its
properties. Rules are the seven finding categories, so a ``ruleId`` never changes between nights; the level
comes from the severity. ``partialFingerprints`` carries the finding's identity (repo, path, category and the
normalised evidence; ``:n`` numbers repeats in a run) under our own key; ``primaryLocationLineHash`` is
deliberately not set: the upload-sarif action computes it from the cited line's content.

Results are tonight's verified findings (new, persisting, suppressed) and the earlier ones still open
(not reported or not reviewed tonight, so that code scanning does not close and reopen them); fixed ones are
left out (code scanning closes them), and so are unverified ones unless asked for. Suppressed and
baseline-accepted findings carry a SARIF suppression (kind ``external``, status ``accepted``).
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from jobs.findings import CATEGORIES, Finding
from jobs.tracking import Tracked

if TYPE_CHECKING:
    from jobs.outcome import RepoOutcome
    from jobs.tracking import Tracking

__all__ = [
    "FINGERPRINT_KEY",
    "INFORMATION_URI",
    "LEVELS",
    "SCHEMA_URI",
    "TOOL_NAME",
    "build_sarif",
    "category",
    "rule_id",
]

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
TOOL_NAME = "review-runner"
INFORMATION_URI = "https://github.com/review-runner/review-runner"
FINGERPRINT_KEY = "reviewRunner/v1"
LEVELS = {"critical": "error", "high": "error", "medium": "warning", "low": "note", "info": "note"}
# GitHub reads security-severity from rules only; kept on results as a hint for other consumers.
_SECURITY_SEVERITY = {
    "critical": "9.5",
    "high": "8.0",
    "medium": "5.5",
    "low": "3.0",
    "info": "1.0",
}
_RULES = {
    "security": (
        "Security weakness",
        "A vulnerability or security weakness found by an LLM reviewer: injection, missing authorization, "
        "exposed secrets, weak cryptography, unsafe deserialization or unvalidated input.",
    ),
    "correctness": (
        "Correctness problem",
        "A bug or unhandled case found by an LLM reviewer: wrong logic, unhandled errors or edge cases, "
        "misuse of an API, race conditions.",
    ),
    "architecture": (
        "Architecture problem",
        "A structural problem found by an LLM reviewer: module boundaries, dependency cycles, mixed "
        "responsibilities, unclear contracts, behaviour on failure.",
    ),
    "performance": (
        "Performance problem",
        "A performance problem found by an LLM reviewer: needless work, quadratic behaviour, repeated I/O, "
        "unbounded memory.",
    ),
    "maintainability": (
        "Maintainability problem",
        "Code found hard to change safely by an LLM reviewer: duplication, dead code, misleading names, "
        "missing documentation.",
    ),
    "testing": (
        "Testing gap",
        "A gap in the tests found by an LLM reviewer: risky paths without tests, or tests that do not test "
        "what they claim.",
    ),
    "other": (
        "Other finding",
        "A finding of an LLM reviewer that fits none of the other categories.",
    ),
}
_STATUS_TEXT = {
    "unparsed": "the reply could not be parsed as findings JSON; these results are NOT a complete review",
    "refused": "the model refused to review; there are NO results for this agent, which is not a clean bill",
    "truncated": "the reply was cut off at max_output_tokens; only the findings before the cut are included",
}


def rule_id(category: str) -> str:
    """Return the stable SARIF ruleId of a finding category."""
    return f"{TOOL_NAME}/{category}"


def category(slug: str) -> str:
    """The code scanning category of a repo's results: the same every night, whatever the mode."""
    return f"{TOOL_NAME}/{slug}"


def build_sarif(
    outcome: RepoOutcome, run_id: str, tracking: Tracking, *, include_unverified: bool = False
) -> dict[str, Any]:
    """Return the SARIF log (a JSON-able dict) of one repository: one run, whatever the mode."""
    tracked = [*tracking.findings, *tracking.carried]
    counts: dict[str, int] = {}
    results = []
    for t in tracked:
        results.append(_result(t.finding, t, _occurrence(counts, t.finding)))
    if include_unverified:
        for finding in tracking.unverified:
            results.append(_result(finding, None, _occurrence(counts, finding)))
    return {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": [_run(outcome, run_id, results)]}


def _occurrence(counts: dict[str, int], finding: Finding) -> int:
    n = counts[finding.fingerprint] = counts.get(finding.fingerprint, 0) + 1
    return n


def _driver() -> dict[str, Any]:
    rules = []
    for category in CATEGORIES:
        name, description = _RULES[category]
        rules.append(
            {
                "id": rule_id(category),
                "name": name.replace(" ", ""),
                "shortDescription": {"text": name},
                "fullDescription": {"text": description},
                "help": {"text": description, "markdown": f"**{name}.** {description}"},
                "defaultConfiguration": {"level": "warning"},
                "properties": {"tags": [category, "llm-review"], "precision": "medium"},
            }
        )
    return {
        "name": TOOL_NAME,
        "informationUri": INFORMATION_URI,
        "semanticVersion": _version(),
        "rules": rules,
    }


def _run(outcome: RepoOutcome, run_id: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    notes = []
    if outcome.status != "done":
        text = f"{outcome.slug}: review {outcome.status}" + (
            f": {outcome.error}" if outcome.error else ""
        )
        notes.append(_note(text, f"status/{outcome.status}"))
    for result in outcome.results:
        if result.status != "ok":
            text = (
                f"{result.agent}: {result.note or _STATUS_TEXT.get(result.status, result.status)}"
            )
            notes.append(_note(text, f"status/{result.status}"))
    invocation: dict[str, Any] = {"executionSuccessful": outcome.complete}
    if notes:
        invocation["toolExecutionNotifications"] = notes
    agents = ", ".join(r.agent for r in outcome.results) or "no agent"
    return {
        "tool": {"driver": _driver()},
        "automationDetails": {
            "id": f"{category(outcome.slug)}/{run_id}",
            "description": {"text": f"Review of {outcome.slug} ({outcome.mode} mode: {agents})."},
        },
        "invocations": [invocation],
        "results": results,
        "properties": {
            "repo": outcome.slug,
            "status": outcome.status,
            "mode": outcome.mode,
            "model": outcome.model,
            "agents": [
                {"agent": r.agent, "status": r.status, "summary": r.summary, "dropped": r.dropped}
                for r in outcome.results
            ],
            "unverifiedByAgent": outcome.unverified_by_agent(),
        },
    }


def _note(text: str, descriptor: str) -> dict[str, Any]:
    return {"level": "error", "message": {"text": text}, "descriptor": {"id": descriptor}}


def _result(finding: Finding, tracked: Tracked | None, occurrence: int) -> dict[str, Any]:
    text = finding.title.rstrip(".") + "."
    if finding.detail:
        text += "\n\n" + finding.detail
    if finding.suggestion:
        text += "\n\nSuggestion: " + finding.suggestion
    properties: dict[str, Any] = {
        "severity": finding.severity,
        "category": finding.category,
        "agents": list(finding.agents),
        "fingerprint": finding.fingerprint,
        "verified": finding.verified,
        "evidence": finding.evidence,
    }
    if tracked is not None:
        properties["status"] = str(tracked.status)
        properties["firstSeen"] = tracked.first_seen.to_dict()
    else:
        properties["status"] = "unverified"
    if finding.confidence is not None:
        properties["confidence"] = finding.confidence
    if finding.category == "security":
        properties["security-severity"] = _SECURITY_SEVERITY[finding.severity]
    out: dict[str, Any] = {
        "ruleId": rule_id(finding.category),
        "ruleIndex": CATEGORIES.index(finding.category),
        "level": LEVELS[finding.severity],
        "message": {"text": text},
        # ":n" numbers repeats of one fingerprint in a run, as code scanning does for its line hashes.
        "partialFingerprints": {FINGERPRINT_KEY: f"{finding.fingerprint}:{occurrence}"},
        "properties": properties,
    }
    if finding.file is not None:
        physical: dict[str, Any] = {"artifactLocation": {"uri": quote(finding.file, safe="/")}}
        if finding.line is not None:
            physical["region"] = {
                "startLine": finding.line,
                "endLine": finding.end_line or finding.line,
            }
        out["locations"] = [{"physicalLocation": physical}]
    if tracked is not None and tracked.suppression is not None:
        sup = tracked.suppression
        out["suppressions"] = [
            {
                "kind": "external",
                "status": "accepted",
                "justification": sup.reason,
                "properties": {"source": str(sup.source), "rule": sup.rule, "expires": sup.expires},
            }
        ]
    return out


def _version() -> str:
    try:
        return metadata.version("review-runner")
    except metadata.PackageNotFoundError:
        return "0.0.0"
