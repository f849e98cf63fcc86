"""Which backend holds the state: `REVIEW_RUNNER_DATABASE_URL`, else the SQLite files.

Kept apart from statedb.postgres so that the embedded default never imports the driver.
"""

from __future__ import annotations

import os
import re

from statedb.errors import StoreError

__all__ = ["DATABASE_URL_ENV", "database_url", "redact"]

DATABASE_URL_ENV = "REVIEW_RUNNER_DATABASE_URL"


def database_url() -> str | None:
    """The configured PostgreSQL URL, or None for the embedded SQLite default."""
    url = os.environ.get(DATABASE_URL_ENV, "").strip()
    if not url:
        return None
    if not re.match(r"postgres(ql)?://", url):
        raise StoreError(
            f"{DATABASE_URL_ENV}={redact(url)}: expected a postgresql://... URL "
            "(unset it for the embedded SQLite state)"
        )
    return url


def redact(url: str) -> str:
    """`url` with any password replaced, for messages."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
