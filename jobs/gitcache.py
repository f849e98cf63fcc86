"""Shallow clones of git URLs in a cache folder, so a manifest can review repositories by URL.

One folder per (URL, ref) under the cache: `<slug>-<hash12>`. The first use does `git init` + a
depth-1 fetch of the ref (or the remote HEAD) into a temporary folder and renames it into place, so a
crash never leaves a half-made clone where a later run would trust it. A later use fetches again
(depth 1) and checks out what it got, so a branch ref follows its branch. A file lock per entry keeps
two processes from fetching into the same folder at once.

Every git call goes through jobs.git: the URL's own transport only, hooks off, no prompt, and the
URL and ref passed after `--end-of-options`. The fetch names the URL itself (no `origin` remote is
written), so a token in a URL is not kept in the clone's config.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Protocol

from filelock import FileLock

from jobs.errors import JobsInputError
from jobs.git import GIT_TIMEOUT_S, GitError, fetch, git, ref_problem, scrub_url, url_problem

__all__ = ["GIT_TIMEOUT_S", "RepoSource", "cache_name", "resolve_repo", "scrub_url"]


class RepoSource(Protocol):
    """What resolving needs of a repo entry (jobs.manifest.RepoSpec has it; no import needed)."""

    @property
    def source(self) -> str: ...
    @property
    def path(self) -> Path | None: ...
    @property
    def url(self) -> str | None: ...
    @property
    def ref(self) -> str | None: ...
    @property
    def slug(self) -> str: ...


def cache_name(spec: RepoSource) -> str:
    """The cache folder name for a URL spec: its slug and a hash of URL and ref."""
    digest = hashlib.sha256(f"{spec.url}\0{spec.ref or ''}".encode()).hexdigest()[:12]
    return f"{spec.slug}-{digest}"


def _fetch_checkout(folder: Path, url: str, ref: str | None, source: str) -> None:
    try:
        fetch(folder, url, ref)
    except GitError as exc:
        shown = ref or "HEAD"
        raise JobsInputError(f"{scrub_url(source)}: cannot fetch ref {shown!r}: {exc}") from None
    # FETCH_HEAD is our own name; the `--` makes it a revision whatever files exist.
    git(folder, "checkout", "--quiet", "--force", "--detach", "FETCH_HEAD", "--")
    git(folder, "clean", "-ffdxq")


def resolve_repo(spec: RepoSource, cache_dir: Path) -> Path:
    """The local folder to pack for `spec`: its path as is, or a shallow clone of its URL at its ref.

    Raises JobsInputError for a missing folder, an unsafe or unfetchable URL/ref, JobsError if
    git is missing or fails.
    """
    if spec.url is None:
        if spec.path is None or not spec.path.is_dir():
            raise JobsInputError(f"{spec.source}: repository folder not found ({spec.path})")
        return spec.path
    problem = url_problem(spec.url) or (ref_problem(spec.ref) if spec.ref is not None else None)
    if problem is not None:  # the manifest refuses these already; a spec made elsewhere may not
        raise JobsInputError(f"{scrub_url(spec.source)}: unsafe git URL or ref ({problem})")
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    dest = cache_dir / cache_name(spec)
    with FileLock(str(dest) + ".lock", timeout=GIT_TIMEOUT_S, mode=0o600):
        if (dest / ".git").is_dir():
            _fetch_checkout(dest, spec.url, spec.ref, spec.source)
            return dest
        tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)  # a folder without .git is debris, not a clone
        tmp.mkdir(mode=0o700)
        try:
            git(tmp, "init", "--quiet")
            _fetch_checkout(tmp, spec.url, spec.ref, spec.source)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
