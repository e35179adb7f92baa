"""The canonical encoding: the vectorised version-2 bytes equal an independent per-value reference
written from the specification, frozen golden roots for versions 1 and 2, and the properties the
encoding promises (NULL vs empty, spellings of one value, collision-proof framing)."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core import merkle
from engine.core.decimals import to_scaled
from engine.core.normalize import (
    ColumnType,
    FieldSpec,
    SideOptions,
    canonicalize,
    decimal_view,
    encode_segment_reference,
    frame_bytes,
    row_text,
    segment_bytes,
)

UTC = dt.UTC
FIELDS = (FieldSpec("k", "k", ColumnType("text"), is_key=True), FieldSpec("t", "t", ColumnType("text")),
          FieldSpec("d", "d", ColumnType("decimal", 2)), FieldSpec("i", "i", ColumnType("int")),
          FieldSpec("ts", "ts", ColumnType("timestamp", precision="ms")), FieldSpec("b", "b", ColumnType("bool")))
GOLDEN = pl.DataFrame({
    "k": ["b", "a", "c", "d", "e"],
    "t": ["x", "", None, "é", "comma,\n"],
    "d": [Decimal("1.50"), None, Decimal("-0.00"), Decimal("100"), Decimal("2.345")],
    "i": [1, None, -7, 0, 2**40],
    "ts": [dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC), None,
           dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), dt.datetime(2026, 11, 26, tzinfo=UTC),
           dt.datetime(2000, 1, 1, tzinfo=UTC)],
    "b": [True, None, False, True, False],
})
SEG = merkle.Segmentation(("c",))


def test_version_2_golden_root_is_frozen() -> None:
    """Computed once when version 2 was introduced; any change to the encoding breaks it."""
    c = canonicalize(GOLDEN, FIELDS, SideOptions())
    tree, _ = merkle.side_tree(c.frame, c.fields, SEG)
    assert tree.root_hex == "f3ca1fce682d51a14f2761e044496fc32abbc7b4cca321a685f47a7c640cdcca"
    assert [d.hex()[:16] for d in tree.digests] == ["be9dfd0b11c224c2", "ea67a96528d9bf86"]


def test_version_1_root_of_the_old_code_still_recomputes() -> None:
    """The root the version-1 code (session 1) computed for GOLDEN, recomputed by the kept verifier."""
    c = canonicalize(GOLDEN, FIELDS, SideOptions())
    rows = decimal_view(c.frame, FIELDS).select(row_text(FIELDS).alias("r"))["r"]
    digests, counts = merkle.hash_rows_v1(rows, merkle.segment_counts(c.frame["__key"], SEG))
    assert merkle.build_tree(digests, counts).root_hex == \
        "4269e74ee92076ff0acfd3e0fd4220f8e0cb98ac292de0b91b1ee7c1ad76ea91"


def test_vectorised_segment_equals_the_reference_on_the_golden_rows() -> None:
    c = canonicalize(GOLDEN, FIELDS, SideOptions())
    cols = frame_bytes(c.frame, FIELDS)
    rows = list(decimal_view(c.frame, FIELDS).select([f.name for f in FIELDS]).iter_rows())
    ctypes = [f.ctype for f in FIELDS]
    assert segment_bytes(cols, 0, 5) == encode_segment_reference(rows, ctypes)
    assert segment_bytes(cols, 1, 3) == encode_segment_reference(rows[1:3], ctypes)
    assert segment_bytes(cols, 2, 2) == encode_segment_reference([], ctypes)


KINDS = [ColumnType("text"), ColumnType("id"), ColumnType("decimal", 3), ColumnType("int"), ColumnType("float"),
         ColumnType("bool"), ColumnType("date"), ColumnType("timestamp", precision="us"),
         ColumnType("timestamp", precision="ms")]
VALUES = {
    "text": st.text(max_size=6),
    "id": st.text(alphabet="abcXYZ019", min_size=18, max_size=18),
    "decimal": st.decimals(min_value=-10**12, max_value=10**12, places=3, allow_nan=False),
    "int": st.integers(min_value=-2**63, max_value=2**63 - 1),
    "float": st.floats(allow_nan=True, allow_infinity=True),
    "bool": st.booleans(),
    "date": st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2200, 1, 1)),
    "timestamp": st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1), timezones=st.just(UTC)),
}


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_vectorised_segment_equals_the_reference_for_every_kind(data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(KINDS))
    n = data.draw(st.integers(min_value=0, max_value=12))
    vals = data.draw(st.lists(st.one_of(st.none(), VALUES[kind.kind]), min_size=n, max_size=n))
    df = pl.DataFrame({"k": [f"{i:03d}" for i in range(n)], "v": pl.Series("v", vals, strict=False)})
    fields = (FieldSpec("k", "k", ColumnType("text"), is_key=True), FieldSpec("v", "v", kind))
    c = canonicalize(df, fields, SideOptions())
    rows = list(decimal_view(c.frame, fields).select("k", "v").iter_rows())
    lo = data.draw(st.integers(min_value=0, max_value=n))
    hi = data.draw(st.integers(min_value=lo, max_value=n))
    assert segment_bytes(frame_bytes(c.frame, fields), lo, hi) == \
        encode_segment_reference(rows[lo:hi], [f.ctype for f in fields])


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_arrow_segment_bytes_equal_the_reference_for_every_kind(data: st.DataObject) -> None:
    """An incremental state hashes its stored rows straight from Arrow (text from its own buffers):
    the bytes equal the reference for every kind, NULLs, slices (an array offset) and both string
    layouts."""
    import pyarrow as pa

    kind = data.draw(st.sampled_from(KINDS))
    n = data.draw(st.integers(min_value=0, max_value=12))
    # without NULLs, a column's own Arrow buffers are hashed in place: drawn as often as with them
    elem = st.one_of(st.none(), VALUES[kind.kind]) if data.draw(st.booleans()) else VALUES[kind.kind]
    vals = data.draw(st.lists(elem, min_size=n, max_size=n))
    df = pl.DataFrame({"k": [f"{i:03d}" for i in range(n)], "v": pl.Series("v", vals, strict=False)})
    fields = (FieldSpec("k", "k", ColumnType("text"), is_key=True), FieldSpec("v", "v", kind))
    c = canonicalize(df, fields, SideOptions())
    frame = c.frame
    if kind.kind == "decimal" and data.draw(st.booleans()):  # a state stores decimals that fit scaled
        frame = frame.with_columns(to_scaled(frame["v"], kind.scale or 0))
    table = frame.to_arrow(compat_level=pl.CompatLevel.oldest())
    if data.draw(st.booleans()):
        table = table.cast(pa.schema([pa.field(f.name, pa.string() if f.type == pa.large_string() else f.type)
                                      for f in table.schema]))
    cut = data.draw(st.integers(min_value=0, max_value=n))
    table, rows = table.slice(cut), list(decimal_view(c.frame, fields).select("k", "v").iter_rows())[cut:]
    lo = data.draw(st.integers(min_value=0, max_value=len(rows)))
    hi = data.draw(st.integers(min_value=lo, max_value=len(rows)))
    assert segment_bytes(frame_bytes(table, fields), lo, hi) == \
        encode_segment_reference(rows[lo:hi], [f.ctype for f in fields])


def test_a_scaled_decimal_hashed_in_place_is_sign_extended_to_16_bytes() -> None:
    """The case the property test above reaches only sometimes (a decimal kind, stored scaled, no
    NULL, negative values): a state's scaled Int64 decimals are hashed as the 16 bytes of version 2,
    sign-extended."""
    kind = ColumnType("decimal", scale=2)
    fields = (FieldSpec("k", "k", ColumnType("text"), is_key=True), FieldSpec("v", "v", kind))
    df = pl.DataFrame({"k": ["a", "b", "c"], "v": ["-1.25", "0.00", "1234.50"]})
    c = canonicalize(df, fields, SideOptions())
    table = c.frame.with_columns(to_scaled(c.frame["v"], 2)).to_arrow(compat_level=pl.CompatLevel.oldest())
    rows = list(decimal_view(c.frame, fields).select("k", "v").iter_rows())
    assert segment_bytes(frame_bytes(table, fields), 0, 3) == encode_segment_reference(rows, [f.ctype for f in fields])


def _seg(values: list, ctype: ColumnType) -> list[bytes]:
    """Each value's one-row segment bytes (the key is the same for all, so only the value differs)."""
    out = []
    for v in values:
        df = pl.DataFrame({"k": ["k"], "v": pl.Series("v", [v], strict=False)})
        fields = (FieldSpec("k", "k", ColumnType("text"), is_key=True), FieldSpec("v", "v", ctype))
        c = canonicalize(df, fields, SideOptions())
        out.append(segment_bytes(frame_bytes(c.frame, fields), 0, 1))
    return out


