"""Every normalization rule: two spellings that must compare equal, and a near miss that must not."""

from __future__ import annotations

from decimal import Decimal

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.normalize import (
    SALESFORCE_SIDE,
    ColumnType,
    FieldSpec,
    SideOptions,
    canonicalize,
    decimal_view,
    encode_value,
    key_expr,
    row_text,
    typed,
)

PLAIN = SideOptions()


def enc(values: list, ctype: ColumnType, opts: SideOptions = PLAIN) -> list[str]:
    """The canonical row encoding of single-field rows (the key is a row number)."""
    df = pl.DataFrame({"k": [f"{i:04d}" for i in range(len(values))], "v": pl.Series(values)})
    fields = (FieldSpec("k", "k", ColumnType("text"), is_key=True), FieldSpec("v", "v", ctype))
    frame = canonicalize(df, fields, opts).frame
    return [r[len("4:0000"):] for r in decimal_view(frame, fields).select(row_text(fields))[:, 0]]


@pytest.mark.parametrize(("a", "b", "miss"), [
    ("003RO0000035WQg", "003RO0000035WQgYAM", "003RO0000035WQG"),  # 15 vs 18; case matters
])
def test_salesforce_ids(a: str, b: str, miss: str) -> None:
    ea, eb, em = enc([a, b, miss], ColumnType("id"))
    assert ea == eb
    assert em != ea


@pytest.mark.parametrize(("a", "b", "miss"), [
    ("100", "100.0", "100.01"),
    ("100", "1E+2", "1E+3"),
    ("  7.5 ", "7.50", "7.49"),
    ("-0.00", "0", "-0.01"),
    ("12.345", "12.34", "12.35"),  # half-even at scale 2
    ("0.135", "0.14", "0.13"),
    ("12.349", "12.35", "12.34"),  # rounded, not truncated
    ("0.134999999999", "0.13", "0.14"),  # rounded once: not to 0.135000000 first, then to 0.14
])
def test_decimals_at_mapped_scale(a: str, b: str, miss: str) -> None:
    ea, eb, em = enc([a, b, miss], ColumnType("decimal", 2))
    assert ea == eb and em != ea


def test_decimal_from_float_and_string_agree() -> None:
    s = typed(pl.Series([100.0, 0.1]), ColumnType("decimal", 2), PLAIN)
    t = typed(pl.Series(["100", "0.10"]), ColumnType("decimal", 2), PLAIN)
    assert s.to_list() == t.to_list() == [Decimal("100.00"), Decimal("0.10")]


def test_timestamps_salesforce_vs_postgres() -> None:
    ms = ColumnType("timestamp", precision="ms")
    sf = typed(pl.Series(["2026-01-02T03:04:05.123Z", "2026-01-02T03:04:05.123+0000"]), ms, SALESFORCE_SIDE)
    pg_aware = typed(pl.Series(["2026-01-02 05:04:05.123456+02:00"]), ms, PLAIN)
    pg_naive = typed(pl.Series(["2026-01-02 03:04:05.123999"]), ms, PLAIN)
    assert sf[0] == sf[1] == pg_aware[0] == pg_naive[0]
    miss = typed(pl.Series(["2026-01-02T03:04:05.124Z"]), ms, PLAIN)
    assert miss[0] != sf[0]


def test_naive_timestamps_take_the_configured_zone() -> None:
    ny = SideOptions(naive_timezone="America/New_York")
    a = typed(pl.Series(["2026-01-02 03:04:05"]), ColumnType("timestamp"), ny)
    b = typed(pl.Series(["2026-01-02T08:04:05Z"]), ColumnType("timestamp"), PLAIN)
    assert a[0] == b[0]
    assert typed(pl.Series(["2026-01-02 03:04:05"]), ColumnType("timestamp"), PLAIN)[0] != b[0]


def test_microseconds_count_when_neither_side_is_salesforce() -> None:
    us = ColumnType("timestamp", precision="us")
    a, b = enc(["2026-01-02T03:04:05.123456Z", "2026-01-02T03:04:05.123457Z"], us)
    assert a != b


