"""Odd repositories: each odd file fails alone (skipped, its name escaped); a repo-level problem
is a PackError naming the repo; an unreadable ignore file is an error, never a silent leak.

Tests run as root, where mode 000 does not stop a read: unreadability here is real as root (a
FIFO, a socket, a folder where a file was, a symlink loop, an open that fails).
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from gitsupport import git

import jobs.pack as pack_module
import jobs.pack_reading as reading_module
from jobs.errors import JobsError
from jobs.pack import pack_repo
from jobs.pack_record import Pack
from jobs.secrets import Redaction
from jobs.select import PackError


def write(root: Path, rel: str | bytes, content: str = "x = 1\n") -> None:
    path = os.path.join(os.fsencode(root), rel if isinstance(rel, bytes) else os.fsencode(rel))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(content)


def commit_all(root: Path) -> None:
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "init")


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    yield held
    for s in held:
        s.close()


def _json_safe(pack: Pack) -> None:
    """What a report writer does with a pack's record: it must not raise."""
    json.dumps(pack.summary(), ensure_ascii=False).encode("utf-8")
    assert pickle.loads(pickle.dumps(pack)).summary() == pack.summary()


@pytest.mark.parametrize("use_git", [True, False], ids=["git", "plain"])
def test_names_that_are_not_utf8_are_skipped_escaped(tmp_path: Path, use_git: bool) -> None:
    root = tmp_path / "r"
    write(root, "ok.py")
    write(root, b"bad\xff.py")
    write(root, b"dir\xfe/inner.py")
    write(root, "tab\there.py")  # valid UTF-8 with a control character: packed, path escaped
    if use_git:
        commit_all(root)
    pack = pack_repo(root, slug="r", max_input_tokens=10_000)
    assert dict(pack.skipped) == {
        "bad\\xff.py": "file name is not valid UTF-8",
        "dir\\xfe/inner.py": "file name is not valid UTF-8",
    }
    assert {f.path for f in pack.files} == {"ok.py", "tab\there.py"}
    _json_safe(pack)


def test_odd_files_fail_alone_as_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sockets: list[socket.socket]
) -> None:
    root = tmp_path / "r"
    for name in ("ok.py", "fifo.py", "folder.py", "sock.py", "loop_a.py", "boom.py"):
        write(root, name, f"name = {name!r}\n")
    commit_all(root)
    os.unlink(root / "fifo.py")
    os.mkfifo(root / "fifo.py")
    os.unlink(root / "folder.py")
    (root / "folder.py").mkdir()
    (root / "folder.py" / "inside.txt").write_text("inside\n")
    os.unlink(root / "sock.py")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(root / "sock.py"))
    sockets.append(s)
    os.unlink(root / "loop_a.py")
    os.symlink("loop_b.py", root / "loop_a.py")
    os.symlink("loop_a.py", root / "loop_b.py")
    real_redact = reading_module.redact_file

    def redact_file(text: str, path: str) -> Redaction:
        if path == "boom.py":
            raise RecursionError("maximum recursion depth exceeded")
        return real_redact(text, path)

    monkeypatch.setattr(reading_module, "redact_file", redact_file)
    pack = pack_repo(root, slug="r", max_input_tokens=10_000)
    reasons = dict(pack.skipped)
    assert reasons["fifo.py"] == reasons["folder.py"] == reasons["sock.py"] == "not a regular file"
    assert reasons["loop_a.py"] == reasons["loop_b.py"] == "symlink loop"
    assert reasons["boom.py"] == (
        "could not be packed (RecursionError: maximum recursion depth exceeded)"
    )
    assert [f.path for f in pack.files if f.status == "included"] == [
        "folder.py/inside.txt",
        "ok.py",
    ]
    _json_safe(pack)


def test_open_that_fails_as_root_is_skipped(tmp_path: Path, sockets: list[socket.socket]) -> None:
    """A socket passes no lstat check for 'regular' but its open fails even for root (ENXIO)."""
    root = tmp_path / "r"
    write(root, "ok.py")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(root / "sock"))
    sockets.append(s)
    with pytest.raises(OSError) as info:
        open(root / "sock", "rb")  # noqa: SIM115 - the point is that it raises
    assert info.value.strerror
    reader_skip = reading_module.unreadable(info.value)
    assert str(reader_skip) == f"unreadable (OSError: {info.value.strerror})"


def _wrap_reads(monkeypatch: pytest.MonkeyPatch, change) -> list[str]:  # type: ignore[no-untyped-def]
    """Run `change(item)` just before each second read of a file (after the scan measured it)."""
    calls: list[str] = []
    real = pack_module._Reader.lines

    def lines(self, item):  # type: ignore[no-untyped-def]
        calls.append(item.path)
        change(item)
        return real(self, item)

    monkeypatch.setattr(pack_module._Reader, "lines", lines)
    return calls


