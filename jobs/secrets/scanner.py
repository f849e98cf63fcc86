"""Apply the rules to one file's text: replace each secret in place and record where it was."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from jobs.secrets.filetypes import FileType, file_type, rules_for
from jobs.secrets.rules import PREFIXED_TOKEN_RULES, PRIVATE_KEY_RULES, URL_RULES, Rule
from jobs.secrets.values import real_value

__all__ = ["Hit", "Redaction", "marker", "redact", "redact_file"]

_MARK = "[REDACTED:"
# Every prefixed-token rule needs a run of 16+ of these characters (the shortest token is longer),
# so a file without one skips them all: one C-speed search instead of ~130 substring hints.
TOKEN_RUN = re.compile(r"[A-Za-z0-9_\-.+/=:~]{16}")


class Hit(NamedTuple):
    """One redaction: the 1-based line where the secret began, and its kind. Never the value."""

    line: int
    kind: str


@dataclass(frozen=True)
class Redaction:
    """The redacted text of one file and every redaction made in it, in line order."""

    text: str
    hits: tuple[Hit, ...]

    @property
    def counts(self) -> dict[str, int]:
        """Redactions per kind."""
        return dict(Counter(h.kind for h in self.hits))


def marker(kind: str) -> str:
    """The text that replaces a secret of this kind."""
    return f"[REDACTED:{kind}]"


def _span(m: re.Match[str], group: int | str) -> tuple[int, int]:
    if group == "value":
        for g in ("dq", "sq", "bare"):
            if m.groupdict().get(g) is not None:
                return m.span(g)
        return m.span()
    if group and m.group(group) is None:  # an alternation whose secret is in another group
        for i in range(1, (m.re.groups or 0) + 1):
            if m.group(i) is not None:
                return m.span(i)
    return m.span(group)


def _line_of(text: str, start: int) -> str:
    end = text.find("\n", start)
    return text[text.rfind("\n", 0, start) + 1 : end if end >= 0 else len(text)]


def _replace(
    text: str, kind: str, spans: Iterator[tuple[int, int]], hits: list[Hit], check: Rule | None
) -> str:
    """Replace each span by the kind's marker, keeping its newlines so later lines keep their number."""
    parts: list[str] = []
    last = 0
    line, counted = 1, 0
    for start, end in spans:
        value = text[start:end]
        if start < last or start == end or _MARK in value:
            continue
        if check is not None and not check.accepts(value, _line_of(text, start)):
            continue
        line += text.count("\n", counted, start)
        counted = start
        parts += (text[last:start], marker(kind), "\n" * value.count("\n"))
        hits.append(Hit(line, kind))
        last = end
    if not parts:
        return text
    parts.append(text[last:])
    return "".join(parts)


def _hint_lines(rule: Rule, haystack: str) -> list[tuple[int, int]]:
    """(start, end) of each line of `haystack` holding one of the rule's hints, in order."""
    lines: dict[int, int] = {}
    for hint in rule.hints:
        i = haystack.find(hint)
        while i >= 0:
            start = haystack.rfind("\n", 0, i) + 1
            end = haystack.find("\n", i)
            end = len(haystack) if end < 0 else end
            lines[start] = end
            i = haystack.find(hint, end)
    return sorted(lines.items())


def _apply(rule: Rule, text: str, lowered: str, hits: list[Hit]) -> str:
    # str.lower() can change the length of some non-ASCII text; then offsets would not match.
    if rule.per_line and len(lowered) == len(text):
        lines = _hint_lines(rule, lowered if rule.fold else text)
        matches: Iterator[re.Match[str]] = (
            m for start, end in lines for m in rule.regex.finditer(text, start, end)
        )
    else:
        matches = rule.regex.finditer(text)
    spans = (_span(m, rule.group) for m in matches)
    return _replace(text, rule.kind, spans, hits, rule)


_K8S_SECRET = re.compile(r"""(?m)^kind:[ \t]*["']?Secret["']?[ \t]*$""")
_K8S_DATA = re.compile(r"(?m)^([ \t]*)(?:data|stringData):[ \t]*\n((?:\1[ \t]+[^\n]*(?:\n|$))+)")
_K8S_ENTRY = re.compile(
    r"""(?m)^[ \t]+[\w.\-]+:[ \t]*(?:"([^"\n]*)"|'([^'\n]*)'|([^\s#'"|>][^\n#]*?))[ \t]*$"""
)


def _k8s_secret_values(text: str) -> Iterator[tuple[int, int]]:
    """The values under `data:` and `stringData:` of a Kubernetes Secret manifest."""
    for block in _K8S_DATA.finditer(text):
        for m in _K8S_ENTRY.finditer(text, block.start(2), block.end(2)):
            g = next(i for i in (1, 2, 3) if m.group(i) is not None)
            if real_value(m.group(g)):
                yield m.span(g)


def _hinted(rule: Rule, text: str, lowered: str) -> bool:
    if not rule.hints:
        return True
    haystack = lowered if rule.fold else text
    for hint in rule.hints:  # noqa: SIM110 (a loop: any() with a generator costs more, per file)
        if hint in haystack:
            return True
    return False


def redact_file(text: str, path: str) -> Redaction:
    """Redact every secret in `text` (the content of `path`, whose name picks the file-type rules).

    Each secret becomes `[REDACTED:kind]` followed by the newlines it contained, so every line keeps
    its number; `hits` lists (line, kind) for each redaction, sorted by line.
    """
    hits: list[Hit] = []
    lowered = text.lower()
    ftype = file_type(path)
    tokens = PREFIXED_TOKEN_RULES if TOKEN_RUN.search(text) else ()
    for rule in (*PRIVATE_KEY_RULES, *tokens, *URL_RULES, *rules_for(ftype)):
        if _hinted(rule, text, lowered):
            new = _apply(rule, text, lowered, hits)
            if new is not text:
                text, lowered = new, new.lower()
    if (
        ftype in (FileType.YAML, FileType.JSON, FileType.CODE)
        and "Secret" in text
        and _K8S_SECRET.search(text)
    ):
        text = _replace(text, "kubernetes-secret", _k8s_secret_values(text), hits, None)
    hits.sort()
    return Redaction(text, tuple(hits))


def redact(text: str, path: str) -> tuple[str, dict[str, int]]:
    """Replace every secret in `text` (the content of `path`) by a marker; return it and counts per kind.

    Line structure is preserved: a redacted multi-line secret leaves its newlines in place. The lines
    and kinds of each redaction are on `redact_file(text, path).hits`.
    """
    result = redact_file(text, path)
    return result.text, result.counts
