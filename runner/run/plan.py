"""Before anything is sent: pack the repos, build each prompt and each Job once, project each mode.

A Plan is what `review-runner plan` renders and what `run` asks the ledger to admit. Each
repo's prompt texts are built here once (RepoPrompts) and shipped to every worker process
once with the pack (see runner.run.pool); Jobs carry only their own numbers.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from jobs.agents import COMBINED, build_prompt, findings_tool, load_prompts
from jobs.manifest import Manifest, RepoSpec, resolve_repo
from jobs.pack import pack_repo
from jobs.pack_format import estimate_tokens
from jobs.pack_record import Pack
from jobs.select import PackError
from ledger.ledger import JobEstimate, Ledger, Projection
from ledger.modes import Mode
from runner.limiter import Health
from runner.run.decisions import RepoDecision, RepoFacts
from runner.run.job import Job

__all__ = [
    "MIN_CACHEABLE_TOKENS",
    "Plan",
    "RepoPrompts",
    "RepoWork",
    "build_jobs",
    "count_prefixes",
    "job_estimates",
    "latency_prior",
    "make_plan",
    "pack_all",
    "repo_prompts",
    "wall_time",
    "with_prompts",
]

# The platform caches no prefix shorter than this (1,024 tokens for Sonnet and Opus).
MIN_CACHEABLE_TOKENS = 1024
# Without measured latencies: time to first token plus output at a typical generation speed.
FIRST_TOKEN_S = 2.0
OUTPUT_TOKENS_PER_S = 60.0
# The findings tool every request carries heads the prefix: its definition counts as input.
TOOL_TOKENS = estimate_tokens(json.dumps(findings_tool(), separators=(",", ":")))


@dataclass(frozen=True)
class RepoPrompts:
    """A repo's request texts: the shared prefix (system + pack) and each agent's instructions."""

    system: str
    pack: str
    instructions: Mapping[str, str]  # by agent


@dataclass(frozen=True)
class RepoWork:
    """A repository ready for review: where it is, its pack and its prompts."""

    spec: RepoSpec
    root: Path
    pack: Pack
    prompts: RepoPrompts | None = None
    facts: RepoFacts | None = None  # what it is tonight (runner.run.incremental)
    decision: RepoDecision | None = None  # tonight's mode for it and why; None: the run's rule

    @property
    def preferred(self) -> Mode:
        """The mode this repo asks for; the run's rule (concurrent, budget allowing) when unset."""
        if self.decision is not None and self.decision.mode is not None:
            return self.decision.mode
        return Mode.CONCURRENT


@dataclass(frozen=True)
class Plan:
    """Both modes of a manifest: their jobs, projections and expected wall times."""

    manifest: Manifest
    works: tuple[RepoWork, ...]
    jobs: Mapping[Mode, tuple[Job, ...]]  # Job, by mode
    projections: Mapping[Mode, Projection]
    wall_time_s: Mapping[Mode, float]
    limits: Mapping[str, int | None]
    health: Health
    counted: bool  # input sizes from the API's count_tokens (exact), not local estimates
    # Each repo in its own preferred mode (RepoWork.preferred): what a per-repo run sends.
    per_repo_jobs: tuple[Job, ...] = ()
    per_repo: Projection | None = None
    per_repo_wall_time_s: float = 0.0
    unchanged: tuple[RepoDecision, ...] = ()  # repos not sent tonight

    def repo_modes(self, jobs: Sequence[Job]) -> dict[str, Mode]:
        """The mode of each repo among `jobs`."""
        return {j.slug: j.mode for j in jobs}

    def decisions_json(self, jobs: Sequence[Job]) -> list[dict[str, Any]]:
        """Per repo: sent or not, its mode under `jobs`, and the reason (`plan --json`)."""
        modes = self.repo_modes(jobs)
        sent = [
            w.decision.to_json(modes.get(w.spec.slug))
            if w.decision is not None
            else {
                "slug": w.spec.slug,
                "action": "review",
                "mode": modes.get(w.spec.slug),
                "reason": "",
                "files_changed": None,
                "lines_changed": None,
                "unchanged_since": None,
            }
            for w in self.works
        ]
        return sent + [d.to_json() for d in self.unchanged]

    def modes_json(self) -> dict[str, Any]:
        """The `modes` document of `plan --json`."""
        return {
            str(mode): {
                **self.projections[mode].to_json(),
                "wall_time_s": round(self.wall_time_s[mode], 1),
            }
            for mode in Mode
        }