def test_file_that_changes_after_the_scan_is_skipped_and_the_pack_remade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "r"
    write(root, "src/a.py", "a = 1\n")
    write(root, "src/grow.py", "g = 1\n")
    write(root, "src/gone.py", "x = 1\n")
    write(root, "src/fifo.py", "f = 1\n")
    done: set[str] = set()

    def change(item) -> None:  # type: ignore[no-untyped-def]
        path = root / item.path
        if item.path in done:
            return
        done.add(item.path)
        if item.path == "src/grow.py":
            path.write_text("g = 1\n" + "y = 2\n" * 50_000)  # far over the budget
        elif item.path == "src/gone.py":
            path.unlink()
        elif item.path == "src/fifo.py":
            path.unlink()
            os.mkfifo(path)  # a read that blocked here would hang the night

    calls = _wrap_reads(monkeypatch, change)
    pack = pack_repo(root, slug="r", max_input_tokens=2000)
    assert dict(pack.skipped) == {
        "src/fifo.py": "changed while packing",
        "src/gone.py": "changed while packing",
        "src/grow.py": "changed while packing",
    }
    assert [f.path for f in pack.files] == ["src/a.py"]
    assert "y = 2" not in pack.text and pack.token_estimate <= 2000
    assert calls.count("src/a.py") == 4, "each attempt reads the shown file again"


def test_files_that_keep_changing_fail_the_repo_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "r"
    for i in range(6):
        write(root, f"m{i}.py", f"v = {i}\n")

    def change(item) -> None:  # type: ignore[no-untyped-def]
        (root / item.path).write_text("v = 'changed'\n")

    _wrap_reads(monkeypatch, change)
    with pytest.raises(PackError) as info:
        pack_repo(root, slug="busy", max_input_tokens=2000)
    assert isinstance(info.value, JobsError)
    assert str(info.value) == (
        f"busy: cannot pack {root}: files kept changing while packing (m0.py, m1.py, m2.py, m3.py)"
    )


def test_repo_level_surprise_is_a_pack_error_naming_the_repo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(root: Path) -> tuple[list[str], str]:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(pack_module, "list_candidates", broken)
    with pytest.raises(PackError, match=r"^odd: cannot pack .*: OSError: \[Errno 5\] Input/output"):
        pack_repo(tmp_path, slug="odd", max_input_tokens=2000)


# --- item 4: an unreadable ignore file is an error for that repo ------------------------------


def _make_unreadable(path: Path, kind: str, sockets: list[socket.socket]) -> None:
    path.unlink(missing_ok=True)
    if kind == "folder":
        path.mkdir()
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        sockets.append(s)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        (path.parent / "real-ignore").write_text("secret.txt\n")
        path.symlink_to("real-ignore")


@pytest.mark.parametrize(
    ("use_git", "kind"),
    [
        (True, "folder"),
        (True, "socket"),
        (True, "symlink"),
        (False, "folder"),
        (False, "socket"),
        (False, "symlink"),
        (False, "fifo"),  # git itself would block opening it; the plain walk must not
    ],
)
def test_unreadable_gitignore_fails_the_repo_naming_the_file(
    tmp_path: Path, use_git: bool, kind: str, sockets: list[socket.socket]
) -> None:
    root = tmp_path / "r"
    write(root, "src/app.py")
    write(root, "sub/secret.txt", "password = hunter2\n")
    write(root, "sub/.gitignore", "secret.txt\n")
    if use_git:
        git(root, "init", "-q")
        git(root, "add", "src/app.py")
        git(root, "commit", "-qm", "init")
    before = pack_repo(root, slug="r", max_input_tokens=10_000)
    assert "sub/secret.txt" not in {f.path for f in before.files}
    _make_unreadable(root / "sub" / ".gitignore", kind, sockets)
    with pytest.raises(PackError) as info:
        pack_repo(root, slug="r", max_input_tokens=10_000)
    message = str(info.value)
    assert message.startswith(f"r: cannot pack {root}: cannot read ignore file ")
    assert "sub/.gitignore" in message


def test_unreadable_info_exclude_fails_the_repo(tmp_path: Path) -> None:
    root = tmp_path / "r"
    write(root, "src/app.py")
    commit_all(root)
    exclude = root / ".git" / "info" / "exclude"
    exclude.unlink(missing_ok=True)
    exclude.mkdir(parents=True)
    with pytest.raises(PackError, match=r"cannot read ignore file .*\.git/info/exclude"):
        pack_repo(root, slug="r", max_input_tokens=10_000)


def test_unreadable_gitignore_above_the_packed_folder(tmp_path: Path) -> None:
    outer = tmp_path / "outer"
    write(outer, "inner/a.py")
    write(outer, "inner/secret.txt", "s = 1\n")
    commit_all(outer)
    (outer / ".gitignore").mkdir()
    with pytest.raises(PackError, match=rf"cannot read ignore file {outer}/\.gitignore"):
        pack_repo(outer / "inner", slug="inner", max_input_tokens=10_000)


# --- item 5: packing holds what it sends, not the repository ----------------------------------


def test_packing_memory_follows_the_pack_not_the_repo(tmp_path: Path) -> None:
    root = tmp_path / "big"
    line = "value_{i} = compute({i}) + offset  # a line of ordinary source text\n"
    body = "".join(line.format(i=i) for i in range(1500))  # ~100 kB a file
    for i in range(120):  # ~12 MB
        write(root, f"src/pkg{i % 7}/mod_{i:03d}.py", body)
    tracemalloc.start()
    try:
        pack = pack_repo(root, slug="big", max_input_tokens=20_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pack.token_estimate <= 20_000
    assert sum(1 for f in pack.files if f.status != "omitted") >= 1
    # The old packer kept every file's lines and block: several times the repo's 12 MB.
    assert peak < 6_000_000, f"peak {peak} bytes for a {len(pack.text)}-byte pack"