def test_empty_vs_null() -> None:
    text = ColumnType("text")
    # Salesforce: empty == NULL
    e_sf = enc(["", None], text, SALESFORCE_SIDE)
    assert e_sf[0] == e_sf[1]
    # elsewhere: NULL and empty string are different values
    e_pg = enc(["", None], text, PLAIN)
    assert e_pg[0] != e_pg[1]
    assert encode_value(None, text) == b"-" and encode_value("", text) == b"0:"


def test_unicode_nfc_and_trim() -> None:
    composed, decomposed = "Caf\u00e9", "Cafe\u0301"
    ea, eb, em = enc([composed, decomposed, "Cafe"], ColumnType("text"))
    assert ea == eb and em != ea
    trim = SideOptions(trim=True)
    ta, tb, tm = enc([" Acme ", "Acme", "Acme Inc"], ColumnType("text"), trim)
    assert ta == tb and tm != ta
    na, nb = enc([" Acme ", "Acme"], ColumnType("text"))
    assert na != nb  # no trimming unless asked


@pytest.mark.parametrize(("a", "b", "miss"), [("true", True, "false"), ("1", "t", "0"), ("FALSE", False, True)])
def test_booleans(a: object, b: object, miss: object) -> None:
    ea = typed(pl.Series([a]), ColumnType("bool"), PLAIN)[0]
    eb = typed(pl.Series([b]), ColumnType("bool"), PLAIN)[0]
    em = typed(pl.Series([miss]), ColumnType("bool"), PLAIN)[0]
    assert ea == eb and em != ea


def test_bad_boolean_is_an_error() -> None:
    with pytest.raises(ValueError, match="not a boolean"):
        typed(pl.Series(["maybe"]), ColumnType("bool"), PLAIN)


def test_field_framing_is_collision_proof() -> None:
    f = (FieldSpec("a", "a", ColumnType("text"), is_key=True), FieldSpec("b", "b", ColumnType("text")),
         FieldSpec("c", "c", ColumnType("text")))
    df = pl.DataFrame({"a": ["k", "k2"], "b": ["ab", "a"], "c": ["c", "bc"]})
    rows = canonicalize(df, f, PLAIN).frame.select(row_text(f))[:, 0].to_list()
    assert rows[0][3:] != rows[1][4:]


def test_null_key_is_rejected() -> None:
    f = (FieldSpec("k", "k", ColumnType("text"), is_key=True),)
    with pytest.raises(ValueError, match="NULL"):
        canonicalize(pl.DataFrame({"k": ["a", None]}), f, PLAIN)


def test_a_decimal_beyond_38_digits_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="out of range"):
        typed(pl.Series(["1e40"]), ColumnType("decimal", 9), PLAIN)
    assert typed(pl.Series(["1e17"]), ColumnType("decimal", 9), PLAIN).item() == Decimal("1e17")


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats(min_value=-1e12, max_value=1e12, allow_nan=False),
                          st.integers(-10**9, 10**9).map(lambda i: i / 1000)), max_size=30),
       st.integers(0, 4))
def test_floats_to_scaled_decimals_agree_with_the_decimal_path(values: list, scale: int) -> None:
    from engine.core.normalize import _float_to_scaled, _to_decimal, to_scaled

    s = pl.Series("v", values, dtype=pl.Float64)
    fast = _float_to_scaled(s, scale)
    if fast is not None:
        assert fast.equals(to_scaled(_to_decimal(s, scale), scale))


@settings(max_examples=100, deadline=None)
@given(vals=st.lists(st.one_of(st.none(), st.integers(-(2**62) + 1, 2**62 - 1), st.integers(-1000, 1000)), max_size=30),
       scale=st.integers(0, 12))
def test_scaled_decimal_text_is_the_decimal_columns_own_text(vals: list[int | None], scale: int) -> None:
    """Differences show a scaled decimal as Polars prints the Decimal(38, s) column it stands for."""
    from engine.core.normalize import scaled_text, to_decimal

    col = pl.Series("v", vals, dtype=pl.Int64)
    want = to_decimal(col, scale).cast(pl.Utf8).to_list()
    got = pl.DataFrame([col]).select(scaled_text(pl.col("v"), scale).alias("t"))["t"].to_list()
    assert got == want


