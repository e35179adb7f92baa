# ruff: noqa: S608 - the f-strings are SOQL sent to the local org
"""The local REST API against the REST API Developer Guide's published examples.

Each test names the example it compares with (``examples/*.json``: guide, page, section). recon
reads these answers through the unmodified simple-salesforce: ``totalSize``/``done``/
``nextRecordsUrl`` drive ``query_all``, the error array's ``errorCode`` decides retry or refusal, and
the describe's ``fields`` give the column types.
"""

from __future__ import annotations

import re

import pytest

from tests.conformance.conftest import N_ROWS, Org
from tests.conformance.shapes import example, media_type, problems, unequal

LIMIT_INFO = re.compile(r"^api-usage=\d+/\d+$")


def _json_utf8(content_type: str) -> bool:
    return media_type(content_type) == ("application/json", "utf-8")


def test_query_answers_like_the_guide_example(org: Org) -> None:
    doc = example("rest_query")
    r = org.query(f"SELECT Name FROM Account WHERE {org.where} AND Id <= '{org.ids[13]}'")
    assert r.status_code == doc["response"]["status"]
    body = r.json()
    assert problems(doc["response"]["body"], body, exact_keys=doc["compare"]["exact_keys"]) == []
    assert unequal(doc["response"]["body"], body, doc["compare"]["equal"]) == []
    assert body["totalSize"] == len(body["records"]) == 14
    assert {rec["attributes"]["type"] for rec in body["records"]} == {"Account"}


def test_every_rest_answer_carries_the_limit_info_header(org: Org) -> None:
    doc = example("rest_limit_info")
    r = org.query(f"SELECT Id FROM Account WHERE {org.where}")
    assert LIMIT_INFO.match(doc["response"]["headers"]["Sforce-Limit-Info"])  # the pattern fits the example
    assert LIMIT_INFO.match(r.headers["Sforce-Limit-Info"])
    assert _json_utf8(doc["response"]["headers"]["Content-Type"]) and _json_utf8(r.headers["Content-Type"])
    versions = org.http.get(f"{org.stack.instance_url}/services/data/", timeout=60)
    assert versions.status_code == 200 and "Sforce-Limit-Info" not in versions.headers  # "except the Versions URI"


def test_query_pages_through_next_records_url(org: Org) -> None:
    """A first batch with ``done: false`` and ``nextRecordsUrl``, then the rest fetched from that URL
    with no parameters; the last batch has ``done: true`` and no ``nextRecordsUrl``."""
    doc = example("rest_query_more")
    exact = doc["compare"]["exact_keys"]
    first = org.query(f"SELECT Id, Name FROM Account WHERE {org.where}", headers={"Sforce-Query-Options": "batchSize=200"})
    assert first.status_code == doc["response"]["status"]
    page = first.json()
    assert problems(doc["response"]["body"], page, exact_keys=exact) == []
    assert unequal(doc["response"]["body"], page, doc["compare"]["equal"]) == []
    assert page["totalSize"] == N_ROWS and 0 < len(page["records"]) <= 200
    seen = [rec["Id"] for rec in page["records"]]
    last = doc["last_page"]["response"]
    while not page["done"]:
        nxt = org.http.get(org.stack.instance_url + page["nextRecordsUrl"], timeout=60)
        assert nxt.status_code == last["status"] and _json_utf8(nxt.headers["Content-Type"])
        page = nxt.json()
        assert page["totalSize"] == N_ROWS
        seen += [rec["Id"] for rec in page["records"]]
    assert problems(last["body"], page, exact_keys=exact) == []  # no nextRecordsUrl on the last batch
    assert sorted(seen) == org.ids  # every row once


ERROR_CASES = ["NOT_FOUND", "INVALID_SESSION_ID", "MALFORMED_QUERY", "INVALID_FIELD", "INVALID_TYPE"]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_error_bodies_match_the_guide(org: Org, case: str) -> None:
    """Status, a JSON array of ``{message, errorCode}`` (``fields`` only when the error names fields),
    served as ``application/json;charset=UTF-8``."""
    doc = example("rest_errors")["cases"][case]
    if case == "NOT_FOUND":
        r = org.http.post(org.url("sobjects/Acount/"), json={"Name": "x"}, timeout=60)
    elif case == "INVALID_SESSION_ID":
        r = org.http.get(org.url("query/"), params={"q": "SELECT Id FROM Account"}, timeout=60,
                         headers={"Authorization": "Bearer 00D000000000000!expired"})
    else:
        soql = {"MALFORMED_QUERY": "SELEC Id FROM Account", "INVALID_FIELD": "SELECT Bogus__c FROM Account",
                "INVALID_TYPE": "select id,name,type from accountx"}[case]
        r = org.query(soql)
    assert r.status_code == doc["response"]["status"]
    assert _json_utf8(r.headers["Content-Type"])
    body = r.json()
    assert isinstance(body, list) and len(body) == 1
    assert problems(doc["response"]["body"], body, exact_keys=True) == []
    assert unequal(doc["response"]["body"][0], body[0], doc["equal"]) == []


def _describe(org: Org) -> dict:
    r = org.get("sobjects/Account/describe/")
    assert r.status_code == 200 and _json_utf8(r.headers["Content-Type"])
    return dict(r.json())


def test_describe_has_the_documented_shape(org: Org) -> None:
    """The parts of the describe recon reads (``fields[].name/type/length``) and the rest of the
    example's visible structure; the deviations below are tested separately."""
    doc = example("rest_describe")
    expected = doc["response"]["body"]
    got = _describe(org)
    id_doc = {k: v for k, v in expected["fields"][0].items() if k != "defaultValue"}
    shallow = {k: v for k, v in expected.items() if k not in ("fields", "urls", "childRelationships")}
    assert problems(shallow, got) == []
    assert unequal(expected, got, doc["compare"]["equal"]) == []
    assert problems(id_doc, got["fields"][0]) == [] and all(problems(id_doc, f) == [] for f in got["fields"])
    id_field = next(f for f in got["fields"] if f["name"] == "Id")
    assert unequal(expected["fields"][0], id_field, doc["compare"]["id_field_equal"]) == []
    assert problems({"sobject": expected["urls"]["sobject"]}, got["urls"]) == []
    assert isinstance(got["childRelationships"], list)


@pytest.mark.xfail(strict=True, reason="deviation: the guide's describe example (unchanged since v20.0) gives "
                   "defaultValue as an object {\"value\": null}; the local API sends null (recon never reads it)")
def test_describe_default_value_is_an_object(org: Org) -> None:
    id_field = next(f for f in _describe(org)["fields"] if f["name"] == "Id")
    assert problems(example("rest_describe")["response"]["body"]["fields"][0]["defaultValue"],
                    id_field["defaultValue"]) == []


@pytest.mark.xfail(strict=True, reason="deviation: the local describe's urls lack the example's uiEditTemplate and "
                   "uiDetailTemplate (absolute UI links; recon never reads them)")
def test_describe_urls_include_the_ui_templates(org: Org) -> None:
    assert problems(example("rest_describe")["response"]["body"]["urls"], _describe(org)["urls"]) == []


@pytest.mark.xfail(strict=True, reason="deviation: the local Account has no child relationships; the example "
                   "lists one (field ParentId); recon queries no relationships")
def test_describe_lists_child_relationships(org: Org) -> None:
    got = _describe(org)["childRelationships"]
    assert got and problems(example("rest_describe")["response"]["body"]["childRelationships"], got) == []
