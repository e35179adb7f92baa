# ruff: noqa: S608  -- SOQL, not SQL: names validated against describe, ids and conditions by .soql
"""Salesforce to Arrow: describe → types, Bulk API 2.0 CSV pages → Arrow, REST for small sets,
Id-range chunks for large objects, and the facts a manifest needs (API version, job ids, SOQL,
extraction time, org and user).

API calls are the scarcest resource, so the plan is: one COUNT() to pick the path; REST `query`
below ``REST_MAX_ROWS`` (no job to create and poll); otherwise Bulk 2.0, split into Id ranges when
the object is large so that jobs run side by side and each stays far below Salesforce's limits.
Field names are validated against describe before any SOQL is built: the SOQL never contains a
name the org did not declare.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv

from engine.config import FIELD_RE, Config
from engine.connectors.base import Extract, SalesforceRef, SourceColumn
from engine.connectors.salesforce.soql import check_condition, check_ids, id_list
from engine.core.errors import UsageError

#: rows up to which the REST query path is taken (``RECON_SF_REST_MAX_ROWS``, ``[salesforce] rest_max_rows``)
REST_MAX_ROWS = 5000
BULK_PAGE_ROWS = 100_000
#: rows per Bulk API 2.0 job above which an extraction is split into Id ranges read in parallel
#: (``RECON_SF_CHUNK_ROWS``, ``[salesforce] chunk_rows``)
CHUNK_ROWS = 250_000
#: Ids per query of a record list (explain's and repair's re-reads; ``RECON_SF_ID_CHUNK``,
#: ``[salesforce] id_chunk``): 500 × 21 characters stays far below SOQL's 100,000-character limit,
#: and MAX_ID_CHUNK (42,000 characters) still does
ID_CHUNK = 500
MAX_ID_CHUNK = 2000
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

_KIND = {
    "id": "id", "reference": "id", "boolean": "bool", "int": "int", "long": "int",
    "double": "decimal", "currency": "decimal", "percent": "decimal", "date": "date", "datetime": "timestamp",
}


def settings_from(config: Config, env: dict[str, str] | None = None) -> Any:
    """Connection settings: environment first (SF_*), then `[salesforce]` and the credentials file it
    names. ``RECON_SF_RETRY_DEADLINE``, when set, also bounds the login (else 120 s)."""
    from engine.connectors.retry import deadline_from_env
    from engine.connectors.salesforce.client import (
        RETRY_DEADLINE_ENV,
        SalesforceAuthError,
        SalesforceConfigError,
        SalesforceSettings,
    )

    env = dict(os.environ if env is None else env)
    sect = config.section("salesforce")
    creds: dict[str, str] = {}
    cf = config.path_value("salesforce", "credentials_file")
    if cf:
        try:
            creds = json.loads(cf.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SalesforceConfigError(f"{config.where}: [salesforce] credentials_file {cf} cannot be read "
                                        f"({exc.__class__.__name__})") from None
    ca = config.path_value("salesforce", "ca_bundle")

    def pick(env_key: str, cred_key: str | None = None, sect_key: str | None = None) -> str | None:
        return env.get(env_key) or (creds.get(cred_key) if cred_key else None) or (sect.get(sect_key) if sect_key else None)

    kw: dict[str, Any] = {
        "login_url": pick("SF_LOGIN_URL", None, "login_url") or "https://login.salesforce.com",
        "instance_url": pick("SF_INSTANCE_URL", None, "instance_url"),
        "ca_bundle": env.get("SF_CA_BUNDLE") or (str(ca) if ca else None),
        "api_version": pick("SF_API_VERSION", None, "api_version") or "59.0",
    }
    if env.get("SF_SESSION_ID"):
        kw["session_id"] = env["SF_SESSION_ID"]
    elif env.get("SF_JWT_KEY_FILE"):
        kw.update(consumer_key=env.get("SF_CONSUMER_KEY"), username=env.get("SF_USERNAME"),
                  jwt_key_file=env["SF_JWT_KEY_FILE"])
    else:
        kw.update(username=pick("SF_USERNAME", "salesforce_username"), password=pick("SF_PASSWORD", "salesforce_password"),
                  security_token=pick("SF_SECURITY_TOKEN", "salesforce_security_token"),
                  consumer_key=pick("SF_CONSUMER_KEY", "salesforce_consumer_key"),
                  consumer_secret=pick("SF_CONSUMER_SECRET", "salesforce_consumer_secret"))
        if not kw["username"] or not kw["password"]:
            raise SalesforceAuthError("no Salesforce credentials: set SF_USERNAME and SF_PASSWORD (or SF_SESSION_ID, "
                                      "or SF_JWT_KEY_FILE), or name a credentials_file in [salesforce]")
    if os.environ.get(RETRY_DEADLINE_ENV, "").strip():
        kw["retry_deadline"] = deadline_from_env(RETRY_DEADLINE_ENV, 120.0)
    return SalesforceSettings(**{k: v for k, v in kw.items() if v is not None})


def _int_setting(config: Config, key: str, env_name: str, default: int, lo: int, hi: int) -> int:
    """A whole-number size from the environment (wins, as for the connection settings) or from
    `[salesforce]`, read when an extraction runs (so one process can use several configs); a value
    out of range is exit 2 naming where it came from, never silently clamped."""
    raw: Any = os.environ.get(env_name, "").strip()
    origin = env_name
    if not raw:
        raw = config.section("salesforce").get(key)
        origin = f"{config.where}: [salesforce] {key}"
        if raw is None:
            return default
    try:
        if isinstance(raw, bool) or isinstance(raw, float):
            raise ValueError
        n = int(raw)
    except (TypeError, ValueError):
        n = lo - 1
    if not lo <= n <= hi:
        raise UsageError(f"{origin} = {raw!r} must be a whole number from {lo:,} to {hi:,} (default {default:,})")
    return n


def rest_max_rows(config: Config) -> int:
    """Rows up to which an extraction uses REST queries instead of a Bulk API 2.0 job."""
    return _int_setting(config, "rest_max_rows", "RECON_SF_REST_MAX_ROWS", REST_MAX_ROWS, 0, 10**9)


def chunk_rows(config: Config) -> int:
    """Rows per Bulk API 2.0 job above which an extraction is split into Id ranges."""
    return _int_setting(config, "chunk_rows", "RECON_SF_CHUNK_ROWS", CHUNK_ROWS, 1, 10**9)


def id_chunk(config: Config) -> int:
    """Ids per query when exact records are re-read (explain, repair)."""
    return _int_setting(config, "id_chunk", "RECON_SF_ID_CHUNK", ID_CHUNK, 1, MAX_ID_CHUNK)


_CONN_CACHE: dict[int, Any] = {}


def connection(config: Config) -> Any:
    """One login per process and config (a login is an API call and an audit-log line). Its errors
    are recon errors already (SalesforceAuthError: exit 2, SalesforceUnreachable: exit 5)."""
    from engine.connectors.salesforce.client import connect

    key = id(config)
    if key not in _CONN_CACHE:
        _CONN_CACHE[key] = connect(settings_from(config))
    return _CONN_CACHE[key]


def _call(conn: Any, fn: Any, what: str) -> Any:
    """Call simple-salesforce under recon's retry policy (``RECON_SF_RETRY_DEADLINE``, 60 s):
    transient failures (429, 5xx, REQUEST_LIMIT_EXCEEDED, refused connections) are waited out,
    refusals raise at once; :func:`engine.connectors.salesforce.client.classify` tells which."""
    from urllib.parse import urlsplit

    from engine.connectors.salesforce.client import (
        HINT,
        SalesforceRefused,
        SalesforceUnreachable,
        call_policy,
        classify,
    )

    host = urlsplit(conn.instance_url).netloc

    def verdict(exc: BaseException) -> Any:
        found = classify(exc, host)
        if isinstance(found, SalesforceRefused):  # say which call, and the likely fix
            code = str(found).split(" ", 1)[0]
            hint = {"INVALID_FIELD": "fix the column names", "INVALID_TYPE": "check the sObject name",
                    "MALFORMED_QUERY": "fix the SOQL condition"}.get(code, "")
            return SalesforceRefused(f"Salesforce refused {what}: {found}{'; ' + hint if hint else ''}",
                                     field="where" if code == "MALFORMED_QUERY" else None)
        return found

    return call_policy().run(fn, verdict, service=f"Salesforce at https://{host}", doing=f"during {what}",
                             hint=HINT, unreachable=SalesforceUnreachable)


_DESCRIBE_CACHE: dict[tuple[int, str], dict[str, Any]] = {}


def describe(ref: SalesforceRef, config: Config) -> dict[str, Any]:
    """The sObject's describe, fetched once per process (schema lookups and extraction share it)."""
    key = (id(config), ref.sobject)
    if key not in _DESCRIBE_CACHE:
        conn = connection(config)
        _DESCRIBE_CACHE[key] = _call(conn, lambda: conn.sf.restful(f"sobjects/{ref.sobject}/describe"),
                                     f"describe of {ref.sobject}")
    return _DESCRIBE_CACHE[key]


