"""The review-runner command line. Each command group is its own module."""

from __future__ import annotations

import os

import click

from runner.cli import budget, findings, limits, run, simulator
from runner.cli.common import ErrorHandlingGroup
from statedb import DATABASE_URL_ENV

__all__ = ["main"]


@click.group(cls=ErrorHandlingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="review-runner")
@click.option(
    "--database-url",
    metavar="URL",
    help=f"postgresql://... : the limiter, ledger and runs in one PostgreSQL database shared by "
    f"several hosts (default: ${DATABASE_URL_ENV}, else SQLite files in the state directory).",
)
def main(database_url: str | None) -> None:
    """Run LLM code reviews over many repositories within rate limits and a monthly budget.

    \b
    Example:
        review-runner plan jobs/nightly.toml
        review-runner run jobs/nightly.toml --json
        review-runner budget status
    """
    if database_url:
        # Through the environment, so that worker processes open the same database.
        os.environ[DATABASE_URL_ENV] = database_url


main.add_command(run.run)
main.add_command(run.plan)
main.add_command(budget.budget)
main.add_command(limits.limits)
main.add_command(simulator.simulator)
main.add_command(findings.findings)
