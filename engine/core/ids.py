"""Deterministic event ids: the same business event always gets the same id, however often it is delivered.

The id is a UUIDv5 in recon's own namespace over a length-prefixed name, so that no two different
field tuples can spell the same name (``"ab" + "c"`` vs ``"a" + "bc"``):

    namespace = uuid5(NAMESPACE_URL, "urn:recon:event:v1")
    name      = for each field in (org_id, record_id, event_type, event_time):
                    ASCII decimal byte length of the UTF-8 field, ":", the UTF-8 bytes
    event_id  = uuid5(namespace, name)

Fields are canonicalised first: Salesforce ids in their 18-character form (a 15-character id and
its 18-character form are the same record), event time in UTC at millisecond precision as
``YYYY-MM-DDTHH:MM:SS.mmmZ`` (truncated, never rounded, the same way everywhere). Kafka's own
timestamps are never part of the id: two copies of a duplicate carry different LogAppendTimes.

Layout version 1 is frozen: changing it would make old ledgers unverifiable. A new layout gets a new
namespace (``urn:recon:event:v2``). Published test vectors live in ``tests/unit/test_ids.py``.

>>> event_id("00D5g0000000001EAA", "0015g0000000001AAA", "purchase", "2026-08-01T10:00:00.123Z")
'983e2908-4d48-5f72-aebb-29619c55b973'
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import polars as pl

from engine.core.sfid import to18, to18_or_none

LAYOUT_VERSION = 1
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:recon:event:v1")
_NS_BYTES = NAMESPACE.bytes
# ASCII digits only: \d would also accept other scripts' digits, which no database parses as a time
_CANON_TS = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$")


def canonical_time(value: str | datetime) -> str:
    """UTC, millisecond precision (truncated), ``YYYY-MM-DDTHH:MM:SS.mmmZ``.

    Naive datetimes and offset-less strings are taken as UTC, because that is what Salesforce and
    the event producers write.
    """
    if isinstance(value, str):
        if _CANON_TS.match(value):
            return value
        text = value.strip().replace(" ", "T")
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        m = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", text)
        if m and m.group(2) and len(m.group(2)) > 7:  # fromisoformat takes at most 6 fraction digits
            text = m.group(1) + m.group(2)[:7] + m.group(3)
        if re.search(r"[+-]\d{4}$", text):  # Salesforce REST writes +0000
            text = text[:-2] + ":" + text[-2:]
        try:
            value = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"not an ISO-8601 time: {value!r}") from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _name(fields: Iterable[str]) -> bytes:
    parts = []
    for f in fields:
        b = f.encode("utf-8")
        parts.append(str(len(b)).encode("ascii") + b":" + b)
    return b"".join(parts)


def event_id(org_id: str, record_id: str, event_type: str, event_time: str | datetime) -> str:
    """The deterministic id (canonical UUID string) of one business event.

    Raises ValueError on a malformed Salesforce id or time, so callers can dead-letter the event.
    """
    if not event_type:
        raise ValueError("event type is empty")
    name = _name((to18(org_id), to18(record_id), event_type, canonical_time(event_time)))
    return str(uuid.UUID(bytes=_uuid5_bytes(name)))


def _uuid5_bytes(name: bytes) -> bytes:
    digest = bytearray(hashlib.sha1(_NS_BYTES + name).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    return bytes(digest)


_VARIANT = "89ab89ab89ab89ab"  # RFC 9562 variant bits over the digest's high nibble of byte 8


def event_ids(
    org_ids: Sequence[str], record_ids: Sequence[str], event_types: Sequence[str], event_times: Sequence[str]
) -> list[str | None]:
    """Batch form of :func:`event_id`; an element is None where its fields are invalid.

    One tight loop over hashlib (C), formatting the UUID from the hex digest directly (no UUID
    objects); there is no vectorised SHA-1 in Arrow or Polars to push this into.
    """
    out: list[str | None] = []
    append = out.append
    sha1 = hashlib.sha1
    match = _CANON_TS.match
    for org, rec, typ, ts in zip(org_ids, record_ids, event_types, event_times, strict=True):
        o = to18_or_none(org)
        r = to18_or_none(rec)
        if o is None or r is None or not typ or ts is None:
            append(None)
            continue
        try:
            t = ts if match(ts) else canonical_time(ts)
        except (ValueError, TypeError):
            append(None)
            continue
        h = sha1(_NS_BYTES + _name((o, r, typ, t))).hexdigest()
        append(f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[int(h[16], 16)]}{h[17:20]}-{h[20:32]}")
    return out


def name_expr(org_id: str, record_id: str, event_type: str, event_time: str) -> pl.Expr:
    """The v1 name (the exact bytes hashed by :func:`event_id`) as a Polars expression over columns
    that are already canonical (18-character ids, canonical time, non-empty type).

    Grouping on the name is grouping on the event id, without a per-row SHA-1: the UUID itself is
    computed only for the rows a report shows. ``tests/unit/test_ids.py`` checks it byte for byte
    against :func:`_name`.
    """
    parts: list[pl.Expr] = []
    for c in (org_id, record_id, event_type, event_time):
        col = pl.col(c)
        parts += [col.str.len_bytes().cast(pl.Utf8), pl.lit(":"), col]
    return pl.concat_str(parts)


def canonical_times(times: pl.Series) -> pl.Series:
    """Vectorised :func:`canonical_time`: canonical strings pass as they are, others go through the
    reference parser one by one (rare), invalid ones become null."""
    ok = times.str.contains(_CANON_TS.pattern).fill_null(False)
    if bool(ok.all()):
        return times
    bad_idx = (~ok & times.is_not_null()).arg_true()
    fixed = []
    for v in times.gather(bad_idx).to_list():
        try:
            fixed.append(canonical_time(v))
        except (ValueError, TypeError):
            fixed.append(None)
    out = times.set(~ok, None)
    return out.scatter(bad_idx, pl.Series(fixed, dtype=pl.Utf8)) if len(bad_idx) else out
