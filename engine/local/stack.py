"""The embedded stack as one unit: PostgreSQL, a Kafka broker and the local Salesforce API.

`up()` starts what is not running (each service reuses a running instance recorded in the state
directory), waits until all three are ready and records their non-secret endpoints in
`services.json`; `down()` stops every process the stack started. Secrets stay in the mode-0600
credentials file, which the endpoints only point to.
"""

from __future__ import annotations

from typing import Any

from engine.core.errors import UsageError
from engine.local.postgres import EmbeddedPostgres, PostgresInfo
from engine.local.state import StackPaths, load_credentials, read_json, write_json


def up(paths: StackPaths | None = None, kafka: str | None = None, progress: Any = None) -> dict[str, Any]:
    """Start the stack (idempotent) and return its non-secret endpoints."""
    from engine.local import kafka as kafka_mod
    from engine.local.salesforce import LocalSalesforce

    paths = paths or StackPaths.at()
    paths.root.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _m: None)
    load_credentials(paths)
    say("starting PostgreSQL")
    pg = EmbeddedPostgres(paths).start()

    previous = read_json(paths.services_file) or {}
    current_backend = previous.get("kafka_backend")
    backend = kafka_mod.choose_backend(kafka or current_backend)
    if current_backend and current_backend != backend:
        kafka_mod.get_broker(current_backend, paths.root).stop()
    say(f"starting Kafka ({backend})")
    broker = kafka_mod.get_broker(backend, paths.root)
    broker.start()
    say("starting the local Salesforce API")
    sf = LocalSalesforce(paths, pg)
    sf_status = sf.start()
    endpoints = _endpoints(paths, pg, broker.bootstrap, backend, sf_status)
    write_json(paths.services_file, endpoints)
    return endpoints


def _endpoints(paths: StackPaths, pg: PostgresInfo, bootstrap: str, backend: str, sf: dict[str, Any]) -> dict[str, Any]:
    return {
        "postgres_dsn": pg.dsn,
        "postgres_socket_dsn": pg.socket_dsn,
        "kafka_bootstrap": bootstrap,
        "kafka_backend": backend,
        "salesforce_instance_url": sf["instance_url"],
        "salesforce_login_url": sf["login_url"],
        "salesforce_ca_bundle": sf["ca_bundle"],
        "credentials_file": str(paths.credentials_file),
        "pgpass_file": str(paths.pgpass_file),
        "state_dir": str(paths.root),
    }


def status(paths: StackPaths | None = None) -> dict[str, Any]:
    """Which services run, with endpoints where they do."""
    from engine.local import kafka as kafka_mod
    from engine.local.salesforce import LocalSalesforce

    paths = paths or StackPaths.at()
    pg = EmbeddedPostgres(paths).status()
    recorded = read_json(paths.services_file) or {}
    backend = recorded.get("kafka_backend")
    k = kafka_mod.get_broker(backend, paths.root).status() if backend else None
    sf = LocalSalesforce(paths, pg).status() if pg else None
    out: dict[str, Any] = {
        "postgres": "running" if pg else "stopped",
        "kafka": "running" if k else "stopped",
        "salesforce": "running" if sf else "stopped",
    }
    if pg and k and sf:
        out.update(_endpoints(paths, pg, k["bootstrap"], backend or "", sf))
    return out


def down(paths: StackPaths | None = None) -> dict[str, bool]:
    """Stop every service the stack started; True per service that was running."""
    from engine.local import kafka as kafka_mod
    from engine.local.salesforce import LocalSalesforce

    paths = paths or StackPaths.at()
    pg = EmbeddedPostgres(paths)
    stopped = {"salesforce": LocalSalesforce(paths, pg.status()).stop()}
    k = False
    for backend in ("apache", "tansu"):
        k = bool(kafka_mod.get_broker(backend, paths.root).stop()) or k
    stopped["kafka"] = k
    stopped["postgres"] = pg.stop()
    return stopped


def require_running(paths: StackPaths) -> dict[str, Any]:
    """The endpoints of a fully running stack, or a usage error that says how to start it."""
    st = status(paths)
    if not all(st[s] == "running" for s in ("postgres", "kafka", "salesforce")):
        down_list = ", ".join(s for s in ("postgres", "kafka", "salesforce") if st[s] != "running")
        raise UsageError(f"the local stack is not running ({down_list} stopped): run `recon services up` first")
    return st


def postgres_info(paths: StackPaths) -> PostgresInfo:
    info = EmbeddedPostgres(paths).status()
    if info is None:
        raise UsageError("the embedded PostgreSQL is not running: run `recon services up` first")
    return info
