"""One small data set in the session's local org (``sf_stack``) for every conformance test.

The folder reuses the session's local Salesforce API (no stack of its own) and loads 250 Accounts
under their own id range (pod ``9c0000``), so other modules' data never changes what it reads and
it never resets the store others use. 250 rows are the fewest that make a REST query page twice
(Salesforce's smallest batch size is 200).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from engine.local.sfapi.sample import synthetic_accounts
from tests.salesforce_fixtures import SalesforceStack

N_ROWS = 250
VERSION = "59.0"  # simple-salesforce's default, the version recon speaks


@dataclass
class Org:
    stack: SalesforceStack
    ids: list[str]
    http: requests.Session

    @property
    def where(self) -> str:
        """A SOQL condition selecting exactly this folder's rows."""
        return f"Id >= '{self.ids[0]}' AND Id <= '{self.ids[-1]}'"

    def url(self, rest: str, version: str = VERSION) -> str:
        return f"{self.stack.instance_url}/services/data/v{version}/{rest}"

    def get(self, rest: str, **kw: Any) -> requests.Response:
        return self.http.get(self.url(rest), timeout=60, **kw)

    def query(self, soql: str, **kw: Any) -> requests.Response:
        return self.get("query/", params={"q": soql}, **kw)

    def create_job(self, soql: str, **options: str) -> requests.Response:
        return self.http.post(self.url("jobs/query"), json={"operation": "query", "query": soql, **options}, timeout=60)


@pytest.fixture(scope="package")
def org(sf_stack: SalesforceStack) -> Iterator[Org]:
    table = synthetic_accounts(N_ROWS, pod="9c0000", seed=22)
    assert sf_stack.load("Account", table) == N_ROWS
    sf_stack.clear_failures()
    with sf_stack.http() as http:
        http.headers["Authorization"] = f"Bearer {sf_stack.access_token()}"
        yield Org(sf_stack, sorted(table.column("Id").to_pylist()), http)
