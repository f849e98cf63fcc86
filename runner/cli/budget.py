"""review-runner budget: the monthly budget, what is spent, and unknown reservations.

Exit codes: 0 success; 2 bad input (a negative or non-numeric budget, a bad month, a corrupt
or newer ledger.db; nothing is modified); 1 any other error.
"""

from __future__ import annotations

from typing import Any

import click

from ledger import BudgetStatus, Ledger
from ledger.prices import money
from runner.cli.common import echo_json, json_option
from statedb import state_dir

__all__ = ["budget", "open_ledger"]

BAR_WIDTH = 40
CHART_HEIGHT = 6


def open_ledger() -> Ledger:
    """The ledger at state_dir()/ledger.db, priced with state_dir()/prices.json if present."""
    home = state_dir()
    return Ledger(home / "ledger.db", price_override=home / "prices.json")


@click.group()
def budget() -> None:
    """Show and set the monthly budget (UTC calendar months).

    Exit codes: 0 done; 2 bad input (a negative or non-numeric budget, a bad month, a
    corrupt or newer ledger.db), with nothing modified.

    \b
    Example:
        review-runner budget set --usd 500
        review-runner budget status --json
    """


def _tokens(n: int | None) -> str:
    return "no token limit" if n is None else f"{n:,} tokens"


def _bar(status: BudgetStatus) -> str:
    """# spent, = reserved and held, . free; scaled to the USD budget (else tokens)."""
    if status.budget_micros is not None:
        total = status.budget_micros
        used, committed = status.spent_micros, status.reserved_micros + status.held_micros
    elif status.budget_tokens is not None:
        total = status.budget_tokens
        used = status.spent_tokens + status.unknown_tokens
        committed = status.reserved_tokens + status.held_tokens
    else:
        return ""
    if total <= 0:
        return "[" + "#" * BAR_WIDTH + "]"
    full = min(BAR_WIDTH, round(BAR_WIDTH * used / total))
    part = min(BAR_WIDTH - full, round(BAR_WIDTH * committed / total))
    return "[" + "#" * full + "=" * part + "." * (BAR_WIDTH - full - part) + "]"


def render_daily(daily: tuple[tuple[str, int], ...]) -> list[str]:
    """Spend per day as a small vertical bar chart: one column per day, CHART_HEIGHT rows."""
    peak = max(micros for _, micros in daily) or 1
    heights = [round(CHART_HEIGHT * micros / peak) if micros else 0 for _, micros in daily]
    # A day with any spend gets at least one mark, so small days are not invisible.
    heights = [max(h, 1) if micros else 0 for h, (_, micros) in zip(heights, daily, strict=True)]
    lines = [f"spend per day (peak {money(peak)})"]
    for level in range(CHART_HEIGHT, 0, -1):
        lines.append("  |" + "".join("#" if h >= level else " " for h in heights))
    lines.append("  +" + "-" * len(daily))
    lines.append("   " + "".join(day[-1] for day, _ in daily) + "  (day of month, last digit)")
    return lines


def render_status(status: BudgetStatus) -> str:
    """The text rendering of `budget status`."""
    lines = []
    if status.budget_micros is None and status.budget_tokens is None:
        lines.append(
            f"Budget {status.month}: none set (review-runner budget set --usd 500 sets one)"
        )
    else:
        usd = "no USD limit" if status.budget_micros is None else money(status.budget_micros)
        lines.append(f"Budget {status.month}: {usd}, {_tokens(status.budget_tokens)}")
        pct = status.percent_used or 0.0
        lines.append(f"{_bar(status)} {pct:5.1f}% used  (# spent, = reserved/held)")
    lines.append(
        f"spent      {money(status.spent_micros):>12}  {status.spent_tokens:,} tokens "
        f"(input {status.input_tokens:,}, output {status.output_tokens:,}, "
        f"cache write {status.cache_creation_input_tokens:,}, "
        f"cache read {status.cache_read_input_tokens:,})"
    )
    lines.append(
        f"reserved   {money(status.reserved_micros):>12}  {status.reserved_tokens:,} tokens"
    )
    lines.append(
        f"held       {money(status.held_micros):>12}  {status.held_tokens:,} tokens "
        f"({status.active_runs} active run{'s' if status.active_runs != 1 else ''})"
    )
    remaining = (
        "no USD limit" if status.remaining_micros is None else money(status.remaining_micros)
    )
    lines.append(f"remaining  {remaining:>12}  {_tokens(status.remaining_tokens)}")
    if status.unknown_reservations:
        lines.append(
            f"unknown    {status.unknown_reservations} reservation(s) charged at the worst case "
            f"({money(status.unknown_micros)}); check the console, then "
            "`review-runner budget reconcile`"
        )
    if status.batch_spent_micros or status.batch_processing:
        lines.append(
            f"batches    {money(status.batch_spent_micros):>12}  spent at the batch price; "
            f"{status.batch_processing} request(s) still processing (held at the worst case)"
        )
    lines.append(
        f"burn rate  {money(status.burn_micros_per_day)}/day; at that rate "
        f"{money(status.projected_micros)} by the end of {status.month}"
    )
    fits = []
    for mode in ("single", "concurrent"):
        avg = status.review_average.get(mode)
        count = status.reviews_fit.get(mode)
        if avg is None:
            fits.append(f"{mode}: no history yet")
            continue
        each = (
            f"{money(avg['micros'] // avg['reviews'])}, "
            f"{avg['tokens'] // avg['reviews']:,} tokens each"
        )
        fits.append(f"{mode}: {'no limit' if count is None else count} ({each})")
    lines.append("reviews that fit at the recent average: " + "; ".join(fits))
    lines.append(
        f"429s in {status.month}: {status.rate_limited}; spend-cap hits: {status.spend_cap_hits}"
    )
    if any(micros for _, micros in status.daily_micros):
        lines.append("")
        lines.extend(render_daily(status.daily_micros))
    return "\n".join(lines)


