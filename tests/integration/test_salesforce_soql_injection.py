# ruff: noqa: S608 - the f-strings here are SOQL sent to the local org
"""Issue 16.4 through the local Salesforce API and the real simple-salesforce client: an id or a
condition taken from data cannot widen recon's SOQL. Each hostile input is either refused before any
query is sent (exit 2), or the result holds only the records asked for."""

from __future__ import annotations

from typing import Any

import pytest

from engine.config import load
from engine.connectors.base import SalesforceRef
from engine.connectors.salesforce import source as sf_source
from engine.connectors.salesforce.records import reextract
from engine.core.errors import Exit, UsageError
from engine.local.sfapi.sample import synthetic_accounts
from tests.salesforce_fixtures import SalesforceStack

N = 40
#: the review's payload, with well-formed ids around it: an org refuses ``'x'`` as an Id literal
#: (INVALID_QUERY_FILTER_OPERATOR), but this one it would run, as every Account
HOSTILE_ID = "001000000000000') OR Id != null OR Id IN ('001000000000000"
ACCOUNT = SalesforceRef("Account")


@pytest.fixture(scope="module")
def ids(sf_stack: SalesforceStack) -> list[str]:
    """N Accounts of this module's own pod (other modules' records may share the store)."""
    table = synthetic_accounts(N, seed=16, pod="inj164")
    assert sf_stack.load("Account", table) == N
    return table.column("Id").to_pylist()


@pytest.fixture
def sf_env(sf_stack: SalesforceStack, monkeypatch: pytest.MonkeyPatch) -> None:
    c = sf_stack.credentials
    for k, v in {"SF_LOGIN_URL": sf_stack.login_url, "SF_CA_BUNDLE": sf_stack.ca_bundle,
                 "SF_USERNAME": c["salesforce_username"], "SF_PASSWORD": c["salesforce_password"],
                 "SF_SECURITY_TOKEN": c["salesforce_security_token"]}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("SF_SESSION_ID", raising=False)
    monkeypatch.delenv("SF_JWT_KEY_FILE", raising=False)


def _queries(stack: SalesforceStack) -> int:
    """Queries of any kind the org has answered so far (REST, Bulk jobs created)."""
    req: dict[str, Any] = stack.stats()["requests"]
    return sum(req.get(k, 0) for k in ("query", "queryAll", "bulk_create"))


def test_asked_ids_read_exactly_those_records(ids: list[str], sf_env: None) -> None:
    e = sf_source.extract(ACCOUNT, load(None), ["Id", "Name"], None, ids=ids[:3])
    assert sorted(e.frame["Id"].to_list()) == ids[:3]


def test_a_hostile_id_does_not_widen_the_extraction(ids: list[str], sf_env: None, sf_stack: SalesforceStack) -> None:
    """explain's path: the differing keys go into ``Id IN (…)``."""
    before = _queries(sf_stack)
    try:
        e = sf_source.extract(ACCOUNT, load(None), ["Id", "Name"], None, ids=[ids[0], ids[1], HOSTILE_ID])
    except UsageError as exc:
        assert exc.exit_code == Exit.USAGE and repr(HOSTILE_ID) in str(exc)
        assert _queries(sf_stack) == before, "a query was sent before the id was refused"
    else:
        assert set(e.frame["Id"].to_list()) <= {ids[0], ids[1]}, f"widened to {e.frame.height} records"


def test_repair_reextraction_refuses_a_hostile_id(ids: list[str], sf_env: None, sf_stack: SalesforceStack) -> None:
    before = _queries(sf_stack)
    try:
        ex = reextract("Account", "Name", [ids[2], HOSTILE_ID, ids[3]], load(None))
    except UsageError as exc:
        assert repr(HOSTILE_ID) in str(exc)
        assert _queries(sf_stack) == before, "a query was sent before the id was refused"
    else:
        assert set(ex.values) <= {ids[2], ids[3]}, f"widened to {len(ex.values)} records"


def test_a_hostile_source_where_does_not_widen_the_extraction(ids: list[str], sf_env: None,
                                                              sf_stack: SalesforceStack) -> None:
    """``(where)`` closed early: ``(Name = 'nobody') OR (Id != null)`` would be every Account."""
    before = _queries(sf_stack)
    where = "Name = 'nobody') OR (Id != null"
    try:
        e = sf_source.extract(ACCOUNT, load(None), ["Id", "Name"], where)
    except UsageError as exc:
        assert exc.field == "where" and repr(where) in str(exc)
        assert _queries(sf_stack) == before, "a query was sent before the condition was refused"
    else:
        assert e.frame.height == 0, f"widened to {e.frame.height} records"


@pytest.mark.parametrize("where", ["Name = 'a' LIMIT 1", "Id IN (SELECT Id FROM User)", "Nope__c = 1"])
def test_other_conditions_that_are_no_condition_are_refused(where: str, ids: list[str], sf_env: None,
                                                            sf_stack: SalesforceStack) -> None:
    before = _queries(sf_stack)
    with pytest.raises(UsageError) as exc:
        sf_source.extract(ACCOUNT, load(None), ["Id"], where)
    assert repr(where) in str(exc.value)
    assert _queries(sf_stack) == before


def test_a_legal_condition_is_sent_as_parsed(ids: list[str], sf_env: None) -> None:
    where = f"id in ('{ids[4]}', '{ids[5][:15]}') and (name != null or Industry = 'Banking')"
    e = sf_source.extract(ACCOUNT, load(None), ["Id"], where)
    assert sorted(e.frame["Id"].to_list()) == ids[4:6]
    assert e.meta["soql"] == [f"SELECT Id FROM Account WHERE (Id IN ('{ids[4]}', '{ids[5][:15]}') AND "
                              "(Name != NULL OR Industry = 'Banking'))"]
