"""Collecting ended Message Batches: each result settles or releases its own reservation.

`succeeded` becomes findings as on the Messages path (a reply cut at max_tokens or refused is
marked so); `errored` with invalid_request_error fails the job with its reason; other errors,
`expired` and `canceled` are not billed, and the job goes in a next batch, up to
`max_attempts` times. A repo's report is written as soon as its agents are in. Collecting a
batch again after a crash changes nothing twice: each item records its outcome, and the
ledger refuses a second settle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobs.agents import FINDINGS_TOOL_NAME
from jobs.findings import parse_content
from ledger.errors import AlreadyFinal
from ledger.ledger import Reservation
from runner.client import BatchInfo, CallError
from runner.kinds import JobStatus
from runner.run.batchrecords import BatchRow, BatchStatus, ItemRow
from runner.run.batchsession import SessionState, reservation_of
from runner.run.job import Job, JobOutcome
from statedb import iso

__all__ = ["Collecting", "unanswered"]


class Collecting(SessionState):
    """The collecting steps of a batches session."""

    def _collect_ended(self) -> None:
        for row in self.records.batches(self.run_id, open_only=True):
            if row.status != BatchStatus.SUBMITTED or row.batch_id is None:
                continue
            try:
                info = self.api.retrieve(row.batch_id)
                if info.status != "ended":
                    continue
                lines = self.api.results(row.batch_id)
            except CallError as err:
                self._say(f"batch {row.batch_id}: cannot read it now ({err}); polling on")
                continue
            self._collect(row, info, lines)

    def _collect(self, row: BatchRow, info: BatchInfo, lines: list[dict[str, Any]]) -> None:
        items = {i.custom_id: i for i in self.records.items(row.key)}
        results = {line["custom_id"]: line["result"] for line in lines}
        if not items.keys() & results.keys():
            # An adopted batch that was someone else's: ours was never created.
            self._release(reservation_of(i) for i in items.values())
            self.records.set_status(row.key, BatchStatus.NOT_SENT, note=f"{info.id} not ours")
            self._say(f"batch {info.id} holds none of this run's requests: submitting them anew")
            return
        for cid, item in items.items():
            if item.outcome is None:
                self._handle(item, results.get(cid) or {"type": "expired"})
        ended = iso(info.ended_at) if info.ended_at else None
        self.records.set_status(row.key, BatchStatus.COLLECTED, ended_at=ended)
        self.budget_blocked = False
        self._say(
            f"batch {info.id} ended: {info.counts.get('succeeded', 0)} succeeded, "
            f"{info.counts.get('errored', 0)} errored, "
            f"{info.counts.get('expired', 0) + info.counts.get('canceled', 0)} expired or canceled"
        )

    def _handle(self, item: ItemRow, result: Mapping[str, Any]) -> None:
        """One result: the job's row, the ledger, the report; then the item is marked handled."""
        kind = str(result.get("type"))
        job = self.jobs.get(item.job_id)
        reservation = reservation_of(item)
        runs = self.execution.state.runs
        if kind == "succeeded" and job is not None:
            outcome = self._succeeded(job, result["message"], reservation)
        elif job is None:  # a job no longer planned (its repo left the manifest): money only
            if kind == "succeeded":
                self._settle(reservation, result["message"])
            else:
                self._release([reservation])
            self.records.set_outcome(item.custom_id, kind)
            return
        else:
            self._release([reservation])
            error, final = unanswered(result)
            tries = (
                self.records.tries(self.run_id).get(job.id, 0)
                - self.tries_before.get(job.id, 0)
                + 1
            )
            if final or tries >= self.execution.config.max_attempts:
                text = error if final else f"{error} (after {tries} batch attempts)"
                runs.finish_job(job.id, JobStatus.FAILED, error=text, attempts=1)
                outcome = JobOutcome(job, JobStatus.FAILED, error=text, attempts=tries)
            else:
                # Not billed: it goes in the next batch.
                runs.finish_job(job.id, JobStatus.PENDING, error=error, attempts=1)
                outcome = None
        self.records.set_outcome(item.custom_id, kind)
        if outcome is not None:
            self._outcome(outcome)

    def _succeeded(
        self, job: Job, message: Mapping[str, Any], reservation: Reservation | None
    ) -> JobOutcome:
        # The same parser as the Messages path: the findings tool's input, else the text.
        parsed = parse_content(
            message.get("content") or [],
            message.get("stop_reason"),
            agent=job.agent,
            tool_name=FINDINGS_TOOL_NAME,
            pack=self.works[job.slug].pack,
        )
        usage = _usage(message)
        runs = self.execution.state.runs
        # As on the Messages path: the reply is recorded before the ledger settles.
        runs.finish_job(
            job.id,
            JobStatus.DONE,
            result=parsed.to_dict(),
            usage=usage,
            request_id=message.get("id"),
            attempts=1,
        )
        cost = self._settle(reservation, message)
        if cost is None:  # settled before a crash, and its cost recorded then
            cost = 0
        else:
            runs.set_job_cost(job.id, cost)
        return JobOutcome(
            job, JobStatus.DONE, result=parsed.to_dict(), usage=usage, cost_micros=cost, attempts=1
        )

    def _settle(self, reservation: Reservation | None, message: Mapping[str, Any]) -> int | None:
        """The cost charged now; None if it was charged before (a collection cut short)."""
        if reservation is None:
            return 0
        try:
            return self.execution.state.ledger.settle(
                reservation,
                _usage(message),
                request_id=message.get("id"),
                service_tier="batch",
                batch=True,
            )
        except AlreadyFinal:  # settled before a crash: charged once, never twice
            return None


def _usage(message: Mapping[str, Any]) -> dict[str, Any]:
    usage = message.get("usage") or {}
    return {k: v for k, v in usage.items() if v is not None}


def unanswered(result: Mapping[str, Any]) -> tuple[str, bool]:
    """(what to say, whether it is final) of a result that is not `succeeded`.

    Only invalid_request_error is final (the same request would fail again); other errors,
    `expired` and `canceled` were not billed and are worth a next batch.
    """
    kind = str(result.get("type"))
    if kind != "errored":
        return f"batch request {kind} (not billed)", False
    error = (result.get("error") or {}).get("error") or {}
    text = f"batch request errored: {error.get('type')}: {error.get('message')}"
    return text, error.get("type") == "invalid_request_error"
