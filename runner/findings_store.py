"""Findings across nights, in runs.db: each repo review's findings with their status, and the baselines.

One ``finding_reviews`` row per run and repo, with one ``findings`` row per finding of that review
(tonight's new, persisting and suppressed ones, the earlier ones still open, the fixed ones and the
unverified ones, each with its status that night). Recording a review replaces that run's rows for the repo
in one transaction, so a resumed run that finishes a repo again never leaves two versions of it.

The next night of a repo is compared with its last *complete* review (every agent's reply parsed whole):
a review with a failed or truncated agent is reported and recorded, but never becomes the reference,
since what it did not report says nothing about the code.

A baseline is a set of accepted fingerprints per repo (``review-runner findings baseline``): an entry is
never replaced, so a finding keeps its first acceptance.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from jobs.findings import Finding
from jobs.suppressions import Baseline, BaselineEntry
from jobs.tracking import Status, Tracked, Tracking
from runner.errors import RunnerInputError
from runner.runs import Runs, utc_now

__all__ = [
    "UNVERIFIED",
    "Accepted",
    "FindingsStore",
    "Listed",
    "Review",
    "accept_baseline",
    "list_findings",
]

#: The status a finding whose quote is not in the file is stored with (it is never tracked).
UNVERIFIED = "unverified"
_TONIGHT = (Status.NEW, Status.PERSISTING, Status.SUPPRESSED)


@dataclass(frozen=True)
class Review:
    """One recorded review of a repo: which run, its date, whether complete, and its findings."""

    run_id: str
    slug: str
    run_date: str
    complete: bool
    tracking: Tracking


class FindingsStore:
    """The findings tables of runs.db (the runs database's migrations create them)."""

    def __init__(self, runs: Runs) -> None:
        self.runs = runs

    def record(
        self, run_id: str, slug: str, *, run_date: str, complete: bool, tracking: Tracking
    ) -> None:
        """Store ``tracking`` as the review of ``slug`` in ``run_id``, replacing any earlier record of it."""
        review_id = f"{run_id}/{slug}"
        rows: list[tuple[str, Finding, Tracked | None]] = [(t.status.value, t.finding, t) for t in tracking.findings + tracking.carried + tracking.fixed]  # fmt: skip
        rows += [(UNVERIFIED, f, None) for f in tracking.unverified]
        with self.runs.transaction() as db:
            db.execute("DELETE FROM findings WHERE review_id = ?", [review_id])
            db.execute("DELETE FROM finding_reviews WHERE id = ?", [review_id])
            db.execute(
                "INSERT INTO finding_reviews (id, run_id, slug, run_date, complete, counts, recorded_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    review_id,
                    run_id,
                    slug,
                    run_date,
                    int(complete),
                    json.dumps(tracking.counts()),
                    utc_now(),
                ],
            )
            for n, (status, finding, tracked) in enumerate(rows, 1):
                record = tracked.to_dict() if tracked is not None else finding.to_dict()
                first = tracked.first_seen if tracked is not None else None
                db.execute(
                    "INSERT INTO findings (id, review_id, run_id, slug, fingerprint, path, category, severity,"
                    " title, evidence, status, first_seen_run, first_seen_at, record)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        f"{review_id}/{n}", review_id, run_id, slug, finding.fingerprint, finding.file,
                        finding.category, finding.severity, finding.title, finding.evidence, status,
                        first.run_id if first else None, first.date if first else None,
                        json.dumps(record, ensure_ascii=False),
                    ],
                )  # fmt: skip

    def review(self, run_id: str, slug: str) -> Review | None:
        """The recorded review of ``slug`` in ``run_id``, or None."""
        rows = list(self.runs.query("SELECT * FROM finding_reviews WHERE id = ?", [f"{run_id}/{slug}"]))  # fmt: skip
        return self._review(rows[0]) if rows else None

    def last_complete(self, slug: str, *, before: str | None = None) -> Review | None:
        """The last complete review of ``slug`` (by run date), leaving out run ``before``; None for none."""
        sql = "SELECT * FROM finding_reviews WHERE slug = ? AND complete = 1"
        params: list[object] = [slug]
        if before is not None:
            sql += " AND run_id != ?"
            params.append(before)
        rows = list(self.runs.query(sql + " ORDER BY run_date DESC, id DESC LIMIT 1", params))
        return self._review(rows[0]) if rows else None

    def previous(self, slug: str, *, run_id: str) -> tuple[Tracked, ...]:
        """The open findings of ``slug``'s last complete review before ``run_id``: what tonight is compared with."""
        last = self.last_complete(slug, before=run_id)
        return last.tracking.open() if last is not None else ()

    def slugs(self) -> list[str]:
        """Every repo with a recorded review, sorted."""
        return sorted({row["slug"] for row in self.runs.query("SELECT DISTINCT slug FROM finding_reviews")})  # fmt: skip

    def baseline(self, slug: str) -> Baseline:
        """The accepted fingerprints of ``slug`` (empty when none was accepted)."""
        rows = self.runs.query("SELECT * FROM finding_baselines WHERE slug = ?", [slug])
        fields = ("fingerprint", "accepted_by", "accepted_at", "run_id", "reason")
        entries = [BaselineEntry(**{k: row[k] for k in fields}) for row in rows]
        return Baseline({e.fingerprint: e for e in entries})

    def accept(self, slug: str, entries: Iterable[BaselineEntry]) -> int:
        """Add ``entries`` to ``slug``'s baseline; return how many were new (an accepted one is kept as it was)."""
        added = 0
        with self.runs.transaction() as db:
            for e in entries:
                key = f"{slug}/{e.fingerprint}"
                if db.execute("SELECT 1 FROM finding_baselines WHERE id = ?", [key]).fetchone():
                    continue
                db.execute(
                    "INSERT INTO finding_baselines (id, slug, fingerprint, accepted_by, accepted_at, run_id,"
                    " reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [key, slug, e.fingerprint, e.accepted_by, e.accepted_at, e.run_id, e.reason],
                )
                added += 1
        return added

    def _review(self, row: dict) -> Review:
        rows = self.runs.query(
            "SELECT status, record FROM findings WHERE review_id = ? ORDER BY rowid", [row["id"]]
        )
        tonight: list[Tracked] = []
        carried: list[Tracked] = []
        fixed: list[Tracked] = []
        unverified: list[Finding] = []
        for r in rows:
            record = json.loads(r["record"])
            if r["status"] == UNVERIFIED:
                unverified.append(Finding.from_dict(record))
                continue
            tracked = Tracked.from_dict(record)
            bucket = tonight if tracked.status in _TONIGHT else fixed if tracked.status is Status.FIXED else carried  # fmt: skip
            bucket.append(tracked)
        tracking = Tracking(tuple(tonight), tuple(carried), tuple(fixed), tuple(unverified))
        return Review(row["run_id"], row["slug"], row["run_date"], bool(row["complete"]), tracking)


