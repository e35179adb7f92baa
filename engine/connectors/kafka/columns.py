"""Kafka messages to the scan's columns: the header values the scan keeps, the JSON values parsed
(column-wise for values in the producers' shape, strictly one by one for the others, by the one
definition of a valid event in :mod:`engine.core.events`), and the two joined into the scan's columns.

Apart from :mod:`engine.connectors.kafka.scan` because it is the same for both read loops (the
Python loop's batches and the native loop's chunks) and needs no broker: it turns bytes into
columns, the scan decides which messages to read.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from engine.core import events
from engine.core.events import EventFields

HEADERS = ("org-id", "producer-id", "sequence")
"""Header keys whose values the scan keeps (org_header, producer_id, sequence)."""


def _pick_headers(hs: list[list[tuple[str, bytes | None]] | None]) -> tuple[list[bytes | None], ...]:
    """The org-id, producer-id and sequence header values (the last one wins when a key repeats).

    A plain loop on purpose: measured on 340k messages with the collector off, it costs ≈0.12 µs
    per message, against ≈0.5 µs for converting the header lists to Arrow (list<struct>) and picking
    the keys in Polars. A batch without any headers takes the C-level path."""
    n = len(hs)
    if hs.count(None) == n:
        return [None] * n, [None] * n, [None] * n
    org: list[bytes | None] = []
    prod: list[bytes | None] = []
    seq: list[bytes | None] = []
    org_key, prod_key, seq_key = HEADERS
    for h in hs:
        o_h = pr_h = sq_h = None
        if h:
            for hk, hv in h:
                if hk == org_key:
                    o_h = hv
                elif hk == prod_key:
                    pr_h = hv
                elif hk == seq_key:
                    sq_h = hv
        org.append(o_h)
        prod.append(pr_h)
        seq.append(sq_h)
    return org, prod, seq


def _text(col: pl.Series) -> pl.Series:
    """Bytes as text, decoded column-wise (invalid UTF-8 becomes null, never an error)."""
    return col.cast(pl.Utf8, strict=False)


def _joined(base: pa.Table | pa.RecordBatch, parsed: pl.DataFrame) -> pl.DataFrame:
    """The scan's columns from the Arrow base columns and the parsed values (same rows, same order)."""
    b = pl.from_arrow(base)
    assert isinstance(b, pl.DataFrame)
    b = b.select(
        "partition", "offset", pl.col("ts").struct.field("ts_ms"), pl.col("ts").struct.field("ts_type"),
        *(pl.col(k).cast(pl.Utf8, strict=False) for k in ("key", "org_header", "producer_id")),
        pl.col("sequence").cast(pl.Utf8, strict=False).cast(pl.Int64, strict=False),
    )
    return pl.concat([b, parsed], how="horizontal")


_OUT = ("org_id", "record_id", "event_type", "event_time", "amount")
_PARSED_SCHEMA = {**{k: pl.Utf8 for k in _OUT}, "status": pl.Utf8, "raw": pl.Utf8}
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_]+")


def parse_values(values: list[bytes | None], fields: EventFields, names: list[str] | None = None) -> pl.DataFrame:
    """:func:`parse_array` over a list of message values (None: tombstone)."""
    return parse_array(pa.array(values, pa.large_binary()), names or fields.names())


