"""review-runner findings: findings across runs (list them, accept them into the baseline)."""

from __future__ import annotations

import getpass
from collections.abc import Sequence

import click

from jobs.tracking import Status
from runner.cli.common import echo_json, json_option
from runner.findings_store import FindingsStore, Listed, accept_baseline, list_findings
from runner.runs import Runs
from statedb import StatePaths, state_dir

__all__ = ["findings", "render_list"]

_STATUSES = [str(s) for s in Status]


def _store() -> FindingsStore:
    return FindingsStore(Runs(StatePaths(state_dir()).runs).open())


@click.group()
def findings() -> None:
    """Findings across runs: what is new, persisting and fixed per repo, and the accepted baseline."""


@findings.command("list")
@click.option(
    "--status",
    type=click.Choice(_STATUSES),
    default=None,
    help="Only findings with this status (new, persisting, fixed, ...).",
)
@json_option
def list_command(status: str | None, as_json: bool) -> None:
    """List the findings of each repo's last complete review, with their status and first run.

    \b
    Example:
        review-runner findings list --status new
        review-runner findings list --json | jq '.findings[] | .fingerprint'
    """
    listed = list_findings(_store())
    if as_json:
        echo_json(listed.to_json(status))
    else:
        click.echo(render_list(listed, status))


@findings.command()
@click.argument("repos", nargs=-1)
@click.option(
    "--reason", default="", help="Why these findings are accepted (kept with each entry)."
)
@json_option
def baseline(repos: Sequence[str], reason: str, as_json: bool) -> None:
    """Accept the open findings of REPOS (default: every repo) so they are never reported as new again.

    Each repo's last complete review is accepted; later runs count its findings as suppressed
    (source: baseline) and SARIF carries them as suppressions.

    \b
    Example:
        review-runner findings baseline
        review-runner findings baseline shop api --reason "known before the first nightly"
    """
    done = accept_baseline(_store(), repos, by=getpass.getuser(), reason=reason)
    if as_json:
        echo_json({"accepted": [a.to_json() for a in done]})
        return
    for a in done:
        click.echo(
            f"{a.slug}: {a.added} finding(s) accepted from run {a.run_id}"
            f" ({a.already} already in the baseline)"
        )


def render_list(listed: Listed, status: str | None) -> str:
    """The human rendering of ``findings list``."""
    lines = []
    for review in listed.reviews:
        counts = review.tracking.counts()
        shown = ", ".join(f"{counts[k]} {k}" for k in ("new", "persisting", "fixed") if k in counts)
        lines.append(f"{review.slug}: run {review.run_id} ({review.run_date}): {shown}")
    rows = listed.rows(status)
    if rows:
        lines.append("")
    for row in rows:
        where = row["file"] or "-"
        if row["line"]:
            where += f":{row['line']}"
        mark = " [baseline]" if row["baselined"] else ""
        lines.append(
            f"{row['status']:<12} {row['severity']:<8} {row['slug']}  {where}  {row['title']}"
            f"  (first seen {row['first_seen']['run_id']}, {row['fingerprint'][:12]}){mark}"
        )
    if not rows:
        lines.append(f"no findings{f' with status {status}' if status else ''}")
    return "\n".join(lines)
