"""`plan --redactions`: every redaction as file:line:kind, never the value, and whether it is sent."""

from __future__ import annotations

import json
from pathlib import Path

from support import cli, make_repos, write_manifest

AWS = "AKIAZ7QW3RTY5UIO9PLK"
GITHUB = "ghp_4fT9kLm2QwErTyUiOpAsDfGhJkLzXcVbNm12"


def _repo_with_secrets(root: Path) -> Path:
    repo = make_repos(root, 1)[0]
    (repo / "src" / "settings.py").write_text(
        f'import os\nAWS_ACCESS_KEY_ID = "{AWS}"\ntoken = "{GITHUB}"\ndb = os.environ["DB"]\n'
    )
    # A large docs file that cannot fit whole: its secret near the end lies outside the pack.
    body = "".join(f"line {n} of the guide, words words words words\n" for n in range(3000))
    (repo / "docs").mkdir()
    (repo / "docs" / "guide.md").write_text(body + f"token: {GITHUB}\n")
    return repo


def test_plan_redactions_lists_file_line_kind_and_never_the_value(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.toml", [_repo_with_secrets(tmp_path / "repos")])

    text = cli("plan", str(manifest), "--redactions")
    doc = json.loads(cli("plan", str(manifest), "--redactions", "--json").stdout)

    assert text.returncode == 0, text.stderr
    assert AWS not in text.stdout + text.stderr and GITHUB not in text.stdout + text.stderr
    assert "    src/settings.py:2:aws-access-key\n" in text.stdout
    assert "    src/settings.py:3:github-token\n" in text.stdout
    assert "    docs/guide.md:3001:github-token  (not sent: outside the pack)\n" in text.stdout
    assert "redactions: 3 " in text.stdout
    sites = {(s["path"], s["line"], s["kind"], s["sent"]) for s in doc["redactions"]}
    assert sites == {
        ("src/settings.py", 2, "aws-access-key", True),
        ("src/settings.py", 3, "github-token", True),
        ("docs/guide.md", 3001, "github-token", False),
    }
    assert {s["repo"] for s in doc["redactions"]} == {"repo00"}
    assert AWS not in json.dumps(doc) and GITHUB not in json.dumps(doc)


def test_plan_without_the_flag_lists_no_sites(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.toml", [_repo_with_secrets(tmp_path / "repos")])

    result = cli("plan", str(manifest), "--json")

    assert result.returncode == 0, result.stderr
    assert "redactions" not in json.loads(result.stdout)
