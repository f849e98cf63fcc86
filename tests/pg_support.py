"""A throwaway PostgreSQL cluster for the tests and benchmarks: initdb in a temp dir, loopback only.

PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user and
every server command runs under `runuser -u postgres`. A cluster that cannot be started fails
with the reason (never a skip): the PostgreSQL tests must run wherever the suite runs.
.ci/run installs Debian's `postgresql` package where no server is installed.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

__all__ = ["PgCluster", "PgUnavailable"]

_DB_NAMES = itertools.count()


class PgUnavailable(RuntimeError):
    """No PostgreSQL server could be started here; the message says why and what to install."""


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PgUnavailable(
        "no PostgreSQL server found (/usr/lib/postgresql/*/bin/initdb or initdb on PATH); "
        "install Debian's postgresql package (.ci/run does: apt-get install -y postgresql)"
    )


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgCluster:
    """One initdb'd cluster on 127.0.0.1:<free port>; `new_database()` gives each user its own."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="review-runner-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._owner: list[str] = []
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise PgUnavailable(
                    "running as root, and PostgreSQL refuses root: no 'postgres' user to run "
                    "the test cluster as (install Debian's postgresql package)"
                ) from exc
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._owner = ["runuser", "-u", "postgres", "--"]
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            [*self._owner, *argv], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise PgUnavailable(
                f"{' '.join(argv[:2])} failed (exit {done.returncode}): "
                f"{done.stderr.strip() or done.stdout.strip()}\n{tail}"
            )

    def start(self) -> PgCluster:
        """initdb (trust auth, loopback only) and start the server; returns self."""
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.root} -c max_connections=200 -c fsync=off"
        )
        log = str(self.root / "server.log")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", log, "-w",
                  "-t", "60", "start")  # fmt: skip
        return self

    def new_database(self) -> str:
        """A fresh empty database on this cluster; returns its URL."""
        name = f"rr_{os.getpid()}_{next(_DB_NAMES)}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + "/" + name

    def stop(self) -> None:
        """Stop the server (immediately: nothing in it is worth a checkpoint) and delete it."""
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                [*self._owner, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                 "-w", "stop"], capture_output=True, timeout=60, check=False,
            )  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)
