"""Test repositories built with plain git, as a naive caller runs it: the repository's own
config is in force (the code under test must never rely on that), the user's is not."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from support import make_repos

from jobs.manifest import AGENTS, RepoSpec

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def plain_git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-c", "commit.gpgsign=false", "-C", str(root), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=check,
    )


def git(root: Path, *args: str) -> str:
    """Run git in `root`, raising on failure; returns its stdout, stripped."""
    return plain_git(root, *args).stdout.strip()


def make_origin(tmp_path: Path, name: str = "origin") -> tuple[Path, str]:
    """A two-commit repository tagged `v1` at the first commit, and its file:// URL."""
    origin = tmp_path / name
    origin.mkdir()
    git(origin, "init", "-q", "-b", "main")
    (origin / "a.py").write_text("v = 1\n")
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "one")
    git(origin, "tag", "v1")
    (origin / "a.py").write_text("v = 2\n")
    git(origin, "commit", "-qam", "two")
    return origin, f"file://{origin}"


def url_spec(url: str, ref: str | None, slug: str = "origin") -> RepoSpec:
    return RepoSpec(url, None, url, ref, slug, "m", AGENTS, 1000)


def git_repos(root: Path, count: int) -> list[Path]:
    """`count` small repos (support.make_repos), each a git repository with one commit."""
    repos = make_repos(root, count)
    for repo in repos:
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "first")
    return repos
