# ruff: noqa: S608 - the f-strings here are SOQL sent to the local org (the server binds literals as parameters)
"""The local Salesforce server against the real, unmodified simple-salesforce client (no mocks).

One stack per session (`sf_stack`); this module loads its own 100,000 Accounts once and filters
counting queries on the loaded id range, so records created by DML tests never disturb counts.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from engine.connectors.salesforce.client import (
    SalesforceAuthError,
    SalesforceConfigError,
    SalesforceSettings,
    SalesforceUnreachable,
    connect,
)
from engine.local.salesforce import ORG_ID, USER_ID
from engine.local.sfapi.sample import synthetic_accounts
from tests.salesforce_fixtures import SalesforceStack

N_ACCOUNTS = 100_000
CSV_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
REST_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+0000$")
BULK_FIELDS = ("Id, Name, Industry, AnnualRevenue, NumberOfEmployees, OwnerId, Customer_Lifetime_Value__c, "
               "Commission_Rate__c, IsDeleted, CreatedDate, SystemModstamp")


class Org:
    """The module's data: loaded table and the id bound that isolates it."""

    def __init__(self, stack: SalesforceStack, table: pa.Table, owners: list[str]) -> None:
        self.stack = stack
        self.table = table
        self.owners = owners
        self.ids: list[str] = table.column("Id").to_pylist()
        self.last_id = self.ids[-1]
        self.conn = stack.connect()
        self.sf: Salesforce = self.conn.sf

    def loaded(self, where: str = "") -> str:
        cond = f"Id <= '{self.last_id}'"
        return f"WHERE {cond} AND ({where})" if where else f"WHERE {cond}"


@pytest.fixture(scope="module")
def org(sf_stack: SalesforceStack) -> Org:
    sf_stack.reset_store()
    owners = sf_stack.create_users(20)
    table = synthetic_accounts(N_ACCOUNTS, owner_ids=owners, seed=11)
    assert sf_stack.load("Account", table) == N_ACCOUNTS
    sf_stack.clear_failures()
    sf_stack.set_limits(budget=1_000_000, used=0)
    return Org(sf_stack, table, owners)


# -- discovery and describe -----------------------------------------------------------------------

def test_versions_and_resources(org: Org) -> None:
    with org.stack.http() as s:
        versions = s.get(f"{org.stack.instance_url}/services/data/", timeout=30).json()
    assert {"label": "Winter '24", "url": "/services/data/v59.0", "version": "59.0"} in versions
    res = org.sf.restful("")
    assert res["query"] == "/services/data/v59.0/query"
    assert org.sf.api_usage["api-usage"].total == 1_000_000


def test_describe_field_types(org: Org) -> None:
    d = org.sf.Account.describe()
    fields = {f["name"]: f for f in d["fields"]}
    assert d["keyPrefix"] == "001" and d["name"] == "Account"
    assert fields["Id"]["type"] == "id" and fields["Id"]["nillable"] is False
    clv = fields["Customer_Lifetime_Value__c"]
    assert (clv["type"], clv["precision"], clv["scale"], clv["custom"]) == ("currency", 18, 2, True)
    rate = fields["Commission_Rate__c"]
    assert (rate["type"], rate["precision"], rate["scale"], rate["custom"]) == ("double", 5, 4, True)
    assert fields["AnnualRevenue"]["type"] == "currency" and fields["AnnualRevenue"]["custom"] is False
    assert fields["OwnerId"]["referenceTo"] == ["User"] and fields["OwnerId"]["type"] == "reference"
    assert fields["Name"]["length"] == 255 and fields["Name"]["nameField"] is True
    assert fields["SystemModstamp"]["type"] == "datetime"
    assert fields["IsDeleted"]["type"] == "boolean"
    history = {f["name"]: f for f in org.sf.AccountHistory.describe()["fields"]}
    assert history["OldValue"]["type"] == "anyType" and history["OldValue"]["filterable"] is False
    names = {o["name"]: o for o in org.sf.describe()["sobjects"]}
    assert names["Account"]["keyPrefix"] == "001" and names["Opportunity"]["keyPrefix"] == "006"
    assert {"Organization", "User", "AccountHistory"} <= set(names)


# -- REST query -----------------------------------------------------------------------------------

