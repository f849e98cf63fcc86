"""Simulated replies: findings JSON (DESIGN.md shape) derived from the pack in the prompt.

The reviewer is a table of risky-line patterns. Each agent (named in the prompt's instructions)
reports the categories it is about. The reply is padded (in the summary) to the drawn output
length and cut at max_tokens, so that `output_tokens == count_tokens(text)` always holds.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass

from runner.simulator.prompt import count_tokens

__all__ = [
    "Realism",
    "Reply",
    "detect_agent",
    "distort",
    "draw_length",
    "find_issues",
    "make_reply",
    "request_digest",
    "tool_use_block",
]

AGENTS = ("code_review", "architecture", "security", "multi_perspective", "combined", "single")

# Which categories each agent reports; None = all.
AGENT_CATEGORIES: dict[str, frozenset[str] | None] = {
    "security": frozenset({"security"}),
    "architecture": frozenset({"architecture", "maintainability", "performance"}),
    "code_review": frozenset({"correctness", "maintainability", "testing", "security"}),
    "multi_perspective": None,
    "combined": None,
    "single": None,
}

_RULES: tuple[tuple[str, str, str, str, str], ...] = (
    # (regex, severity, category, title, suggestion)
    (
        r"\[REDACTED:[\w-]+\]",
        "critical",
        "security",
        "Secret committed to the repository",
        "Revoke the secret, remove it from history and load it from the environment.",
    ),
    (
        r"\b(eval|exec)\s*\(",
        "high",
        "security",
        "Dynamic code execution with eval/exec",
        "Replace eval/exec with explicit parsing (ast.literal_eval, a dispatch table).",
    ),
    (
        r"shell\s*=\s*True",
        "high",
        "security",
        "Subprocess call with shell=True",
        "Pass an argument list and keep shell=False.",
    ),
    (
        r"\bpickle\.loads?\s*\(|\byaml\.load\s*\((?!.*Loader=yaml\.SafeLoader)",
        "high",
        "security",
        "Deserialization of untrusted data",
        "Use a safe format (JSON) or a safe loader.",
    ),
    (
        r"(?i)\b(password|passwd|secret|api_key|token)\s*=\s*['\"][^'\"]+['\"]",
        "critical",
        "security",
        "Hard-coded credential",
        "Read the secret from the environment or a vault.",
    ),
    (
        r"\b(hashlib\.)?(md5|sha1)\s*\(",
        "medium",
        "security",
        "Weak hash function (MD5/SHA-1)",
        "Use SHA-256 or a password hash (bcrypt, scrypt, argon2) as appropriate.",
    ),
    (
        r"(?i)(execute|executemany)\s*\(\s*(f['\"]|['\"].*['\"]\s*(%|\.format\())|"
        r"\bf['\"]\s*(select|insert|update|delete)\b.*\{",
        "high",
        "security",
        "SQL built by string formatting",
        "Use parameterized queries.",
    ),
    (
        r"verify\s*=\s*False",
        "medium",
        "security",
        "TLS certificate verification disabled",
        "Keep verify=True; pin a CA bundle if needed.",
    ),
    (
        r"^\s*except\s*:",
        "medium",
        "correctness",
        "Bare except swallows every error",
        "Catch the specific exceptions and re-raise or log the rest.",
    ),
    (
        r"except\s+Exception\s*:\s*(pass)?\s*$",
        "low",
        "correctness",
        "Broad exception handler",
        "Narrow the exception type or handle the error explicitly.",
    ),
    (
        r"\bassert\s+\w",
        "low",
        "correctness",
        "assert used for runtime checking",
        "Raise an explicit exception; asserts vanish under python -O.",
    ),
    (
        r"(?i)\b(TODO|FIXME|XXX|HACK)\b",
        "info",
        "maintainability",
        "Unfinished work marker",
        "Resolve the marker or track it in an issue.",
    ),
    (
        r"^\s*global\s+\w",
        "medium",
        "architecture",
        "Mutable global state",
        "Pass state explicitly or encapsulate it in an object.",
    ),
    (
        r"^\s*from\s+\S+\s+import\s+\*",
        "low",
        "architecture",
        "Wildcard import",
        "Import the names you use explicitly.",
    ),
    (
        r"time\.sleep\s*\(",
        "low",
        "performance",
        "Blocking sleep",
        "Prefer event-driven waiting or make the delay configurable.",
    ),
    (
        r"def\s+\w+\(.*=\s*(\[\]|\{\})\s*[,)]",
        "medium",
        "correctness",
        "Mutable default argument",
        "Default to None and create the object inside the function.",
    ),
)
_COMPILED = tuple((re.compile(rx), sev, cat, title, sugg) for rx, sev, cat, title, sugg in _RULES)
_AGENT_MARKER = re.compile(r"\bagent\s*[:=]?\s*[`'\"]([A-Za-z_]+)[`'\"]")
_FILE_START = re.compile(r'^<file path="([^"]*)" lines="(\d+)"')
_LINE = re.compile(r"^(\d+)\| (.*)$")
_LARGE_FILE_LINES = 500
MAX_FINDINGS = 40
_FILLER = "Simulated padding to the drawn output length; no model read this code. "


def _unescape(value: str) -> str:
    return (
        value.replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    )


def find_issues(prompt_text: str, agent: str) -> list[dict[str, object]]:
    """Findings for the pack(s) in `prompt_text`, filtered to the agent's categories."""
    wanted = AGENT_CATEGORIES.get(agent)
    findings: list[dict[str, object]] = []
    path: str | None = None
    for raw in prompt_text.splitlines():
        if path is None:
            start = _FILE_START.match(raw)
            if start:
                path = _unescape(start.group(1))
                total = int(start.group(2))
                if total > _LARGE_FILE_LINES and (wanted is None or "architecture" in wanted):
                    findings.append(
                        _finding(
                            "medium",
                            "architecture",
                            "Very large module",
                            path,
                            1,
                            f"{path} has {total} lines.",
                            "Split it into smaller modules with one job each.",
                        )
                    )
            continue
        if raw == "</file>":
            path = None
            continue
        line = _LINE.match(raw)
        if not line:
            continue
        number, code = int(line.group(1)), line.group(2)
        for rx, sev, cat, title, sugg in _COMPILED:
            if (wanted is None or cat in wanted) and rx.search(code):
                detail = f"Line {number} of {path}: `{code.strip()[:120]}`."
                found = _finding(sev, cat, title, path, number, detail, sugg)
                found["evidence"] = (
                    code  # the line as the pack shows it, as a model is asked to copy it
                )
                findings.append(found)
                break
        if len(findings) >= MAX_FINDINGS:
            break
    return findings


