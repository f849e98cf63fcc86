"""Submitting Message Batches: never the same jobs twice, never paid twice.

Each batch is recorded as an intent (its custom_ids and jobs), its requests are reserved in
the ledger at their worst case and their reservations recorded, then it is submitted and its
id recorded (runner.run.batchrecords). A run that finds an intent it did not finish looks the
batch up in the API's list of recent batches and adopts it; if none can be it, the intent was
never submitted and its reservations are released; if it cannot tell, it stops and says so,
with the time, and submits nothing again. Reservations a crash left before they were recorded
are released by the resume (no batch item claims them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ledger.errors import BudgetExceeded
from ledger.ledger import Reservation
from runner.client import BatchInfo, CallError
from runner.errors import RunnerError
from runner.kinds import ErrorKind, JobStatus, StopReason
from runner.run.batchrecords import BatchRow, BatchStatus
from runner.run.batchsession import SessionState, reservation_of
from runner.run.job import Job, JobOutcome
from runner.run.worker import request_blocks, request_tools
from statedb import parse_iso

__all__ = ["MAX_BATCH_BYTES", "MAX_BATCH_REQUESTS", "Submitting", "split"]

# The platform's limits per batch: 100,000 requests or 256 MB. We stay a little under the
# size cap: the JSON the SDK sends is not byte-identical to ours.
MAX_BATCH_REQUESTS = 100_000
MAX_BATCH_BYTES = 240 * 1024 * 1024
# The API's clock and ours may differ: a batch created up to this long before our intent
# can still be the one it recorded.
CLOCK_SLACK_S = 300.0


class Submitting(SessionState):
    """The submitting steps of a batches session."""

    def _ready(self) -> list[Job]:
        """Jobs to submit now: pending, not in flight, and their `after` job finished."""
        rows = {r.id: r for r in self.execution.state.runs.jobs(self.run_id)}
        busy = self.records.in_flight(self.run_id)
        finished = (JobStatus.DONE, JobStatus.FAILED)

        def ready(job: Job) -> bool:
            row = rows.get(job.id)
            if row is None or row.status != JobStatus.PENDING or job.id in busy:
                return False
            before = rows.get(job.after) if job.after else None
            return job.after is None or before is None or before.status in finished

        return [j for j in self.jobs.values() if ready(j)]

    def _submit_ready(self) -> StopReason | None:
        self.retry_submit = False
        if self.budget_blocked:  # nothing settled since the budget said no
            return None
        ready = self._ready()
        requests = {job.id: self._request(job) for job in ready}
        sizes = [len(json.dumps(requests[job.id])) for job in ready]
        for chunk in split(ready, sizes):
            stop = self._submit(chunk, requests)
            if stop:
                return stop
        return None

    def _request(self, job: Job) -> dict[str, Any]:
        """The Messages params of `job` (built before anything is held)."""
        prompts = self.works[job.slug].prompts
        assert prompts is not None
        blocks = request_blocks(
            prompts.pack,
            prompts.instructions[job.agent],
            cache_ttl=job.cache_ttl if job.cache else None,
        )
        return {
            "model": job.model,
            "max_tokens": job.max_output,
            "system": prompts.system,
            "messages": [{"role": "user", "content": blocks}],
            **request_tools(),  # the findings tool, as on the Messages path
        }

    def _submit(
        self, chunk: list[Job], requests: Mapping[str, dict[str, Any]]
    ) -> StopReason | None:
        """Record the intent, reserve each request, submit, record the batch id."""
        ex = self.execution
        phase = 2 if any(j.after for j in chunk) else 1
        row, custom_ids = self.records.record_intent(self.run_id, phase, (j.id for j in chunk))
        held: dict[str, Reservation] = {}
        stop = None
        for job, cid in zip(chunk, custom_ids, strict=True):
            try:
                held[cid] = ex.state.ledger.reserve(
                    job.run_id,
                    job.id,
                    job.model,
                    job.input_tokens,
                    job.max_output,
                    counted=job.counted,
                    agent=job.key,
                    review=job.review,
                    mode=job.mode,
                    batch=True,
                    cache_ttl=job.cache_ttl,
                )
            except BudgetExceeded as exc:
                # Every request of a batch is held at its worst case at once. While a batch
                # is in flight its settling frees money: the rest waits for it. With none in
                # flight and nothing that fits, the budget is used up.
                self.budget_blocked = True
                if held or self._in_flight():
                    self._say(
                        f"{len(chunk) - len(held)} requests wait for the batches in flight to "
                        f"settle: the budget cannot hold their worst case yet ({exc})"
                    )
                else:
                    self._say(f"the month's budget is used up: {exc}")
                    stop = StopReason.BUDGET
                break
        self.records.set_reservations(row.key, {c: (r.id, r.month) for c, r in held.items()})
        if not held:
            self.records.set_status(row.key, BatchStatus.NOT_SENT, note="budget")
            return stop
        by_cid = dict(zip(custom_ids, chunk, strict=False))
        body = [{"custom_id": c, "params": requests[by_cid[c].id]} for c in held]
        try:
            info = self.api.create(body)
        except CallError as err:
            return self._submit_failed(row, err, [by_cid[c] for c in held], held) or stop
        self.records.submitted(row.key, info.id)
        self.submit_failures = 0
        self._say(f"submitted batch {info.id} (phase {phase}): {len(held)} requests")
        return stop

    def _submit_failed(
        self, row: BatchRow, err: CallError, jobs: list[Job], held: Mapping[str, Reservation]
    ) -> StopReason | None:
        if err.kind == ErrorKind.DROPPED:
            # The API may have created it: look for it before anything is sent again.
            self._say(f"no answer to the batch submission ({err}); looking for it")
            self._recover_intents()
            return None
        self._release(held.values())
        self.records.set_status(row.key, BatchStatus.NOT_SENT, note=str(err))
        runs = self.execution.state.runs
        if err.kind == ErrorKind.SPEND_CAP:
            self.execution.state.ledger.record_event("spend_cap", run_id=self.run_id)
            self._say(f"the account's spend limit is reached: sending nothing more ({err})")
            return StopReason.SPEND_CAP
        if err.kind == ErrorKind.AUTH:
            self._say(f"the API rejected the credentials: stopping ({err})")
            return StopReason.AUTH
        self.submit_failures += 1
        if err.retryable and self.submit_failures < self.execution.config.max_attempts:
            self._say(f"batch submission failed ({err}); trying again at the next poll")
            self.retry_submit = True
            return None
        for job in jobs:
            runs.finish_job(job.id, JobStatus.FAILED, error=f"batch submission failed: {err}")
            self._outcome(JobOutcome(job, JobStatus.FAILED, error=str(err)))
        return None

    def _defer_unsent(self, stop: StopReason) -> None:
        runs = self.execution.state.runs
        busy = self.records.in_flight(self.run_id)
        for row in runs.jobs(self.run_id):
            if row.status == JobStatus.PENDING and row.id not in busy:
                runs.finish_job(row.id, JobStatus.DEFERRED, error=f"not sent: {stop}")

    def _release_unclaimed(self) -> None:
        """Release the run's batch reservations that no batch item claims.

        The requests of a batch are reserved, then their reservation ids recorded, then the
        batch submitted: a process that died between the first two left reservations nothing
        would ever settle (the sweep skips batch entries), and it submitted nothing.
        """
        claimed = self.records.claimed_reservations(self.run_id)
        ledger = self.execution.state.ledger
        orphans = [r for r in ledger.batch_reservations(self.run_id) if r.id not in claimed]
        if orphans:
            self._release(orphans)
            self._say(
                f"{len(orphans)} reservations of this run that no batch claims were released "
                "(the process stopped before recording them; nothing was submitted with them)"
            )

    # -- finding an intent that was not recorded as submitted -----------------------------------

    def _recover_intents(self) -> None:
        """Adopt, or give up as never sent, each batch whose submission was not recorded."""
        intents = [
            b for b in self.records.batches(self.run_id, open_only=True) if b.status == "intent"
        ]
        if not intents:
            return
        since = min(parse_iso(b.intent_at) for b in intents) - CLOCK_SLACK_S
        try:
            known = self.records.known_batch_ids()
            candidates = [b for b in self.api.created_since(since) if b.id not in known]
        except CallError as err:
            raise RunnerError(
                f"a Message Batch may already exist for this run: a submission began at "
                f"{intents[0].intent_at} and was not recorded, and the API's list of batches "
                f"cannot be read ({err}). Nothing was submitted again; run "
                f"`review-runner run --resume {self.run_id}` once the API answers"
            ) from None
        for row in intents:
            match = self._match(row, candidates)
            if match is not None:
                candidates.remove(match)
                self.records.submitted(row.key, match.id, note="found in the API's list")
                self._say(
                    f"the batch submitted at {row.intent_at} was found ({match.id}): "
                    "collecting it, not submitting again"
                )
                continue
            items = self.records.items(row.key)
            self._release(reservation_of(i) for i in items)
            self.records.set_status(row.key, BatchStatus.NOT_SENT, note="not in the API's list")
            self._say(
                f"the batch whose submission began at {row.intent_at} was never created "
                f"(no such batch in the API's list): its {len(items)} jobs go in a new batch"
            )

    def _match(self, row: BatchRow, candidates: list[BatchInfo]) -> BatchInfo | None:
        """The listed batch that is `row`: same size, created after its intent, same custom_ids."""
        cids = {i.custom_id for i in self.records.items(row.key)}
        after = parse_iso(row.intent_at) - CLOCK_SLACK_S
        sized = [b for b in candidates if b.requests == len(cids) and b.created_at >= after]
        unfinished = []
        for batch in sized:
            if batch.status == "ended":
                if {line["custom_id"] for line in self.api.results(batch.id)} == cids:
                    return batch
            else:
                unfinished.append(batch)
        if len(unfinished) == 1:
            return unfinished[0]  # checked against our custom_ids when it ends (_collect)
        if unfinished:
            raise RunnerError(
                f"a Message Batch may already exist for this run: a submission of {len(cids)} "
                f"requests began at {row.intent_at} and was not recorded, and "
                f"{len(unfinished)} unfinished batches of that size were created since "
                f"({', '.join(b.id for b in unfinished)}). Nothing was submitted again; run "
                f"`review-runner run --resume {self.run_id}` once they have ended"
            )
        return None


def split(
    items: Sequence[Job],
    sizes: Sequence[int],
    *,
    max_requests: int = MAX_BATCH_REQUESTS,
    max_bytes: int = MAX_BATCH_BYTES,
) -> list[list[Job]]:
    """`items` in order, cut into batches within the platform's request and size limits.

    `sizes` are the items' JSON sizes in bytes; each item is counted with room for its
    custom_id and the framing around it.
    """
    chunks: list[list[Job]] = []
    chunk: list[Job] = []
    size = 0
    for item, item_size in zip(items, sizes, strict=True):
        item_size += 128
        if chunk and (len(chunk) >= max_requests or size + item_size > max_bytes):
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(item)
        size += item_size
    if chunk:
        chunks.append(chunk)
    return chunks
