"""Compare values, not spellings: canonical typed columns and the versioned canonical encoding.

Two systems spell the same value differently: Salesforce writes `100`, a warehouse `100.00`, a CSV
`1E+2`; an Id comes as 15 or 18 characters; a datetime as `...000Z` or `+0000` or a naive
timestamp. Every compared column is therefore turned into one canonical *typed* column (used for
tolerances and variances) and one canonical *text* column (used for hashing), by vectorised Polars
expressions.

Canonical encoding, version 1 (``ENCODING_VERSION``) — frozen so that a manifest's hashes can be
recomputed years later:

* per value, by logical kind:
    - ``text``: Unicode NFC; optionally trimmed; the UTF-8 bytes;
    - ``id``: Salesforce ids in their 18-character form (15-character ids get their suffix);
    - ``decimal(s)``: rounded half-even to scale ``s``, plain notation with exactly ``s`` fraction
      digits (``100``, ``100.0``, ``1E+2`` → ``100.00`` at scale 2); ``-0.00`` is ``0.00``;
    - ``int``: base-10 digits with a leading ``-`` when negative;
    - ``float``: the shortest round-trip representation;
    - ``bool``: ``true`` / ``false``;
    - ``date``: ``YYYY-MM-DD``;
    - ``timestamp(p)``: microseconds since 1970-01-01T00:00:00Z as a base-10 integer, after
      truncation to precision ``p`` (``ms`` when a side is Salesforce, else ``us``);
* a field is ``<byte length in ASCII decimal>:<bytes>``, a NULL field is the single byte ``-``
  (so NULL and the empty string ``0:`` differ, and no two field lists share an encoding);
* a row is its key fields followed by its compared fields, in mapping order, concatenated;
* a segment's bytes are its rows in key order, concatenated (one BLAKE3 call per segment).

Keys are ordered by the bytes of their canonical text (compound keys: the fields' texts joined by
NUL, i.e. tuple order), never by a database collation, so Salesforce's case-sensitive 15-character
ids are never folded or reordered. Integer keys order as text ("10" < "9"): consistent on both
sides, which is all the Merkle segments need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Literal

import numpy as np
import polars as pl

ENCODING_VERSION = 1
Kind = Literal["text", "id", "decimal", "int", "float", "bool", "date", "timestamp"]
KINDS: tuple[str, ...] = ("text", "id", "decimal", "int", "float", "bool", "date", "timestamp")
NULL_MARK = "-"


@dataclass(frozen=True)
class ColumnType:
    """The logical type both sides of a mapped column are compared as.

    kind: one of KINDS.
    scale: decimal places for ``decimal``.
    precision: ``ms`` or ``us`` for ``timestamp``.
    """

    kind: Kind
    scale: int | None = None
    precision: Literal["ms", "us"] = "us"

    def describe(self) -> str:
        if self.kind == "decimal":
            return f"decimal({self.scale})"
        if self.kind == "timestamp":
            return f"timestamp({self.precision})"
        return self.kind


@dataclass(frozen=True)
class SideOptions:
    """How one side spells things.

    empty_as_null: an empty string means NULL (Salesforce and its Bulk CSV cannot tell them apart).
    naive_timezone: the zone of timestamps without an offset (PostgreSQL ``timestamp`` columns).
    trim: strip surrounding whitespace of text values.
    """

    empty_as_null: bool = False
    naive_timezone: str = "UTC"
    trim: bool = False


SALESFORCE_SIDE = SideOptions(empty_as_null=True)


@dataclass(frozen=True)
class FieldSpec:
    """One mapped field: its column name on this side, its canonical name and its type."""

    column: str
    name: str
    ctype: ColumnType
    tolerance: Decimal | None = None
    is_key: bool = False


@dataclass(frozen=True)
class Canonical:
    """A side after normalization.

    frame: one typed canonical column per field (named by ``FieldSpec.name``), plus ``__key``
      (the key's canonical text: identity and sort order) and ``__row`` (the full row encoding).
    """

    frame: pl.DataFrame
    fields: tuple[FieldSpec, ...] = field(default_factory=tuple)


# ------------------------------------------------------------------------------------------------
# per-kind typed normalization


def sf_id18(s: pl.Series) -> pl.Series:
    """15-character Salesforce ids get their case-safe suffix; other values pass unchanged.

    Vectorised with numpy over the bytes: ids come in millions.
    """
    s = s.cast(pl.Utf8)
    mask = (s.str.len_bytes() == 15).fill_null(False)
    if not mask.any():
        return s
    mask = mask & s.str.contains(r"^[0-9A-Za-z]{15}$").fill_null(False)
    if not mask.any():
        return s
    short = s.filter(mask)
    raw = np.frombuffer("".join(short.to_list()).encode("ascii"), dtype=np.uint8).reshape(-1, 15)
    upper = ((raw >= ord("A")) & (raw <= ord("Z"))).reshape(-1, 3, 5).astype(np.int64)
    idx = upper @ (1 << np.arange(5))
    alphabet = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345", dtype=np.uint8)
    full = np.concatenate([raw, alphabet[idx]], axis=1)
    converted = pl.Series(full.view("S18").ravel().astype(str))
    return s.scatter(mask.arg_true(), converted)


def _to_decimal(s: pl.Series, scale: int) -> pl.Series:
    if s.dtype == pl.Utf8 or s.dtype == pl.String:
        txt = s.str.strip_chars()
        txt = pl.Series(s.name, txt).set(txt == "", None) if (txt == "").any() else txt
        wide = txt.cast(pl.Decimal(38, 9), strict=False)
        bad = wide.is_null() & txt.is_not_null()
        if bad.any():  # exotic spellings (e.g. '1.5e-12'): the rare rows go through Python's Decimal
            fixed = [_py_decimal(v, 9) for v in txt.filter(bad).to_list()]
            wide = wide.scatter(bad.arg_true(), pl.Series(fixed, dtype=pl.Decimal(38, 9)))
        return wide.round(scale).cast(pl.Decimal(38, scale))
    if s.dtype.is_float():
        return s.round(scale).cast(pl.Decimal(38, scale))
    if isinstance(s.dtype, pl.Decimal):
        return s.round(scale).cast(pl.Decimal(38, scale)) if (s.dtype.scale or 0) > scale else s.cast(pl.Decimal(38, scale))
    return s.cast(pl.Decimal(38, scale))


def _py_decimal(v: str, scale: int) -> Decimal | None:
    try:
        d = Decimal(v)
    except InvalidOperation as exc:
        raise ValueError(f"not a number: {v!r}") from exc
    if not d.is_finite():
        raise ValueError(f"not a finite number: {v!r}")
    return d.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_EVEN)


_TRUE = ("true", "t", "1", "yes", "y")
_FALSE = ("false", "f", "0", "no", "n")


def _to_bool(s: pl.Series) -> pl.Series:
    if s.dtype == pl.Boolean:
        return s
    if s.dtype.is_numeric():
        return s != 0
    low = s.cast(pl.Utf8).str.strip_chars().str.to_lowercase()
    out = pl.select(pl.when(low.is_in(_TRUE)).then(True).when(low.is_in(_FALSE)).then(False)
                    .otherwise(None).alias(s.name)).to_series()
    bad = out.is_null() & low.is_not_null() & (low != "")
    if bad.any():
        raise ValueError(f"column {s.name!r}: not a boolean: {low.filter(bad)[0]!r}")
    return out


def _to_timestamp(s: pl.Series, opts: SideOptions, precision: str) -> pl.Series:
    if s.dtype == pl.Utf8 or s.dtype == pl.String:
        txt = s.str.strip_chars().str.replace(r"([+-]\d\d)(\d\d)$", "$1:$2")
        txt = txt.set(txt == "", None) if (txt == "").any() else txt
        has_offset = txt.str.contains(r"(Z|[+-]\d\d:\d\d)$").fill_null(False)
        ts = pl.Series(s.name, [None] * len(txt), dtype=pl.Datetime("us", "UTC"))
        if has_offset.any():
            aware = txt.filter(has_offset).str.to_datetime(time_unit="us", time_zone="UTC", strict=False)
            ts = ts.scatter(has_offset.arg_true(), aware)
        naive_mask = ~has_offset & txt.is_not_null()
        if naive_mask.any():
            naive = txt.filter(naive_mask).str.to_datetime(time_unit="us", strict=False) \
                .dt.replace_time_zone(opts.naive_timezone).dt.convert_time_zone("UTC")
            ts = ts.scatter(naive_mask.arg_true(), naive)
        bad = ts.is_null() & txt.is_not_null()
        if bad.any():
            raise ValueError(f"column {s.name!r}: not a timestamp: {txt.filter(bad)[0]!r}")
    elif isinstance(s.dtype, pl.Datetime):
        ts = s.cast(pl.Datetime("us", s.dtype.time_zone))
        if s.dtype.time_zone is None:
            ts = ts.dt.replace_time_zone(opts.naive_timezone)
        ts = ts.dt.convert_time_zone("UTC")
    elif s.dtype == pl.Date:
        ts = s.cast(pl.Datetime("us")).dt.replace_time_zone(opts.naive_timezone).dt.convert_time_zone("UTC")
    else:
        raise ValueError(f"column {s.name!r}: cannot read {s.dtype} as a timestamp")
    if precision == "ms":
        ts = ts.dt.truncate("1ms")
    return ts.alias(s.name)


def typed(s: pl.Series, ctype: ColumnType, opts: SideOptions) -> pl.Series:
    """The canonical typed column for one side's values."""
    k = ctype.kind
    if k in ("text", "id"):
        t = s.cast(pl.Utf8)
        if (t.str.len_bytes() != t.str.len_chars()).any():  # NFC only matters beyond ASCII
            t = t.str.normalize("NFC")
        if opts.trim:
            t = t.str.strip_chars()
        if opts.empty_as_null and (t == "").any():
            t = t.set(t == "", None)
        return sf_id18(t) if k == "id" else t
    if (s.dtype == pl.Utf8 or s.dtype == pl.String) and opts.empty_as_null and k != "decimal":
        s = s.set(s == "", None) if (s == "").any() else s
    if k == "decimal":
        return _to_decimal(s, ctype.scale or 0)
    if k == "int":
        return s.cast(pl.Int64) if not (s.dtype == pl.Utf8) else s.str.strip_chars().cast(pl.Int64)
    if k == "float":
        return s.cast(pl.Float64)
    if k == "bool":
        return _to_bool(s)
    if k == "date":
        if s.dtype == pl.Utf8 or s.dtype == pl.String:
            return s.str.strip_chars().str.slice(0, 10).str.to_date("%Y-%m-%d")
        return s.cast(pl.Date) if not isinstance(s.dtype, pl.Datetime) else s.dt.date()
    if k == "timestamp":
        return _to_timestamp(s, opts, ctype.precision)
    raise ValueError(f"unknown column kind {k!r}")


def text_expr(name: str, ctype: ColumnType) -> pl.Expr:
    """The canonical text of a typed canonical column (before field framing)."""
    c = pl.col(name)
    k = ctype.kind
    if k in ("text", "id"):
        return c
    if k == "bool":
        return pl.when(c).then(pl.lit("true")).otherwise(pl.lit("false"))
    if k == "date":
        return c.dt.strftime("%Y-%m-%d")
    if k == "timestamp":
        return c.dt.epoch("us").cast(pl.Utf8)
    if k == "decimal":
        t = c.cast(pl.Utf8)
        zero = "0." + "0" * (ctype.scale or 0) if ctype.scale else "0"
        return pl.when(t == "-" + zero).then(pl.lit(zero)).otherwise(t)
    return c.cast(pl.Utf8)


def field_parts(name: str, ctype: ColumnType) -> list[pl.Expr]:
    """Length-prefixed field encoding as two parts (``<len>:`` or ``-``, then the text or nothing):
    one flat concat over all parts is much faster than formatting each field separately."""
    t = text_expr(name, ctype)
    prefix = pl.when(pl.col(name).is_null()).then(pl.lit(NULL_MARK)) \
        .otherwise(t.str.len_bytes().cast(pl.Utf8) + pl.lit(":"))
    return [prefix, t.fill_null("")]


def field_expr(name: str, ctype: ColumnType) -> pl.Expr:
    """Length-prefixed field encoding; NULL is the lone byte '-'."""
    return pl.concat_str(field_parts(name, ctype))


def canonicalize(df: pl.DataFrame, fields: tuple[FieldSpec, ...], opts: SideOptions) -> Canonical:
    """Typed canonical columns plus the key and row encodings, sorted by key bytes."""
    missing = [f.column for f in fields if f.column not in df.columns]
    if missing:
        raise ValueError(f"missing column(s): {', '.join(missing)}")
    cols = [typed(df[f.column], f.ctype, opts).alias(f.name) for f in fields]
    frame = pl.DataFrame(cols)
    keys = [f for f in fields if f.is_key]
    if not keys:
        raise ValueError("no key column")
    for f in keys:
        nulls = frame[f.name].null_count()
        if nulls:
            raise ValueError(f"key column {f.column!r} has {nulls} NULL value(s)")
    key_text = [text_expr(f.name, f.ctype) for f in keys]
    if len(keys) > 1 and frame.select(pl.any_horizontal([t.str.contains("\x00", literal=True) for t in key_text])).to_series().any():
        raise ValueError("a compound key value contains a NUL character")
    row_parts = [p for f in fields for p in field_parts(f.name, f.ctype)]
    frame = frame.lazy().with_columns(
        (key_text[0] if len(keys) == 1 else pl.concat_str(key_text, separator="\x00")).alias("__key"),
        pl.concat_str(row_parts).alias("__row"),
    ).collect().sort("__key")
    frame = _order_duplicate_runs(frame)
    return Canonical(frame=frame, fields=fields)


def _order_duplicate_runs(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows sharing a key are put in ``__row`` order, so a segment's bytes do not depend on the order
    a side returned them in; only the (few) duplicated rows are re-sorted."""
    if frame.height < 2:
        return frame
    k = frame["__key"]
    same = (k == k.shift(1)).fill_null(False)
    if not same.any():
        return frame
    dup = same | same.shift(-1).fill_null(False)
    idx = dup.arg_true()
    sub = frame[idx].sort(["__key", "__row"])
    return frame.with_row_index("__i").update(sub.with_columns(idx.alias("__i")), on="__i").drop("__i")


def parse_decimal(v: object) -> Decimal | None:
    """A finite Decimal from a value or its text; None for NULL, empty or not a number. Used where
    values come back as text (JSON, Parquet string columns) and must compare as numbers."""
    if v is None or v == "":
        return None
    try:
        d = Decimal(str(v))
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def encode_value(value: object, ctype: ColumnType) -> bytes:
    """Reference (slow, per-value) implementation of the field encoding, for tests and verifiers."""
    if value is None:
        return NULL_MARK.encode()
    s = pl.Series("v", [value])
    t = pl.DataFrame([typed(s, ctype, SideOptions())]).select(text_expr("v", ctype)).item()
    b = str(t).encode("utf-8")
    return str(len(b)).encode() + b":" + b
