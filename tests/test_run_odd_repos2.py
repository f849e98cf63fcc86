"""Issue 9 leftovers: `plan` with a repo that cannot be packed, a findings tracker failing for one repo."""

from __future__ import annotations

import json
from pathlib import Path

from support import cli, make_repos, write_manifest


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
