"""The review agents: their Markdown prompts and the request text built from a pack.

A request is three parts in a fixed order: the system prompt (the same for every agent of a repo), the pack text
(byte-identical across the agents, so it can be a cached prefix), then the agent's instructions. Only the last
part differs between agents.

Prompts are Markdown files shipped in ``jobs/prompts/`` and overridable file by file from a folder.
Placeholders, written ``{name}``: ``{repo}`` (the pack's slug), ``{agent}`` (the agent's name) and
``{max_output_tokens}``. The system prompt must contain ``{repo}`` and no other placeholder (it is the
prefix shared by the agents). Every agent prompt must contain ``{max_output_tokens}``: a model that does
not know its output budget gets cut off mid-JSON. Any other ``{lowercase_name}`` is an error, so that a
typo cannot reach the model unnoticed; JSON examples such as ``{"summary": ...}`` are not placeholders.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from jobs.errors import JobsInputError
from jobs.findings import CATEGORIES, SEVERITIES

if TYPE_CHECKING:
    from jobs.pack_record import Pack

__all__ = [
    "AGENT_NAMES",
    "COMBINED",
    "FINDINGS_TOOL_NAME",
    "PLACEHOLDERS",
    "PROMPT_NAMES",
    "SPECIALISTS",
    "SYSTEM",
    "Prompt",
    "build_prompt",
    "findings_tool",
    "findings_tool_choice",
    "load_prompts",
]

# Same order as jobs.manifest.AGENTS (a test checks it); kept here so that prompts do not depend on the manifest.
SPECIALISTS = ("code_review", "architecture", "security", "multi_perspective")
COMBINED = "combined"
SYSTEM = "system"
AGENT_NAMES = (*SPECIALISTS, COMBINED)
PROMPT_NAMES = (SYSTEM, *AGENT_NAMES)
PLACEHOLDERS = ("repo", "agent", "max_output_tokens")
_REQUIRED = {SYSTEM: ("repo",), **{name: ("max_output_tokens",) for name in AGENT_NAMES}}
# The system prompt is shared by every agent of a repo (the cached prefix): nothing agent-specific in it.
_ALLOWED = {SYSTEM: ("repo",), **{name: PLACEHOLDERS for name in AGENT_NAMES}}
_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
# Enough names for the model to know what it cannot see, without the note growing with the repo.
_LEFT_OUT_LISTED = 40


FINDINGS_TOOL_NAME = "report_findings"
_NULLABLE_LINE = {"type": ["integer", "null"], "minimum": 1}
# The findings JSON of DESIGN.md as a tool's input schema. It is the same for every agent and every repo, and
# tools come first in the prompt order, so it sits at the head of the cached prefix the agents share.
_FINDINGS_TOOL = {
    "name": FINDINGS_TOOL_NAME,
    "description": (
        "Report the review: a short summary and every finding, each with the exact line(s) of code it is "
        "about copied from the file as evidence. Call it once with the whole review."
    ),
    "input_schema": {
        "type": "object",
        "properties": {
            "summary": {
                "type": "string",
                "description": "two to four sentences on the overall state",
            },
            "findings": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "severity": {"type": "string", "enum": list(SEVERITIES)},
                        "category": {"type": "string", "enum": list(CATEGORIES)},
                        "title": {"type": "string", "description": "one line naming the problem"},
                        "file": {
                            "type": ["string", "null"],
                            "description": "path as in the file block's path attribute",
                        },
                        "line": _NULLABLE_LINE,
                        "end_line": _NULLABLE_LINE,
                        "evidence": {
                            "type": "string",
                            "description": "the exact line(s) the finding is about, copied from the "
                            "file without the line numbers",
                        },
                        "detail": {"type": "string"},
                        "suggestion": {"type": "string"},
                        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                    "required": ["severity", "category", "title", "file", "evidence", "detail"],
                },
            },
        },
        "required": ["summary", "findings"],
    },
}


def findings_tool() -> dict:
    """Return the findings tool definition (a fresh copy: the caller may add ``cache_control`` to it)."""
    return copy.deepcopy(_FINDINGS_TOOL)


def findings_tool_choice() -> dict:
    """Return the ``tool_choice`` that forces the findings tool (the reply is then one ``tool_use`` block)."""
    return {"type": "tool", "name": FINDINGS_TOOL_NAME}


@dataclass(frozen=True)
class Prompt:
    """The text of one request, in the order it is sent."""

    system: str
    pack: str
    instructions: str
    agent: str = ""


def load_prompts(folder: Path | None = None) -> Mapping[str, str]:
    """Return the prompt text per name (``system`` and each agent), shipped files overridden by ``folder``.

    ``folder`` may override any subset of the files; each of its ``*.md`` files must be named after a prompt
    (other files are ignored, hidden ones too). Raises JobsInputError naming the file for a missing folder,
    an unknown prompt file, an unreadable or empty file, a missing required placeholder or an unknown one.
    """
    texts: dict[str, str] = {}
    origins: dict[str, str] = {}
    shipped = resources.files("jobs").joinpath("prompts")
    for name in PROMPT_NAMES:
        entry = shipped.joinpath(f"{name}.md")
        try:
            texts[name] = entry.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise JobsInputError(
                f"shipped prompt jobs/prompts/{name}.md cannot be read: {exc}"
            ) from exc
        origins[name] = f"shipped prompt jobs/prompts/{name}.md"
    if folder is not None:
        folder = Path(folder)
        if not folder.is_dir():
            raise JobsInputError(f"prompt folder {folder}: not a directory")
        for path in sorted(folder.glob("*.md")):
            if path.name.startswith("."):
                continue
            name = path.stem
            if name not in PROMPT_NAMES:
                expected = ", ".join(f"{n}.md" for n in PROMPT_NAMES)
                raise JobsInputError(
                    f"prompt file {path}: unknown agent {name!r} (expected one of {expected})"
                )
            try:
                texts[name] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise JobsInputError(f"prompt file {path}: cannot be read: {exc}") from exc
            origins[name] = f"prompt file {path}"
    for name in PROMPT_NAMES:
        _check(name, texts[name], origins[name])
    return MappingProxyType(texts)


def build_prompt(
    pack: Pack, agent: str, prompts: Mapping[str, str], *, max_output_tokens: int
) -> Prompt:
    """Return the request text for ``agent`` on ``pack``; JobsInputError for an unknown agent or a bad prompt."""
    if agent not in AGENT_NAMES:
        raise JobsInputError(f"unknown agent {agent!r} (expected one of {', '.join(AGENT_NAMES)})")
    if (
        isinstance(max_output_tokens, bool)
        or not isinstance(max_output_tokens, int)
        or max_output_tokens < 1
    ):
        raise JobsInputError(
            f"max_output_tokens must be a positive integer, got {max_output_tokens!r}"
        )
    for name in (SYSTEM, agent):
        if name not in prompts:
            raise JobsInputError(
                f"no prompt for {name!r} (expected {name}.md in the prompt folder)"
            )
        _check(name, prompts[name], f"prompt {name!r}")
    # The system prompt gets no agent-specific value: it is part of the prefix shared by the four requests.
    system = _render(prompts[SYSTEM], {"repo": pack.slug})
    values = {"repo": pack.slug, "agent": agent, "max_output_tokens": str(max_output_tokens)}
    instructions = _render(prompts[agent], values).rstrip("\n") + "\n"
    note = _left_out_note(pack)
    if note:
        instructions += "\n" + note
    return Prompt(system=system, pack=pack.text, instructions=instructions, agent=agent)


def _check(name: str, text: str, origin: str) -> None:
    if not text.strip():
        raise JobsInputError(f"{origin}: is empty")
    used = set(_PLACEHOLDER.findall(text))
    unknown = sorted(used - set(_ALLOWED[name]))
    if unknown:
        known = ", ".join("{" + p + "}" for p in _ALLOWED[name])
        raise JobsInputError(
            f"{origin}: unknown placeholder {{{unknown[0]}}} (known here: {known})"
        )
    for required in _REQUIRED[name]:
        if required not in used:
            raise JobsInputError(f"{origin}: missing placeholder {{{required}}}")


def _render(text: str, values: Mapping[str, str]) -> str:
    # One pass, so a value that itself contains "{repo}" (a slug cannot, but be safe) is never expanded again.
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def _left_out_note(pack: Pack) -> str:
    """Tell the model which files it cannot see in full, so it does not report them as missing."""
    truncated = [f for f in pack.files if f.status == "truncated"]
    omitted = [f for f in pack.files if f.status == "omitted"]
    if not truncated and not omitted:
        return ""
    lines = ["## Not in this pack", ""]
    if omitted:
        lines.append(
            f"{len(omitted)} file(s) were left out to fit the input budget and were not reviewed; "
            "do not report them as missing:"
        )
        lines += [f"- {f.path}" for f in omitted[:_LEFT_OUT_LISTED]]
        if len(omitted) > _LEFT_OUT_LISTED:
            lines.append(f"- ... and {len(omitted) - _LEFT_OUT_LISTED} more")
    if truncated:
        lines.append(
            f"{len(truncated)} file(s) are shown only in part (see the truncated attribute of their block); "
            "findings may cite only the lines shown."
        )
    return "\n".join(lines) + "\n"
