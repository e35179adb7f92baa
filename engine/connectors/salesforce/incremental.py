# ruff: noqa: S608  -- SOQL, not SQL: names validated against describe, ids by .soql, times formatted here
"""What changed on a Salesforce side since its watermark (:class:`~engine.connectors.base.SideChanges`),
for incremental runs: getUpdated/getDeleted through :func:`.changes.poll_changes`, then one re-read
of the changed records, one COUNT(), and the next watermark.

Choices, and why:

* **The re-read is by SystemModstamp, not by the Ids getUpdated listed.** ``SystemModstamp >=``
  the poll window's first minute (the watermark less the overlap, as getUpdated was asked) returns
  every record getUpdated listed, plus those changed since its latestDateCovered (re-read again
  next time: harmless). The Ids are known first, so their count picks the path without a COUNT():
  REST up to ``rest_max_rows`` (one call per 2,000 rows), else Bulk API 2.0. A list of Ids costs
  one query per 500 Ids (``Id IN (…)`` must stay under the URI and SOQL length limits), so four
  times the calls of REST pages; bench/bench_sf_changes.py measures both.
* **Records gone from the condition.** A record changed so that the user's ``where`` no longer
  holds is in getUpdated but not in the re-read (which applies the condition): it is reported in
  ``deleted``, as a record deleted after the poll is. So is a record that changed without ever
  matching the condition (the re-read cannot tell it from one that left): ``deleted`` may name keys
  the state never held, and removing an absent key changes nothing. Nothing is lost when a record
  is in no list (a record hard deleted, say): ``rows_now`` (a COUNT() under the same condition)
  differs from the state's count, and the engine reads the side's keys.
* **Keys of deleted records.** With the record Id as key, getDeleted's Ids are the keys. With any
  other key (an external id), one ``queryAll`` per 500 Ids (``Id IN (…)``, deleted records
  included) reads the key of each record deleted or gone from the condition; a hard-deleted record
  is in no list and is caught by ``rows_now``.
* **An unusable watermark reads the side whole and says why** rather than stopping the run: the
  watermark is recon's own state, and a whole read is always correct. Unusable: not a date
  (tampered text), after the org's clock (it cannot have come from this org, and polling from the
  future would silently list nothing), another sObject or another condition.
* **The first run's watermark is the org's clock before the read**: a change committed during the
  read is listed by the next poll. A transaction open across the read and longer than the overlap
  is the one case Salesforce's latestDateCovered covers and this does not.
* ``--as-of`` is refused: the poll would move the watermark past changes the re-read leaves out.

``meta["api_calls"]`` counts the requests this function sent to the REST and Bulk APIs (the org's
daily limit counts them), retries included; the `Date` read of the org's clock is not an API call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import polars as pl
import pyarrow as pa

from engine.connectors.base import ReadRequest, SideChanges
from engine.connectors.salesforce.changes import (
    DEFAULT_OVERLAP,
    FullPullNeeded,
    _parse,
    org_time,
    poll_changes,
)
from engine.core.errors import UsageError

#: the field of the watermark that holds Salesforce's latestDateCovered (ISO 8601)
COVERED = "latest_date_covered"
_SHOWN = 40  # characters of a stored value quoted in a reason


@contextmanager
def counting_calls(conn: Any) -> Iterator[list[int]]:
    """Count the REST and Bulk API requests sent on ``conn`` meanwhile (``out[0]``), by a response
    hook on its HTTP session, so retries and Bulk polls count as Salesforce counts them. The versions
    list (``/services/data/``, the org's clock) needs no session and is not counted."""
    out = [0]
    lock = threading.Lock()

    def hook(resp: Any, *args: Any, **kwargs: Any) -> Any:
        path = urlsplit(resp.url).path
        if path.startswith(("/services/data/v", "/services/async/")):
            with lock:
                out[0] += 1
        return resp

    hooks = conn.http.hooks.setdefault("response", [])
    hooks.append(hook)
    try:
        yield out
    finally:
        hooks.remove(hook)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


def usable_watermark(since: Any, sobject: str, where: str | None, now: datetime) -> tuple[datetime | None, str]:
    """The watermark's time, or None and why it cannot be used (the side is then read whole)."""
    if since is None:
        return None, "first run"
    if not isinstance(since, dict):
        return None, "the stored watermark is not an object: read whole"
    text = since.get(COVERED)
    if not isinstance(text, str) or len(text) > 64:
        return None, f"the stored watermark has no usable {COVERED}: read whole"
    try:
        w = _parse(text)
    except (ValueError, OverflowError):
        return None, f"the stored watermark {text[:_SHOWN]!r} is not a date: read whole"
    if since.get("sobject") != sobject:
        return None, f"the stored watermark is not of {sobject}: read whole"
    if since.get("where") != where:
        return None, "the condition changed since the stored watermark: read whole"
    if w > now:
        return None, (f"the stored watermark {_iso(w)} is after the org's clock ({_iso(now)}): it was not taken "
                      "from this org; read whole")
    return w, ""


def side_changes(src: Any, req: ReadRequest, since: dict[str, Any] | None, *,
                 overlap: timedelta | None = None) -> SideChanges:
    """See the module docstring; ``src`` is a :class:`~engine.connectors.salesforce.connector.SalesforceSource`."""
    from engine.connectors.salesforce import source

    if req.as_of is not None:
        raise UsageError("--as-of cannot be used with an incremental run: the Salesforce watermark would pass "
                         "changes made after it; drop --as-of or --state", field="as_of")
    overlap = DEFAULT_OVERLAP if overlap is None else overlap
    sobject = src.ref.sobject
    conn = source.connection(src.config)
    with counting_calls(conn) as calls:
        now = org_time(conn)
        w, why = usable_watermark(since, sobject, req.where, now)
        if w is None:
            return _whole(src, req, now, why, calls, {})
        got = poll_changes(conn, sobject, w, end=now, overlap=overlap)
        if isinstance(got, FullPullNeeded):
            return _whole(src, req, now, got.reason, calls, {"full_pull_code": got.code, "since": _iso(got.since)})
        declared = source.describe_columns(src.ref, src.config)
        id_name = next((c for c in req.columns if c.lower() == "id"), None)
        cols = list(req.columns) + ([] if id_name else ["Id"])
        ext = source.extract(src.ref, src.config, cols, req.where, key_columns=req.key_columns,
                             modified_since=got.start, expected_rows=len(got.updated))
        frame = ext.frame
        read_ids = set(frame.get_column("Id").to_list())
        gone = sorted((set(got.updated) | set(got.deleted)) - read_ids)
        keys = _key_names(req.key_columns or ["Id"], frame.columns)
        deleted = _deleted_keys(src, conn, gone, keys, declared)
        deleted = deleted.join(frame.select(keys), on=keys, how="anti")
        if id_name is None:
            frame = frame.drop("Id")
        where = source.check_condition(req.where, sobject, source.describe(src.ref, src.config)["fields"]) \
            if req.where is not None else None
        count_soql = f"SELECT COUNT() FROM {sobject}" + (f" WHERE ({where})" if where else "")
        rows_now = int(source._call(conn, lambda: conn.sf.query(count_soql), "a COUNT() query")["totalSize"])
        meta = {k: v for k, v in ext.meta.items() if k not in ("rows", "extract_s")}
        meta.update(api_calls=calls[0], poll_calls=got.calls, rows_reread=frame.height,
                    updated_ids=len(got.updated), deleted_ids=len(got.deleted), gone_from_condition=len(
                        set(got.updated) - read_ids), window_start=_iso(got.start), window_end=_iso(got.watermark),
                    reread="bulk" if ext.meta.get("bulk_job_ids") else "rest", count_soql=count_soql)
    return SideChanges(mode="changes", frame=frame, columns={n: ext.columns[n] for n in frame.columns},
                       watermark=_watermark(got.watermark, sobject, req.where), deleted=deleted, rows_now=rows_now,
                       meta=meta)


def _watermark(t: datetime, sobject: str, where: str | None) -> dict[str, Any]:
    return {COVERED: _iso(t), "sobject": sobject, "where": where}


def _whole(src: Any, req: ReadRequest, now: datetime, reason: str, calls: list[int],
           extra: dict[str, Any]) -> SideChanges:
    """The side read as :meth:`read` reads it (the whole object: no key range), its watermark the
    org's clock taken before the read."""
    ext = src.read(replace(req, key_range=None, key_fields=()))
    meta = dict(ext.meta)
    meta.update(extra, api_calls=calls[0], rows_reread=ext.frame.height, reason=reason)
    return SideChanges(mode="whole", frame=ext.frame, columns=ext.columns,
                       watermark=_watermark(now, src.ref.sobject, req.where), deleted=None,
                       rows_now=ext.frame.height, reason=reason, meta=meta)


def _key_names(keys: list[str], columns: list[str]) -> list[str]:
    """The key columns as the frame spells them (describe's case)."""
    lower = {c.lower(): c for c in columns}
    missing = [k for k in keys if k.lower() not in lower]
    if missing:
        raise UsageError(f"the key column {missing[0]!r} is not among the columns read", field="key")
    return [lower[k.lower()] for k in keys]


def _deleted_keys(src: Any, conn: Any, ids: list[str], keys: list[str], declared: dict[str, Any]) -> pl.DataFrame:
    """The keys of the records ``ids`` (deleted, or no longer under the condition), typed as the
    re-read types them: the Ids themselves when the key is the Id, else read by one queryAll per
    chunk of Ids (deleted records included)."""
    from engine.connectors.salesforce import source
    from engine.connectors.salesforce.soql import id_list

    types = {k: source._arrow_type(declared[k]) for k in keys}
    if keys == ["Id"] or not ids:
        got = pa.table({k: pa.array(ids if k == "Id" else [None] * len(ids), pa.string()) for k in keys})
        table = source._cast_strings(got, types) if ids else pa.table({k: pa.array([], types[k]) for k in keys})
    else:
        per = source.id_chunk(src.config)
        names = ["Id"] + [k for k in keys if k != "Id"]
        parts = []
        for i in range(0, len(ids), per):
            soql = f"SELECT {', '.join(names)} FROM {src.ref.sobject} WHERE Id IN ({id_list(ids[i:i + per])})"
            recs = source._call(conn, lambda q=soql: conn.sf.query_all(q, include_deleted=True),
                                "the deleted records' keys (queryAll)")["records"]
            parts.append(pa.table({k: pa.array([None if r.get(k) is None else str(r[k]) for r in recs], pa.string())
                                   for k in keys}))
        table = source._cast_strings(pa.concat_tables(parts), types)
    frame = pl.from_arrow(table.select(keys))
    assert isinstance(frame, pl.DataFrame)
    return frame
