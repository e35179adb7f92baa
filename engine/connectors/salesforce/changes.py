"""Which records of an sObject changed since a watermark: Salesforce's getUpdated and getDeleted
(`sobjects/X/updated|deleted/?start=…&end=…`) through simple-salesforce (`sf.Account.updated(start,
end)`, `sf.Account.deleted(start, end)`), for incremental runs.

The rules this client relies on, and why it does what it does:

* **Minute granularity.** Salesforce ignores the seconds of `start` and `end`; the window polled is
  whole minutes, from the watermark minus an overlap (default one minute) truncated to the minute.
* **latestDateCovered is the next watermark.** It is at most `end` and at most the org's clock, and
  Salesforce keeps it before changes still being committed; the next poll starts there (less the
  overlap), so a change committed late is not lost. When the two calls cover different times, the
  earlier one is the watermark. The overlap re-reports some ids: re-reading an unchanged record is
  harmless, losing one is not.
* **Deduplication.** Ids are distinct and sorted (byte order). An id reported both updated and
  deleted in the window (deleted then undeleted, or changed then deleted) is in ``updated`` only:
  the caller re-reads it, and the re-read tells which is true now.
* **The 30-day window.** A start older than 30 days (or, for deletions, before the delete log's
  horizon) is INVALID_REPLICATION_DATE: the changes cannot be known, and the result is
  :class:`FullPullNeeded`, not an error.
* **The id cap.** More than 600,000 ids in one call is EXCEEDED_ID_LIMIT: the window is halved (in
  whole minutes) and walked forward, each part starting at the previous part's latestDateCovered;
  when one minute alone is over the cap, the result is :class:`FullPullNeeded`.
* **Whose clock.** The window ends at the org's time (the `Date` header Salesforce sends), not
  this machine's: a skewed local clock would otherwise stall the watermark or ask too far.
* **Ids.** Every id returned is checked with the one id rule (:mod:`engine.core.sfid`) and given its
  18-character form; a malformed one stops the poll (exit 2).

Hard deletes appear in neither list: only a periodic full comparison of Id sets notices them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import polars as pl

from engine.connectors.salesforce.client import SalesforceError
from engine.core import sfid
from engine.core.errors import UsageError

GRANULE = timedelta(minutes=1)
DEFAULT_OVERLAP = timedelta(minutes=1)
#: error codes that mean "these changes cannot be listed": the caller must read the object whole
REPLICATION_CODES = frozenset({"INVALID_REPLICATION_DATE", "EXCEEDED_ID_LIMIT"})
_SOBJECT = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")


@dataclass(frozen=True)
class Changes:
    """The records that changed in [start, watermark): ``updated`` (created or changed: re-read
    them) and ``deleted`` (gone to the Recycle Bin), distinct, sorted, 18-character ids."""

    updated: tuple[str, ...]
    deleted: tuple[str, ...]
    start: datetime  # the window's first minute
    watermark: datetime  # pass it as `since` next time (Salesforce's latestDateCovered)
    calls: int  # API calls made (each counts against the org's daily limit)


@dataclass(frozen=True)
class FullPullNeeded:
    """Salesforce cannot list the changes since ``since``: read the object whole. ``code`` is
    Salesforce's (INVALID_REPLICATION_DATE: past the 30-day window or the delete log's horizon;
    EXCEEDED_ID_LIMIT: more than the id cap in one minute), ``reason`` a sentence for the run's
    output."""

    since: datetime
    code: str
    reason: str
    calls: int


@dataclass(frozen=True)
class _Refused:
    code: str
    message: str


def floor_minute(t: datetime) -> datetime:
    """``t`` in UTC with its seconds dropped (naive means UTC), as Salesforce reads these dates."""
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return t.replace(second=0, microsecond=0)


def _parse(text: Any) -> datetime:
    s = str(text).strip().replace("Z", "+00:00")
    s = re.sub(r"([+-]\d{2})(\d{2})$", r"\1:\2", s)
    t = datetime.fromisoformat(s)
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _ids(values: list[Any], sobject: str, kind: str) -> list[str]:
    """Salesforce's ids in their 18-character form, each checked by the one id rule."""
    col = pl.Series("id", [v if isinstance(v, str) else None for v in values], dtype=pl.Utf8)
    ok = sfid.are_valid(col)
    if not ok.all():
        bad = values[int(ok.argmin())]
        raise SalesforceError(f"Salesforce's {kind} list for {sobject} holds {str(bad)[:40]!r}, which is not a "
                              "Salesforce record id: the change poll stops (nothing is read from it)")
    return list(sfid.with_suffixes(col).to_list())


