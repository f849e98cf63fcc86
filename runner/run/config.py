"""RunConfig: the manifest and the command line's overrides, merged once.

Everything downstream (the simulator's limits, the limiter's, the worker's, the mode asked
for, the output folder) reads the merged values from here; nothing merges them again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from jobs.manifest import Manifest, load_manifest
from ledger.modes import RequestedMode
from runner.limiter import Limits
from runner.run.resume import find_run
from runner.runs import RunRow, Runs
from statedb import StatePaths

__all__ = ["LimitsConfig", "RunConfig", "RunOptions", "load_config"]

_LIMIT_KEYS = ("rpm", "itpm", "otpm", "max_concurrent")


@dataclass(frozen=True)
class LimitsConfig:
    """The configured limits ([limits] with the CLI on top); unset ones are learned or defaulted."""

    rpm: int | None = None
    itpm: int | None = None
    otpm: int | None = None
    max_concurrent: int | None = None
    # A cap on the idle refill the limiter may spend at once (0: strict pacing); None leaves it
    # to the account's pacing mode (see runner/limiter/limiter.py).
    burst_seconds: float | None = None

    @classmethod
    def merged(
        cls, manifest: Mapping[str, int], overrides: Mapping[str, int | None]
    ) -> LimitsConfig:
        """The manifest's [limits] with every override that is set on top."""
        values = {**manifest, **{k: v for k, v in overrides.items() if v is not None}}
        burst = values.get("burst_seconds")
        return cls(
            **{k: values[k] for k in _LIMIT_KEYS if values.get(k) is not None},
            burst_seconds=None if burst is None else float(burst),
        )

    def limiter(self) -> Limits:
        """The limiter's configuration."""
        return Limits(
            rpm=self.rpm, itpm=self.itpm, otpm=self.otpm, max_concurrent=self.max_concurrent
        )

    def simulator(self) -> dict[str, int | None]:
        """The per-minute limits the built-in simulator enforces (as the account would)."""
        return {"rpm": self.rpm, "itpm": self.itpm, "otpm": self.otpm}


@dataclass(frozen=True)
class RunOptions:
    """What the command line gave, before merging (None: the manifest's or the default)."""

    mode: str | None = None
    workers: int | None = None
    out: Path | None = None
    resume: str | None = None
    dry_run: bool = False
    limits: Mapping[str, int | None] = field(default_factory=dict)
    max_attempts: int = 5
    count_tokens: bool = True
    api: str | None = None  # messages | batches; None: the manifest's (or the resumed run's)
    wait: bool = True  # batches: wait for the results (False: submit and exit, `submitted`)
    poll_interval: float = 60.0  # batches: seconds between polls while waiting


@dataclass(frozen=True)
class RunConfig:
    """One run's settings, merged once. `resume` is the recorded run being resumed, if any."""

    manifest: Manifest
    state: StatePaths
    mode: RequestedMode
    limits: LimitsConfig
    out_root: Path
    workers: int | None = None  # None: the in-flight cap in force
    resume: RunRow | None = None
    dry_run: bool = False
    max_attempts: int = 5
    count_tokens: bool = True
    base_url: str | None = None
    # Only ever the simulator's dummy key: a real key stays in the environment, for the SDK.
    api_key: str | None = None
    api: str = "messages"  # messages | batches
    wait: bool = True
    poll_interval: float = 60.0

    def with_api(self, base_url: str | None, api_key: str | None) -> RunConfig:
        """The same run against another endpoint (the embedded simulator)."""
        return replace(self, base_url=base_url, api_key=api_key)


def load_config(
    manifest: Manifest | None, options: RunOptions, state_dir: Path, *, check_runs: bool = True
) -> RunConfig:
    """Merge `manifest` (None: the manifest of the run `options.resume`) with `options`.

    With both, the run resumed must be one of `manifest` (see runner.run.resume.find_run).

    runs.db is opened here, before any work, so that a corrupt one fails at once
    (`check_runs=False`, for `plan`, leaves it alone unless resuming).
    """
    state = StatePaths(state_dir)
    previous = None
    if options.resume or check_runs:
        runs = Runs(state.runs).open()
        previous = find_run(runs, options.resume, manifest) if options.resume else None
    if previous is not None:
        manifest = manifest or load_manifest(Path(previous.manifest))
        mode = RequestedMode(previous.mode or previous.requested_mode)
        out_root = Path(previous.out_dir)
        api = previous.api or "messages"  # a run keeps its API: its batches are there
    else:
        if manifest is None:
            raise ValueError("load_config: give a manifest or options.resume")
        mode = RequestedMode(options.mode or manifest.mode)
        out_root = options.out or manifest.out
        api = options.api or manifest.api
    return RunConfig(
        manifest=manifest,
        state=state,
        mode=mode,
        limits=LimitsConfig.merged(manifest.limits, options.limits),
        out_root=out_root,
        workers=options.workers,
        resume=previous,
        dry_run=options.dry_run,
        max_attempts=options.max_attempts,
        count_tokens=options.count_tokens,
        api=api,
        wait=options.wait,
        poll_interval=options.poll_interval,
    )
