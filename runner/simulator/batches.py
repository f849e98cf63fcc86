"""Message Batches in the platform's shapes: create, retrieve, list, cancel, delete, results.

A batch ends all at once when its delay has passed (checked whenever the simulator is asked
anything); its requests are processed together by the simulator's `BatchProcessor`, which is
what keeps one batch's cache writes from its own items. A batch canceled before that ends with
every request canceled and nothing billed; one not done within 24 hours ends expired. Every
accepted batch stays in the batch log (even once deleted), so a test can check that no request
was ever submitted twice.
Not thread-safe by itself: used under the simulator's state lock.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from runner.simulator.prompt import ApiError

__all__ = ["MAX_REQUESTS", "BatchStore", "new_id"]

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_REQUESTS = 100_000
EXPIRY_SECONDS = 24 * 3600
RESULT_TYPES = ("succeeded", "errored", "canceled", "expired")
# Processes every request of one batch at once: (batch id, requests, now) -> result objects, in
# request order (each {"type": "succeeded", "message": ...}, {"type": "errored", ...}, ...).
BatchProcessor = Callable[[str, list[dict[str, Any]], float], list[dict[str, Any]]]
# Called for items that end without being processed (canceled, expired): (batch id, lines).
Unprocessed = Callable[[str, list[dict[str, Any]]], None]


def new_id(prefix: str) -> str:
    """An identifier in the platform's style (prefix + 24 base-62-ish characters)."""
    return prefix + uuid.uuid4().hex[:24]


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class _Batch:
    id: str
    created_at: float
    ready_at: float
    requests: list[dict[str, Any]]
    processing_status: str = "in_progress"
    ended_at: float | None = None
    cancel_initiated_at: float | None = None
    results: list[dict[str, Any]] = field(default_factory=list)


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", message)


def _validate(body: Any) -> list[dict[str, Any]]:
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not requests:
        raise _invalid("requests: Field required (a non-empty list)")
    if len(requests) > MAX_REQUESTS:
        raise _invalid(
            f"requests: List should have at most {MAX_REQUESTS} items after validation, "
            f"not {len(requests)}"
        )
    seen: set[str] = set()
    for i, item in enumerate(requests):
        custom_id = item.get("custom_id") if isinstance(item, dict) else None
        if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
            raise _invalid(f"requests.{i}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$")
        if custom_id in seen:
            raise _invalid(f"requests.{i}.custom_id: duplicate custom_id {custom_id!r}")
        seen.add(custom_id)
        if not isinstance(item.get("params"), dict):
            raise _invalid(f"requests.{i}.params: Field required")
    return list(requests)


