"""Who owns a record: pid + process start time + host, and whether that process still runs.

The one liveness check of the project: ledger reservations and run holds and limiter
leases all ask it, so they can never disagree about a process.
"""

from __future__ import annotations

import os
import socket
from typing import NamedTuple

__all__ = ["ProcessId", "host_name", "process_alive", "process_identity", "process_started"]


class ProcessId(NamedTuple):
    """A process as recorded on a row: the start time tells a recycled pid from the original."""

    pid: int
    start: str | None
    host: str


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of `pid` from /proc (Linux), or None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return (fields[0], fields[19]) if len(fields) > 19 else None


def host_name() -> str:
    """The host a record names: $REVIEW_RUNNER_HOST (for hosts or containers that share a
    hostname and one database), else the hostname."""
    return os.environ.get("REVIEW_RUNNER_HOST") or socket.gethostname()


def process_identity() -> ProcessId:
    """This process's (pid, start time or None, host)."""
    pid = os.getpid()
    stat = _proc_stat(pid)
    return ProcessId(pid, stat[1] if stat else None, host_name())


def process_alive(pid: int, start: str | None = None, host: str | None = None) -> bool:
    """Whether the recorded process still runs (a zombie counts as dead).

    `start` None matches any start time; `host` None is this host. Other hosts cannot be
    checked and are taken as alive.
    """
    if host is not None and host != host_name():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else: /proc still tells its state
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, started = stat
    # A SIGKILLed child not yet reaped is a zombie: dead for our purposes.
    return state not in ("Z", "X") and (start is None or started == start)


def process_started(start: str | None) -> float | None:
    """Epoch seconds at which a process of this host with /proc start time `start` began.

    For messages (a person wants a date, not clock ticks since boot); None when unknown.
    """
    if start is None:
        return None
    try:
        with open("/proc/stat", encoding="ascii", errors="replace") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
        return boot + int(start) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError):
        return None
