"""review-runner simulator: placeholder until its issue lands."""

from __future__ import annotations

import click


@click.group()
def simulator() -> None:
    """(not built yet)"""
