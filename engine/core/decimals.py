"""Decimal columns: any spelling of a number read as Decimal(38, s), rounded half-even, and the
scaled 64-bit integer form that canonical decimal columns are held in.

A canonical decimal column is held as its unscaled value in an Int64 (12.34 at scale 2 is 1234)
whenever every value fits with room to spare, else as Decimal(38, s). Why: Polars keeps every
Decimal in 16 bytes, so two money columns cost 320 MB more per side at 10M rows than the same
values in 8 bytes, and 64-bit arithmetic is faster. The canonical bytes are the same either way
(16-byte little-endian unscaled integer), so the representation never shows in a Merkle root.

Apart from :mod:`engine.core.normalize` because it is one kind's representation, not the
normalization: the typed columns, the diff's variances and the canonical encoding use it, and
values that come back as text (JSON, Parquet string columns) are compared through
:func:`parse_decimal`. Nothing here changes a canonical byte.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation, localcontext

import numpy as np
import polars as pl

# -- reading numbers -------------------------------------------------------------------------------
MAX_DIGITS = 38  # Decimal(38, s): what Polars, Arrow's decimal128 and the 16-byte canonical value hold


def _to_decimal(s: pl.Series, scale: int) -> pl.Series:
    """Any spelling of a number as Decimal(38, ``scale``), rounded half-even in one step (a fixed
    intermediate scale would round twice: 0.134999999999 would become 0.14). A value that is not a
    finite number or needs more than 38 digits at ``scale`` is a ValueError naming the column and
    the value, found by one vectorised check (a NULL out where a value went in)."""
    target = pl.Decimal(MAX_DIGITS, scale)
    if s.dtype == pl.Utf8 or s.dtype == pl.String:
        txt = s.str.strip_chars()
        txt = pl.Series(s.name, txt).set(txt == "", None) if (txt == "").any() else txt
        out = txt.cast(target, strict=False)
        bad = out.is_null() & txt.is_not_null()
        if bad.any():  # exotic spellings (e.g. '1_000'): the rare rows go through Python's Decimal
            fixed = [_py_decimal(v, scale, s.name) for v in txt.filter(bad).to_list()]
            out = out.scatter(bad.arg_true(), pl.Series(fixed, dtype=target))
        return out
    if s.dtype.is_float():
        out = s.round(scale).cast(target, strict=False)
    elif isinstance(s.dtype, pl.Decimal) and (s.dtype.scale or 0) > scale:
        out = s.round(scale).cast(target, strict=False)
    else:
        out = s.cast(target, strict=False)
    bad = out.is_null() & s.is_not_null()
    if bad.any():
        v = s.filter(bad)[0]
        what = "not a finite number" if isinstance(v, float) and not math.isfinite(v) else _out_of_range(scale)
        raise ValueError(f"column {s.name!r}: {what}: {str(v)!r}{_FIX}")
    return out


_FIX = ": fix the value at its source, or compare the column with another type"


def _out_of_range(scale: int) -> str:
    return f"number out of range (more than {MAX_DIGITS} digits at scale {scale})"


def _py_decimal(v: str, scale: int, column: str = "") -> Decimal:
    where = f"column {column!r}: " if column else ""
    try:
        d = Decimal(v)
    except InvalidOperation:
        raise ValueError(f"{where}not a number: {v!r}{_FIX}") from None
    if not d.is_finite():
        raise ValueError(f"{where}not a finite number: {v!r}{_FIX}")
    # digits before the point plus the scale: checked before quantize, which would need them all
    # (1E+100 at scale 2 is 103 digits: decimal's InvalidOperation, a crash, before this check)
    if d and d.adjusted() + 1 + scale > MAX_DIGITS:
        raise ValueError(f"{where}{_out_of_range(scale)}: {v!r}{_FIX}")
    with localcontext() as ctx:
        ctx.prec = MAX_DIGITS + 2
        q = d.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_EVEN)
    if len(q.as_tuple().digits) > MAX_DIGITS:  # 99.999 at scale 2 rounds up to one digit more
        raise ValueError(f"{where}{_out_of_range(scale)}: {v!r}{_FIX}")
    return q


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


def canonical_text(expr: pl.Expr) -> pl.Expr:
    """One text per value of plain decimal literals (``[+-]?digits[.digits]``, as the consumer
    accepts them): no sign on zero, no ``+``, no leading zeros, no trailing fractional zeros, so
    ``100.0``, ``100.00`` and ``+100`` are all ``100``. It is PostgreSQL's ``trim_scale(x)::text``
    (the consumer's payload digest hashes that), done on the text so that no precision limit
    applies: amounts may have 38 digits on each side of the point, beyond any Decimal(38, s)."""
    body = (expr.str.replace(r"^[+-]", "").str.replace(r"^0+([0-9])", "${1}")
            .str.replace(r"\.0*$", "").str.replace(r"(\.[0-9]*[1-9])0+$", "${1}"))
    return pl.when(expr.str.starts_with("-") & (body != "0")).then(pl.concat_str([pl.lit("-"), body])).otherwise(body)


# -- scaled 64-bit integers ------------------------------------------------------------------------
SCALED_LIMIT = 1 << 62  # |unscaled| below this: the difference of two values cannot overflow


def is_scaled(s: pl.Series) -> bool:
    """Whether a canonical decimal column is in its scaled-integer form."""
    return s.dtype == pl.Int64


def _int128_le(vals: np.ndarray) -> np.ndarray:
    """Sign-extend int64 values to 16-byte little-endian two's complement rows."""
    out = np.empty((len(vals), 2), dtype="<i8")
    out[:, 0] = vals
    out[:, 1] = vals >> 63
    return out.view(np.uint8).reshape(len(vals), 16)


def to_scaled(s: pl.Series, scale: int) -> pl.Series:
    """A canonical Decimal(38, scale) column as scaled Int64 when every value fits, else unchanged.
    Polars' physical form of a decimal is its unscaled Int128, so this is one narrowing cast."""
    if not isinstance(s.dtype, pl.Decimal) or len(s) == 0:
        return s
    phys = s.cast(pl.Decimal(38, scale)).to_physical()
    top, bottom = phys.max(), phys.min()
    if top is not None and (int(top) >= SCALED_LIMIT or int(bottom) <= -SCALED_LIMIT):  # type: ignore[arg-type]
        return s
    return phys.cast(pl.Int64).alias(s.name)


def _float_to_scaled(s: pl.Series, scale: int) -> pl.Series | None:
    """Floats straight to scaled int64, skipping the 16-byte Decimal in between: the value rounded
    to ``scale`` places (as the Decimal path rounds), times 10**scale, is within an ulp of an
    integer while it stays below 2**53 / 10**scale. None (the Decimal path decides) otherwise, or
    for NaN and infinities."""
    if len(s) == 0 or not bool(s.is_finite().fill_null(True).all()):
        return None
    r = s.round(scale)
    top = r.abs().max()
    if top is None or float(top) >= 2.0**53 / 10**scale:  # type: ignore[arg-type]
        return None
    return (r * float(10**scale)).round(0).cast(pl.Int64)


def to_decimal(s: pl.Series, scale: int) -> pl.Series:
    """The Decimal(38, scale) form of a canonical decimal column (exact; a no-op when it is one)."""
    import pyarrow as pa

    if not is_scaled(s):
        return s
    vals = s.fill_null(0).to_numpy()
    valid = s.is_not_null().to_numpy()
    data = pa.py_buffer(_int128_le(vals).tobytes())
    mask = pa.array(valid).buffers()[1] if not valid.all() else None
    arr = pa.Array.from_buffers(pa.decimal128(38, scale), len(vals), [mask, data])
    out = pl.from_arrow(arr)
    assert isinstance(out, pl.Series)
    return out.alias(s.name)


def scaled_text(expr: pl.Expr, scale: int) -> pl.Expr:
    """The text of a scaled decimal column (unscaled int64) as a Decimal(38, scale) column prints
    it (``-12.30``), without building the 16-byte Decimal column first."""
    if scale == 0:
        return expr.cast(pl.Utf8)
    unit = 10**scale
    mag = expr.abs()
    text = pl.concat_str([(mag // unit).cast(pl.Utf8), pl.lit("."),
                          (mag % unit).cast(pl.Utf8).str.zfill(scale)])
    return pl.when(expr < 0).then(pl.concat_str([pl.lit("-"), text])).otherwise(text)
