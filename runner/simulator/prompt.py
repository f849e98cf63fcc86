"""The simulator's view of a request: validation, the deterministic token count, cache prefixes.

A prompt is flattened into an ordered list of blocks (tools, then system, then every message's
content blocks). Each block costs `count_tokens` of its text, so a request's input total is the
same whether it is counted by /v1/messages/count_tokens or billed by /v1/messages. A running
SHA-256 over the blocks gives every prefix an identity by content, which is what the prompt
cache keys on.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["ApiError", "Prompt", "count_tokens", "parse_prompt", "validate_message_request"]

# Parameters the platform rejects for current models (DESIGN.md, facts about the platform).
REJECTED_PARAMS = ("temperature", "top_p", "top_k")
MAX_BREAKPOINTS = 4
TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}


def count_tokens(text: str) -> int:
    """Tokens in `text`: one per four characters, rounded up (the usual rule of thumb).

    Deterministic and additive enough for capacity planning; it is the only count the simulator
    uses, so usage, count_tokens and the output cut at max_tokens always agree.
    """
    return math.ceil(len(text) / 4)


class ApiError(Exception):
    """An error the simulator answers with an HTTP status and the platform's error body."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        limit: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.details = details
        self.headers = headers or {}
        self.limit = limit


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", message)


@dataclass(frozen=True)
class Breakpoint:
    """A cache breakpoint: the prefix up to and including block `index`, kept for `ttl`."""

    index: int
    ttl: str
    key: str
    tokens: int  # cumulative tokens of the prefix


@dataclass(frozen=True)
class Prompt:
    """A validated prompt: its total input tokens, its breakpoints and its plain text."""

    model: str
    total_tokens: int
    breakpoints: tuple[Breakpoint, ...]
    text: str  # every text block joined, for the reply generator
    system_text: str


def _ttl_of(cache_control: Any, where: str) -> str:
    if not isinstance(cache_control, dict) or cache_control.get("type") != "ephemeral":
        raise _invalid(f"{where}.cache_control: expected {{'type': 'ephemeral'}}")
    ttl = cache_control.get("ttl", "5m")
    if ttl not in TTL_SECONDS:
        raise _invalid(f"{where}.cache_control.ttl: expected '5m' or '1h', got {ttl!r}")
    return str(ttl)


def _block_text(block: Any, where: str) -> str:
    if isinstance(block, str):
        return block
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise _invalid(f"{where}: expected a content block object with a 'type'")
    if block["type"] == "text":
        if not isinstance(block.get("text"), str):
            raise _invalid(f"{where}.text: Field required")
        return block["text"]
    # Images, documents, tool results: priced by their serialized size, which is deterministic.
    rest = {k: v for k, v in block.items() if k != "cache_control"}
    return json.dumps(rest, sort_keys=True, separators=(",", ":"))


def parse_prompt(body: dict[str, Any]) -> Prompt:
    """Flatten a messages body into blocks, count tokens and find the cache breakpoints."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages: Field required (a non-empty list)")
    # Each entry: (text, role tag, cache_control or None, where)
    blocks: list[tuple[str, str, Any, str]] = []
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _invalid("tools: expected a list")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise _invalid(f"tools.{i}: expected an object")
            rest = {k: v for k, v in tool.items() if k != "cache_control"}
            text = json.dumps(rest, sort_keys=True, separators=(",", ":"))
            blocks.append((text, "tool", tool.get("cache_control"), f"tools.{i}"))
    system = body.get("system")
    if isinstance(system, str):
        blocks.append((system, "system", None, "system"))
    elif isinstance(system, list):
        for i, block in enumerate(system):
            cc = block.get("cache_control") if isinstance(block, dict) else None
            blocks.append((_block_text(block, f"system.{i}"), "system", cc, f"system.{i}"))
    elif system is not None:
        raise _invalid("system: expected a string or a list of text blocks")
    for m, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise _invalid(f"messages.{m}.role: expected 'user' or 'assistant'")
        content = message.get("content")
        role = message["role"]
        if isinstance(content, str):
            blocks.append((content, role, None, f"messages.{m}.content"))
        elif isinstance(content, list) and content:
            for i, block in enumerate(content):
                where = f"messages.{m}.content.{i}"
                cc = block.get("cache_control") if isinstance(block, dict) else None
                blocks.append((_block_text(block, where), role, cc, where))
        else:
            raise _invalid(f"messages.{m}.content: expected a string or a non-empty list")
    top = body.get("cache_control")
    marks: dict[int, str] = {}
    for i, (_text, _role, cc, where) in enumerate(blocks):
        if cc is not None:
            marks[i] = _ttl_of(cc, where)
    if top is not None:
        # Automatic caching: the breakpoint goes on the last block of the prompt.
        marks.setdefault(len(blocks) - 1, _ttl_of(top, "body"))
    if len(marks) > MAX_BREAKPOINTS:
        raise _invalid(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {len(marks)}."
        )
    digest = hashlib.sha256(model.encode())
    total = 0
    breakpoints: list[Breakpoint] = []
    texts: list[str] = []
    system_texts: list[str] = []
    for i, (text, role, _cc, _where) in enumerate(blocks):
        digest.update(b"\x00" + role.encode() + b"\x00" + text.encode("utf-8", "surrogatepass"))
        total += count_tokens(text)
        texts.append(text)
        if role == "system":
            system_texts.append(text)
        if i in marks:
            breakpoints.append(Breakpoint(i, marks[i], digest.copy().hexdigest(), total))
    return Prompt(model, total, tuple(breakpoints), "\n".join(texts), "\n".join(system_texts))


def validate_message_request(body: Any) -> Prompt:
    """Check a /v1/messages body as the platform does (400s) and return its prompt."""
    if not isinstance(body, dict):
        raise _invalid("request body: expected a JSON object")
    for name in REJECTED_PARAMS:
        if name in body:
            raise _invalid(f"{name}: is not supported for this model; remove it from the request")
    if "max_tokens" not in body:
        raise _invalid("max_tokens: Field required")
    max_tokens = body["max_tokens"]
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise _invalid("max_tokens: Input should be a non-negative integer")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise _invalid("stream: Input should be a valid boolean")
    if max_tokens == 0 and body.get("stream"):
        # Pre-warming writes the cache without a response to stream.
        raise _invalid("max_tokens: 0 is not supported with streaming")
    return parse_prompt(body)
