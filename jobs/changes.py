"""What changed in a repository since its last completed review: the files, the lines, the diff.

Changed files are found by content: each packed file's SHA-256 against the digests recorded at
the last review, so edits in the work tree, new untracked files and folders outside git all count.
In git, the unified diff from the last reviewed commit to the work tree shows the change itself;
it runs through jobs.git (sealed from the repository's config), so no diff driver, textconv or
fsmonitor of the repository ever runs. A last commit that is not an ancestor of HEAD (a force
push, a rebase), or that a shallow clone of a URL lacks even after deepening, gives no diff:
`Change.full_reason` says why the repo gets a full review instead.

The diff is redacted like the pack (jobs.secrets, per file) and cut to a token budget at a line,
saying so; it never leaves the machine unredacted.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from jobs.git import GitError, fetch, git, is_ancestor, run, tags_at
from jobs.secrets import redact

__all__ = [
    "DEEPEN_STEPS",
    "Change",
    "changed_files",
    "file_digests",
    "find_change",
    "head_commit",
    "head_tags",
    "preface",
    "tree_sha256",
]

# Commits to fetch, in turn, when a shallow clone lacks the last reviewed commit.
DEEPEN_STEPS = (50, 500, 5000)
_DIFF_HEAD = re.compile(r"^diff --git a/.* b/(.*)$")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f\u2028\u2029\x85]")


@dataclass(frozen=True)
class Change:
    """The change of a repo since its last review (`since`, a commit or None outside git)."""

    since: str | None
    files: tuple[str, ...]  # changed, added or removed paths, sorted
    lines: int  # lines added plus removed (outside git: the changed files' lines)
    diff: str = ""  # the redacted unified diff, possibly cut ("" outside git or for a full review)
    full_reason: str | None = None  # why the change cannot be shown: the repo gets a full review

    @property
    def empty(self) -> bool:
        """True when nothing changed."""
        return not self.files


def file_digests(root: Path, paths: Iterable[str]) -> dict[str, str]:
    """SHA-256 of each file's bytes (never through a final symlink); an unreadable file is left out."""
    out: dict[str, str] = {}
    for rel in paths:
        try:
            fd = os.open(os.path.join(root, rel), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        digest = hashlib.sha256()
        with os.fdopen(fd, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 16), b""):
                digest.update(chunk)
        out[rel] = digest.hexdigest()
    return out


def tree_sha256(digests: Mapping[str, str]) -> str:
    """One hash for the whole set of files and their contents (the identity outside git)."""
    text = "".join(f"{path}\0{digests[path]}\n" for path in sorted(digests))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def changed_files(before: Mapping[str, str], after: Mapping[str, str]) -> tuple[str, ...]:
    """Paths added, removed or with other content, sorted."""
    return tuple(sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p)))


