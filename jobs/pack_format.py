"""The pack's text format (briefs/pack_format.md): token estimate, escaping, file blocks.

A file is one `<file path=... lines=...>` block of numbered lines, or of its first lines when
truncated to a token budget (at least `MIN_TRUNCATED_LINES` of them, else none).
"""

from __future__ import annotations

__all__ = [
    "MIN_TRUNCATED_LINES",
    "escape",
    "estimate_tokens",
    "file_block",
    "open_tag",
    "truncate",
]

MIN_TRUNCATED_LINES = 10
_ATTR_TABLE = {
    ord("&"): "&amp;",
    ord('"'): "&quot;",
    ord("<"): "&lt;",
    ord(">"): "&gt;",
    ord("\n"): "&#10;",
    ord("\r"): "&#13;",
}


def estimate_tokens(text: str) -> int:
    """Estimated tokens of `text`: ceil(UTF-8 bytes / 3.5)."""
    n = len(text) if text.isascii() else len(text.encode("utf-8"))
    return (2 * n + 6) // 7


def escape(value: str) -> str:
    return value.translate(_ATTR_TABLE)


def open_tag(path: str, lines: int, shown: int | None = None) -> str:
    trunc = f' truncated="1-{shown}"' if shown is not None else ""
    return f'<file path="{escape(path)}" lines="{lines}"{trunc}>\n'


def file_block(path: str, lines: list[str], shown: int | None = None) -> str:
    body = lines if shown is None else lines[:shown]
    numbered = "".join([f"{i}| {line}\n" for i, line in enumerate(body, 1)])
    return f"{open_tag(path, len(lines), shown)}{numbered}</file>\n"


def truncate(path: str, lines: list[str], budget: int) -> int | None:
    """The most leading lines of `lines` whose block fits `budget` tokens, or None if too few fit."""
    n = len(lines)
    room = (budget * 7) // 2 - len(open_tag(path, n, n).encode()) - len("</file>\n")
    shown, used = 0, 0
    for i, line in enumerate(lines, 1):
        cost = len(f"{i}| {line}\n".encode())
        if used + cost > room:
            break
        used += cost
        shown = i
    while shown >= MIN_TRUNCATED_LINES and estimate_tokens(file_block(path, lines, shown)) > budget:
        shown -= 1
    if shown < min(MIN_TRUNCATED_LINES, n) or shown >= n:
        return None
    return shown