def test_query_all_pages_through_locators(org: Org) -> None:
    org.stack.reset_stats()
    result = org.sf.query_all(f"SELECT Id, Name FROM Account {org.loaded()} ORDER BY Id LIMIT 6500")
    ids = [r["Id"] for r in result["records"]]
    assert result["totalSize"] == 6500 and ids == org.ids[:6500]
    stats = org.stack.stats()
    assert stats["requests"]["query"] == 1 and stats["requests"]["query_more"] == 3
    assert stats["records"] == {"query": 2000, "query_more": 4500}
    assert stats["records_by_object"] == {"Account": 6500}


def test_query_batch_size_header_and_total_size(org: Org) -> None:
    org.stack.reset_stats()
    first = org.sf.query(f"SELECT Id FROM Account {org.loaded()}", headers={"Sforce-Query-Options": "batchSize=500"})
    assert first["totalSize"] == N_ACCOUNTS and first["done"] is False and len(first["records"]) == 500
    assert re.fullmatch(r"/services/data/v59\.0/query/01g\w{15}-500", first["nextRecordsUrl"])
    nxt = org.sf.query_more(first["nextRecordsUrl"], identifier_is_url=True,
                            headers={"Sforce-Query-Options": "batchSize=500"})
    assert [r["Id"] for r in nxt["records"]] == org.ids[500:1000]
    count = org.sf.query(f"SELECT COUNT() FROM Account {org.loaded()}")
    assert count["totalSize"] == N_ACCOUNTS and count["records"] == []


def test_query_all_over_5000_accounts(org: Org) -> None:
    org.stack.reset_stats()
    where = org.loaded("Industry IN ('Banking', 'Finance')")
    result = org.sf.query_all(f"SELECT Id, Industry FROM Account {where}")
    expected = sum(1 for x in org.table.column("Industry").to_pylist() if x in ("Banking", "Finance"))
    assert expected > 5000 and result["totalSize"] == expected
    assert {r["Industry"] for r in result["records"]} == {"Banking", "Finance"}
    assert org.stack.stats()["requests"]["query_more"] == (expected - 1) // 2000


def test_rest_values_and_soql_semantics(org: Org) -> None:
    row = org.table.slice(0, 1).to_pylist()[0]
    rec = org.sf.query(f"SELECT Id, Name, AnnualRevenue, Commission_Rate__c, IsDeleted, CreatedDate, Industry "
                       f"FROM Account WHERE Id = '{row['Id'][:15]}'")["records"][0]  # 15-char id matches
    assert rec["attributes"] == {"type": "Account", "url": f"/services/data/v59.0/sobjects/Account/{row['Id']}"}
    assert rec["Id"] == row["Id"] and rec["Name"] == row["Name"] and rec["IsDeleted"] is False
    assert REST_DATETIME.match(rec["CreatedDate"])
    assert rec["AnnualRevenue"] == (pytest.approx(row["AnnualRevenue"]) if row["AnnualRevenue"] is not None else None)
    assert rec["Commission_Rate__c"] == pytest.approx(row["Commission_Rate__c"])
    # SOQL semantics: case-insensitive equality, != keeps nulls, LIKE is case-insensitive
    n_null = org.table.column("Industry").null_count
    banking = sum(1 for x in org.table.column("Industry").to_pylist() if x == "Banking")
    q = org.sf.query
    assert q(f"SELECT COUNT() FROM Account {org.loaded('Industry = null')}")["totalSize"] == n_null
    assert q(f"SELECT COUNT() FROM Account {org.loaded(chr(39).join(['industry = ', 'BANKING', '']))}")[
        "totalSize"] == banking
    assert q(f"SELECT COUNT() FROM Account {org.loaded(chr(39).join(['Industry != ', 'Banking', '']))}")[
        "totalSize"] == N_ACCOUNTS - banking
    assert q(f"SELECT COUNT() FROM Account {org.loaded(chr(39).join(['Name LIKE ', 'acme %', '']))}")[
        "totalSize"] == N_ACCOUNTS // 500
    ts = dt.datetime(2026, 1, 15, tzinfo=dt.UTC)
    expected = sum(1 for x in org.table.column("SystemModstamp").to_pylist() if x < ts)
    got = q(f"SELECT COUNT() FROM Account {org.loaded('SystemModstamp < 2026-01-15T00:00:00Z')}")["totalSize"]
    assert got == expected
    page = q(f"SELECT Id, Name FROM Account {org.loaded()} ORDER BY Name DESC NULLS LAST LIMIT 3 OFFSET 1")
    assert [r["Name"] for r in page["records"]] == sorted(org.table.column("Name").to_pylist(), reverse=True)[1:4]


