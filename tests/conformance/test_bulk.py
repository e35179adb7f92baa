# ruff: noqa: S608 - the f-strings are SOQL sent to the local org
"""The local Bulk API 2.0 query jobs against the Bulk API 2.0 Developer Guide's published examples.

recon creates a job, polls it until ``JobComplete`` and reads its results page by page through
simple-salesforce's bulk2 client, which follows ``Sforce-Locator`` until the string ``null`` and
does ``int()`` on ``Sforce-NumberOfRecords``; these tests hold the local API to the guide on each step.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conformance.conftest import N_ROWS, VERSION, Org
from tests.conformance.shapes import EXAMPLES, example, media_type, problems, unequal

LOCATOR = re.compile(r"^[A-Za-z0-9+/=_-]+$")


def _info(org: Org, job_id: str) -> dict[str, Any]:
    r = org.get(f"jobs/query/{job_id}")
    assert r.status_code == 200
    return dict(r.json())


def _complete(org: Org, soql: str, **options: str) -> dict[str, Any]:
    """A finished job: the local API answers a create once small jobs are done (``bulk_create_wait``),
    so one poll sees ``JobComplete``; the state is asserted, not waited for."""
    created = org.create_job(soql, **options)
    assert created.status_code == 200, created.text
    info = _info(org, created.json()["id"])
    assert info["state"] == "JobComplete"
    return info


def _results(org: Org, job_id: str, version: str = VERSION, **params: Any) -> requests.Response:
    return org.http.get(org.url(f"jobs/query/{job_id}/results", version), params=params, timeout=60)


def test_create_job_answers_like_the_guide_example(org: Org) -> None:
    doc = example("bulk_create_job")
    r = org.create_job(f"SELECT Id, Name FROM Account WHERE {org.where}")
    assert r.status_code == doc["response"]["status"]
    assert media_type(r.headers["Content-Type"]) == ("application/json", "utf-8")
    assert problems(doc["response"]["body"], r.json(), exact_keys=doc["compare"]["exact_keys"]) == []
    assert unequal(doc["response"]["body"], r.json(), doc["compare"]["equal"]) == []
    assert r.json()["id"].startswith("750")


def test_job_info_matches_the_guide_example(org: Org) -> None:
    doc = example("bulk_job_info")
    info = _complete(org, f"SELECT Id, Name FROM Account WHERE {org.where}")
    assert problems(doc["response"]["body"], info, exact_keys=doc["compare"]["exact_keys"]) == []
    assert unequal(doc["response"]["body"], info, doc["compare"]["equal"]) == []
    assert info["numberRecordsProcessed"] == N_ROWS


def _pages(org: Org, job_id: str, max_records: int) -> Iterator[requests.Response]:
    """Result sets as a client reads them: follow ``Sforce-Locator`` until ``null`` (bounded, so a
    locator that never ends fails the test instead of hanging it)."""
    locator = None
    for _ in range(N_ROWS // max_records + 2):
        params: dict[str, Any] = {"maxRecords": max_records}
        if locator is not None:
            params["locator"] = locator
        page = _results(org, job_id, **params)
        yield page
        locator = page.headers["Sforce-Locator"]
        if locator == "null":
            return
    pytest.fail(f"Sforce-Locator never became 'null' after {N_ROWS // max_records + 2} sets")


def test_results_pages_follow_the_locator_to_null(org: Org) -> None:
    """CSV pages of at most maxRecords rows, each with ``Sforce-NumberOfRecords``; ``Sforce-Locator``
    names the next set and is the string ``null`` on the last; a locator fetches its set again."""
    doc = example("bulk_results")
    header = (EXAMPLES / doc["response"]["body_file"]).read_text().splitlines()[0]
    info = _complete(org, f"SELECT Id, Name FROM Account WHERE {org.where}")
    ids: list[str] = []
    locators: list[str] = []
    for page in _pages(org, info["id"], 100):
        assert page.status_code == doc["response"]["status"]
        assert media_type(page.headers["Content-Type"])[0] == "text/csv"
        assert all(name in page.headers for name in doc["response"]["headers"])
        lines = page.text.split("\n")
        assert lines[0] == header and lines[-1] == ""  # the example's quoted header; LF after every row
        rows = list(csv.reader(io.StringIO(page.text)))[1:]
        assert int(page.headers["Sforce-NumberOfRecords"]) == len(rows) <= 100
        ids += [row[0] for row in rows]
        locators.append(page.headers["Sforce-Locator"])
    assert locators[-1] == doc["last_locator"]
    assert len(locators) == 3 and all(LOCATOR.match(loc) and loc != "null" for loc in locators[:-1])
    assert sorted(ids) == org.ids  # no row lost or read twice
    again = _results(org, info["id"], maxRecords=100, locator=locators[0])
    second = _results(org, info["id"], maxRecords=100, locator=locators[0])
    assert again.text == second.text and again.headers["Sforce-Locator"] == locators[1]


def test_results_need_the_api_version_that_created_the_job(org: Org) -> None:
    doc = example("bulk_results")
    info = _complete(org, f"SELECT Id FROM Account WHERE {org.where}")
    other = f"{int(float(VERSION)) - 1}.0"
    assert _results(org, info["id"], other).status_code == doc["wrong_version_status"]
    assert _results(org, info["id"]).status_code == doc["response"]["status"]


def test_caret_delimiter_and_crlf_line_endings(org: Org) -> None:
    doc = example("bulk_create_job_options")
    options = {k: v for k, v in doc["request"]["body"].items() if k not in ("operation", "query")}
    info = _complete(org, f"SELECT Id, Name FROM Account WHERE {org.where}", **options)
    assert (info["columnDelimiter"], info["lineEnding"]) == ("CARET", "CRLF")
    text = _results(org, info["id"]).text
    sep, eol = doc["delimiters"]["CARET"], doc["line_endings"]["CRLF"]
    lines = text.split(eol)
    assert lines[0] == f'"Id"{sep}"Name"' and lines[-1] == ""
    assert len(lines) == N_ROWS + 2 and not any("\n" in line for line in lines)  # no bare LF anywhere
    assert all(line.count(sep) >= 1 for line in lines[:-1])


@pytest.fixture
def running_job(org: Org) -> Iterator[str]:
    """A job held InProgress by the local API's ``bulk_job_delay`` (control API), settings restored after."""
    before = org.stack.configure()
    org.stack.configure(bulk_create_wait=0, bulk_job_delay=5)
    try:
        r = org.create_job(f"SELECT Id FROM Account WHERE {org.where}")
        assert r.status_code == 200
        yield str(r.json()["id"])
    finally:
        org.stack.configure(bulk_create_wait=before["bulk_create_wait"], bulk_job_delay=before["bulk_job_delay"])


