"""review-runner simulator: run the built-in Anthropic-compatible API server on loopback."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import click

from runner.errors import RunnerInputError
from runner.simulator import ClassLimits, SimConfig, Simulator, parse_class_limit

__all__ = ["serve", "simulator"]


@click.group()
def simulator() -> None:
    """The built-in Anthropic-compatible API server (no key, no network)."""


@simulator.command()
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port on 127.0.0.1 (0 = any free port).",
)
@click.option("--rpm", type=click.IntRange(1), help="Requests per minute (default: no limit).")
@click.option(
    "--itpm", type=click.IntRange(1), help="Input tokens per minute: uncached + cache writes."
)
@click.option("--otpm", type=click.IntRange(1), help="Output tokens per minute.")
@click.option("--max-concurrent", type=click.IntRange(1), help="Cap on requests in flight.")
@click.option(
    "--latency",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Seconds to first byte.",
)
@click.option(
    "--per-token",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Seconds per output token.",
)
@click.option(
    "--output-mean",
    type=click.IntRange(1),
    default=400,
    show_default=True,
    help="Mean output length in tokens (uniform in mean*(1±spread), capped by max_tokens).",
)
@click.option(
    "--output-spread",
    type=click.FloatRange(0),
    default=0.5,
    show_default=True,
    help="Relative spread of the output length.",
)
@click.option(
    "--fault-rate",
    type=click.FloatRange(0, 1),
    help="Shorthand: this total fault probability, split equally between 529, 500 and "
    "dropped connections (the specific rates below win when given).",
)
@click.option("--overloaded-rate", type=click.FloatRange(0, 1), help="Probability of a 529.")
@click.option("--server-error-rate", type=click.FloatRange(0, 1), help="Probability of a 500.")
@click.option(
    "--drop-rate",
    type=click.FloatRange(0, 1),
    help="Probability of closing the connection after processing (billed, no response).",
)
@click.option(
    "--spend-cap-usd",
    type=click.FloatRange(0),
    help="Spend cap; then every request gets the spend-cap 429.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fault generator.")
@click.option(
    "--min-cacheable-tokens",
    type=click.IntRange(0),
    default=1024,
    show_default=True,
    help="Shortest prefix the prompt cache stores.",
)
@click.option(
    "--batch-delay",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Seconds before a Message Batch ends.",
)
@click.option(
    "--batch-expire-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Probability that a batch request ends expired (not billed).",
)
@click.option(
    "--batch-error-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Probability that a batch request ends errored (api_error or overloaded_error).",
)
@click.option(
    "--enforce-interval",
    type=click.FloatRange(0, 60, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds over which each limit is enforced: 1 makes 60 RPM mean 1 request per second.",
)
@click.option(
    "--external-load",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Share of every limit spent by another client of the same key.",
)
@click.option(
    "--class-limit",
    "class_limits",
    multiple=True,
    metavar="CLASS:rpm=N,itpm=N,otpm=N",
    help="Limits of one model class (e.g. opus-5:rpm=5,itpm=2000); unset ones come from "
    "--rpm/--itpm/--otpm. Repeatable.",
)
@click.option(
    "--no-limit-headers",
    is_flag=True,
    help="Send no anthropic-ratelimit-* headers, like a gateway (429s keep retry-after).",
)
@click.option(
    "--log",
    "log_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append one JSON line per request to this file.",
)
@click.option(
    "--prices",
    "prices_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A prices.json whose models replace the shipped price table (for billing).",
)
def serve(
    port: int,
    rpm: int | None,
    itpm: int | None,
    otpm: int | None,
    max_concurrent: int | None,
    latency: float,
    per_token: float,
    output_mean: int,
    output_spread: float,
    fault_rate: float | None,
    overloaded_rate: float | None,
    server_error_rate: float | None,
    drop_rate: float | None,
    spend_cap_usd: float | None,
    seed: int,
    min_cacheable_tokens: int,
    batch_delay: float,
    batch_expire_rate: float,
    batch_error_rate: float,
    enforce_interval: float,
    external_load: float,
    class_limits: tuple[str, ...],
    no_limit_headers: bool,
    log_path: Path | None,
    prices_path: Path | None,
) -> None:
    """Serve the simulator until SIGINT or SIGTERM; print its base URL on stdout first.

    Any API key is accepted. Point the SDK at it with ANTHROPIC_BASE_URL.

    \b
    Example:
        review-runner simulator serve --port 8765 --rpm 50 --itpm 30000 --otpm 8000
        review-runner simulator serve --rpm 60 --enforce-interval 1 --external-load 0.3
        ANTHROPIC_BASE_URL=http://127.0.0.1:8765 ANTHROPIC_API_KEY=x review-runner run jobs/nightly.toml
    """
    share = (fault_rate or 0.0) / 3
    config = SimConfig(
        enforce_interval=enforce_interval,
        external_load=external_load,
        class_limits=_class_limits(class_limits),
        send_limit_headers=not no_limit_headers,
        batch_expire_rate=batch_expire_rate,
        batch_error_rate=batch_error_rate,
        rpm=rpm,
        itpm=itpm,
        otpm=otpm,
        max_concurrent=max_concurrent,
        latency=latency,
        per_token=per_token,
        output_mean=output_mean,
        output_spread=output_spread,
        overloaded_rate=share if overloaded_rate is None else overloaded_rate,
        server_error_rate=share if server_error_rate is None else server_error_rate,
        drop_rate=share if drop_rate is None else drop_rate,
        spend_cap_usd=spend_cap_usd,
        seed=seed,
        min_cacheable_tokens=min_cacheable_tokens,
        log_path=log_path,
        batch_delay=batch_delay,
        prices_path=prices_path,
    )
    _serve_until_signal(config, port)


def _serve_until_signal(config: SimConfig, port: int) -> None:
    """Serve `config` on `port`, print its URL, stop on SIGINT/SIGTERM and print its stats."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    sim = Simulator(config)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        url = sim.start(port)
        click.echo(url)
        sys.stdout.flush()  # the URL line reaches a reading parent at once
        click.echo(f"simulator listening on {url} (Ctrl-C or SIGTERM to stop)", err=True)
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    stats = sim.stats()
    click.echo(
        f"simulator stopped: {stats['requests']} requests, {stats['rate_limited']} rate-limited, "
        f"${stats['cost_usd']:.4f} billed",
        err=True,
    )


def _class_limits(specs: tuple[str, ...]) -> dict[str, ClassLimits]:
    out: dict[str, ClassLimits] = {}
    for spec in specs:
        try:
            cls, limits = parse_class_limit(spec)
        except RunnerInputError as exc:
            raise click.BadParameter(str(exc), param_hint="--class-limit") from None
        out[cls] = limits
    return out
