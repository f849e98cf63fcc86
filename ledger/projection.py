"""What a run would cost: expected tokens and dollars per mode, from history or stated priors.

Priors, used until history exists:
- output: half of `max_output` per request (a findings reply rarely fills the cap; the
  reservation still holds the full cap, so a low prior cannot overspend);
- input: the local estimate as it is (calibration ratio 1.0).
History replaces them: expected output is the exponentially weighted moving average of
settled output tokens for that agent and model; a local input estimate is multiplied by the
weighted ratio of actual to estimated input for that model (clamped to 0.5-3.0, so one odd
request cannot swing a plan). Estimates from the API's count_tokens are taken as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from ledger.errors import LedgerInputError
from ledger.modes import Mode
from ledger.prices import Price, price_for, usd, worst_case_micros

__all__ = [
    "EMA_ALPHA",
    "ESTIMATE_MARGIN",
    "INPUT_RATIO_BOUNDS",
    "OUTPUT_PRIOR_SHARE",
    "JobEstimate",
    "Projection",
    "project",
    "worst_input",
]

OUTPUT_PRIOR_SHARE = Decimal("0.5")
EMA_ALPHA = 0.2
INPUT_RATIO_BOUNDS = (0.5, 3.0)
# A local estimate (count_tokens failed or was not asked) is reserved at this multiple at least.
# The estimator counts 3.5 UTF-8 bytes a token; dense text (hashes, base64, minified code, digits)
# runs nearer 2.4 bytes a token, and newer tokenizers yield up to a third more tokens for the same
# text: 1.5x keeps the reserved worst case above what such a prompt can bill. A learned ratio above
# it (the model's history of actual/estimate) raises it further.
ESTIMATE_MARGIN = 1.5
MODES = tuple(Mode)  # kept for importers; the enumeration is ledger.modes


@dataclass(frozen=True)
class JobEstimate:
    """One request a run would send."""

    agent: str
    model: str
    input_tokens: int  # all of the prompt, cached prefix included
    max_output: int
    counted: bool = False
    cache_write_tokens: int = 0  # of input_tokens, expected to be written to the cache
    cache_read_tokens: int = 0  # of input_tokens, expected to be read from the cache
    cache_ttl: str = "5m"  # the TTL its cache writes are priced at ("5m" or "1h")


@dataclass(frozen=True)
class Projection:
    """Expected and worst-case tokens and cost of one mode of a run."""

    mode: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost_micros: int
    worst_micros: int

    def to_json(self) -> dict[str, Any]:
        """requests, input_tokens, output_tokens, cost_usd, worst_usd (USD as numbers)."""
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": usd(self.cost_micros),
            "worst_usd": usd(self.worst_micros),
        }

    @property
    def tokens(self) -> int:
        """Expected input plus output tokens."""
        return self.input_tokens + self.output_tokens


def _round(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def worst_input(estimate: int, ratio: float | None) -> int:
    """The input tokens to reserve for a local `estimate`: ESTIMATE_MARGIN times it at least,
    the learned actual/estimate `ratio` (capped) when that is higher."""
    factor = max(ESTIMATE_MARGIN, min(ratio or 0.0, INPUT_RATIO_BOUNDS[1]))
    return math.ceil(estimate * Decimal(str(factor)))


def project(
    mode: str,
    jobs: Sequence[JobEstimate],
    prices: Mapping[str, Price],
    expected_output: Callable[[str, str], float | None],
    input_ratio: Callable[[str], float | None],
    *,
    batch: bool = False,
) -> Projection:
    """The projection of `jobs` in `mode`; UnknownModel for a model without a price.

    `expected_output(agent, model)` and `input_ratio(model)` give history, or None for the prior.
    `batch`: the jobs go as Message Batches, every price at the model's batch discount.
    """
    if mode not in MODES:
        raise LedgerInputError(f"bad mode {mode!r}: expected one of {', '.join(MODES)}")
    total_in = total_out = 0
    cost = Decimal(0)
    worst = 0
    for job in jobs:
        cached = job.cache_write_tokens + job.cache_read_tokens
        if min(job.input_tokens, job.max_output, job.cache_write_tokens, job.cache_read_tokens) < 0:
            raise LedgerInputError(f"job {job.agent}: token counts must not be negative")
        if cached > job.input_tokens:
            raise LedgerInputError(f"job {job.agent}: more cached tokens than input tokens")
        price = price_for(prices, job.model)
        write_price = price.cache_write_1h if job.cache_ttl == "1h" else price.cache_write_5m
        tokens_in = job.input_tokens
        if not job.counted:
            ratio = input_ratio(job.model)
            if ratio is not None:
                low, high = INPUT_RATIO_BOUNDS
                tokens_in = _round(Decimal(job.input_tokens) * Decimal(min(max(ratio, low), high)))
        history = expected_output(job.agent, job.model)
        if history is None:
            tokens_out = _round(job.max_output * OUTPUT_PRIOR_SHARE)
        else:
            tokens_out = min(job.max_output, _round(Decimal(history)))
        total_in += tokens_in
        total_out += tokens_out
        # Calibration scales the uncached part only: the cached prefix is counted as it is.
        uncached = max(0, tokens_in - cached)
        job_cost = (
            uncached * price.input
            + job.cache_write_tokens * write_price
            + job.cache_read_tokens * price.cache_read
            + tokens_out * price.output
        )
        cost += job_cost * (1 - price.batch_discount) if batch else job_cost
        worst_in = (
            tokens_in if job.counted else worst_input(job.input_tokens, input_ratio(job.model))
        )
        worst += worst_case_micros(
            price, worst_in, job.max_output, cache_ttl=job.cache_ttl, batch=batch
        )
    return Projection(
        mode=mode,
        requests=len(jobs),
        input_tokens=total_in,
        output_tokens=total_out,
        cost_micros=_round(cost),
        worst_micros=worst,
    )