def test_null_and_empty_string_differ_and_spellings_of_a_value_agree() -> None:
    null, empty = _seg([None, ""], ColumnType("text"))
    assert null != empty
    a, b, c, miss = _seg(["100", "100.0", "1E+2", "100.01"], ColumnType("decimal", 2))
    assert a == b == c != miss
    z, negz, nan1, nan2 = _seg([0.0, -0.0, math.nan, float("nan")], ColumnType("float"))
    assert z == negz and nan1 == nan2 and z != nan1
    t1, t2, t3 = _seg(["2026-01-02T03:04:05.123456Z", "2026-01-02T03:04:05.123999+00:00",
                       "2026-01-02T03:04:05.124Z"], ColumnType("timestamp", precision="ms"))
    assert t1 == t2 != t3


def test_framing_is_collision_proof_across_field_boundaries() -> None:
    f = (FieldSpec("a", "a", ColumnType("text"), is_key=True), FieldSpec("b", "b", ColumnType("text")),
         FieldSpec("c", "c", ColumnType("text")))
    one = canonicalize(pl.DataFrame({"a": ["k"], "b": ["ab"], "c": ["c"]}), f, SideOptions())
    two = canonicalize(pl.DataFrame({"a": ["k"], "b": ["a"], "c": ["bc"]}), f, SideOptions())
    assert segment_bytes(frame_bytes(one.frame, f), 0, 1) != segment_bytes(frame_bytes(two.frame, f), 0, 1)