def head_commit(root: Path) -> str | None:
    """The commit at HEAD of the git work tree `root` is in, or None outside git (or before a commit)."""
    res = run(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    return res.stdout.decode("ascii", "replace").strip() or None if res.returncode == 0 else None


def head_tags(root: Path) -> tuple[str, ...]:
    """The tags at HEAD (none outside git)."""
    try:
        return tuple(tags_at(root))
    except GitError:
        return ()


def _has_commit(root: Path, sha: str) -> bool:
    return run(root, "cat-file", "-e", f"{sha}^{{commit}}").returncode == 0


def _linked(root: Path, sha: str) -> bool:
    return _has_commit(root, sha) and is_ancestor(root, sha)


def _reach(root: Path, sha: str, url: str | None, ref: str | None) -> str | None:
    """None when `sha` is an ancestor of HEAD, else why not; a clone of `url` is deepened first.

    A shallow clone may hold the commit (fetched an earlier night) and still not link it to
    HEAD: its history stops at the shallow boundary. So a clone is deepened until it does.
    """
    if _linked(root, sha):
        return None
    if url is not None:
        for step in DEEPEN_STEPS:
            try:
                fetch(root, url, ref, deepen=step)
            except GitError:
                break
            if _linked(root, sha):
                return None
    if not _has_commit(root, sha):
        where = "the clone's history" if url else "the repository"
        return f"{sha[:12]} is missing from {where}"
    return f"{sha[:12]} is not an ancestor of HEAD (a force push or a rebase)"


def _literal(paths: Sequence[str]) -> list[str]:
    return [f":(literal){p}" for p in paths]


def _numstat(root: Path, since: str, paths: Sequence[str]) -> dict[str, int]:
    out = git(root, "diff", "--numstat", "--relative", "--end-of-options", since, "--",
              *_literal(paths))  # fmt: skip
    counts: dict[str, int] = {}
    for line in out.decode("utf-8", "surrogateescape").splitlines():
        added, removed, path = ([*line.split("\t", 2), "", "", ""])[:3]
        counts[path] = (int(added) if added.isdigit() else 0) + (
            int(removed) if removed.isdigit() else 0
        )
    return counts


def _redacted(diff: str) -> str:
    """The diff with each file's section redacted under that file's name, control characters escaped."""
    sections: list[tuple[str, list[str]]] = [("change.diff", [])]
    for line in diff.split("\n"):
        start = _DIFF_HEAD.match(line)
        if start:
            sections.append((start.group(1), []))
        sections[-1][1].append(line)
    parts = [redact("\n".join(lines), path)[0] for path, lines in sections if lines]
    text = "\n".join(parts)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _cut(diff: str, max_chars: int) -> str:
    if len(diff) <= max_chars:
        return diff
    lines = diff.split("\n")
    kept, size = [], 0
    for line in lines:
        if size + len(line) + 1 > max_chars:
            break
        kept.append(line)
        size += len(line) + 1
    return (
        "\n".join(kept)
        + f"\n... (diff cut to fit the input budget: {len(kept)} of {len(lines)} lines)"
    )


def _line_count(root: Path, rel: str) -> int:
    try:
        with open(os.path.join(root, rel), "rb") as handle:
            return sum(1 for _ in handle)
    except OSError:
        return 0


def find_change(
    root: Path,
    *,
    since: str | None,
    before: Mapping[str, str],
    after: Mapping[str, str],
    max_diff_chars: int,
    url: str | None = None,
    ref: str | None = None,
) -> Change:
    """The change from the last review (commit `since`, file digests `before`) to now (`after`).

    Deepens a shallow clone of `url` to find `since`. Raises nothing for a git problem: the
    Change then carries the reason for a full review.
    """
    files = changed_files(before, after)
    if not files:
        return Change(since, (), 0)
    present = [p for p in files if p in after]
    if since is None:
        return Change(since, files, sum(_line_count(root, p) for p in present))
    try:
        problem = _reach(root, since, url, ref)
        if problem is not None:
            return _full(since, files, root, present, problem)
        counts = _numstat(root, since, files)
        lines = sum(counts.values()) + sum(_line_count(root, p) for p in present if p not in counts)
        raw = git(root, "diff", "--relative", "--no-color", "--end-of-options", since, "--",
                  *_literal(files))  # fmt: skip
    except GitError as exc:
        return _full(since, files, root, present, f"no diff from {since[:12]} ({exc})")
    diff = _cut(_redacted(raw.decode("utf-8", "surrogateescape")), max_diff_chars)
    return Change(since, files, lines, diff)


def _full(since: str, files: tuple[str, ...], root: Path, present: list[str], why: str) -> Change:
    return Change(since, files, sum(_line_count(root, p) for p in present), full_reason=why)


def _escape(path: str) -> str:
    text = path.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def preface(change: Change) -> str:
    """The block that leads a changed repo's pack: what changed, the diff, and where to look."""
    listed = "".join(_escape(p) + "\n" for p in change.files)
    since = f' since="{change.since[:12]}"' if change.since else ""
    diff = f"<diff>\n{change.diff}\n</diff>\n" if change.diff else ""
    return (
        f'<changes{since} files="{len(change.files)}" lines="{change.lines}">\n'
        "Concentrate the review on this change: the files below changed since the last review, "
        "and they come first in the pack. The rest of the repository is context.\n"
        f"<changed-files>\n{listed}</changed-files>\n{diff}</changes>\n"
    )
