"""Where review-runner keeps its state: one directory, mode 0700, files 0600."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["private_file", "state_dir"]


def state_dir() -> Path:
    """$REVIEW_RUNNER_HOME, else $XDG_STATE_HOME/review-runner, else ~/.local/state/review-runner.

    The directory is created on first use with mode 0700, since it holds spend records
    and cloned source code.
    """
    home = os.environ.get("REVIEW_RUNNER_HOME")
    if home:
        path = Path(home).expanduser()
    else:
        xdg = os.environ.get("XDG_STATE_HOME")
        base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
        path = base / "review-runner"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def private_file(path: Path) -> Path:
    """Create `path` (if missing) readable by its owner only, and return it."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)
    return path
