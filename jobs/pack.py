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

Its parts: jobs.pack_record (the Pack and what it records), jobs.pack_format (the token estimate
and the file blocks), jobs.pack_reading (reading one file); this module selects, scans and fits.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from jobs.errors import JobsError, JobsInputError
from jobs.pack_format import (
    MIN_TRUNCATED_LINES,
    escape,
    estimate_tokens,
    file_block,
    open_tag,
    truncate,
)
from jobs.pack_reading import Skip, read_candidate, text_lines
from jobs.pack_record import Pack, PackedFile, RedactionSite
from jobs.select import (
    PRIORITY_NAMES,
    PackError,
    exclusion_reason,
    list_candidates,
    priority,
    shown_name,
)

__all__ = ["MAX_PACK_ATTEMPTS", "pack_repo"]

# Each attempt that meets a changed file skips it and packs again; a repo rewritten faster fails.
MAX_PACK_ATTEMPTS = 4


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


def _may_truncate(item: _Scanned, budget: int) -> bool:
    """False when even the shortest possible lines could not fill MIN_TRUNCATED_LINES: no read."""
    if budget <= 0 or item.lines == 0:
        return False
    room = (budget * 7) // 2 - len(open_tag(item.path, item.lines, item.lines).encode()) - 8
    need = min(MIN_TRUNCATED_LINES, item.lines)
    return room >= sum(len(str(i)) + 3 for i in range(1, need + 1))


class _Reader:
    """Reads a scanned file again, for the pack or a truncation, and checks it did not change."""

    def __init__(self, root: str, size_cap: int) -> None:
        self.root, self.size_cap = root, size_cap
        self.parents: dict[str, bool] = {}

    def lines(self, item: _Scanned) -> list[str]:
        try:
            data = read_candidate(self.root, item.path, self.size_cap, self.parents)
            if hashlib.blake2b(data, digest_size=16).digest() != item.digest:
                raise _Changed(item.path)
            return text_lines(data, item.path, None)
        except Skip:
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
                data = read_candidate(root, rel, size_cap, parents)
                lines = text_lines(data, rel, sites)
                tokens = estimate_tokens(file_block(rel, lines))
            except Skip as skip:
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
                shown = truncate(item.path, lines, remaining)
            if shown is None:
                status[item.path] = ("omitted", None, None, 0)
            else:
                block = file_block(item.path, lines, shown)
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
    tree = "".join(escape(item.path) + "\n" for item in scanned)
    head = f'<repository name="{escape(slug)}">\n<tree>\n{tree}</tree>\n{preface}'
    foot = "</repository>\n"
    remaining = max_input_tokens - estimate_tokens(head) - estimate_tokens(foot)
    status = _fit(scanned, remaining, reader, lead)
    if lead:  # the change first in the text too, so a reader meets it before the rest
        scanned = sorted(scanned, key=lambda it: it.path not in lead)
    parts, files = [head], []
    for item in scanned:
        state, shown, block, _ = status[item.path]
        if state == "included":
            block = file_block(item.path, reader.lines(item))
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
