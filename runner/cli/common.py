"""What every command shares: the --json option, JSON output, and errors as exit codes."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from jobs.errors import JobsError, JobsInputError
from ledger.errors import (
    BudgetExceeded,
    LedgerError,
    LedgerInputError,
    LedgerStoreError,
    RunRefused,
)
from runner.errors import RunnerError, RunnerInputError, StateError
from statedb import StoreError

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_BUDGET",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_UNREACHABLE",
    "ErrorHandlingGroup",
    "echo_json",
    "exit_code_for",
    "json_option",
]

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_BUDGET = 3
EXIT_UNREACHABLE = 4  # the API could not be reached: the rest is deferred, resumable
EXIT_INTERRUPTED = 130

F = TypeVar("F", bound=Callable[..., Any])

# Most specific first: an input error is also a LedgerError, and so on.
_EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (BudgetExceeded, EXIT_BUDGET),
    (RunRefused, EXIT_BUDGET),
    (LedgerInputError, EXIT_BAD_INPUT),
    (LedgerStoreError, EXIT_BAD_INPUT),
    (JobsInputError, EXIT_BAD_INPUT),
    (RunnerInputError, EXIT_BAD_INPUT),
    (StateError, EXIT_BAD_INPUT),
    (StoreError, EXIT_BAD_INPUT),
)


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code for a library error (1 when nothing more specific applies)."""
    for cls, code in _EXIT_CODES:
        if isinstance(exc, cls):
            return getattr(exc, "exit_code", code)
    return getattr(exc, "exit_code", EXIT_FAILED)


class ErrorHandlingGroup(click.Group):
    """A group that turns library errors into one `Error: ...` line and the right exit code.

    Any other exception (a bug, an OS error nobody foresaw) is one `Error: TYPE: message`
    line and exit 1: a nightly log shows what broke without a page of traceback.
    REVIEW_RUNNER_DEBUG=1 lets the traceback through instead.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (JobsError, LedgerError, RunnerError, StoreError) as exc:
            if os.environ.get("REVIEW_RUNNER_DEBUG"):
                raise
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exit_code_for(exc))
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click renders its own (usage errors, --help, --version)
        except Exception as exc:
            if os.environ.get("REVIEW_RUNNER_DEBUG"):
                raise
            click.echo(f"Error: {type(exc).__name__}: {exc}", err=True)
            sys.exit(EXIT_FAILED)
        except KeyboardInterrupt:
            if os.environ.get("REVIEW_RUNNER_DEBUG"):
                raise
            click.echo("Interrupted.", err=True)
            sys.exit(EXIT_INTERRUPTED)


def json_option(func: F) -> F:
    """--json: print the machine-readable result on stdout instead of the text rendering."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print the result as JSON on stdout."
    )(func)


def echo_json(data: Any) -> None:
    """Print `data` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