def _pack_one(spec: RepoSpec, cache_dir: Path) -> RepoWork:
    root = resolve_repo(spec, cache_dir)
    return RepoWork(
        spec, root, pack_repo(root, slug=spec.slug, max_input_tokens=spec.max_input_tokens)
    )


def pack_all(
    repos: Sequence[RepoSpec],
    cache_dir: Path,
    *,
    on_packed: Callable[[RepoWork], None] | None = None,
    on_failed: Callable[[RepoSpec, str], None] | None = None,
) -> tuple[RepoWork, ...]:
    """Resolve (clone) and pack every repo, in parallel processes when there are several.

    A repo that cannot be packed (PackError: an unreadable .gitignore, files that keep
    changing) is left out and reported to `on_failed(spec, reason)`, when given: one odd
    repo fails alone. Without `on_failed` the error is raised.
    """
    works = []

    def collect(spec: RepoSpec, result: Callable[[], RepoWork]) -> None:
        try:
            work = result()
        except PackError as exc:
            if on_failed is None:
                raise
            on_failed(spec, str(exc))
            return
        works.append(work)
        if on_packed:
            on_packed(work)

    if len(repos) <= 1:  # not worth starting a process pool
        for spec in repos:
            collect(spec, partial(_pack_one, spec, cache_dir))
        return tuple(works)
    workers = min(len(repos), os.cpu_count() or 1)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(_pack_one, spec, cache_dir) for spec in repos]
        for spec, future in zip(repos, futures, strict=True):
            collect(spec, future.result)
    return tuple(works)


def repo_prompts(
    pack: Pack, agents: Iterable[str], prompts: Mapping[str, str], max_output: int
) -> RepoPrompts:
    """Build `pack`'s prompt once for every agent in `agents` (the system text is agent-free)."""
    built = {a: build_prompt(pack, a, prompts, max_output_tokens=max_output) for a in agents}
    first = next(iter(built.values()))
    return RepoPrompts(
        system=first.system,
        pack=first.pack,
        instructions={a: p.instructions for a, p in built.items()},
    )


def with_prompts(works: Sequence[RepoWork], manifest: Manifest) -> tuple[RepoWork, ...]:
    """`works` with their prompts built: the specialists and the combined agent of each repo."""
    texts = load_prompts(manifest.prompts)
    return tuple(
        replace(
            w,
            prompts=repo_prompts(
                w.pack, (*w.spec.agents, COMBINED), texts, manifest.max_output_tokens
            ),
        )
        for w in works
    )


def count_prefixes(works: Sequence[RepoWork], counter: Callable[[RepoWork], int]) -> dict[str, int]:
    """Each repo's prefix (system + pack) as the API counts it, a few round trips at a time."""
    with ThreadPoolExecutor(4) as pool:
        return dict(zip((w.spec.slug for w in works), pool.map(counter, works), strict=True))


def build_jobs(
    run_id: str,
    manifest: Manifest,
    works: Sequence[RepoWork],
    mode: Mode,
    prefixes: Mapping[str, int] | None = None,
) -> tuple[Job, ...]:
    """Every Job `mode` would send; `prefixes` are the API's counts by slug, if known.

    Concurrent mode warms the cache first when the prefix is long enough to cache: one
    max_tokens=0 request writes the prefix, then the agents read it (parallel requests
    sent before a cache entry exists would each pay to write it).
    """
    counted = prefixes is not None
    jobs: list[Job] = []
    max_output = manifest.max_output_tokens
    for work in works:
        assert work.prompts is not None, "with_prompts() first"
        prompts = work.prompts
        agents = work.spec.agents if mode == Mode.CONCURRENT else (COMBINED,)
        local_prefix = TOOL_TOKENS + estimate_tokens(prompts.system) + work.pack.token_estimate
        prefix = (prefixes or {}).get(work.spec.slug, local_prefix)
        warm = mode == Mode.CONCURRENT and prefix >= MIN_CACHEABLE_TOKENS
        slug, model = work.spec.slug, work.spec.model
        warm_up = Job(
            run_id,
            slug,
            agents[0],
            mode,
            model,
            input_tokens=prefix,
            max_output=0,
            counted=counted,
            warm=True,
            cache_write=prefix,
        )
        if warm:
            jobs.append(warm_up)
        for agent in agents:
            instructions = estimate_tokens(prompts.instructions[agent])
            jobs.append(
                Job(
                    run_id,
                    slug,
                    agent,
                    mode,
                    model,
                    input_tokens=prefix + instructions,
                    max_output=max_output,
                    counted=counted,
                    cache_read=prefix if warm else 0,
                    after=warm_up.id if warm else None,
                )
            )
    return tuple(jobs)


