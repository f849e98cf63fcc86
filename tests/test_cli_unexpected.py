"""An exception outside the project's error families: one `Error: TYPE: msg` line, exit 1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from support import make_repos, write_manifest

from runner.cli import main


def _boom(*args: Any, **kwargs: Any) -> None:
    raise KeyError("no such pack")


@pytest.fixture
def manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr("runner.cli.run.run_batch", _boom)
    return write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 1))


def test_an_unexpected_exception_is_one_error_line_and_exit_1(manifest: Path) -> None:
    result = CliRunner().invoke(main, ["run", str(manifest), "--simulate"])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: KeyError: 'no such pack'"]
    assert "Traceback" not in result.stderr


def test_review_runner_debug_lets_the_traceback_through(
    manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REVIEW_RUNNER_DEBUG", "1")
    result = CliRunner().invoke(main, ["run", str(manifest), "--simulate"])
    assert isinstance(result.exception, KeyError)
    assert "Error:" not in result.stderr


def test_usage_errors_are_still_clicks_own(manifest: Path) -> None:
    result = CliRunner().invoke(main, ["run", str(manifest), "--workers", "0"])
    assert result.exit_code == 2
    assert "Invalid value for '--workers'" in result.stderr
