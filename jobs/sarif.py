"""SARIF 2.1.0 for one repository's review, shaped for GitHub code scanning.

One run per agent, each with its own ``automationDetails.id`` of the form ``review-runner/AGENT/RUN_ID``: code
scanning takes everything before the last ``/`` as the analysis category, so each agent is its own category
(GitHub refuses several runs with the same tool and category in one upload) and the run id is kept but ignored.
Rules are the seven finding categories, so a ``ruleId`` never changes between nights; the level of each result
comes from its severity. ``partialFingerprints`` carries the finding's own fingerprint (file, normalised title,
category) and ``:n``, its occurrence in the run; ``primaryLocationLineHash`` is deliberately not set: the upload-sarif action computes it from the
cited line's content and warns when a file's value disagrees with its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from jobs.findings import CATEGORIES, AgentResult, Finding, merge

if TYPE_CHECKING:
    from jobs.reports import RepoOutcome

__all__ = ["FINGERPRINT_KEY", "LEVELS", "SCHEMA_URI", "TOOL_NAME", "build_sarif", "rule_id"]

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
TOOL_NAME = "review-runner"
FINGERPRINT_KEY = "reviewRunnerFinding/v1"
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


def build_sarif(outcome: RepoOutcome, run_id: str) -> dict[str, Any]:
    """Return the SARIF log (a JSON-able dict) of one repository: one run per agent that gave a result."""
    merged = {f.fingerprint: f.agents for f in merge(outcome.results)}
    runs = [_run(result, outcome, run_id, merged) for result in outcome.results]
    if not runs:
        # A failed or deferred repo still gets a run, so that the failure is visible where SARIF is read.
        runs = [_failed_run(outcome, run_id)]
    return {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": runs}


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
    return {"name": TOOL_NAME, "semanticVersion": _version(), "rules": rules}


def _run(
    result: AgentResult, outcome: RepoOutcome, run_id: str, merged: Mapping[str, tuple[str, ...]]
) -> dict[str, Any]:
    counts: dict[str, int] = {}
    results = []
    for finding in result.findings:
        n = counts[finding.fingerprint] = counts.get(finding.fingerprint, 0) + 1
        results.append(_result(finding, merged.get(finding.fingerprint, finding.agents), n))
    invocation: dict[str, Any] = {"executionSuccessful": result.status == "ok"}
    if result.status != "ok":
        text = f"{result.agent}: {result.note or _STATUS_TEXT.get(result.status, result.status)}"
        invocation["toolExecutionNotifications"] = [
            {
                "level": "error",
                "message": {"text": text},
                "descriptor": {"id": f"status/{result.status}"},
            }
        ]
    return {
        "tool": {"driver": _driver()},
        "automationDetails": {
            "id": f"{TOOL_NAME}/{result.agent}/{run_id}",
            "description": {
                "text": f"{result.agent} review of {outcome.slug} ({outcome.mode} mode)"
            },
        },
        "invocations": [invocation],
        "results": results,
        "properties": {
            "repo": outcome.slug,
            "agent": result.agent,
            "status": result.status,
            "mode": outcome.mode,
            "model": outcome.model,
            "summary": result.summary,
            "dropped": result.dropped,
        },
    }


def _failed_run(outcome: RepoOutcome, run_id: str) -> dict[str, Any]:
    text = f"{outcome.slug}: review {outcome.status}" + (
        f": {outcome.error}" if outcome.error else ""
    )
    return {
        "tool": {"driver": _driver()},
        "automationDetails": {"id": f"{TOOL_NAME}/{outcome.mode}/{run_id}"},
        "invocations": [
            {
                "executionSuccessful": False,
                "toolExecutionNotifications": [{"level": "error", "message": {"text": text}}],
            }
        ],
        "results": [],
        "properties": {"repo": outcome.slug, "status": outcome.status, "mode": outcome.mode},
    }


def _result(finding: Finding, agents: tuple[str, ...], occurrence: int) -> dict[str, Any]:
    text = finding.title
    if finding.detail:
        text += "\n\n" + finding.detail
    if finding.suggestion:
        text += "\n\nSuggestion: " + finding.suggestion
    properties: dict[str, Any] = {
        "severity": finding.severity,
        "category": finding.category,
        "agents": list(agents),
        "fingerprint": finding.fingerprint,
    }
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
    return out


def _version() -> str:
    try:
        return metadata.version("review-runner")
    except metadata.PackageNotFoundError:
        return "0.0.0"