def test_abort_and_delete_answer_like_the_guide(org: Org, running_job: str) -> None:
    doc = example("bulk_abort_job")
    delete = doc["delete"]
    refused = org.http.delete(org.url(f"jobs/query/{running_job}"), timeout=60)  # not terminated yet
    assert refused.status_code == delete["unsuccessful"]["status"]
    assert problems(delete["unsuccessful"]["body"], refused.json(), exact_keys=True) == []
    assert unequal(delete["unsuccessful"]["body"][0], refused.json()[0], ["errorCode"]) == []
    r = org.http.patch(org.url(f"jobs/query/{running_job}"), json=doc["request"]["body"], timeout=60)
    assert r.status_code == doc["response"]["status"]
    assert problems(doc["response"]["body"], r.json(), exact_keys=doc["compare"]["exact_keys"]) == []
    assert unequal(doc["response"]["body"], r.json(), doc["compare"]["equal"]) == []
    gone = org.http.delete(org.url(f"jobs/query/{running_job}"), timeout=60)
    assert gone.status_code == delete["status"] and gone.content == b""
    missing = org.get(f"jobs/query/{running_job}")
    assert missing.status_code == 404 and missing.json()[0]["errorCode"] == "NOT_FOUND"


def test_all_jobs_list_matches_the_guide(org: Org) -> None:
    doc = example("bulk_all_jobs")
    job = _complete(org, f"SELECT Id FROM Account WHERE {org.where}")
    r = org.get("jobs/query")
    assert r.status_code == doc["response"]["status"]
    body = r.json()
    assert set(body) == set(doc["response"]["body"])  # the example's records are cut short: top level exact
    assert problems(doc["response"]["body"], body, exact_keys=doc["compare"]["exact_keys"]) == []
    assert unequal(doc["response"]["body"], body, doc["compare"]["equal"]) == []
    assert job["id"] in {j["id"] for j in body["records"]}
