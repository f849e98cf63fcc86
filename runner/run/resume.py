"""Resuming a recorded run: which run, whether another process still runs it, what changed.

- `run --resume RUN_ID|last` resumes that run with the manifest it recorded; `run MANIFEST
  --resume ...` resumes a run of MANIFEST only (`last`: the newest run of MANIFEST), where the
  run's manifest is MANIFEST when it has the same resolved path or the same content.
- A run whose owner (pid + start time + host, statedb's one liveness check) still runs is
  refused before anything is packed or sent; a dead owner's run is taken over atomically.
- A repo whose pack changed since it was recorded has all its agents reviewed again on the new
  pack (a report never mixes two packs); a repo gone from the manifest is skipped, with why.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jobs.manifest import Manifest
from runner.errors import RunnerInputError
from runner.kinds import JobStatus
from runner.run.plan import RepoWork
from runner.runs import JobRow, RunRow, Runs

__all__ = ["Reconciled", "find_run", "gone_repos", "manifest_sha256", "reconcile", "take_over"]

GONE = "no longer in the manifest"


def manifest_sha256(path: Path) -> str:
    """The digest of a manifest file's bytes, as runs.db records it."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise RunnerInputError(f"{path}: cannot read manifest ({exc.strerror})") from exc


def find_run(runs: Runs, resume: str, manifest: Manifest | None) -> RunRow:
    """The run `resume` names (an id or "last"); with `manifest`, it must be a run of it."""
    if manifest is None:
        return runs.run(resume)
    path, digest = str(manifest.path), manifest_sha256(manifest.path)
    if resume == "last":
        row = runs.last_run_of(path, digest)
        if row is None:
            raise RunnerInputError(f"--resume last: no run of {path} recorded in {runs.path}")
        return row
    row = runs.run(resume)
    if row.manifest != path and row.manifest_sha256 != digest:
        raise RunnerInputError(
            f"--resume {row.id}: that run's manifest is {row.manifest}, not {path}; "
            "give the run's own manifest, or none"
        )
    return row


def take_over(runs: Runs, run: RunRow, *, dry_run: bool) -> None:
    """Become the owner of `run` (a dry run only looks), or refuse while its owner is alive."""
    busy = runs.live_owner(run.id) if dry_run else runs.claim(run.id)
    if busy is not None:
        raise RunnerInputError(
            f"run {busy.id} is still running: pid {busy.pid} on host {busy.host or '?'}, "
            f"started {busy.pid_started_at or 'at an unknown time'}; "
            "wait for it to end, or stop it, before resuming"
        )


@dataclass(frozen=True)
class Reconciled:
    """What a resume found changed: repos gone from the manifest, repos whose pack changed."""

    gone: tuple[str, ...] = ()
    changed: frozenset[str] = field(default_factory=frozenset)

    def still_done(self, done: Mapping[str, JobRow]) -> dict[str, JobRow]:
        """The done jobs that stand: none of a repo whose pack changed."""
        return {k: row for k, row in done.items() if row.slug not in self.changed}

    def apply(self, runs: Runs, run_id: str, works: Iterable[RepoWork]) -> None:
        """Record it: gone repos skipped, changed ones with their new pack and pending jobs."""
        for slug in self.gone:
            runs.skip_repo(run_id, slug, GONE)
        for work in works:
            if work.spec.slug in self.changed:
                runs.repack(run_id, work.spec.slug, work.pack.summary(), work.pack.sha256)


def gone_repos(manifest: Manifest, jobs: Sequence[JobRow]) -> tuple[str, ...]:
    """Repos of a run with jobs left that the manifest no longer lists."""
    listed = {repo.slug for repo in manifest.repos}
    left = dict.fromkeys(j.slug for j in jobs if j.status != JobStatus.DONE)
    return tuple(slug for slug in left if slug not in listed)


def reconcile(
    runs: Runs, run_id: str, gone: Sequence[str], works: Iterable[RepoWork]
) -> Reconciled:
    """Compare the repos packed now with those `run_id` recorded."""
    recorded = {repo["slug"]: repo["pack_sha256"] for repo in runs.repos(run_id)}
    changed = frozenset(
        w.spec.slug for w in works if recorded.get(w.spec.slug, w.pack.sha256) != w.pack.sha256
    )
    return Reconciled(tuple(gone), changed)
