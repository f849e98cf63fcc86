"""Incremental nights: a repo unchanged since its last review is not sent; a changed one is sent
with its change in view; `--full` and `full_review_days` force a review; the memory lives in runs.db.

Each night is a real run (runner.run.run) against the simulator on loopback; what was sent is read
from the simulator's request log (each request names its job: RUN/REPO/AGENT).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from gitsupport import git, git_repos
from support import cli, messages, write_manifest

from jobs.errors import JobsInputError
from jobs.manifest import load_manifest
from runner.run import RunOptions, load_config, plan, run
from runner.run.results import RunResult
from runner.simulator import SimConfig, Simulator

SPECIALISTS = {"code_review", "architecture", "security", "multi_perspective"}


@pytest.fixture
def sim() -> Any:
    with Simulator(SimConfig(seed=3)) as simulator:
        yield simulator


def night(manifest: Path, state: Path, sim: Simulator, **options: Any) -> RunResult:
    config = load_config(
        load_manifest(manifest), RunOptions(count_tokens=False, **options), state
    ).with_api(sim.base_url, "test-key")
    return run(config)


def sent(sim: Simulator, since: int) -> list[tuple[str, str]]:
    """(repo, agent) of each review request after the first `since` (warm-ups included)."""
    out = []
    for record in messages(sim)[since:]:
        _, slug, agent = record["job"].split("/")
        out.append((slug, agent))
    return out


def decision(result: RunResult, slug: str) -> dict[str, Any]:
    return next(dict(d) for d in result.decisions if d["slug"] == slug)


def summary_row(result: RunResult, slug: str) -> dict[str, Any]:
    assert result.out_dir is not None
    doc = json.loads((result.out_dir / "summary.json").read_text())
    return next(r for r in doc["repos"] if r["slug"] == slug)


def test_a_second_night_with_nothing_changed_sends_nothing_and_says_so(
    tmp_path: Path, isolated_state: Path, sim: Simulator
) -> None:
    manifest = write_manifest(tmp_path / "m.toml", git_repos(tmp_path / "repos", 3))
    first = night(manifest, isolated_state, sim)
    assert first.status == "done" and first.mode == "concurrent"
    before = len(messages(sim))
    assert first.plan is not None
    assert before == len(first.plan.per_repo_jobs) >= 3 * 4  # four agents each (and warm-ups)

    second = night(manifest, isolated_state, sim)
    assert second.status == "done"
    assert len(messages(sim)) == before  # not one review request
    assert second.to_json()["unchanged"] == 3
    assert second.to_json()["cost_usd"] == 0
    assert second.out_dir is not None
    date = first.run_id[:4] + "-" + first.run_id[4:6] + "-" + first.run_id[6:8]
    for i in range(3):
        slug = f"repo{i:02d}"
        assert decision(second, slug)["action"] == "unchanged"
        review = (second.out_dir / slug / "review.md").read_text()
        assert f"Unchanged since {first.run_id} ({date})" in review
        row = summary_row(second, slug)
        assert row["unchanged"] is True and row["unchanged_since"] == f"{first.run_id} ({date})"
        assert row["cost_usd"] == 0
        # The findings are carried forward: the same ones, persisting, first seen on night one.
        earlier = json.loads((first.out_dir / slug / "findings.json").read_text())  # type: ignore[operator]
        carried = json.loads((second.out_dir / slug / "findings.json").read_text())
        assert carried["findings"] and len(carried["findings"]) == len(earlier["findings"])
        assert {f["fingerprint"] for f in carried["findings"]} == {
            f["fingerprint"] for f in earlier["findings"]
        }
        for finding in carried["findings"]:
            if finding["status"] != "unverified":
                assert finding["status"] == "persisting"
                assert finding["first_seen"]["run_id"] == first.run_id
    summary = (second.out_dir / "summary.md").read_text()
    assert f"unchanged since {first.run_id}" in summary


def test_one_changed_file_sends_only_that_repo_single_with_the_diff_in_the_pack(
    tmp_path: Path, isolated_state: Path, sim: Simulator
) -> None:
    repos = git_repos(tmp_path / "repos", 3)
    manifest = write_manifest(tmp_path / "m.toml", repos)
    night(manifest, isolated_state, sim)
    before = len(messages(sim))
    app = repos[1] / "src" / "app.py"
    app.write_text(app.read_text() + "\ndef added(expr):\n    return eval(expr)\n")
    git(repos[1], "commit", "-qam", "eval")

    second = night(manifest, isolated_state, sim)
    assert second.status == "done"
    assert sent(sim, before) == [("repo01", "combined")]
    assert second.mode == "single"
    d = decision(second, "repo01")
    assert d["mode"] == "single" and d["files_changed"] == 1 and d["lines_changed"] == 3
    assert d["reason"].startswith("small change: 1 file(s), 3 line(s) changed")
    assert decision(second, "repo00")["action"] == "unchanged"
    assert second.plan is not None
    (work,) = second.plan.works
    text = work.pack.text
    # The change leads the pack: its files, the diff, then the changed file before the others.
    assert '<changes since="' in text and "<changed-files>\nsrc/app.py\n</changed-files>" in text
    assert "+def added(expr):\n+    return eval(expr)" in text
    assert text.index('<file path="src/app.py"') < text.index('<file path="README.md"')
    assert text.index("<changes") < text.index("<file ")
    row = summary_row(second, "repo01")
    assert row["mode"] == "single" and row["mode_reason"].startswith("small change")
    # The new finding is reported that night.
    findings = json.loads((second.out_dir / "repo01" / "findings.json").read_text())  # type: ignore[operator]
    assert any("eval(expr)" in (f.get("evidence") or "") for f in findings["findings"])


def test_a_new_tag_at_head_gets_a_concurrent_review(
    tmp_path: Path, isolated_state: Path, sim: Simulator
) -> None:
    repos = git_repos(tmp_path / "repos", 2)
    manifest = write_manifest(tmp_path / "m.toml", repos)
    night(manifest, isolated_state, sim)
    before = len(messages(sim))
    (repos[0] / "README.md").write_text("# repo 0, released\n")
    git(repos[0], "commit", "-qam", "release notes")
    git(repos[0], "tag", "v1.0")

    second = night(manifest, isolated_state, sim)
    requests = sent(sim, before)
    assert {slug for slug, _ in requests} == {"repo00"}
    assert {agent for _, agent in requests} >= SPECIALISTS
    d = decision(second, "repo00")
    assert d["mode"] == "concurrent" and "release (new tag v1.0 at HEAD)" in d["reason"]
    # The tag is remembered: the next night, with nothing new, sends nothing.
    third_before = len(messages(sim))
    night(manifest, isolated_state, sim)
    assert len(messages(sim)) == third_before


def test_full_and_full_review_days_force_a_review(
    tmp_path: Path, isolated_state: Path, sim: Simulator
) -> None:
    manifest = write_manifest(tmp_path / "m.toml", git_repos(tmp_path / "repos", 2))
    night(manifest, isolated_state, sim)
    before = len(messages(sim))
    forced = night(manifest, isolated_state, sim, full=True)
    assert {slug for slug, _ in sent(sim, before)} == {"repo00", "repo01"}
    assert decision(forced, "repo00")["reason"] == "full review asked for (--full)"

    # Eight days later (the memory aged in runs.db), an unchanged repo gets a fresh review, single.
    with sqlite3.connect(isolated_state / "runs.db") as db:
        db.execute("UPDATE repo_reviews SET reviewed_at = '2026-01-01T00:00:00Z'")
    before = len(messages(sim))
    stale = night(manifest, isolated_state, sim)
    assert sorted(sent(sim, before)) == [("repo00", "combined"), ("repo01", "combined")]
    reason = decision(stale, "repo00")["reason"]
    assert reason.startswith("unchanged for ") and "(full_review_days = 7)" in reason


def test_a_force_push_gets_a_full_review_and_the_report_says_why(
    tmp_path: Path, isolated_state: Path, sim: Simulator
) -> None:
    repos = git_repos(tmp_path / "repos", 1)
    manifest = write_manifest(tmp_path / "m.toml", repos)
    first = night(manifest, isolated_state, sim)
    (repos[0] / "README.md").write_text("# rewritten\n")
    git(repos[0], "commit", "-q", "--amend", "-am", "rewritten")  # the reviewed commit is gone

    second = night(manifest, isolated_state, sim)
    d = decision(second, "repo00")
    assert "is not an ancestor of HEAD (a force push or a rebase)" in d["reason"]
    assert d["reason"].startswith("full review: ")
    assert second.plan is not None and "<changes" not in second.plan.works[0].pack.text
    assert second.run_id != first.run_id
    review = (second.out_dir / "repo00" / "review.md").read_text()  # type: ignore[operator]
    assert "not an ancestor of HEAD" in review


def test_a_shallow_clone_is_deepened_to_find_the_last_reviewed_commit(
    tmp_path: Path, isolated_state: Path, sim: Simulator
) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    git(origin, "init", "-q", "-b", "main")
    (origin / "a.py").write_text("def f(x):\n    return x\n")
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "one")
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        'model = "claude-sonnet-5-5"\nmax_input_tokens = 20000\nmax_output_tokens = 1024\n'
        f'out = "{tmp_path / "reports"}"\nrepos = ["file://{origin}"]\n'
    )
    night(manifest, isolated_state, sim)
    for n in range(3):  # the cache's depth-1 fetch no longer holds the reviewed commit
        (origin / "a.py").write_text(f"def f(x):\n    return x + {n}\n")
        git(origin, "commit", "-qam", f"change {n}")

    second = night(manifest, isolated_state, sim)
    d = decision(second, "origin")
    assert d["action"] == "review" and d["reason"].startswith("small change: 1 file(s)")
    assert second.plan is not None
    assert "-    return x\n+    return x + 2" in second.plan.works[0].pack.text

    # A rewritten origin: the commit is nowhere to fetch, so a full review says so.
    (origin / "a.py").write_text("def f(x):\n    return x * 2\n")
    git(origin, "commit", "-q", "--amend", "-am", "rewritten")
    last = second.run_id
    with sqlite3.connect(isolated_state / "runs.db") as db:
        (head,) = db.execute(
            "SELECT head_commit FROM repo_reviews WHERE run_id = ?", [last]
        ).fetchone()
    third = night(manifest, isolated_state, sim)
    assert decision(third, "origin")["reason"] == (
        f"full review: {head[:12]} is not an ancestor of HEAD (a force push or a rebase)"
    )
    # A fresh clone never held it: deepening cannot find it either, and the reason says that.
    with sqlite3.connect(isolated_state / "runs.db") as db:
        (head,) = db.execute(
            "SELECT head_commit FROM repo_reviews WHERE run_id = ?", [third.run_id]
        ).fetchone()
    (origin / "a.py").write_text("def f(x):\n    return x * 4\n")
    git(origin, "commit", "-q", "--amend", "-am", "rewritten again")
    shutil.rmtree(isolated_state / "repos")
    fourth = night(manifest, isolated_state, sim)
    assert decision(fourth, "origin")["reason"] == (
        f"full review: {head[:12]} is missing from the clone's history"
    )


def test_plan_lists_each_repos_decision(
    tmp_path: Path, isolated_state: Path, sim: Simulator
) -> None:
    repos = git_repos(tmp_path / "repos", 2)
    manifest = write_manifest(tmp_path / "m.toml", repos)
    night(manifest, isolated_state, sim)
    (repos[0] / "README.md").write_text("# changed\n")
    config = load_config(load_manifest(manifest), RunOptions(), isolated_state, check_runs=False)
    before = len(sim.log())
    doc = plan(config).to_json()
    assert len(sim.log()) == before
    by_slug = {d["slug"]: d for d in doc["decisions"]}
    assert by_slug["repo00"]["action"] == "review" and by_slug["repo00"]["mode"] == "single"
    assert by_slug["repo01"]["action"] == "unchanged" and by_slug["repo01"]["mode"] is None
    assert doc["per_repo"]["requests"] == 1
    assert doc["modes"]["concurrent"]["requests"] >= 4  # both modes still projected for the sent
    result = cli("plan", str(manifest))
    assert result.returncode == 0, result.stderr
    assert "repo01" in result.stdout and "not sent" in result.stdout
    assert "repo00                   single" in result.stdout


@pytest.mark.parametrize(
    ("line", "message"),
    [
        pytest.param(
            "full_review_days = 0",
            "key 'full_review_days': expected an integer >= 1, got 0 (integer)",
            id="full_review_days",
        ),
        pytest.param(
            'small_change_lines = "50"',
            "key 'small_change_lines': expected an integer >= 0, got '50' (string)",
            id="small_change_lines",
        ),
        pytest.param(
            'repos = [{path = "r", mode = "auto"}]',
            "key 'repos[0].mode': expected one of ['concurrent', 'single'], got 'auto' (string)",
            id="repo-mode",
        ),
        pytest.param(
            'repos = [{path = "r", release = "yes"}]',
            "key 'repos[0].release': expected true or false, got 'yes' (string)",
            id="repo-release",
        ),
    ],
)
def test_manifest_nightly_keys_are_validated(tmp_path: Path, line: str, message: str) -> None:
    (tmp_path / "r").mkdir()
    manifest = tmp_path / "m.toml"
    body = 'model = "m"\n' + line + "\n"
    if not line.startswith("repos"):
        body += 'repos = ["r"]\n'
    manifest.write_text(body)
    with pytest.raises(JobsInputError) as caught:
        load_manifest(manifest)
    assert str(caught.value) == f"{manifest}: {message}"
    result = cli("plan", str(manifest))
    assert result.returncode == 2 and message in result.stderr


def test_manifest_nightly_keys_defaults_and_values(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    manifest = tmp_path / "m.toml"
    manifest.write_text('model = "m"\nrepos = ["r"]\n')
    loaded = load_manifest(manifest)
    assert (loaded.full_review_days, loaded.small_change_files, loaded.small_change_lines) == (
        7,
        1,
        50,
    )
    assert loaded.repos[0].mode is None and loaded.repos[0].release is False
    manifest.write_text(
        'model = "m"\nfull_review_days = 3\n'
        'repos = [{path = "r", mode = "single", release = true}]\n'
    )
    loaded = load_manifest(manifest)
    assert loaded.full_review_days == 3
    assert (loaded.repos[0].mode, loaded.repos[0].release) == ("single", True)
