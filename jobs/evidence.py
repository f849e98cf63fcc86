"""Evidence: the code a finding quotes, checked against the packed file, and the identity built from it.

A finding's ``evidence`` is the exact line or lines it is about, copied from the file. Normalised (line-number
prefixes such as ``12| `` dropped, every whitespace character removed, blank lines dropped) it is what
identifies a finding across rewordings, code moving up or down and reformatting; the fingerprint is a hash of
the repo, the path, the category and that normalised text, never of the title or a line number.

Verification looks the quote up in the file's lines as they were packed (after redaction, so a quoted secret
marker matches): the occurrence nearest to the cited line wins and the line numbers are corrected to it; a
quote found nowhere in the file leaves the finding ``unverified``. The first and last lines of a quote may be a
fragment of their line (models quote ``eval(x)`` out of a longer line), the lines between must be whole.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "FINGERPRINT_VERSION",
    "Located",
    "evidence_fingerprint",
    "file_texts",
    "locate",
    "normalise_evidence",
    "packed_files",
]

FINGERPRINT_VERSION = "v1"
# A fragment shorter than this (once whitespace is out) matches too much to prove anything ("}", "x = 1").
MIN_FRAGMENT = 6
MAX_EVIDENCE_LINES = 40
_NUMBER_PREFIX = re.compile(r"^\s*\d+\s?\|\s?")
_WS = re.compile(r"\s+")
_FILE_START = re.compile(r'^<file path="([^"]*)" lines="(\d+)"(?: truncated="(\d+)-(\d+)")?>$')
_PACKED_LINE = re.compile(r"^(\d+)\| ?(.*)$")
_ENTITIES = (("&#10;", "\n"), ("&#13;", "\r"), ("&quot;", '"'), ("&lt;", "<"), ("&gt;", ">"))


@dataclass(frozen=True)
class Located:
    """Where a quote was found: first and last line (1-based, in the file) and how far from the cited line."""

    line: int
    end_line: int
    distance: int


def normalise_evidence(evidence: str) -> tuple[str, ...]:
    """The quote's lines with line-number prefixes, all whitespace and blank lines removed."""
    out = []
    for raw in str(evidence).splitlines()[:MAX_EVIDENCE_LINES]:
        line = _WS.sub("", _NUMBER_PREFIX.sub("", raw, count=1))
        if line:
            out.append(line)
    return tuple(out)


def evidence_fingerprint(repo: str, path: str | None, category: str, evidence: str) -> str:
    """Return the finding's identity: a hash of repo, path, category and the normalised evidence."""
    key = "\x1f".join((FINGERPRINT_VERSION, repo, path or "", category, "\n".join(normalise_evidence(evidence))))  # fmt: skip
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def locate(evidence: str, lines: Sequence[str], cited: int | None = None) -> Located | None:
    """Find ``evidence`` in ``lines`` (the file, one string per line); the match nearest ``cited`` wins.

    Returns None when the quote is empty or not in the file. Blank lines of the file are skipped inside a
    multi-line quote, as the quote's own blank lines are.
    """
    quote = normalise_evidence(evidence)
    if not quote:
        return None
    # The file's non-blank lines, normalised the same way, with their 1-based line numbers.
    numbered = [(i, _WS.sub("", text)) for i, text in enumerate(lines, 1)]
    body = [(i, text) for i, text in numbered if text]
    best: Located | None = None
    k = len(quote)
    for start in range(len(body) - k + 1):
        if not _matches(quote, body, start):
            continue
        first, last = body[start][0], body[start + k - 1][0]
        distance = 0 if cited is None else min(abs(first - cited), abs(last - cited))
        if cited is not None and first <= cited <= last:
            distance = 0
        if best is None or distance < best.distance:
            best = Located(first, last, distance)
            if distance == 0:
                break
    return best


def _matches(quote: tuple[str, ...], body: list[tuple[int, str]], start: int) -> bool:
    last = len(quote) - 1
    for j, want in enumerate(quote):
        have = body[start + j][1]
        if have == want:
            continue
        fragment_ok = len(want) >= MIN_FRAGMENT and (
            (j == 0 and have.endswith(want))
            or (j == last and have.startswith(want))
            or (last == 0 and want in have)
        )
        if not fragment_ok:
            return False
    return True


def packed_files(pack_text: str) -> dict[str, list[str]]:
    """The lines of every file shown in a pack's text, by path (a truncated file: its shown lines only).

    Lines are indexed from 1 as in the pack: ``result[path][n - 1]`` is line ``n``; lines not shown are "".
    """
    files: dict[str, list[str]] = {}
    path: str | None = None
    current: list[str] = []
    for raw in pack_text.split("\n"):
        if path is None:
            start = _FILE_START.match(raw)
            if start:
                path, current = _unescape(start.group(1)), []
            continue
        if raw == "</file>":
            files[path] = current
            path = None
            continue
        numbered = _PACKED_LINE.match(raw)
        if numbered:
            n = int(numbered.group(1))
            if n > len(current):
                current.extend([""] * (n - len(current)))
            current[n - 1] = numbered.group(2)
    return files


def file_texts(files: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Join ``packed_files`` output back into one text per path (what the across-nights check reads)."""
    return {path: "\n".join(lines) for path, lines in files.items()}


def _unescape(value: str) -> str:
    for entity, char in _ENTITIES:
        value = value.replace(entity, char)
    return value.replace("&amp;", "&")
