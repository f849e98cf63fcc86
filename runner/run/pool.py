"""The worker pool: sends jobs as workers free up, collects outcomes, stops cleanly.

Jobs are queued repo by repo, so in concurrent mode a repo's agent jobs go out together.
Each worker is a process of its own with a pipe to this one, so the pool knows which job
each one holds; it receives every repo's pack and prompts once, when it starts, and a job
sent to it is a few numbers and names.

A worker that dies (SIGKILL, OOM) is replaced: the ledger's sweep marks its reservation
unknown (charged at the worst case), and its job is sent again unless runs.db already
records its reply.

Ctrl-C once stops new requests, here and in the workers (a shared event they check before
each send, see runner.run.worker), and waits for the requests in flight (they are paid
for); a second Ctrl-C abandons them. A state store that cannot be used (corrupt, locked)
met inside a worker stops the run the same way and is raised here, once, when the requests
in flight are back.
"""

from __future__ import annotations

import multiprocessing
import signal
import sqlite3
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from ledger.errors import LedgerStoreError
from ledger.ledger import Ledger
from runner.errors import StateError
from runner.kinds import JobStatus, StopReason
from runner.run.job import Job, JobOutcome
from runner.run.plan import RepoWork
from runner.run.worker import Raised, WorkerConfig, serve
from runner.runs import Runs
from statedb import StatePaths, StoreError

__all__ = ["MAX_DEATHS", "PoolResult", "run_pool"]

# A job whose worker died this many times is failed rather than sent again: the job
# itself (its pack, its reply) is likely what kills the process.
MAX_DEATHS = 3
# Errors that no other job could escape either: the run stops and the error is raised.
FATAL_ERRORS = (StoreError, StateError, LedgerStoreError, sqlite3.DatabaseError)


@dataclass(frozen=True)
class PoolResult:
    outcomes: tuple[JobOutcome, ...]
    unsent: tuple[Job, ...]  # never sent (stopped early)
    stop: StopReason | None  # why sending stopped
    worker_deaths: int = 0


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


@dataclass
class _Slot:
    """One worker process, this end of its pipe, and the job it holds."""

    process: BaseProcess
    conn: Connection
    job: Job | None = None


@dataclass
class _Workers:
    """The worker processes of one run."""

    config: WorkerConfig
    repos: dict[str, RepoWork]
    context: Any = field(default_factory=lambda: multiprocessing.get_context("spawn"))
    slots: list[_Slot] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stop = self.context.Event()

    def start(self) -> _Slot:
        mine, theirs = self.context.Pipe()
        process = self.context.Process(
            target=serve, args=(theirs, self.config, self.repos, self.stop), daemon=True
        )
        process.start()
        theirs.close()
        slot = _Slot(process, mine)
        self.slots.append(slot)
        return slot

    def busy(self) -> list[_Slot]:
        return [s for s in self.slots if s.job is not None]

    def remove(self, slot: _Slot) -> None:
        """Forget `slot`, its process reaped (a zombie would still look alive to the ledger)."""
        self.slots.remove(slot)
        slot.conn.close()
        slot.process.join(timeout=10)
        if slot.process.is_alive():
            slot.process.kill()
            slot.process.join()

    def close(self) -> None:
        for slot in self.slots:
            with suppress(OSError):  # already gone
                slot.conn.send(None)
        for slot in list(self.slots):
            self.remove(slot)

    def kill(self) -> None:
        for slot in self.slots:
            slot.process.kill()
        for slot in list(self.slots):
            self.remove(slot)


