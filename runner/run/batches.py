"""A run on the Message Batches API: submit, wait, collect; never submit the same jobs twice.

Per round: collect every recorded batch that has ended (each result settles or releases its
own reservation, and a repo's report is written as soon as its agents are in), then submit
what is ready as one batch (split at the platform's limits): the jobs not done and not in
flight whose `after` job (concurrent mode's phase 1) has finished. Then wait and poll again.

Never paid twice: a batch is recorded as an intent before it is submitted and gets its id
right after (runner.run.batchrecords). A run that finds an intent it did not finish looks the
batch up in the API's list of recent batches and adopts it; if none can be it, the intent was
never submitted and its reservations are released; if it cannot tell, it stops and says so,
with the time, and submits nothing again. Collecting a batch again after a crash changes
nothing twice: each item records its outcome, and the ledger refuses a second settle.

Results: `succeeded` becomes findings as on the Messages path (a reply cut at max_tokens or
refused is marked so); `errored` with invalid_request_error fails the job with its reason;
other errors, `expired` and `canceled` are not billed, and the job goes in a next batch, up to
`max_attempts` times.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from jobs.agents import FINDINGS_TOOL_NAME
from jobs.findings import parse_content
from ledger.errors import AlreadyFinal, BudgetExceeded
from ledger.ledger import Admission, Reservation
from ledger.modes import Mode
from ledger.prices import usd
from runner.client import ApiClient, BatchApi, BatchInfo, CallError
from runner.errors import RunnerError
from runner.kinds import ErrorKind, JobStatus, RunStatus, StopReason
from runner.run.batchplan import Api
from runner.run.batchrecords import BatchRecords, BatchRow, BatchStatus, ItemRow
from runner.run.config import RunConfig
from runner.run.job import Job, JobOutcome
from runner.run.plan import Plan, RepoWork
from runner.run.reporting import write_if_complete
from runner.run.results import Progress, RunResult, Tally, job_counts, make_result
from runner.run.tracker import Tracker
from runner.run.worker import request_blocks, request_tools
from statedb import iso, parse_iso

__all__ = ["MAX_BATCH_BYTES", "MAX_BATCH_REQUESTS", "run_batches", "split", "unanswered"]

# The platform's limits per batch: 100,000 requests or 256 MB. We stay a little under the
# size cap: the JSON the SDK sends is not byte-identical to ours.
MAX_BATCH_REQUESTS = 100_000
MAX_BATCH_BYTES = 240 * 1024 * 1024
# The API's clock and ours may differ: a batch created up to this long before our intent
# can still be the one it recorded.
CLOCK_SLACK_S = 300.0
RETRIED = ("errored", "expired", "canceled")


class Execution(Protocol):
    """What runner.run.batch hands over: an admitted run, recorded and finished as it does."""

    config: RunConfig
    state: Any  # runner.run.batch.State (not imported: batch imports this module)
    run_id: str
    plan: Plan
    admission: Admission
    tracker: Tracker
    report_errors: dict[str, str]  # by slug: a report that could not be written
    reported: set[str]  # slugs whose report this attempt wrote

    @property
    def mode(self) -> Mode: ...

    @property
    def out_dir(self) -> Path: ...

    def record_jobs(self) -> None: ...

    def finish(self, stop: StopReason | None) -> RunResult: ...


def run_batches(execution: Execution, on_progress: Callable[[Progress], None]) -> RunResult:
    """Run an admitted execution on the batches API (called from runner.run.batch)."""
    execution.record_jobs()
    execution.state.runs.update_run(execution.run_id, api=Api.BATCHES)
    execution.out_dir.mkdir(parents=True, exist_ok=True)
    return _Session(execution, on_progress).run()


@dataclass
class _Session:
    execution: Execution
    on_progress: Callable[[Progress], None]
    records: BatchRecords = field(init=False)
    api: BatchApi = field(init=False)
    jobs: dict[str, Job] = field(init=False)
    works: dict[str, RepoWork] = field(init=False)
    tally: Tally = field(init=False)
    submit_failures: int = 0
    retry_submit: bool = False  # a submission failed and is worth another try
    budget_blocked: bool = False  # a reservation was refused; cleared when a batch is collected
    last_line: str = ""
    tries_before: dict[str, int] = field(default_factory=dict)  # attempts of earlier sessions

    def __post_init__(self) -> None:
        ex = self.execution
        self.records = BatchRecords(ex.state.runs)
        self.api = BatchApi(ApiClient(ex.config.base_url, ex.config.api_key))
        self.jobs = {j.id: j for j in ex.plan.jobs[ex.mode]}
        self.works = {w.spec.slug: w for w in ex.plan.works}
        if ex.config.resume is not None:
            self._retry_unfinished()
        rows = ex.state.runs.jobs(ex.run_id)
        counts = job_counts(rows)
        self.tally = Tally(sum(counts.values()), counts[JobStatus.DONE])

    @property
    def run_id(self) -> str:
        return self.execution.run_id

    def _retry_unfinished(self) -> None:
        """A resume tries failed and deferred jobs again, as on the Messages path."""
        runs = self.execution.state.runs
        busy = self.records.in_flight(self.run_id)
        for row in runs.jobs(self.run_id):
            unfinished = row.status in (JobStatus.FAILED, JobStatus.DEFERRED)
            if unfinished and row.id in self.jobs and row.id not in busy:
                runs.finish_job(row.id, JobStatus.PENDING, error=row.error)
        self.tries_before = self.records.tries(self.run_id)

    def _say(self, text: str) -> None:
        self.on_progress(self.tally.progress(self._in_flight(), message=text))

    def _in_flight(self) -> int:
        return len(self.records.in_flight(self.run_id))

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> RunResult:
        config = self.execution.config
        self.on_progress(self.tally.progress(self._in_flight()))
        stop: StopReason | None = None
        try:
            if config.resume is not None:
                self._release_unclaimed()
            self._recover_intents()
            while True:
                self._collect_ended()
                if stop is None:
                    stop = self._submit_ready()
                open_batches = self.records.batches(self.run_id, open_only=True)
                if not open_batches and not (self.retry_submit and config.wait):
                    break
                if not config.wait:
                    return self._submitted(open_batches)
                self._report_waiting(open_batches)
                time.sleep(config.poll_interval)
        except KeyboardInterrupt:
            # Nothing is lost: the batches go on at the platform; a resume collects them.
            self._say("interrupted: the batches keep running; `run --resume` collects them")
            stop = StopReason.INTERRUPTED
        if stop in (StopReason.BUDGET, StopReason.SPEND_CAP):
            self._defer_unsent(stop)
        return self.execution.finish(stop)

    def _submitted(self, open_batches: Sequence[BatchRow]) -> RunResult:
        ex = self.execution
        ex.state.runs.update_run(self.run_id, status=RunStatus.SUBMITTED)
        requests = sum(b.requests for b in open_batches)
        self._say(
            f"submitted: {requests} requests in {len(open_batches)} batch(es); collect with "
            f"`review-runner run --resume {self.run_id}`"
        )
        rows = ex.state.runs.jobs(self.run_id)
        totals = ex.state.ledger.run_totals(self.run_id)
        return make_result(
            self.run_id,
            ex.admission,
            RunStatus.SUBMITTED,
            None,
            job_counts(rows),
            totals,
            ex.out_dir,
            ex.plan,
        )

    def _report_waiting(self, open_batches: Sequence[BatchRow]) -> None:
        counts = dict.fromkeys(("processing", "succeeded", "errored", "expired", "canceled"), 0)
        for row in open_batches:
            if row.batch_id is None:
                continue
            try:
                info = self.api.retrieve(row.batch_id)
            except CallError:
                continue  # said at collection time; polling goes on
            for key, value in info.counts.items():
                counts[key] = counts.get(key, 0) + value
        line = (
            f"waiting: {len(open_batches)} batch(es), {counts['processing']} requests processing, "
            f"{counts['succeeded']} succeeded, {counts['errored']} errored, "
            f"{counts['expired'] + counts['canceled']} expired or canceled; "
            f"cost so far ${usd(self.tally.cost):.4f}"
        )
        if line != self.last_line:  # one line per change, not one per poll
            self.last_line = line
            self._say(line)

    # -- submitting -----------------------------------------------------------------------

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
            self._release(_reservation(i) for i in items)
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

    # -- collecting -----------------------------------------------------------------------------

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
            self._release(_reservation(i) for i in items.values())
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
        reservation = _reservation(item)
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

    def _release(self, reservations: Any) -> None:
        for reservation in reservations:
            if reservation is None:
                continue
            with suppress(AlreadyFinal):  # released before a crash
                self.execution.state.ledger.release(reservation)

    def _outcome(self, outcome: JobOutcome) -> None:
        ex = self.execution
        self.tally.add(outcome)
        slug = outcome.job.slug
        error = write_if_complete(
            self.run_id, slug, ex.mode, ex.out_dir, ex.state.runs, ex.tracker, ex.reported
        )
        self.on_progress(self.tally.progress(self._in_flight(), outcome=outcome))
        if error:  # that repo fails alone, as on the Messages path
            ex.report_errors[slug] = error
            self._say(f"failed {slug}: {error}")


def _reservation(item: ItemRow) -> Reservation | None:
    if item.reservation_id is None:
        return None
    return Reservation(id=item.reservation_id, month=item.reservation_month or "", worst_micros=0)


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
