"""The review manifest (TOML): what to review, with which model and agents, within which limits.

Every problem is a JobsInputError naming the file, the key and what was expected:
`FILE: key 'x': expected ..., got ...`. Unknown keys are errors so that a typo is never ignored.

Repos are given in `repos` (and/or `repos_file`, one per line, `#` comments) as:
- a local folder, relative to the manifest's folder (entries of a repos_file: relative to that file);
- a glob (`src/*`), which must match at least one folder;
- a git URL (https, ssh, git, file, or `user@host:path`), with an optional `#ref` suffix;
- a table `{path = ..., url = ..., ref = ..., slug = ..., model = ..., agents = [...],
  max_input_tokens = ...}` (exactly one of path/url) for per-repo overrides.
A repository listed twice (same resolved folder, or same URL and ref) is reviewed once: the first
entry wins. Slugs are unique and filesystem-safe; an automatic one gets `-2`, `-3` on a clash.
A URL or ref that git could read as an option (a leading '-', an ssh host starting with '-') or a
ref that breaks `git check-ref-format` (a commit sha is fine) is refused here, naming the repo.
"""

from __future__ import annotations

import glob
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from jobs.errors import JobsInputError
from jobs.git import ref_problem, scrub_url, url_problem
from jobs.gitcache import resolve_repo  # re-exported: callers resolve what they load

__all__ = [
    "AGENTS",
    "APIS",
    "LIMIT_KEYS",
    "MODES",
    "Manifest",
    "RepoSpec",
    "is_git_url",
    "load_manifest",
    "resolve_repo",
]

AGENTS = ("code_review", "architecture", "security", "multi_perspective")
MODES = ("auto", "concurrent", "single")
# burst_seconds: a cap on the idle refill the limiter may spend at once (0 = strict pacing).
APIS = ("messages", "batches")
LIMIT_KEYS = ("rpm", "itpm", "otpm", "max_concurrent", "burst_seconds")
DEFAULT_MAX_OUTPUT_TOKENS = 4096
DEFAULT_MAX_INPUT_TOKENS = 150_000
MIN_INPUT_TOKENS = 1000

_TOP_KEYS = frozenset(
    {
        "name",
        "model",
        "mode",
        "api",
        "agents",
        "max_output_tokens",
        "max_input_tokens",
        "out",
        "repos",
        "repos_file",
    }
    | {"limits", "prompts", "trust_repo_suppressions"}
)
_REPO_KEYS = frozenset({"path", "url", "ref", "slug", "model", "agents", "max_input_tokens"})
_URL = re.compile(r"^(?:(?:https?|ssh|git|file)://|[\w.\-]+@[\w.\-]+:(?!//))")
_SLUG_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class RepoSpec:
    """One repository to review, with its effective model, agents and input budget."""

    source: str
    path: Path | None
    url: str | None
    ref: str | None
    slug: str
    model: str
    agents: tuple[str, ...]
    max_input_tokens: int


@dataclass(frozen=True)
class Manifest:
    """A validated manifest: defaults applied, paths resolved, repos expanded and deduplicated."""

    path: Path
    name: str
    model: str
    mode: str
    agents: tuple[str, ...]
    max_output_tokens: int
    max_input_tokens: int
    out: Path
    repos: tuple[RepoSpec, ...]
    limits: Mapping[str, int]
    prompts: Path | None
    repos_file: Path | None = None
    api: str = "messages"  # messages | batches (Message Batches: half price, no per-minute limits)
    # A reviewed repo's own suppressions file is honoured only when the manifest says so.
    trust_repo_suppressions: bool = False


def is_git_url(text: str) -> bool:
    """True for https/ssh/git/file URLs and scp-like `user@host:path`."""
    return bool(_URL.match(text))


def _show(value: Any) -> str:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    kind = {
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
        list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)
    return f"{shown} ({kind})"


