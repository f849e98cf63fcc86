"""A repository under review runs nothing of its own: refs and URLs, its config, hooks, templates.

Every planted program is a script that creates a marker file; each test asserts that no marker
appears after the project's git calls, and a control run of plain git shows the plant is live.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path

import pytest
from gitsupport import GIT_ENV, make_origin, plain_git, url_spec

from jobs import git as jgit
from jobs.errors import JobsInputError
from jobs.git import GitError
from jobs.manifest import load_manifest, resolve_repo
from jobs.pack import pack_repo

ROOT = Path(__file__).resolve().parent.parent


class Marks:
    """Scripts that each create their own marker file in one folder."""

    def __init__(self, base: Path) -> None:
        self.bin = base / "bin"
        self.dir = base / "marks"
        self.bin.mkdir(parents=True)
        self.dir.mkdir()

    def script(self, name: str) -> str:
        path = self.bin / name
        path.write_text(f'#!/bin/sh\ntouch "{self.dir}/{name}"\nexit 0\n')
        path.chmod(0o755)
        return str(path)

    def hooks(self, name: str) -> Path:
        """A hooks folder where every hook git knows creates a marker."""
        folder = self.bin / name
        folder.mkdir()
        for hook in (
            "post-checkout",
            "reference-transaction",
            "post-index-change",
            "pre-auto-gc",
            "post-merge",
            "pre-commit",
            "post-rewrite",
            "fsmonitor-watchman",
            "push-to-checkout",
            "post-update",
            "pre-receive",
        ):
            (folder / hook).write_text(f'#!/bin/sh\ntouch "{self.dir}/{name}-{hook}"\nexit 0\n')
            (folder / hook).chmod(0o755)
        return folder

    def made(self) -> list[str]:
        return sorted(p.name for p in self.dir.iterdir())

    def clear(self) -> None:
        for p in self.dir.iterdir():
            p.unlink()


# --- item 1: refs and URLs that git could read as options ---------------------------------


@pytest.mark.parametrize(
    "ref",
    [
        "--upload-pack=touch x",
        "-x",
        "a..b",
        "a b",
        "main.lock",
        "@",
        "main@{1}",
        "main/",
        ".hidden",
        "a:b",
        "a~1",
        "a^",
        "a\\b",
        "a*",
        "a//b",
        "x.",
    ],
)
def test_manifest_refuses_bad_refs(tmp_path: Path, ref: str) -> None:
    path = tmp_path / "m.toml"
    path.write_text(
        f'model = "m"\nrepos = [{{url = "https://example.invalid/x.git", ref = {json.dumps(ref)}}}]\n',
        encoding="utf-8",
    )
    with pytest.raises(JobsInputError) as info:
        load_manifest(path)
    message = str(info.value)
    assert message.startswith(f"{path}: key 'repos[0].ref': expected a git ref")
    assert "for repo https://example.invalid/x.git" in message


@pytest.mark.parametrize(
    "ref", ["main", "v1.2.3", "refs/pull/12/head", "release/2026-12", "a" * 40, "HEAD"]
)
def test_manifest_accepts_good_refs(tmp_path: Path, ref: str) -> None:
    path = tmp_path / "m.toml"
    path.write_text(f'model = "m"\nrepos = ["https://example.invalid/x.git#{ref}"]\n')
    assert load_manifest(path).repos[0].ref == ref


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("ssh://-oProxyCommand=touch/x", "repos[0]"),
        ("-oProxy@host:path", "repos[0]"),
        ("ssh://me@-host/x.git", "repos[0]"),
        ("https://example.invalid/x\\ty.git", "repos[0]"),  # a TAB, by TOML's escape
    ],
)
def test_manifest_refuses_option_like_urls(tmp_path: Path, url: str, key: str) -> None:
    path = tmp_path / "m.toml"
    path.write_text(f'model = "m"\nrepos = ["{url}"]\n')
    with pytest.raises(JobsInputError) as info:
        load_manifest(path)
    assert str(info.value).startswith(f"{path}: key '{key}': expected a git URL that cannot be")
    table = tmp_path / "t.toml"
    table.write_text(f'model = "m"\nrepos = [{{url = "{url}"}}]\n')
    with pytest.raises(JobsInputError, match=r"key 'repos\[0\]\.url': expected a git URL"):
        load_manifest(table)


def test_upload_pack_in_a_ref_runs_nothing(tmp_path: Path) -> None:
    _, url = make_origin(tmp_path)
    marker = tmp_path / "pwned"
    payload = f"--upload-pack=touch {marker};git-upload-pack"
    # Control: a naive fetch with the ref after the URL runs the payload.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    plain_git(scratch, "init", "-q")
    plain_git(scratch, "fetch", "-q", "--depth", "1", url, payload, check=False)
    assert marker.exists(), "the payload is live"
    marker.unlink()

    path = tmp_path / "m.toml"
    path.write_text(f'model = "m"\nrepos = ["{url}#{payload}"]\n')
    with pytest.raises(JobsInputError) as info:
        load_manifest(path)
    assert str(info.value).startswith(f"{path}: key 'repos[0] (ref after '#')': expected a git ref")
    assert f"for repo {url}" in str(info.value)
    with pytest.raises(JobsInputError, match="unsafe git URL or ref"):
        resolve_repo(url_spec(url, payload), tmp_path / "cache")
    # Below the validation, the ref still comes after --end-of-options: a refspec, not an option.
    with pytest.raises(GitError, match="invalid refspec"):
        jgit.git(scratch, "fetch", "--end-of-options", url, payload, allow_protocol="file")
    assert not marker.exists()


# --- item 2: a hostile .git/config, included files and hooks --------------------------------


def _hostile_repo(tmp_path: Path, marks: Marks, where: str = "config") -> tuple[Path, str]:
    """A repo whose config names a marker program for every key git could run.

    `where`: "config" plants every key in .git/config (plus a few more in included files),
    "include" plants every key in a file that .git/config only includes.
    """
    _, other_url = make_origin(tmp_path, "other")
    root = tmp_path / "hostile"
    root.mkdir()
    plain_git(root, "init", "-q", "-b", "main")
    (root / ".gitattributes").write_text("* filter=evil diff=evil merge=evil\n*.inc filter=inc\n")
    (root / "a.py").write_text("a = 1\n")
    (root / "b.inc").write_text("b = 1\n")
    plain_git(root, "add", "-A")
    plain_git(root, "commit", "-qm", "one")
    plain_git(root, "tag", "v1")
    (root / "a.py").write_text("a = 2\n")
    plain_git(root, "commit", "-qam", "two")
    (root / "a.py").write_text("a = 3\n")  # a work-tree change: diffs run the clean filter
    (root / "b.inc").write_text("b = 3\n")
    s = marks.script
    keys = {
        "core.fsmonitor": s("fsmonitor"),
        "core.hooksPath": str(marks.hooks("hookspath")),
        "core.sshCommand": s("sshcommand"),
        "core.pager": s("pager"),
        "pager.diff": s("pager-diff"),
        "pager.log": s("pager-log"),
        "core.editor": s("editor"),
        "sequence.editor": s("sequence-editor"),
        "core.askPass": s("askpass"),
        "core.gitProxy": s("gitproxy"),
        "core.alternateRefsCommand": s("alternaterefs"),
        "diff.external": s("diff-external"),
        "diff.evil.command": s("diff-command"),
        "diff.evil.textconv": s("textconv"),
        "filter.evil.clean": s("filter-clean"),
        "filter.evil.smudge": s("filter-smudge"),
        "filter.evil.process": s("filter-process"),
        "filter.evil.required": "true",
        "merge.evil.driver": s("merge-driver"),
        "credential.helper": s("credential"),
        "credential.https://example.invalid.helper": s("credential-url"),
        "gpg.program": s("gpg"),
        "gpg.ssh.program": s("gpg-ssh"),
        "log.showSignature": "true",
        "protocol.file.allow": "always",
        "protocol.ext.allow": "always",
        "remote.origin.url": other_url,
        "remote.origin.fetch": "+refs/heads/*:refs/remotes/origin/*",
        "remote.origin.uploadpack": s("uploadpack"),
        "remote.origin.receivepack": s("receivepack"),
        "uploadpack.packObjectsHook": s("packobjectshook"),
        "difftool.evil.cmd": s("difftool"),
        "diff.tool": "evil",
    }
    target = [] if where == "config" else ["--file", str(tmp_path / "all-keys.config")]
    for key, value in keys.items():
        plain_git(root, "config", *target, key, value)
    if where == "include":
        plain_git(root, "config", "include.path", str(tmp_path / "all-keys.config"))
    for hook in marks.hooks("dothooks").iterdir():  # hooks in .git/hooks need no config at all
        (root / ".git" / "hooks" / hook.name).write_bytes(hook.read_bytes())
        (root / ".git" / "hooks" / hook.name).chmod(0o755)
    included = tmp_path / "evil.inc.config"
    included.write_text(
        f"[core]\n\tfsmonitor = {s('fsmonitor-included')}\n"
        f'[filter "inc"]\n\tclean = {s("inc-clean")}\n\tprocess = {s("inc-process")}\n'
        f"\trequired = true\n"
        f"[diff]\n\texternal = {s('diff-external-included')}\n"
    )
    conditional = tmp_path / "evil.if.config"
    conditional.write_text(
        f'[filter "inc"]\n\tsmudge = {s("inc-smudge")}\n'
        f"[core]\n\thooksPath = {marks.hooks('hookspath-if')}\n"
    )
    with open(root / ".git" / "config", "a") as fh:
        fh.write(f"[include]\n\tpath = {included}\n")
        fh.write(f'[includeIf "gitdir:{root}/"]\n\tpath = {conditional}\n')
    return root, other_url


@pytest.mark.parametrize("where", ["config", "include"])
def test_hostile_config_runs_nothing(tmp_path: Path, where: str) -> None:
    marks = Marks(tmp_path)
    root, _ = _hostile_repo(tmp_path, marks, where)
    # Control: plain git in this repo runs the planted programs.
    plain_git(root, "ls-files", check=False)
    plain_git(root, "diff", check=False)
    assert "fsmonitor-included" in marks.made(), marks.made()
    assert {"filter-process", "inc-clean", "inc-process"} & set(marks.made()), marks.made()
    marks.clear()

    pack = pack_repo(root, slug="hostile", max_input_tokens=10_000)
    assert pack.method == "git" and {f.path for f in pack.files} >= {"a.py", "b.inc"}
    head = jgit.rev_parse(root, "HEAD")
    assert len(head) == 40
    assert jgit.rev_parse(root, "v1") != head
    assert jgit.is_ancestor(root, "v1", "HEAD") and not jgit.is_ancestor(root, "HEAD", "v1")
    assert jgit.tags_at(root, "v1") == ["v1"] and jgit.tags_at(root) == []
    assert b"+a = 3" in jgit.diff(root, "HEAD")  # work tree: the clean filter would run here
    assert b"+a = 2" in jgit.diff(root, "v1", "HEAD")
    jgit.git(root, "log", "-p", "-2")
    jgit.git(root, "show", "HEAD")
    jgit.git(root, "ls-files", "--modified")
    with pytest.raises(GitError, match="not allowed"):  # no transport in a folder under review
        jgit.git(root, "fetch", "--deepen=1", "origin")
    with pytest.raises(GitError, match="is not run by review-runner"):
        jgit.git(root, "push", "origin")
    # Clone the hostile repo by URL: upload-pack runs in it with our sealed environment.
    cloned = resolve_repo(url_spec(f"file://{root}", "main", "hostile"), tmp_path / "cache")
    pack_repo(cloned, slug="clone", max_input_tokens=10_000)
    jgit.fetch(cloned, f"file://{root}", "main", deepen=1)
    assert marks.made() == []


@pytest.mark.parametrize("where", ["config", "include"])
def test_overrides_neutralise_each_named_driver(tmp_path: Path, where: str) -> None:
    marks = Marks(tmp_path)
    root, _ = _hostile_repo(tmp_path, marks, where)
    pairs = jgit.overrides(root)
    assert marks.made() == [], "reading the config runs nothing"
    got = dict(pairs)  # the last value of a key is the one in force
    assert got["core.fsmonitor"] == "false" and got["core.hooksPath"] == os.devnull
    assert got["filter.evil.clean"] == got["filter.evil.process"] == ""
    assert got["filter.inc.clean"] == got["filter.inc.smudge"] == ""  # from both included files
    assert got["filter.evil.required"] == got["filter.inc.required"] == "false"
    assert got["credential.https://example.invalid.helper"] == ""
    assert got["remote.origin.uploadpack"] == "git-upload-pack"
    assert got["protocol.ext.allow"] == got["protocol.file.allow"] == "never"
    assert got["diff.evil.textconv"] == "" and got["merge.evil.driver"] == ""
    assert got["pager.diff"] == "false"


def test_clone_runs_no_hooks_from_a_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marks = Marks(tmp_path)
    template = tmp_path / "template"
    template.mkdir()
    (template / "hooks").symlink_to(marks.hooks("template"))
    _, url = make_origin(tmp_path)
    # Control: a naive clone under this environment runs the template's hooks.
    subprocess.run(
        ["git", "clone", "-q", url, str(tmp_path / "naive")],
        env={**os.environ, **GIT_ENV, "GIT_TEMPLATE_DIR": str(template)},
        check=True,
    )
    assert "template-post-checkout" in marks.made()
    marks.clear()
    monkeypatch.setenv("GIT_TEMPLATE_DIR", str(template))
    monkeypatch.setenv("GIT_ASKPASS", marks.script("askpass"))
    monkeypatch.setenv("SSH_ASKPASS", marks.script("ssh-askpass"))
    dest = resolve_repo(url_spec(url, "main"), tmp_path / "cache")
    assert (dest / "a.py").read_text() == "v = 2\n"
    resolve_repo(url_spec(url, "main"), tmp_path / "cache")  # the second use fetches again
    assert marks.made() == []


def test_safe_env_and_subcommands(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_EXTERNAL_DIFF", "GIT_ASKPASS", "SSH_ASKPASS"):
        monkeypatch.setenv(var, "/nowhere")
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'core.fsmonitor'='evil'")
    monkeypatch.setenv("GIT_SSH_COMMAND", "ssh -i /keys/deploy")
    env = jgit.safe_env()
    assert env["GIT_TERMINAL_PROMPT"] == "0" and env["GIT_CONFIG_GLOBAL"] == os.devnull
    assert env["GIT_CONFIG_NOSYSTEM"] == "1" and env["GIT_ALLOW_PROTOCOL"] == "none"
    assert env["GIT_PAGER"] == "cat" and env["GIT_EDITOR"] == ":"
    for var in (
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_EXTERNAL_DIFF",
        "GIT_ASKPASS",
        "SSH_ASKPASS",
        "GIT_CONFIG_PARAMETERS",
    ):
        assert var not in env
    assert env["GIT_SSH_COMMAND"] == "ssh -i /keys/deploy", "the operator's own ssh stays"
    assert jgit.safe_env("https")["GIT_ALLOW_PROTOCOL"] == "https"


def test_fetch_helpers_deepen_a_clone(tmp_path: Path) -> None:
    _, url = make_origin(tmp_path)
    dest = resolve_repo(url_spec(url, "main"), tmp_path / "cache")
    assert jgit.git(dest, "rev-list", "--count", "HEAD").strip() == b"1"
    jgit.fetch(dest, url, "main", deepen=1)
    assert jgit.git(dest, "rev-list", "--count", "FETCH_HEAD").strip() == b"2"
    with pytest.raises(GitError, match="not a git ref"):
        jgit.fetch(dest, url, "-x")
    with pytest.raises(GitError, match="not a safe git URL"):
        jgit.fetch(dest, "-oProxy@host:x")


# --- item 6: no import cycle inside jobs/ ---------------------------------------------------


def _imports(path: Path, typing_only: bool) -> set[str]:
    """The jobs.* modules a file imports; with `typing_only`, TYPE_CHECKING blocks too."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    if not typing_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jobs"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("jobs"))
    return out


