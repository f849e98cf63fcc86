"""The state databases a run opens: the limiter, the ledger and runs.db of one state directory."""

from __future__ import annotations

from dataclasses import dataclass

from ledger.ledger import Ledger
from runner.limiter import Limiter
from runner.run.config import RunConfig
from runner.runs import Runs
from statedb import StatePaths

__all__ = ["State", "open_state"]


@dataclass
class State:
    """The three databases of a state directory."""

    paths: StatePaths
    limiter: Limiter
    ledger: Ledger
    runs: Runs


def open_state(config: RunConfig, *, readonly: bool = False) -> State:
    """Open the limiter (storing the configured limits unless `readonly`), the ledger and runs.db."""
    paths = config.state
    return State(
        paths=paths,
        limiter=Limiter(
            paths.root,
            config.limits.limiter(),
            burst=config.limits.burst_seconds,
            base_url=config.base_url,
            readonly=readonly,
        ),
        ledger=Ledger(paths.ledger, price_override=paths.prices),
        runs=Runs(paths.runs),
    )
