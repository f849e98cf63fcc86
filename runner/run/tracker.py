"""Tonight against the last complete review: each repo outcome's statuses, recorded in runs.db.

Built once per run, before anything is sent, so that a broken suppressions file stops the run with
nothing spent. The suppressions of a repo are the manifest folder's file, and the repo's own file only
when the manifest sets ``trust_repo_suppressions = true``: by default a reviewed repository cannot
silence its own findings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from jobs.manifest import Manifest
from jobs.outcome import RepoOutcome
from jobs.suppressions import SUPPRESSIONS_FILE, Suppressions, load_suppressions, suppression_files
from jobs.tracking import Seen, tonight_files
from runner.findings_store import FindingsStore
from runner.run.plan import RepoWork
from runner.runs import Runs, utc_now

__all__ = ["Tracker", "load_repo_suppressions", "tracker_for"]


def load_repo_suppressions(
    manifest: Manifest,
    works: Mapping[str, RepoWork],
    *,
    on_message: Callable[[str], None] = lambda _: None,
) -> dict[str, Suppressions]:
    """Each repo's suppressions in force today; JobsInputError naming the file for a bad one."""
    today = datetime.now(UTC).date()
    out = {}
    for slug, work in works.items():
        own = work.root / SUPPRESSIONS_FILE
        trusted = manifest.trust_repo_suppressions
        if not trusted and own.is_file():
            on_message(
                f"{slug}: its own {SUPPRESSIONS_FILE} is ignored (a reviewed repository does not "
                "silence its own findings unless the manifest sets trust_repo_suppressions = true)"
            )
        files = suppression_files(manifest.path.parent, work.root if trusted else None)
        out[slug] = load_suppressions(files, today=today)
    return out


@dataclass(frozen=True)
class Tracker:
    """Gives a repo outcome its across-nights statuses and records them (one per run)."""

    store: FindingsStore
    run: Seen  # this run and its date (runs.db's created_at, the same on resume)
    works: Mapping[str, RepoWork]  # tonight's packs, by slug
    suppressions: Mapping[str, Suppressions]

    def track(self, outcome: RepoOutcome, *, reuse: bool = False) -> RepoOutcome:
        """``outcome`` with its statuses against the repo's last complete review, recorded in runs.db.

        ``reuse``: take this run's recorded review of the repo when there is one (its report was
        written as it completed). A repo packed in an earlier attempt of the run only has that record.
        """
        slug = outcome.slug
        work = self.works.get(slug)
        if reuse or work is None:
            stored = self.store.review(self.run.run_id, slug)
            if stored is not None:
                return replace(outcome, tracking=stored.tracking)
            if work is None:
                return outcome
        assert work is not None
        suppressions = self.suppressions.get(slug)
        tracked = outcome.with_tracking(
            self.store.previous(slug, run_id=self.run.run_id),
            run=self.run,
            suppressions=suppressions,
            baseline=self.store.baseline(slug),
            **tonight_files(work.pack),
        )
        assert tracked.tracking is not None
        self.store.record(
            self.run.run_id,
            slug,
            run_date=self.run.date,
            complete=tracked.complete,
            tracking=tracked.tracking,
        )
        return tracked


def tracker_for(
    manifest: Manifest,
    works: Sequence[RepoWork],
    runs: Runs,
    run_id: str,
    *,
    run_date: str | None = None,
    on_message: Callable[[str], None] = lambda _: None,
) -> Tracker:
    """The run's Tracker; ``run_date`` the run's creation time (now for a new run)."""
    by_slug = {w.spec.slug: w for w in works}
    return Tracker(
        store=FindingsStore(runs),
        run=Seen(run_id, run_date or utc_now()),
        works=by_slug,
        suppressions=load_repo_suppressions(manifest, by_slug, on_message=on_message),
    )
