"""The one way this project runs git: sealed from the configuration of the repository it runs in.

A folder under review is hostile input. Its `.git/config` (and every file that config includes) can
name programs that git runs by itself: `core.fsmonitor` on any index read, filter drivers on a diff,
`diff.external`, hooks, pagers, editors, credential helpers, ssh commands, upload-pack programs.
`run()` and `git()` start git so that none of them runs:

- The environment: no system or global config (GIT_CONFIG_NOSYSTEM, GIT_CONFIG_GLOBAL=/dev/null,
  GIT_ATTR_NOSYSTEM), every inherited `GIT_*` variable dropped (GIT_DIR, GIT_EXTERNAL_DIFF,
  GIT_TEMPLATE_DIR, GIT_CONFIG_PARAMETERS, ...) except the operator's ssh command, no askpass, no
  prompt (GIT_TERMINAL_PROMPT=0), no pager, a no-op editor, no optional locks, LC_ALL=C.
- Transports: GIT_ALLOW_PROTOCOL, which overrides any `protocol.*` config, allows nothing in a
  folder under review and only the URL's own scheme for a fetch into our cache. So `remote.*`
  upload-pack programs, `core.sshCommand`, `core.gitProxy`, credential helpers and ext:: never run
  in a reviewed folder: git never opens a connection there.
- Overrides in the command scope (GIT_CONFIG_COUNT/KEY_n/VALUE_n, read after the repository's own
  config, so they win; no quoting problem with odd subsection names). A fixed set for the keys that
  name a program (`core.fsmonitor=false`, `core.hooksPath=/dev/null`, `core.pager=cat`, editors,
  askpass, credential and gpg programs, `diff.external`, `log.showSignature=false`,
  `safe.bareRepository=explicit`, ...), plus one override per program-naming key the repository
  defines under a name of its choosing (`filter.<x>.clean|smudge|process` emptied and
  `.required=false`, `diff.<x>.command|textconv`, `merge.<x>.driver`, `credential.<url>.helper`,
  `remote.<x>.uploadpack|receivepack`, `pager.<cmd>`, `protocol.<x>.allow`, `gpg.<x>.program`).
  Those keys are found with `git config --list --null` (includes resolved), which reads files and
  runs nothing. An empty program makes git fail ("cannot run") rather than run anything.
- Diffing commands (diff, log, show) always get `--no-ext-diff --no-textconv`, so their output is
  the plain diff whatever the repository says.
- Only the subcommands listed in ALLOWED run (read-only ones, plus init/fetch/checkout/clean for
  our own cache clones; not `config`, so nothing can write a repository's config through here);
  the keys that only other commands read (aliases, sendemail, trailers, merge and diff tools,
  browsers, `remote.<x>.vcs`) are therefore never reached.

Hooks in `.git/hooks/` need no config: core.hooksPath=/dev/null hides them too.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

from jobs.errors import JobsError

__all__ = [
    "ALLOWED",
    "GIT_TIMEOUT_S",
    "GitError",
    "diff",
    "fetch",
    "git",
    "is_ancestor",
    "overrides",
    "ref_problem",
    "rev_parse",
    "run",
    "safe_env",
    "scrub_url",
    "tags_at",
    "url_problem",
]

GIT_TIMEOUT_S = 600
ALLOWED = frozenset(
    {
        "init",
        "fetch",
        "checkout",
        "clean",
        "ls-files",
        "check-ignore",
        "rev-parse",
        "rev-list",
        "merge-base",
        "tag",
        "diff",
        "log",
        "show",
        "cat-file",
        "ls-tree",
        "for-each-ref",
    }
)
_DIFFING = frozenset({"diff", "log", "show"})
# The operator's own ssh setup (deploy keys) for clones; everything else named GIT_* is dropped.
_KEEP_ENV = frozenset({"GIT_SSH_COMMAND", "GIT_SSH", "GIT_SSH_VARIANT"})
_DROP_ENV = frozenset({"SSH_ASKPASS", "PAGER", "EDITOR", "VISUAL", "LESS", "LV"})
_FIXED: tuple[tuple[str, str], ...] = (
    ("core.fsmonitor", "false"),
    ("core.hooksPath", os.devnull),
    ("core.pager", "cat"),
    ("core.editor", ":"),
    ("sequence.editor", ":"),
    ("core.askPass", ""),
    ("core.sshCommand", "ssh"),
    ("core.alternateRefsCommand", "true"),
    ("credential.helper", ""),
    ("diff.external", ""),
    ("diff.ignoreSubmodules", "all"),
    ("gpg.program", "false"),
    ("gpg.openpgp.program", "false"),
    ("gpg.x509.program", "false"),
    ("gpg.ssh.program", "false"),
    ("gpg.ssh.defaultKeyCommand", ""),
    ("log.showSignature", "false"),
    ("submodule.recurse", "false"),
    ("fetch.recurseSubmodules", "false"),
    ("status.submoduleSummary", "false"),
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
    ("safe.bareRepository", "explicit"),
    ("protocol.allow", "never"),
)
# (section, name) of keys under a subsection the repository names: the neutral value for each.
_NAMED: dict[tuple[str, str], str] = {
    ("filter", "clean"): "",
    ("filter", "smudge"): "",
    ("filter", "process"): "",
    ("diff", "command"): "",
    ("diff", "textconv"): "",
    ("merge", "driver"): "",
    ("credential", "helper"): "",
    ("remote", "uploadpack"): "git-upload-pack",
    ("remote", "receivepack"): "git-receive-pack",
    ("gpg", "program"): "false",
    ("difftool", "cmd"): "",
    ("mergetool", "cmd"): "",
}
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_REF_BAD = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//")
_SCP = re.compile(r"^([^@/]*)@([^:/]*):")
_URL_HOST = re.compile(r"^[a-z][a-z0-9+.-]*://(?:([^@/]*)@)?([^/:]*)", re.IGNORECASE)


class GitError(JobsError):
    """A git command failed, timed out, or git is missing; the message names the command."""

    def __init__(self, message: str, returncode: int | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


def scrub_url(text: str) -> str:
    """`text` with any `user:token@` part of a URL removed, for error messages and logs."""
    return _USERINFO.sub("***@", text)


def ref_problem(ref: str) -> str | None:
    """Why `ref` is not a safe git ref (git check-ref-format rules, one level allowed), or None.

    A commit sha passes. A leading '-' is refused so that no ref can be read as an option.
    """
    if not ref:
        return "it is empty"
    if ref.startswith("-"):
        return "it starts with '-'"
    if ref == "@":
        return "'@' alone is not a ref"
    if _REF_BAD.search(ref):
        return "it holds a space, a control character, '~^:?*[\\', '..', '@{' or '//'"
    if ref.startswith("/") or ref.endswith(("/", ".")):
        return "it starts with '/' or ends with '/' or '.'"
    for part in ref.split("/"):
        if part.startswith(".") or part.endswith(".lock"):
            return "a component starts with '.' or ends with '.lock'"
    return None


def url_problem(url: str) -> str | None:
    """Why `url` is not a safe git URL to fetch (an option in disguise), or None."""
    if url.startswith("-"):
        return "it starts with '-'"
    if any(ord(c) < 0x20 or c == "\x7f" for c in url):
        return "it holds a control character"
    m = _URL_HOST.match(url) or _SCP.match(url)
    if m and any(part and part.startswith("-") for part in m.groups()):
        return "its user or host starts with '-' (ssh would read it as an option)"
    return None


def safe_env(allow_protocol: str | None = None) -> dict[str, str]:
    """The environment of every git process: no inherited git settings, no prompts, no programs.

    `allow_protocol` is the one transport (https, ssh, git, file, ...) a fetch may use; None
    allows none, for folders under review.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if (not k.startswith("GIT_") or k in _KEEP_ENV) and k not in _DROP_ENV
    }
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_SYSTEM=os.devnull,
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_ATTR_NOSYSTEM="1",
        GIT_TERMINAL_PROMPT="0",
        GIT_OPTIONAL_LOCKS="0",
        GIT_PAGER="cat",
        PAGER="cat",
        GIT_EDITOR=":",
        GIT_SEQUENCE_EDITOR=":",
        GIT_NO_REPLACE_OBJECTS="1",
        # Overrides every protocol.* key of any config: a name that is no protocol allows none.
        GIT_ALLOW_PROTOCOL=allow_protocol or "none",
        LC_ALL="C",
    )
    return env