def _finding(
    sev: str, cat: str, title: str, path: str, line: int, detail: str, sugg: str
) -> dict[str, object]:
    return {
        "severity": sev,
        "category": cat,
        "title": title,
        "file": path,
        "line": line,
        "end_line": line,
        "detail": detail,
        "suggestion": sugg,
        "confidence": 0.5,
    }


def detect_agent(system_text: str, prompt_text: str) -> str:
    """The agent the instructions name: the shipped prompts' "(agent `name`)" marker first, then
    the earliest agent name outside the pack (instructions before the shared system prompt)."""
    outside = re.sub(r"<repository\b.*?</repository>", " ", prompt_text, flags=re.S)
    for text in (outside, system_text):
        marker = _AGENT_MARKER.search(text)
        if marker and marker.group(1).lower() in AGENT_CATEGORIES:
            return marker.group(1).lower()
    for text in (outside.replace(system_text, " ") if system_text else outside, system_text):
        lowered = text.lower()
        hits = []
        for name in AGENTS:
            for spelling in {name, name.replace("_", " "), name.replace("_", "-")}:
                at = lowered.find(spelling)
                if at >= 0:
                    hits.append((at, name))
        if hits:
            return min(hits)[1]
    return "code_review"


def draw_length(request_digest: str, seed: int, mean: int, spread: float) -> int:
    """Output length in tokens: uniform in mean*(1±spread), rounded, at least 1.

    Drawn from a generator seeded by the request's content, so the same request (streamed or
    not) always gets the same reply.
    """
    rng = random.Random(f"{seed}:{request_digest}")
    low = max(1.0, mean * (1 - spread))
    high = max(low, mean * (1 + spread))
    return max(1, round(rng.uniform(low, high)))


@dataclass(frozen=True)
class Reply:
    """The text returned and why it stopped; a tool reply also has the tool's name and input.

    For a tool reply ``text`` is the input's JSON, what a stream sends as ``input_json_delta`` and what
    ``output_tokens`` counts.
    """

    text: str
    stop_reason: str
    output_tokens: int
    tool_name: str = ""
    tool_input: Mapping[str, object] | None = None


@dataclass(frozen=True)
class Realism:
    """How far the simulated reviewer strays from the code, per finding, as real models do.

    ``reword_rate``: the title is reworded; ``misline_rate``: the cited line is 1..``misline_max`` lines off
    (the evidence stays right); ``misquote_rate``: the evidence is code that is not in the file. Drawn from
    a generator seeded by the seed and the request's content, so a changed pack (a new night) draws anew and
    the same request always gets the same reply.
    """

    reword_rate: float = 0.0
    misline_rate: float = 0.0
    misquote_rate: float = 0.0
    misline_max: int = 3


_REWORDINGS = (
    "{title}",
    "Possible {lower}",
    "{title} in {name}",
    "Risk: {lower}",
    "{title} (needs a look)",
    "Found: {lower}",
)
MISQUOTE_MARK = "  # as the reviewer remembers it"


