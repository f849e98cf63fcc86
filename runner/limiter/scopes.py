"""Which buckets a request draws on: its account (the API base URL) and its model class.

A scope is "ACCOUNT CLASS", e.g. "https://api.anthropic.com sonnet-5"; the scope '' is the
unscoped limiter. Only the scheme, host, port and path of a base URL name an account: any
user name, password or query in it never reaches limiter.db.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from runner.modelclass import model_class

__all__ = ["DEFAULT_BASE_URL", "account_of", "account_of_scope", "class_of_scope", "scope_of"]

DEFAULT_BASE_URL = "https://api.anthropic.com"


def account_of(base_url: str | None) -> str:
    """The account a client talks to: `base_url`, else ANTHROPIC_BASE_URL, else the platform."""
    url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}"


def scope_of(account: str, model: str | None) -> str:
    """The scope of `model` at `account` ('' for no model)."""
    return "" if model is None else f"{account} {model_class(model)}"


def account_of_scope(scope: str) -> str:
    return scope.rpartition(" ")[0]


def class_of_scope(scope: str) -> str:
    return scope.rpartition(" ")[2]
