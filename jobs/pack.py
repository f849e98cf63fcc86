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

Each file's text is normalised (BOM dropped, CRLF to LF, stray line separators such as \\x0c or
U+2028 shown as escapes so that no reader can split a line where we did not), redacted
(jobs/secrets.py), then numbered. The same repo state gives the same pack byte for byte.

Memory, stated: packing holds what it will send, not the repository. A first pass reads each file
once, one at a time, and keeps only its measurements (size, lines, block tokens, a 16-byte digest).
The fit runs on those. Only the files shown are read again (a truncated one when its truncation is
tried), and each re-read must match its digest: a file that changed in between is skipped as
"changed while packing" and the pack is made again without it, so a pack never shows content other
than what its measurements describe. Opens never follow a final symlink and never block (a FIFO).

An odd file fails alone: it is listed in `skipped` with its reason and its name escaped
(`shown_name`: non-UTF-8 bytes as \\xNN), whatever went wrong with it. A repo-level failure is a
PackError (a JobsError) naming the repo and the cause, so that the runner can fail that repo alone.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from jobs.errors import JobsError, JobsInputError
from jobs.secrets import redact_file
from jobs.select import (
    PRIORITY_NAMES,
    PackError,
    exclusion_reason,
    list_candidates,
    parent_inside,
    priority,
    shown_name,
)

__all__ = [
    "MIN_TRUNCATED_LINES",
    "Pack",
    "PackError",
    "PackedFile",
    "RedactionSite",
    "estimate_tokens",
    "pack_repo",
    "shown_name",
]

MIN_TRUNCATED_LINES = 10
# Each attempt that meets a changed file skips it and packs again; a repo rewritten faster fails.
MAX_PACK_ATTEMPTS = 4
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