def test_compound_key_text_is_one_definition() -> None:
    """``key_expr`` is the key everyone recomputes (the diff's ``__key``, in-flight keys, the
    manifest verifier): the key fields' texts in mapping order, joined by NUL."""
    f = (FieldSpec("b", "b", ColumnType("id"), is_key=True), FieldSpec("v", "v", ColumnType("text")),
         FieldSpec("a", "a", ColumnType("decimal", scale=2), is_key=True),
         FieldSpec("d", "d", ColumnType("date"), is_key=True))
    df = pl.DataFrame({"b": ["001RO0000035WQg", "0015g0000000001AAA"], "v": ["x", "y"], "a": ["1E+2", "-0"],
                       "d": ["2026-01-02", "2026-01-03"]})
    canon = canonicalize(df, f, PLAIN).frame
    assert canon["__key"].to_list() == ["0015g0000000001AAA\x000.00\x002026-01-03",
                                        "001RO0000035WQgYAM\x00100.00\x002026-01-02"]
    assert canon.select(key_expr(f).alias("k"))["k"].equals(canon["__key"], check_names=False)
    single = (FieldSpec("k", "k", ColumnType("text"), is_key=True),)
    assert canonicalize(pl.DataFrame({"k": ["a\x00b"]}), single, PLAIN).frame["__key"].to_list() == ["a\x00b"]
    with pytest.raises(ValueError, match="NUL"):
        canonicalize(pl.DataFrame({"b": ["a\x00", "a"], "v": ["", ""], "a": ["1", "1"], "d": ["2026-01-01"] * 2}),
                     f, PLAIN)
    with pytest.raises(ValueError, match="no key"):
        key_expr(f[1:2])


@pytest.mark.parametrize(("values", "bad"), [
    (["1.00", "1E+100"], "1E+100"),  # the review's value: exit 70 with a traceback before
    (["-1e39"], "-1e39"),
    (["1E+999999999999"], "1E+999999999999"),
    (["9" * 37 + ".5"], "9" * 37 + ".5"),  # 39 digits at scale 2
    (["NaN"], "NaN"),
    (["Infinity"], "Infinity"),
    (["12abc"], "12abc"),
    ([1.0, 1e100], "1e+100"),
    ([float("inf")], "inf"),
    ([float("nan")], "nan"),
])
def test_a_decimal_that_cannot_be_held_names_the_column_and_the_value(values: list, bad: str) -> None:
    with pytest.raises(ValueError) as exc:
        typed(pl.Series("amount", values), ColumnType("decimal", 2), PLAIN)
    msg = str(exc.value)
    assert "'amount'" in msg and bad in msg and "\n" not in msg, msg


def test_a_decimal_column_too_narrow_for_the_scale_is_an_error_not_a_crash() -> None:
    wide = pl.Series("amount", [Decimal("1" * 37)], dtype=pl.Decimal(38, 0))
    with pytest.raises(ValueError, match="'amount'.*out of range"):
        typed(wide, ColumnType("decimal", 2), PLAIN)


def test_every_value_that_fits_38_digits_at_the_scale_is_exact() -> None:
    """The text is parsed at the mapped scale, not through a fixed 9-place intermediate: 36 integer
    digits fit at scale 2, and 12 places stay 12 places."""
    assert typed(pl.Series(["9" * 36]), ColumnType("decimal", 2), PLAIN).item() == Decimal("9" * 36)
    assert typed(pl.Series(["-" + "9" * 35 + ".995"]), ColumnType("decimal", 2), PLAIN).item() \
        == Decimal("-1" + "0" * 35)
    assert typed(pl.Series(["1.123456789012"]), ColumnType("decimal", 12), PLAIN).item() == Decimal("1.123456789012")
    assert typed(pl.Series(["1.5e-12", "2.5"]), ColumnType("decimal", 0), PLAIN).to_list() == [Decimal(0), Decimal(2)]
