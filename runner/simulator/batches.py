"""Message Batches in the platform's shapes: create, retrieve, list, cancel, delete, results.

A batch is processed all at once when its delay has passed (checked whenever it is looked at);
a batch canceled before that ends with every request canceled and nothing billed.
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

__all__ = ["BatchStore", "new_id"]

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_REQUESTS = 100_000
EXPIRY_SECONDS = 24 * 3600
# Processes one request (batch id, custom_id, params); returns the result of one results line.
Processor = Callable[[str, str, dict[str, Any]], dict[str, Any]]


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


class BatchStore:
    """Batches in memory, newest last."""

    def __init__(self, base_url: Callable[[], str], delay: float) -> None:
        self._base_url = base_url
        self.delay = delay
        self._batches: dict[str, _Batch] = {}

    def create(self, body: Any, now: float) -> dict[str, Any]:
        """Validate the batch body (400 on a bad shape) and queue it."""
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            raise ApiError(
                400, "invalid_request_error", "requests: Field required (a non-empty list)"
            )
        if len(requests) > MAX_REQUESTS:
            raise ApiError(
                400, "invalid_request_error", f"requests: at most {MAX_REQUESTS} requests per batch"
            )
        seen: set[str] = set()
        for i, item in enumerate(requests):
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
                raise ApiError(
                    400,
                    "invalid_request_error",
                    f"requests.{i}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$",
                )
            if custom_id in seen:
                raise ApiError(
                    400,
                    "invalid_request_error",
                    f"requests.{i}.custom_id: duplicate custom_id {custom_id!r}",
                )
            seen.add(custom_id)
            if not isinstance(item.get("params"), dict):
                raise ApiError(400, "invalid_request_error", f"requests.{i}.params: Field required")
        batch = _Batch(new_id("msgbatch_"), now, now + self.delay, list(requests))
        self._batches[batch.id] = batch
        return self._shape(batch)

    def _get(self, batch_id: str) -> _Batch:
        batch = self._batches.get(batch_id)
        if batch is None:
            raise ApiError(404, "not_found_error", f"message batch {batch_id!r} not found")
        return batch

    def advance(self, now: float, process: Processor) -> None:
        """End every batch whose time has come (or that is being canceled)."""
        for batch in self._batches.values():
            if batch.processing_status == "canceling":
                batch.results = [
                    {"custom_id": r["custom_id"], "result": {"type": "canceled"}}
                    for r in batch.requests
                ]
            elif batch.processing_status == "in_progress" and now >= batch.ready_at:
                batch.results = [
                    {
                        "custom_id": r["custom_id"],
                        "result": process(batch.id, r["custom_id"], r["params"]),
                    }
                    for r in batch.requests
                ]
            else:
                continue
            batch.processing_status = "ended"
            batch.ended_at = now

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
        """Delete an ended batch (400 while it is still processing)."""
        batch = self._get(batch_id)
        if batch.processing_status != "ended":
            raise ApiError(
                400,
                "invalid_request_error",
                "a message batch can only be deleted once it has ended; cancel it first",
            )
        del self._batches[batch_id]
        return {"id": batch_id, "type": "message_batch_deleted"}

    def results(self, batch_id: str) -> bytes:
        """The results as JSONL (400 until the batch has ended)."""
        batch = self._get(batch_id)
        if batch.processing_status != "ended":
            raise ApiError(
                400,
                "invalid_request_error",
                f"message batch {batch_id!r} is still {batch.processing_status}",
            )
        return b"".join(json.dumps(line).encode() + b"\n" for line in batch.results)

    def list(self, query: dict[str, str]) -> dict[str, Any]:
        """A page of batches, newest first, with after_id / before_id / limit."""
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            raise ApiError(400, "invalid_request_error", "limit: must be between 1 and 1000")
        ordered = list(reversed(self._batches))
        if "after_id" in query:
            ids = ordered.index(query["after_id"]) + 1 if query["after_id"] in ordered else 0
            window = ordered[ids:]
            page = window[:limit]
            has_more = len(window) > limit
        elif "before_id" in query:
            end = ordered.index(query["before_id"]) if query["before_id"] in ordered else 0
            window = ordered[:end]
            page = window[-limit:]
            has_more = len(window) > limit
        else:
            page = ordered[:limit]
            has_more = len(ordered) > limit
        data = [self._shape(self._batches[i]) for i in page]
        return {
            "data": data,
            "has_more": has_more,
            "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None,
        }

    def _shape(self, batch: _Batch) -> dict[str, Any]:
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        if batch.processing_status == "ended":
            for line in batch.results:
                counts[line["result"]["type"]] += 1
        else:
            counts["processing"] = len(batch.requests)
        ended = batch.processing_status == "ended"
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": batch.processing_status,
            "request_counts": counts,
            "ended_at": _iso(batch.ended_at),
            "created_at": _iso(batch.created_at),
            "expires_at": _iso(batch.created_at + EXPIRY_SECONDS),
            "archived_at": None,
            "cancel_initiated_at": _iso(batch.cancel_initiated_at),
            "results_url": f"{self._base_url()}/v1/messages/batches/{batch.id}/results"
            if ended
            else None,
        }
