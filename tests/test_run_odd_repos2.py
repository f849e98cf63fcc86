"""Issue 9 leftovers: `plan` with a repo that cannot be packed, a findings tracker failing for one repo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support import cli, make_repos, write_manifest

from jobs.manifest import load_manifest
from jobs.outcome import RepoOutcome
from runner.cli.common import exit_code_for
from runner.errors import StateError
from runner.run import RunOptions, load_config, run
from runner.run.tracker import Tracker
from runner.simulator import SimConfig, Simulator
from statedb import StoreError, state_dir


def _odd_manifest(tmp_path: Path) -> tuple[Path, list[Path]]:
    repos = make_repos(tmp_path / "repos", 3)
    (repos[1] / ".gitignore").mkdir()  # an ignore file nobody can read: its rules are unknown
    return write_manifest(tmp_path / "m.toml", repos), repos


def test_plan_shows_a_repo_that_cannot_be_packed_as_failing_and_projects_the_others(
    tmp_path: Path,
) -> None:
    manifest, repos = _odd_manifest(tmp_path)
    bad = repos[1].name
    text = cli("plan", str(manifest))
    assert text.returncode == 1, text.stderr
    assert "Traceback" not in text.stderr and "Error:" not in text.stderr
    assert "2 repositories (api: messages); 1 cannot be packed" in text.stdout
    assert f"  failed {bad}: {bad}: cannot pack" in text.stdout
    assert ".gitignore: not a regular file" in text.stdout
    assert "decision:" in text.stdout

    doc_run = cli("plan", str(manifest), "--json")
    assert doc_run.returncode == 1, doc_run.stderr
    doc = json.loads(doc_run.stdout)
    assert doc["repos"] == 2
    [failed] = doc["failed"]
    assert failed["slug"] == bad
    assert failed["reason"].startswith(f"{bad}: cannot pack")
    assert ".gitignore: not a regular file" in failed["reason"]
    # The two good repos are projected: one combined request each in single mode.
    assert doc["modes"]["single"]["requests"] == 2


def test_plan_of_packable_repos_lists_no_failure(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 2))
    result = cli("plan", str(manifest), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["failed"] == []


def test_plan_refused_by_the_budget_exits_3_even_with_a_repo_failing(tmp_path: Path) -> None:
    manifest, _ = _odd_manifest(tmp_path)
    assert cli("budget", "set", "--usd", "0.000001").returncode == 0
    result = cli("plan", str(manifest), "--json")
    assert result.returncode == 3, result.stderr
    doc = json.loads(result.stdout)
    assert doc["decision"]["mode"] == "refused"
    assert len(doc["failed"]) == 1


def _summary(out_dir: str) -> dict[str, dict[str, Any]]:
    doc = json.loads((Path(out_dir) / "summary.json").read_text())
    return {row["slug"]: row for row in doc["repos"]}


def _run_with_tracker_raising(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> tuple[dict[str, Any], list[Path]]:
    repos = make_repos(tmp_path / "repos", 3)
    bad = repos[1].name
    real_track = Tracker.track

    def track(self: Tracker, outcome: RepoOutcome, **kw: Any) -> RepoOutcome:
        if outcome.slug == bad:
            raise error
        return real_track(self, outcome, **kw)

    monkeypatch.setattr(Tracker, "track", track)
    manifest = load_manifest(write_manifest(tmp_path / "m.toml", repos))
    config = load_config(manifest, RunOptions(mode="single"), state_dir())
    with Simulator(SimConfig(seed=2)) as sim:
        result = run(config.with_api(sim.base_url, "test-key"))
    return result.to_json(), repos


def test_a_repo_whose_findings_cannot_be_tracked_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc, repos = _run_with_tracker_raising(tmp_path, monkeypatch, KeyError("fingerprint"))
    bad = repos[1].name
    assert doc["status"] == "failed"
    assert doc["jobs"]["done"] == 3 and doc["jobs"]["failed"] == 0
    rows = _summary(doc["out_dir"])
    assert rows[bad]["status"] == "failed"
    assert rows[bad]["error"] == "findings not tracked: KeyError: 'fingerprint'"
    # Its reviews were paid for: the report is written, untracked.
    assert (Path(doc["out_dir"]) / bad / "review.md").is_file()
    for good in (repos[0].name, repos[2].name):
        assert rows[good]["status"] == "done"
        assert (Path(doc["out_dir"]) / good / "review.md").is_file()


@pytest.mark.parametrize(
    "error",
    [StateError("runs.db: database is locked"), StoreError("runs.db: disk I/O error")],
)
def test_a_state_database_error_while_tracking_still_stops_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    with pytest.raises(type(error)) as raised:
        _run_with_tracker_raising(tmp_path, monkeypatch, error)
    assert raised.value is error
    assert exit_code_for(raised.value) == 2  # the CLI's one `Error:` line, exit 2