@dataclass(frozen=True)
class Listed:
    """What ``findings list`` shows: each repo's last complete review and its findings."""

    reviews: tuple[Review, ...]
    baselines: Mapping[str, Baseline]

    def rows(self, status: str | None = None) -> list[dict]:
        """One dict per finding (tonight's, still open, fixed; not the unverified), optionally of one status."""
        out = []
        for review in self.reviews:
            t = review.tracking
            accepted = self.baselines.get(review.slug, Baseline()).entries
            for tracked in t.findings + t.carried + t.fixed:
                if status is not None and tracked.status.value != status:
                    continue
                out.append(
                    {
                        "slug": review.slug,
                        "run_id": review.run_id,
                        **tracked.to_dict(),
                        "baselined": tracked.fingerprint in accepted,
                    }
                )
        return out

    def to_json(self, status: str | None = None) -> dict:
        """The ``findings list --json`` document."""
        return {
            "repos": [
                {
                    "slug": r.slug,
                    "run_id": r.run_id,
                    "run_date": r.run_date,
                    "counts": r.tracking.counts(),
                }
                for r in self.reviews
            ],
            "status": status,
            "findings": self.rows(status),
        }


@dataclass(frozen=True)
class Accepted:
    """What ``findings baseline`` did for one repo."""

    slug: str
    run_id: str
    added: int
    already: int

    def to_json(self) -> dict:
        """A JSON-able dict."""
        return {"slug": self.slug, "run_id": self.run_id, "added": self.added, "already": self.already}  # fmt: skip


def _require(store: FindingsStore, slugs: Sequence[str]) -> list[str]:
    known = store.slugs()
    if not known:
        raise RunnerInputError(
            f"no review recorded in {store.runs.path} yet: run `review-runner run MANIFEST` first"
        )
    for slug in slugs:
        if slug not in known:
            raise RunnerInputError(
                f"unknown repo {slug!r}: no review of it in {store.runs.path} (known: {', '.join(known)})"
            )
    return list(dict.fromkeys(slugs)) or known


def list_findings(store: FindingsStore) -> Listed:
    """Every repo's last complete review; RunnerInputError when no review was recorded yet."""
    slugs = _require(store, ())
    reviews = tuple(r for r in (store.last_complete(s) for s in slugs) if r is not None)
    return Listed(reviews, {r.slug: store.baseline(r.slug) for r in reviews})


def accept_baseline(
    store: FindingsStore, slugs: Sequence[str], *, by: str, reason: str = ""
) -> list[Accepted]:
    """Accept the open findings of each repo's last complete review (every repo when ``slugs`` is empty).

    RunnerInputError, before anything is written, for no review yet, an unknown repo, or a named repo
    without a complete review.
    """
    chosen = _require(store, slugs)
    reviews = {s: store.last_complete(s) for s in chosen}
    missing = [s for s, r in reviews.items() if r is None]
    if missing and slugs:
        raise RunnerInputError(
            f"repo {missing[0]!r} has no complete review to accept (every review of it had an agent "
            "that failed or was cut off); run it again first"
        )
    at = utc_now()
    done = []
    for slug, review in reviews.items():
        if review is None:
            continue
        fingerprints = [t.fingerprint for t in review.tracking.open()]
        entries = Baseline().accept(fingerprints, by=by, at=at, run_id=review.run_id, reason=reason)
        added = store.accept(slug, entries.entries.values())
        done.append(Accepted(slug, review.run_id, added, len(entries.entries) - added))
    return done
