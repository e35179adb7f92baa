"""Canonical key order (the bytes of the canonical key text, :mod:`engine.core.normalize`) seen
from a system that orders keys otherwise: which of its native values can have a canonical text
in a :class:`~engine.core.plan.KeyRange`. Connectors use it to read one range (a PostgreSQL
predicate, Parquet row-group pruning); it imports no data library, so a PostgreSQL read can use
it before Polars has loaded.

Integers are the case that needs thought: their canonical text is the decimal text, and "10" <
"9", so a text range is not a numeric range. But among texts of the same length, text order is
numeric order; so for each sign and number of digits the integers of a text range form one
numeric interval, at most 38 of them for 64-bit integers (fewer once neighbours are merged).
"""

from __future__ import annotations

from typing import Final

#: the range of a canonical ``int`` (64-bit)
INT8_BOUNDS: Final[tuple[int, int]] = (-(2**63), 2**63 - 1)


def _count_below(x: bytes | None, digits: int, base: int, top: int) -> int:
    """How many numbers of ``[base, top]`` (all written with ``digits`` digits) have a decimal
    text below ``x`` in byte order (None: no upper bound, so all of them)."""
    size = top - base + 1
    if x is None:
        return size
    if len(x) < digits:  # a text of ``digits`` characters is below x iff its first len(x) are
        x = x + b"\x00" * (digits - len(x))
        strict_extra = 0
    else:
        strict_extra = 1 if len(x) > digits else 0  # p itself is below x when x extends it
        x = x[:digits]
    # x is now ``digits`` bytes: the numbers whose text sorts below it
    value = None
    for i, ch in enumerate(x):
        if not 0x30 <= ch <= 0x39:
            prefix = int(x[:i]) if i else 0
            value = (prefix if ch < 0x30 else prefix + 1) * 10 ** (digits - i)
            strict_extra = 0
            break
    if value is None:
        value = int(x)
    below = min(max(value - base, 0), size)
    if strict_extra and base <= value <= top:
        below = min(below + 1, size)
    return below


def int_intervals(lo: str | None, hi: str | None, low: int = INT8_BOUNDS[0],
                  high: int = INT8_BOUNDS[1]) -> list[tuple[int, int]]:
    """The integers in ``[low, high]`` whose decimal text lies in ``[lo, hi)`` (UTF-8 byte order),
    as sorted, disjoint, inclusive intervals (neighbours merged).

    >>> int_intervals("10", "9", 0, 100)  # "1" < "10"; "90" >= "9"; "100" < "9"
    [(2, 8), (10, 89), (100, 100)]
    >>> int_intervals("-2", "0", -5, 5)
    [(-5, -2)]
    """
    blo = lo.encode() if lo is not None else None
    bhi = hi.encode() if hi is not None else None
    out: list[tuple[int, int]] = []
    for digits in range(1, 20):
        first, top = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
        # non-negative numbers of this many digits: texts of ``digits`` characters
        if first <= high and top >= 0:
            a = _count_below(blo, digits, first, top) if blo is not None else 0
            b = _count_below(bhi, digits, first, top)
            if a < b:
                out.append((max(first + a, low), min(first + b - 1, high)))
        # negative numbers: "-" then the magnitude; text order is magnitude order
        mfirst = 1 if digits == 1 else first
        if -mfirst >= low and -top <= high:
            a = _neg_count_below(blo, digits, mfirst, top) if blo is not None else 0
            b = _neg_count_below(bhi, digits, mfirst, top)
            if a < b:  # magnitudes mfirst+a .. mfirst+b-1
                out.append((max(-(mfirst + b - 1), low), min(-(mfirst + a), high)))
    out = sorted((a, b) for a, b in out if a <= b)
    merged: list[tuple[int, int]] = []
    for a, b in out:
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _neg_count_below(x: bytes | None, digits: int, mfirst: int, top: int) -> int:
    size = top - mfirst + 1
    if x is None:
        return size
    if not x or x[0] < 0x2D:  # x sorts at or before "-": no negative text is below it
        return 0
    if x[0] > 0x2D:
        return size
    return _count_below(x[1:], digits, mfirst, top)
