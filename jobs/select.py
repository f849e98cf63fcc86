"""Which files of a repository are candidates for a pack, and in what priority.

Selection follows git: in a work tree, `git ls-files --cached --others --exclude-standard`; in a plain
folder, the same .gitignore rules (nested files included) through pathspec's GitIgnoreSpec, which
replicates git's matching (last matching pattern wins, `!` re-includes, a deeper .gitignore overrides a
shallower one, nothing is re-included below an ignored folder). Then the default exclusions apply to
both: vendored and generated folders, lock files, minified files and binary extensions (by name here;
content checks happen where the file is read, in jobs/pack_reading.py).

An ignore file that exists but cannot be read (a folder, a FIFO, a socket, a symlink, which git
does not follow in a work tree, or an open that fails) is a PackError naming it: without its rules
the files it excludes would be packed and sent. Git itself only warns and goes on. The files
checked are the .gitignore of every folder that holds a listed file (and of the folders from the
work tree's top down to the packed folder) and `.git/info/exclude`. git runs through jobs.git, so
nothing the repository's config names is executed.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from pathspec import GitIgnoreSpec

from jobs.errors import JobsError
from jobs.git import GitError, run

__all__ = [
    "BINARY_SUFFIXES",
    "EXCLUDED_DIRS",
    "LOCK_FILES",
    "PRIORITY_NAMES",
    "PackError",
    "exclusion_reason",
    "list_candidates",
    "parent_inside",
    "priority",
    "shown_name",
]

EXCLUDED_DIRS = frozenset(
    {
        "node_modules",
        "bower_components",
        "jspm_packages",
        "vendor",
        "third_party",
        "dist",
        "build",
        ".venv",
        "venv",
        "__pycache__",
        ".git",
        ".hg",
        ".svn",
        ".tox",
        ".nox",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".next",
        ".nuxt",
        ".gradle",
        ".terraform",
        "site-packages",
    }
)
LOCK_FILES = frozenset(
    {
        "package-lock.json",
        "npm-shrinkwrap.json",
        "yarn.lock",
        "pnpm-lock.yaml",
        "bun.lockb",
        "poetry.lock",
        "pipfile.lock",
        "pdm.lock",
        "uv.lock",
        "cargo.lock",
        "gemfile.lock",
        "composer.lock",
        "go.sum",
        "mix.lock",
        "flake.lock",
        "packages.lock.json",
        "podfile.lock",
        "pubspec.lock",
    }
)
BINARY_SUFFIXES = frozenset(
    {
        ".png",
        ".jpg",
        ".jpeg",
        ".gif",
        ".bmp",
        ".ico",
        ".icns",
        ".webp",
        ".tif",
        ".tiff",
        ".psd",
        ".heic",
        ".avif",
        ".pdf",
        ".doc",
        ".docx",
        ".xls",
        ".xlsx",
        ".ppt",
        ".pptx",
        ".odt",
        ".ods",
        ".odp",
        ".key",
        ".numbers",
        ".pages",
        ".zip",
        ".gz",
        ".tgz",
        ".bz2",
        ".xz",
        ".zst",
        ".7z",
        ".rar",
        ".tar",
        ".jar",
        ".war",
        ".ear",
        ".apk",
        ".aab",
        ".ipa",
        ".deb",
        ".rpm",
        ".dmg",
        ".iso",
        ".msi",
        ".exe",
        ".dll",
        ".so",
        ".dylib",
        ".a",
        ".lib",
        ".o",
        ".obj",
        ".class",
        ".pyc",
        ".pyo",
        ".pyd",
        ".whl",
        ".egg",
        ".wasm",
        ".bin",
        ".dat",
        ".woff",
        ".woff2",
        ".ttf",
        ".otf",
        ".eot",
        ".mp3",
        ".mp4",
        ".m4a",
        ".wav",
        ".ogg",
        ".oga",
        ".flac",
        ".aac",
        ".avi",
        ".mov",
        ".mkv",
        ".webm",
        ".wmv",
        ".flv",
        ".mid",
        ".midi",
        ".sqlite",
        ".sqlite3",
        ".db",
        ".mdb",
        ".npy",
        ".npz",
        ".pkl",
        ".pickle",
        ".parquet",
        ".feather",
        ".h5",
        ".hdf5",
        ".onnx",
        ".pt",
        ".pth",
        ".ckpt",
        ".safetensors",
        ".tflite",
        ".pb",
        ".swf",
        ".fla",
        ".blend",
        ".fbx",
        ".glb",
        ".3ds",
        ".max",
        ".DS_Store",
    }
)
_MINIFIED = re.compile(r"[.-]min\.(?:js|mjs|cjs|css)$|\.(?:js|css)\.map$|\.bundle\.js$")

PRIORITY_NAMES = ("source", "tests", "docs")
_TEST_DIRS = frozenset(
    {"tests", "test", "__tests__", "spec", "specs", "testing", "testdata", "e2e"}
)
_TEST_FILE = re.compile(
    r"^(?:test_.*\.py|.*_test\.(?:py|go|rb|rs|exs?)|conftest\.py|.*\.(?:test|spec)\.[cm]?[jt]sx?|.*Tests?\.(?:java|kt|cs|swift)|.*_spec\.rb)$"
)
_DOC_DIRS = frozenset({"docs", "doc", "documentation", "man"})
_DOC_SUFFIXES = frozenset(
    {".md", ".markdown", ".rst", ".txt", ".adoc", ".asciidoc", ".org", ".tex"}
)
_DOC_NAMES = frozenset(
    {"license", "licence", "copying", "changelog", "changes", "authors", "notice", "contributing"}
)


class PackError(JobsError):
    """One repository cannot be packed (not a run-wide failure); the message names repo and cause."""


def read_ignore_file(path: str) -> str | None:
    """The text of an ignore file, None if there is none; PackError if it exists but is unreadable.

    Opened without following symlinks and without blocking (a FIFO must not hang the run).
    """
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise PackError(f"cannot read ignore file {path}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(st.st_mode):
        raise PackError(f"cannot read ignore file {path}: it is a symlink (git does not follow it)")
    if not stat.S_ISREG(st.st_mode):
        raise PackError(f"cannot read ignore file {path}: not a regular file")
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
        with open(fd, "rb", closefd=True) as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise PackError(f"cannot read ignore file {path}: not a regular file")
            data = fh.read()
    except OSError as exc:
        raise PackError(f"cannot read ignore file {path}: {exc.strerror or exc}") from None
    return data.decode("utf-8", "replace")


def shown_name(rel: str) -> str:
    """`rel` as reports show it: bytes that are not UTF-8 as \\xNN, control characters escaped."""
    if rel.isascii() and rel.isprintable():
        return rel
    text = os.fsencode(rel).decode("utf-8", "backslashreplace")
    return "".join(
        c if c.isprintable() else (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        for c in text
    )


def parent_inside(root: str, rel: str, cache: dict[str, bool]) -> bool:
    """True if the folder holding `rel` resolves inside `root` (no symlinked folder leads out)."""
    parent = rel.rpartition("/")[0]
    if not parent:
        return True
    ok = cache.get(parent)
    if ok is None:
        real = os.path.realpath(os.path.join(root, parent))
        ok = real == os.path.join(root, parent) or real.startswith(root + os.sep)
        cache[parent] = ok
    return ok


def exclusion_reason(path: str) -> str | None:
    """Why `path` (relative, posix) is excluded by name, or None if it is a candidate."""
    parts = path.split("/")
    for part in parts[:-1]:
        if part in EXCLUDED_DIRS:
            return f"vendored or generated folder ({part}/)"
    name = parts[-1]
    lower = name.lower()
    if lower in LOCK_FILES or lower.endswith(".lock"):
        return "lock file"
    if _MINIFIED.search(lower):
        return "minified or generated"
    dot = name.rfind(".")
    if dot > 0 and (name[dot:].lower() in BINARY_SUFFIXES or name[dot:] in BINARY_SUFFIXES):
        return "binary (extension)"
    if name == ".DS_Store":
        return "binary (extension)"
    return None


def priority(path: str) -> int:
    """0 source (code and config), 1 tests, 2 docs: the order in which files claim the token budget."""
    parts = path.split("/")
    name = parts[-1]
    if any(p in _TEST_DIRS for p in parts[:-1]) or _TEST_FILE.match(name):
        return 1
    lower = name.lower()
    stem, dot, suffix = lower.rpartition(".")
    if any(p in _DOC_DIRS for p in parts[:-1]) or (dot and "." + suffix in _DOC_SUFFIXES):
        return 2
    if (stem if dot else lower) in _DOC_NAMES:
        return 2
    return 0


_UNABLE = re.compile(r"^warning: unable to access '(.*)': (.*)$")


def _work_tree(root: Path) -> tuple[Path, Path] | None:
    """(top of the work tree, the common git folder) holding `root`, or None outside one."""
    res = run(root, "rev-parse", "--path-format=absolute", "--show-toplevel", "--git-common-dir")
    lines = res.stdout.decode("utf-8", "surrogateescape").splitlines()
    if res.returncode != 0 or len(lines) != 2:
        return None
    return Path(lines[0]), Path(lines[1])


def _check_ignore_files(
    root: Path, paths: list[str], stderr: bytes, where: tuple[Path, Path]
) -> None:
    """PackError if an ignore file git should have applied to `root` could not be read."""
    for line in stderr.decode("utf-8", "backslashreplace").splitlines():
        m = _UNABLE.match(line)  # git's words (LC_ALL=C) for an ignore file it skipped
        if m:
            raise PackError(f"cannot read ignore file {root / m.group(1)}: {m.group(2)}")
    folders = {""} | {p.rpartition("/")[0] for p in paths}
    for folder in sorted(folders):
        read_ignore_file(os.path.join(root, folder, ".gitignore"))
    top, common = where
    read_ignore_file(str(common / "info" / "exclude"))
    above = root
    while above != top and top in above.parents:  # .gitignore files above the packed folder
        above = above.parent
        read_ignore_file(str(above / ".gitignore"))


def _git_listing(root: Path) -> list[str] | None:
    """The paths git would consider for `root`, or None when `root` is not (usefully) in a work tree."""
    try:
        where = _work_tree(root)
        if where is None:
            return None
        res = run(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard", timeout=300)
    except GitError:
        return (
            None  # no git, or it hung (a FIFO as .gitignore): the plain walk reads the rules itself
        )
    if res.returncode != 0:
        # Inside a work tree git refused to list: say why rather than pack without its rules.
        read_ignore_file(str(where[1] / "info" / "exclude"))
        detail = res.stderr.decode("utf-8", "backslashreplace").strip().splitlines()
        raise PackError(f"git ls-files failed: {detail[-1] if detail else res.returncode}")
    paths = [p for p in res.stdout.decode("utf-8", "surrogateescape").split("\0") if p]
    _check_ignore_files(root, paths, res.stderr, where)
    if not paths:
        # An ignored folder inside some enclosing repo lists nothing: review it as a plain folder.
        check = run(root.parent, "check-ignore", "-q", "--", root.name)
        if check.returncode == 0:
            return None
    return paths


def _ignored(rel: str, is_dir: bool, specs: list[tuple[str, GitIgnoreSpec]]) -> bool:
    for base, spec in reversed(specs):  # deepest .gitignore first: it overrides the ones above
        sub = rel[len(base) + 1 :] if base else rel
        res = spec.check_file(sub + "/" if is_dir else sub)
        if res.include is not None:
            return bool(res.include)
    return False


def _walk_plain(root: Path) -> list[str]:
    out: list[str] = []
    stack: list[tuple[str, list[tuple[str, GitIgnoreSpec]]]] = [("", [])]
    while stack:
        rel_dir, specs = stack.pop()
        folder = os.path.join(root, rel_dir) if rel_dir else str(root)
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError:
            continue  # an unreadable folder: its files cannot be listed, let alone read
        for entry in entries:
            if entry.name == ".gitignore":
                text = read_ignore_file(entry.path)
                if text is not None:
                    specs = [*specs, (rel_dir, GitIgnoreSpec.from_lines(text.splitlines()))]
                break
        for entry in entries:
            if entry.name == ".git":
                continue
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                is_dir = entry.is_dir(
                    follow_symlinks=False
                )  # a symlink to a folder is a file, as in git
            except OSError:
                is_dir = False
            if specs and _ignored(rel, is_dir, specs):
                continue
            if is_dir:
                stack.append((rel, specs))
            else:
                out.append(rel)
    return out


def list_candidates(root: Path) -> tuple[list[str], str]:
    """Sorted relative posix paths under `root` that git (or the .gitignore rules) selects, and how.

    The second item is "git" or "gitignore". Paths are not yet filtered by `exclusion_reason`;
    names that are not UTF-8 come as surrogate escapes. PackError for an unreadable ignore file.
    """
    paths = _git_listing(root)
    method = "git"
    if paths is None:
        paths, method = _walk_plain(root), "gitignore"
    return sorted(set(paths)), method
