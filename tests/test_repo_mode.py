"""The mode per repository (the seed's matrix made automatic) and admission per repo mode.

Tonight's decision for each repo comes from runner.run.incremental.triage against a remembered
review in runs.db; the per-repo plan goes through the real ledger's projection and admission.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from gitsupport import git, git_repos
from support import make_repos

from jobs.agents import load_prompts
from jobs.manifest import load_manifest
from ledger.ledger import Ledger
from ledger.modes import Decision, Mode
from runner.limiter import Health
from runner.repo_memory import Review, remember
from runner.run.incremental import triage
from runner.run.per_repo import admitted_jobs, mode_label, mode_reasons, wanted
from runner.run.plan import Plan, RepoWork, make_plan, pack_all, with_prompts
from runner.runs import Runs

NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)
GOOD = Health(True, "", 0, {}, None, None)


def manifest_for(tmp_path: Path, repos: list[Path], *, tables: str = "", extra: str = "") -> Path:
    entries = ", ".join(f'"{r}"' for r in repos)
    path = tmp_path / "m.toml"
    path.write_text(
        'model = "claude-sonnet-5-5"\nmax_input_tokens = 20000\nmax_output_tokens = 1024\n'
        f"{extra}repos = [{entries}{', ' if entries and tables else ''}{tables}]\n"
    )
    return path


class Nights:
    """Two nights of triage: the first remembered as reviewed, the second decided against it."""

    def __init__(self, tmp_path: Path, manifest: Path) -> None:
        self.manifest = load_manifest(manifest)
        self.cache = tmp_path / "cache"
        self.runs = Runs(tmp_path / "runs.db").open()

    def triage(self, requested: str = "auto", full: bool = False) -> Any:
        works = pack_all(self.manifest.repos, self.cache)
        return triage(
            works, self.manifest, self.runs, requested=requested, full=full, now=NOW,
            prompt_texts=load_prompts(self.manifest.prompts),
        )  # fmt: skip

    def review_all(self) -> None:
        send, _ = self.triage()
        for work in send:
            facts = work.facts
            remember(
                self.runs,
                Review(
                    repo_key=facts.repo_key, slug=work.spec.slug, run_id="R1",
                    reviewed_at="2026-12-03T01:00:00Z", head_commit=facts.head_commit,
                    tree_sha256=facts.tree_sha256, pack_sha256=facts.pack_sha256,
                    prompts_sha256=facts.prompts_sha256, model=work.spec.model, mode="concurrent",
                    agents=work.spec.agents, files=facts.files, tags=facts.tags,
                    outcome={},
                ),
            )  # fmt: skip

    def decided(self, **options: Any) -> dict[str, Any]:
        send, carried = self.triage(**options)
        out = {w.spec.slug: w.decision for w in send}
        out.update({w.spec.slug: w.decision for w, _ in carried})
        return out


def test_a_small_change_is_single_and_a_larger_one_is_left_to_the_run(tmp_path: Path) -> None:
    repos = git_repos(tmp_path / "repos", 3)
    nights = Nights(tmp_path, manifest_for(tmp_path, repos))
    nights.review_all()
    # repo00: one file, many lines (small: one file); repo01: two files, few lines (small: lines).
    (repos[0] / "src" / "helpers.py").write_text("".join(f"Y{n} = {n}\n" for n in range(80)))
    (repos[1] / "README.md").write_text("# one\n")
    (repos[1] / "src" / "helpers.py").write_text("X = 2\n")
    # repo02: two files and 60 lines: not small, so the run's rule (concurrent, budget allowing).
    (repos[2] / "README.md").write_text("".join(f"line {n}\n" for n in range(30)))
    (repos[2] / "src" / "helpers.py").write_text("".join(f"Z{n} = {n}\n" for n in range(30)))
    decided = nights.decided()
    assert decided["repo00"].mode is Mode.SINGLE
    assert decided["repo00"].reason == "small change: 1 file(s), 81 line(s) changed"
    assert decided["repo01"].mode is Mode.SINGLE
    assert decided["repo01"].reason == "small change: 2 file(s), 4 line(s) changed"
    assert decided["repo02"].mode is None
    assert decided["repo02"].reason == "change: 2 file(s), 62 line(s) changed"


def test_the_small_change_setting_comes_from_the_manifest(tmp_path: Path) -> None:
    repos = git_repos(tmp_path / "repos", 1)
    manifest = manifest_for(
        tmp_path, repos, extra="small_change_files = 0\nsmall_change_lines = 2\n"
    )
    nights = Nights(tmp_path, manifest)
    nights.review_all()
    (repos[0] / "README.md").write_text("# a\n# b\n")
    decided = nights.decided()
    assert decided["repo00"].mode is None and decided["repo00"].lines_changed == 3


def test_a_pin_wins_and_an_explicit_run_mode_applies_to_the_rest(tmp_path: Path) -> None:
    repos = git_repos(tmp_path / "repos", 3)
    pinned = f'{{path = "{repos[2]}", mode = "concurrent"}}'
    hinted = f'{{path = "{repos[1]}", release = true}}'
    nights = Nights(tmp_path, manifest_for(tmp_path, repos[:1], tables=f"{hinted}, {pinned}"))
    nights.review_all()
    for repo in repos:
        (repo / "README.md").write_text("# changed\n")
    decided = nights.decided()
    assert decided["repo00"].mode is Mode.SINGLE
    assert decided["repo01"].mode is Mode.CONCURRENT
    assert decided["repo01"].reason.startswith("release (release = true); 1 file(s)")
    assert decided["repo02"].mode is Mode.CONCURRENT
    assert decided["repo02"].reason.endswith("; mode pinned to concurrent in the manifest")
    explicit = nights.decided(requested="single")
    assert explicit["repo01"].mode is Mode.SINGLE
    assert explicit["repo01"].reason.endswith("; mode single asked for the run")
    assert explicit["repo02"].mode is Mode.CONCURRENT  # the pin still wins


def test_a_new_tag_is_a_release_and_full_is_a_full_review(tmp_path: Path) -> None:
    repos = git_repos(tmp_path / "repos", 2)
    nights = Nights(tmp_path, manifest_for(tmp_path, repos))
    nights.review_all()
    git(repos[0], "tag", "v2.0")
    decided = nights.decided()
    assert decided["repo00"].send and decided["repo00"].mode is Mode.CONCURRENT
    assert (
        decided["repo00"].reason == "release (new tag v2.0 at HEAD); 0 file(s), 0 line(s) changed"
    )
    assert not decided["repo01"].send
    assert decided["repo01"].reason == "unchanged since R1 (2026-12-03)"
    forced = nights.decided(full=True)
    assert forced["repo01"].send and forced["repo01"].reason == "full review asked for (--full)"


def test_changed_prompts_or_model_mean_a_full_review(tmp_path: Path) -> None:
    repos = git_repos(tmp_path / "repos", 1)
    nights = Nights(tmp_path, manifest_for(tmp_path, repos))
    nights.review_all()
    nights.manifest = replace(
        nights.manifest, repos=(replace(nights.manifest.repos[0], model="claude-opus-5"),)
    )
    decided = nights.decided()
    assert decided["repo00"].reason == "model changed since R1 (2026-12-03): full review"


def _plan(tmp_path: Path, modes: dict[str, Mode | None]) -> tuple[Plan, Ledger]:
    repos = make_repos(tmp_path / "repos", len(modes))
    manifest = load_manifest(manifest_for(tmp_path, repos))
    works: list[RepoWork] = []
    for work in with_prompts(pack_all(manifest.repos, tmp_path / "cache"), manifest):
        mode = modes[work.spec.slug]
        decision = triage_decision(work.spec.slug, mode)
        works.append(replace(work, decision=decision))
    ledger = Ledger(tmp_path / "ledger.db")
    the_plan = make_plan("R", manifest, works, ledger, limits={}, health=GOOD, concurrency=4)
    return the_plan, ledger


def triage_decision(slug: str, mode: Mode | None) -> Any:
    from runner.run.decisions import RepoDecision

    return RepoDecision(slug, True, mode, f"{mode or 'run rule'} for {slug}")


def test_admission_takes_the_per_repo_plan_or_falls_back_to_single(tmp_path: Path) -> None:
    the_plan, ledger = _plan(
        tmp_path, {"repo00": Mode.CONCURRENT, "repo01": Mode.SINGLE, "repo02": Mode.SINGLE}
    )
    per = the_plan.per_repo
    assert per is not None and per.mode == Mode.CONCURRENT
    assert per.requests == 1 + 4 + 1 + 1  # repo00's warm-up and agents, one combined each
    single = the_plan.projections[Mode.SINGLE]
    full = the_plan.projections[Mode.CONCURRENT]
    assert single.cost_micros < per.cost_micros < full.cost_micros
    offered = wanted(the_plan, "auto")
    assert offered == {Mode.CONCURRENT: per, Mode.SINGLE: single}

    # A budget that holds the per-repo plan but not a full concurrent one: the run is mixed.
    ledger.set_budget(usd=f"{(per.cost_micros + full.cost_micros) / 2 / 1e6:.6f}")
    admission = ledger.admit("R", offered, "auto")
    assert admission.mode == Decision.CONCURRENT
    jobs = admitted_jobs(the_plan, "auto", admission.mode)
    assert jobs == the_plan.per_repo_jobs
    assert the_plan.repo_modes(jobs) == {
        "repo00": Mode.CONCURRENT, "repo01": Mode.SINGLE, "repo02": Mode.SINGLE
    }  # fmt: skip
    assert mode_label(jobs, admission.mode) == "mixed"
    ledger.end_run("R")

    # Less than the per-repo plan, more than all single: every repo single, and repo00 says why.
    ledger.set_budget(usd=f"{(per.cost_micros + single.cost_micros) / 2 / 1e6:.6f}")
    admission = ledger.admit("R2", offered, "auto")
    assert admission.mode == Decision.SINGLE
    jobs = admitted_jobs(the_plan, "auto", admission.mode)
    assert set(the_plan.repo_modes(jobs).values()) == {Mode.SINGLE}
    reasons = mode_reasons(the_plan, jobs, admission.reason)
    assert reasons["repo00"].startswith("concurrent for repo00; single by admission (")
    assert reasons["repo01"] == "single for repo01"


def test_poor_health_moves_the_per_repo_plan_to_single(tmp_path: Path) -> None:
    the_plan, ledger = _plan(tmp_path, {"repo00": Mode.CONCURRENT, "repo01": None})
    admission = ledger.admit(
        "R", wanted(the_plan, "auto"), "auto", health_ok=False, health_reason="429s"
    )
    assert admission.mode == Decision.SINGLE and "limiter health is poor (429s)" in admission.reason


@pytest.mark.parametrize("requested", ["single", "concurrent"])
def test_an_explicit_mode_offers_only_the_per_repo_plan(tmp_path: Path, requested: str) -> None:
    the_plan, _ = _plan(tmp_path, {"repo00": Mode.CONCURRENT, "repo01": Mode.SINGLE})
    assert wanted(the_plan, requested) == {requested: the_plan.per_repo}
    assert admitted_jobs(the_plan, requested, requested) == the_plan.per_repo_jobs


def test_a_per_repo_plan_without_a_concurrent_repo_is_the_single_plan(tmp_path: Path) -> None:
    the_plan, _ = _plan(tmp_path, {"repo00": Mode.SINGLE, "repo01": Mode.SINGLE})
    offered = wanted(the_plan, "auto")
    assert list(offered) == [Mode.SINGLE]
    assert offered[Mode.SINGLE].cost_micros == the_plan.projections[Mode.SINGLE].cost_micros


def test_a_pack_that_changed_though_no_file_did_gets_a_full_review(tmp_path: Path) -> None:
    repos = make_repos(tmp_path / "repos", 1, lines=300)  # a plain folder: found by content
    nights = Nights(tmp_path, manifest_for(tmp_path, repos))
    nights.review_all()
    assert not nights.decided()["repo00"].send
    spec = nights.manifest.repos[0]
    nights.manifest = replace(
        nights.manifest, repos=(replace(spec, max_input_tokens=1000),)
    )  # the same files, fitted to another budget
    decided = nights.decided()["repo00"]
    assert decided.send and decided.mode is None
    assert decided.reason == "the pack changed though no file did: full review"
