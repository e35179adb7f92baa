"""Kafka messages to the scan's columns: the header values the scan keeps, the JSON values parsed
in bulk (Polars' NDJSON reader; a batch that fails is split so that only the bad values are parsed
one by one and marked unparsable, tombstones apart), and the two joined into the scan's columns.

Apart from :mod:`engine.connectors.kafka.scan` because it is the same for both read loops (the
Python loop's batches and the native loop's chunks) and needs no broker: it turns bytes into
columns, the scan decides which messages to read.
"""

from __future__ import annotations

import io
import json
from typing import Any

import polars as pl
import pyarrow as pa

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


def parse_values(values: list[bytes | None], fields: EventFields, names: list[str] | None = None) -> pl.DataFrame:
    """Parse JSON values in bulk; tombstones (None) get status 'tombstone', bad values status
    'unparsable' with their raw text. The parsed columns stay Arrow (never Python lists)."""
    names = names or fields.names()
    if None not in values:  # C-level scan (bytes never equal None): no tombstone, the common case
        return _parse_block(values, names)  # type: ignore[arg-type]
    present = pl.Series(values, dtype=pl.Binary).is_not_null()
    parsed = _parse_block([v for v in values if v is not None], names)  # b"" is a value, not a tombstone
    return _spread(parsed, present)


def _spread(parsed: pl.DataFrame, present: pl.Series) -> pl.DataFrame:
    """The parsed rows of the present values back at their messages' rows; tombstones in between."""
    if parsed.height == 0:
        return pl.DataFrame({k: pl.Series([None] * len(present), dtype=pl.Utf8) for k in _PARSED_SCHEMA}).with_columns(
            pl.lit("tombstone").alias("status"))
    pos = (present.cast(pl.Int64).cum_sum() - 1).clip(lower_bound=0)  # row of each message in `parsed`
    full = parsed.select(pl.all().gather(pos))
    return full.with_columns(
        *(pl.when(present).then(pl.col(k)).alias(k) for k in (*_OUT, "raw")),
        pl.when(present).then(pl.col("status")).otherwise(pl.lit("tombstone")).alias("status"))


def _parse_block(vals: list[bytes], names: list[str]) -> pl.DataFrame:
    """One NDJSON parse of the whole block; a block that fails is split in halves so that only the
    bad values end up parsed one by one."""
    if not vals:
        return pl.DataFrame(schema=_PARSED_SCHEMA)
    blob = b"\n".join(vals)
    if blob.count(b"\n") == len(vals) - 1:  # no value spans lines: one line per message
        df = _parse_ndjson(blob, len(vals), names)
        if df is not None:
            return df
    if len(vals) > 64:
        mid = len(vals) // 2
        return pl.concat([_parse_block(vals[:mid], names), _parse_block(vals[mid:], names)])
    return _parse_one_by_one(vals, names)


def _parse_ndjson(block: bytes, rows: int, names: list[str]) -> pl.DataFrame | None:
    """An NDJSON block of exactly ``rows`` lines parsed whole, or None when any line fails."""
    try:
        df = pl.read_ndjson(io.BytesIO(block), schema={k: pl.Utf8 for k in names}, ignore_errors=False)
    except Exception:  # noqa: BLE001 - any parse failure: the caller splits and retries
        return None
    if df.height != rows:
        return None
    return df.select(*(pl.col(src).alias(t) for t, src in zip(_OUT, names, strict=True)),
                     pl.lit("ok").alias("status"), pl.lit(None, pl.Utf8).alias("raw"))


def _parse_one_by_one(vals: list[bytes], names: list[str]) -> pl.DataFrame:
    """At most 64 values of a block that failed as a whole: each parsed alone (the bad ones are
    counted and sampled as unparsable, never fatal)."""
    out: dict[str, list[Any]] = {k: [None] * len(vals) for k in _PARSED_SCHEMA}
    for i, v in enumerate(vals):
        try:
            obj = json.loads(v)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
            for target, src in zip(_OUT, names, strict=True):
                x = obj.get(src)
                out[target][i] = None if x is None else (x if isinstance(x, str) else json.dumps(x))
            out["status"][i] = "ok"
        except (ValueError, UnicodeDecodeError):
            out["status"][i] = "unparsable"
            out["raw"][i] = v[:200].decode("utf-8", "replace")
    return pl.DataFrame(out, schema=_PARSED_SCHEMA)
