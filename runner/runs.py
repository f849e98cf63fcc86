"""runs.db: every run, its repositories and its jobs, so that a run can be resumed.

Workers record a job's reply here the moment it arrives, before the ledger settles it:
a run killed at any point resumes without sending a done job again.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils.migrations import Migrations

from runner.errors import RunnerInputError, StateError
from statedb import ProcessId, SQLiteStore, iso, process_alive, process_identity, process_started
from statedb import utc_now as now

__all__ = ["JobKey", "JobRow", "RunRow", "Runs", "utc_now"]

MIGRATIONS = Migrations("review-runner-runs")


@MIGRATIONS()
def m001_initial(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY, manifest TEXT NOT NULL, name TEXT NOT NULL,
            requested_mode TEXT NOT NULL, mode TEXT, reason TEXT, status TEXT NOT NULL,
            out_dir TEXT NOT NULL, pid INTEGER, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)"""
    )
    db.execute(
        """CREATE TABLE repos (
            id TEXT PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs(id), slug TEXT NOT NULL,
            path TEXT NOT NULL, model TEXT NOT NULL, pack TEXT NOT NULL, pack_sha256 TEXT NOT NULL)"""
    )
    db.execute(
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs(id), slug TEXT NOT NULL,
            agent TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            result TEXT, usage TEXT, cost_micros INTEGER NOT NULL DEFAULT 0, request_id TEXT,
            error TEXT, updated_at TEXT NOT NULL)"""
    )
    db.execute("CREATE INDEX jobs_by_run ON jobs(run_id, status)")
    db.execute("CREATE INDEX runs_by_created ON runs(created_at)")


@MIGRATIONS()
def m002_repo_indexes(db: sqlite_utils.Database) -> None:
    # Reports read one repo's jobs at a time, as each repo completes.
    db.execute("CREATE INDEX jobs_by_repo ON jobs(run_id, slug)")
    db.execute("CREATE INDEX repos_by_run ON repos(run_id)")


@MIGRATIONS()
def m003_warm_flag(db: sqlite_utils.Database) -> None:
    # A cache warm-up is a flag on its job, not a pseudo-agent; rows of earlier runs say "_warm".
    db.execute("ALTER TABLE jobs ADD COLUMN warm INTEGER NOT NULL DEFAULT 0")
    db.execute("UPDATE jobs SET warm = 1 WHERE agent = '_warm'")


@MIGRATIONS()
def m004_findings(db: sqlite_utils.Database) -> None:
    # Findings across nights (runner.findings_store): one review per run and repo, one row per finding
    # with its status that night, and the fingerprints a team accepted (the baseline).
    db.execute(
        """CREATE TABLE finding_reviews (
            id TEXT PRIMARY KEY, run_id TEXT NOT NULL, slug TEXT NOT NULL, run_date TEXT NOT NULL,
            complete INTEGER NOT NULL, counts TEXT NOT NULL, recorded_at TEXT NOT NULL)"""
    )
    db.execute(
        """CREATE TABLE findings (
            id TEXT PRIMARY KEY, review_id TEXT NOT NULL REFERENCES finding_reviews(id),
            run_id TEXT NOT NULL, slug TEXT NOT NULL, fingerprint TEXT NOT NULL, path TEXT,
            category TEXT NOT NULL, severity TEXT NOT NULL, title TEXT NOT NULL, evidence TEXT NOT NULL,
            status TEXT NOT NULL, first_seen_run TEXT, first_seen_at TEXT, record TEXT NOT NULL)"""
    )
    db.execute(
        """CREATE TABLE finding_baselines (
            id TEXT PRIMARY KEY, slug TEXT NOT NULL, fingerprint TEXT NOT NULL,
            accepted_by TEXT NOT NULL, accepted_at TEXT NOT NULL, run_id TEXT NOT NULL,
            reason TEXT NOT NULL)"""
    )
    db.execute("CREATE INDEX finding_reviews_by_slug ON finding_reviews(slug, complete, run_date)")
    db.execute("CREATE INDEX findings_by_review ON findings(review_id)")
    db.execute("CREATE INDEX findings_by_fingerprint ON findings(slug, fingerprint)")
    db.execute("CREATE INDEX finding_baselines_by_slug ON finding_baselines(slug)")


@MIGRATIONS()
def m005_message_batches(db: sqlite_utils.Database) -> None:
    # The batches path (runner/run/batches.py): a batch is recorded as an intent before it is
    # submitted and gets its platform id right after, so a crash in between is found again
    # (by listing recent batches) instead of paying twice; each request maps back to its job.
    db.execute("ALTER TABLE runs ADD COLUMN api TEXT")
    db.execute(
        """CREATE TABLE message_batches (
            id TEXT PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs(id), batch_id TEXT,
            phase INTEGER NOT NULL, status TEXT NOT NULL, requests INTEGER NOT NULL,
            intent_at TEXT NOT NULL, submitted_at TEXT, ended_at TEXT, note TEXT)"""
    )
    db.execute(
        """CREATE TABLE batch_items (
            custom_id TEXT PRIMARY KEY, batch_key TEXT NOT NULL REFERENCES message_batches(id),
            run_id TEXT NOT NULL, job_id TEXT NOT NULL, reservation_id INTEGER,
            reservation_month TEXT, outcome TEXT)"""
    )
    db.execute("CREATE INDEX message_batches_by_run ON message_batches(run_id, status)")
    db.execute("CREATE INDEX batch_items_by_batch ON batch_items(batch_key)")
    db.execute("CREATE INDEX batch_items_by_job ON batch_items(job_id)")


@MIGRATIONS()
def m006_run_owner(db: sqlite_utils.Database) -> None:
    # The owning process as ledger reservations record it (pid + start time + host), so that a
    # resume can tell a live run from a dead one; and the manifest's digest, to recognise it.
    for column in ("pid_start", "host", "pid_started_at", "manifest_sha256"):
        db.execute(f"ALTER TABLE runs ADD COLUMN {column} TEXT")


#: A planned job as runs.db records it: (id, slug, agent, warm).
JobKey = tuple[str, str, str, bool]


def utc_now() -> str:
    """The current time as ISO-8601 UTC text, the form every *_at column holds."""
    return iso(now())


@dataclass(frozen=True)
class RunRow:
    id: str
    manifest: str
    name: str
    requested_mode: str
    mode: str | None
    reason: str | None
    status: str
    out_dir: str
    created_at: str
    api: str | None = None  # None: recorded before the batches path, i.e. messages
    manifest_sha256: str | None = None
    pid: int | None = None
    pid_start: str | None = None
    host: str | None = None
    pid_started_at: str | None = None

    @property
    def owner(self) -> ProcessId | None:
        """The process recorded as running this run (None: none recorded)."""
        return None if self.pid is None else ProcessId(self.pid, self.pid_start, self.host or "")


@dataclass(frozen=True)
class JobRow:
    id: str
    run_id: str
    slug: str
    agent: str
    status: str
    attempts: int
    result: dict[str, Any] | None
    usage: dict[str, Any] | None
    cost_micros: int
    error: str | None
    warm: bool = False


#: A run in these states may have a process sending its jobs.
_IN_PROGRESS = ("planned", "running")


def _run_row(row: Mapping[str, Any]) -> RunRow:
    return RunRow(**{k: row[k] for k in RunRow.__dataclass_fields__ if k in row})


class Runs(SQLiteStore):
    """The runs database. Safe to open from several processes (statedb's SQLiteStore)."""

    label = "runs database"
    error = StateError

    def __init__(self, path: Path) -> None:
        super().__init__(Path(path), MIGRATIONS, busy_timeout=30.0)

    def open(self) -> Runs:
        """Open (and migrate) the database now, so that a broken one fails before any work."""
        super().open()
        return self

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return self.transaction()

    def create_run(
        self,
        run_id: str,
        *,
        manifest: str,
        name: str,
        requested_mode: str,
        out_dir: str,
        repos: list[Mapping[str, Any]],
        jobs: Sequence[JobKey],
        manifest_sha256: str | None = None,
    ) -> None:
        """Record a new run, owned by this process, with its repos (slug, path, model, pack,
        pack_sha256) and jobs."""
        now = utc_now()
        with self._write() as db:
            db.execute(
                "INSERT INTO runs (id, manifest, manifest_sha256, name, requested_mode, status,"
                " out_dir, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'planned', ?, ?, ?)",
                [run_id, manifest, manifest_sha256, name, requested_mode, out_dir, now, now],
            )
            self._own(db, run_id)
            for repo in repos:
                db.execute(
                    "INSERT INTO repos (id, run_id, slug, path, model, pack, pack_sha256)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        f"{run_id}/{repo['slug']}",
                        run_id,
                        repo["slug"],
                        repo["path"],
                        repo["model"],
                        json.dumps(repo["pack"]),
                        repo["pack_sha256"],
                    ],
                )
            self._insert_jobs(db, run_id, jobs, now)

    @staticmethod
    def _own(db: sqlite3.Connection, run_id: str) -> None:
        me = process_identity()
        started = process_started(me.start)
        db.execute(
            "UPDATE runs SET pid = ?, pid_start = ?, host = ?, pid_started_at = ? WHERE id = ?",
            [me.pid, me.start, me.host, iso(started) if started else None, run_id],
        )

    def claim(self, run_id: str) -> RunRow | None:
        """Make this process the owner of `run_id` and mark it running, unless another live
        process still runs it: then change nothing and return its row (the one liveness check,
        statedb's, on pid + start time + host). Atomic, so two resumes cannot both win."""
        with self._write() as db:
            row = self._live_owner(db, run_id)
            if row is None:
                self._own(db, run_id)
                db.execute(
                    "UPDATE runs SET status = 'running', updated_at = ? WHERE id = ?",
                    [utc_now(), run_id],
                )
            return row

    def live_owner(self, run_id: str) -> RunRow | None:
        """The row of `run_id` if another live process runs it now, else None (reads only)."""
        with self.read() as db:
            return self._live_owner(db, run_id)

    @staticmethod
    def _live_owner(db: sqlite3.Connection, run_id: str) -> RunRow | None:
        cursor = db.execute("SELECT * FROM runs WHERE id = ?", [run_id])
        names = [d[0] for d in cursor.description]
        found = cursor.fetchone()
        if found is None:
            return None
        row = _run_row(dict(zip(names, found, strict=True)))
        owner, me = row.owner, process_identity()
        # A run that ended is no one's, even while the process that ended it lingers.
        if owner is None or row.status not in _IN_PROGRESS:
            return None
        # Rows from before start and host were recorded match this process by pid alone.
        if owner.pid == me.pid and owner.start in (None, me.start) and owner.host in ("", me.host):
            return None
        return row if process_alive(owner.pid, owner.start, owner.host or None) else None

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set some of a run's columns (status, mode, reason)."""
        fields["updated_at"] = utc_now()
        columns = ", ".join(f"{name} = ?" for name in fields)
        with self._write() as db:
            db.execute(f"UPDATE runs SET {columns} WHERE id = ?", [*fields.values(), run_id])

    def add_jobs(self, run_id: str, jobs: Sequence[JobKey]) -> None:
        """Add jobs to a run (a resumed run whose repo gained agents); existing ones are kept."""
        with self._write() as db:
            self._insert_jobs(db, run_id, jobs, utc_now())

    @staticmethod
    def _insert_jobs(db: sqlite3.Connection, run_id: str, jobs: Sequence[JobKey], now: str) -> None:
        for job_id, slug, agent, warm in jobs:
            db.execute(
                "INSERT OR IGNORE INTO jobs (id, run_id, slug, agent, warm, status, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                [job_id, run_id, slug, agent, int(warm), now],
            )

    def finish_job(
        self,
        job_id: str,
        status: str,
        *,
        result: Mapping[str, Any] | None = None,
        usage: Mapping[str, Any] | None = None,
        cost_micros: int = 0,
        request_id: str | None = None,
        error: str | None = None,
        attempts: int = 0,
    ) -> None:
        """Record a job's outcome. A job already done is never overwritten."""
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET status = ?, result = ?, usage = ?, cost_micros = ?, request_id = ?,"
                " error = ?, attempts = attempts + ?, updated_at = ? WHERE id = ? AND status != 'done'",
                [
                    status,
                    json.dumps(result) if result is not None else None,
                    json.dumps(usage) if usage is not None else None,
                    cost_micros,
                    request_id,
                    error,
                    attempts,
                    utc_now(),
                    job_id,
                ],
            )

    def set_job_cost(self, job_id: str, cost_micros: int) -> None:
        """Record what the ledger charged for a done job."""
        with self._write() as db:
            db.execute("UPDATE jobs SET cost_micros = ? WHERE id = ?", [cost_micros, job_id])

    def run(self, run_id: str) -> RunRow:
        """One run, by id or by "last" (the newest)."""
        if run_id == "last":
            rows = list(self.query("SELECT * FROM runs ORDER BY created_at DESC, id DESC LIMIT 1"))
            if not rows:
                raise RunnerInputError(f"--resume last: no run recorded in {self.path}")
        else:
            rows = list(self.query("SELECT * FROM runs WHERE id = ?", [run_id]))
            if not rows:
                raise RunnerInputError(f"--resume {run_id}: no such run in {self.path}")
        return _run_row(rows[0])

    def last_run_of(self, manifest: str, manifest_sha256: str) -> RunRow | None:
        """The newest run of a manifest: recorded at this path, or with this content."""
        rows = list(
            self.query(
                "SELECT * FROM runs WHERE manifest = ? OR manifest_sha256 = ?"
                " ORDER BY created_at DESC, id DESC LIMIT 1",
                [manifest, manifest_sha256],
            )
        )
        return _run_row(rows[0]) if rows else None

    def repack(self, run_id: str, slug: str, pack: Mapping[str, Any], pack_sha256: str) -> None:
        """A repo changed since it was recorded: keep its new pack, and make every one of its
        jobs pending again (done ones too), so that its report holds one pack's reviews."""
        with self._write() as db:
            db.execute(
                "UPDATE repos SET pack = ?, pack_sha256 = ? WHERE run_id = ? AND slug = ?",
                [json.dumps(pack), pack_sha256, run_id, slug],
            )
            db.execute(
                "UPDATE jobs SET status = 'pending', result = NULL, usage = NULL, cost_micros = 0,"
                " request_id = NULL, error = NULL, updated_at = ? WHERE run_id = ? AND slug = ?",
                [utc_now(), run_id, slug],
            )

    def skip_repo(self, run_id: str, slug: str, reason: str) -> None:
        """Mark the jobs of a repo not done as skipped, with the reason."""
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET status = 'skipped', error = ?, updated_at = ?"
                " WHERE run_id = ? AND slug = ? AND status != 'done'",
                [reason, utc_now(), run_id, slug],
            )

    def repos(self, run_id: str, *, slug: str | None = None) -> list[dict[str, Any]]:
        """The repos of a run (or its one repo `slug`), with their pack summaries."""
        sql, params = "SELECT * FROM repos WHERE run_id = ?", [run_id]
        if slug is not None:
            sql, params = sql + " AND slug = ?", [run_id, slug]
        rows = self.query(sql + " ORDER BY rowid", params)
        return [{**row, "pack": json.loads(row["pack"])} for row in rows]

    def jobs(self, run_id: str, *, slug: str | None = None) -> list[JobRow]:
        """Every job of a run (or of its repo `slug`), in the order they were planned."""
        sql, params = "SELECT * FROM jobs WHERE run_id = ?", [run_id]
        if slug is not None:
            sql, params = sql + " AND slug = ?", [run_id, slug]
        rows = self.query(sql + " ORDER BY rowid", params)
        return [
            JobRow(
                id=row["id"],
                run_id=row["run_id"],
                slug=row["slug"],
                agent=row["agent"],
                status=row["status"],
                attempts=row["attempts"],
                result=json.loads(row["result"]) if row["result"] else None,
                usage=json.loads(row["usage"]) if row["usage"] else None,
                cost_micros=row["cost_micros"],
                error=row["error"],
                warm=bool(row["warm"]),
            )
            for row in rows
        ]
