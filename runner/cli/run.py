"""review-runner run / plan: review the repos of a manifest, or say what that would cost."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from ledger.modes import Decision, Mode, RequestedMode
from ledger.prices import usd
from runner.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_BUDGET,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_UNREACHABLE,
    echo_json,
    json_option,
)
from runner.client import api_configured
from runner.kinds import JobStatus, RunStatus, StopReason
from runner.run import PlanResult, Progress, RunOptions, RunResult, load_config
from runner.run import plan as plan_run
from runner.run import run as run_batch
from statedb import state_dir

__all__ = ["plan", "run"]

MODE_CHOICE = click.Choice([str(m) for m in RequestedMode])
API_CHOICE = click.Choice(["messages", "batches"])


def _api_option(func: Any) -> Any:
    return click.option(
        "--api",
        type=API_CHOICE,
        help="Override the manifest's api: messages, or batches (Message Batches: half price, "
        "outside the per-minute limits, results within hours).",
    )(func)


def _batch_options(func: Any) -> Any:
    func = click.option(
        "--poll-interval",
        type=click.FloatRange(min=0.01),
        default=60.0,
        show_default=True,
        help="Batches: seconds between polls while waiting.",
    )(func)
    return click.option(
        "--no-wait",
        is_flag=True,
        help="Batches: submit and exit 0 with status `submitted`; `run --resume` collects.",
    )(func)


SIMULATOR_KEY = "simulated-key"  # the embedded simulator accepts any key; this is no secret


def _limit_options(func: Any) -> Any:
    func = click.option(
        "--burst-seconds",
        type=click.IntRange(min=0),
        help="Cap on the seconds of refill spent at once (default: the account's pacing mode;"
        " 0: strict pacing).",
    )(func)
    for name in ("max-concurrent", "otpm", "itpm", "rpm"):
        func = click.option(
            f"--{name}",
            type=click.IntRange(min=1),
            help=f"Override the manifest's [limits] {name.replace('-', '_')}.",
        )(func)
    return func


@contextmanager
def _api(
    simulate: bool, dry_run: bool, limits: dict[str, int | None]
) -> Iterator[tuple[str | None, str | None]]:
    """The API to talk to: the real one from the environment, or the embedded simulator.

    A dry run sends nothing, so it needs neither.
    """
    if dry_run or (not simulate and api_configured()):
        yield None, None
        return
    from runner.simulator import SimConfig, Simulator

    config = SimConfig(
        rpm=limits.get("rpm"),
        itpm=limits.get("itpm"),
        otpm=limits.get("otpm"),
        latency=0.05,
        per_token=0.0002,
    )
    with Simulator(config) as sim:
        why = "--simulate" if simulate else "no ANTHROPIC_API_KEY or ANTHROPIC_BASE_URL is set"
        click.echo(
            f"Using the built-in simulator at {sim.base_url} ({why}): reviews are simulated.",
            err=True,
        )
        yield sim.base_url, SIMULATOR_KEY


class _Renderer:
    """tqdm on a terminal; one line per finished job otherwise."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def message(self, text: str) -> None:
        (self.bar.write if self.bar else lambda t: click.echo(t, err=True))(text)

    def progress(self, p: Progress) -> None:
        if p.message:
            self.message(p.message)
        finished = p.done + p.failed + p.deferred
        if sys.stderr.isatty():
            if self.bar is None:
                self.bar = tqdm(total=p.total, unit="job", file=sys.stderr, initial=finished)
            self.bar.n = finished
            self.bar.set_postfix(
                cost=f"${usd(p.cost_micros):.2f}", r429=p.rate_limited, in_flight=p.in_flight
            )
        elif p.outcome is not None and not p.outcome.job.warm:
            o = p.outcome
            detail = f"${usd(o.cost_micros):.4f}" if o.status == JobStatus.DONE else (o.error or "")
            click.echo(f"[{finished}/{p.total}] {o.job_id} {o.status} {detail}", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@click.command()
@click.argument("manifest", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--mode", type=MODE_CHOICE, help="Override the manifest's mode.")
@click.option(
    "--workers", type=click.IntRange(min=1), help="Worker processes (default: the in-flight cap)."
)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), help="Report folder.")
@click.option(
    "--resume", metavar="RUN_ID|last", help="Run only the jobs of a recorded run not done yet."
)
@click.option("--simulate", is_flag=True, help="Use the built-in simulator even with an API key.")
@click.option("--dry-run", is_flag=True, help="Pack, project and decide; send nothing.")
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Attempts per job for 5xx, 529 and dropped connections.",
)
@_limit_options
@_api_option
@_batch_options
@json_option
def run(
    manifest: Path | None,
    mode: str | None,
    workers: int | None,
    out: Path | None,
    resume: str | None,
    simulate: bool,
    dry_run: bool,
    max_attempts: int,
    rpm: int | None,
    itpm: int | None,
    otpm: int | None,
    max_concurrent: int | None,
    burst_seconds: int | None,
    api: str | None,
    no_wait: bool,
    poll_interval: float,
    as_json: bool,
) -> None:
    """Review every repository of MANIFEST within the rate limits and the budget.

    \b
    Examples:
        review-runner run jobs/nightly.toml
        review-runner run jobs/nightly.toml --mode single --json
        review-runner run --resume last
        review-runner run jobs/nightly.toml --resume last
        review-runner run jobs/nightly.toml --api batches --no-wait
    """
    if manifest is None and resume is None:
        raise click.UsageError("give a MANIFEST, or --resume RUN_ID|last, or both")
    from jobs.manifest import load_manifest

    limits = {
        "rpm": rpm,
        "itpm": itpm,
        "otpm": otpm,
        "max_concurrent": max_concurrent,
        "burst_seconds": burst_seconds,
    }
    options = RunOptions(
        mode=mode,
        workers=workers,
        out=out,
        resume=resume,
        dry_run=dry_run,
        limits=limits,
        max_attempts=max_attempts,
        api=api,
        wait=not no_wait,
        poll_interval=poll_interval,
    )
    config = load_config(load_manifest(manifest) if manifest else None, options, state_dir())
    if no_wait and config.api != "batches":
        raise click.UsageError("--no-wait applies to Message Batches only (--api batches)")
    renderer = _Renderer()
    with _api(simulate, dry_run, config.limits.simulator()) as (base_url, api_key):
        try:
            result = run_batch(
                config.with_api(base_url, api_key),
                on_progress=renderer.progress,
                on_message=renderer.message,
            )
        finally:
            renderer.close()
    _render_run(result, as_json)
    sys.exit(_exit_code(result))