def _cycles(typing_only: bool) -> list[list[str]]:
    modules = {f"jobs.{p.stem}": p for p in (ROOT / "jobs").glob("*.py") if p.stem != "__init__"}
    graph = {
        m: {i for i in _imports(p, typing_only) if i in modules and i != m}
        for m, p in modules.items()
    }
    found: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in trail:
                found.append([*trail[trail.index(nxt) :], nxt])
            elif len(trail) < len(graph):
                visit(nxt, [*trail, nxt])

    for module in sorted(graph):
        visit(module, [module])
    return found


# The modules of the manifest and packing side (this file's subject).
PACKING_MODULES = {
    "jobs.manifest",
    "jobs.gitcache",
    "jobs.git",
    "jobs.select",
    "jobs.pack",
    "jobs.pack_format",
    "jobs.pack_reading",
    "jobs.pack_record",
}


def test_no_runtime_import_cycle_in_jobs() -> None:
    assert _cycles(typing_only=False) == []


def test_no_import_cycle_through_manifest_or_packing() -> None:
    """TYPE_CHECKING imports count too: gitcache once imported manifest for a type."""
    through = [c for c in _cycles(typing_only=True) if PACKING_MODULES & set(c)]
    assert through == []
    assert "jobs.gitcache" in _imports(ROOT / "jobs" / "manifest.py", typing_only=True)
