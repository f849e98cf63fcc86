"""The worker pool: submits jobs as slots free up, collects outcomes, stops cleanly.

Jobs are queued repo by repo, so in concurrent mode a repo's agent jobs go out together.
Each worker process receives every repo's pack and prompts once, through the pool's
initializer; a submitted Job is a few numbers and names.
Ctrl-C once stops new submissions and waits for the requests in flight (they are paid
for); a second Ctrl-C abandons them.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from types import FrameType
from typing import Any

from runner.kinds import JobStatus, StopReason
from runner.run.job import Job, JobOutcome
from runner.run.plan import RepoWork
from runner.run.worker import WorkerConfig, init_worker, run_job

__all__ = ["PoolResult", "run_pool"]


@dataclass(frozen=True)
class PoolResult:
    outcomes: tuple[JobOutcome, ...]
    unsent: tuple[Job, ...]  # never submitted (stopped early)
    stop: StopReason | None  # why submissions stopped


class _Interrupts:
    """First SIGINT: ask to stop. Second: raise KeyboardInterrupt (abort)."""

    def __init__(self, on_first: Callable[[], None]) -> None:
        self.count = 0
        self._on_first = on_first
        self._previous: Any = None

    def __enter__(self) -> _Interrupts:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 1:
            self._on_first()
        else:
            raise KeyboardInterrupt


def run_pool(
    jobs: Iterable[Job],
    config: WorkerConfig,
    repos: Mapping[str, RepoWork],
    *,
    workers: int,
    on_outcome: Callable[[JobOutcome, int], None],
    on_stopping: Callable[[StopReason, int], None] | None = None,
) -> PoolResult:
    """Run `jobs` on `workers` processes; `on_outcome(outcome, in_flight)` is called in this process.

    `repos` (by slug, with packs and prompts) goes to each worker process once.
    """
    jobs = list(jobs)
    ready, waiting = _queues(jobs)
    in_flight: dict[Future[JobOutcome], Job] = {}
    outcomes: list[JobOutcome] = []
    stop: StopReason | None = None

    def request_stop(reason: StopReason) -> None:
        nonlocal stop
        if stop is None:
            stop = reason
            if on_stopping:
                on_stopping(reason, len(in_flight))

    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=max(1, workers),
        mp_context=context,
        initializer=init_worker,
        initargs=(config, {slug: repos[slug] for slug in {j.slug for j in jobs}}),
    )
    try:
        with _Interrupts(lambda: request_stop(StopReason.INTERRUPTED)):
            while in_flight or (ready and stop is None):
                while ready and stop is None and len(in_flight) < workers:
                    job = ready.popleft()
                    in_flight[pool.submit(run_job, job)] = job
                done, _ = wait(in_flight, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    job = in_flight.pop(future)
                    outcome = _collect(future, job)
                    outcomes.append(outcome)
                    # Whatever became of it, its followers may go now, and go first.
                    ready.extendleft(reversed(waiting.pop(job.id, [])))
                    on_outcome(outcome, len(in_flight))
                    if outcome.stop:
                        request_stop(outcome.stop)
    except BaseException:
        # Abort: do not wait for requests in flight; their workers die with the pool and
        # their reservations become unknown (charged at the worst case) in the ledger.
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    unsent = [*ready, *(s for group in waiting.values() for s in group)]
    return PoolResult(tuple(outcomes), tuple(unsent), stop)


def _queues(jobs: list[Job]) -> tuple[deque[Job], dict[str, list[Job]]]:
    """The jobs ready to go, and those waiting (by the id of the job they come after)."""
    present = {job.id for job in jobs}
    # A job waits for the one it comes `after` (a repo's cache warm-up), if that one is to run.
    ready = deque(j for j in jobs if j.after not in present)
    waiting: dict[str, list[Job]] = {}
    for job in jobs:
        if job.after is not None and job.after in present:
            waiting.setdefault(job.after, []).append(job)
    return ready, waiting


def _collect(future: Future[JobOutcome], job: Job) -> JobOutcome:
    try:
        return future.result()
    except Exception as exc:  # a worker crashed or raised: the job failed, the run goes on
        return JobOutcome(job, JobStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
