"""The review-runner command line. Each command group is its own module."""

from __future__ import annotations

import click

from runner.cli import budget, findings, limits, run, simulator
from runner.cli.common import ErrorHandlingGroup

__all__ = ["main"]


@click.group(cls=ErrorHandlingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="review-runner")
def main() -> None:
    """Run LLM code reviews over many repositories within rate limits and a monthly budget.

    \b
    Example:
        review-runner plan jobs/nightly.toml
        review-runner run jobs/nightly.toml --json
        review-runner budget status
    """


main.add_command(run.run)
main.add_command(run.plan)
main.add_command(budget.budget)
main.add_command(limits.limits)
main.add_command(simulator.simulator)
main.add_command(findings.findings)
