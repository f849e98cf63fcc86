"""review-runner limits: what the shared limiter knows about the account's rate limits."""

from __future__ import annotations

from typing import Any

import click

from runner.cli.common import echo_json, json_option
from runner.limiter import Limiter
from statedb import state_dir

__all__ = ["limits", "render_status", "status"]

_UNITS = {"rpm": "requests/min", "itpm": "input tokens/min", "otpm": "output tokens/min"}


@click.group()
def limits() -> None:
    """Inspect the cross-process rate limiter shared by every run on this machine."""


@limits.command()
@json_option
def status(as_json: bool) -> None:
    """Show each limit and its source, bucket levels, leases in flight, waiters and health.

    \b
    Example:
        review-runner limits status
        review-runner limits status --json | jq .limits.rpm
    """
    limiter = Limiter(state_dir())
    try:
        doc = limiter.status()
    finally:
        limiter.close()
    if as_json:
        echo_json(doc)
    else:
        click.echo(render_status(doc))


def _limit_lines(block: dict[str, Any]) -> list[str]:
    lines = []
    for name, info in block["limits"].items():
        unit = _UNITS.get(name, "requests in flight")
        lines.append(f"  {name:15} {info['value']:>10,} {unit:18} (from {info['source']})")
    lines.append("  Levels (refilled since the last grant / capacity):")
    for name, info in block["levels"].items():
        lines.append(f"    {name:13} {info['level']:>12,.1f} / {info['capacity']:,.0f}")
    return lines


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def render_status(doc: dict[str, Any]) -> str:
    """The human rendering of a status document."""
    lines = []
    # One block per account and model class (they have separate limits and buckets); the
    # unscoped block only when nothing was ever scoped.
    blocks = doc.get("scopes") or {"": doc}
    for scope, block in blocks.items():
        title = f"Limits of {scope} ({block['pacing']} pacing):" if scope else "Limits:"
        lines.append(title)
        lines += _limit_lines(block)
    for account, info in doc.get("accounts", {}).items():
        if info["pacing"] == "strict":
            lines.append(f"{account}: strict pacing since {info['switched_at']} ({info['reason']})")
    lines.append(f"In flight: {len(doc['in_flight'])}")
    for lease in doc["in_flight"]:
        lines.append(
            f"  pid {lease['pid']:>7}  age {lease['age_s']:8.1f} s  input {lease['input_tokens']:,}"
            f"  output estimate {lease['output_estimate']:,}"
        )
    lines.append(f"Waiters: {len(doc['waiters'])}")
    for waiter in doc["waiters"]:
        lines.append(
            f"  ticket {waiter['ticket']:>6}  pid {waiter['pid']:>7}  waiting {waiter['age_s']:.1f} s"
            f"  input {waiter['input_tokens']:,}  output estimate {waiter['output_estimate']:,}"
        )
    cooldown = doc["cooldown_until"] or "none"
    lines.append(f"Cooldown until: {cooldown}")
    lines.append(
        f"Last hour: {doc['recent_429s']} x 429, {doc['recent_529s']} x 529,"
        f" latency p50 {_ms(doc['latency_p50'])}, p95 {_ms(doc['latency_p95'])}"
    )
    health = doc["health"]
    lines.append(f"Health: {'ok' if health['ok'] else 'busy'} ({health['reason']})")
    return "\n".join(lines)
