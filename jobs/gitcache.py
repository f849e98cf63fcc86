"""Shallow clones of git URLs in a cache folder, so a manifest can review repositories by URL.

One folder per (URL, ref) under the cache: `<slug>-<hash12>`. The first use does `git init` + a
depth-1 fetch of the ref (or the remote HEAD) into a temporary folder and renames it into place, so a
crash never leaves a half-made clone where a later run would trust it. A later use fetches again
(depth 1) and checks out what it got, so a branch ref follows its branch. A file lock per entry keeps
two processes from fetching into the same folder at once.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from jobs.errors import JobsError, JobsInputError

if TYPE_CHECKING:
    from jobs.manifest import RepoSpec

__all__ = ["GIT_TIMEOUT_S", "cache_name", "resolve_repo", "scrub_url"]

GIT_TIMEOUT_S = 600
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def scrub_url(text: str) -> str:
    """`text` with any `user:token@` part of a URL removed, for error messages and logs."""
    return _USERINFO.sub("***@", text)


def cache_name(spec: RepoSpec) -> str:
    """The cache folder name for a URL spec: its slug and a hash of URL and ref."""
    digest = hashlib.sha256(f"{spec.url}\0{spec.ref or ''}".encode()).hexdigest()[:12]
    return f"{spec.slug}-{digest}"


def _git(cwd: Path, *args: str) -> None:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "LC_ALL": "C"}
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        env.pop(var, None)
    try:
        res = subprocess.run(
            ["git", "-C", str(cwd), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        raise JobsError(
            "git is not installed: it is needed to review a repository given by URL"
        ) from None
    except subprocess.TimeoutExpired:
        raise JobsError(f"git {args[0]} timed out after {GIT_TIMEOUT_S}s") from None
    if res.returncode != 0:
        lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
        detail = scrub_url(lines[-1]) if lines else f"exit code {res.returncode}"
        raise JobsError(f"git {args[0]} failed: {detail}")


def _fetch_checkout(folder: Path, spec: RepoSpec) -> None:
    ref = spec.ref or "HEAD"
    try:
        _git(folder, "fetch", "--quiet", "--depth", "1", "--no-tags", "origin", ref)
    except JobsError as exc:
        raise JobsInputError(f"{scrub_url(spec.source)}: cannot fetch ref {ref!r}: {exc}") from None
    _git(folder, "checkout", "--quiet", "--force", "--detach", "FETCH_HEAD")
    _git(folder, "clean", "-ffdxq")


def resolve_repo(spec: RepoSpec, cache_dir: Path) -> Path:
    """The local folder to pack for `spec`: its path as is, or a shallow clone of its URL at its ref.

    Raises JobsInputError for a missing folder or an unfetchable URL/ref, JobsError if git is missing.
    """
    if spec.url is None:
        if spec.path is None or not spec.path.is_dir():
            raise JobsInputError(f"{spec.source}: repository folder not found ({spec.path})")
        return spec.path
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    dest = cache_dir / cache_name(spec)
    with FileLock(str(dest) + ".lock", timeout=GIT_TIMEOUT_S, mode=0o600):
        if (dest / ".git").is_dir():
            _git(dest, "remote", "set-url", "origin", spec.url)
            _fetch_checkout(dest, spec)
            return dest
        tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)  # a folder without .git is debris, not a clone
        tmp.mkdir(mode=0o700)
        try:
            _git(tmp, "init", "--quiet")
            _git(tmp, "remote", "add", "origin", spec.url)
            _fetch_checkout(tmp, spec)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
