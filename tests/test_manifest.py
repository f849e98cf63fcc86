"""Manifest validation, repo expansion and deduplication, and git URL resolution into the cache."""

from __future__ import annotations

from pathlib import Path

import pytest
from gitsupport import git, make_origin, url_spec

from jobs.errors import JobsError, JobsInputError
from jobs.gitcache import cache_name, scrub_url
from jobs.manifest import AGENTS, RepoSpec, is_git_url, load_manifest, resolve_repo

ROOT = Path(__file__).resolve().parent.parent


def manifest(tmp_path: Path, body: str, name: str = "m.toml") -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(JobsInputError) as info:
        load_manifest(path)
    return str(info.value)


@pytest.fixture
def repos(tmp_path: Path) -> Path:
    for name in ("alpha", "beta", "gamma"):
        (tmp_path / "code" / name).mkdir(parents=True)
    (tmp_path / "code" / "notes.txt").write_text("not a folder\n")
    return tmp_path


def test_full_manifest(repos: Path) -> None:
    (repos / "prompts").mkdir()
    path = manifest(
        repos,
        """
name = "night"
model = "claude-sonnet-4-5"
mode = "concurrent"
agents = ["security", "code_review"]
max_output_tokens = 2048
max_input_tokens = 50000
out = "out/reports"
prompts = "prompts"
repos = [
  "code/alpha",
  {path = "code/beta", model = "claude-haiku-4-5", agents = ["security"], max_input_tokens = 9000, slug = "b"},
  "https://github.com/example/tool.git#v1.2",
  {url = "git@github.com:example/other.git", ref = "main"},
]

[limits]
rpm = 50
itpm = 30000
otpm = 8000
max_concurrent = 4
""",
    )
    m = load_manifest(path)
    assert (m.name, m.model, m.mode, m.agents) == (
        "night",
        "claude-sonnet-4-5",
        "concurrent",
        ("security", "code_review"),
    )
    assert (m.max_output_tokens, m.max_input_tokens) == (2048, 50000)
    assert m.out == repos / "out" / "reports" and m.prompts == repos / "prompts" and m.path == path
    assert dict(m.limits) == {"rpm": 50, "itpm": 30000, "otpm": 8000, "max_concurrent": 4}
    alpha, beta, tool, other = m.repos
    assert alpha == RepoSpec(
        "code/alpha",
        repos / "code" / "alpha",
        None,
        None,
        "alpha",
        "claude-sonnet-4-5",
        ("security", "code_review"),
        50000,
    )
    assert (beta.slug, beta.model, beta.agents, beta.max_input_tokens) == (
        "b",
        "claude-haiku-4-5",
        ("security",),
        9000,
    )
    assert (tool.url, tool.ref, tool.path, tool.slug) == (
        "https://github.com/example/tool.git",
        "v1.2",
        None,
        "tool",
    )
    assert (other.url, other.ref, other.slug) == (
        "git@github.com:example/other.git",
        "main",
        "other",
    )


def test_defaults(repos: Path) -> None:
    m = load_manifest(manifest(repos, 'model = "m"\nrepos = ["code/alpha"]\n', name="weekly.toml"))
    assert (m.name, m.mode, m.agents, m.max_output_tokens, m.max_input_tokens) == (
        "weekly",
        "auto",
        AGENTS,
        4096,
        150000,
    )
    assert m.out == repos / "reports" and m.prompts is None and dict(m.limits) == {}


def test_globs_repos_file_and_dedup(repos: Path) -> None:
    (repos / "lists").mkdir()
    (repos / "lists" / "repos.txt").write_text(
        "# one per line, relative to this file\n\n../code/gamma   # again\n../code/alpha\nfile:///srv/x.git#dev\n"
    )
    path = manifest(
        repos,
        'model = "m"\nrepos = ["code/*", "./code/alpha", "code/../code/beta", "file:///srv/x.git#dev", '
        '"file:///srv/x#dev"]\nrepos_file = "lists/repos.txt"\n',
    )
    m = load_manifest(path)
    assert [r.slug for r in m.repos] == ["alpha", "beta", "gamma", "x"]
    assert [r.source for r in m.repos][:3] == ["code/*"] * 3
    assert m.repos_file == repos / "lists" / "repos.txt"


def test_slugs_are_unique_and_safe(tmp_path: Path) -> None:
    for rel in ("a/app", "b/app", "c/App", "d/we ird..name", "e/...", "f/app-2"):
        (tmp_path / rel).mkdir(parents=True)
    m = load_manifest(
        manifest(
            tmp_path,
            'model = "m"\nrepos = ["a/app", "b/app", "c/App", "d/we ird..name", "e/...", "f/app-2"]\n',
        )
    )
    slugs = [r.slug for r in m.repos]
    assert slugs == ["app", "app-2", "App-3", "we-ird.name", "repo", "app-2-2"]
    for slug in slugs:
        assert slug and ".." not in slug and all(c.isalnum() or c in "._-" for c in slug)