def job_estimates(jobs: Iterable[Job]) -> list[JobEstimate]:
    """What the ledger projects of each Job."""
    # The ledger keys a warm-up apart (its output is always 0: it must not teach an agent's).
    return [
        JobEstimate(
            j.key,
            j.model,
            j.input_tokens,
            j.max_output,
            counted=j.counted,
            cache_write_tokens=j.cache_write,
            cache_read_tokens=j.cache_read,
            cache_ttl=j.cache_ttl,
        )
        for j in jobs
    ]


def latency_prior(output_tokens_per_request: float, health: Health) -> float:
    """Seconds per request: the measured median when there is one, else the stated prior."""
    if health.latency_p50:
        return health.latency_p50
    return FIRST_TOKEN_S + output_tokens_per_request / OUTPUT_TOKENS_PER_S


def wall_time(
    projection: Projection,
    rate_tokens: int,
    limits: Mapping[str, int | None],
    latency: float,
    concurrency: int,
) -> float:
    """Expected seconds at the account's limits: the slowest of what each limit and latency allow.

    `rate_tokens` is the input that counts toward ITPM (cache reads do not).
    """
    bounds = [latency * projection.requests / max(1, concurrency)]
    for key, amount in (
        ("rpm", projection.requests),
        ("itpm", rate_tokens),
        ("otpm", projection.output_tokens),
    ):
        limit = limits.get(key)
        if limit:
            bounds.append(60.0 * amount / limit)
    return max(bounds)


def make_plan(
    run_id: str,
    manifest: Manifest,
    works: Sequence[RepoWork],
    ledger: Ledger,
    *,
    limits: Mapping[str, int | None],
    health: Health,
    concurrency: int,
    prefixes: Mapping[str, int] | None = None,
) -> Plan:
    """Build every Job of both modes once and project each mode (`works` have their prompts)."""
    jobs: dict[Mode, tuple[Job, ...]] = {}
    projections: dict[Mode, Projection] = {}
    times: dict[Mode, float] = {}
    built = {mode: build_jobs(run_id, manifest, works, mode, prefixes) for mode in Mode}
    wanted = {w.spec.slug: w.preferred for w in works}
    mixed = tuple(j for mode in Mode for j in built[mode] if wanted[j.slug] == mode)
    order = {w.spec.slug: i for i, w in enumerate(works)}
    mixed = tuple(sorted(mixed, key=lambda j: order[j.slug]))  # stable: a repo's jobs keep order

    def project(label: Mode, planned: tuple[Job, ...]) -> tuple[tuple[Job, ...], Projection, float]:
        projection = ledger.project(label, job_estimates(planned))
        per_request = projection.output_tokens / max(1, projection.requests)
        # The limiter debits each request's expected output up front, the same for every job.
        expected = max(1, -(-projection.output_tokens // max(1, projection.requests)))
        sized = tuple(replace(j, output_estimate=min(expected, j.max_output)) for j in planned)
        rate_tokens = sum(j.rate_tokens for j in planned)
        time = wall_time(
            projection, rate_tokens, limits, latency_prior(per_request, health), concurrency
        )
        return sized, projection, time

    for mode in Mode:
        jobs[mode], projections[mode], times[mode] = project(mode, built[mode])
    # Labelled concurrent for the ledger when any repo is: admission's concurrent branch.
    label = Mode.CONCURRENT if any(j.mode == Mode.CONCURRENT for j in mixed) else Mode.SINGLE
    per_jobs, per_projection, per_time = project(label, mixed)
    return Plan(
        manifest=manifest,
        works=tuple(works),
        jobs=jobs,
        projections=projections,
        wall_time_s=times,
        limits=dict(limits),
        health=health,
        counted=prefixes is not None,
        per_repo_jobs=per_jobs,
        per_repo=per_projection,
        per_repo_wall_time_s=per_time,
    )