def fls_hint(conn: Any) -> str:
    """Why a field the describe does not list may exist all the same. In a real org the usual cause
    is not a typo but field-level security: describe omits every field the integration user's
    profile cannot read, so the message names that user and the grant."""
    return (f"describe does not list it for the integration user {conn.user}: if the field exists, field-level "
            "security may hide it from that user (grant read access in its profile or a permission set)")


def not_described(name: str, ref: SalesforceRef, conn: Any, fix: str, *, field: str | None = None) -> UsageError:
    return UsageError(f"unknown column {name!r} on Salesforce {ref.sobject}: {fls_hint(conn)}; else {fix}",
                      field=field)


def describe_columns(ref: SalesforceRef, config: Config) -> dict[str, SourceColumn]:
    d = describe(ref, config)
    out = {}
    for f in d["fields"]:
        if f["type"] in ("address", "location", "base64", "anyType"):
            continue  # not selectable in Bulk queries
        kind = _KIND.get(f["type"], "text")
        scale = f.get("scale") if kind == "decimal" else None
        out[f["name"]] = SourceColumn(f["name"], kind, scale, f["type"])
    return out


def _arrow_type(c: SourceColumn) -> pa.DataType:
    if c.kind == "decimal":
        return pa.decimal128(38, c.scale or 0)
    return {"int": pa.int64(), "bool": pa.bool_(), "date": pa.date32(),
            "timestamp": pa.timestamp("ms", tz="UTC")}.get(c.kind, pa.string())