BAD = [
    (
        "model = 'm'\nrepos = ['code/alpha']\nmodle = 'x'\n",
        "key 'modle': expected one of the known keys",
    ),
    (
        "repos = ['code/alpha']\n",
        "key 'model': expected a model name (string), got nothing (the key is missing)",
    ),
    (
        "model = 3\nrepos = ['code/alpha']\n",
        "key 'model': expected a non-empty string, got 3 (integer)",
    ),
    (
        "model = 'm'\nmode = 'fast'\nrepos = ['code/alpha']\n",
        "key 'mode': expected one of ['auto', 'concurrent', 'single'], got 'fast' (string)",
    ),
    (
        "model = 'm'\nagents = ['lint']\nrepos = ['code/alpha']\n",
        "key 'agents': expected agent names among",
    ),
    (
        "model = 'm'\nagents = []\nrepos = ['code/alpha']\n",
        "key 'agents': expected a non-empty array of agent names",
    ),
    (
        "model = 'm'\nmax_output_tokens = '4096'\nrepos = ['code/alpha']\n",
        "key 'max_output_tokens': expected an integer >= 1, got '4096' (string)",
    ),
    (
        "model = 'm'\nmax_output_tokens = true\nrepos = ['code/alpha']\n",
        "key 'max_output_tokens': expected an integer >= 1, got True (boolean)",
    ),
    (
        "model = 'm'\nmax_input_tokens = 10\nrepos = ['code/alpha']\n",
        "key 'max_input_tokens': expected an integer >= 1000, got 10 (integer)",
    ),
    (
        "model = 'm'\nrepos = ['code/missing']\n",
        "key 'repos[0]': expected an existing folder, got 'code/missing'",
    ),
    (
        "model = 'm'\nrepos = ['code/notes.txt']\n",
        "key 'repos[0]': expected an existing folder, got 'code/notes.txt'",
    ),
    (
        "model = 'm'\nrepos = ['code/alpha', 'nothing/*']\n",
        "key 'repos[1]': expected a glob matching at least one folder, got 'nothing/*' (no folder matched)",
    ),
    (
        "model = 'm'\nrepos = []\n",
        "key 'repos': expected at least one repository (in 'repos' or 'repos_file'), got none",
    ),
    (
        "model = 'm'\nrepos = 'code/alpha'\n",
        "key 'repos': expected an array of paths, globs, git URLs or tables, got 'code/alpha' (string)",
    ),
    (
        "model = 'm'\nrepos = [3]\n",
        "key 'repos[0]': expected a path, glob or git URL string, or a table, got 3 (integer)",
    ),
    (
        "model = 'm'\nrepos = [{path = 'code/alpha', modle = 'x'}]\n",
        "key 'repos[0].modle': expected one of the known keys",
    ),
    (
        "model = 'm'\nrepos = [{path = 'code/alpha', url = 'https://x/y'}]\n",
        "key 'repos[0]': expected a table with exactly one of 'path' or 'url'",
    ),
    ("model = 'm'\nrepos = [{url = 'not a url'}]\n", "key 'repos[0].url': expected a git URL"),
    (
        "model = 'm'\nrepos = [{path = 'code/alpha', ref = 'main'}]\n",
        "key 'repos[0].ref': expected a ref only with 'url'",
    ),
    (
        "model = 'm'\nrepos = [{path = 'code/alpha', slug = '../up'}]\n",
        "key 'repos[0].slug': expected letters, digits",
    ),
    (
        "model = 'm'\nrepos = [{path = 'code/*', slug = 'one'}]\n",
        "key 'repos[0].slug': expected a slug only for a path naming one folder, got 3 folders matched",
    ),
    (
        "model = 'm'\nrepos = [{path = 'code/alpha', slug = 's'}, {path = 'code/beta', slug = 'S'}]\n",
        "key 'repos[1].slug': expected a slug not used by another repo",
    ),
    (
        "model = 'm'\nrepos = [{path = 'code/alpha', agents = ['x']}]\n",
        "key 'repos[0].agents': expected agent names among",
    ),
    (
        "model = 'm'\nrepos = [{path = 'code/alpha', max_input_tokens = 0}]\n",
        "key 'repos[0].max_input_tokens': expected an integer >= 1000, got 0",
    ),
    (
        "model = 'm'\nrepos = ['code/alpha']\nlimits = 5\n",
        "key 'limits': expected a table with keys among",
    ),
    (
        "model = 'm'\nrepos = ['code/alpha']\n[limits]\nrpn = 5\n",
        "key 'limits.rpn': expected one of the known keys ['burst_seconds', 'itpm', 'max_concurrent', 'otpm', 'rpm'], got an unknown key",
    ),
    (
        "model = 'm'\nrepos = ['code/alpha']\n[limits]\nrpm = -1\n",
        "key 'limits.rpm': expected an integer >= 1, got -1 (integer)",
    ),
    (
        "model = 'm'\nrepos = ['code/alpha']\n[limits]\nburst_seconds = -5\n",
        "key 'limits.burst_seconds': expected an integer >= 0, got -5 (integer)",
    ),
    (
        "model = 'm'\nrepos = ['code/alpha']\nprompts = 'nope'\n",
        "key 'prompts': expected an existing prompt folder, got 'nope'",
    ),
    (
        "model = 'm'\nrepos_file = 'nope.txt'\n",
        "key 'repos_file': expected a readable UTF-8 file, got",
    ),
    (
        "model = 'm'\nrepos = ['https://x/y.git#']\n",
        "key 'repos[0] (ref after '#')': expected a non-empty string",
    ),
]


