"""A local Salesforce API server that the unmodified simple-salesforce client can use.

It serves, over TLS, the parts of Salesforce recon talks to — SOAP and OAuth login (password,
client credentials, JWT bearer), REST query/queryAll with locator paging, describe, single-record
DML with field history, and Bulk API 2.0 query jobs — backed by the embedded PostgreSQL (database
`salesforce`). Wire facts: /work/shared/reference/salesforce-api.md; internals: `engine.local.sfapi`.

Lifecycle: `LocalSalesforce(paths, pg).start()` spawns a detached process
(`python -m engine.local.salesforce serve --state-dir DIR …`, log in `<state>/salesforce/server.log`),
records pid and port in `<state>/salesforce/state.json` and returns once `GET /services/data/`
answers; `start()` on a running server just returns its status, `stop()` ends it. The CA bundle
clients must trust is `<state>/salesforce/ca.pem`; the JWT key pair is `jwt_key.pem`/`jwt_cert.pem`.
Credentials come from the stack's credentials file (`engine.local.state.load_credentials`).

Data: the org has a fixed Organization id (`ORG_ID`) and an integration user (`USER_ID`) every
login resolves to. `load_records` bulk-loads Arrow/Polars tables with COPY, `allocate_ids` hands
out fresh ids, `create_users` makes account executives, `reset_store` empties the org.

Field choices worth knowing (see `engine.local.sfapi.schema`): `Commission_Rate__c` is a number
(describe type `double`, precision 5, scale 4) holding a fraction (0.0500 = 5 %);
`AnnualRevenue` and `Customer_Lifetime_Value__c` are currency(18, 2). AccountHistory rows use
Salesforce's field names (`TextName` for Name, `Owner` for OwnerId with two rows per change: `Text`
names and `EntityId` ids, `created` on insert); values are stored as text. Bulk CSV writes null as
`""` by default (configurable: `/__recon/config`); extractors must read both `""` and an empty field
as null.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.local.sfapi.schema import ORG_ID, SOBJECTS, USER_ID
from engine.local.sfapi.store import allocate_ids, create_users, ensure_store, load_records, reset_store
from engine.local.sfapi.tls import ensure_tls
from engine.local.state import StackPaths, free_port, load_credentials, pid_alive, read_json, write_json

if TYPE_CHECKING:
    from engine.local.postgres import PostgresInfo

__all__ = [
    "ORG_ID", "USER_ID", "SOBJECTS", "LocalSalesforce", "LocalSalesforceError", "allocate_ids", "create_users",
    "ensure_store", "load_records", "reset_store", "control_request",
]

DEFAULT_API_BUDGET = 1_000_000
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


class LocalSalesforceError(RuntimeError):
    """The local server could not be started (the message names the log file)."""


def _control_token(sfdir: Path) -> str:
    path = sfdir / "control_token"
    if path.exists():
        return path.read_text().strip()
    sfdir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token)
    return token


def _session(ca_bundle: str) -> Any:
    import requests

    s = requests.Session()
    s.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would override verify= otherwise
    s.verify = ca_bundle
    return s


def control_request(status: dict[str, Any], method: str, path: str, body: dict[str, Any] | None = None,
                    timeout: float = 30) -> Any:
    """Call a `/__recon/…` control endpoint of a running server (tests and benchmarks use it)."""
    token = Path(status["control_token_file"]).read_text().strip()
    with _session(status["ca_bundle"]) as s:
        r = s.request(method, f"{status['instance_url']}/__recon/{path.lstrip('/')}", json=body,
                      headers={"X-Recon-Control": token}, timeout=timeout)
        r.raise_for_status()
        return r.json()


class LocalSalesforce:
    """One local Salesforce server for the stack in `paths`, backed by the embedded PostgreSQL `pg`."""

    def __init__(self, paths: StackPaths, pg: PostgresInfo, *, api_budget: int = DEFAULT_API_BUDGET) -> None:
        self.paths = paths
        self.pg = pg
        self.api_budget = api_budget
        self.dir = paths.salesforce
        self.state_file = self.dir / "state.json"
        self.log_file = self.dir / "server.log"

    # -- lifecycle ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any] | None:
        """Non-secret endpoints of the running server, or None when it is not running."""
        state = read_json(self.state_file)
        if not state or not _is_our_server(state.get("pid")):
            return None
        return {k: state[k] for k in ("instance_url", "login_url", "ca_bundle", "pid", "port", "log_file",
                                      "jwt_key_file", "jwt_cert_file", "control_token_file", "api_version")}

    def start(self, timeout: float = 30) -> dict[str, Any]:
        """Start unless running; return `status()` once the server answers `GET /services/data/`."""
        running = self.status()
        pg_fields = _pg_fields(self.pg)
        if running is not None and (read_json(self.state_file) or {}).get("pg") == pg_fields \
                and _ready(running, timeout=min(timeout, 10)):
            return running
        if running is not None:  # not answering, or bound to another PostgreSQL: replace it
            self.stop()
        files = ensure_tls(self.dir)
        _control_token(self.dir)
        load_credentials(self.paths)
        state = read_json(self.state_file) or {}
        port = int(state.get("port") or 0)
        if not port or not _port_free(port):
            port = free_port()
        cmd = [sys.executable, "-m", "engine.local.salesforce", "serve", "--state-dir", str(self.paths.root),
               "--port", str(port), "--pg", json.dumps(pg_fields),
               "--api-budget", str(self.api_budget)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PROJECT_ROOT), env.get("PYTHONPATH")]))
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=env, cwd=str(_PROJECT_ROOT))
        base = f"https://127.0.0.1:{port}"
        info = {
            "pid": proc.pid, "port": port, "instance_url": base, "login_url": base,
            "ca_bundle": str(files.ca_cert), "jwt_key_file": str(files.jwt_key), "jwt_cert_file": str(files.jwt_cert),
            "control_token_file": str(self.dir / "control_token"), "log_file": str(self.log_file),
            "api_version": "59.0", "started_at": time.time(), "pg": pg_fields,
        }
        write_json(self.state_file, info)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LocalSalesforceError(f"local Salesforce server exited with code {proc.returncode}; "
                                           f"see {self.log_file}: {_tail(self.log_file)}")
            if _ready(info, timeout=2):
                status = self.status()
                assert status is not None
                return status
            time.sleep(0.1)
        self.stop()
        raise LocalSalesforceError(f"local Salesforce server did not answer within {timeout:.0f}s; see {self.log_file}")

    def stop(self, timeout: float = 15) -> bool:
        """Stop the server if it runs (SIGTERM, then SIGKILL); True when a server was stopped."""
        state = read_json(self.state_file)
        pid = state.get("pid") if state else None
        if not _is_our_server(pid):
            return False
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            while pid_alive(pid) and time.monotonic() < deadline + 5:
                time.sleep(0.05)
        with contextlib.suppress(ChildProcessError):  # reap it when we are its parent
            os.waitpid(pid, os.WNOHANG)
        if state is not None:
            state["pid"] = None
            write_json(self.state_file, state)
        return True

    # -- helpers for tests and benchmarks ------------------------------------------------------------
    def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        status = self.status()
        if status is None:
            raise LocalSalesforceError("local Salesforce server is not running")
        return control_request(status, method, path, body)


def _pg_fields(pg: PostgresInfo) -> dict[str, Any]:
    return dataclasses.asdict(pg)


def _is_our_server(pid: int | None) -> bool:
    if not pid or not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"engine.local.salesforce" in cmdline and b"serve" in cmdline


def _ready(info: dict[str, Any], timeout: float) -> bool:
    import requests

    try:
        with _session(info["ca_bundle"]) as s:
            return s.get(f"{info['instance_url']}/services/data/", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def _port_free(port: int) -> bool:
    from engine.local.state import port_free

    return port_free(port)


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip().replace("\n", " | ")
    except OSError:
        return ""


# -- server process -------------------------------------------------------------------------------

def serve(state_dir: Path, port: int, pg_fields: dict[str, Any], api_budget: int = DEFAULT_API_BUDGET) -> None:
    """Run the server in the foreground (the detached process `start()` spawns)."""
    import uvicorn

    from engine.local.postgres import PostgresInfo
    from engine.local.sfapi.app import ServerConfig, build_app
    from engine.local.sfapi.auth import Credentials
    from engine.local.sfapi.store import store_dsn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = StackPaths(state_dir.resolve())
    pg = PostgresInfo(**pg_fields)
    files = ensure_tls(paths.salesforce)
    creds = Credentials.from_stack(load_credentials(paths), files.jwt_cert)
    cfg = ServerConfig(state_dir=paths.salesforce, base_url=f"https://127.0.0.1:{port}", dsn=store_dsn(pg),
                       credentials=creds, control_token=_control_token(paths.salesforce), api_budget=api_budget)
    app = build_app(cfg, ensure=lambda: ensure_store(pg))
    logging.getLogger("recon.salesforce").info("serving %s (pid %d)", cfg.base_url, os.getpid())
    uvicorn.run(app, host="127.0.0.1", port=port, ssl_certfile=str(files.server_cert),
                ssl_keyfile=str(files.server_key), log_level="warning", access_log=False, lifespan="on",
                timeout_keep_alive=75, timeout_graceful_shutdown=1, http="h11", loop="asyncio",
                date_header=False)  # the app sends the org's clock as Date


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.local.salesforce",
                                 description="local Salesforce API server for recon's embedded stack")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("serve", help="run the server in the foreground")
    sp.add_argument("--state-dir", required=True, type=Path)
    sp.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: a free one)")
    sp.add_argument("--pg", help="PostgresInfo as JSON (default: the stack's running embedded PostgreSQL)")
    sp.add_argument("--api-budget", type=int, default=DEFAULT_API_BUDGET, help="daily API request budget")
    args = ap.parse_args(argv)
    if args.pg:
        pg_fields = json.loads(args.pg)
    else:
        from engine.local.postgres import EmbeddedPostgres

        info = EmbeddedPostgres(StackPaths.at(args.state_dir)).status()
        if info is None:
            print(f"embedded PostgreSQL of {args.state_dir} is not running; start the stack first", file=sys.stderr)
            return 2
        pg_fields = dataclasses.asdict(info)
    serve(args.state_dir, args.port or free_port(), pg_fields, args.api_budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
