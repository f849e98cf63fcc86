"""Whether the API can be reached at all, decided across every worker process of a run.

Each attempt that never reached the API (connection refused, a DNS failure, a connect timeout,
or no response within the read timeout) adds one to a counter kept in a small file that every
worker of the run shares; any response from the API (a reply or an HTTP error) sets it back to
zero. At `threshold` consecutive failures the breaker opens: each worker defers its job instead
of trying again, the run submits nothing more, and a resume later sends the deferred jobs.

A file and not a multiprocessing primitive: the workers are spawned processes (replaced ones
too), and a file needs nothing passed to them but its path. Each run execution has its own.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

__all__ = ["UNREACHABLE_AFTER", "Breaker", "remove_counter"]

# Consecutive attempts, across all workers, that did not reach the API before the run stops:
# more than one job's attempts (5), so a blip that a job retries through passes, while an outage
# (every attempt failing) stops a run of 4 workers after two or three rounds of backoff.
UNREACHABLE_AFTER = 8


@dataclass(frozen=True)
class Breaker:
    """The shared counter at `path` for requests to `endpoint`."""

    path: Path
    endpoint: str
    threshold: int = UNREACHABLE_AFTER

    def opened(self) -> str | None:
        """Why the API counts as unreachable (one line), or None while it may be reached."""
        state = self._read()
        return str(state.get("reason")) if state.get("open") else None

    def failure(self, cause: str, *, gave_up_after: int | None = None) -> str | None:
        """Count one attempt that did not reach the API; the reason if the breaker is open now.

        `gave_up_after`: the caller's job has no attempts left, after that many in a row that
        did not reach the API. If no answer came from anywhere since (the shared count covers
        them all), the API is down, not the job: the breaker opens, and the job is deferred.
        """
        with self._lock():
            state = self._read()
            failures = int(state.get("failures", 0)) + 1
            reason = (
                f"the API at {self.endpoint} cannot be reached: {failures} attempts in a row"
                f" failed, the last with: {cause}"
            )
            opened = bool(state.get("open")) or failures >= self.threshold
            if gave_up_after is not None and failures >= gave_up_after:
                opened = True
            if state.get("open"):
                reason = str(state.get("reason"))  # the line that opened it stays the line
            self._write({"failures": failures, "open": opened, "reason": reason})
        return reason if opened else None

    def success(self) -> None:
        """The API answered: it can be reached (the count starts again; an open breaker stays)."""
        if not self._read().get("failures"):
            return  # the common case, without taking the lock
        with self._lock():
            state = self._read()
            if not state.get("open"):
                self._write({"failures": 0})

    def remove(self) -> None:
        """Delete the file (the run is over)."""
        remove_counter(self.path)

    def _lock(self) -> FileLock:
        return FileLock(str(self.path) + ".lock", mode=0o600)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, state: dict[str, Any]) -> None:
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state, handle)
        os.replace(tmp, self.path)  # readers outside the lock see the old state or the new


def remove_counter(path: Path) -> None:
    """Delete a breaker's file and its lock (its run is over)."""
    for name in (path, path.with_name(path.name + ".lock")):
        name.unlink(missing_ok=True)