def org_time(conn: Any) -> datetime:
    """The org's clock, from the `Date` header of `GET /services/data/` (the versions list: no
    session needed, no API call counted); this machine's clock when the header is missing. The
    poll asks Salesforce up to its own time, so a skew between this machine and the org neither
    stalls the watermark nor asks about times the org has not reached."""
    resp = conn.request("GET", "/services/data/", what="the org's clock (Date header of the versions list)")
    try:
        t = parsedate_to_datetime(resp.headers["Date"])
    except (KeyError, TypeError, ValueError):
        return datetime.now(UTC)
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def poll_changes(conn: Any, sobject: str, since: datetime, *, end: datetime | None = None,
                 overlap: timedelta = DEFAULT_OVERLAP) -> Changes | FullPullNeeded:
    """The ids of ``sobject`` created, changed or deleted since the watermark ``since``.

    ``conn``: a :class:`~engine.connectors.salesforce.client.SalesforceConnection`. ``end``: the
    latest time asked about (default: the org's clock, :func:`org_time`; Salesforce never covers
    past it anyway). Calls run under recon's retry policy; refusals other than the two
    replication codes raise as for any Salesforce call.
    """
    if not _SOBJECT.match(sobject):
        raise UsageError(f"{sobject!r} is not an sObject name")
    if overlap < timedelta(0):
        raise UsageError("the change poll's overlap cannot be negative")
    since = since.replace(tzinfo=UTC) if since.tzinfo is None else since.astimezone(UTC)
    start = floor_minute(since - overlap)
    stop = floor_minute(end if end is not None else org_time(conn))
    calls = 0
    found: dict[str, list[str]] = {}
    covered: list[datetime] = []
    for kind in ("updated", "deleted"):
        cur, span, ids = start, stop - start, []
        while cur < stop:
            e = min(stop, cur + span)
            body = _fetch(conn, sobject, kind, cur, e)
            calls += 1
            if isinstance(body, _Refused):
                if body.code == "EXCEEDED_ID_LIMIT" and e - cur > GRANULE:
                    span = max(GRANULE, (e - cur) // 2 // GRANULE * GRANULE)
                    continue
                return FullPullNeeded(since, body.code, f"Salesforce cannot list the {sobject} changes since "
                                      f"{since.isoformat()} ({body.code}: {body.message}): a full read is needed",
                                      calls)
            if kind == "updated":
                ids += _ids(list(body.get("ids") or []), sobject, kind)
            else:
                ids += _ids([r.get("id") for r in body.get("deletedRecords") or []], sobject, kind)
            got = min(_parse(body["latestDateCovered"]), e)  # never trust a cover past what was asked
            if got <= cur:
                break
            cur = got
            if got < e:  # Salesforce stopped short (its clock, or changes still being committed)
                break
        found[kind] = ids
        covered.append(cur)
    updated, deleted = merge(found["updated"], found["deleted"])
    return Changes(updated, deleted, start, max(since, min(covered)), calls)


def merge(updated: list[str], deleted: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Distinct, sorted ids; one reported both updated and deleted is in ``updated`` only (its
    re-read tells whether it exists now: it may have been undeleted, or deleted after a change)."""
    up = sorted(set(updated))
    return tuple(up), tuple(sorted(set(deleted) - set(up)))


def _fetch(conn: Any, sobject: str, kind: str, start: datetime, end: datetime) -> dict[str, Any] | _Refused:
    """One getUpdated/getDeleted call under the retry policy; the replication refusals come back as
    values (they decide a full read), every other refusal raises."""
    from simple_salesforce.exceptions import SalesforceMalformedRequest

    from engine.connectors.salesforce.source import _call

    api = getattr(conn.sf, sobject)

    def once() -> dict[str, Any] | _Refused:
        try:
            out = api.updated(start, end) if kind == "updated" else api.deleted(start, end)
        except SalesforceMalformedRequest as exc:
            body = exc.content
            if isinstance(body, list) and body and isinstance(body[0], dict):
                code = str(body[0].get("errorCode", ""))
                if code in REPLICATION_CODES:
                    return _Refused(code, " ".join(str(body[0].get("message", "")).split()))
            raise
        if not isinstance(out, dict) or "latestDateCovered" not in out:
            raise SalesforceError(f"Salesforce's get{kind.capitalize()} answer for {sobject} has no latestDateCovered")
        return out

    return _call(conn, once, f"get{kind.capitalize()} of {sobject} from {start.isoformat()} to {end.isoformat()}")  # type: ignore[no-any-return]