class _Checker:
    """Builds the error messages, which all name the manifest file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, expected: str, got: str) -> JobsInputError:
        return JobsInputError(f"{self.path}: key '{key}': expected {expected}, got {got}")

    def string(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "a non-empty string", _show(value))
        return value

    def integer(self, key: str, value: Any, minimum: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"an integer >= {minimum}", _show(value))
        return value

    def agents(self, key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(
                key, f"a non-empty array of agent names among {list(AGENTS)}", _show(value)
            )
        out: list[str] = []
        for item in value:
            if item not in AGENTS:
                raise self.fail(key, f"agent names among {list(AGENTS)}", _show(item))
            if item not in out:
                out.append(item)
        return tuple(out)

    def unknown(self, prefix: str, table: Mapping[str, Any], allowed: frozenset[str]) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(
                    f"{prefix}{key}", f"one of the known keys {sorted(allowed)}", "an unknown key"
                )


@dataclass
class _Entry:
    """A repo entry before slugs are assigned."""

    key: str
    source: str
    path: Path | None
    url: str | None
    ref: str | None
    slug: str | None
    model: str
    agents: tuple[str, ...]
    max_input_tokens: int


def _expand_local(c: _Checker, key: str, text: str, base: Path) -> list[Path]:
    expanded = os.path.expanduser(text)
    if _GLOB_CHARS & set(text):
        matches = sorted(
            {Path(m).resolve() for m in glob.glob(os.path.join(base, expanded), recursive=True)}
        )
        folders = [m for m in matches if m.is_dir()]
        if not folders:
            raise c.fail(
                key, "a glob matching at least one folder", f"{text!r} (no folder matched)"
            )
        return folders
    folder = (base / expanded).resolve()
    if not folder.is_dir():
        raise c.fail(key, "an existing folder", f"{text!r} ({folder} not found)")
    return [folder]


def _entries(c: _Checker, key: str, raw: Any, base: Path, defaults: dict[str, Any]) -> list[_Entry]:
    """Turn one `repos` item (string or table) into entries, globs expanded."""
    over: dict[str, Any] = {}
    slug = ref = None
    if isinstance(raw, str):
        text = c.string(key, raw)
        is_url = is_git_url(text)
        if is_url and "#" in text:
            text, ref = text.rsplit("#", 1)
            ref = c.string(f"{key} (ref after '#')", ref)
        url = text if is_url else None
        local = None if is_url else text
    elif isinstance(raw, dict):
        c.unknown(f"{key}.", raw, _REPO_KEYS)
        if ("path" in raw) == ("url" in raw):
            raise c.fail(key, "a table with exactly one of 'path' or 'url'", _show(raw))
        local = c.string(f"{key}.path", raw["path"]) if "path" in raw else None
        url = c.string(f"{key}.url", raw["url"]) if "url" in raw else None
        if url is not None and not is_git_url(url):
            raise c.fail(
                f"{key}.url",
                "a git URL (https://, ssh://, git://, file:// or user@host:path)",
                _show(url),
            )
        if "ref" in raw:
            if url is None:
                raise c.fail(f"{key}.ref", "a ref only with 'url'", _show(raw["ref"]))
            ref = c.string(f"{key}.ref", raw["ref"])
        if "slug" in raw:
            slug = c.string(f"{key}.slug", raw["slug"])
            if not _SLUG_OK.match(slug) or ".." in slug:
                raise c.fail(
                    f"{key}.slug",
                    "letters, digits, '.', '_' or '-' (no '..', at most 100)",
                    _show(slug),
                )
        if "model" in raw:
            over["model"] = c.string(f"{key}.model", raw["model"])
        if "agents" in raw:
            over["agents"] = c.agents(f"{key}.agents", raw["agents"])
        if "max_input_tokens" in raw:
            over["max_input_tokens"] = c.integer(
                f"{key}.max_input_tokens", raw["max_input_tokens"], MIN_INPUT_TOKENS
            )
    else:
        raise c.fail(key, "a path, glob or git URL string, or a table", _show(raw))
    settings = {**defaults, **over}
    if url is not None:
        _check_git(c, key, url, ref, raw)
        return [
            _Entry(key, url if ref is None else f"{url}#{ref}", None, url, ref, slug, **settings)
        ]
    assert local is not None
    folders = _expand_local(c, key, local, base)
    if slug is not None and len(folders) > 1:
        raise c.fail(
            f"{key}.slug",
            "a slug only for a path naming one folder",
            f"{len(folders)} folders matched",
        )
    return [_Entry(key, local, folder, None, None, slug, **settings) for folder in folders]


def _check_git(c: _Checker, key: str, url: str, ref: str | None, raw: Any) -> None:
    """Refuse a URL or ref that git could take for an option, or a malformed ref."""
    table = isinstance(raw, dict)
    problem = url_problem(url)
    if problem is not None:
        raise c.fail(
            f"{key}.url" if table else key,
            "a git URL that cannot be read as an option",
            f"{scrub_url(url)!r} ({problem})",
        )
    problem = ref_problem(ref) if ref is not None else None
    if problem is not None:
        raise c.fail(
            f"{key}.ref" if table else f"{key} (ref after '#')",
            "a git ref (git check-ref-format rules) or a commit sha",
            f"{ref!r} ({problem}) for repo {scrub_url(url)}",
        )


def _auto_slug(entry: _Entry) -> str:
    if entry.path is not None:
        base = entry.path.name
    else:
        assert entry.url is not None
        base = re.split(r"[/:]", entry.url.rstrip("/"))[-1]
        base = base.removesuffix(".git")
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", base)
    while ".." in base:
        base = base.replace("..", ".")
    base = base.lstrip(".-_")[:80]
    return base or "repo"


def _normal_url(url: str) -> str:
    return url.rstrip("/").removesuffix(".git").rstrip("/")


def _specs(c: _Checker, entries: list[_Entry]) -> tuple[RepoSpec, ...]:
    unique: list[_Entry] = []
    seen: set[object] = set()
    for e in entries:
        ident = e.path if e.path is not None else (_normal_url(e.url or ""), e.ref)
        if ident not in seen:
            seen.add(ident)
            unique.append(e)
    taken: set[str] = set()
    for e in unique:  # explicit slugs first, so that an automatic one never takes theirs
        if e.slug is not None:
            if e.slug.lower() in taken:
                raise c.fail(f"{e.key}.slug", "a slug not used by another repo", _show(e.slug))
            taken.add(e.slug.lower())
    specs: list[RepoSpec] = []
    for e in unique:
        slug = e.slug
        if slug is None:
            base = _auto_slug(e)
            slug, n = base, 1
            while (
                slug.lower() in taken
            ):  # case-insensitive: two reports must not share a folder on macOS
                n += 1
                slug = f"{base}-{n}"
            taken.add(slug.lower())
        specs.append(
            RepoSpec(e.source, e.path, e.url, e.ref, slug, e.model, e.agents, e.max_input_tokens)
        )
    return tuple(specs)


def _repos_file_items(c: _Checker, path: Path) -> list[tuple[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise c.fail(
            "repos_file", "a readable UTF-8 file", f"{str(path)!r} ({exc.__class__.__name__})"
        ) from None
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        item = re.split(r"\s+#", line, maxsplit=1)[0].strip()
        if item and not item.startswith("#"):
            items.append((f"repos_file ({path.name}:{n})", item))
    return items


def load_manifest(path: Path) -> Manifest:
    """Read and validate a manifest; relative paths resolve against the manifest's folder."""
    path = Path(path).resolve()
    c = _Checker(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JobsInputError(f"{path}: manifest not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JobsInputError(f"{path}: cannot read manifest ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise JobsInputError(f"{path}: invalid TOML: {exc}") from None
    c.unknown("", data, _TOP_KEYS)
    base = path.parent

    name = c.string("name", data["name"]) if "name" in data else path.stem
    if "model" not in data:
        raise c.fail("model", "a model name (string)", "nothing (the key is missing)")
    model = c.string("model", data["model"])
    mode = data.get("mode", "auto")
    if mode not in MODES:
        raise c.fail("mode", f"one of {list(MODES)}", _show(mode))
    api = data.get("api", "messages")
    if api not in APIS:
        raise c.fail("api", f"one of {list(APIS)}", _show(api))
    agents = c.agents("agents", data["agents"]) if "agents" in data else AGENTS
    max_out = c.integer(
        "max_output_tokens", data.get("max_output_tokens", DEFAULT_MAX_OUTPUT_TOKENS)
    )
    max_in = c.integer(
        "max_input_tokens", data.get("max_input_tokens", DEFAULT_MAX_INPUT_TOKENS), MIN_INPUT_TOKENS
    )
    out = (base / os.path.expanduser(c.string("out", data.get("out", "reports")))).resolve()

    prompts = None
    if "prompts" in data:
        prompts = (base / os.path.expanduser(c.string("prompts", data["prompts"]))).resolve()
        if not prompts.is_dir():
            raise c.fail(
                "prompts", "an existing prompt folder", f"{data['prompts']!r} ({prompts} not found)"
            )

    limits_raw = data.get("limits", {})
    if not isinstance(limits_raw, dict):
        raise c.fail("limits", f"a table with keys among {list(LIMIT_KEYS)}", _show(limits_raw))
    c.unknown("limits.", limits_raw, frozenset(LIMIT_KEYS))
    limits = {
        k: c.integer(f"limits.{k}", v, minimum=0 if k == "burst_seconds" else 1)
        for k, v in limits_raw.items()
    }

    defaults = {"model": model, "agents": agents, "max_input_tokens": max_in}
    entries: list[_Entry] = []
    repos_raw = data.get("repos", [])
    if not isinstance(repos_raw, list):
        raise c.fail("repos", "an array of paths, globs, git URLs or tables", _show(repos_raw))
    for i, raw in enumerate(repos_raw):
        entries += _entries(c, f"repos[{i}]", raw, base, defaults)
    repos_file = None
    if "repos_file" in data:
        repos_file = (
            base / os.path.expanduser(c.string("repos_file", data["repos_file"]))
        ).resolve()
        for key, item in _repos_file_items(c, repos_file):
            entries += _entries(c, key, item, repos_file.parent, defaults)
    if not entries:
        raise c.fail("repos", "at least one repository (in 'repos' or 'repos_file')", "none")
    trust = data.get("trust_repo_suppressions", False)
    if not isinstance(trust, bool):
        raise c.fail("trust_repo_suppressions", "true or false", _show(trust))

    return Manifest(
        path=path,
        name=name,
        model=model,
        mode=mode,
        agents=agents,
        max_output_tokens=max_out,
        max_input_tokens=max_in,
        out=out,
        repos=_specs(c, entries),
        limits=MappingProxyType(limits),
        prompts=prompts,
        repos_file=repos_file,
        api=api,
        trust_repo_suppressions=trust,
    )
