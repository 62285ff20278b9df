"""Fixtures shared across test files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e_support import stop_cluster
from modelfleet import Workspace
from modelfleet.store.registry import Store

# The store suite (tests/store/) runs once per metadata backend.
STORE_BACKENDS = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    in_suite = Path(str(metafunc.definition.fspath)).parent.name == "store"
    if in_suite and "store_backend" in metafunc.fixturenames:
        metafunc.parametrize("store_backend", STORE_BACKENDS, indirect=True)


@pytest.fixture
def store_backend(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    """One real PostgreSQL server for the session (tests/store/postgres.py); a database per test."""
    from store.postgres import running_postgres

    with running_postgres() as server:
        yield server


@pytest.fixture
def store(tmp_path: Path, store_backend: str, request: pytest.FixtureRequest) -> Iterator[Store]:
    """A fresh workspace store: on a real SQLite file, or (store suite) a real PostgreSQL database."""
    database = None
    if store_backend == "postgresql":
        database = request.getfixturevalue("postgres_server").new_database()
    s = Store.create(tmp_path / "ws", "ws", database=database)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def fresh_ws(tmp_path: Path) -> Iterator[Workspace]:
    """A workspace of the test's own; its cluster, if the test started one, is stopped at the end
    (for a test that stops or shuts down its cluster, which a module's shared one must not see)."""
    workspace = Workspace.create("fresh", tmp_path / "ws")
    yield workspace
    stop_cluster(workspace)