def _soql_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _id_to_int(x: str) -> int:
    n = 0
    for ch in x[:15]:
        n = n * 62 + _BASE62.index(ch)
    return n


def _int_to_id(n: int) -> str:
    out = []
    for _ in range(15):
        n, r = divmod(n, 62)
        out.append(_BASE62[r])
    return "".join(reversed(out))


def id_ranges(first: str, last: str, chunks: int) -> list[tuple[str | None, str | None]]:
    """Split [first, last] into ``chunks`` Id ranges with synthetic 15-character boundaries, the way
    Salesforce's PK chunking does (base-62 steps; Id order is byte order)."""
    a, b = _id_to_int(first), _id_to_int(last)
    if chunks <= 1 or b <= a:
        return [(None, None)]
    step = (b - a) // chunks + 1
    bounds = [_int_to_id(a + i * step) for i in range(1, chunks)]
    bounds = sorted(set(bounds))
    return [(None, bounds[0])] + [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)] + [(bounds[-1], None)]


#: a text-area value may hold line ends (quoted, as Bulk and write_csv quote them)
_QUOTED_NEWLINES = pacsv.ParseOptions(newlines_in_values=True)


def _one_block(size: int) -> pacsv.ReadOptions:
    """A page is parsed as one Arrow block: the page is in memory already, and a quoted line end
    that straddles a block boundary was a column-count error or lost its LF (the same fault
    :mod:`engine.connectors.files.source` reads around)."""
    return pacsv.ReadOptions(block_size=max(1, min(size + 1, (1 << 31) - 1)))


