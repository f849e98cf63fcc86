"""Memory per repository: its last completed review, in runs.db (table repo_reviews).

A row is written when a repo's review completes (every agent done), never for a failed or
deferred one, so an interrupted night reviews the repo again. Rows are kept (one per run and
repo): the newest by `reviewed_at` is the memory. A repo is keyed by what it is, not by its
slug: its resolved folder, or its URL and ref.

The row holds what the next night compares against (the commit or, outside git, the tree hash,
each packed file's digest, the tags at HEAD, the pack, prompts, model, mode and agents) and the
outcome itself (runner findings, tracking), which an unchanged repo's report carries forward.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jobs.manifest import RepoSpec
from runner.runs import Runs

__all__ = ["Review", "last_review", "prompts_sha256", "remember", "repo_key"]


def repo_key(spec: RepoSpec) -> str:
    """What a repo is, whatever its slug: its resolved folder, or `URL#REF`."""
    if spec.url is not None:
        return f"{spec.url}#{spec.ref or ''}"
    return str(spec.path)


def prompts_sha256(texts: Mapping[str, str], max_output_tokens: int) -> str:
    """One hash for the prompt texts (by agent) and the output cap they state."""
    doc = json.dumps({"prompts": dict(sorted(texts.items())), "max_output": max_output_tokens})
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Review:
    """One completed review of a repo: what it saw and what it found."""

    repo_key: str
    slug: str
    run_id: str
    reviewed_at: str  # ISO-8601 UTC
    head_commit: str | None
    tree_sha256: str
    pack_sha256: str
    prompts_sha256: str
    model: str
    mode: str
    agents: tuple[str, ...]
    files: Mapping[str, str] = field(default_factory=dict)  # path -> SHA-256 of its bytes
    tags: tuple[str, ...] = ()
    outcome: Mapping[str, Any] = field(default_factory=dict)  # RepoOutcome.to_dict()


def remember(runs: Runs, review: Review) -> None:
    """Record a completed review (a second record for the same run and repo replaces the first)."""
    row = [
        f"{review.run_id}/{review.slug}",
        review.repo_key,
        review.slug,
        review.run_id,
        review.reviewed_at,
        review.head_commit,
        review.tree_sha256,
        json.dumps(dict(review.files)),
        json.dumps(list(review.tags)),
        review.pack_sha256,
        review.prompts_sha256,
        review.model,
        review.mode,
        json.dumps(list(review.agents)),
        json.dumps(dict(review.outcome)),
    ]
    with runs.transaction() as db:
        db.execute("DELETE FROM repo_reviews WHERE id = ?", [row[0]])
        db.execute(
            "INSERT INTO repo_reviews (id, repo_key, slug, run_id, reviewed_at, head_commit,"
            " tree_sha256, files, tags, pack_sha256, prompts_sha256, model, mode, agents, outcome)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        )


def last_review(runs: Runs, key: str) -> Review | None:
    """The newest completed review of the repo `key`, or None (never reviewed)."""
    rows = list(
        runs.db.query(
            "SELECT * FROM repo_reviews WHERE repo_key = ? ORDER BY reviewed_at DESC, id DESC"
            " LIMIT 1",
            [key],
        )
    )
    if not rows:
        return None
    row = rows[0]
    return Review(
        repo_key=row["repo_key"],
        slug=row["slug"],
        run_id=row["run_id"],
        reviewed_at=row["reviewed_at"],
        head_commit=row["head_commit"],
        tree_sha256=row["tree_sha256"],
        pack_sha256=row["pack_sha256"],
        prompts_sha256=row["prompts_sha256"],
        model=row["model"],
        mode=row["mode"],
        agents=tuple(json.loads(row["agents"])),
        files=json.loads(row["files"]),
        tags=tuple(json.loads(row["tags"])),
        outcome=json.loads(row["outcome"]),
    )
