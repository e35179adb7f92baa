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


@pytest.fixture(scope="session")
def linguistic(embedded_pg: PgHandle) -> str:
    """A collation that is not byte order: libc's en_US.UTF-8 (the embedded server has no ICU,
    and its database is initialised with ``--locale=C``, which hides the problem). The locale is
    compiled from the system's sources when the machine lacks it (once, a few seconds)."""
    import subprocess

    import psycopg

    have = subprocess.run(["locale", "-a"], capture_output=True, text=True, check=False).stdout.split()
    if "en_US.utf8" not in have:
        tool = shutil.which("localedef")
        made = subprocess.run([tool, "-i", "en_US", "-f", "UTF-8", "en_US.UTF-8"], capture_output=True,
                              check=False) if tool else None
        if made is None or made.returncode not in (0, 1):  # 1: written, with warnings
            pytest.skip("no en_US.UTF-8 locale and localedef cannot make one (install the locales package)")
    with psycopg.connect(embedded_pg.info.superuser_socket_dsn(), autocommit=True) as c:
        c.execute("CREATE COLLATION IF NOT EXISTS public.recon_en (provider = libc, locale = 'en_US.utf8')")
        assert c.execute("SELECT 'a' < 'B' COLLATE public.recon_en").fetchone() == (True,)  # not byte order
    return "public.recon_en"
