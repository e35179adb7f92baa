"""The embedded PostgreSQL: real server, TCP with scram passwords, roles, reuse, detached lifetime."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from engine.local.postgres import EmbeddedPostgres
from engine.local.state import pid_alive


def test_tcp_with_password_works_and_wrong_password_is_refused(embedded_pg) -> None:
    info, creds = embedded_pg.info, embedded_pg.creds
    with psycopg.connect(info.dsn, password=creds["postgres_password"]) as c:
        assert c.execute("SELECT current_user").fetchone() == ("recon",)
        assert c.info.host == "127.0.0.1"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(info.dsn, password="not-the-password")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(info.dsn, password="")


def test_app_role_exists_and_is_not_superuser(embedded_pg) -> None:
    info, creds = embedded_pg.info, embedded_pg.creds
    dsn = f"postgresql://{creds['postgres_app_user']}@{info.host}:{info.port}/{info.database}"
    with psycopg.connect(dsn, password=creds["postgres_app_password"]) as c:
        row = c.execute("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user").fetchone()
        assert row == (False, False)


def test_pgpass_file_lets_a_password_free_dsn_connect(embedded_pg) -> None:
    pgpass = embedded_pg.paths.pgpass_file
    assert stat.S_IMODE(pgpass.stat().st_mode) == 0o600
    assert stat.S_IMODE(embedded_pg.paths.credentials_file.stat().st_mode) == 0o600
    env = {**os.environ, "PGPASSFILE": str(pgpass)}
    env.pop("PGPASSWORD", None)
    code = "import psycopg,sys; print(psycopg.connect(sys.argv[1]).execute('select 42').fetchone()[0])"
    out = subprocess.run([sys.executable, "-c", code, embedded_pg.info.dsn], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "42"


def test_unix_socket_and_server_settings(embedded_pg) -> None:
    with psycopg.connect(embedded_pg.info.socket_dsn) as c:
        assert c.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert c.execute("SHOW password_encryption").fetchone() == ("scram-sha-256",)
        assert c.execute("SHOW server_encoding").fetchone() == ("UTF8",)
        # the socket trusts whoever reaches it: only the server's own user may (issue 17)
        assert c.execute("SHOW unix_socket_permissions").fetchone() == ("0700",)
    sock_dir = Path(embedded_pg.info.socket_dir)
    sockets = list(sock_dir.glob(".s.PGSQL.*"))
    sockets = [p for p in sockets if not p.name.endswith(".lock")]
    assert sockets and all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in sockets)
    assert stat.S_IMODE(sock_dir.stat().st_mode) == 0o700


def test_start_reuses_the_running_server(embedded_pg) -> None:
    again = EmbeddedPostgres(embedded_pg.paths).start()
    assert again.pid == embedded_pg.info.pid and again.port == embedded_pg.info.port


def test_server_survives_the_process_that_started_it_and_stop_stops_it() -> None:
    from tests.pg_fixtures import server_dir

    tmp_path = server_dir("pgsurvive")
    code = ("from engine.local.postgres import EmbeddedPostgres; from engine.local.state import StackPaths;"
            "import sys; print(EmbeddedPostgres(StackPaths.at(sys.argv[1])).start().pid)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    pid = int(out.stdout.strip().splitlines()[-1])
    assert pid_alive(pid)  # the starter has exited; the server runs on
    server = EmbeddedPostgres(__import__("engine.local.state", fromlist=["StackPaths"]).StackPaths.at(tmp_path))
    info = server.status()
    assert info is not None and info.pid == pid
    assert server.stop() is True
    assert server.status() is None
    assert not pid_alive(pid)
    # a restart keeps the data and the port when it is still free
    again = server.start()
    try:
        assert again.port == info.port
    finally:
        server.stop()
        import shutil

        shutil.rmtree(tmp_path, ignore_errors=True)