def _with_config(env: dict[str, str], pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    out = dict(env)
    for i, (key, value) in enumerate(pairs):
        out[f"GIT_CONFIG_KEY_{i}"] = key
        out[f"GIT_CONFIG_VALUE_{i}"] = value
    out["GIT_CONFIG_COUNT"] = str(len(pairs))
    return out


def _named_overrides(listing: bytes, allow_protocol: str | None) -> list[tuple[str, str]]:
    """One neutral override per program-naming key that the listed config defines."""
    out: list[tuple[str, str]] = []
    filters: set[str] = set()
    for item in listing.split(b"\0"):
        key = item.split(b"\n", 1)[0].decode("utf-8", "surrogateescape")
        section, _, rest = key.partition(".")
        sub, _, name = rest.rpartition(".")
        section, name = section.lower(), name.lower()
        if section == "pager":  # pager.<command> = a program
            out.append((key, "false"))
        if not sub:
            continue
        if section == "filter":
            filters.add(sub)
        if (section, name) in _NAMED:
            out.append((key, _NAMED[(section, name)]))
        elif section == "protocol" and name == "allow":
            out.append((key, "always" if sub == allow_protocol else "never"))
    out += [(f"filter.{sub}.required", "false") for sub in sorted(filters)]
    return out


def _spawn(
    repo: Path, args: Sequence[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            ["git", "--no-pager", "-C", str(repo), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=env,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise GitError(
            "git is not installed: it is needed to list and fetch repositories"
        ) from None
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0]} timed out after {timeout:g}s in {repo}") from None
    except OSError as exc:
        raise GitError(f"git {args[0]} could not start in {repo}: {exc}") from None


def overrides(repo: Path, allow_protocol: str | None = None) -> list[tuple[str, str]]:
    """The command-scope config that neutralises every program `repo`'s own config could name."""
    pairs = [*_FIXED]
    if allow_protocol:
        pairs.append((f"protocol.{allow_protocol}.allow", "always"))
    env = _with_config(safe_env(allow_protocol), pairs)
    # Reading config runs nothing (includes are plain files); it sees what the command will see.
    res = _spawn(repo, ["config", "--list", "--null", "--includes"], env, 60)
    if res.returncode not in (0, 1):  # 1: no config at all (not a repository)
        raise _failure(repo, ["config"], res)
    return pairs + _named_overrides(res.stdout, allow_protocol)


def _failure(repo: Path, args: Sequence[str], res: subprocess.CompletedProcess[bytes]) -> GitError:
    stderr = res.stderr.decode("utf-8", "backslashreplace")
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    detail = scrub_url(lines[-1]) if lines else f"exit code {res.returncode}"
    return GitError(f"git {args[0]} failed: {detail}", res.returncode, scrub_url(stderr))


def run(
    repo: Path,
    *args: str,
    allow_protocol: str | None = None,
    timeout: float = GIT_TIMEOUT_S,
) -> subprocess.CompletedProcess[bytes]:
    """Run `git -C repo ARGS` sealed from repo's config (see the module docstring); any exit code.

    Raises GitError for a subcommand outside ALLOWED, a missing git, a timeout, or unreadable config.
    """
    if not args or args[0] not in ALLOWED:
        raise GitError(f"git {args[0] if args else '(nothing)'} is not run by review-runner")
    sub, rest = args[0], list(args[1:])
    if sub in _DIFFING:
        rest = ["--no-ext-diff", "--no-textconv", *rest]
    env = _with_config(safe_env(allow_protocol), overrides(repo, allow_protocol))
    return _spawn(repo, [sub, *rest], env, timeout)


def git(
    repo: Path, *args: str, allow_protocol: str | None = None, timeout: float = GIT_TIMEOUT_S
) -> bytes:
    """The stdout of `git -C repo ARGS`, run as `run()` does; GitError if it exits non-zero."""
    res = run(repo, *args, allow_protocol=allow_protocol, timeout=timeout)
    if res.returncode != 0:
        raise _failure(repo, args, res)
    return res.stdout


def _check_ref(ref: str) -> str:
    problem = ref_problem(ref)
    if problem is not None:
        raise GitError(f"not a git ref: {ref!r} ({problem})")
    return ref


def rev_parse(repo: Path, ref: str = "HEAD") -> str:
    """The commit sha `ref` names in `repo`."""
    out = git(
        repo,
        "rev-parse",
        "--verify",
        "--quiet",
        "--end-of-options",
        f"{_check_ref(ref)}^{{commit}}",
    )
    return out.decode("ascii").strip()


def is_ancestor(repo: Path, ancestor: str, descendant: str = "HEAD") -> bool:
    """True if commit `ancestor` is an ancestor of (or equal to) `descendant`."""
    args = ("merge-base", "--is-ancestor", "--end-of-options")
    res = run(repo, *args, _check_ref(ancestor), _check_ref(descendant))
    if res.returncode not in (0, 1):
        raise _failure(repo, args, res)
    return res.returncode == 0


def tags_at(repo: Path, ref: str = "HEAD") -> list[str]:
    """The tags that point at `ref` (a release is a new tag at HEAD), sorted."""
    out = git(repo, "tag", "--list", f"--points-at={_check_ref(ref)}")
    return sorted(line for line in out.decode("utf-8", "backslashreplace").splitlines() if line)


def diff(repo: Path, base: str, head: str | None = None, *options: str) -> bytes:
    """The unified diff from `base` to `head` (or to the work tree), external diff and textconv off."""
    refs = [_check_ref(base)] + ([_check_ref(head)] if head is not None else [])
    return git(repo, "diff", *options, "--end-of-options", *refs, "--")


def fetch(
    repo: Path, url: str, ref: str | None = None, *, depth: int = 1, deepen: int | None = None
) -> None:
    """Fetch `ref` (or the remote HEAD) of `url` into `repo`'s FETCH_HEAD, shallow.

    `deepen` asks for that many more commits of history instead of `depth`. Only the URL's own
    transport is allowed; hooks are off (core.hooksPath=/dev/null) and no prompt is shown.
    """
    problem = url_problem(url)
    if problem is not None:
        raise GitError(f"not a safe git URL: {scrub_url(url)!r} ({problem})")
    scheme = "ssh" if "://" not in url else url.split("://", 1)[0].lower()
    span = [f"--deepen={deepen}"] if deepen is not None else [f"--depth={depth}"]
    target = [url, _check_ref(ref)] if ref is not None else [url]
    git(repo, "fetch", "--quiet", "--no-tags", "--no-recurse-submodules", *span,
        "--end-of-options", *target, allow_protocol=scheme)  # fmt: skip