@pytest.mark.parametrize(("body", "message"), [pytest.param(b, m, id=m[:40]) for b, m in BAD])
def test_errors_name_file_key_and_expectation(repos: Path, body: str, message: str) -> None:
    path = manifest(repos, body)
    text = error_of(path)
    assert text.startswith(f"{path}: key '")
    assert message in text


def test_repos_file_line_is_named(repos: Path) -> None:
    (repos / "list.txt").write_text("code/alpha\ncode/nothing\n")
    text = error_of(manifest(repos, 'model = "m"\nrepos_file = "list.txt"\n'))
    assert "key 'repos_file (list.txt:2)': expected an existing folder, got 'code/nothing'" in text


def test_unreadable_or_invalid_manifest(tmp_path: Path) -> None:
    missing = tmp_path / "none.toml"
    assert error_of(missing) == f"{missing}: manifest not found"
    broken = manifest(tmp_path, "model = \n")
    assert error_of(broken).startswith(f"{broken}: invalid TOML: ")


def test_is_git_url() -> None:
    for url in (
        "https://github.com/a/b",
        "ssh://git@host/x.git",
        "file:///srv/r.git",
        "git@github.com:a/b.git",
        "git://h/r",
    ):
        assert is_git_url(url), url
    for not_url in ("../code", "/abs/path", "C:/x", "code/*"):
        assert not is_git_url(not_url), not_url


def test_shipped_nightly_manifest() -> None:
    m = load_manifest(ROOT / "jobs" / "nightly.toml")
    assert m.mode == "auto" and m.model == "claude-sonnet-5-5" and m.agents == AGENTS
    assert [r.path for r in m.repos] == [ROOT]
    assert m.max_input_tokens <= 60000
    assert set(m.limits) == {"rpm", "itpm", "otpm", "max_concurrent"}
    assert m.limits["itpm"] > m.max_input_tokens, "one request must fit the input bucket"


def test_resolve_clones_shallow_at_ref_and_follows_branch(tmp_path: Path) -> None:
    origin, url = make_origin(tmp_path)
    cache = tmp_path / "cache"
    at_tag = resolve_repo(url_spec(url, "v1"), cache)
    assert at_tag == cache / cache_name(url_spec(url, "v1"))
    assert (at_tag / "a.py").read_text() == "v = 1\n"
    head = resolve_repo(url_spec(url, None), cache)
    assert head != at_tag and (head / "a.py").read_text() == "v = 2\n"
    assert git(head, "rev-list", "--count", "HEAD") == "1", "clone is shallow"
    (origin / "a.py").write_text("v = 3\n")
    git(origin, "commit", "-qam", "three")
    (head / "stray.txt").write_text("left over\n")
    again = resolve_repo(url_spec(url, "main"), cache)
    assert (again / "a.py").read_text() == "v = 3\n"
    assert resolve_repo(url_spec(url, None), cache) == head
    assert (head / "a.py").read_text() == "v = 3\n" and not (head / "stray.txt").exists()
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == sorted(
        {at_tag.name, head.name, again.name}
    )


def test_resolve_errors(tmp_path: Path) -> None:
    _, url = make_origin(tmp_path)
    with pytest.raises(JobsInputError, match=r"cannot fetch ref 'no-such-ref': git fetch failed: "):
        resolve_repo(url_spec(url, "no-such-ref"), tmp_path / "cache")
    assert not any(p.is_dir() for p in (tmp_path / "cache").iterdir()), "no half-made clone is left"
    with pytest.raises(JobsInputError, match="repository folder not found"):
        resolve_repo(
            RepoSpec("gone", tmp_path / "gone", None, None, "gone", "m", AGENTS, 1000),
            tmp_path / "cache",
        )
    local = RepoSpec("here", tmp_path, None, None, "here", "m", AGENTS, 1000)
    assert resolve_repo(local, tmp_path / "cache") == tmp_path
    assert issubclass(JobsInputError, JobsError)


def test_scrub_url_hides_credentials() -> None:
    assert (
        scrub_url("fatal: https://user:tok3n@host/x.git not found")
        == "fatal: https://***@host/x.git not found"
    )


def _resolve_in_child(url: str, cache: str) -> str:
    return str(resolve_repo(url_spec(url, "main"), Path(cache)))


def test_concurrent_resolves_share_one_clone(tmp_path: Path) -> None:
    import multiprocessing

    _, url = make_origin(tmp_path)
    cache = tmp_path / "cache"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.starmap(_resolve_in_child, [(url, str(cache))] * 3, chunksize=1)
    assert len(set(results)) == 1
    dest = Path(results[0])
    assert (dest / "a.py").read_text() == "v = 2\n"
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [dest.name], (
        "no temporary folder left behind"
    )
