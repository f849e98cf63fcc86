"""Findings: a reply (a forced tool call's input, or text) parsed tolerantly and each finding validated.

A reply is never read as "no findings" unless it parsed as a complete findings object: a reply that does not
parse is ``unparsed`` (raw text kept), a refusal ``refused``, a reply cut at ``max_tokens`` ``truncated`` (with
whatever complete findings could be salvaged from it). Only ``ok`` means the agent's list is complete.

With the pack, each finding's ``evidence`` (the code it quotes) is looked up in the packed file: found, the
finding is ``verified`` and its lines are corrected to where the code is; not found, it is unverified. Its
fingerprint comes from the repo, path, category and normalised evidence (jobs.evidence). Merging the agents'
findings is jobs.merging's.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from jobs.errors import JobsInputError
from jobs.evidence import evidence_fingerprint, locate, packed_files
from jobs.replyjson import extract, finding_list, salvage

if TYPE_CHECKING:
    from jobs.pack_record import Pack

__all__ = [
    "CATEGORIES",
    "SEVERITIES",
    "STATUSES",
    "AgentResult",
    "Finding",
    "fingerprint",
    "norm_title",
    "parse",
    "parse_content",
    "parse_tool_input",
]

SEVERITIES = ("critical", "high", "medium", "low", "info")
CATEGORIES = ("security", "correctness", "architecture", "performance", "maintainability", "testing", "other")  # fmt: skip
STATUSES = ("ok", "unparsed", "refused", "truncated")

# Words models use for the same levels; anything else is not a severity and the finding is dropped.
_SEVERITY_ALIASES = {
    "crit": "critical", "blocker": "critical",
    "major": "high", "error": "high", "severe": "high",
    "moderate": "medium", "med": "medium", "warning": "medium", "warn": "medium",
    "minor": "low", "trivial": "low",
    "informational": "info", "information": "info", "note": "info", "nit": "info",
}  # fmt: skip
_CATEGORY_ALIASES = {
    "bug": "correctness", "bugs": "correctness", "logic": "correctness", "reliability": "correctness",
    "error-handling": "correctness", "error handling": "correctness",
    "design": "architecture", "structure": "architecture",
    "perf": "performance", "efficiency": "performance",
    "readability": "maintainability", "style": "maintainability", "documentation": "maintainability",
    "docs": "maintainability", "code quality": "maintainability", "code-quality": "maintainability",
    "test": "testing", "tests": "testing",
    "vulnerability": "security", "secrets": "security",
}  # fmt: skip
_MAX_TITLE = 200
_MAX_TEXT = 8000
_MAX_EVIDENCE = 4000
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class Finding:
    """One validated finding, possibly reported by several agents."""

    severity: str
    category: str
    title: str
    file: str | None
    line: int | None
    end_line: int | None
    detail: str
    suggestion: str
    confidence: float | None
    agents: tuple[str, ...]
    fingerprint: str
    # The quoted line(s); ``verified`` True when found in the packed file (lines corrected to it), False when
    # not found, None when no pack was given to check it against.
    evidence: str = ""
    verified: bool | None = None

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        data = asdict(self)
        data["agents"] = list(self.agents)
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> Finding:
        """Rebuild from ``to_dict``; JobsInputError when a field is missing or of the wrong type."""
        try:
            opt = {k: data.get(k) for k in ("file", "line", "end_line", "confidence")}
            return cls(
                **{k: str(data[k]) for k in ("severity", "category", "title", "fingerprint")},
                file=None if opt["file"] is None else str(opt["file"]),
                line=None if opt["line"] is None else int(opt["line"]),
                end_line=None if opt["end_line"] is None else int(opt["end_line"]),
                detail=str(data.get("detail") or ""),
                suggestion=str(data.get("suggestion") or ""),
                confidence=None if opt["confidence"] is None else float(opt["confidence"]),
                agents=tuple(str(a) for a in data.get("agents") or ()),
                evidence=str(data.get("evidence") or ""),
                verified=None if data.get("verified") is None else bool(data["verified"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise JobsInputError(f"malformed finding record: {exc!r}") from exc


@dataclass(frozen=True)
class AgentResult:
    """What one agent's reply gave: its status, summary and the findings that passed validation."""

    agent: str
    status: str
    summary: str
    findings: tuple[Finding, ...]
    dropped: int
    raw: str | None
    # Why the status is not ok, in words a report can show; empty when ok.
    note: str = ""

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return {**asdict(self), "findings": [f.to_dict() for f in self.findings]}

    @classmethod
    def from_dict(cls, data: Mapping) -> AgentResult:
        """Rebuild from ``to_dict``; JobsInputError when the record is malformed."""
        try:
            status = str(data["status"])
            if status not in STATUSES:
                raise ValueError(f"unknown status {status!r}")
            raw = data.get("raw")
            return cls(
                agent=str(data["agent"]),
                status=status,
                summary=str(data.get("summary") or ""),
                findings=tuple(Finding.from_dict(f) for f in data.get("findings") or ()),
                dropped=int(data.get("dropped") or 0),
                raw=None if raw is None else str(raw),
                note=str(data.get("note") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise JobsInputError(f"malformed agent result record: {exc}") from exc


def fingerprint(repo: str, file: str | None, category: str, evidence: str, title: str = "") -> str:
    """Return a finding's identity from repo, path, category and the normalised evidence (jobs.evidence).

    Never from the title or a line number. Only a finding that quotes nothing falls back to its normalised
    title, so that two such findings stay apart; it cannot be verified, so it is never tracked across nights.
    """
    quote = evidence if evidence.strip() else ("\x00title:" + norm_title(title) if title else "")
    return evidence_fingerprint(repo, file, category, quote)


def parse(
    reply_text: str,
    stop_reason: str | None,
    *,
    agent: str,
    pack: Pack | None = None,
    repo: str | None = None,
) -> AgentResult:
    """Parse one text reply into an AgentResult; never raises on a bad reply, only records how bad it was.

    ``stop_reason`` "refusal" gives ``refused``; "max_tokens" gives ``truncated`` even when the JSON happens to
    parse (the model may have had more to say), with the complete findings salvaged. With ``pack``, a finding
    must cite a file in the pack, and its evidence is checked against the packed file (``verified``, lines
    corrected). Several different findings objects in one reply (one may be quoted from the code under review)
    are resolved by ````jobs.replyjson.extract``'s rule, which text planted in the code cannot win.
    """
    text = reply_text or ""
    if stop_reason == "refusal":
        return AgentResult(
            agent, "refused", "", (), 0, text, "the model refused to review this repository"
        )
    data, why = extract(text)
    if finding_list(data):
        data = {"summary": "", "findings": data}
    context = _Context(agent, pack, repo)
    if stop_reason == "max_tokens":
        if why is None and not (isinstance(data, dict) and isinstance(data.get("findings"), list)):
            # Cut inside the object: what decodes is a finding nested in it, not the answer.
            data = salvage(text) or data
        return _truncated(data, text, context)
    if not isinstance(data, dict) or not isinstance(data.get("findings"), list):
        why = why or (
            "no findings JSON object found in the reply"
            if data is None
            else "the JSON has no findings list"
        )
        return AgentResult(agent, "unparsed", "", (), 0, text, why)
    findings, dropped = _validate_all(data["findings"], context)
    return AgentResult(agent, "ok", _text(data.get("summary")), findings, dropped, None, "")


def parse_tool_input(
    tool_input: Any,
    stop_reason: str | None,
    *,
    agent: str,
    pack: Pack | None = None,
    repo: str | None = None,
) -> AgentResult:
    """Parse the ``input`` of the forced findings tool call (a dict already decoded by the SDK).

    A refusal is ``refused``; a call cut at max_tokens ``truncated`` with what it holds; an input that is not
    an object with a findings list ``unparsed`` (its JSON kept as the raw text).
    """
    raw = json.dumps(tool_input, ensure_ascii=False, default=str)
    if stop_reason == "refusal":
        return AgentResult(agent, "refused", "", (), 0, raw, "the model refused to review this repository")  # fmt: skip
    context = _Context(agent, pack, repo)
    if stop_reason == "max_tokens":
        return _truncated(tool_input if isinstance(tool_input, dict) else None, raw, context)
    if not isinstance(tool_input, dict) or not isinstance(tool_input.get("findings"), list):
        return AgentResult(agent, "unparsed", "", (), 0, raw, "the tool input has no findings list")
    findings, dropped = _validate_all(tool_input["findings"], context)
    return AgentResult(agent, "ok", _text(tool_input.get("summary")), findings, dropped, None, "")


def parse_content(
    content: Sequence[Mapping[str, Any]],
    stop_reason: str | None,
    *,
    agent: str,
    tool_name: str,
    pack: Pack | None = None,
    repo: str | None = None,
) -> AgentResult:
    """Parse a Message's ``content`` blocks (as dicts): the ``tool_name`` tool call's input when there is one,
    else the text blocks joined (a gateway without tool use)."""
    for block in content:
        if block.get("type") == "tool_use" and block.get("name") == tool_name:
            return parse_tool_input(
                block.get("input"), stop_reason, agent=agent, pack=pack, repo=repo
            )
    text = "".join(str(b.get("text") or "") for b in content if b.get("type") == "text")
    return parse(text, stop_reason, agent=agent, pack=pack, repo=repo)


def _truncated(data: Any, raw: str, context: _Context) -> AgentResult:
    items = data.get("findings") if isinstance(data, dict) else None
    findings, dropped = _validate_all(items if isinstance(items, list) else [], context)
    summary = _text(data.get("summary")) if isinstance(data, dict) else ""
    note = (
        "the reply was cut off at max_output_tokens: the review is incomplete "
        f"({len(findings)} complete finding(s) salvaged)"
    )
    return AgentResult(context.agent, "truncated", summary, findings, dropped, raw, note)


# --- validation ---------------------------------------------------------------------------------------------


class _Context:
    """What validating one reply's findings needs: the agent, the pack and its files' lines, read once."""

    def __init__(self, agent: str, pack: Pack | None, repo: str | None) -> None:
        self.agent = agent
        self.pack = pack
        self.repo = repo if repo is not None else (pack.slug if pack is not None else "")
        self._files: dict[str, list[str]] | None = None

    def lines(self, path: str) -> list[str]:
        if self._files is None:
            self._files = packed_files(self.pack.text) if self.pack is not None else {}
        return self._files.get(path, [])


def _validate_all(items: list, context: _Context) -> tuple[tuple[Finding, ...], int]:
    findings: list[Finding] = []
    seen: set[tuple] = set()
    dropped = 0
    for item in items:
        finding = _validate(item, context)
        if finding is None:
            dropped += 1
        elif (key := (finding.fingerprint, finding.line, finding.end_line, norm_title(finding.title))) not in seen:  # fmt: skip
            # The same finding repeated in one reply is one finding, not an invalid one.
            seen.add(key)
            findings.append(finding)
    return tuple(findings), dropped


def _validate(item: Any, context: _Context) -> Finding | None:
    """Return the normalised finding, or None when it cannot be trusted."""
    if not isinstance(item, dict):
        return None
    severity = _enum(item.get("severity"), SEVERITIES, _SEVERITY_ALIASES)
    if severity is None:
        return None
    raw_category = item.get("category")
    if raw_category is not None and not isinstance(raw_category, str):
        return None
    # A category we do not know is still a finding: "other" exists for it.
    category = _enum(raw_category, CATEGORIES, _CATEGORY_ALIASES) or "other"
    title = item.get("title")
    if not isinstance(title, str) or not title.strip():
        return None
    title = " ".join(title.split())[:_MAX_TITLE]
    detail, suggestion = item.get("detail"), item.get("suggestion")
    if any(v is not None and not isinstance(v, str) for v in (detail, suggestion)):
        return None
    evidence = _evidence(item.get("evidence"))
    if evidence is None:
        return None
    pack = context.pack
    file = item.get("file", item.get("path"))
    if file is not None and not isinstance(file, str):
        return None
    file = _norm_path(file, pack) if file else None
    if file == "":
        return None
    lines = _lines(file, _int(item.get("line")), _int(item.get("end_line")), evidence, context)
    if lines is None:
        return None
    line, end_line, verified = lines
    return Finding(
        severity=severity,
        category=category,
        title=title,
        file=file,
        line=line,
        end_line=end_line,
        detail=(detail or "").strip()[:_MAX_TEXT],
        suggestion=(suggestion or "").strip()[:_MAX_TEXT],
        confidence=_confidence(item.get("confidence")),
        agents=(context.agent,),
        fingerprint=fingerprint(context.repo, file, category, evidence, title),
        evidence=evidence,
        verified=verified,
    )


def _lines(
    file: str | None, line: Any, end_line: Any, evidence: str, context: _Context
) -> tuple[int | None, int | None, bool | None] | None:
    """(line, end_line, verified) after checking the evidence against the pack; None drops the finding."""
    if line is False or end_line is False:
        return None
    pack = context.pack
    if file is None:
        # Nothing to look the quote up in: a repository-wide finding is never verified against code.
        return None, None, (False if pack is not None else None)
    found = locate(evidence, context.lines(file), line) if pack is not None and evidence else None
    cited = _cited(pack, file, line, end_line)
    if found is None:
        return None if cited is None else (*cited, False if pack is not None else None)
    if cited is not None and cited[0] is not None:
        low, high = cited[0], cited[1] or cited[0]
        if low <= found.line and found.end_line <= high:
            # The quote lies inside the span the model cited: the span is right as it is.
            return (*cited, True)
    return found.line, found.end_line, True


def _cited(
    pack: Pack | None, file: str, line: int | None, end_line: int | None
) -> tuple[int | None, int | None] | None:
    """The cited span, end clamped to the shown lines; None when the line is not in the file."""
    if line is None:
        end_line = None
    elif pack is not None:
        low, high = _shown(pack, file)
        if not low <= line <= high:
            return None
        if end_line is not None:
            end_line = min(end_line, high)
    if end_line is not None and line is not None and end_line < line:
        end_line = None
    return line, end_line


def _evidence(value: Any) -> str | None:
    """The quote as text ("" when absent); a list of lines is joined; None when it is of a wrong type."""
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = "\n".join(value)
    if not isinstance(value, str):
        return None
    return value.strip("\n")[:_MAX_EVIDENCE]


def _enum(value: Any, allowed: tuple[str, ...], aliases: Mapping[str, str]) -> str | None:
    if not isinstance(value, str):
        return None
    key = value.strip().lower()
    if key in allowed:
        return key
    return aliases.get(key)


def _int(value: Any) -> int | bool | None:
    """Return a positive int, None when absent, or False when present but not a line number."""
    if value is None:
        return None
    if isinstance(value, bool):
        return False
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and value >= 1:
        return value
    return False


def _confidence(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    if 1.0 < value <= 100.0:  # a percentage
        value /= 100.0
    return round(value, 3) if 0.0 <= value <= 1.0 else None


def _norm_path(path: str, pack: Pack | None) -> str:
    """Return the path relative to the repo root, or "" when it points outside the repo or the pack."""
    p = path.strip().replace("\\", "/")
    if p.startswith(("/", "~")) or _WINDOWS_DRIVE.match(p) or "://" in p:
        return ""
    while p.startswith("./"):
        p = p[2:]
    parts = [part for part in p.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        return ""
    p = "/".join(parts)
    if pack is None:
        return p
    if pack.line_count(p) is not None:
        return p
    # Models often prefix the repository name; accept it only when the rest names a packed file.
    if (
        len(parts) > 1
        and parts[0] == pack.slug
        and pack.line_count("/".join(parts[1:])) is not None
    ):
        return "/".join(parts[1:])
    return ""


def _shown(pack: Pack, path: str) -> tuple[int, int]:
    """The lines of ``path`` the model could see: all of them, or the shown part of a truncated file."""
    total = pack.line_count(path) or 0
    for packed in pack.files:
        if packed.path == path and packed.status == "truncated" and packed.shown:
            return max(1, packed.shown[0]), min(total, packed.shown[1])
    return 1, total


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def norm_title(title: str) -> str:
    """A title lowercased, NFKC-normalised, punctuation out: what "the same wording" compares."""
    title = unicodedata.normalize("NFKC", title).lower()
    return " ".join(re.sub(r"[^\w]+", " ", title).split())
