"""Pack a repository into the text sent to the model (format: briefs/pack_format.md).

Fit rule, stated: files claim the `max_input_tokens` budget class by class, source (code and
config) before tests before docs; within a class, by path, every file that fits whole is included
whole first, then each file of that class that did not fit is truncated to its first lines if at
least `MIN_TRUNCATED_LINES` of them fit, else omitted. So a large source file is shown in part
before any test or doc is shown at all. The tree lists every selected file and is
always present, even if it alone exceeds the budget (then `Pack.over_budget` is true).

Token estimate, stated: `ceil(utf8_bytes / 3.5)`. Claude's tokenizer averages 3.5-4 bytes per token on
source code and English, so this tends to overestimate a little, which keeps a pack under the limit;
the runner may replace it with the API's count_tokens. The estimate is additive per block up to
rounding, and each block's share is rounded up, so the sum of the parts bounds the whole.

Each file is read once; its text is normalised (BOM dropped, CRLF to LF, stray line separators such
as \\x0c or U+2028 shown as escapes so that no reader can split a line where we did not), redacted
(jobs/secrets.py), then numbered. The same repo state gives the same pack byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from jobs.errors import JobsInputError
from jobs.secrets import redact
from jobs.select import PRIORITY_NAMES, exclusion_reason, list_candidates, priority

__all__ = ["MIN_TRUNCATED_LINES", "Pack", "PackedFile", "estimate_tokens", "pack_repo"]

MIN_TRUNCATED_LINES = 10
_SNIFF = 8192
_UNSAFE = re.compile("[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_UNSAFE_TABLE = {
    ord(c): f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
    for c in "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
}
_ATTR_TABLE = {
    ord("&"): "&amp;",
    ord('"'): "&quot;",
    ord("<"): "&lt;",
    ord(">"): "&gt;",
    ord("\n"): "&#10;",
    ord("\r"): "&#13;",
}


def _unpickle_pack(state: dict[str, Any]) -> Pack:
    state["redactions"] = MappingProxyType(state["redactions"])
    state["coverage"] = MappingProxyType(state["coverage"])
    return Pack(**state)


def estimate_tokens(text: str) -> int:
    """Estimated tokens of `text`: ceil(UTF-8 bytes / 3.5)."""
    n = len(text) if text.isascii() else len(text.encode("utf-8"))
    return (2 * n + 6) // 7


def _escape(value: str) -> str:
    return value.translate(_ATTR_TABLE)


@dataclass(frozen=True)
class PackedFile:
    """One selected file and what became of it in the pack."""

    path: str
    bytes: int
    lines: int
    tokens: int
    status: str  # "included" | "truncated" | "omitted"
    shown: tuple[int, int] | None = None
    priority: str = "source"  # "source" | "tests" | "docs"


@dataclass(frozen=True)
class Pack:
    """The packed text of one repository and the record of what it holds."""

    slug: str
    root: Path
    text: str = field(repr=False)
    sha256: str
    token_estimate: int
    files: tuple[PackedFile, ...]
    skipped: tuple[tuple[str, str], ...]
    redactions: MappingProxyType[str, int]
    coverage: MappingProxyType[str, float]
    method: str = "git"  # "git" (ls-files) or "gitignore" (plain folder)
    max_input_tokens: int = 0
    over_budget: bool = False  # the tree alone exceeded max_input_tokens

    _shown_lines: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {f.path: f.lines for f in self.files if f.status != "omitted"}
        object.__setattr__(self, "_shown_lines", MappingProxyType(index))  # frozen: set once, here

    def __reduce__(self) -> tuple[Any, ...]:
        # Packs cross process boundaries (packing and review workers); proxies do not pickle.
        state = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        state["redactions"] = dict(self.redactions)
        state["coverage"] = dict(self.coverage)
        return (_unpickle_pack, (state,))

    def line_count(self, path: str) -> int | None:
        """Total lines of an included or truncated file; None if `path` is not shown in the pack."""
        return self._shown_lines.get(path)

    def summary(self) -> dict[str, Any]:
        """Everything but the text, JSON-able, for reports and runs.db."""
        counts = Counter(f.status for f in self.files)
        return {
            "slug": self.slug,
            "root": str(self.root),
            "method": self.method,
            "sha256": self.sha256,
            "token_estimate": self.token_estimate,
            "max_input_tokens": self.max_input_tokens,
            "over_budget": self.over_budget,
            "counts": {
                "selected": len(self.files),
                "included": counts["included"],
                "truncated": counts["truncated"],
                "omitted": counts["omitted"],
                "skipped": len(self.skipped),
            },
            "coverage": dict(self.coverage),
            "redactions": dict(self.redactions),
            "files": [
                {
                    "path": f.path,
                    "bytes": f.bytes,
                    "lines": f.lines,
                    "tokens": f.tokens,
                    "status": f.status,
                    "shown": list(f.shown) if f.shown else None,
                    "priority": f.priority,
                }
                for f in self.files
            ],
            "skipped": [[p, r] for p, r in self.skipped],
        }


class _Skip(Exception):
    """A file that cannot be packed, with the reason shown in the report."""


@dataclass
class _Loaded:
    path: str
    size: int
    lines: list[str]
    block: str
    tokens: int
    rank: int


def _parent_ok(root: str, rel: str, cache: dict[str, bool]) -> bool:
    """True if the folder holding `rel` resolves inside `root` (no symlinked folder leads out)."""
    parent = rel.rpartition("/")[0]
    if not parent:
        return True
    ok = cache.get(parent)
    if ok is None:
        real = os.path.realpath(os.path.join(root, parent))
        ok = real == os.path.join(root, parent) or real.startswith(root + os.sep)
        cache[parent] = ok
    return ok


def _read(root: str, rel: str, size_cap: int, parents: dict[str, bool]) -> tuple[bytes, int]:
    """The bytes of one candidate, or _Skip with the reason; symlinks are followed only inside root."""
    if not _parent_ok(root, rel, parents):
        raise _Skip("symlink outside the repo")
    full = os.path.join(root, rel)
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        raise _Skip("missing (listed by git, not in the work tree)") from None
    except OSError as exc:
        raise _Skip(f"unreadable ({type(exc).__name__})") from None
    if stat.S_ISLNK(st.st_mode):
        target = os.path.realpath(full)
        if not target.startswith(root + os.sep):
            raise _Skip("symlink outside the repo")
        try:
            st = os.stat(target)
        except OSError:
            raise _Skip("broken symlink") from None
        if stat.S_ISDIR(st.st_mode):
            raise _Skip("symlink to a folder")
        full = target
    if not stat.S_ISREG(st.st_mode):
        raise _Skip("not a regular file")
    if st.st_size > size_cap:
        raise _Skip(f"too large ({st.st_size} bytes > {size_cap})")
    try:
        with open(full, "rb") as fh:
            data = fh.read(size_cap + 1)
    except OSError as exc:
        raise _Skip(f"unreadable ({type(exc).__name__})") from None
    if len(data) > size_cap:
        raise _Skip(f"too large (over {size_cap} bytes)")
    return data, len(data)


def _text_lines(data: bytes, rel: str, redactions: Counter[str]) -> list[str]:
    if b"\0" in data[:_SNIFF]:
        raise _Skip("binary (NUL byte)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Skip("invalid UTF-8") from None
    if len(data) > 4096 and data.count(b"\n") * 1000 < len(data):
        raise _Skip("minified or generated (lines average over 1000 bytes)")
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    text, counts = redact(text, rel)
    if counts:
        redactions.update(counts)
    if _UNSAFE.search(text):
        text = text.translate(_UNSAFE_TABLE)
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _open_tag(path: str, lines: int, shown: int | None = None) -> str:
    trunc = f' truncated="1-{shown}"' if shown is not None else ""
    return f'<file path="{_escape(path)}" lines="{lines}"{trunc}>\n'


def _block(path: str, lines: list[str], shown: int | None = None) -> str:
    body = lines if shown is None else lines[:shown]
    numbered = "".join([f"{i}| {line}\n" for i, line in enumerate(body, 1)])
    return f"{_open_tag(path, len(lines), shown)}{numbered}</file>\n"


def _truncate(item: _Loaded, budget: int) -> int | None:
    """The most leading lines of `item` whose block fits `budget` tokens, or None if too few fit."""
    n = len(item.lines)
    room = (budget * 7) // 2 - len(_open_tag(item.path, n, n).encode()) - len("</file>\n")
    shown, used = 0, 0
    for i, line in enumerate(item.lines, 1):
        cost = len(f"{i}| {line}\n".encode())
        if used + cost > room:
            break
        used += cost
        shown = i
    while (
        shown >= MIN_TRUNCATED_LINES
        and estimate_tokens(_block(item.path, item.lines, shown)) > budget
    ):
        shown -= 1
    if shown < min(MIN_TRUNCATED_LINES, n) or shown >= n:
        return None
    return shown


def pack_repo(root: Path, *, slug: str, max_input_tokens: int, size_cap: int = 256_000) -> Pack:
    """Select, read, redact and fit the files of `root` into one pack of at most `max_input_tokens`.

    Unreadable, binary, invalid-UTF-8, oversized and excluded files are listed in `skipped` with a
    reason; selected files that did not fit are `omitted` in `files`. Never raises for a bad file.
    """
    if not root.is_dir():
        raise JobsInputError(f"{root}: not a folder to pack")
    if max_input_tokens <= 0:
        raise JobsInputError(
            f"max_input_tokens: expected a positive integer, got {max_input_tokens}"
        )
    real_root = os.path.realpath(root)
    paths, method = list_candidates(Path(real_root))
    skipped: list[tuple[str, str]] = []
    loaded: list[_Loaded] = []
    redactions: Counter[str] = Counter()
    parents: dict[str, bool] = {}
    for rel in paths:
        reason = exclusion_reason(rel)
        if reason is None and not rel.isascii():
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                reason = "file name is not valid UTF-8"
        if reason is None:
            try:
                data, size = _read(real_root, rel, size_cap, parents)
                lines = _text_lines(data, rel, redactions)
            except _Skip as skip:
                reason = str(skip)
        if reason is not None:
            skipped.append((rel, reason))
            continue
        block = _block(rel, lines)
        loaded.append(_Loaded(rel, size, lines, block, estimate_tokens(block), priority(rel)))

    tree = "".join(_escape(item.path) + "\n" for item in loaded)
    head = f'<repository name="{_escape(slug)}">\n<tree>\n{tree}</tree>\n'
    foot = "</repository>\n"
    remaining = max_input_tokens - estimate_tokens(head) - estimate_tokens(foot)
    over_budget = remaining < 0

    status: dict[str, tuple[str, int | None]] = {}
    for rank in range(len(PRIORITY_NAMES)):
        group = sorted((it for it in loaded if it.rank == rank), key=lambda it: it.path)
        for item in group:  # whole files first
            if item.tokens <= remaining:
                status[item.path] = ("included", None)
                remaining -= item.tokens
        for item in group:  # then what did not fit whole, truncated if enough of it fits
            if item.path in status:
                continue
            shown = _truncate(item, remaining) if remaining > 0 else None
            if shown is None:
                status[item.path] = ("omitted", None)
            else:
                item.block = _block(item.path, item.lines, shown)
                status[item.path] = ("truncated", shown)
                remaining -= estimate_tokens(item.block)

    parts = [head]
    files: list[PackedFile] = []
    total_bytes = shown_bytes = 0
    for item in loaded:
        state, shown = status[item.path]
        total_bytes += item.size
        if state == "included":
            parts.append(item.block)
            shown_bytes += item.size
        elif state == "truncated":
            parts.append(item.block)
            shown_bytes += min(
                item.size, sum(len(line.encode()) + 1 for line in item.lines[:shown])
            )
        files.append(
            PackedFile(
                path=item.path,
                bytes=item.size,
                lines=len(item.lines),
                tokens=estimate_tokens(item.block) if state == "truncated" else item.tokens,
                status=state,
                shown=(1, shown) if shown else None,
                priority=PRIORITY_NAMES[item.rank],
            )
        )
    parts.append(foot)
    text = "".join(parts)
    shown_files = sum(1 for f in files if f.status != "omitted")
    coverage = {
        "files": shown_files / len(files) if files else 1.0,
        "bytes": shown_bytes / total_bytes if total_bytes else 1.0,
    }
    return Pack(
        slug=slug,
        root=Path(real_root),
        text=text,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        token_estimate=estimate_tokens(text),
        files=tuple(files),
        skipped=tuple(skipped),
        redactions=MappingProxyType(dict(sorted(redactions.items()))),
        coverage=MappingProxyType(coverage),
        method=method,
        max_input_tokens=max_input_tokens,
        over_budget=over_budget,
    )
