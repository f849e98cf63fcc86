"""review-runner budget: placeholder until its issue lands."""

from __future__ import annotations

import click


@click.group()
def budget() -> None:
    """(not built yet)"""