# -- Bulk API 2.0 ----------------------------------------------------------------------------------

def _rows(page: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(page)))


def test_bulk2_query_pages_and_csv_conventions(org: Org) -> None:
    org.stack.reset_stats()
    header = [f.strip() for f in BULK_FIELDS.split(",")]
    pages = list(org.sf.bulk2.Account.query(f"SELECT {BULK_FIELDS} FROM Account {org.loaded()}",
                                            max_records=30_000, wait=0))
    assert len(pages) == 4
    rows: list[list[str]] = []
    for page in pages:
        parsed = _rows(page)
        assert parsed[0] == header  # every page carries its own header row
        rows.extend(parsed[1:])
    assert len(rows) == N_ACCOUNTS and [r[0] for r in rows] == org.ids
    # every value quoted, quotes doubled, nulls as an empty quoted field
    first_line = pages[0].split("\n")[1]
    assert first_line.startswith('"' + org.ids[0] + '","Acme ""1"", Inc."')
    assert pages[0].startswith('"Id","Name","Industry"')
    by_id = {r[0]: r for r in rows}
    src = org.table.to_pylist()
    null_industry = next(r for r in src if r["Industry"] is None)
    assert by_id[null_industry["Id"]][2] == ""
    assert f'"{null_industry["Id"]}","{null_industry["Name"]}","",' in "".join(pages)
    full = next(r for r in src[1:] if r["Customer_Lifetime_Value__c"] is not None and r["Industry"] is not None)
    sample = by_id[full["Id"]]
    assert sample[8] == "false"
    assert CSV_DATETIME.match(sample[9]) and CSV_DATETIME.match(sample[10])
    assert re.fullmatch(r"-?\d+\.\d{2}", sample[6]) and re.fullmatch(r"0\.\d{4}", sample[7])
    assert len(sample[5]) == 18 and sample[5] in org.owners
    stats = org.stack.stats()
    assert stats["requests"]["bulk_create"] == 1 and stats["requests"]["bulk_results"] == 4
    assert stats["records"]["bulk_results"] == N_ACCOUNTS


def test_bulk2_download_streams_locator_pages(org: Org, tmp_path: Path) -> None:
    results = org.sf.bulk2.Account.download(f"SELECT Id, Name FROM Account {org.loaded()}", str(tmp_path),
                                            max_records=40_000, wait=0)
    assert [r["number_of_records"] for r in results] == [40_000, 40_000, 20_000]
    assert [bool(r["locator"]) for r in results] == [True, True, False]
    ids = []
    for r in results:
        rows = _rows(Path(r["file"]).read_text())
        assert rows[0] == ["Id", "Name"]
        ids.extend(x[0] for x in rows[1:])
    assert ids == org.ids


def test_bulk_job_lifecycle_over_raw_http(org: Org) -> None:
    conn = org.conn
    r = conn.request("POST", "jobs/query", json={"operation": "query", "query":
                     f"SELECT Id FROM Account {org.loaded()} LIMIT 2500"})
    assert r.status_code == 200
    job = r.json()
    assert job["state"] in ("UploadComplete", "InProgress", "JobComplete") and job["id"].startswith("750")
    for _ in range(100):
        info = conn.request("GET", f"jobs/query/{job['id']}").json()
        if info["state"] == "JobComplete":
            break
        time.sleep(0.05)
    for key in ("id", "operation", "object", "createdById", "createdDate", "systemModstamp", "state",
                "concurrencyMode", "contentType", "apiVersion", "jobType", "lineEnding", "columnDelimiter",
                "numberRecordsProcessed", "retries", "totalProcessingTime"):
        assert key in info
    assert (info["object"], info["numberRecordsProcessed"], info["jobType"]) == ("Account", 2500, "V2Query")
    page1 = conn.request("GET", f"jobs/query/{job['id']}/results", params={"maxRecords": 2000})
    assert page1.headers["Sforce-NumberOfRecords"] == "2000" and page1.headers["Sforce-Locator"] != "null"
    assert "api-usage=" in page1.headers["Sforce-Limit-Info"]
    page2 = conn.request("GET", f"jobs/query/{job['id']}/results",
                         params={"maxRecords": 2000, "locator": page1.headers["Sforce-Locator"]})
    assert page2.headers["Sforce-NumberOfRecords"] == "500" and page2.headers["Sforce-Locator"] == "null"
    assert len(_rows(page2.text)) == 501
    bad = conn.request("PATCH", f"jobs/query/{job['id']}", json={"state": "Aborted"})
    assert bad.status_code == 400 and bad.json()[0]["errorCode"] == "INVALIDJOBSTATE"
    assert conn.request("DELETE", f"jobs/query/{job['id']}").status_code == 204
    gone = conn.request("GET", f"jobs/query/{job['id']}")
    assert gone.status_code == 404 and gone.json()[0]["errorCode"] == "NOT_FOUND"


