"""Before anything is sent: resolve and pack the repos, estimate every request, project each mode.

A plan is what `review-runner plan` prints and what `run` asks the ledger to admit.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.agents import COMBINED, build_prompt, load_prompts
from jobs.manifest import Manifest, RepoSpec, resolve_repo
from jobs.pack import Pack, estimate_tokens, pack_repo
from ledger.ledger import JobEstimate, Ledger, Projection
from runner.limiter import Health

__all__ = [
    "MODES",
    "WARM",
    "Plan",
    "PlannedJob",
    "RepoWork",
    "count_prefixes",
    "latency_prior",
    "make_plan",
    "pack_all",
    "planned_jobs",
    "wall_time",
]

MODES = ("concurrent", "single")
# The pseudo-agent of the max_tokens=0 request that writes a repo's prefix to the cache.
WARM = "_warm"
# The platform caches no prefix shorter than this (1,024 tokens for Sonnet and Opus).
MIN_CACHEABLE_TOKENS = 1024
# Without measured latencies: time to first token plus output at a typical generation speed.
FIRST_TOKEN_S = 2.0
OUTPUT_TOKENS_PER_S = 60.0


@dataclass(frozen=True)
class RepoWork:
    """A repository ready for review: where it is and its pack."""

    spec: RepoSpec
    root: Path
    pack: Pack


@dataclass(frozen=True)
class PlannedJob:
    """One request a mode would send. Input counts include the cached prefix."""

    slug: str
    agent: str
    model: str
    input_tokens: int
    max_output: int
    counted: bool
    cache_write: int = 0  # prefix tokens this request writes to the cache
    cache_read: int = 0  # prefix tokens it is expected to read from the cache
    after: str | None = None  # the agent whose request must finish first (the cache warm-up)

    @property
    def rate_tokens(self) -> int:
        """What counts toward ITPM: uncached input and cache writes, not cache reads."""
        return self.input_tokens - self.cache_read


@dataclass(frozen=True)
class Plan:
    manifest: Manifest
    works: tuple[RepoWork, ...]
    prompts: Mapping[str, str]
    jobs: Mapping[str, tuple[PlannedJob, ...]]  # by mode
    projections: Mapping[str, Projection]  # by mode
    wall_time_s: Mapping[str, float]  # by mode
    limits: Mapping[str, int | None]
    health: Health

    def modes_json(self) -> dict[str, Any]:
        """The `modes` document of `plan --json`."""
        return {
            mode: {
                **self.projections[mode].to_json(),
                "wall_time_s": round(self.wall_time_s[mode], 1),
            }
            for mode in MODES
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
) -> tuple[RepoWork, ...]:
    """Resolve (clone) and pack every repo, in parallel processes when there are several."""

    def collect(results: Iterable[RepoWork]) -> tuple[RepoWork, ...]:
        works = []
        for work in results:
            works.append(work)
            if on_packed:
                on_packed(work)
        return tuple(works)

    if len(repos) <= 1:  # not worth starting a process pool
        return collect(_pack_one(spec, cache_dir) for spec in repos)
    workers = min(len(repos), os.cpu_count() or 1)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return collect(pool.map(_pack_one, repos, [cache_dir] * len(repos)))


def count_prefixes(works: Sequence[RepoWork], counter: Callable[[RepoWork], int]) -> dict[str, int]:
    """Each repo's prefix (system + pack) as the API counts it, a few round trips at a time."""
    with ThreadPoolExecutor(4) as pool:
        return dict(zip((w.spec.slug for w in works), pool.map(counter, works), strict=True))


def _estimate(
    work: RepoWork, agent: str, prompts: Mapping[str, str], max_output: int
) -> tuple[int, int]:
    """(prefix, instructions) tokens by the local estimate: the prefix is system + pack."""
    prompt = build_prompt(work.pack, agent, prompts, max_output_tokens=max_output)
    prefix = estimate_tokens(prompt.system) + work.pack.token_estimate
    return prefix, estimate_tokens(prompt.instructions)


def planned_jobs(
    manifest: Manifest,
    works: Sequence[RepoWork],
    prompts: Mapping[str, str],
    mode: str,
    prefixes: Mapping[str, int] | None = None,
) -> tuple[PlannedJob, ...]:
    """Every request `mode` would send; `prefixes` are the API's counts by slug, if known.

    Concurrent mode warms the cache first when the prefix is long enough to cache: one
    max_tokens=0 request writes the prefix, then the agents read it (parallel requests
    sent before a cache entry exists would each pay to write it).
    """
    counted = prefixes is not None
    prefixes = prefixes or {}
    jobs: list[PlannedJob] = []
    max_output = manifest.max_output_tokens
    for work in works:
        slug, model = work.spec.slug, work.spec.model
        agents = work.spec.agents if mode == "concurrent" else (COMBINED,)
        for agent in agents:
            local_prefix, instructions = _estimate(work, agent, prompts, max_output)
            prefix = prefixes.get(slug, local_prefix)
            warm = mode == "concurrent" and prefix >= MIN_CACHEABLE_TOKENS
            if warm and agent == agents[0]:
                jobs.append(PlannedJob(slug, WARM, model, prefix, 0, counted, cache_write=prefix))
            jobs.append(
                PlannedJob(
                    slug,
                    agent,
                    model,
                    prefix + instructions,
                    max_output,
                    counted,
                    cache_read=prefix if warm else 0,
                    after=WARM if warm else None,
                )
            )
    return tuple(jobs)


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
    manifest: Manifest,
    ledger: Ledger,
    *,
    cache_dir: Path,
    limits: Mapping[str, int | None],
    health: Health,
    concurrency: int,
    works: Sequence[RepoWork] | None = None,
    counter: Callable[[RepoWork], int] | None = None,
    on_packed: Callable[[RepoWork], None] | None = None,
) -> Plan:
    """Pack (unless `works` are given), estimate and project both modes."""
    prompts = load_prompts(manifest.prompts)
    if works is None:
        works = pack_all(manifest.repos, cache_dir, on_packed=on_packed)
    prefixes = count_prefixes(works, counter) if counter is not None else None
    jobs: dict[str, tuple[PlannedJob, ...]] = {}
    projections: dict[str, Projection] = {}
    times: dict[str, float] = {}
    for mode in MODES:
        jobs[mode] = planned_jobs(manifest, works, prompts, mode, prefixes)
        estimates = [
            JobEstimate(
                j.agent,
                j.model,
                j.input_tokens,
                j.max_output,
                counted=j.counted,
                cache_write_tokens=j.cache_write,
                cache_read_tokens=j.cache_read,
            )
            for j in jobs[mode]
        ]
        projection = ledger.project(mode, estimates)
        projections[mode] = projection
        per_request = projection.output_tokens / max(1, projection.requests)
        rate_tokens = sum(j.rate_tokens for j in jobs[mode])
        latency = latency_prior(per_request, health)
        times[mode] = wall_time(projection, rate_tokens, limits, latency, concurrency)
    return Plan(
        manifest=manifest,
        works=tuple(works),
        prompts=prompts,
        jobs=jobs,
        projections=projections,
        wall_time_s=times,
        limits=dict(limits),
        health=health,
    )