def _parse_pages(pages: list[str], names: list[str], types: dict[str, pa.DataType]) -> pa.Table:
    tables = []
    for text in pages:
        if not text.strip():
            continue
        data = text.encode()
        tables.append(pacsv.read_csv(
            pa.py_buffer(data), read_options=_one_block(len(data)), parse_options=_QUOTED_NEWLINES,
            convert_options=pacsv.ConvertOptions(column_types=types, true_values=["true"], false_values=["false"],
                                                 strings_can_be_null=True, quoted_strings_can_be_null=True),
        ).select(names))
    if not tables:
        return pa.table({n: pa.array([], type=types[n]) for n in names})
    return pa.concat_tables(tables)


def extract(
    ref: SalesforceRef,
    config: Config,
    columns: list[str],
    where: str | None,
    *,
    as_of: datetime | None = None,
    key_columns: list[str] | None = None,
    ids: list[str] | None = None,
    id_range: tuple[str | None, str | None] | None = None,
    modified_since: datetime | None = None,
    expected_rows: int | None = None,
) -> Extract:
    """Extract the named fields (validated against describe). ``ids`` restricts to a list of records
    (repair's surgical re-extraction), in chunks sized under SOQL's length limit.

    ``where`` and ``ids`` are checked before any query is sent (:mod:`.soql`): the condition must
    parse as one SOQL condition over fields of the describe, and is sent as re-written from its
    parse tree; every id must be a Salesforce id. ``id_range``: a range task's ``[lo, hi)`` of
    record Ids (see :func:`id_range_conditions`). ``modified_since``: only records whose
    SystemModstamp is at or after it (an incremental run's re-read); ``expected_rows``: how many
    rows the caller already knows to expect (getUpdated's count), which picks REST or Bulk without
    the COUNT() call."""
    t0 = time.perf_counter()
    if ids is not None:
        ids = check_ids(ids)
    # every size setting is checked before any call, whichever path this extraction takes: a bad
    # value in recon.toml or the environment is refused now, not on the first larger org
    per_job, rest_limit, chunk_size = id_chunk(config), rest_max_rows(config), chunk_rows(config)
    conn = connection(config)
    declared = describe_columns(ref, config)
    if where is not None:
        where = check_condition(where, ref.sobject, describe(ref, config)["fields"])
    lower = {n.lower(): n for n in declared}
    names = []
    for c in columns:
        if not FIELD_RE.match(c):
            raise UsageError(f"invalid Salesforce field name {c!r}")
        n = c if c in declared else lower.get(c.lower())
        if n is None:
            raise not_described(c, ref, conn, "fix the key or compared columns", field="columns")
        names.append(n)
    conds = []
    if where:
        conds.append(f"({where})")
    if as_of is not None:
        conds.append(f"SystemModstamp <= {_soql_time(as_of)}")
    if modified_since is not None:
        conds.append(f"SystemModstamp >= {_soql_time(modified_since)}")
    range_conds = id_range_conditions(*id_range) if id_range is not None else []
    conds += range_conds
    base = f"SELECT {', '.join(names)} FROM {ref.sobject}"
    types = {n: _arrow_type(declared[n]) for n in names}
    soqls: list[str] = []
    jobs_by_soql: dict[int, str] = {}  # soqls[i] → its job, so bulk_job_ids[i] is the job of soql[i]

    def run_bulk(soql: str, i: int) -> pa.Table:
        client = getattr(conn.sf.bulk2, ref.sobject)._client
        job = _call(conn, lambda: client.create_job("query", soql, "COMMA", "LF"), "a Bulk API 2.0 query job")
        jobs_by_soql[i] = job["id"]
        _call(conn, lambda: client.wait_for_job(job["id"], True, 0.05), "a Bulk API 2.0 query job")
        pages, locator = [], ""
        while True:
            res = _call(conn, lambda loc=locator: client.get_query_results(job["id"], loc, BULK_PAGE_ROWS), "Bulk results")
            pages.append(res["records"])
            locator = res["locator"]
            if not locator:
                break
        return _parse_pages(pages, names, types)

    def run_rest(soql: str) -> pa.Table:
        res = _call(conn, lambda: conn.sf.query_all(soql), "a REST query")
        recs = res["records"]
        cols = {n: [r.get(n) for r in recs] for n in names}
        tbl = pa.table({n: pa.array([None if v is None else str(v) for v in cols[n]], type=pa.string())
                        for n in names})
        return _cast_strings(tbl, types)

    if ids is not None:
        parts = []
        for ch in (ids[i: i + per_job] for i in range(0, len(ids), per_job)):
            c = conds + [f"Id IN ({id_list(ch)})"]
            soql = base + " WHERE " + " AND ".join(c)
            soqls.append(soql)
            parts.append(run_bulk(soql, len(soqls) - 1))
        table = pa.concat_tables(parts) if parts else pa.table({n: pa.array([], type=types[n]) for n in names})
    else:
        count_soql = f"SELECT COUNT() FROM {ref.sobject}" + (" WHERE " + " AND ".join(conds) if conds else "")
        total = expected_rows if expected_rows is not None else \
            int(_call(conn, lambda: conn.sf.query(count_soql), "a COUNT() query")["totalSize"])
        if total <= rest_limit:
            soql = base + (" WHERE " + " AND ".join(conds) if conds else "")
            soqls.append(soql)
            table = run_rest(soql)
        else:
            chunks = max(1, -(-total // chunk_size))
            ranges: list[tuple[str | None, str | None]] = [(None, None)]
            if chunks > 1:
                within = " WHERE " + " AND ".join(range_conds) if range_conds else ""  # a range task's own Ids
                lo = _call(conn, lambda: conn.sf.query(f"SELECT Id FROM {ref.sobject}{within} ORDER BY Id ASC LIMIT 1"),
                           "the first-Id query")["records"][0]["Id"]
                hi = _call(conn, lambda: conn.sf.query(f"SELECT Id FROM {ref.sobject}{within} ORDER BY Id DESC LIMIT 1"),
                           "the last-Id query")["records"][0]["Id"]
                ranges = id_ranges(lo, hi, chunks)
            for a, b in ranges:
                c = list(conds)
                if a:
                    c.append(f"Id >= '{a}'")
                if b:
                    c.append(f"Id < '{b}'")
                soqls.append(base + (" WHERE " + " AND ".join(c) if c else ""))
            with ThreadPoolExecutor(min(4, len(soqls))) as ex:
                table = pa.concat_tables(list(ex.map(run_bulk, soqls, range(len(soqls)))))
    in_flight = None
    if as_of is not None:
        soql = f"SELECT Id FROM {ref.sobject} WHERE SystemModstamp > {_soql_time(as_of)}" + (f" AND ({where})" if where else "")
        recs = _call(conn, lambda: conn.sf.query_all(soql), "the in-flight query")["records"]
        kc = key_columns or ["Id"]
        in_flight = pl.DataFrame({kc[0]: [r["Id"] for r in recs]}, schema={kc[0]: pl.Utf8})
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    meta = {
        "system": "salesforce",
        "object": ref.sobject,
        "instance_url": conn.instance_url,
        "org_id": conn.org_id,
        "user_id": getattr(conn, "user_id", None),
        "username": getattr(conn, "username", None),
        "api_version": conn.api_version,
        "soql": soqls,
        "bulk_job_ids": [jobs_by_soql[i] for i in sorted(jobs_by_soql)],
        "rows": frame.height,
        **({"key_pushdown": bool(range_conds), "key_predicate": "Id range" if range_conds else
            "no predicate: a range bound is not a record Id"} if id_range is not None else {}),
        "extracted_at": datetime.now(UTC).isoformat(),
        "extract_s": round(time.perf_counter() - t0, 3),
    }
    return Extract(frame=frame, columns={n: declared[n] for n in names}, meta=meta, in_flight=in_flight)


def id_range_conditions(lo: str | None, hi: str | None) -> list[str]:
    """SOQL conditions for the record Ids of a range task, ``lo <= Id < hi`` in canonical order.

    Salesforce orders Ids by their 15-character case-sensitive prefix, in base-62 order
    (0-9 < A-Z < a-z, which is ASCII order), and the 18-character form only appends a suffix, so
    canonical byte order of 18-character Ids is Salesforce's order. A bound goes into the SOQL only
    when :func:`engine.core.sfid.is_valid` accepts it (15 or 18 letters and digits: no quote can
    pass); any other bound is left out, which reads more than the range, never less (the task
    filters exactly)."""
    from engine.core import sfid

    out = []
    if lo is not None and sfid.is_valid(lo):
        out.append(f"Id >= '{lo}'")
    if hi is not None and sfid.is_valid(hi):
        out.append(f"Id < '{hi}'")
    return out


def _cast_strings(tbl: pa.Table, types: dict[str, pa.DataType]) -> pa.Table:
    """REST JSON values arrive as Python values; route them through the same CSV parser as Bulk."""
    import io

    buf = io.BytesIO()
    pacsv.write_csv(tbl, buf)
    size = buf.tell()
    buf.seek(0)
    return pacsv.read_csv(buf, read_options=_one_block(size), parse_options=_QUOTED_NEWLINES, convert_options=pacsv.ConvertOptions(
        column_types=types, true_values=["true", "True"], false_values=["false", "False"],
        strings_can_be_null=True, quoted_strings_can_be_null=True,
        timestamp_parsers=["%Y-%m-%dT%H:%M:%S.%f%z", pacsv.ISO8601]))


def top_ids(ref: SalesforceRef, config: Config, field: str, fraction: float) -> list[str]:
    """Ids of the top ``fraction`` of records by ``field`` (e.g. the SEC-critical top 5% by the
    mapping's ``rank_by`` role, AnnualRevenue by default): one COUNT() and one ordered, limited
    query, not a full extraction."""
    declared = describe_columns(ref, config)
    name = field if field in declared else {n.lower(): n for n in declared}.get(field.lower())
    conn = connection(config)
    if name is None or not FIELD_RE.match(name):
        raise not_described(field, ref, conn, "fix [mapping.NAME.roles] rank_by (or [commission] revenue_field)")
    total = int(_call(conn, lambda: conn.sf.query(f"SELECT COUNT() FROM {ref.sobject}"), "a COUNT() query")["totalSize"])
    k = max(1, int(-(-total * fraction // 1))) if total else 0
    if not k:
        return []
    soql = f"SELECT Id FROM {ref.sobject} WHERE {name} != null ORDER BY {name} DESC LIMIT {k}"
    return [r["Id"] for r in _call(conn, lambda: conn.sf.query_all(soql), "the top-revenue query")["records"]]


#: the key prefix of User ids (an owner can also be a queue, ``00G``: a Group, which has no User record)
USER_PREFIX = "005"
#: ids per ``Id IN (…)`` query: 2,000 × 21 characters stays far below SOQL's 100,000-character limit
NAMES_PER_QUERY = 2000


def user_names(config: Config, ids: list[str]) -> dict[str, str]:
    """The ``Name`` of each User among ``ids`` (owners, for the report): ids validated first (a value
    that is no User id is left out, never sent), then one REST query per 2,000 ids, so one query for
    any real set of owners. A User the integration user cannot see is simply absent: the report falls
    back to the Id."""
    from engine.core import sfid

    wanted = sorted({i for i in ids if isinstance(i, str) and i.startswith(USER_PREFIX) and sfid.is_valid(i)})
    if not wanted:
        return {}
    conn = connection(config)
    names: dict[str, str] = {}
    for n in range(0, len(wanted), NAMES_PER_QUERY):
        soql = f"SELECT Id, Name FROM User WHERE Id IN ({id_list(wanted[n:n + NAMES_PER_QUERY])})"
        for r in _call(conn, lambda q=soql: conn.sf.query_all(q), "the owner-name query")["records"]:
            if r.get("Id") and r.get("Name") is not None:
                names[str(r["Id"])] = str(r["Name"])
    return names