def run_pool(
    jobs: Iterable[Job],
    config: WorkerConfig,
    repos: Mapping[str, RepoWork],
    *,
    workers: int,
    on_outcome: Callable[[JobOutcome, int], None],
    on_stopping: Callable[[StopReason, int], None] | None = None,
    on_message: Callable[[str], None] = lambda _: None,
) -> PoolResult:
    """Run `jobs` on `workers` processes; `on_outcome(outcome, in_flight)` is called in this process.

    `repos` (by slug, with packs and prompts) goes to each worker process once.
    """
    jobs = list(jobs)
    ready, waiting = _queues(jobs)
    outcomes: list[JobOutcome] = []
    unsent: list[Job] = []
    deaths: dict[str, int] = {}
    stop: StopReason | None = None
    fatal: BaseException | None = None
    pool = _Workers(config, {slug: repos[slug] for slug in {j.slug for j in jobs}})
    paths = StatePaths(config.state_dir)

    def sending() -> bool:
        return stop is None and fatal is None

    def request_stop(reason: StopReason) -> None:
        nonlocal stop
        pool.stop.set()  # workers send nothing more, not even a retry
        if stop is None:
            stop = reason
            if on_stopping:
                on_stopping(reason, len(pool.busy()))

    def finished(job: Job, outcome: JobOutcome) -> None:
        if outcome.status == JobStatus.PENDING:  # stopped before it was sent
            unsent.append(job)
            return
        outcomes.append(outcome)
        # Whatever became of it, its followers may go now, and go first.
        ready.extendleft(reversed(waiting.pop(job.id, [])))
        on_outcome(outcome, len(pool.busy()))
        if outcome.stop:
            request_stop(outcome.stop)

    def died(slot: _Slot, job: Job) -> None:
        pool.remove(slot)
        pid, code = slot.process.pid, slot.process.exitcode  # known once reaped
        with Ledger(paths.ledger) as ledger:
            ledger.sweep()  # its reservation: unknown, charged at the worst case
        deaths[job.id] = deaths.get(job.id, 0) + 1
        on_message(f"worker {pid} died (exit {code}) during {job.id}; replacing it")
        recorded = _recorded(paths, job)
        if recorded is not None:  # its reply was recorded before it died: never send it again
            finished(job, recorded)
        elif deaths[job.id] >= MAX_DEATHS:
            error = f"its worker process died {deaths[job.id]} times (last exit {code})"
            finished(job, JobOutcome(job, JobStatus.FAILED, error=error))
        elif sending():
            ready.appendleft(job)
        else:
            unsent.append(job)

    def answered(slot: _Slot, job: Job, message: JobOutcome | Raised) -> None:
        nonlocal fatal
        slot.job = None
        if isinstance(message, Raised):
            if isinstance(message.error, FATAL_ERRORS):
                fatal = fatal or _as_state_error(message.error)
                pool.stop.set()
                unsent.append(job)
                return
            error = f"{type(message.error).__name__}: {message.error}"
            message = JobOutcome(job, JobStatus.FAILED, error=error)
        finished(job, message)

    def dispatch() -> None:
        """Give each idle worker a job; start workers to replace dead ones."""
        while sending() and ready and len(pool.busy()) < len(pool.slots):
            slot = next(s for s in pool.slots if s.job is None)
            job = ready.popleft()
            slot.job = job
            try:
                slot.conn.send(job)
            except OSError:  # it died idle: nothing of this job reached it
                slot.job = None
                ready.appendleft(job)
                pool.remove(slot)
                pool.start()

    try:
        with _Interrupts(lambda: request_stop(StopReason.INTERRUPTED)):
            for _ in range(min(max(1, workers), len(jobs))):
                pool.start()
            while pool.busy() or (ready and sending()):
                dispatch()
                handles = [h for s in pool.busy() for h in (s.conn, s.process.sentinel)]
                signalled = set(wait(handles, timeout=0.5))
                for slot in pool.busy():
                    if slot.conn not in signalled and slot.process.sentinel not in signalled:
                        continue
                    job = slot.job
                    assert job is not None
                    try:
                        message = slot.conn.recv() if slot.conn.poll() else None
                    except (EOFError, OSError):
                        message = None
                    if message is not None:
                        answered(slot, job, message)
                        continue
                    died(slot, job)
                    if sending() and (ready or pool.busy()):
                        pool.start()
    except BaseException:
        # Abort: do not wait for requests in flight; their workers die here and their
        # reservations become unknown (charged at the worst case) in the ledger.
        pool.kill()
        with Ledger(paths.ledger) as ledger:
            ledger.sweep()
        raise
    pool.close()
    if fatal is not None:
        raise fatal
    unsent += [*ready, *(s for group in waiting.values() for s in group)]
    return PoolResult(tuple(outcomes), tuple(unsent), stop, sum(deaths.values()))


def _as_state_error(error: BaseException) -> BaseException:
    """A store's own error as it is; a bare SQLite error as the runner's StateError."""
    if isinstance(error, sqlite3.DatabaseError):
        return StateError(f"a worker's state database failed: {error}")
    return error


def _recorded(paths: StatePaths, job: Job) -> JobOutcome | None:
    """The job's outcome if runs.db records its reply (its worker died after recording it)."""
    runs = Runs(paths.runs)
    try:
        row = next((r for r in runs.jobs(job.run_id, slug=job.slug) if r.id == job.id), None)
    finally:
        runs.close()
    if row is None or row.status != JobStatus.DONE:
        return None
    return JobOutcome(
        job,
        JobStatus.DONE,
        result=row.result,
        usage=row.usage or {},
        cost_micros=row.cost_micros,
        attempts=row.attempts,
    )


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
