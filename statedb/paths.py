"""The state directory and the names of the files in it: the one place that spells them.

`$REVIEW_RUNNER_HOME`, else `$XDG_STATE_HOME/review-runner`, else `~/.local/state/review-runner`;
the directory is mode 0700 and every file in it 0600, since it holds spend records and
cloned source code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LEDGER_DB",
    "LIMITER_DB",
    "LIMITER_LOCK",
    "PRICES_FILE",
    "REPOS_DIR",
    "RUNS_DB",
    "StatePaths",
    "private_dir",
    "private_file",
    "state_dir",
]

LEDGER_DB = "ledger.db"
LIMITER_DB = "limiter.db"
LIMITER_LOCK = "limiter.lock"
RUNS_DB = "runs.db"
PRICES_FILE = "prices.json"  # the user's price overrides
REPOS_DIR = "repos"  # clones of git URLs


def state_dir() -> Path:
    """The state directory, created (mode 0700) on first use."""
    home = os.environ.get("REVIEW_RUNNER_HOME")
    if home:
        path = Path(home).expanduser()
    else:
        xdg = os.environ.get("XDG_STATE_HOME")
        base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
        path = base / "review-runner"
    return private_dir(path)


def private_dir(path: Path) -> Path:
    """Create `path` (and its parents) with mode 0700 if missing, and return it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def private_file(path: Path) -> Path:
    """Create `path` (if missing) readable by its owner only, and return it.

    An existing file is never opened: closing that descriptor would drop every POSIX lock this
    process holds on it, SQLite's included, and a connection still open in the process would
    then see its WAL deleted under it ("disk I/O error").
    """
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    except FileExistsError:
        pass
    else:
        os.close(fd)
    os.chmod(path, 0o600)
    return path


@dataclass(frozen=True)
class StatePaths:
    """The files of one state directory."""

    root: Path

    @property
    def ledger(self) -> Path:
        """ledger.db: budgets, usage entries, reservations, run holds."""
        return self.root / LEDGER_DB

    @property
    def limiter(self) -> Path:
        """limiter.db: bucket levels, leases, waiters, cooldown, limits, health."""
        return self.root / LIMITER_DB

    @property
    def limiter_lock(self) -> Path:
        """limiter.lock: taken around every limiter write."""
        return self.root / LIMITER_LOCK

    @property
    def runs(self) -> Path:
        """runs.db: runs, repos and jobs, for resume and reports."""
        return self.root / RUNS_DB

    @property
    def prices(self) -> Path:
        """prices.json: the user's price table overrides (optional)."""
        return self.root / PRICES_FILE

    @property
    def repos(self) -> Path:
        """The clone cache of git URLs."""
        return self.root / REPOS_DIR

    def reachability(self, run_id: str, pid: int) -> Path:
        """reachability-RUN_ID-PID.json: one run execution's connectivity breaker (removed at
        its end)."""
        return self.root / f"reachability-{run_id}-{pid}.json"