def _exit_code(result: RunResult) -> int:
    if result.status == RunStatus.INTERRUPTED:
        return EXIT_INTERRUPTED
    if result.stop == StopReason.AUTH:
        return EXIT_BAD_INPUT
    if result.stop == StopReason.UNREACHABLE:
        return EXIT_UNREACHABLE
    if result.status in (RunStatus.REFUSED, RunStatus.DEFERRED):
        return EXIT_BUDGET
    if result.status == RunStatus.FAILED:
        return EXIT_FAILED
    return 0


def _render_run(result: RunResult, as_json: bool) -> None:
    if as_json:
        doc = result.to_json()
        if result.plan is not None:
            doc["plan"] = result.plan.modes_json()
        echo_json(doc)
    elif result.status == RunStatus.REFUSED:
        click.echo(f"Refused: {result.reason}")
    elif result.status == RunStatus.SUBMITTED:
        click.echo(
            f"Run {result.run_id} ({result.mode}): submitted as Message Batches. "
            f"Collect with: review-runner run --resume {result.run_id}"
        )
    elif result.status == RunStatus.PLANNED:
        click.echo(
            f"Dry run {result.run_id}: would run {result.mode} ({result.reason}); nothing sent."
        )
    else:
        doc = result.to_json()
        jobs = doc["jobs"]
        click.echo(
            f"Run {result.run_id} ({result.mode}): {result.status}. "
            f"{jobs['done']} done, {jobs['failed']} failed, {jobs['deferred']} deferred, "
            f"{jobs['pending']} pending. "
            f"Tokens in {doc['input_tokens']:,} (+{doc['cache_read_input_tokens']:,} cached), "
            f"out {doc['output_tokens']:,}. Cost ${doc['cost_usd']:.4f}."
        )
        if result.out_dir:
            click.echo(f"Reports: {result.out_dir}")
    if result.status == RunStatus.REFUSED:
        click.echo(
            "Way out: run in single mode (--mode single), or raise the budget "
            "(review-runner budget set --usd X).",
            err=True,
        )
    if result.status in (RunStatus.INTERRUPTED, RunStatus.DEFERRED, RunStatus.FAILED):
        click.echo(f"Resume with: review-runner run --resume {result.run_id}", err=True)


@click.command()
@click.argument("manifest", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--mode", type=MODE_CHOICE, help="Override the manifest's mode.")
@click.option(
    "--redactions",
    is_flag=True,
    help="List every redacted secret as file:line:kind (never the value), to audit what is sent.",
)
@_api_option
@json_option
def plan(
    manifest: Path, mode: str | None, redactions: bool, api: str | None, as_json: bool
) -> None:
    """Show what each mode of MANIFEST would send, cost and take, and which the ledger would pick.

    Sends nothing and holds nothing.

    \b
    Example:
        review-runner plan jobs/nightly.toml --json
        review-runner plan jobs/nightly.toml --redactions
    """
    from jobs.manifest import load_manifest

    config = load_config(
        load_manifest(manifest), RunOptions(mode=mode, api=api), state_dir(), check_runs=False
    )
    result = plan_run(config)
    if as_json:
        doc = result.to_json()
        if redactions:
            doc["redactions"] = result.redactions()
        echo_json(doc)
    else:
        _render_plan(result)
        if redactions:
            _render_redactions(result)
    sys.exit(EXIT_BUDGET if result.decision == Decision.REFUSED else 0)


def _render_plan(result: PlanResult) -> None:
    doc = result.to_json()
    click.echo(f"{result.manifest}: {doc['repos']} repositories (api: {doc['api']})")
    for api, modes in (doc["apis"] or {doc["api"]: doc["modes"]}).items():
        for m in Mode:
            d = modes[m]
            click.echo(
                f"  {api:<9} {m:<10} {d['requests']:>4} requests  {d['input_tokens']:>10,} in  "
                f"{d['output_tokens']:>8,} out  ${d['cost_usd']:>8.2f}  ~{d['wall_time_s']:.0f}s"
            )
    remaining = result.remaining_usd
    click.echo(
        f"  remaining this month: {'no budget set' if remaining is None else f'${remaining:.2f}'}"
    )
    click.echo(f"  decision: {result.decision} ({result.reason})")


def _render_redactions(result: PlanResult) -> None:
    sites = result.redactions()
    click.echo(f"redactions: {len(sites)} (file:line:kind; the values are never shown)")
    for repo in dict.fromkeys(site["repo"] for site in sites):
        click.echo(f"  {repo}:")
        for site in (s for s in sites if s["repo"] == repo):
            unsent = "" if site["sent"] else "  (not sent: outside the pack)"
            click.echo(f"    {site['path']}:{site['line']}:{site['kind']}{unsent}")
