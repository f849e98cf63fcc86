"""A run on the Message Batches API: submit, wait, collect; never submit the same jobs twice.

Per round: collect every recorded batch that has ended (each result settles or releases its
own reservation, and a repo's report is written as soon as its agents are in), then submit
what is ready as one batch (split at the platform's limits): the jobs not done and not in
flight whose `after` job (concurrent mode's phase 1) has finished. Then wait and poll again.

The steps are parts of one session: submitting, and finding a submission that was not
recorded, in runner.run.batchsubmit; collecting in runner.run.batchcollect; the state they
share in runner.run.batchsession. This module runs the loop, waits, and says `submitted`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ledger.prices import usd
from runner.client import CallError
from runner.kinds import RunStatus, StopReason
from runner.run.batchcollect import Collecting, unanswered
from runner.run.batchplan import Api
from runner.run.batchrecords import BatchRow
from runner.run.batchsession import Execution
from runner.run.batchsubmit import MAX_BATCH_BYTES, MAX_BATCH_REQUESTS, Submitting, split
from runner.run.results import Progress, RunResult, job_counts, make_result

__all__ = ["MAX_BATCH_BYTES", "MAX_BATCH_REQUESTS", "run_batches", "split", "unanswered"]


def run_batches(execution: Execution, on_progress: Callable[[Progress], None]) -> RunResult:
    """Run an admitted execution on the batches API (called from runner.run.batch)."""
    execution.record_jobs()
    execution.state.runs.update_run(execution.run_id, api=Api.BATCHES)
    execution.out_dir.mkdir(parents=True, exist_ok=True)
    return _Session(execution, on_progress).run()


class _Session(Submitting, Collecting):
    """One attempt at a run on the batches API: the loop, and waiting."""

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
