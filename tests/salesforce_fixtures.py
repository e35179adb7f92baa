"""Fixtures for the local Salesforce API server: one stack (embedded PostgreSQL + server) per session.

Register with ``pytest_plugins = ["tests.salesforce_fixtures"]``. The stack lives in a temporary
state directory and is stopped when the session ends, so tests never touch ``./.recon``.

``sf_stack`` is a :class:`SalesforceStack`: URLs, CA bundle, credentials, ``settings(method)`` /
``connect(method)`` for each login flow (``oauth_password`` default, ``soap``, ``client_credentials``,
``jwt``, ``session_id``), data helpers (``reset_store``, ``load``, ``create_users``, ``allocate_ids``)
and the control endpoints (``stats``, ``reset_stats``, ``set_limits``, ``fail``, ``expire_sessions``,
``configure``). The store is shared by every test of the session: tests that count rows should
load their own data (``reset_store`` + ``load``) or filter on ids they created.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from engine.connectors.salesforce.client import SalesforceConnection, SalesforceSettings, connect
from engine.local.postgres import EmbeddedPostgres, PostgresInfo
from engine.local.salesforce import LocalSalesforce, allocate_ids, create_users, load_records, reset_store
from engine.local.state import StackPaths, load_credentials


@dataclass
class SalesforceStack:
    """A running local org for tests."""

    paths: StackPaths
    pg: PostgresInfo
    server: LocalSalesforce
    status: dict[str, Any]
    credentials: dict[str, str]

    @property
    def instance_url(self) -> str:
        return str(self.status["instance_url"])

    @property
    def login_url(self) -> str:
        return str(self.status["login_url"])

    @property
    def ca_bundle(self) -> str:
        return str(self.status["ca_bundle"])

    @property
    def jwt_key_file(self) -> str:
        return str(self.status["jwt_key_file"])

    # -- connections --------------------------------------------------------------------------------
    def settings(self, method: str = "oauth_password", **overrides: Any) -> SalesforceSettings:
        """Settings for one login flow against this org (overrides win, e.g. a wrong password)."""
        c = self.credentials
        base: dict[str, Any] = {"login_url": self.login_url, "ca_bundle": self.ca_bundle, "retry_deadline": 10.0}
        if method == "oauth_password":
            base.update(username=c["salesforce_username"], password=c["salesforce_password"],
                        security_token=c["salesforce_security_token"], consumer_key=c["salesforce_consumer_key"],
                        consumer_secret=c["salesforce_consumer_secret"])
        elif method == "soap":
            base.update(username=c["salesforce_username"], password=c["salesforce_password"],
                        security_token=c["salesforce_security_token"])
        elif method == "client_credentials":
            base.update(consumer_key=c["salesforce_consumer_key"], consumer_secret=c["salesforce_consumer_secret"])
        elif method == "jwt":
            base.update(consumer_key=c["salesforce_consumer_key"], username=c["salesforce_username"],
                        jwt_key_file=self.jwt_key_file)
        elif method == "session_id":
            base.update(session_id=self.access_token(), instance_url=self.instance_url)
        else:
            raise ValueError(f"unknown login method {method!r}")
        base.update(overrides)
        return SalesforceSettings(**base)

    def connect(self, method: str = "oauth_password", **overrides: Any) -> SalesforceConnection:
        return connect(self.settings(method, **overrides))

    def http(self) -> requests.Session:
        """A plain requests session that trusts the stack's CA (for raw API calls)."""
        s = requests.Session()
        s.trust_env = False
        s.verify = self.ca_bundle
        return s

    def access_token(self) -> str:
        """A fresh session id from the OAuth password flow (does count as a login in stats)."""
        c = self.credentials
        with self.http() as s:
            r = s.post(f"{self.login_url}/services/oauth2/token", timeout=30, data={
                "grant_type": "password", "client_id": c["salesforce_consumer_key"],
                "client_secret": c["salesforce_consumer_secret"], "username": c["salesforce_username"],
                "password": c["salesforce_password"]})
            r.raise_for_status()
            return str(r.json()["access_token"])

    def use_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """This stack's credentials in the environment recon reads, without size overrides or a
        session id left from elsewhere (the one place that knows those variables)."""
        c = self.credentials
        for k, v in {"SF_LOGIN_URL": self.login_url, "SF_CA_BUNDLE": self.ca_bundle,
                     "SF_USERNAME": c["salesforce_username"], "SF_PASSWORD": c["salesforce_password"],
                     "SF_SECURITY_TOKEN": c["salesforce_security_token"]}.items():
            monkeypatch.setenv(k, v)
        for k in ("SF_SESSION_ID", "RECON_SF_CHUNK_ROWS", "RECON_SF_REST_MAX_ROWS", "RECON_SF_ID_CHUNK"):
            monkeypatch.delenv(k, raising=False)

    # -- data ----------------------------------------------------------------------------------------
    def reset_store(self) -> None:
        reset_store(self.pg)

    def load(self, sobject: str, table: Any, *, replace: bool = False) -> int:
        return load_records(self.pg, sobject, table, replace=replace)

    def create_users(self, count: int) -> list[str]:
        return create_users(self.pg, count)

    def allocate_ids(self, sobject: str, count: int) -> list[str]:
        return allocate_ids(self.pg, sobject, count)

    # -- control endpoints ---------------------------------------------------------------------------
    def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.server.control(method, path, body)

    def stats(self) -> dict[str, Any]:
        return dict(self.control("GET", "stats"))

    def reset_stats(self) -> None:
        self.control("POST", "stats/reset")

    def set_limits(self, budget: int | None = None, used: int | None = None) -> dict[str, int]:
        body = {k: v for k, v in (("budget", budget), ("used", used)) if v is not None}
        return dict(self.control("POST", "limits", body))

    def fail(self, status: int = 503, count: int = 1, kinds: list[str] | None = None, **extra: Any) -> None:
        """Make the next `count` requests of `kinds` (default: any) fail with `status`."""
        self.control("POST", "fail", {"status": status, "count": count, "kinds": kinds, **extra})

    def clear_failures(self) -> None:
        self.control("POST", "fail", {"count": 0})

    def expire_sessions(self) -> None:
        self.control("POST", "sessions/expire")

    def configure(self, **settings: Any) -> dict[str, Any]:
        return dict(self.control("POST", "config", settings))


@pytest.fixture(scope="session")
def sf_stack() -> Iterator[SalesforceStack]:
    from tests.pg_fixtures import server_dir

    paths = StackPaths.at(server_dir("sf"))
    pg_server = EmbeddedPostgres(paths)
    pg = pg_server.start()
    server = LocalSalesforce(paths, pg)
    try:
        status = server.start(timeout=60)
        creds = {k: v for k, v in load_credentials(paths).items() if k.startswith("salesforce_")}
        yield SalesforceStack(paths, pg, server, status, creds)
    finally:
        server.stop()
        pg_server.stop()
        import shutil

        shutil.rmtree(paths.root, ignore_errors=True)
