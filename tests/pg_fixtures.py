"""Fixtures for the embedded PostgreSQL: one server per test session in a temporary state dir."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


def server_dir(prefix: str) -> Path:
    """A fresh directory for a server's state, outside pytest's own temp tree.

    Servers started as root run as an unprivileged user that must traverse the directory's parents.
    pytest keeps /tmp/pytest-of-root at mode 0700 and re-tightens it whenever another pytest run
    starts, which would pull the ground from under a running PostgreSQL; /tmp itself is safe."""
    return Path(tempfile.mkdtemp(prefix=f"recon-{prefix}-"))


@pytest.fixture(scope="session")
def embedded_pg() -> Iterator[PgHandle]:
    root = server_dir("pg")
    paths = StackPaths.at(root)
    server = EmbeddedPostgres(paths)
    info = server.start()
    try:
        yield PgHandle(paths, server, info, load_credentials(paths))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
