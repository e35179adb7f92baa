"""The pure transformation: Kafka messages in, event rows (COPY text) and dead letters out.

Owns :func:`transform` with its two paths (per message, and the column-wise :func:`_fast_rows` for
messages in the producers' shape), the SQL texts that build the stored row, and
:func:`transform_digest`, the hash of all of it recorded in every event's lineage. No I/O: it is
unit-tested without services.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import inspect
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import numpy as np
import polars as pl

from engine.connectors.kafka.consumer.batch import _ROW_SCHEMA, Batch, DeadLetter
from engine.connectors.kafka.consumer.settings import (
    _MAX_EVENT_TYPE_LEN,
    _TS_TYPE_NAMES,
    DEFAULT_API_VERSION,
    FieldNames,
)
from engine.connectors.kafka.consumer.values import (
    _AMOUNT,
    _CANON_TS,
    _canonical_ts,
    _clean_text,
    _copy_text,
    _detail,
    _encodable,
    _event_type_copy,
    _headers_json,
    _json_fragment,
    _parse,
)
from engine.core.events import JsonNumber, json_type
from engine.core.ids import NAMESPACE, event_ids, name_expr
from engine.core.sfid import are_valid, to18_or_none

#: Off only in tests, which compare the vectorised path with the per-message one row for row.
_FAST_PATH: bool = True


def transform(messages: Iterable[Any], fields: FieldNames, org_guard: str | None,
              positions: Mapping[int, int | None] | None = None, api_version: str = DEFAULT_API_VERSION) -> Batch:
    """Turn consumed messages into COPY rows of the events table, and dead letters.

    Pure and deterministic: the same messages always give the same rows, which is what makes a
    replay land on the same event ids. ``org_guard`` is the 18-character org id whose events are
    accepted (None: any org). Messages carrying errors are partition-EOF events (recorded in
    ``eof``) or client errors (in ``errors``, for the caller to judge).

    ``positions`` (partition → next offset this consumer has read up to, None or absent for the
    partition's beginning) becomes the batch's ``start``. Messages below it, and repeats of an
    offset within the batch, are dropped: around a rebalance librdkafka can hand out messages
    prefetched for the previous assignment next to the re-fetched ones, and an offset must be
    counted once. Offsets only grow within a partition, so this never drops a new message.

    Two paths give the same rows. Messages in the shape producers write (compact JSON with the
    five fields in order, plain ASCII values, the org-id/producer-id/sequence headers) go through
    :func:`_fast_rows`, column-wise: per message only the Kafka accessors and SHA-1 run in Python.
    Every other message takes the per-message path below, which decides dead letters. The
    lineage JSON of each row is written here, as text, rather than by ``jsonb_build_object`` in
    the insert: PostgreSQL spent about 5 µs per row on that.
    """
    b = Batch()
    kept, kparts, koffs = _positions(messages, b, positions)
    tails_by_topic: dict[str, str] = {}
    api = json.dumps(api_version.lstrip("vV"))
    digest = transform_digest()
    fast: pl.DataFrame | None = None
    slow: Iterable[int] = range(len(kept))
    if _FAST_PATH and kept:
        fast, slow = _fast_rows(kept, kparts, koffs, fields, org_guard, api, digest)
    f_org, f_rec, f_typ, f_ts, f_amt = (fields.org_id, fields.record_id, fields.event_type,
                                        fields.event_time, fields.amount)
    parse = _parse
    id18 = to18_or_none
    canon_match = _CANON_TS.fullmatch
    amount_match = _AMOUNT.fullmatch
    event_type_copy = _event_type_copy
    orgs: list[str] = []
    recs: list[str] = []
    typs: list[str] = []
    tss: list[str] = []
    amts: list[str] = []
    tails: list[str] = []
    parts: list[int] = []
    idx: list[int] = []
    frag = _json_fragment
    dead = b.dead

    for i in slow:
        m, p, off = kept[i], kparts[i], koffs[i]
        value = m.value()
        reason = detail = ""
        try:
            d = parse(value) if value is not None else None
        except (ValueError, TypeError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            d = None
            reason, detail = "unparsable", _detail(f"not JSON: {exc}")
        if type(d) is not dict:
            if not reason:
                reason = "unparsable"
                detail = "no value (tombstone)" if value is None else f"JSON {json_type(d)}, not an object"
        else:
            org, rec, typ, ts, amt = (d.get(f_org), d.get(f_rec), d.get(f_typ), d.get(f_ts), d.get(f_amt))
            if org is None or rec is None or typ is None or ts is None or amt is None:
                missing = [n for n, v in ((f_org, org), (f_rec, rec), (f_typ, typ), (f_ts, ts), (f_amt, amt))
                           if v is None]
                reason, detail = "missing_field", "missing or null: " + ", ".join(missing)
            elif (org18 := id18(org)) is None:
                reason, detail = "invalid_org_id", _detail(f"{f_org} {org!r} is not a Salesforce id")
            elif org_guard is not None and org18 != org_guard:
                reason, detail = "foreign_org", f"{f_org} {org18} is not {org_guard}"
            elif (rec18 := id18(rec)) is None:
                reason, detail = "invalid_record_id", _detail(f"{f_rec} {rec!r} is not a Salesforce id")
            elif (typ_c := event_type_copy(typ)) is None:
                reason, detail = "invalid_event_type", _detail(f"{f_typ} {typ!r} is not a non-empty text "
                                                               f"of at most {_MAX_EVENT_TYPE_LEN} characters")
            elif (ts_c := ts if type(ts) is str and canon_match(ts) and ts.isascii()
                  else _canonical_ts(ts, canon_match)) is None:
                reason, detail = "invalid_event_time", _detail(f"{f_ts} {ts!r} is not an ISO-8601 time")
            else:
                if type(amt) is JsonNumber:  # an unquoted number: its exact text (engine.core.events)
                    amt = str(amt)
                if type(amt) is not str or amount_match(amt) is None:
                    reason, detail = "invalid_amount", _detail(f"{f_amt} {amt!r} is not a decimal number")
                else:
                    h_org = h_pid = h_seq = None  # JSON string literals of the known headers
                    extra = None
                    hdrs = m.headers()
                    if hdrs:
                        for hk, hv in hdrs:
                            if hk == "org-id":
                                h_org = frag(hv)
                            elif hk == "producer-id":
                                h_pid = frag(hv)
                            elif hk == "sequence":
                                h_seq = f'"{hv.decode("ascii")}"' if hv is not None and hv.isdigit() else frag(hv)
                            else:
                                if extra is None:
                                    extra = {}
                                t = _clean_text(hv)
                                extra[hk.replace("\x00", "\\u0000")] = (
                                    t if t is not None or hv is None
                                    else {"base64": base64.b64encode(hv).decode("ascii")})
                    if (org_guard is not None and h_org is not None
                            and id18(h_org_raw := json.loads(h_org.replace("\\\\", "\\"))) not in (None, org_guard)):
                        reason, detail = "foreign_org", _detail(f"header org-id {h_org_raw!r} is not {org_guard}")
                    else:
                        # lineage: JSON text (jsonb normalises key order), one COPY field
                        if extra is None:
                            if h_org is not None and h_pid is not None and h_seq is not None:
                                hj = f'{{"org-id":{h_org},"producer-id":{h_pid},"sequence":{h_seq}}}'
                            else:
                                hj = "{" + ",".join(f'"{n}":{v}' for n, v in (("org-id", h_org), ("producer-id", h_pid),
                                                                              ("sequence", h_seq)) if v is not None) + "}"
                        else:
                            extra.update({n: json.loads(v.replace("\\\\", "\\")) for n, v in (
                                ("org-id", h_org), ("producer-id", h_pid), ("sequence", h_seq)) if v is not None})
                            hj = json.dumps(extra, ensure_ascii=True, sort_keys=True).replace("\\", "\\\\")
                        ts_type, ts_ms = m.timestamp()
                        key = m.key()
                        if key is None:
                            kj = ""
                        elif (kf := frag(key)) is not None:
                            kj = ',"key":' + kf
                        else:
                            kj = f',"key_base64":"{base64.b64encode(key).decode("ascii")}"'
                        tail = tails_by_topic.get(topic := m.topic())
                        if tail is None:
                            tail = tails_by_topic[topic] = _lineage_tail(topic, api, digest)
                        lineage = (f'{{"partition":{p},"offset":{off},"timestamp":{ts_ms},"timestamp_type":'
                                   f'"{_TS_TYPE_NAMES[ts_type]}"{kj},"headers":{hj}{tail}' if ts_type in (1, 2) else
                                   f'{{"partition":{p},"offset":{off},"timestamp_type":"NotAvailable"'
                                   f'{kj},"headers":{hj}{tail}')
                        orgs.append(org18)
                        recs.append(rec18)
                        typs.append(typ)
                        tss.append(ts_c)
                        amts.append(amt)
                        parts.append(p)
                        idx.append(i)
                        tails.append(f"\t{org18}\t{rec18}\t{typ_c}\t{ts_c}\t{amt}\t{lineage}\n")
                        continue
        ts_type, ts_ms = m.timestamp()
        dead.append(DeadLetter(p, off, ts_ms if ts_type else None, _TS_TYPE_NAMES.get(ts_type, "NotAvailable"),
                               m.key(), value, _headers_json(m.headers()), reason, detail))

    ids = event_ids(orgs, recs, typs, tss) if orgs else []
    # every field was validated above, so no id can be None; a None here is a bug, never a dead letter
    if None in ids:  # pragma: no cover - defensive
        raise RuntimeError("event_ids rejected a validated event")
    frame = pl.DataFrame({"idx": idx, "id": ids, "line": [e + t for e, t in zip(ids, tails, strict=True)],  # type: ignore[operator]
                          "part": parts, "rec": recs, "amt": amts, "ts": tss},
                         schema={"idx": pl.Int64, **_ROW_SCHEMA})
    if fast is not None and fast.height:
        frame = fast if not idx else pl.concat([fast, frame]).sort("idx")
    b.row_msgs = kept if frame.height == len(kept) else [kept[i] for i in frame.get_column("idx").to_list()]
    b.frame = frame.drop("idx")
    return b


def _lineage_tail(topic: str, api: str, digest: str) -> str:
    """The end of every lineage JSON of a topic: the fields that do not vary per message."""
    return f',"topic":{json.dumps(topic)},"api_version":{api},"transform_digest":"{digest}","event_id_layout":1}}'


def _positions(messages: Iterable[Any], b: Batch,
               positions: Mapping[int, int | None] | None) -> tuple[list[Any], list[int], list[int]]:
    """The messages to transform, with their partitions and offsets; fills the batch's ``eof``,
    ``errors``, ``consumed``, ``start`` and ``next_offset`` (see :func:`transform`).

    The usual batch (no error events, offsets increasing within each partition from where the
    consumer stands) is recognised with a few list and numpy operations; anything else is
    walked message by message.
    """
    msgs = messages if isinstance(messages, list) else list(messages)
    pos_in = positions or {}
    consumed, start, nxt, eof = b.consumed, b.start, b.next_offset, b.eof
    # not ``errors.count(None)``: KafkaError's == raises on None
    if msgs and set(map(type, [m.error() for m in msgs])) == {type(None)}:
        parts = [m.partition() for m in msgs]
        offs = [m.offset() for m in msgs]
        pa, oa = np.asarray(parts, dtype=np.int64), np.asarray(offs, dtype=np.int64)
        ok = True
        per: list[tuple[int, int, int]] = []
        for p in dict.fromkeys(parts):
            o = oa[pa == p]
            lo = pos_in.get(p)
            if (lo is not None and int(o[0]) < lo) or (len(o) > 1 and not bool((o[1:] > o[:-1]).all())):
                ok = False
                break
            per.append((p, len(o), int(o[-1]) + 1))
        if ok:
            for p, n, after in per:
                eof[p] = False
                consumed[p] = n
                start[p] = pos_in.get(p)
                nxt[p] = after
            return msgs, parts, offs
    pos: dict[int, int] = {p: o for p, o in pos_in.items() if o is not None}
    kept: list[Any] = []
    kparts: list[int] = []
    koffs: list[int] = []
    for m in msgs:
        err = m.error()
        if err is not None:
            if err.code() == -191:  # KafkaError._PARTITION_EOF
                eof[m.partition()] = True
            else:
                b.errors.append(err)
            continue
        p = m.partition()
        off = m.offset()
        if off < pos.get(p, -1):
            continue
        pos[p] = off + 1
        eof[p] = False
        if p in consumed:
            consumed[p] += 1
        else:
            consumed[p] = 1
            start[p] = pos_in.get(p)
        nxt[p] = off + 1
        kept.append(m)
        kparts.append(p)
        koffs.append(off)
    return kept, kparts, koffs


#: JSON string content that needs no escaping, in JSON nor in COPY text: printable ASCII without
#: the quote and the backslash. A value made only of these is its own JSON literal (in quotes).
_PLAIN: Final[str] = r'[ !#-\[\]-~]'
_HEADER_NAMES: Final[tuple[str, str, str]] = ("org-id", "producer-id", "sequence")


@functools.cache
def _fast_pattern(fields: FieldNames) -> str | None:
    """The regex of a message value the column-wise path takes: a JSON object with exactly the five
    fields in order (any JSON whitespace between tokens), each a string of plain characters
    (``_PLAIN``), the ids 18 characters, the time canonical and the amount a decimal; one capture
    group per value. For such a value ``json.loads`` gives exactly the captured texts, and every
    guard of the per-message path passes except the id checksums, which are checked column-wise.
    None when a field name is not a plain identifier (or names repeat): such names need escaping
    in JSON or in the regex, and those messages take the other path."""
    names = (fields.org_id, fields.record_id, fields.event_type, fields.event_time, fields.amount)
    if len(set(names)) != 5 or not all(re.fullmatch(r"[A-Za-z0-9_]+", n) for n in names):
        return None
    values = ("[0-9A-Za-z]{18}", "[0-9A-Za-z]{18}", f"{_PLAIN}{{1,{_MAX_EVENT_TYPE_LEN}}}", _CANON_TS.pattern,
              _AMOUNT.pattern)
    ws = "[ \\t\\n\\r]*"  # JSON's whitespace, allowed around every token as json.loads does
    members = f"{ws},{ws}".join(f'"{n}"{ws}:{ws}"({v})"' for n, v in zip(names, values, strict=True))
    return f"^{ws}\\{{{ws}{members}{ws}\\}}{ws}$"


_HEX_DIGITS: Final[np.ndarray] = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _uuid_texts(digests: bytes) -> pl.Series:
    """Canonical UUIDv5 texts from concatenated 20-byte SHA-1 digests, as ``engine.core.ids`` forms
    them (first 16 bytes, version 5, RFC 9562 variant), with NumPy instead of a Python f-string
    per id."""
    d = np.frombuffer(digests, dtype=np.uint8).reshape(-1, 20)[:, :16].copy()
    d[:, 6] = (d[:, 6] & 0x0F) | 0x50
    d[:, 8] = (d[:, 8] & 0x3F) | 0x80
    hexd = np.empty((len(d), 32), dtype=np.uint8)
    hexd[:, 0::2] = _HEX_DIGITS[d >> 4]
    hexd[:, 1::2] = _HEX_DIGITS[d & 0x0F]
    out = np.full((len(d), 36), ord("-"), dtype=np.uint8)
    for src, dst in ((slice(0, 8), slice(0, 8)), (slice(8, 12), slice(9, 13)), (slice(12, 16), slice(14, 18)),
                     (slice(16, 20), slice(19, 23)), (slice(20, 32), slice(24, 36))):
        out[:, dst] = hexd[:, src]
    return pl.Series(out.view("S36").ravel()).cast(pl.String)


def _standard_headers(hdrs: list[Any]) -> tuple[list[bytes], list[bytes], list[bytes], list[bool] | None]:
    """The org-id, producer-id and sequence header values, for messages whose headers are exactly
    those three in that order (``ok``: which ones are; None when all are), b"" for the others."""
    if None not in hdrs and set(map(len, hdrs)) == {3}:  # comprehensions: 3x faster than zip(*hdrs)
        if {(h[0][0], h[1][0], h[2][0]) for h in hdrs} == {_HEADER_NAMES}:
            v0, v1, v2 = [h[0][1] for h in hdrs], [h[1][1] for h in hdrs], [h[2][1] for h in hdrs]
            if None not in v0 and None not in v1 and None not in v2:
                return v0, v1, v2, None
    h0: list[bytes] = []
    h1: list[bytes] = []
    h2: list[bytes] = []
    ok: list[bool] = []
    for h in hdrs:
        if (h is not None and len(h) == 3 and (h[0][0], h[1][0], h[2][0]) == _HEADER_NAMES
                and h[0][1] is not None and h[1][1] is not None and h[2][1] is not None):
            h0.append(h[0][1])
            h1.append(h[1][1])
            h2.append(h[2][1])
            ok.append(True)
        else:
            h0.append(b"")
            h1.append(b"")
            h2.append(b"")
            ok.append(False)
    return h0, h1, h2, ok


def _ascii_text(values: list[bytes | None], ok: np.ndarray) -> pl.Series:
    """Bytes as a text column; elements that are not ASCII become "" and are cleared in ``ok``
    (one ``isascii`` over the joined batch in the usual all-ASCII case). None stays null."""
    present = [v for v in values if v is not None] if None in values else values
    if not b"".join(present).isascii():  # type: ignore[arg-type]
        bad = [v is not None and not v.isascii() for v in values]
        ok &= ~np.asarray(bad, dtype=bool)
        values = [b"" if x else v for v, x in zip(values, bad, strict=True)]
    return pl.Series(values, dtype=pl.Binary).cast(pl.String)


def _fast_rows(kept: list[Any], parts: list[int], offs: list[int], fields: FieldNames, org_guard: str | None,
               api: str, digest: str) -> tuple[pl.DataFrame, list[int]]:
    """The rows of the messages in producer shape, built column-wise; and the indexes (into
    ``kept``) of the other messages, for the per-message path.

    A message is taken here only when the per-message path would accept it and would write
    exactly the row built here: its value matches :func:`_fast_pattern`, its ids pass the
    checksum, its org is the guard (when there is one), its headers are the three standard ones
    with plain values (the org-id header equal to the guard), its key is absent or plain, and
    the batch has one topic. ``tests/unit/test_consumer_parse.py`` compares both paths row by row.
    The event id is :func:`engine.core.ids.event_ids`'s UUIDv5, with the name built by
    :func:`engine.core.ids.name_expr` (all fields here are canonical ASCII) and one SHA-1 per row.
    """
    n = len(kept)
    pattern = _fast_pattern(fields)
    topics = {m.topic() for m in kept}
    if pattern is None or len(topics) != 1:
        return pl.DataFrame(schema={"idx": pl.Int64, **_ROW_SCHEMA}), list(range(n))
    tail = _lineage_tail(topics.pop(), api, digest)
    ok = np.ones(n, dtype=bool)
    values = [m.value() for m in kept]
    if None in values:
        ok &= np.asarray([v is not None for v in values], dtype=bool)
        values = [b"" if v is None else v for v in values]
    keys = [m.key() for m in kept]
    h_org, h_pid, h_seq, h_ok = _standard_headers([m.headers() for m in kept])
    if h_ok is not None:
        ok &= np.asarray(h_ok, dtype=bool)
    stamps = [m.timestamp() for m in kept]
    ts_types, ts_ms = [t[0] for t in stamps], [t[1] for t in stamps]
    plain = f"^{_PLAIN}*$"
    df = pl.DataFrame({
        "idx": pl.Series(range(n), dtype=pl.Int64), "v": _ascii_text(values, ok), "k": _ascii_text(keys, ok),
        "ho": _ascii_text(h_org, ok), "hp": _ascii_text(h_pid, ok), "hs": _ascii_text(h_seq, ok),  # type: ignore[arg-type]
        "tt": pl.Series(ts_types, dtype=pl.Int64), "tm": pl.Series(ts_ms, dtype=pl.Int64),
        "part": pl.Series(parts, dtype=pl.Int64), "o": pl.Series(offs, dtype=pl.Int64),
    })
    v = df.get_column("v").str.extract_groups(pattern).struct  # null fields where it does not match
    df = df.with_columns(org=v.field("1"), rec=v.field("2"), typ=v.field("3"), ts=v.field("4"), amt=v.field("5"))
    good = (pl.col("org").is_not_null() & pl.col("ho").str.contains(plain) & pl.col("hp").str.contains(plain)
            & pl.col("hs").str.contains(plain) & (pl.col("k").is_null() | pl.col("k").str.contains(plain)))
    if org_guard is not None:
        good = good & (pl.col("ho") == org_guard)
    ok &= df.select(good).to_series().fill_null(False).to_numpy()
    for col in ("org", "rec"):  # the checksums (a row that did not match the pattern has null ids: False)
        ok &= are_valid(df.get_column(col))
    if org_guard is not None:
        ok &= (df.get_column("org") == org_guard).fill_null(False).to_numpy()
    slow = np.flatnonzero(~ok).tolist()
    if slow:
        df = df.filter(pl.Series(ok))
    if not df.height:
        return pl.DataFrame(schema={"idx": pl.Int64, **_ROW_SCHEMA}), slow
    ns, sha1 = NAMESPACE.bytes, hashlib.sha1
    names = df.select(name_expr("org", "rec", "typ", "ts").cast(pl.Binary)).to_series().to_list()
    ids = _uuid_texts(b"".join([sha1(ns + x).digest() for x in names]))
    tt = pl.col("tt")
    stamp = (pl.when(tt == 1).then(pl.concat_str([pl.lit(',"timestamp":'), pl.col("tm").cast(pl.String),
                                                 pl.lit(',"timestamp_type":"CreateTime"')]))
             .when(tt == 2).then(pl.concat_str([pl.lit(',"timestamp":'), pl.col("tm").cast(pl.String),
                                               pl.lit(',"timestamp_type":"LogAppendTime"')]))
             .otherwise(pl.lit(',"timestamp_type":"NotAvailable"')))
    key = pl.when(pl.col("k").is_null()).then(pl.lit("")).otherwise(pl.concat_str([pl.lit(',"key":"'), pl.col("k"),
                                                                                   pl.lit('"')]))
    lineage = pl.concat_str([pl.lit('{"partition":'), pl.col("part").cast(pl.String), pl.lit(',"offset":'),
                             pl.col("o").cast(pl.String), stamp, key, pl.lit(',"headers":{"org-id":"'), pl.col("ho"),
                             pl.lit('","producer-id":"'), pl.col("hp"), pl.lit('","sequence":"'), pl.col("hs"),
                             pl.lit('"}' + tail)])
    tab = pl.lit("\t")
    return (df.with_columns(id=ids)
            .select("idx", "id", pl.concat_str([pl.col("id"), tab, pl.col("org"), tab, pl.col("rec"), tab, pl.col("typ"),
                                               tab, pl.col("ts"), tab, pl.col("amt"), tab, lineage, pl.lit("\n")]).alias("line"),
                    "part", "rec", "amt", "ts")), slow


# ---------------------------------------------------------------------------------------------
# SQL


def _sql_texts() -> dict[str, str]:
    """Statement templates (``{events}`` etc. are filled with quoted identifiers).

    Kept in one place because they are part of the transformation: their text is hashed into the
    lineage digest together with :func:`transform` and ``engine/core/ids.py``.

    Why not ``INSERT … ON CONFLICT DO NOTHING`` from a staging table: measured on the embedded
    PostgreSQL (backend CPU per event, 100k events), staging + insert-select took 11.3 µs and the
    probe + direct COPY below 10.2 µs, the aggregates being 4 of those in both; a single
    statement (staging, insert-select ``RETURNING`` feeding the aggregates in a CTE) was still
    1 µs above the probe. The probe itself costs 1.3–2 µs per event, hence the optimistic COPY
    of :meth:`Sink.write`, which skips it unless the primary key finds a stored id. The key also
    guards the race a probe cannot see (another transaction inserting the same event id right
    now): the COPY then fails with a unique violation and the whole batch is retried.
    """
    return {
        "existing": "SELECT event_id::text FROM {events} WHERE event_id = ANY(%s::uuid[])",
        "copy": "COPY {events} (event_id, org_id, record_id, event_type, event_ts, amount, lineage) FROM STDIN",
        # the payload outside the event id, canonical (numerically equal amounts hash alike),
        # computed by PostgreSQL (a generated column: no Python per row); the numeric's text is
        # ASCII without backslashes, which ::bytea takes byte for byte (convert_to is not
        # IMMUTABLE, so a generated column cannot use it)
        "payload_digest": "sha256(trim_scale({amount})::text::bytea)",
        "aggregate": """
            INSERT INTO {aggregates} AS a (record_id, {total}, event_count, last_event_ts, updated_at)
            SELECT r, sum(am), count(*), max(ts), now()
            FROM unnest(%s::text[], %s::numeric[], %s::timestamptz[]) AS x(r, am, ts)
            GROUP BY r ORDER BY r
            ON CONFLICT (record_id) DO UPDATE SET
                {total} = a.{total} + EXCLUDED.{total},
                event_count = a.event_count + EXCLUDED.event_count,
                last_event_ts = greatest(a.last_event_ts, EXCLUDED.last_event_ts),
                updated_at = EXCLUDED.updated_at""",
    }


@functools.cache
def transform_digest() -> str:
    """``sha256:<hex>`` of the code that turns a Kafka message into a row.

    Covers ``engine/core/ids.py``, ``engine/core/sfid.py`` and ``engine/core/events.py`` (the event
    id and its canonicalisation, the Salesforce id checks of both paths, and the one definition of
    a valid event: strict JSON, the amount and time rules), the source of :func:`transform` and its helpers,
    and the SQL that builds the stored row. Computed once per process; a changed digest in the
    lineage means rows were produced by different code.
    """
    from engine.core import events, ids, sfid

    h = hashlib.sha256()
    parts = [inspect.getsource(ids), inspect.getsource(sfid), inspect.getsource(events)]
    parts += [inspect.getsource(fn) for fn in (transform, _parse, _canonical_ts, _clean_text, _copy_text, _encodable,
                                               _json_fragment, _event_type_copy, _lineage_tail, _positions,
                                               _fast_pattern, _uuid_texts, _standard_headers, _ascii_text,
                                               _fast_rows)]
    parts += [f"{_AMOUNT.pattern}|{_CANON_TS.pattern}|{_MAX_EVENT_TYPE_LEN}|{_PLAIN}"]
    parts += [v for _, v in sorted(_sql_texts().items())]
    for part in parts:
        b = part.encode("utf-8")
        h.update(str(len(b)).encode() + b":" + b)
    return "sha256:" + h.hexdigest()