def parse_array(values: pa.Array, names: list[str], newline: bool = False) -> pl.DataFrame:
    """The event fields of message values (a large_binary Arrow array; null: tombstone), by the one
    definition of :mod:`engine.core.events`: status 'ok' with the five field texts, 'unparsable'
    with the raw text, or 'tombstone'. ``newline``: every value ends with a separator newline (the
    native loop's layout), left out of the raw text.

    Values in the producers' shape (:func:`_shaped`) are split into their fields column-wise;
    only the others are parsed one by one, strictly (:func:`engine.core.events.parse_json`):
    a bulk JSON reader would turn an unquoted amount into a float and pick one of two duplicated
    keys. The field columns stay Arrow (never Python lists) for the shaped values."""
    ok, cols = _shaped(values, names)
    present = values.is_valid().to_numpy(zero_copy_only=False)
    status = pl.when(pl.Series(ok)).then(pl.lit("ok")).otherwise(
        pl.when(pl.Series(present)).then(pl.lit("unparsable")).otherwise(pl.lit("tombstone")))
    frame = pl.DataFrame({t: pl.from_arrow(c) for t, c in zip(_OUT, cols, strict=True)}).with_columns(
        status.alias("status"), pl.lit(None, pl.Utf8).alias("raw"))
    odd = np.flatnonzero(present & ~ok)
    if len(odd):
        idx = pl.Series(odd, dtype=pl.UInt32)
        one = _parse_one_by_one(values.take(pa.array(odd)).to_pylist(), names, newline)
        frame = frame.with_columns(*(frame[k].scatter(idx, one[k]) for k in _PARSED_SCHEMA))
    return frame


def _shaped(values: pa.Array, names: list[str]) -> tuple[np.ndarray, list[pa.Array]]:
    """Which values are in the producers' shape (a JSON object with exactly the five fields in
    order, each a string of printable ASCII without quote or backslash, JSON whitespace between
    tokens), and their five fields (null elsewhere). For such a value every strict JSON parser
    gives these five texts, so they need no per-value parse.

    Recognised in C (``recon_event_shape``, ≈0.05 s per million values) when the native library
    is there, else with one Polars regex (≈0.3 s per million more than the C pass). Field names
    that are not plain identifiers make every value take the per-value parse."""
    n = len(values)
    if not all(_PLAIN_NAME.fullmatch(nm) for nm in names) or len(set(names)) != len(names):
        return np.zeros(n, dtype=bool), [pa.nulls(n, pa.large_string())] * 5
    from engine.connectors.kafka import native

    got = native.event_fields(values, names)
    if got is not None:
        return got
    ws = "[ \\t\\n\\r]*"
    members = f"{ws},{ws}".join(f'"{nm}"{ws}:{ws}"([ !#-\\[\\]-~]*)"' for nm in names)
    try:
        text = pl.from_arrow(values.cast(pa.large_string()))
    except (pa.ArrowInvalid, pl.exceptions.ComputeError):  # invalid UTF-8 somewhere (rare): not in shape
        text = pl.Series([v if v is None or v.isascii() else None for v in values.to_pylist()], dtype=pl.Binary)
        text = text.cast(pl.Utf8)
    assert isinstance(text, pl.Series)
    groups = text.str.extract_groups(f"^{ws}\\{{{ws}{members}{ws}\\}}{ws}$").struct
    cols = [groups.field(str(k + 1)).to_arrow() for k in range(5)]
    return groups.field("1").is_not_null().to_numpy(), cols


def _parse_one_by_one(vals: list[bytes], names: list[str], newline: bool) -> dict[str, pl.Series]:
    """The values not in the producers' shape, each parsed alone and strictly: 'ok' with the field
    texts of :func:`engine.core.events.field_texts`, or 'unparsable' with the raw text (counted and
    sampled, never fatal)."""
    out: dict[str, list[Any]] = {k: [None] * len(vals) for k in _PARSED_SCHEMA}
    for i, v in enumerate(vals):
        if newline:
            v = v[:-1]
        try:
            obj = events.parse_json(v)
            if type(obj) is not dict:
                raise ValueError("not an object")
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            out["status"][i] = "unparsable"
            out["raw"][i] = v[:200].decode("utf-8", "replace")
            continue
        for target, text in zip(_OUT, events.field_texts(obj, names), strict=True):
            out[target][i] = text
        out["status"][i] = "ok"
    return {k: pl.Series(k, out[k], dtype=pl.Utf8) for k in _PARSED_SCHEMA}
