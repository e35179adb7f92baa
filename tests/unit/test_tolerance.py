"""Tolerances: any finite number, 0 or more, exactly as written; rounded down to a column's scale and
capped at the largest difference its representation holds (so 1E+100 absorbs everything, 1e-100
nothing, and neither overflows the comparison)."""

from __future__ import annotations

from decimal import Decimal

import polars as pl
import pytest

from engine.core.diff import compare
from engine.core.normalize import ColumnType, FieldSpec, SideOptions, canonicalize
from engine.core.tolerance import parse_tolerance, tolerance_at_scale, tolerance_units


@pytest.mark.parametrize(("text", "needle"), [("NaN", "finite"), ("-Infinity", "finite"), ("-0.01", "negative"),
                                              ("1,5", "not a number"), ("", "not a number")])
def test_what_is_not_a_tolerance(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_tolerance(text)


def test_a_tolerance_is_kept_as_written() -> None:
    assert parse_tolerance(" 0.10 ") == Decimal("0.10") and parse_tolerance(0) == 0
    assert parse_tolerance("1E+100") == Decimal("1E+100")


def test_units_round_down_and_cap() -> None:
    assert tolerance_units(Decimal("0.011"), 2, 1 << 63) == 1
    assert tolerance_units(Decimal("1e-100"), 2, 1 << 63) == 0
    assert tolerance_units(Decimal("1E+100"), 2, (1 << 63) - 1) == (1 << 63) - 1
    assert tolerance_at_scale(Decimal("1E+100"), 2) == Decimal("9" * 36 + ".99")


@pytest.mark.parametrize("huge", [False, True])  # scaled int64 form and the wide Decimal(38, s) form
def test_extreme_tolerances_in_the_diff(huge: bool) -> None:
    big = "9" * 30 if huge else "7"
    src = pl.DataFrame({"k": ["a", "b", "z"], "v": ["1.00", "2.00", big]})
    tgt = pl.DataFrame({"k": ["a", "b", "z"], "v": ["1.01", "-2.00", big]})
    for tol, n in (("1e-100", 2), ("0.019", 1), ("1E+100", 0)):
        f = (FieldSpec("k", "k", ColumnType("text"), is_key=True),
             FieldSpec("v", "v", ColumnType("decimal", 2), parse_tolerance(tol)))
        r = compare(canonicalize(src, f, SideOptions()), canonicalize(tgt, f, SideOptions()))
        assert r.columns["v"].mismatched == n, (tol, huge)
