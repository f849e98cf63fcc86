"""Where review-runner keeps its state, and the one SQLite store base its databases share.

Imported by both `runner` and `ledger` (which must not import each other), so it imports
neither. With `REVIEW_RUNNER_DATABASE_URL` set, the same stores run on PostgreSQL
(statedb.postgres) behind the same `transaction()`/`read()` interface.
"""

from __future__ import annotations

from statedb.clock import iso, parse_iso, utc_now
from statedb.config import DATABASE_URL_ENV, database_url, redact
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
from statedb.process import (
    ProcessId,
    host_name,
    process_alive,
    process_identity,
    process_started,
)
from statedb.store import SQLiteStore

__all__ = [
    "DATABASE_URL_ENV",
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
    "database_url",
    "host_name",
    "iso",
    "parse_iso",
    "private_file",
    "process_alive",
    "process_identity",
    "process_started",
    "redact",
    "state_dir",
    "utc_now",
]
