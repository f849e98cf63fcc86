"""One odd repository fails alone: the other repos finish, exit 1 (issue 9, runner side)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support import api_env, cli, make_repos, write_manifest

from jobs.manifest import load_manifest
from jobs.outcome import RepoOutcome
from runner.run import RunOptions, load_config, run
from runner.simulator import SimConfig, Simulator
from statedb import state_dir


def _summary(out_dir: str) -> dict[str, dict[str, Any]]:
    doc = json.loads((Path(out_dir) / "summary.json").read_text())
    return {row["slug"]: row for row in doc["repos"]}


def test_a_repo_that_cannot_be_packed_fails_alone(tmp_path: Path, isolated_state: Path) -> None:
    repos = make_repos(tmp_path / "repos", 3)
    (repos[1] / ".gitignore").mkdir()  # an ignore file nobody can read: its rules are unknown
    manifest = write_manifest(tmp_path / "m.toml", repos)
    with Simulator(SimConfig(seed=2)) as sim:
        result = cli("run", str(manifest), "--mode", "single", "--json", env=api_env(sim))
        sent = {r["job"].split("/")[1] for r in sim.log() if r.get("path") == "/v1/messages"}
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    bad = repos[1].name
    assert f"failed {bad}: {bad}: cannot pack" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["status"] == "failed"
    assert doc["jobs"]["done"] == 2 and doc["jobs"]["failed"] == 1
    assert sent == {repos[0].name, repos[2].name}  # nothing of the odd repo was sent
    rows = _summary(doc["out_dir"])
    assert rows[bad]["status"] == "failed"
    assert ".gitignore: not a regular file" in rows[bad]["error"]
    for good in (repos[0].name, repos[2].name):
        assert rows[good]["status"] == "done"
        assert (Path(doc["out_dir"]) / good / "review.md").is_file()


def test_a_repo_whose_report_cannot_be_written_fails_alone(
    tmp_path: Path, isolated_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repos = make_repos(tmp_path / "repos", 3)
    bad = repos[1].name
    real_write = __import__("runner.run.reporting", fromlist=["x"]).write_repo_report

    def write(out_dir: Path, outcome: RepoOutcome, **kw: Any) -> Path:
        if outcome.slug == bad:
            raise OSError(28, "No space left on device")
        return real_write(out_dir, outcome, **kw)

    monkeypatch.setattr("runner.run.reporting.write_repo_report", write)
    manifest = load_manifest(write_manifest(tmp_path / "m.toml", repos))
    config = load_config(manifest, RunOptions(mode="single"), state_dir())
    with Simulator(SimConfig(seed=2)) as sim:
        result = run(config.with_api(sim.base_url, "test-key"))
    doc = result.to_json()
    assert doc["status"] == "failed"
    assert doc["jobs"]["done"] == 3 and doc["jobs"]["failed"] == 0
    rows = _summary(doc["out_dir"])
    assert rows[bad]["status"] == "failed"
    assert rows[bad]["error"] == "report not written: OSError: [Errno 28] No space left on device"
    for good in (repos[0].name, repos[2].name):
        assert rows[good]["status"] == "done"
        assert (Path(doc["out_dir"]) / good / "review.md").is_file()