def _jobs_until(org: Org, done: Any, what: str) -> dict[str, Any]:
    """The control API's job counters, polled until ``done(counters)`` (a condition, not a delay)."""
    deadline = time.monotonic() + 30
    while not done(st := org.stack.control("GET", "jobs")):
        assert time.monotonic() < deadline, f"{what}: {st}"
        time.sleep(0.01)
    return dict(st)


def test_bulk_job_states_abort_and_null_style(org: Org) -> None:
    """The job is held InProgress through the control API (no delay to race): aborted while held,
    it stays Aborted after its worker is released and has returned, with no results to fetch."""
    conn, stack = org.conn, org.stack
    stack.configure(bulk_create_wait=0)
    assert stack.control("POST", "jobs", {"hold": True})["hold"] is True
    try:
        job = conn.request("POST", "jobs/query", json={"operation": "query", "query": "SELECT Id FROM Account"}).json()
        assert job["state"] == "UploadComplete"
        _jobs_until(org, lambda st: st["held"] == 1, "the job never reached the hold")
        assert conn.request("GET", f"jobs/query/{job['id']}").json()["state"] == "InProgress"
        early = conn.request("GET", f"jobs/query/{job['id']}/results")
        assert early.status_code == 412 and early.json()[0]["errorCode"] == "JOB_NOT_COMPLETE"
        assert conn.request("DELETE", f"jobs/query/{job['id']}").status_code == 400  # not while running
        aborted = conn.request("PATCH", f"jobs/query/{job['id']}", json={"state": "Aborted"})
        assert aborted.status_code == 200 and aborted.json()["state"] == "Aborted"
        assert stack.control("POST", "jobs", {"hold": False})["hold"] is False
        _jobs_until(org, lambda st: st["running"] == 0, "the released job's worker never returned")
        assert conn.request("GET", f"jobs/query/{job['id']}").json()["state"] == "Aborted"
        results = conn.request("GET", f"jobs/query/{job['id']}/results")
        assert results.status_code == 400 and results.json()[0]["errorCode"] == "INVALIDJOBSTATE"
        assert conn.request("DELETE", f"jobs/query/{job['id']}").status_code == 204
    finally:
        stack.control("POST", "jobs", {"hold": False})
        stack.configure(bulk_create_wait=10)
    null_row = next(r for r in org.table.to_pylist() if r["Industry"] is None)
    soql = f"SELECT Id, Industry FROM Account WHERE Id = '{null_row['Id']}'"
    assert next(iter(org.sf.bulk2.Account.query(soql, wait=0))) == f'"Id","Industry"\n"{null_row["Id"]}",""\n'
    stack.configure(csv_null="empty")
    try:
        assert next(iter(org.sf.bulk2.Account.query(soql, wait=0))) == f'"Id","Industry"\n"{null_row["Id"]}",\n'
    finally:
        stack.configure(csv_null="quoted")


def test_bulk_errors_map_to_client_exceptions(org: Org) -> None:
    with pytest.raises(SalesforceMalformedRequest) as exc:
        list(org.sf.bulk2.Account.query("SELECT Nope FROM Account", wait=0))
    assert exc.value.content[0]["errorCode"] == "INVALID_FIELD"
    with pytest.raises(SalesforceMalformedRequest):
        list(org.sf.bulk2.Account.query("SELECT Id FROM Account OFFSET 5", wait=0))


# -- errors as Salesforce sends them ----------------------------------------------------------------

