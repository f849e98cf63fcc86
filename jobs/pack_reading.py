"""Reading one candidate file for a pack: its bytes, safely, then its normalised text lines.

Opens never follow a final symlink and never block (a FIFO); a symlink is followed only to a
regular file inside the repo. The text is normalised (BOM dropped, CRLF to LF, stray line
separators shown as escapes) and redacted (jobs.secrets). A file that cannot be packed raises
`Skip` with the reason the report shows.
"""

from __future__ import annotations

import errno
import os
import re
import stat

from jobs.pack_record import RedactionSite
from jobs.secrets import redact_file
from jobs.select import parent_inside

__all__ = ["Skip", "read_candidate", "text_lines", "unreadable"]

_SNIFF = 8192
_UNSAFE = re.compile("[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_UNSAFE_TABLE = {
    ord(c): f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
    for c in "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
}


class Skip(Exception):
    """A file that cannot be packed, with the reason shown in the report."""


def unreadable(exc: OSError) -> Skip:
    if type(exc) is OSError:  # no subclass names the cause (ENXIO: a socket, EIO, ...)
        return Skip(f"unreadable (OSError: {exc.strerror or exc.errno})")
    return Skip(f"unreadable ({type(exc).__name__})")


def _nonblocking(path: str, flags: int) -> int:
    # A FIFO swapped in after the lstat must not block the run; fstat below refuses it.
    return os.open(path, flags | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)


def read_candidate(root: str, rel: str, size_cap: int, parents: dict[str, bool]) -> bytes:
    """The bytes of one candidate, or Skip with the reason; symlinks are followed only inside root."""
    if not parent_inside(root, rel, parents):
        raise Skip("symlink outside the repo")
    full = os.path.join(root, rel)
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        raise Skip("missing (listed by git, not in the work tree)") from None
    except OSError as exc:
        raise unreadable(exc) from None
    if stat.S_ISLNK(st.st_mode):
        target = os.path.realpath(full)
        if not target.startswith(root + os.sep):
            raise Skip("symlink outside the repo")
        try:
            st = os.stat(target)
        except OSError as exc:
            loop = exc.errno == errno.ELOOP
            raise Skip("symlink loop" if loop else "broken symlink") from None
        if stat.S_ISDIR(st.st_mode):
            raise Skip("symlink to a folder")
        full = target
    if not stat.S_ISREG(st.st_mode):
        raise Skip("not a regular file")
    if st.st_size > size_cap:
        raise Skip(f"too large ({st.st_size} bytes > {size_cap})")
    try:
        with open(full, "rb", opener=_nonblocking) as fh:
            now = os.fstat(fh.fileno())
            if not stat.S_ISREG(now.st_mode):
                raise Skip("not a regular file")
            data = fh.read(size_cap + 1)
    except FileNotFoundError:
        raise Skip("missing (gone while packing)") from None
    except OSError as exc:
        raise unreadable(exc) from None
    if len(data) > size_cap:
        raise Skip(f"too large (over {size_cap} bytes)")
    return data


def text_lines(data: bytes, rel: str, sites: list[RedactionSite] | None) -> list[str]:
    if b"\0" in data[:_SNIFF]:
        raise Skip("binary (NUL byte)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Skip("invalid UTF-8") from None
    if len(data) > 4096 and data.count(b"\n") * 1000 < len(data):
        raise Skip("minified or generated (lines average over 1000 bytes)")
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    redaction = redact_file(text, rel)
    text = redaction.text
    if sites is not None:
        sites.extend(RedactionSite(rel, hit.line, hit.kind) for hit in redaction.hits)
    if _UNSAFE.search(text):
        text = text.translate(_UNSAFE_TABLE)
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines
