"""The HTTP surface of the local org: REST, Bulk API 2.0 queries, SOAP/OAuth login, control endpoints.

Wire shapes follow Salesforce (see /work/shared/reference/salesforce-api.md; tests/conformance holds them
to the developer guides' published examples): JSON error arrays `[{"message", "errorCode"}]` (plus
`"fields"` when the error names fields), OAuth error objects, SOAP faults, `Sforce-Limit-Info` on every
REST/Bulk response, `Sforce-Locator`/`Sforce-NumberOfRecords` on Bulk result pages.

Control endpoints (not Salesforce; header `X-Recon-Control: <token>`, the token being the content of
`<state>/salesforce/control_token`, mode 0600):

* `GET  /__recon/stats` — requests per endpoint kind, records served per kind and per sObject, error
  codes sent, API usage; `POST /__recon/stats/reset` zeroes the counters (not the API usage);
* `GET|POST /__recon/limits` — `{"budget": N, "used": M}` sets the daily API budget / usage;
* `POST /__recon/fail` — `{"status": 503, "count": 2, "kinds": ["query"], "error_code": …,
  "retry_after": 1}` makes the next `count` matching requests fail (kinds as in stats; omitted = any);
  `"after": N` lets the first N matching requests through before that (the second job of a chunked
  read fails, not the first); `{"count": 0}` clears;
* `POST /__recon/fls` — `{"sobject": "Account", "hidden": ["Field__c"], "user": "005…"}` hides those
  fields from that user (default: the integration user) as field-level security does: describe omits
  them and a query naming them is refused with INVALID_FIELD; `"hidden": []` shows them again;
* `POST /__recon/sessions/expire` — revokes every session (next call: 401 INVALID_SESSION_ID);
* `POST /__recon/config` — `{"csv_null": "quoted"|"empty", "default_max_records": N,
  "bulk_create_wait": S}`: how Bulk CSV writes nulls (`""`, the default, or an unquoted empty field),
  the page size without maxRecords, and how long a job-create request waits for the job to finish
  (default 10 s; 0 makes every job visibly UploadComplete → InProgress → JobComplete to pollers), and
  `"bulk_job_delay": S` keeps every job InProgress for S seconds first (to test polling);
* `GET|POST /__recon/jobs` — `{"hold": true}` keeps every Bulk query job InProgress (it starts, then
  waits) until `{"hold": false}` releases them; the answer, `{"hold", "held", "running"}`, counts the
  jobs waiting in the hold and the jobs whose worker has not returned yet. How a test holds a job
  open to abort it without racing a delay: abort while held, release, wait for `running` to be 0.

* `GET|POST /__recon/clock` — the org's clock: `{"now": ISO}` sets it (it then runs on from there),
  `{"offset_seconds": N}` sets its offset from real time, `{"advance_seconds": N}` moves it; the answer
  is `{"now", "offset_seconds", "id_cap", "delete_log_horizon"}`. Every use of "now" by the org follows
  it: SystemModstamp/CreatedDate of new writes (the column defaults of loads too), getUpdated/getDeleted's
  30-day window and latestDateCovered. Bulk job and session times stay on real time. Kept in the store
  database (`recon_internal.replication`), so `reset_store` sets it back. Every response's `Date`
  header is the org's clock (Salesforce's is its servers' time);
* `GET|POST /__recon/replication` — `{"id_cap": N}` (ids one getUpdated/getDeleted call may return,
  default 600,000; more is EXCEEDED_ID_LIMIT), `{"delete_log_horizon": ISO}` (getDeleted's
  `earliestDateAvailable`: an earlier start is INVALID_REPLICATION_DATE);
* `POST /__recon/hard_delete` — `{"sobject": "Account", "ids": […]}` removes records physically (Bulk
  hardDelete): neither queryAll nor getDeleted will show them.

Request kinds: versions, resources, limits, login, userinfo, identity, describe, query, queryAll,
query_more, sobject_get, sobject_create, sobject_update, sobject_delete, sobject_changed, bulk_create,
bulk_list, bulk_poll, bulk_results, bulk_abort, bulk_delete. Records kinds: query, queryAll,
query_more, bulk_results, sobject_changed (ids returned by getUpdated/getDeleted).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import datetime as dt
import email.utils
import hmac
import json
import logging
import re
import secrets
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import psycopg
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from engine.local.sfapi import schema, soql
from engine.local.sfapi.auth import Credentials, Sessions
from engine.local.sfapi.schema import ORG_ID, USER_ID
from engine.local.sfapi.store import Store, StoreError, decode_locator, encode_locator, now_ms, parse_datetime

log = logging.getLogger("recon.salesforce")

MIN_VERSION, MAX_VERSION = 31, 62
DEFAULT_BATCH = 2000
DEFAULT_MAX_RECORDS = 100_000
JSON_UTF8 = "application/json;charset=UTF-8"  # the REST guide's examples (Limit Info header, error bodies)
# the keys of a job-create answer, as in the Bulk API 2.0 guide's "Create a Query Job" examples (no counters yet)
CREATE_JOB_KEYS = ("id", "operation", "object", "createdById", "createdDate", "systemModstamp", "state",
                   "concurrencyMode", "contentType", "apiVersion", "lineEnding", "columnDelimiter")
DEFAULT_BULK_CREATE_WAIT = 10.0  # seconds a job-create request waits for the job to finish
LOCATOR_TTL_S = 15 * 60  # Salesforce query locators expire after 15 minutes of inactivity
JOB_TTL_S = 60 * 60  # Bulk results of an unused job are dropped after an hour (Salesforce: 7 days)
_SEASONS = ("Winter", "Spring", "Summer")


def sf_datetime(t: dt.datetime) -> str:
    """`2026-01-02T03:04:05.000+0000`, the REST API's datetime format."""
    t = t.astimezone(dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}+0000"


def _random_id(prefix: str) -> str:
    from engine.core.sfid import BASE62, suffix

    body = prefix + "".join(secrets.choice(BASE62) for _ in range(15 - len(prefix)))
    return body + suffix(body)


def error_body(code: str, message: str, fields: list[str] | None = None) -> list[dict[str, Any]]:
    """Salesforce's error array; `fields` only when the error names fields (the REST guide's NOT_FOUND
    example has just `message` and `errorCode`, its MALFORMED_ID example adds `fields`)."""
    out: dict[str, Any] = {"message": message, "errorCode": code}
    if fields:
        out["fields"] = list(fields)
    return [out]


# -- server state ---------------------------------------------------------------------------------

@dataclass
class Failure:
    status: int
    count: int
    kinds: frozenset[str] | None
    error_code: str
    message: str
    retry_after: int | None
    after: int = 0  # matching requests still let through before the first failure


@dataclass
class Locator:
    sobject: str
    total: int
    batch: int
    created: float
    last_access: float


@dataclass
class Job:
    id: str
    operation: str
    object: str
    query: soql.Query
    created_by: str
    created: dt.datetime
    api_version: str
    column_delimiter: str
    line_ending: str
    state: str = "UploadComplete"
    modstamp: dt.datetime = field(default_factory=now_ms)
    records: int = 0
    processing_ms: int = 0
    error: str | None = None
    last_access: float = field(default_factory=time.time)

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "operation": self.operation, "object": self.object, "createdById": self.created_by,
            "createdDate": sf_datetime(self.created), "systemModstamp": sf_datetime(self.modstamp),
            "state": self.state, "concurrencyMode": "Parallel", "contentType": "CSV",
            "apiVersion": float(self.api_version), "jobType": "V2Query", "lineEnding": self.line_ending,
            "columnDelimiter": self.column_delimiter, "numberRecordsProcessed": self.records, "retries": 0,
            "totalProcessingTime": self.processing_ms, "isPkChunkingSupported": True,
        }
        if self.error:
            out["errorMessage"] = self.error
        return out


class Stats:
    """Counters the tests read to prove what was (and was not) fetched."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.requests: collections.Counter[str] = collections.Counter()
            self.records: collections.Counter[str] = collections.Counter()
            self.records_by_object: collections.Counter[str] = collections.Counter()
            self.errors: collections.Counter[str] = collections.Counter()
            self.since = time.time()

    def hit(self, kind: str) -> None:
        with self.lock:
            self.requests[kind] += 1

    def served(self, kind: str, sobject: str, n: int) -> None:
        with self.lock:
            self.records[kind] += n
            self.records_by_object[sobject] += n

    def error(self, code: str) -> None:
        with self.lock:
            self.errors[code] += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"requests": dict(self.requests), "records": dict(self.records),
                    "records_by_object": dict(self.records_by_object), "errors": dict(self.errors),
                    "since": dt.datetime.fromtimestamp(self.since, dt.UTC).isoformat()}


@dataclass
class ServerConfig:
    state_dir: Path  # <state>/salesforce
    base_url: str  # https://127.0.0.1:PORT
    dsn: str
    credentials: Credentials
    control_token: str
    api_budget: int = 1_000_000


class Org:
    """All mutable server state; DB work happens in threads, so shared maps are lock-protected."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.base_url = cfg.base_url
        self.creds = cfg.credentials
        self.sessions = Sessions(cfg.state_dir)
        self.stats = Stats()
        self.store: Store | None = None
        self.lock = threading.Lock()
        self.api_budget = cfg.api_budget
        self.api_used = 0
        self.api_day = dt.datetime.now(dt.UTC).date()
        self.failures: list[Failure] = []
        self.locators: dict[str, Locator] = {}
        self.jobs: dict[str, Job] = {}
        self.csv_null_quoted = True
        self.default_max_records = DEFAULT_MAX_RECORDS
        self.bulk_create_wait = DEFAULT_BULK_CREATE_WAIT
        self.bulk_job_delay = 0.0
        #: cleared while jobs are held InProgress (`/__recon/jobs`); set again to release them
        self.jobs_released = threading.Event()
        self.jobs_released.set()
        self.jobs_held = 0
        self.jobs_running = 0
        #: field-level security: user id → sObject name (lower case) → hidden field names (lower case)
        self.hidden: dict[str, dict[str, frozenset[str]]] = {}
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="bulk-job")
        #: the org's clock offset (seconds), as last read from the store, and when (monotonic)
        self.offset_s = 0.0
        self.offset_read = -1e9

    async def clock_offset(self) -> float:
        """The org's clock offset for the `Date` header, re-read from the store at most once a
        second (`reset_store` in another process sets it back; a stale value can only make a
        client ask for a little more or less than the org covers, never make it skip changes)."""
        if time.monotonic() - self.offset_read > 1.0 and self.store is not None:
            try:
                self.offset_s = await run_in_threadpool(self.db.clock_offset)
            except psycopg.Error:
                pass  # keep the last value; the request itself will report the store's trouble
            self.offset_read = time.monotonic()
        return self.offset_s

    @property
    def db(self) -> Store:
        assert self.store is not None, "store not started"
        return self.store

    # -- limits and injected failures --------------------------------------------------------------
    def hidden_fields(self, user: str, sobject: str) -> frozenset[str]:
        with self.lock:
            return self.hidden.get(user, {}).get(sobject.lower(), frozenset())

    def check_visible(self, q: soql.Query, user: str) -> None:
        """Refuse a query naming a field hidden from ``user``, with the error Salesforce gives for a
        field the user's profile cannot read (the same as for a field that does not exist)."""
        hidden = self.hidden_fields(user, q.sobject.name)
        if not hidden:
            return
        named: list[schema.FieldDef] = []

        def walk(node: Any) -> None:
            if isinstance(node, schema.FieldDef):
                named.append(node)
            elif isinstance(node, (tuple, list)):
                for item in node:
                    walk(item)

        walk((q.fields, q.where, q.order_by))
        for f in named:
            if f.name.lower() in hidden:
                raise soql.SoqlError(
                    "INVALID_FIELD", f"No such column '{f.name}' on entity '{q.sobject.name}'. If you are attempting "
                    "to use a custom field, be sure to append the '__c' after the custom field name. Please reference "
                    "your WSDL or the describe call for the appropriate names.")

    def consume_api(self) -> bool:
        """Count one API request against the daily budget (usage resets at midnight UTC)."""
        with self.lock:
            today = dt.datetime.now(dt.UTC).date()
            if today != self.api_day:
                self.api_day, self.api_used = today, 0
            if self.api_used >= self.api_budget:
                return False
            self.api_used += 1
            return True

    def limit_header(self) -> dict[str, str]:
        return {"Sforce-Limit-Info": f"api-usage={self.api_used}/{self.api_budget}"}

    def take_failure(self, kind: str) -> Failure | None:
        with self.lock:
            for f in self.failures:
                if f.count > 0 and (f.kinds is None or kind in f.kinds):
                    if f.after > 0:  # this one passes (and no later rule sees it)
                        f.after -= 1
                        return None
                    f.count -= 1
                    if f.count == 0:
                        self.failures.remove(f)
                    return f
        return None

    # -- REST queries --------------------------------------------------------------------------------
    def run_query(self, text: str, version: str, include_deleted: bool, batch: int,
                  user: str = USER_ID) -> tuple[str, str, int]:
        """First page of a REST query: (JSON body, sObject, rows in the page)."""
        q = soql.compile_query(text)
        self.check_visible(q, user)
        obj = q.sobject.name
        if q.is_count:
            n = self.db.count(q, include_deleted=include_deleted)
            return json.dumps({"totalSize": n, "done": True, "records": []}), obj, 0
        lines = self.db.json_lines(q, version, include_deleted=include_deleted, max_rows=batch + 1)
        if len(lines) <= batch:
            return _page_json(len(lines), None, ",".join(lines)), obj, len(lines)
        loc = _random_id("01g")
        total = self.db.materialize_json(loc, q, version, include_deleted=include_deleted)
        now = time.time()
        with self.lock:
            self.locators[loc] = Locator(obj, total, batch, now, now)
        page = self.db.json_page(loc, 0, batch)
        endpoint = "queryAll" if include_deleted else "query"
        return _page_json(total, f"/services/data/v{version}/{endpoint}/{loc}-{batch}", page), obj, batch

    def query_more(self, loc: str, offset: int, version: str, endpoint: str,
                   batch: int | None) -> tuple[str, str, int]:
        with self.lock:
            state = self.locators.get(loc)
            if state is not None:
                state.last_access = time.time()
        if state is None or offset > state.total:
            raise soql.SoqlError("INVALID_QUERY_LOCATOR", "invalid query locator")
        size = batch or state.batch
        end = min(offset + size, state.total)
        page = self.db.json_page(loc, offset, end)
        next_url = None if end >= state.total else f"/services/data/v{version}/{endpoint}/{loc}-{end}"
        return _page_json(state.total, next_url, page), state.sobject, end - offset

    # -- Bulk jobs -----------------------------------------------------------------------------------
    def run_job(self, job: Job) -> None:
        """Materialise a query job's results (in a worker thread; jobs complete when this returns)."""
        with self.lock:
            self.jobs_running += 1
        try:
            self._run_job(job)
        finally:
            with self.lock:
                self.jobs_running -= 1

    def _run_job(self, job: Job) -> None:
        with self.lock:
            if job.state != "UploadComplete":
                return
            job.state = "InProgress"
            job.modstamp = now_ms()
        t0 = time.monotonic()
        if not self.jobs_released.is_set():  # test knob: held InProgress until the control API releases it
            with self.lock:
                self.jobs_held += 1
            try:
                self.jobs_released.wait()
            finally:
                with self.lock:
                    self.jobs_held -= 1
        if self.bulk_job_delay > 0:  # test knob: keep the job visibly InProgress for a while
            time.sleep(self.bulk_job_delay)
        with self.lock:
            if job.state == "Aborted":
                return
        try:
            n = self.db.materialize_csv(job.id, job.query, include_deleted=job.operation == "queryAll",
                                        null_as_quoted=self.csv_null_quoted)
        except Exception as exc:  # the job fails, the server carries on
            log.exception("bulk job %s failed", job.id)
            with self.lock:
                job.state, job.error, job.modstamp = "Failed", f"{type(exc).__name__}: {exc}"[:500], now_ms()
            return
        with self.lock:
            job.processing_ms = int((time.monotonic() - t0) * 1000)
            job.modstamp = now_ms()
            aborted = job.state == "Aborted"
            if not aborted:
                job.state, job.records = "JobComplete", n
        if aborted:
            self.db.drop_result(job.id)

    def sweep(self) -> None:
        """Drop result tables of expired query locators and long-unused jobs."""
        now = time.time()
        with self.lock:
            dead_locs = [k for k, v in self.locators.items() if now - v.last_access > LOCATOR_TTL_S]
            for k in dead_locs:
                del self.locators[k]
            dead_jobs = [k for k, j in self.jobs.items()
                         if now - j.last_access > JOB_TTL_S and j.state not in ("UploadComplete", "InProgress")]
            for k in dead_jobs:
                del self.jobs[k]
        for name in dead_locs + dead_jobs:
            self.db.drop_result(name)


def _page_json(total: int, next_url: str | None, records: str) -> str:
    """A query response body around pre-rendered record objects (`records` is `{…},{…}`)."""
    if next_url is None:
        return '{"totalSize":' + str(total) + ',"done":true,"records":[' + records + "]}"
    return ('{"totalSize":' + str(total) + ',"done":false,"nextRecordsUrl":' + json.dumps(next_url)
            + ',"records":[' + records + "]}")


# -- HTTP helpers ---------------------------------------------------------------------------------

def sf_error(status: int, code: str, message: str, fields: list[str] | None = None,
             headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, fields), status_code=status, headers=headers, media_type=JSON_UTF8)


def json_text(body: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status, media_type="application/json;charset=UTF-8", headers=headers)


def bearer(request: Request) -> str | None:
    h = request.headers.get("authorization", "")
    for scheme in ("bearer ", "oauth "):
        if h.lower().startswith(scheme):
            return h[len(scheme):].strip()
    return request.headers.get("x-sfdc-session")


def _version_label(v: int) -> str:
    n = v - 59
    return f"{_SEASONS[n % 3]} '{24 + n // 3}"


def _parse_version(text: str) -> str | None:
    m = re.fullmatch(r"v(\d+)\.0", text)
    if not m or not MIN_VERSION <= int(m.group(1)) <= MAX_VERSION:
        return None
    return f"{int(m.group(1))}.0"


def _query_batch_size(request: Request) -> int | None:
    """`Sforce-Query-Options: batchSize=N` (200–2000; Salesforce treats it as a hint, so do we)."""
    opts = request.headers.get("sforce-query-options", "")
    m = re.search(r"batchSize\s*=\s*(\d+)", opts, re.I)
    if not m:
        return None
    return max(200, min(2000, int(m.group(1))))


Handler = Callable[..., Awaitable[Response]]

# (method, path regex relative to /services/data/vXX.X/, handler name, stats kind)
_DATA_ROUTES: list[tuple[str, re.Pattern[str], str, str]] = [
    (m, re.compile(p), h, k) for m, p, h, k in [
        ("GET", r"", "resources", "resources"),
        ("GET", r"limits/?", "limits", "limits"),
        ("GET", r"sobjects/?", "describe_global", "describe"),
        ("GET", r"sobjects/(\w+)/describe/?", "describe", "describe"),
        ("GET", r"sobjects/(\w+)/(deleted|updated)/?", "changed", "sobject_changed"),
        ("GET", r"sobjects/(\w+)/?", "sobject_info", "describe"),
        ("POST", r"sobjects/(\w+)/?", "sobject_create", "sobject_create"),
        ("GET", r"sobjects/(\w+)/(\w+)/?", "sobject_get", "sobject_get"),
        ("PATCH", r"sobjects/(\w+)/(\w+)/?", "sobject_update", "sobject_update"),
        ("DELETE", r"sobjects/(\w+)/(\w+)/?", "sobject_delete", "sobject_delete"),
        ("GET", r"query/?", "query", "query"),
        ("GET", r"queryAll/?", "query_all", "queryAll"),
        ("GET", r"(query|queryAll)/(01g\w+)-(\d+)/?", "query_more", "query_more"),
        ("POST", r"jobs/query/?", "bulk_create", "bulk_create"),
        ("GET", r"jobs/query/?", "bulk_list", "bulk_list"),
        ("GET", r"jobs/query/(\w+)/results/?", "bulk_results", "bulk_results"),
        ("GET", r"jobs/query/(\w+)/?", "bulk_poll", "bulk_poll"),
        ("PATCH", r"jobs/query/(\w+)/?", "bulk_abort", "bulk_abort"),
        ("DELETE", r"jobs/query/(\w+)/?", "bulk_delete", "bulk_delete"),
    ]
]


