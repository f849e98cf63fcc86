"""The simulator's Message Batches side: processing a batch's requests, billing, the batch log.

A mixin of `Simulator` (server.py), kept apart so each module stays small; it uses the state
the Simulator owns (the lock, cache, counters, the request log). Batch requests bypass the
Messages buckets and fault rates (batch traffic does not use the Messages API's per-minute
limits) and are billed at the batch discount; their outcomes come from their own seeded
generator (`batch_expire_rate`, `batch_error_rate`).
"""

from __future__ import annotations

import random
import threading
from typing import TYPE_CHECKING, Any

from ledger.prices import Price, cost_micros
from runner.modelclass import model_class
from runner.simulator.batches import BatchStore, new_id
from runner.simulator.cache import CachePlan, PromptCache
from runner.simulator.config import SimConfig
from runner.simulator.exchange import Admitted
from runner.simulator.prompt import ApiError, validate_message_request
from runner.simulator.replies import Reply

__all__ = ["BatchSide"]


def _errored(exc: ApiError, request_id: str) -> dict[str, Any]:
    error = {"type": exc.error_type, "message": exc.message}
    return {"type": "errored", "error": {"type": "error", "error": error, "request_id": request_id}}


class BatchSide:
    """Message Batches for the Simulator; every method here expects the Simulator's state."""

    config: SimConfig
    _lock: threading.Lock
    _batches: BatchStore
    _batch_rng: random.Random
    _cache: PromptCache
    _stats: dict[str, Any]

    if TYPE_CHECKING:  # provided by Simulator

        def now(self) -> float: ...
        def new_record(self, method: str, path: str, job: str | None) -> dict[str, Any]: ...
        def reply_for(self, adm: Admitted) -> Reply: ...
        def message_of(self, adm: Admitted, message_id: str) -> dict[str, Any]: ...
        def _price(self, model: str) -> Price: ...
        def _spend_capped(self) -> bool: ...
        def _spend_cap_error(self) -> ApiError: ...
        def _write_record(self, record: dict[str, Any]) -> None: ...
        def _count_billed(
            self, usage: dict[str, Any], micros: int, *, batch: bool = False
        ) -> None: ...

    def batch_log(self) -> list[dict[str, Any]]:
        """Every batch ever accepted, in creation order, deleted ones included (copies).

        Each entry: `id`, `created_at` (epoch s), `created_iso`, `custom_ids` (in request order),
        `processing_status`, `ended_at`, `request_counts` (None until ended).
        """
        with self._lock:
            self._advance_batches(self.now())
            return self._batches.log()

    # -- batches -----------------------------------------------------------------------------

    def _advance_batches(self, now: float) -> None:
        """End the batches whose time has come; the caller holds the lock."""
        self._batches.advance(now, self._process_batch, self._record_unprocessed)

    def _batch_record(self, batch_id: str, custom_id: str, now: float) -> dict[str, Any]:
        record = self.new_record("BATCH", f"/v1/messages/batches/{batch_id}#{custom_id}", None)
        record.update(arrival=now, start=now, end=now, batch=True)
        record.update(batch_id=batch_id, custom_id=custom_id)
        return record

    def _record_unprocessed(self, batch_id: str, lines: list[dict[str, Any]]) -> None:
        for line in lines:
            record = self._batch_record(batch_id, line["custom_id"], self.now())
            record.update(start=None, result=line["result"])
            self._stats[f"batch_{line['result']}"] += 1
            self._write_record(record)

    def _process_batch(
        self, batch_id: str, requests: list[dict[str, Any]], now: float
    ) -> list[dict[str, Any]]:
        """Process every request of one batch (under the lock; no rate limits for batches).

        Items of one batch never read each other's cache writes: every item plans against the
        cache as it was when the batch began, and the writes are committed when it ends.
        """
        results: list[dict[str, Any]] = []
        writes: list[CachePlan] = []
        for request in requests:
            record = self._batch_record(batch_id, request["custom_id"], now)
            result, plan = self._batch_item(record, request["params"], now)
            if plan is not None:
                writes.append(plan)
            record["result"] = result["type"]
            self._stats[f"batch_{result['type']}"] += 1
            self._write_record(record)
            results.append(result)
        for plan in writes:
            self._cache.commit(plan, now, ready_at=now)
        return results

    def _batch_item(
        self, record: dict[str, Any], params: dict[str, Any], now: float
    ) -> tuple[dict[str, Any], CachePlan | None]:
        cfg = self.config
        draw = self._batch_rng.random()  # drawn for every item: outcomes follow item order
        try:
            if "stream" in params:
                raise ApiError(400, "invalid_request_error", "stream: not supported in batches")
            prompt = validate_message_request(params)
            if params["max_tokens"] == 0:
                raise ApiError(
                    400,
                    "invalid_request_error",
                    "max_tokens: must be at least 1 in a Message Batch "
                    "(max_tokens: 0 cache pre-warming is only available on the Messages API)",
                )
            price = self._price(prompt.model)
        except ApiError as exc:
            record.update(status=exc.status, error_type=exc.error_type)
            return _errored(exc, record["id"]), None
        record.update(model=prompt.model, model_class=model_class(prompt.model))
        if draw < cfg.batch_expire_rate:
            record.update(status=None, error_type="expired")
            return {"type": "expired"}, None
        if draw < cfg.batch_expire_rate + cfg.batch_error_rate:
            # Split the error band evenly between the two retryable server-side errors.
            half = cfg.batch_expire_rate + cfg.batch_error_rate / 2
            fault = (
                ApiError(500, "api_error", "Internal server error (simulated)")
                if draw < half
                else ApiError(529, "overloaded_error", "Overloaded")
            )
            record.update(status=fault.status, error_type=fault.error_type)
            return _errored(fault, record["id"]), None
        plan = self._cache.plan(prompt, now)
        adm = Admitted(record, params, prompt, plan, price, False, {})
        self.reply_for(adm)
        message = self.message_of(adm, new_id("msg_"))
        message["usage"]["service_tier"] = "batch"
        micros = cost_micros(price, message["usage"], batch=True)
        record.update(usage=message["usage"], cost_micros=micros, billed=True, status=200)
        self._count_billed(message["usage"], micros, batch=True)
        return {"type": "succeeded", "message": message}, plan

    def batches(
        self,
        action: str,
        batch_id: str | None = None,
        body: Any = None,
        query: dict[str, str] | None = None,
        record: dict[str, Any] | None = None,
    ) -> Any:
        """Dispatch one Message Batches call under the lock (create/retrieve/list/cancel/delete/results).

        A created batch's id and custom_ids go into `record` (its request's log record), so the
        JSONL log of `simulator serve --log` shows what was submitted, too.
        """
        with self._lock:
            now = self.now()
            if action == "create" and self._spend_capped():
                raise self._spend_cap_error()
            self._advance_batches(now)
            store = self._batches
            if action == "create":
                batch = store.create(body, now)
                self._stats["batches"] += 1
                if record is not None:
                    record["batch_id"] = batch["id"]
                    record["custom_ids"] = [r["custom_id"] for r in body["requests"]]
                return batch
            if action == "list":
                return store.list(query or {})
            assert batch_id is not None
            if action == "retrieve":
                return store.retrieve(batch_id)
            if action == "cancel":
                return store.cancel(batch_id, now)
            if action == "delete":
                return store.delete(batch_id)
            return store.results(batch_id)
