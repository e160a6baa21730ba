"""Shared fixtures. The PostgreSQL machinery lives in ``tests/pgserver.py``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgserver import PostgresServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Anything that needs the server is marked, so `-m "not postgres"` skips it.
    for item in items:
        if "postgres" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the whole session (superuser ``warden_admin``)."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_dsn(postgres: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """DSN of a fresh, empty database for this test only; dropped afterwards."""
    with postgres.database(prefix=request.node.name) as dsn:
        yield dsn
