"""runs.db records of Message Batches: what a run submitted, so nothing is ever submitted twice.

A batch is recorded as an *intent* (its custom_ids and their jobs) before it is submitted, and
gets the platform's batch id right after. A process that dies in between leaves an intent: the
next attempt looks for the batch in the API's list instead of submitting the jobs again. Each
item keeps its ledger reservation (settled or released when its result is collected) and its
outcome once handled, so collecting an ended batch again after a crash changes nothing twice.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Mapping
from contextlib import closing
from dataclasses import dataclass
from enum import StrEnum

from runner.runs import Runs, utc_now
from statedb import parse_iso

__all__ = ["BatchRecords", "BatchRow", "BatchStatus", "ItemRow", "past_durations"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class BatchStatus(StrEnum):
    """A recorded batch's state."""

    INTENT = "intent"  # about to be submitted (or the process died while submitting)
    SUBMITTED = "submitted"  # the platform has it; its results are not collected yet
    COLLECTED = "collected"  # every result handled
    NOT_SENT = "not_sent"  # the submission failed, or the intent was never submitted


OPEN = (BatchStatus.INTENT, BatchStatus.SUBMITTED)


@dataclass(frozen=True)
class BatchRow:
    key: str
    run_id: str
    batch_id: str | None
    phase: int
    status: BatchStatus
    requests: int
    intent_at: str
    submitted_at: str | None


@dataclass(frozen=True)
class ItemRow:
    custom_id: str
    batch_key: str
    job_id: str
    reservation_id: int | None
    reservation_month: str | None
    outcome: str | None  # succeeded | errored | expired | canceled, once handled