def test_error_statuses_map_to_simple_salesforce_exceptions(org: Org) -> None:
    sf = org.sf
    with pytest.raises(SalesforceMalformedRequest) as malformed:
        sf.query("SELECT Id FROMM Account")
    assert malformed.value.status == 400 and malformed.value.content[0]["errorCode"] == "MALFORMED_QUERY"
    with pytest.raises(SalesforceMalformedRequest) as invalid:
        sf.query("SELECT Id, Bogus__c FROM Account")
    body = invalid.value.content[0]
    assert body["errorCode"] == "INVALID_FIELD" and "No such column 'Bogus__c' on entity 'Account'" in body["message"]
    with pytest.raises(SalesforceMalformedRequest) as invalid_type:
        sf.query("SELECT Id FROM Acount")
    assert invalid_type.value.content[0]["errorCode"] == "INVALID_TYPE"
    with pytest.raises(SalesforceResourceNotFound) as missing:
        sf.Account.get("001000000000000AAA")
    assert missing.value.status == 404 and missing.value.content[0]["errorCode"] == "NOT_FOUND"
    with pytest.raises(SalesforceResourceNotFound):
        sf.Nope.describe()
    bogus = Salesforce(instance_url=org.stack.instance_url, session_id="00Dbogus!AQbogus", session=org.stack.http())
    with pytest.raises(SalesforceExpiredSession) as expired:
        bogus.query("SELECT Id FROM Account LIMIT 1")
    assert expired.value.status == 401 and expired.value.content[0]["errorCode"] == "INVALID_SESSION_ID"
    org.stack.set_limits(budget=50, used=50)
    try:
        with pytest.raises(SalesforceRefusedRequest) as refused:
            sf.query("SELECT Id FROM Account LIMIT 1")
        assert refused.value.status == 403 and refused.value.content[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    finally:
        org.stack.set_limits(budget=1_000_000, used=0)


def test_injected_failures_and_retries(org: Org, sf_stack: SalesforceStack) -> None:
    sf_stack.reset_stats()
    sf_stack.fail(status=503, count=2, kinds=["login"])
    conn = sf_stack.connect()  # retried with backoff
    assert conn.org_id == ORG_ID
    stats = sf_stack.stats()
    assert stats["requests"]["login"] == 3 and stats["errors"]["SERVER_UNAVAILABLE"] == 2
    sf_stack.fail(status=429, count=1, kinds=["query"], retry_after=0)
    r = conn.request("GET", "query/", params={"q": "SELECT Id FROM Organization"})
    assert r.status_code == 200 and r.json()["records"][0]["Id"] == ORG_ID
    sf_stack.fail(status=503, count=50, kinds=["login"])
    try:
        with pytest.raises(SalesforceUnreachable, match="HTTP 503"):
            connect(sf_stack.settings(retry_deadline=1.0))
    finally:
        sf_stack.clear_failures()


# -- login flows ------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["oauth_password", "soap", "client_credentials", "jwt", "session_id"])
def test_login_flows(sf_stack: SalesforceStack, method: str) -> None:
    settings = sf_stack.settings(method)
    assert settings.auth_method == method
    with connect(settings) as conn:
        assert (conn.org_id, conn.user_id, conn.instance_url) == (ORG_ID, USER_ID, sf_stack.instance_url)
        assert conn.auth_method == method and conn.api_version == "59.0"
        assert conn.sf.query("SELECT Id FROM Organization")["records"][0]["Id"] == ORG_ID
        text = repr(conn) + str(conn) + repr(settings)
        for secret in sf_stack.credentials.values():
            if secret != sf_stack.credentials["salesforce_username"]:
                assert secret not in text
        assert conn.sf.session_id not in text


def _assert_clean(err: Exception, stack: SalesforceStack, *extra: str) -> str:
    msg = str(err)
    assert "\n" not in msg and msg
    secrets = [v for k, v in stack.credentials.items() if k != "salesforce_username"] + list(extra)
    for secret in secrets:
        assert secret not in msg, f"secret leaked in {msg!r}"
    return msg


@pytest.mark.parametrize("method", ["oauth_password", "soap"])
def test_wrong_password_is_a_clean_auth_error(sf_stack: SalesforceStack, method: str) -> None:
    with pytest.raises(SalesforceAuthError) as exc:
        connect(sf_stack.settings(method, password="Wr0ng-Passw0rd!"))
    msg = _assert_clean(exc.value, sf_stack, "Wr0ng-Passw0rd!")
    assert "SF_PASSWORD" in msg and sf_stack.credentials["salesforce_username"] in msg
    assert not isinstance(exc.value, SalesforceConfigError)


def test_other_rejected_credentials(sf_stack: SalesforceStack, tmp_path: Path) -> None:
    with pytest.raises(SalesforceAuthError) as exc:
        connect(sf_stack.settings("client_credentials", consumer_secret="not-the-secret"))
    assert "SF_CONSUMER_SECRET" in _assert_clean(exc.value, sf_stack, "not-the-secret")
    with pytest.raises(SalesforceAuthError) as exc:
        connect(sf_stack.settings("oauth_password", consumer_key="3MVGunknown"))
    assert "invalid_client_id" in _assert_clean(exc.value, sf_stack)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "other.pem"
    key_file.write_bytes(other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    with pytest.raises(SalesforceAuthError) as exc:
        connect(sf_stack.settings("jwt", jwt_key_file=str(key_file)))
    assert "SF_JWT_KEY_FILE" in _assert_clean(exc.value, sf_stack)
    with pytest.raises(SalesforceAuthError) as exc:
        connect(sf_stack.settings("session_id", session_id="00D8d00000RECON!AQforged.sig"))
    assert "SF_SESSION_ID" in _assert_clean(exc.value, sf_stack, "AQforged")


def test_tls_and_reachability_errors(sf_stack: SalesforceStack) -> None:
    from engine.local.state import free_port

    with pytest.raises(SalesforceConfigError, match="SF_CA_BUNDLE"):
        connect(sf_stack.settings(ca_bundle=None))
    with pytest.raises(SalesforceUnreachable, match="connection refused"):
        connect(sf_stack.settings(login_url=f"https://127.0.0.1:{free_port()}", retry_deadline=1.0))


def test_a_refused_request_is_one_line_exit_2_naming_the_object(sf_stack: SalesforceStack, tmp_path: Path) -> None:
    """SalesforceRefused through the CLI: the API's refusal (an unknown sObject) fails at once, exit 2."""
    import os
    import subprocess
    import sys

    import polars as pl

    other = tmp_path / "accounts.parquet"
    pl.DataFrame({"Id": ["0015g0000000001AAA"], "Name": ["a"]}).write_parquet(other)
    c = sf_stack.credentials
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SF_", "RECON_"))}
    env.update(SF_LOGIN_URL=sf_stack.login_url, SF_CA_BUNDLE=sf_stack.ca_bundle, SF_USERNAME=c["salesforce_username"],
               SF_PASSWORD=c["salesforce_password"], SF_SECURITY_TOKEN=c["salesforce_security_token"])
    t = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "engine.cli.main", "diff", "salesforce:Acount", f"parquet:{other}",
                          "-k", "Id", "-c", "Name"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("recon: error: Salesforce refused describe of Acount:"), lines[0]
    assert time.monotonic() - t < 30  # not retried
    assert c["salesforce_password"] not in res.stderr


def test_settings_from_env(sf_stack: SalesforceStack) -> None:
    c = sf_stack.credentials
    env = {"SF_LOGIN_URL": sf_stack.login_url + "/", "SF_CA_BUNDLE": sf_stack.ca_bundle,
           "SF_USERNAME": c["salesforce_username"], "SF_PASSWORD": c["salesforce_password"],
           "SF_SECURITY_TOKEN": c["salesforce_security_token"], "SF_API_VERSION": "v58.0", "SF_SESSION_ID": ""}
    s = SalesforceSettings.from_env(env)
    assert (s.login_url, s.api_version, s.auth_method) == (sf_stack.login_url, "58.0", "soap")
    assert c["salesforce_password"] not in repr(s)
    with connect(s) as conn:
        assert conn.org_id == ORG_ID
        assert conn.sf.query("SELECT Id FROM User")["totalSize"] >= 1
    with pytest.raises(SalesforceAuthError, match="set only one"):
        SalesforceSettings.from_env({**env, "SF_SESSION_ID": "x", "SF_INSTANCE_URL": sf_stack.instance_url}).validate()
    with pytest.raises(SalesforceAuthError, match="no Salesforce credentials"):
        SalesforceSettings.from_env({}).validate()
    with pytest.raises(SalesforceAuthError, match="SF_INSTANCE_URL"):
        SalesforceSettings.from_env({"SF_SESSION_ID": "abc"}).validate()
    with pytest.raises(SalesforceConfigError, match="https"):
        SalesforceSettings.from_env({**env, "SF_LOGIN_URL": "http://example.com"}).validate()


def test_expired_sessions_raise_401(org: Org, sf_stack: SalesforceStack) -> None:
    conn = sf_stack.connect("session_id")
    assert conn.sf.query("SELECT Id FROM Organization")["totalSize"] == 1
    sf_stack.expire_sessions()
    try:
        with pytest.raises(SalesforceExpiredSession):
            conn.sf.query("SELECT Id FROM Organization")
        assert sf_stack.connect().sf.query("SELECT Id FROM Organization")["totalSize"] == 1
    finally:  # the module's shared connection was revoked too
        org.conn = sf_stack.connect()
        org.sf = org.conn.sf


# -- DML, history, deletes --------------------------------------------------------------------------

def _history(sf: Salesforce, account_id: str) -> list[dict[str, Any]]:
    res = sf.query(f"SELECT Field, DataType, OldValue, NewValue, CreatedDate, CreatedById FROM AccountHistory "
                   f"WHERE AccountId = '{account_id}' ORDER BY CreatedDate, Id")
    return [{k: v for k, v in r.items() if k != "attributes"} for r in res["records"]]


def test_create_update_bump_modstamp_and_write_history(org: Org) -> None:
    sf = org.sf
    org.stack.reset_stats()
    created = sf.Account.create({"Name": "Hist Co", "AnnualRevenue": 1000, "Customer_Lifetime_Value__c": 250.5,
                                 "Commission_Rate__c": 0.05})
    assert created["success"] is True and created["id"].startswith("001") and len(created["id"]) == 18
    aid = created["id"]
    before = sf.Account.get(aid)
    assert before["OwnerId"] == USER_ID and before["Commission_Rate__c"] == pytest.approx(0.05)
    assert before["SystemModstamp"] == before["CreatedDate"] == before["LastModifiedDate"]
    assert sf.Account.update(aid, {"Customer_Lifetime_Value__c": 300, "AnnualRevenue": 2000.25,
                                   "OwnerId": org.owners[0], "Name": "Hist Co 2", "Industry": None}) == 204
    after = sf.Account.get(aid)
    assert after["SystemModstamp"] > before["SystemModstamp"] and after["LastModifiedDate"] > before["LastModifiedDate"]
    assert after["CreatedDate"] == before["CreatedDate"] and after["Customer_Lifetime_Value__c"] == 300
    rows = _history(sf, aid)
    by_field: dict[tuple[str, str], dict[str, Any]] = {(r["Field"], r["DataType"]): r for r in rows}
    assert ("created", "Text") in by_field
    clv = by_field[("Customer_Lifetime_Value__c", "Currency")]
    assert (clv["OldValue"], clv["NewValue"]) == (250.5, 300)
    assert clv["CreatedDate"] == after["SystemModstamp"] and clv["CreatedById"] == USER_ID
    assert (by_field[("AnnualRevenue", "Currency")]["OldValue"], by_field[("AnnualRevenue", "Currency")]["NewValue"]) \
        == (1000, 2000.25)
    assert by_field[("TextName", "Text")]["NewValue"] == "Hist Co 2"
    assert (by_field[("Owner", "EntityId")]["OldValue"], by_field[("Owner", "EntityId")]["NewValue"]) == \
        (USER_ID, org.owners[0])
    assert by_field[("Owner", "Text")]["OldValue"] == "Recon Integration"
    assert ("Industry", "DynamicEnum") not in by_field  # null → null is no change
    # an update that changes nothing tracked still bumps SystemModstamp but writes no history
    sf.Account.update(aid, {"NumberOfEmployees": 12})
    assert sf.Account.get(aid)["SystemModstamp"] > after["SystemModstamp"] and len(_history(sf, aid)) == len(rows)
    stats = org.stack.stats()["requests"]
    assert stats["sobject_create"] == 1 and stats["sobject_update"] == 2 and stats["sobject_get"] == 3


def test_dml_errors(org: Org) -> None:
    sf = org.sf
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Account.create({"AnnualRevenue": 5})
    assert exc.value.content[0]["errorCode"] == "REQUIRED_FIELD_MISSING"
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Account.update(org.ids[0], {"Name": ""})
    assert exc.value.content[0]["errorCode"] == "REQUIRED_FIELD_MISSING"
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Account.create({"Name": "x", "SystemModstamp": "2026-01-01T00:00:00Z"})
    assert exc.value.content[0]["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Account.update(org.ids[0], {"OwnerId": "005000000000000AAA"})
    assert exc.value.content[0]["errorCode"] == "INVALID_CROSS_REFERENCE_KEY"
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Account.update(org.ids[0], {"Nope__c": 1})
    assert exc.value.content[0]["errorCode"] == "INVALID_FIELD"


def test_delete_is_visible_through_query_all_only(org: Org) -> None:
    sf = org.sf
    aid = sf.Account.create({"Name": "Doomed"})["id"]
    modstamp = sf.Account.get(aid)["SystemModstamp"]
    assert sf.Account.delete(aid) == 204
    assert sf.query(f"SELECT Id FROM Account WHERE Id = '{aid}'")["totalSize"] == 0
    rows = sf.query_all(f"SELECT Id, IsDeleted, SystemModstamp FROM Account WHERE Id = '{aid}'",
                        include_deleted=True)["records"]
    assert len(rows) == 1 and rows[0]["IsDeleted"] is True and rows[0]["SystemModstamp"] > modstamp
    with pytest.raises(SalesforceResourceNotFound):
        sf.Account.get(aid)
    with pytest.raises(SalesforceResourceNotFound) as exc:
        sf.Account.update(aid, {"Name": "zombie"})
    assert exc.value.content[0]["errorCode"] == "ENTITY_IS_DELETED"
    pages = list(sf.bulk2.Account.query_all(f"SELECT Id, IsDeleted FROM Account WHERE Id = '{aid}'", wait=0))
    assert _rows(pages[0])[1:] == [[aid, "true"]]
    assert _rows(next(iter(sf.bulk2.Account.query(f"SELECT Id FROM Account WHERE Id = '{aid}'", wait=0))))[1:] == []
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    org.stack.control("POST", "clock", {"advance_seconds": 60})  # getDeleted lists whole minutes only
    try:
        deleted = sf.Account.deleted(start, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2))
    finally:
        org.stack.control("POST", "clock", {"offset_seconds": 0})
    assert aid in [d["id"] for d in deleted["deletedRecords"]]


def test_bulk_extraction_in_id_range_chunks_reads_every_row_once(org: Org, sf_stack: SalesforceStack,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Id-range chunking (PK chunking's shape) at a small scale: several Bulk jobs, each an Id range,
    and together exactly the rows of one query, none lost or read twice at the range edges."""
    from engine.config import load
    from engine.connectors.base import SalesforceRef
    from engine.connectors.salesforce import source as sf_source

    c = sf_stack.credentials
    for k, v in {"SF_LOGIN_URL": sf_stack.login_url, "SF_CA_BUNDLE": sf_stack.ca_bundle,
                 "SF_USERNAME": c["salesforce_username"], "SF_PASSWORD": c["salesforce_password"],
                 "SF_SECURITY_TOKEN": c["salesforce_security_token"]}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("SF_SESSION_ID", raising=False)
    monkeypatch.setenv("RECON_SF_CHUNK_ROWS", "30000")
    where = f"Id <= '{org.last_id}'"
    e = sf_source.extract(SalesforceRef("Account"), load(None), ["Id", "AnnualRevenue"], where)
    want = [r["Id"] for r in org.sf.query_all(f"SELECT Id FROM Account WHERE {where}")["records"]]
    got = e.frame["Id"].to_list()
    assert len(got) == len(want) == N_ACCOUNTS and len(set(got)) == len(got) and set(got) == set(want)
    chunks = -(-N_ACCOUNTS // 30_000)
    assert len(e.meta["bulk_job_ids"]) == len(e.meta["soql"]) == chunks
    bounds = [re.findall(r"Id (>=|<) '(\w+)'", q) for q in e.meta["soql"]]
    assert bounds[0] == [("<", bounds[1][0][1])] and bounds[-1] == [(">=", bounds[-2][1][1])]
    for prev, cur in zip(bounds, bounds[1:], strict=False):  # each range starts where the last ended
        assert dict((op, b) for op, b in prev)["<"] == dict((op, b) for op, b in cur)[">="]