class BatchStore:
    """Batches in memory, newest last, and the log of every batch ever accepted."""

    def __init__(self, base_url: Callable[[], str], delay: float) -> None:
        self._base_url = base_url
        self.delay = delay
        self._batches: dict[str, _Batch] = {}
        self._pending: list[_Batch] = []  # not ended yet, in creation order
        self._log: list[dict[str, Any]] = []

    def create(self, body: Any, now: float) -> dict[str, Any]:
        """Validate the batch body (400 on a bad shape) and queue it."""
        requests = _validate(body)
        batch = _Batch(new_id("msgbatch_"), now, now + self.delay, requests)
        self._batches[batch.id] = batch
        self._pending.append(batch)
        self._log.append(
            {
                "id": batch.id,
                "created_at": now,
                "created_iso": _iso(now),
                "custom_ids": [r["custom_id"] for r in requests],
                "ended_at": None,
                "processing_status": batch.processing_status,
                "request_counts": None,
            }
        )
        return self._shape(batch)

    def _get(self, batch_id: str) -> _Batch:
        batch = self._batches.get(batch_id)
        if batch is None:
            raise ApiError(404, "not_found_error", f"message batch {batch_id!r} not found")
        return batch

    def advance(self, now: float, process: BatchProcessor, unprocessed: Unprocessed) -> None:
        """End every batch whose time has come, is being canceled, or has expired (in order)."""
        if not self._pending:
            return
        still: list[_Batch] = []
        for batch in sorted(self._pending, key=lambda b: (b.ready_at, b.created_at)):
            if batch.processing_status == "canceling":
                results = self._unprocessed(batch, "canceled", unprocessed)
            elif self._expired(batch, now):
                results = self._unprocessed(batch, "expired", unprocessed)
            elif now >= batch.ready_at:
                results = process(batch.id, batch.requests, now)
            else:
                still.append(batch)
                continue
            batch.results = [
                {"custom_id": r["custom_id"], "result": res}
                for r, res in zip(batch.requests, results, strict=True)
            ]
            batch.processing_status = "ended"
            batch.ended_at = now
            self._note_end(batch)
        self._pending = sorted(still, key=lambda b: b.created_at)

    @staticmethod
    def _expired(batch: _Batch, now: float) -> bool:
        """True once 24 hours have passed for a batch that would not have ended by then."""
        deadline = batch.created_at + EXPIRY_SECONDS
        return batch.ready_at > deadline and now >= deadline

    @staticmethod
    def _unprocessed(batch: _Batch, kind: str, notify: Unprocessed) -> list[dict[str, Any]]:
        results = [{"type": kind} for _ in batch.requests]
        notify(batch.id, [{"custom_id": r["custom_id"], "result": kind} for r in batch.requests])
        return results

    def _note_end(self, batch: _Batch) -> None:
        for entry in self._log:
            if entry["id"] == batch.id:
                entry["ended_at"] = batch.ended_at
                entry["processing_status"] = "ended"
                entry["request_counts"] = self._counts(batch)

    def log(self) -> list[dict[str, Any]]:
        """Every accepted batch in creation order: id, times, custom_ids, status, counts (copies)."""
        return [
            {**e, "custom_ids": list(e["custom_ids"]), "request_counts": e["request_counts"]}
            for e in self._log
        ]

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        """The batch object."""
        return self._shape(self._get(batch_id))

    def cancel(self, batch_id: str, now: float) -> dict[str, Any]:
        """Start canceling an unfinished batch; an ended batch is returned unchanged."""
        batch = self._get(batch_id)
        if batch.processing_status == "in_progress":
            batch.processing_status = "canceling"
            batch.cancel_initiated_at = now
        return self._shape(batch)

    def delete(self, batch_id: str) -> dict[str, Any]:
        """Delete an ended batch (400 while it is still processing); the batch log keeps it."""
        batch = self._get(batch_id)
        if batch.processing_status != "ended":
            raise _invalid("a message batch can only be deleted once it has ended; cancel it first")
        del self._batches[batch_id]
        return {"id": batch_id, "type": "message_batch_deleted"}

    def results(self, batch_id: str) -> bytes:
        """The results as JSONL (400 until the batch has ended)."""
        batch = self._get(batch_id)
        if batch.processing_status != "ended":
            raise _invalid(f"message batch {batch_id!r} is still {batch.processing_status}")
        return b"".join(json.dumps(line).encode() + b"\n" for line in batch.results)

    def list(self, query: dict[str, str]) -> dict[str, Any]:
        """A page of batches, newest first, with after_id / before_id / limit (as the SDK pages)."""
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            raise _invalid("limit: must be between 1 and 1000")
        ordered = list(reversed(self._batches))
        if "after_id" in query:
            # An unknown cursor (a deleted batch) gives an empty last page, never a restart that
            # would make the SDK's auto-pagination loop.
            after = query["after_id"]
            window = ordered[ordered.index(after) + 1 :] if after in ordered else []
            page = window[:limit]
            has_more = len(window) > limit
        elif "before_id" in query:
            before = query["before_id"]
            window = ordered[: ordered.index(before)] if before in ordered else []
            page = window[-limit:]
            has_more = len(window) > limit
        else:
            page = ordered[:limit]
            has_more = len(ordered) > limit
        return {
            "data": [self._shape(self._batches[i]) for i in page],
            "has_more": has_more,
            "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None,
        }

    @staticmethod
    def _counts(batch: _Batch) -> dict[str, int]:
        counts = dict.fromkeys(("processing", *RESULT_TYPES), 0)
        if batch.processing_status == "ended":
            for line in batch.results:
                counts[line["result"]["type"]] += 1
        else:
            counts["processing"] = len(batch.requests)
        return counts

    def _shape(self, batch: _Batch) -> dict[str, Any]:
        ended = batch.processing_status == "ended"
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": batch.processing_status,
            "request_counts": self._counts(batch),
            "ended_at": _iso(batch.ended_at),
            "created_at": _iso(batch.created_at),
            "expires_at": _iso(batch.created_at + EXPIRY_SECONDS),
            "archived_at": None,
            "cancel_initiated_at": _iso(batch.cancel_initiated_at),
            "results_url": f"{self._base_url()}/v1/messages/batches/{batch.id}/results"
            if ended
            else None,
        }
