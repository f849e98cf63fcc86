"""review-runner run / plan: placeholder until the runner issue lands."""

from __future__ import annotations

import click


@click.command()
def run() -> None:
    """(not built yet)"""


@click.command()
def plan() -> None:
    """(not built yet)"""