class Api:
    """Endpoint implementations; `org` holds the state."""

    def __init__(self, org: Org) -> None:
        self.org = org

    # -- dispatch ----------------------------------------------------------------------------------
    async def data(self, request: Request) -> Response:
        org = self.org
        version = _parse_version(request.path_params["version"])
        rest = request.path_params.get("rest", "")
        if version is None:
            org.stats.error("NOT_FOUND")
            return sf_error(404, "NOT_FOUND", "The requested resource does not exist")
        match = None
        allowed = []
        for method, rx, handler_name, kind in _DATA_ROUTES:
            m = rx.fullmatch(rest)
            if m is None:
                continue
            if method == request.method:
                match = (handler_name, kind, m.groups())
                break
            allowed.append(method)
        user = org.sessions.verify(bearer(request) or "")
        if user is None:
            org.stats.error("INVALID_SESSION_ID")
            return sf_error(401, "INVALID_SESSION_ID", "Session expired or invalid",
                            headers={"WWW-Authenticate": "Token"})
        if match is None:
            code = "METHOD_NOT_ALLOWED" if allowed else "NOT_FOUND"
            org.stats.error(code)
            if allowed:
                return sf_error(405, code, f"HTTP Method '{request.method}' not allowed. Allowed are "
                                           f"{','.join(sorted(set(allowed)))}", headers=org.limit_header())
            return sf_error(404, code, "The requested resource does not exist", headers=org.limit_header())
        handler_name, kind, groups = match
        org.stats.hit(kind)
        fail = org.take_failure(kind)
        if fail is not None:
            org.stats.error(fail.error_code)
            headers = org.limit_header()
            if fail.retry_after is not None:
                headers["Retry-After"] = str(fail.retry_after)
            return sf_error(fail.status, fail.error_code, fail.message, headers=headers)
        if not org.consume_api():
            org.stats.error("REQUEST_LIMIT_EXCEEDED")
            return sf_error(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.",
                            headers=org.limit_header())
        handler: Handler = getattr(self, "h_" + handler_name)
        try:
            resp = await handler(request, version, user, *groups)
        except soql.SoqlError as exc:
            org.stats.error(exc.error_code)
            resp = sf_error(exc.status, exc.error_code, exc.message)
        except StoreError as exc:
            org.stats.error(exc.error_code)
            resp = sf_error(exc.status, exc.error_code, exc.message, exc.fields)
        except psycopg.Error as exc:
            log.error("database error on %s %s: %s", request.method, request.url.path, exc)
            org.stats.error("UNKNOWN_EXCEPTION")
            resp = sf_error(500, "UNKNOWN_EXCEPTION", f"An unexpected error occurred: {type(exc).__name__}")
        resp.headers.update(org.limit_header())
        if resp.media_type == "application/json":
            resp.headers["content-type"] = JSON_UTF8
        return resp

    async def versions(self, request: Request) -> Response:
        self.org.stats.hit("versions")
        return JSONResponse([{"label": _version_label(v), "url": f"/services/data/v{v}.0", "version": f"{v}.0"}
                             for v in range(MIN_VERSION, MAX_VERSION + 1)])

    async def data_root_no_slash(self, request: Request) -> Response:
        request.path_params["rest"] = ""
        return await self.data(request)

    # -- REST resources ------------------------------------------------------------------------------
    async def h_resources(self, request: Request, version: str, user: str) -> Response:
        base = f"/services/data/v{version}"
        return JSONResponse({k: f"{base}/{k}" for k in ("sobjects", "query", "queryAll", "limits", "jobs",
                                                          "search", "tooling", "composite")})

    async def h_limits(self, request: Request, version: str, user: str) -> Response:
        org = self.org
        return JSONResponse({"DailyApiRequests": {"Max": org.api_budget,
                                                  "Remaining": max(org.api_budget - org.api_used, 0)},
                             "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000 - len(org.jobs)}})

    def _sobject(self, name: str) -> schema.SObject:
        obj = schema.sobject(name)
        if obj is None:
            raise StoreError("NOT_FOUND", "The requested resource does not exist", 404)
        return obj

    async def h_describe_global(self, request: Request, version: str, user: str) -> Response:
        return JSONResponse({"encoding": "UTF-8", "maxBatchSize": 200,
                             "sobjects": [o.describe_global_entry(version) for o in schema.SOBJECTS.values()]})

    async def h_describe(self, request: Request, version: str, user: str, name: str) -> Response:
        out = self._sobject(name).describe(version)
        hidden = self.org.hidden_fields(user, name)
        if hidden:
            out["fields"] = [f for f in out["fields"] if f["name"].lower() not in hidden]
        return JSONResponse(out)

    async def h_sobject_info(self, request: Request, version: str, user: str, name: str) -> Response:
        return JSONResponse({"objectDescribe": self._sobject(name).describe_global_entry(version),
                             "recentItems": []})

    async def h_changed(self, request: Request, version: str, user: str, name: str, which: str) -> Response:
        """getUpdated/getDeleted (`sobjects/X/updated|deleted/?start=…&end=…`); the rules are the
        store's (:meth:`Store.changed`)."""
        obj = self._sobject(name)
        if "start" not in request.query_params or "end" not in request.query_params:
            raise StoreError("MISSING_ARGUMENT", "start and end are required", 400)
        try:
            start = parse_datetime(request.query_params["start"])
            end = parse_datetime(request.query_params["end"])
        except ValueError:
            raise StoreError("MALFORMED_QUERY", "start and end must be dateTimes such as 2026-01-02T03:04:00+00:00",
                             400) from None
        if which == "deleted" and not obj.has_is_deleted:
            raise StoreError("INVALID_TYPE", f"{obj.name} is not replicateable for deletes", 400)
        body = await run_in_threadpool(self.org.db.changed, obj, start, end, deleted=which == "deleted")
        self.org.stats.served("sobject_changed", obj.name,
                              len(body["deletedRecords"] if which == "deleted" else body["ids"]))
        return JSONResponse(body)

    async def _json_body(self, request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw or b"null")
        except ValueError:
            raise StoreError("JSON_PARSER_ERROR", "Unexpected character in request body: not valid JSON",
                             400) from None

    async def h_sobject_create(self, request: Request, version: str, user: str, name: str) -> Response:
        obj = self._sobject(name)
        data = await self._json_body(request)
        rid = await run_in_threadpool(self.org.db.create_record, obj, data, user)
        return JSONResponse({"id": rid, "success": True, "errors": []}, status_code=201,
                            headers={"Location": f"/services/data/v{version}/sobjects/{obj.name}/{rid}"})

    async def h_sobject_get(self, request: Request, version: str, user: str, name: str, rid: str) -> Response:
        obj = self._sobject(name)
        fields = request.query_params.get("fields")
        names = [f.strip() for f in fields.split(",") if f.strip()] if fields else None
        body = await run_in_threadpool(self.org.db.get_record, obj, rid, version, names)
        return json_text(body)

    async def h_sobject_update(self, request: Request, version: str, user: str, name: str, rid: str) -> Response:
        obj = self._sobject(name)
        data = await self._json_body(request)
        await run_in_threadpool(self.org.db.update_record, obj, rid, data, user)
        return Response(status_code=204)

    async def h_sobject_delete(self, request: Request, version: str, user: str, name: str, rid: str) -> Response:
        obj = self._sobject(name)
        await run_in_threadpool(self.org.db.delete_record, obj, rid, user)
        return Response(status_code=204)

    # -- REST query ----------------------------------------------------------------------------------
    async def _query(self, request: Request, version: str, include_deleted: bool, user: str) -> Response:
        text = request.query_params.get("q")
        if text is None:
            raise soql.SoqlError("MALFORMED_QUERY", "A query string must be specified with the q parameter")
        batch = _query_batch_size(request) or DEFAULT_BATCH
        body, obj, n = await run_in_threadpool(self.org.run_query, text, version, include_deleted, batch, user)
        self.org.stats.served("queryAll" if include_deleted else "query", obj, n)
        return json_text(body)

    async def h_query(self, request: Request, version: str, user: str) -> Response:
        return await self._query(request, version, False, user)

    async def h_query_all(self, request: Request, version: str, user: str) -> Response:
        return await self._query(request, version, True, user)

    async def h_query_more(self, request: Request, version: str, user: str, endpoint: str, loc: str,
                           offset: str) -> Response:
        body, obj, n = await run_in_threadpool(self.org.query_more, loc, int(offset), version, endpoint,
                                               _query_batch_size(request))
        self.org.stats.served("query_more", obj, n)
        return json_text(body)

    # -- Bulk API 2.0 query jobs -----------------------------------------------------------------------
    def _job(self, job_id: str) -> Job:
        with self.org.lock:
            job = self.org.jobs.get(job_id)
            if job is not None:
                job.last_access = time.time()
        if job is None:
            raise StoreError("NOT_FOUND", "The requested resource does not exist", 404)
        return job

    async def h_bulk_create(self, request: Request, version: str, user: str) -> Response:
        body = await self._json_body(request)
        if not isinstance(body, dict):
            raise StoreError("INVALIDJOB", "Invalid job definition: a JSON object is required", 400)
        op = body.get("operation")
        if op not in ("query", "queryAll"):
            raise StoreError("INVALIDJOB", f"Invalid operation: {op}; query jobs support query and queryAll", 400)
        delim = body.get("columnDelimiter") or "COMMA"
        if delim not in ("COMMA", "TAB", "PIPE", "SEMICOLON", "CARET", "BACKQUOTE"):
            raise StoreError("INVALIDJOB", f"Invalid columnDelimiter: {delim}", 400)
        ending = body.get("lineEnding") or "LF"
        if ending not in ("LF", "CRLF"):
            raise StoreError("INVALIDJOB", f"Invalid lineEnding: {ending}", 400)
        if (body.get("contentType") or "CSV") != "CSV":
            raise StoreError("INVALIDJOB", "Invalid contentType: only CSV is supported", 400)
        text = body.get("query")
        if not isinstance(text, str) or not text.strip():
            raise StoreError("INVALIDJOB", "A query is required for query jobs", 400)
        q = soql.compile_query(text, bulk=True)
        self.org.check_visible(q, user)
        job = Job(id=_random_id("750"), operation=op, object=q.sobject.name, query=q, created_by=user,
                  created=now_ms(), api_version=version, column_delimiter=delim, line_ending=ending)
        with self.org.lock:
            self.org.jobs[job.id] = job
            info = job.info()  # the state at creation (UploadComplete), as Salesforce answers
            info = {k: info[k] for k in CREATE_JOB_KEYS}
        future = self.org.executor.submit(self.org.run_job, job)
        if self.org.bulk_create_wait > 0:
            # let quick jobs finish before answering, so a client's first poll already sees JobComplete
            # (simple-salesforce's poll intervals grow to 3 s; real small jobs also finish that fast)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), self.org.bulk_create_wait)
        return JSONResponse(info)

    async def h_bulk_list(self, request: Request, version: str, user: str) -> Response:
        with self.org.lock:
            infos = [j.info() for j in self.org.jobs.values()]
        return JSONResponse({"done": True, "records": infos, "nextRecordsUrl": None})

    async def h_bulk_poll(self, request: Request, version: str, user: str, job_id: str) -> Response:
        job = self._job(job_id)
        with self.org.lock:
            return JSONResponse(job.info())

    async def h_bulk_abort(self, request: Request, version: str, user: str, job_id: str) -> Response:
        job = self._job(job_id)
        body = await self._json_body(request)
        state = body.get("state") if isinstance(body, dict) else None
        if state != "Aborted":
            raise StoreError("INVALIDJOBSTATE", f"Invalid state for a query job: {state}", 400)
        with self.org.lock:
            if job.state not in ("UploadComplete", "InProgress"):
                raise StoreError("INVALIDJOBSTATE", f"Aborting a job in state {job.state} is not allowed", 400)
            job.state, job.modstamp = "Aborted", now_ms()
            info = job.info()
        return JSONResponse(info)

    async def h_bulk_delete(self, request: Request, version: str, user: str, job_id: str) -> Response:
        job = self._job(job_id)
        with self.org.lock:
            if job.state not in ("JobComplete", "Aborted", "Failed"):  # the guide's "unsuccessful request" example
                raise StoreError("API_ERROR", "Error encountered when deleting the job because the job is not terminated",
                                 400)
            self.org.jobs.pop(job.id, None)
        await run_in_threadpool(self.org.db.drop_result, job.id)
        return Response(status_code=204)

    async def h_bulk_results(self, request: Request, version: str, user: str, job_id: str) -> Response:
        org = self.org
        job = self._job(job_id)
        if version != job.api_version:  # the guide: "Otherwise, the call returns a 409 error"
            raise StoreError("API_VERSION_MISMATCH", f"Job {job.id} was created with API version {job.api_version}; "
                             "get its results with the same version", 409)
        if job.state in ("UploadComplete", "InProgress"):
            raise StoreError("JOB_NOT_COMPLETE", f"Job {job.id} is not complete: {job.state}", 412)
        if job.state != "JobComplete":
            raise StoreError("INVALIDJOBSTATE", f"Results are not available for a job in state {job.state}", 400)
        raw_max = request.query_params.get("maxRecords")
        try:
            max_records = int(raw_max) if raw_max else org.default_max_records
        except ValueError:
            max_records = -1
        if max_records <= 0:
            raise StoreError("INVALIDREQUEST", f"maxRecords must be a positive integer: {raw_max}", 400)
        loc = request.query_params.get("locator")
        start = 0
        if loc and loc != "null":
            decoded = decode_locator(loc)
            if decoded is None or decoded > job.records:
                raise StoreError("INVALIDLOCATOR", f"Invalid locator: {loc}", 400)
            start = decoded
        end = min(start + max_records, job.records)
        next_loc = encode_locator(end) if end < job.records else "null"
        org.stats.served("bulk_results", job.object, end - start)
        nl = "\r\n" if job.line_ending == "CRLF" else "\n"
        delim = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";", "CARET": "^", "BACKQUOTE": "`"}[
            job.column_delimiter]
        header = (delim.join(f'"{f.name}"' for f in job.query.fields) + nl).encode()
        ncols = len(job.query.fields)
        db = org.db

        def body() -> Iterator[bytes]:
            yield header
            if end > start:
                yield from db.csv_page(job.id, ncols, start, end, delimiter=job.column_delimiter,
                                       crlf=job.line_ending == "CRLF")

        return StreamingResponse(body(), media_type="text/csv; charset=UTF-8",
                                 headers={"Sforce-Locator": next_loc, "Sforce-NumberOfRecords": str(end - start)})

    # -- login -----------------------------------------------------------------------------------------
    def _token_response(self, user: str, scope: str | None = None) -> JSONResponse:
        org = self.org
        issued = str(int(time.time() * 1000))
        ident = f"{org.base_url}/id/{ORG_ID}/{user}"
        body = {"access_token": org.sessions.issue(user), "instance_url": org.base_url, "id": ident,
                "token_type": "Bearer", "issued_at": issued, "signature": org.sessions.signature(ident + issued)}
        if scope:
            body["scope"] = scope
        return JSONResponse(body, headers={"Cache-Control": "no-cache,must-revalidate,max-age=0,no-store,private"})

    async def oauth_token(self, request: Request) -> Response:
        org = self.org
        org.stats.hit("login")
        fail = org.take_failure("login")
        if fail is not None:
            org.stats.error(fail.error_code)
            headers = {"Retry-After": str(fail.retry_after)} if fail.retry_after is not None else None
            return sf_error(fail.status, fail.error_code, fail.message, headers=headers)
        raw = (await request.body()).decode("utf-8", "replace")
        form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        for k, v in request.query_params.items():  # Salesforce also accepts parameters in the URL
            form.setdefault(k, v)
        grant = form.get("grant_type")

        def oauth_error(error: str, desc: str, status: int = 400) -> JSONResponse:
            org.stats.error(error)
            return JSONResponse({"error": error, "error_description": desc}, status_code=status)

        if grant == "password":
            bad = org.creds.check_client(form.get("client_id"), form.get("client_secret"))
            if bad == "invalid_client_id":
                return oauth_error("invalid_client_id", "client identifier invalid")
            if bad:
                return oauth_error("invalid_client", "invalid client credentials")
            if not org.creds.check_password(form.get("username"), form.get("password")):
                return oauth_error("invalid_grant", "authentication failure")
            return self._token_response(USER_ID)
        if grant == "client_credentials":
            cid, secret = form.get("client_id"), form.get("client_secret")
            auth = request.headers.get("authorization", "")
            if auth.lower().startswith("basic "):
                try:
                    cid, _, secret = base64.b64decode(auth[6:].strip()).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    return oauth_error("invalid_client", "invalid client credentials")
            if org.creds.check_client(cid, secret):
                return oauth_error("invalid_client", "invalid client credentials")
            return self._token_response(USER_ID, scope="api")
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            assertion = form.get("assertion")
            if not assertion:
                return oauth_error("invalid_request", "assertion is required")
            port_part = org.base_url.rsplit(":", 1)[-1]
            audiences = [org.base_url, f"https://localhost:{port_part}", "https://login.salesforce.com",
                         "https://test.salesforce.com"]
            problem = org.creds.verify_assertion(assertion, audiences)
            if problem:
                return oauth_error(*problem)
            return self._token_response(USER_ID, scope="api")
        return oauth_error("unsupported_grant_type", "grant type not supported")

    async def soap_login(self, request: Request) -> Response:
        org = self.org
        org.stats.hit("login")
        version = request.path_params["version"]
        fail = org.take_failure("login")
        if fail is not None:
            org.stats.error(fail.error_code)
            return Response(_soap_fault("SERVER_UNAVAILABLE", fail.message), status_code=fail.status,
                            media_type="text/xml; charset=utf-8")
        username = password = None
        try:
            root = ET.fromstring(await request.body())
            for el in root.iter():
                tag = el.tag.rsplit("}", 1)[-1]
                if tag == "username":
                    username = el.text or ""
                elif tag == "password":
                    password = el.text or ""
        except ET.ParseError:
            org.stats.error("INVALID_LOGIN")
            return Response(_soap_fault("INVALID_LOGIN", "Invalid SOAP request: not well-formed XML"),
                            status_code=500, media_type="text/xml; charset=utf-8")
        if not org.creds.check_password(username, password):
            org.stats.error("INVALID_LOGIN")
            return Response(_soap_fault("INVALID_LOGIN",
                                        "Invalid username, password, security token; or user locked out."),
                            status_code=500, media_type="text/xml; charset=utf-8")
        sid = org.sessions.issue(USER_ID)
        base = org.base_url
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
            'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns="urn:partner.soap.sforce.com" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><loginResponse><result>'
            f"<metadataServerUrl>{base}/services/Soap/m/{escape(version)}/{ORG_ID[:15]}</metadataServerUrl>"
            "<passwordExpired>false</passwordExpired><sandbox>false</sandbox>"
            f"<serverUrl>{base}/services/Soap/u/{escape(version)}/{ORG_ID[:15]}</serverUrl>"
            f"<sessionId>{escape(sid)}</sessionId><userId>{USER_ID}</userId><userInfo>"
            f"<organizationId>{ORG_ID}</organizationId><organizationName>{schema.ORG_NAME}</organizationName>"
            f"<userEmail>{escape(org.creds.username)}</userEmail><userFullName>{schema.INTEGRATION_USER_NAME}"
            f"</userFullName><userId>{USER_ID}</userId><userName>{escape(org.creds.username)}</userName>"
            "</userInfo></result></loginResponse></soapenv:Body></soapenv:Envelope>"
        )
        return Response(xml, media_type="text/xml; charset=utf-8")

    def _identity(self, user: str) -> dict[str, Any]:
        base = self.org.base_url
        return {"sub": f"{base}/id/{ORG_ID}/{user}", "user_id": user, "organization_id": ORG_ID,
                "preferred_username": self.org.creds.username, "nickname": "recon",
                "name": schema.INTEGRATION_USER_NAME, "email": self.org.creds.username, "email_verified": True,
                "given_name": "Recon", "family_name": "Integration", "zoneinfo": "GMT", "locale": "en_US",
                "active": True, "user_type": "STANDARD", "language": "en_US",
                "urls": {"rest": f"{base}/services/data/v{{version}}/",
                         "query": f"{base}/services/data/v{{version}}/query/",
                         "sobjects": f"{base}/services/data/v{{version}}/sobjects/"}}

    async def userinfo(self, request: Request) -> Response:
        self.org.stats.hit("userinfo")
        user = self.org.sessions.verify(bearer(request) or "")
        if user is None:
            self.org.stats.error("Bad_OAuth_Token")
            return Response("Bad_OAuth_Token", status_code=403, media_type="text/plain")
        return JSONResponse(self._identity(user))

    async def identity(self, request: Request) -> Response:
        self.org.stats.hit("identity")
        user = self.org.sessions.verify(bearer(request) or "")
        if user is None or request.path_params["user"] != user or request.path_params["org"] != ORG_ID:
            self.org.stats.error("Bad_OAuth_Token")
            return Response("Bad_OAuth_Token", status_code=403, media_type="text/plain")
        out = self._identity(user)
        out.update({"id": out["sub"], "username": self.org.creds.username, "display_name": out["name"]})
        return JSONResponse(out)

    # -- control ---------------------------------------------------------------------------------------
    async def control(self, request: Request) -> Response:
        org = self.org
        token = request.headers.get("x-recon-control", "")
        if not hmac.compare_digest(token.encode(), org.cfg.control_token.encode()):
            return JSONResponse({"error": "control token required (X-Recon-Control)"}, status_code=403)
        path = request.path_params["rest"].strip("/")
        body: dict[str, Any] = {}
        if request.method == "POST":
            raw = await request.body()
            try:
                body = json.loads(raw) if raw.strip() else {}
            except ValueError:
                return JSONResponse({"error": "body must be JSON"}, status_code=400)
            if not isinstance(body, dict):
                return JSONResponse({"error": "body must be a JSON object"}, status_code=400)
        if path == "stats":
            snap = org.stats.snapshot()
            with org.lock:
                snap["api_usage"] = {"used": org.api_used, "budget": org.api_budget}
                snap["open_locators"] = len(org.locators)
                snap["jobs"] = len(org.jobs)
            return JSONResponse(snap)
        if path == "stats/reset" and request.method == "POST":
            org.stats.reset()
            return JSONResponse({"ok": True})
        if path == "limits":
            with org.lock:
                if request.method == "POST":
                    if "budget" in body:
                        org.api_budget = int(body["budget"])
                    if "used" in body:
                        org.api_used = int(body["used"])
                return JSONResponse({"budget": org.api_budget, "used": org.api_used})
        if path == "fail" and request.method == "POST":
            count = int(body.get("count", 1))
            with org.lock:
                if count <= 0:
                    org.failures.clear()
                else:
                    status = int(body.get("status", 503))
                    default_code = {503: "SERVER_UNAVAILABLE", 429: "REQUEST_LIMIT_EXCEEDED",
                                    403: "REQUEST_LIMIT_EXCEEDED"}.get(status, "UNKNOWN_EXCEPTION")
                    kinds = body.get("kinds")
                    org.failures.append(Failure(
                        status=status, count=count, kinds=frozenset(kinds) if kinds else None,
                        error_code=str(body.get("error_code") or default_code),
                        message=str(body.get("message") or f"injected failure ({status})"),
                        retry_after=int(body["retry_after"]) if body.get("retry_after") is not None else None,
                        after=max(0, int(body.get("after") or 0))))
            return JSONResponse({"ok": True, "pending": sum(f.count for f in org.failures)})
        if path == "jobs":
            if request.method == "POST" and "hold" in body:
                if body["hold"] is True:
                    org.jobs_released.clear()
                elif body["hold"] is False:
                    org.jobs_released.set()
                else:
                    return JSONResponse({"error": "hold must be true or false"}, status_code=400)
            with org.lock:
                return JSONResponse({"hold": not org.jobs_released.is_set(), "held": org.jobs_held,
                                     "running": org.jobs_running})
        if path == "fls" and request.method == "POST":
            obj = schema.sobject(str(body.get("sobject", "")))
            hidden = body.get("hidden", [])
            if obj is None or not isinstance(hidden, list):
                return JSONResponse({"error": "give a known sobject and a list of field names to hide"}, status_code=400)
            who = str(body.get("user") or USER_ID)
            with org.lock:
                org.hidden.setdefault(who, {})[obj.name.lower()] = frozenset(str(h).lower() for h in hidden)
            return JSONResponse({"user": who, "sobject": obj.name, "hidden": sorted(str(h) for h in hidden)})
        if path in ("clock", "replication"):
            allowed = ({"now", "offset_seconds", "advance_seconds"} if path == "clock"
                       else {"id_cap", "delete_log_horizon"})
            unknown = set(body) - allowed
            if unknown:
                return JSONResponse({"error": f"unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}"},
                                    status_code=400)
            try:
                out = await run_in_threadpool(org.db.replication, body)
            except (TypeError, ValueError) as exc:
                return JSONResponse({"error": f"bad value: {exc}"}, status_code=400)
            org.offset_s, org.offset_read = out["offset_seconds"], time.monotonic()
            return JSONResponse(out)
        if path == "hard_delete" and request.method == "POST":
            obj = schema.sobject(str(body.get("sobject", "")))
            ids = body.get("ids")
            if obj is None or not isinstance(ids, list):
                return JSONResponse({"error": "give a known sobject and a list of ids"}, status_code=400)
            try:
                n = await run_in_threadpool(org.db.hard_delete, obj, [str(i) for i in ids])
            except StoreError as exc:
                return JSONResponse({"error": exc.message}, status_code=400)
            return JSONResponse({"deleted": n})
        if path == "sessions/expire" and request.method == "POST":
            org.sessions.expire_all()
            return JSONResponse({"ok": True})
        if path == "config" and request.method == "POST":
            if "csv_null" in body:
                if body["csv_null"] not in ("quoted", "empty"):
                    return JSONResponse({"error": "csv_null must be 'quoted' or 'empty'"}, status_code=400)
                org.csv_null_quoted = body["csv_null"] == "quoted"
            if "default_max_records" in body:
                org.default_max_records = max(1, int(body["default_max_records"]))
            if "bulk_create_wait" in body:
                org.bulk_create_wait = max(0.0, float(body["bulk_create_wait"]))
            if "bulk_job_delay" in body:
                org.bulk_job_delay = max(0.0, float(body["bulk_job_delay"]))
            return JSONResponse({"csv_null": "quoted" if org.csv_null_quoted else "empty",
                                 "default_max_records": org.default_max_records,
                                 "bulk_create_wait": org.bulk_create_wait, "bulk_job_delay": org.bulk_job_delay})
        return JSONResponse({"error": f"unknown control endpoint {request.method} /__recon/{path}"}, status_code=404)


def _soap_fault(code: str, message: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
        'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:sf="urn:fault.partner.soap.sforce.com" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault>'
        f"<faultcode>sf:{code}</faultcode><faultstring>{code}: {escape(message)}</faultstring><detail>"
        f'<sf:LoginFault xsi:type="sf:LoginFault"><sf:exceptionCode>{code}</sf:exceptionCode>'
        f"<sf:exceptionMessage>{escape(message)}</sf:exceptionMessage></sf:LoginFault></detail>"
        "</soapenv:Fault></soapenv:Body></soapenv:Envelope>"
    )


class DateHeader:
    """ASGI middleware: every response's `Date` is the org's clock (Salesforce's servers send
    theirs), so a client can ask the org what time it is (`GET /services/data/`) without an API
    call; uvicorn's own Date header is turned off (`date_header=False`)."""

    def __init__(self, app: Any, org: Org) -> None:
        self.app = app
        self.org = org

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offset = await self.org.clock_offset()

        async def send_dated(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"date"]
                headers.append((b"date", email.utils.formatdate(time.time() + offset, usegmt=True).encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_dated)


def build_app(cfg: ServerConfig, ensure: Callable[[], str] | None = None) -> Starlette:
    """The ASGI application. `ensure` prepares the store and returns its DSN (run at startup)."""
    org = Org(cfg)
    api = Api(org)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        dsn = await run_in_threadpool(ensure) if ensure else cfg.dsn
        org.store = Store(dsn)
        await run_in_threadpool(org.db.drop_all_results)

        async def sweeper() -> None:
            while True:
                await asyncio.sleep(30)
                try:
                    await run_in_threadpool(org.sweep)
                except Exception:  # keep sweeping; log why
                    log.error("sweep failed: %s", traceback.format_exc())

        task = asyncio.create_task(sweeper())
        try:
            yield
        finally:
            task.cancel()
            org.jobs_released.set()  # a held job must not keep the worker thread (and the process) alive
            org.executor.shutdown(wait=False, cancel_futures=True)
            org.db.close()

    routes = [
        Route("/services/data", api.versions, methods=["GET"]),
        Route("/services/data/", api.versions, methods=["GET"]),
        Route("/services/data/{version}", api.data_root_no_slash,
              methods=["GET", "POST", "PATCH", "DELETE", "PUT"]),
        Route("/services/data/{version}/{rest:path}", api.data, methods=["GET", "POST", "PATCH", "DELETE", "PUT"]),
        Route("/services/Soap/u/{version}", api.soap_login, methods=["POST"]),
        Route("/services/Soap/u/{version}/{rest:path}", api.soap_login, methods=["POST"]),
        Route("/services/oauth2/token", api.oauth_token, methods=["POST"]),
        Route("/services/oauth2/userinfo", api.userinfo, methods=["GET", "POST"]),
        Route("/id/{org}/{user}", api.identity, methods=["GET"]),
        Route("/__recon/{rest:path}", api.control, methods=["GET", "POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(DateHeader, org=org)])
    app.state.org = org
    return app