def test_duplicate_rows_hash_the_same_in_any_arrival_order() -> None:
    f = (FieldSpec("k", "k", ColumnType("text"), is_key=True), FieldSpec("v", "v", ColumnType("int")),
         FieldSpec("w", "w", ColumnType("text")))
    df = pl.DataFrame({"k": ["x", "a", "x", "x", "b"], "v": [3, 1, None, 3, 2], "w": ["z", "q", "y", "a", None]})
    roots = set()
    for seed in range(5):
        c = canonicalize(df.sample(fraction=1.0, shuffle=True, seed=seed), f, SideOptions())
        roots.add(merkle.side_tree(c.frame, c.fields, merkle.Segmentation(("b",)))[0].root_hex)
    assert len(roots) == 1


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.describe())
def test_all_null_and_empty_columns_encode(kind: ColumnType) -> None:
    df = pl.DataFrame({"k": ["1", "2"], "v": pl.Series("v", [None, None], dtype=pl.Null)})
    fields = (FieldSpec("k", "k", ColumnType("text"), is_key=True), FieldSpec("v", "v", kind))
    c = canonicalize(df, fields, SideOptions())
    got = segment_bytes(frame_bytes(c.frame, fields), 0, 2)
    assert got == encode_segment_reference([("1", None), ("2", None)], [f.ctype for f in fields])


def test_hashing_in_chunks_gives_the_same_digests(monkeypatch: pytest.MonkeyPatch) -> None:
    df = pl.DataFrame({"k": [f"{i:05d}" for i in range(500)], "v": [None if i % 7 == 0 else f"v{i}" for i in range(500)]})
    f = (FieldSpec("k", "k", ColumnType("text"), is_key=True), FieldSpec("v", "v", ColumnType("text")))
    c = canonicalize(df, f, SideOptions())
    seg = merkle.Segmentation(tuple(merkle.choose_boundaries(c.frame["__key"], 13)))
    whole = merkle.side_tree(c.frame, f, seg)[0]
    monkeypatch.setattr(merkle, "HASH_CHUNK_ROWS", 40)
    assert merkle.side_tree(c.frame, f, seg)[0] == whole
    monkeypatch.setattr(merkle, "HASH_CHUNK_ROWS", 1)
    assert merkle.side_tree(c.frame, f, seg)[0] == whole