def distort(
    findings: list[dict[str, object]], realism: Realism, key: str
) -> list[dict[str, object]]:
    """Return ``findings`` reworded, mis-cited and misquoted at ``realism``'s rates, seeded by ``key``."""
    rng = random.Random(f"realism:{key}")
    out = []
    for item in findings:
        item = dict(item)
        title, name = str(item["title"]), str(item["file"]).rsplit("/", 1)[-1]
        if rng.random() < realism.reword_rate:
            # Never the identity wording: a reworded title must differ from the one before.
            form = rng.choice(_REWORDINGS[1:])
            item["title"] = form.format(title=title, lower=title[:1].lower() + title[1:], name=name)
        if rng.random() < realism.misline_rate and isinstance(item.get("line"), int):
            off = rng.randint(1, max(1, realism.misline_max)) * rng.choice((-1, 1))
            line = item["line"]
            assert isinstance(line, int)
            item["line"] = item["end_line"] = max(1, line + off)
        if rng.random() < realism.misquote_rate:
            item["evidence"] = str(item.get("evidence", "")).strip() + MISQUOTE_MARK
        out.append(item)
    return out


def _render(agent: str, findings: list[dict[str, object]], pad_chars: int) -> str:
    files = len({f["file"] for f in findings})
    summary = (
        f"Simulated review by the review-runner simulator (agent: {agent}); no model was called. "
        f"{len(findings)} finding(s) in {files} file(s) from risky-pattern matching."
    )
    if pad_chars > 0:
        summary += " " + (_FILLER * (pad_chars // len(_FILLER) + 1))[: pad_chars - 1]
    return json.dumps({"summary": summary, "findings": findings}, ensure_ascii=True)


def make_reply(
    prompt_text: str,
    system_text: str,
    digest: str,
    seed: int,
    mean: int,
    spread: float,
    max_tokens: int,
    *,
    tools: list[dict[str, object]] | None = None,
    tool_choice: dict[str, object] | None = None,
    realism: Realism | None = None,
) -> Reply:
    """The reply to one request: findings JSON padded to the drawn length, cut at max_tokens.

    The drawn length is a floor: findings are never dropped to meet it, so a prompt with many
    risky lines gets a longer reply than the distribution alone would give. A request with ``tools``
    is answered by a call of the forced tool (else the first one) whose input is the findings object.
    """
    if max_tokens == 0:
        return Reply("", "max_tokens", 0)
    tool = _tool_name(tools, tool_choice)
    if tools:
        # The tool definitions are flattened first into the prompt text; the agent is named elsewhere.
        for t in tools:
            rest = {k: v for k, v in t.items() if k != "cache_control"}
            prompt_text = prompt_text.replace(
                json.dumps(rest, sort_keys=True, separators=(",", ":")), " "
            )
    agent = detect_agent(system_text, prompt_text)
    findings = find_issues(prompt_text, agent)
    if realism is not None:
        findings = distort(findings, realism, f"{seed}:{digest}")
    target = draw_length(digest, seed, mean, spread)
    text = _render(agent, findings, 0)
    if count_tokens(text) < target:
        # ceil(len/4) == target exactly when len == 4 * target.
        text = _render(agent, findings, 4 * target - len(text))
    tokens = count_tokens(text)
    if tool:
        return _tool_reply(tool, json.loads(text), max_tokens)
    if tokens > max_tokens:
        text = text[: 4 * max_tokens]
        return Reply(text, "max_tokens", count_tokens(text))
    return Reply(text, "end_turn", tokens)


def _tool_name(tools: list[dict[str, object]] | None, choice: dict[str, object] | None) -> str:
    if not tools:
        return ""
    if isinstance(choice, dict) and choice.get("type") == "tool" and choice.get("name"):
        return str(choice["name"])
    return str(tools[0].get("name") or "tool")


def _tool_reply(name: str, data: dict[str, object], max_tokens: int) -> Reply:
    """A tool call; cut at max_tokens it keeps the findings that fit (its input stays an object)."""
    text = json.dumps(data, ensure_ascii=True)
    if count_tokens(text) <= max_tokens:
        return Reply(text, "tool_use", count_tokens(text), name, data)
    found = data["findings"]
    assert isinstance(found, list)
    summary = str(data["summary"])[: 2 * max_tokens]
    fitting: list[object] = []
    kept: dict[str, object] = {"summary": summary, "findings": fitting}
    for item in found:
        trial: dict[str, object] = {"summary": summary, "findings": [*fitting, item]}
        if count_tokens(json.dumps(trial, ensure_ascii=True)) > max_tokens:
            break
        fitting.append(item)
        kept = trial
    text = json.dumps(kept, ensure_ascii=True)
    if count_tokens(text) > max_tokens:
        kept = {"findings": []}
        text = json.dumps(kept)
    return Reply(text, "max_tokens", count_tokens(text), name, kept)


def tool_use_block(reply: Reply, message_id: str, *, streamed: bool = False) -> dict[str, object]:
    """The ``tool_use`` content block of a tool reply (its input empty at the start of a stream)."""
    tool_id = "toolu_" + message_id.removeprefix("msg_")
    return {"type": "tool_use", "id": tool_id, "name": reply.tool_name, "input": {} if streamed else reply.tool_input}  # fmt: skip


def request_digest(body: dict[str, object]) -> str:
    """A digest of the request's content, ignoring transport flags like `stream`."""
    rest = {k: v for k, v in body.items() if k != "stream"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, default=str).encode()).hexdigest()