class BatchRecords:
    """The message_batches and batch_items tables of runs.db."""

    def __init__(self, runs: Runs) -> None:
        self.runs = runs

    def record_intent(
        self, run_id: str, phase: int, job_ids: Iterable[str]
    ) -> tuple[BatchRow, list[str]]:
        """Record a batch about to be submitted; returns it and each job's custom_id (in order)."""
        job_ids = list(job_ids)
        now = utc_now()
        with self.runs.transaction() as db:
            (count,) = db.execute(
                "SELECT COUNT(*) FROM message_batches WHERE run_id = ?", [run_id]
            ).fetchone()
            key = f"{run_id}/b{count + 1}"
            # custom_id: ^[a-zA-Z0-9_-]{1,64}$, unique in the batch and across the run's batches.
            stem = _UNSAFE.sub("-", run_id)[:40]
            custom_ids = [f"{stem}_b{count + 1}_{i}" for i in range(len(job_ids))]
            db.execute(
                "INSERT INTO message_batches (id, run_id, phase, status, requests, intent_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [key, run_id, phase, BatchStatus.INTENT, len(job_ids), now],
            )
            # RETURNING names the key: on PostgreSQL an INSERT returns `id` otherwise
            # (statedb.dialect), and batch_items has none.
            db.executemany(
                "INSERT INTO batch_items (custom_id, batch_key, run_id, job_id) VALUES (?, ?, ?, ?)"
                " RETURNING custom_id",
                [(cid, key, run_id, job) for cid, job in zip(custom_ids, job_ids, strict=True)],
            )
        row = BatchRow(key, run_id, None, phase, BatchStatus.INTENT, len(job_ids), now, None)
        return row, custom_ids

    def set_reservations(self, key: str, held: Mapping[str, tuple[int, str]]) -> None:
        """Record each item's ledger reservation (id, month); drop the items that got none."""
        with self.runs.transaction() as db:
            for cid, (entry, month) in held.items():
                db.execute(
                    "UPDATE batch_items SET reservation_id = ?, reservation_month = ?"
                    " WHERE custom_id = ?",
                    [entry, month, cid],
                )
            placeholders = ", ".join("?" for _ in held) or "''"
            db.execute(
                f"DELETE FROM batch_items WHERE batch_key = ? AND custom_id NOT IN ({placeholders})",
                [key, *held],
            )
            db.execute("UPDATE message_batches SET requests = ? WHERE id = ?", [len(held), key])

    def submitted(self, key: str, batch_id: str, *, note: str | None = None) -> None:
        """The platform accepted the batch as `batch_id`."""
        with self.runs.transaction() as db:
            db.execute(
                "UPDATE message_batches SET batch_id = ?, status = ?, submitted_at = ?, note = ?"
                " WHERE id = ?",
                [batch_id, BatchStatus.SUBMITTED, utc_now(), note, key],
            )

    def set_status(
        self, key: str, status: BatchStatus, *, note: str | None = None, ended_at: str | None = None
    ) -> None:
        """Move a batch to `status` (collected, or not sent with the reason)."""
        with self.runs.transaction() as db:
            db.execute(
                "UPDATE message_batches SET status = ?, note = COALESCE(?, note),"
                " ended_at = COALESCE(?, ended_at) WHERE id = ?",
                [status, note, ended_at, key],
            )

    def batches(self, run_id: str, *, open_only: bool = False) -> list[BatchRow]:
        """The run's batches, oldest first (only those not collected or given up, if `open_only`)."""
        sql = "SELECT * FROM message_batches WHERE run_id = ?"
        if open_only:
            sql += " AND status IN ('intent', 'submitted')"
        return [
            BatchRow(
                key=r["id"],
                run_id=r["run_id"],
                batch_id=r["batch_id"],
                phase=r["phase"],
                status=BatchStatus(r["status"]),
                requests=r["requests"],
                intent_at=r["intent_at"],
                submitted_at=r["submitted_at"],
            )
            for r in self.runs.query(sql + " ORDER BY rowid", [run_id])
        ]

    def items(self, key: str) -> list[ItemRow]:
        """A batch's items, in submission order."""
        return [
            ItemRow(
                custom_id=r["custom_id"],
                batch_key=r["batch_key"],
                job_id=r["job_id"],
                reservation_id=r["reservation_id"],
                reservation_month=r["reservation_month"],
                outcome=r["outcome"],
            )
            for r in self.runs.query(
                "SELECT * FROM batch_items WHERE batch_key = ? ORDER BY rowid", [key]
            )
        ]

    def set_outcome(self, custom_id: str, outcome: str) -> None:
        """Record that an item's result was handled (ledger and job row updated)."""
        with self.runs.transaction() as db:
            db.execute(
                "UPDATE batch_items SET outcome = ? WHERE custom_id = ?", [outcome, custom_id]
            )

    def tries(self, run_id: str) -> dict[str, int]:
        """Per job of the run: how many of its batch requests ended without a reply."""
        rows = self.runs.query(
            "SELECT job_id, COUNT(*) AS n FROM batch_items WHERE run_id = ?"
            " AND outcome IN ('errored', 'expired', 'canceled') GROUP BY job_id",
            [run_id],
        )
        return {r["job_id"]: r["n"] for r in rows}

    def in_flight(self, run_id: str) -> set[str]:
        """Jobs of the run in a batch not collected yet (submitted, or perhaps submitted)."""
        rows = self.runs.query(
            "SELECT i.job_id FROM batch_items i JOIN message_batches b ON b.id = i.batch_key"
            " WHERE i.run_id = ? AND b.status IN ('intent', 'submitted') AND i.outcome IS NULL",
            [run_id],
        )
        return {r["job_id"] for r in rows}

    def claimed_reservations(self, run_id: str) -> set[int]:
        """The ledger entries the run's batch items hold (recorded right after reserving)."""
        rows = self.runs.query(
            "SELECT reservation_id FROM batch_items WHERE run_id = ? AND reservation_id IS NOT NULL",
            [run_id],
        )
        return {r["reservation_id"] for r in rows}

    def known_batch_ids(self) -> set[str]:
        """Every platform batch id recorded by any run (a listed batch among them is not new)."""
        rows = self.runs.query("SELECT batch_id FROM message_batches WHERE batch_id IS NOT NULL")
        return {r["batch_id"] for r in rows}


def past_durations(runs: Runs, limit: int = 20) -> list[float]:
    """Seconds from submission to end of the most recent collected batches in `runs`.

    Read-only on SQLite (for `plan`, which writes nothing there): no file, or one without
    batches, gives []. On PostgreSQL through the store, as every other read of runs.
    """
    sql = (
        "SELECT submitted_at, ended_at FROM message_batches WHERE status = 'collected'"
        " AND submitted_at IS NOT NULL AND ended_at IS NOT NULL"
        " ORDER BY rowid DESC LIMIT ?"
    )
    if runs.remote is not None:
        try:
            rows = [(r["submitted_at"], r["ended_at"]) for r in runs.query(sql, [limit])]
        except runs.error:
            return []
    elif not runs.path.exists():
        return []
    else:
        try:
            with closing(sqlite3.connect(f"file:{runs.path}?mode=ro", uri=True)) as conn:
                rows = conn.execute(sql, [limit]).fetchall()
        except sqlite3.Error:
            return []
    return [max(0.0, parse_iso(ended) - parse_iso(sent)) for sent, ended in rows]
