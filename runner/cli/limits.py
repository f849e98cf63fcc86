"""review-runner limits: placeholder until its issue lands."""

from __future__ import annotations

import click


@click.group()
def limits() -> None:
    """(not built yet)"""
