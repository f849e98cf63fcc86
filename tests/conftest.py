"""Every test gets its own state directory and no route to the real API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_support import PgCluster, PgUnavailable

from runner.simulator import Simulator


@pytest.fixture(autouse=True)
def isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point REVIEW_RUNNER_HOME at a fresh folder and remove every way to reach the real API."""
    home = tmp_path / "state"
    monkeypatch.setenv("REVIEW_RUNNER_HOME", str(home))
    for var in (
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "ANTHROPIC_BASE_URL",
        "REVIEW_RUNNER_DEBUG",
        "REVIEW_RUNNER_DATABASE_URL",  # SQLite unless a test asks for PostgreSQL (pg_support)
    ):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    """A default Simulator serving on an ephemeral loopback port, stopped after the test."""
    sim = Simulator()
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def simulator_url(simulator: Simulator) -> Iterator[str]:
    """The base URL of the `simulator` fixture (for ANTHROPIC_BASE_URL or base_url=)."""
    yield simulator.base_url


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL server for the session, started by the first test that asks."""
    try:
        cluster = PgCluster().start()
    except PgUnavailable as exc:
        pytest.fail(f"the PostgreSQL tests need a server, and none started: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster, isolated_state: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database, set as REVIEW_RUNNER_DATABASE_URL (inherited by child processes)."""
    url = pg_cluster.new_database()
    monkeypatch.setenv("REVIEW_RUNNER_DATABASE_URL", url)
    return url
