"""Where review-runner keeps its state, and the one SQLite store base its databases share.

Imported by both `runner` and `ledger` (which must not import each other), so it imports
neither. A PostgreSQL backend is meant to sit behind the same `transaction()`/`read()`
interface later.
"""

from __future__ import annotations

from statedb.clock import iso, parse_iso, utc_now
from statedb.errors import StoreError
from statedb.paths import (
    LEDGER_DB,
    LIMITER_DB,
    LIMITER_LOCK,
    PRICES_FILE,
    REPOS_DIR,
    RUNS_DB,
    StatePaths,
    private_file,
    state_dir,
)
from statedb.process import ProcessId, process_alive, process_identity, process_started
from statedb.store import SQLiteStore

__all__ = [
    "LEDGER_DB",
    "LIMITER_DB",
    "LIMITER_LOCK",
    "PRICES_FILE",
    "REPOS_DIR",
    "RUNS_DB",
    "ProcessId",
    "SQLiteStore",
    "StatePaths",
    "StoreError",
    "iso",
    "parse_iso",
    "private_file",
    "process_alive",
    "process_identity",
    "process_started",
    "state_dir",
    "utc_now",
]