@budget.command()
@click.option("--month", metavar="YYYY-MM", help="A month other than the current one (UTC).")
@json_option
def status(month: str | None, as_json: bool) -> None:
    """Show the month's budget, spend, holds, burn rate and reviews that still fit.

    \b
    Example:
        review-runner budget status
        review-runner budget status --month 2026-10 --json
    """
    with open_ledger() as ledger:
        result = ledger.status(month)
    if as_json:
        echo_json(result.to_json())
    else:
        click.echo(render_status(result))


@budget.command(name="set")
@click.option("--usd", metavar="X", help="Budget in US dollars, for example 500 or 12.50.")
@click.option("--tokens", metavar="N", help="Budget in tokens (all four kinds summed).")
@click.option("--month", metavar="YYYY-MM", help="Override one month only (default: every month).")
def set_budget(usd: str | None, tokens: str | None, month: str | None) -> None:
    """Set the standing monthly budget, or one month's override.

    \b
    Example:
        review-runner budget set --usd 500
        review-runner budget set --tokens 5000000 --month 2026-12
    """
    if usd is None and tokens is None:
        raise click.UsageError("give --usd X or --tokens N")
    count: Any = tokens
    if tokens is not None:
        try:
            count = int(tokens.replace(",", "").replace("_", ""))
        except ValueError:
            count = tokens  # the ledger names what was expected
    with open_ledger() as ledger:
        ledger.set_budget(usd=usd, tokens=count, month=month)
        money_budget, token_budget = ledger.budget(month)
    which = f"for {month}" if month else "per month"
    usd_text = "no USD limit" if money_budget is None else money(money_budget)
    click.echo(f"Budget {which}: {usd_text}, {_tokens(token_budget)}")


@budget.command()
@json_option
def history(as_json: bool) -> None:
    """Show spend per month, and each run projected against actual.

    \b
    Example:
        review-runner budget history --json
    """
    with open_ledger() as ledger:
        months = ledger.history()
    if as_json:
        echo_json({"months": months})
        return
    if not months:
        click.echo("No spend recorded yet.")
    for entry in months:
        limit = "no USD limit" if entry["budget_usd"] is None else f"${entry['budget_usd']:,.2f}"
        click.echo(
            f"{entry['month']}: spent ${entry['spent_usd']:,.2f} of {limit}, "
            f"{entry['spent_tokens']:,} tokens, {entry['entries']} requests, "
            f"{entry['unknown_reservations']} unknown"
        )
        for run in entry["runs"]:
            projected = "-" if run["projected_usd"] is None else f"${run['projected_usd']:,.2f}"
            click.echo(
                f"  {run['run_id']}  {run['mode'] or '-':<10} projected {projected:>10}  "
                f"actual ${run['actual_usd']:,.2f}  {run['requests']} requests"
                + (f", {run['unknown']} unknown" if run["unknown"] else "")
            )


@budget.command()
@click.option(
    "--release",
    "release_ids",
    type=int,
    multiple=True,
    metavar="ID",
    help="Release an unknown entry the console shows was not billed.",
)
@click.option(
    "--charge",
    nargs=2,
    type=(int, str),
    multiple=True,
    metavar="ID USD",
    help="Charge an unknown entry the amount the console shows.",
)
@click.option("--month", metavar="YYYY-MM", help="List one month only.")
@json_option
def reconcile(
    release_ids: tuple[int, ...],
    charge: tuple[tuple[int, str], ...],
    month: str | None,
    as_json: bool,
) -> None:
    """List unknown reservations; release or charge them after checking the console.

    An unknown reservation was sent but got no answer (a dropped connection, a killed
    process): it stays charged at its worst case until resolved here.

    \b
    Example:
        review-runner budget reconcile
        review-runner budget reconcile --release 1234
        review-runner budget reconcile --charge 1235 0.42
    """
    with open_ledger() as ledger:
        done = []
        for entry_id in release_ids:
            ledger.reconcile(entry_id)
            done.append({"id": entry_id, "action": "released", "cost_usd": 0.0})
        for entry_id, amount in charge:
            cost = ledger.reconcile(entry_id, cost_usd=amount)
            done.append({"id": entry_id, "action": "charged", "cost_usd": cost / 1_000_000})
        ledger.sweep()
        left = ledger.unknown_entries(month)
    unknown = [
        {
            "id": e["id"],
            "month": e["month"],
            "run_id": e["run_id"],
            "job_id": e["job_id"],
            "model": e["model"],
            "worst_usd": e["worst_micros"] / 1_000_000,
            "reserved_at": e["reserved_at"],
        }
        for e in left
    ]
    if as_json:
        echo_json({"reconciled": done, "unknown": unknown})
        return
    for item in done:
        click.echo(f"entry {item['id']}: {item['action']} ${item['cost_usd']:,.2f}")
    if not unknown:
        click.echo("No unknown reservations.")
    for e in unknown:
        click.echo(
            f"{e['id']:>8}  {e['reserved_at']}  {e['run_id']}  {e['job_id']}  {e['model']}  "
            f"charged ${e['worst_usd']:,.2f} (worst case)"
        )
