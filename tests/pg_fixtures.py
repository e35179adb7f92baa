"""Fixtures for the embedded PostgreSQL: one server per test session in a temporary state dir."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from engine.local.postgres import EmbeddedPostgres, PostgresInfo
from engine.local.state import StackPaths, load_credentials


@dataclass
class PgHandle:
    paths: StackPaths
    server: EmbeddedPostgres
    info: PostgresInfo
    creds: dict[str, str]

    @property
    def superuser_dsn(self) -> str:
        return self.info.superuser_socket_dsn()


@pytest.fixture(scope="session")
def embedded_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgHandle]:
    paths = StackPaths.at(tmp_path_factory.mktemp("pgstack"))
    server = EmbeddedPostgres(paths)
    info = server.start()
    try:
        yield PgHandle(paths, server, info, load_credentials(paths))
    finally:
        server.stop()