class RedactionSite(NamedTuple):
    """Where one secret was redacted: the file, the 1-based line and the kind. Never the value."""

    path: str
    line: int
    kind: str


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
    redaction_sites: tuple[RedactionSite, ...] = ()  # in every packed file, sent or not

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

    def sent(self, site: RedactionSite) -> bool:
        """Whether the line of `site` is in the pack's text (its file included, or shown if truncated)."""
        for f in self.files:
            if f.path == site.path:
                return f.status == "included" or (f.shown is not None and site.line <= f.shown[1])
        return False

    def line_count(self, path: str) -> int | None:
        """Total lines of an included or truncated file; None if `path` is not shown in the pack."""
        return self._shown_lines.get(path)

    def summary(self) -> dict[str, Any]:
        """Everything but the text, JSON-able, for reports and runs.db."""
        counts = Counter(f.status for f in self.files)
        return {
            "slug": self.slug,
            "root": shown_name(str(self.root)),
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


class _Changed(Exception):
    """A file changed between the scan and the read that puts it in the pack: pack again."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


@dataclass
class _Scanned:
    """What the fit needs of one file, without its content (read again only if it is sent)."""

    path: str
    size: int
    lines: int
    tokens: int
    rank: int
    digest: bytes


def _unreadable(exc: OSError) -> _Skip:
    if type(exc) is OSError:  # no subclass names the cause (ENXIO: a socket, EIO, ...)
        return _Skip(f"unreadable (OSError: {exc.strerror or exc.errno})")
    return _Skip(f"unreadable ({type(exc).__name__})")


def _nonblocking(path: str, flags: int) -> int:
    # A FIFO swapped in after the lstat must not block the run; fstat below refuses it.
    return os.open(path, flags | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)


def _read(root: str, rel: str, size_cap: int, parents: dict[str, bool]) -> bytes:
    """The bytes of one candidate, or _Skip with the reason; symlinks are followed only inside root."""
    if not parent_inside(root, rel, parents):
        raise _Skip("symlink outside the repo")
    full = os.path.join(root, rel)
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        raise _Skip("missing (listed by git, not in the work tree)") from None
    except OSError as exc:
        raise _unreadable(exc) from None
    if stat.S_ISLNK(st.st_mode):
        target = os.path.realpath(full)
        if not target.startswith(root + os.sep):
            raise _Skip("symlink outside the repo")
        try:
            st = os.stat(target)
        except OSError as exc:
            loop = exc.errno == errno.ELOOP
            raise _Skip("symlink loop" if loop else "broken symlink") from None
        if stat.S_ISDIR(st.st_mode):
            raise _Skip("symlink to a folder")
        full = target
    if not stat.S_ISREG(st.st_mode):
        raise _Skip("not a regular file")
    if st.st_size > size_cap:
        raise _Skip(f"too large ({st.st_size} bytes > {size_cap})")
    try:
        with open(full, "rb", opener=_nonblocking) as fh:
            now = os.fstat(fh.fileno())
            if not stat.S_ISREG(now.st_mode):
                raise _Skip("not a regular file")
            data = fh.read(size_cap + 1)
    except FileNotFoundError:
        raise _Skip("missing (gone while packing)") from None
    except OSError as exc:
        raise _unreadable(exc) from None
    if len(data) > size_cap:
        raise _Skip(f"too large (over {size_cap} bytes)")
    return data


def _text_lines(data: bytes, rel: str, sites: list[RedactionSite] | None) -> list[str]:
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
    redaction = redact_file(text, rel)
    text = redaction.text
    if sites is not None:
        sites.extend(RedactionSite(rel, hit.line, hit.kind) for hit in redaction.hits)
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


def _truncate(path: str, lines: list[str], budget: int) -> int | None:
    """The most leading lines of `lines` whose block fits `budget` tokens, or None if too few fit."""
    n = len(lines)
    room = (budget * 7) // 2 - len(_open_tag(path, n, n).encode()) - len("</file>\n")
    shown, used = 0, 0
    for i, line in enumerate(lines, 1):
        cost = len(f"{i}| {line}\n".encode())
        if used + cost > room:
            break
        used += cost
        shown = i
    while shown >= MIN_TRUNCATED_LINES and estimate_tokens(_block(path, lines, shown)) > budget:
        shown -= 1
    if shown < min(MIN_TRUNCATED_LINES, n) or shown >= n:
        return None
    return shown


def _may_truncate(item: _Scanned, budget: int) -> bool:
    """False when even the shortest possible lines could not fill MIN_TRUNCATED_LINES: no read."""
    if budget <= 0 or item.lines == 0:
        return False
    room = (budget * 7) // 2 - len(_open_tag(item.path, item.lines, item.lines).encode()) - 8
    need = min(MIN_TRUNCATED_LINES, item.lines)
    return room >= sum(len(str(i)) + 3 for i in range(1, need + 1))


class _Reader:
    """Reads a scanned file again, for the pack or a truncation, and checks it did not change."""

    def __init__(self, root: str, size_cap: int) -> None:
        self.root, self.size_cap = root, size_cap
        self.parents: dict[str, bool] = {}

    def lines(self, item: _Scanned) -> list[str]:
        try:
            data = _read(self.root, item.path, self.size_cap, self.parents)
            if hashlib.blake2b(data, digest_size=16).digest() != item.digest:
                raise _Changed(item.path)
            return _text_lines(data, item.path, None)
        except _Skip:
            raise _Changed(item.path) from None


def _scan(
    root: str,
    paths: list[str],
    size_cap: int,
    unstable: Mapping[str, str],
    skipped: list[tuple[str, str]],
    sites: list[RedactionSite],
) -> list[_Scanned]:
    """Read each candidate once, one at a time, and keep only its measurements."""
    scanned: list[_Scanned] = []
    parents: dict[str, bool] = {}
    for rel in paths:
        mark = len(sites)
        reason = exclusion_reason(rel) or unstable.get(rel)
        if reason is None and not rel.isascii():
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                reason = "file name is not valid UTF-8"
        if reason is None:
            try:
                data = _read(root, rel, size_cap, parents)
                lines = _text_lines(data, rel, sites)
                tokens = estimate_tokens(_block(rel, lines))
            except _Skip as skip:
                reason = str(skip)
            except Exception as exc:  # one odd file fails alone, whatever went wrong with it
                reason = f"could not be packed ({type(exc).__name__}: {exc})"
        if reason is not None:
            del sites[mark:]  # a skipped file sends nothing, so it has no redactions to audit
            skipped.append((shown_name(rel), reason))
            continue
        digest = hashlib.blake2b(data, digest_size=16).digest()
        scanned.append(_Scanned(rel, len(data), len(lines), tokens, priority(rel), digest))
        del data, lines  # only the measurements stay
    return scanned


_Fitted = tuple[str, int | None, str | None, int]  # status, lines shown, truncated block, its bytes


def _fit(
    scanned: list[_Scanned], remaining: int, reader: _Reader, lead: frozenset[str] = frozenset()
) -> dict[str, _Fitted]:
    """The fit rule (module docstring): each path's status; truncated blocks are made here.

    Files in `lead` (a change under review) claim the budget before every class.
    """
    status: dict[str, _Fitted] = {}
    first = sorted((it for it in scanned if it.path in lead), key=lambda it: it.path)
    groups = [first] + [
        sorted(
            (it for it in scanned if it.rank == r and it.path not in lead), key=lambda it: it.path
        )
        for r in range(len(PRIORITY_NAMES))
    ]
    for group in groups:
        for item in group:  # whole files first
            if item.tokens <= remaining:
                status[item.path] = ("included", None, None, item.size)
                remaining -= item.tokens
        for item in group:  # then what did not fit whole, truncated if enough of it fits
            if item.path in status:
                continue
            shown = None
            if _may_truncate(item, remaining):
                lines = reader.lines(item)
                shown = _truncate(item.path, lines, remaining)
            if shown is None:
                status[item.path] = ("omitted", None, None, 0)
            else:
                block = _block(item.path, lines, shown)
                used = min(item.size, sum(len(line.encode()) + 1 for line in lines[:shown]))
                status[item.path] = ("truncated", shown, block, used)
                remaining -= estimate_tokens(block)
    return status


def pack_repo(
    root: Path,
    *,
    slug: str,
    max_input_tokens: int,
    size_cap: int = 256_000,
    lead: Collection[str] = (),
    preface: str = "",
) -> Pack:
    """Select, read, redact and fit the files of `root` into one pack of at most `max_input_tokens`.

    Unreadable, binary, invalid-UTF-8, oversized, excluded files and names that are not UTF-8 are
    listed in `skipped` with a reason (names escaped); selected files that did not fit are
    `omitted` in `files`. Never raises for a bad file. A file that changes while it is packed is
    skipped as changed and the pack made again. Memory: the measurements of every file, the text
    of one file at a time, and the pack itself. Raises PackError (naming the repo and the cause)
    when the repo as a whole cannot be packed, e.g. an unreadable ignore file.

    `lead` (paths changed since the last review) come first, in the fit and in the text;
    `preface` (jobs.changes.preface: the change and its diff) follows the tree, within the budget.
    """
    if not root.is_dir():
        raise JobsInputError(f"{root}: not a folder to pack")
    if max_input_tokens <= 0:
        raise JobsInputError(
            f"max_input_tokens: expected a positive integer, got {max_input_tokens}"
        )
    real_root = os.path.realpath(root)
    where = f"{slug}: cannot pack {shown_name(real_root)}"
    try:
        paths, method = list_candidates(Path(real_root))
        unstable: dict[str, str] = {}
        for _ in range(MAX_PACK_ATTEMPTS):
            try:
                return _pack_once(
                    real_root, paths, method, slug, max_input_tokens, size_cap, unstable,
                    frozenset(lead), preface,
                )  # fmt: skip
            except _Changed as changed:
                unstable[changed.path] = "changed while packing"
    except PackError as exc:
        raise PackError(f"{where}: {exc}") from None
    except JobsError:
        raise
    except Exception as exc:  # a repo-level surprise fails this repo, named, not the whole run
        raise PackError(f"{where}: {type(exc).__name__}: {exc}") from exc
    changed_names = ", ".join(shown_name(p) for p in sorted(unstable))
    raise PackError(f"{where}: files kept changing while packing ({changed_names})")


def _pack_once(
    real_root: str,
    paths: list[str],
    method: str,
    slug: str,
    max_input_tokens: int,
    size_cap: int,
    unstable: Mapping[str, str],
    lead: frozenset[str] = frozenset(),
    preface: str = "",
) -> Pack:
    skipped: list[tuple[str, str]] = []
    sites: list[RedactionSite] = []
    scanned = _scan(real_root, paths, size_cap, unstable, skipped, sites)
    reader = _Reader(real_root, size_cap)
    tree = "".join(_escape(item.path) + "\n" for item in scanned)
    head = f'<repository name="{_escape(slug)}">\n<tree>\n{tree}</tree>\n{preface}'
    foot = "</repository>\n"
    remaining = max_input_tokens - estimate_tokens(head) - estimate_tokens(foot)
    status = _fit(scanned, remaining, reader, lead)
    if lead:  # the change first in the text too, so a reader meets it before the rest
        scanned = sorted(scanned, key=lambda it: it.path not in lead)
    parts, files = [head], []
    for item in scanned:
        state, shown, block, _ = status[item.path]
        if state == "included":
            block = _block(item.path, reader.lines(item))
        if block is not None:
            parts.append(block)
        tokens = estimate_tokens(block) if state == "truncated" and block else item.tokens
        files.append(
            PackedFile(item.path, item.size, item.lines, tokens, state,
                       (1, shown) if shown else None, PRIORITY_NAMES[item.rank])
        )  # fmt: skip
    parts.append(foot)
    text = "".join(parts)
    del parts
    total_bytes = sum(item.size for item in scanned)
    shown_files = sum(1 for f in files if f.status != "omitted")
    coverage = {
        "files": shown_files / len(files) if files else 1.0,
        "bytes": sum(v[3] for v in status.values()) / total_bytes if total_bytes else 1.0,
    }
    return Pack(
        slug=slug,
        root=Path(real_root),
        text=text,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        token_estimate=estimate_tokens(text),
        files=tuple(files),
        skipped=tuple(skipped),
        redactions=MappingProxyType(dict(sorted(Counter(s.kind for s in sites).items()))),
        coverage=MappingProxyType(coverage),
        method=method,
        max_input_tokens=max_input_tokens,
        over_budget=remaining < 0,
        redaction_sites=tuple(sites),
    )
