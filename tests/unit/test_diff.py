"""The record diff against a plain-Python reference of the contract's counting rules, on random edits."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.diff import compare
from engine.core.merkle import choose_boundaries
from engine.core.normalize import ColumnType, FieldSpec, SideOptions, canonicalize
from engine.core.sfid import make_ids

FIELDS = (
    FieldSpec("Id", "Id", ColumnType("id"), is_key=True),
    FieldSpec("clv", "clv", ColumnType("decimal", 2)),
    FieldSpec("name", "name", ColumnType("text")),
)


def reference(src: list[tuple], tgt: list[tuple]) -> dict:
    """The contract's counting rules, written the slow obvious way."""
    s_rows: dict[str, list] = {}
    t_rows: dict[str, list] = {}
    for r in src:
        s_rows.setdefault(r[0], []).append(r)
    for r in tgt:
        t_rows.setdefault(r[0], []).append(r)
    out = Counter()
    cols = Counter()
    abs_v = Decimal(0)
    src_total = Decimal(0)  # Σ|source| over keys unique on both sides: abs_variance's population
    for k in set(s_rows) | set(t_rows):
        a, b = s_rows.get(k), t_rows.get(k)
        if b is None:
            out["missing_in_target"] += 1
        elif a is None:
            out["missing_in_source"] += 1
        elif len(a) > 1 or len(b) > 1:
            out["mismatched" if Counter(a) != Counter(b) else "unchanged"] += 1
        else:
            src_total += abs(a[0][1])
        if a is None or b is None or len(a) > 1 or len(b) > 1:
            pass
        elif a[0] != b[0]:
            out["mismatched"] += 1
            if a[0][1] != b[0][1]:
                cols["clv"] += 1
                abs_v += abs(b[0][1] - a[0][1])
            if a[0][2] != b[0][2]:
                cols["name"] += 1
        else:
            out["unchanged"] += 1
    out["dup_s"] = sum(1 for v in s_rows.values() if len(v) > 1)
    out["dup_t"] = sum(1 for v in t_rows.values() if len(v) > 1)
    return {"counts": out, "cols": cols, "abs": abs_v, "src_total": src_total}


def frame(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame({"Id": [r[0] for r in rows], "clv": [str(r[1]) for r in rows], "name": [r[2] for r in rows]},
                        schema={"Id": pl.Utf8, "clv": pl.Utf8, "name": pl.Utf8})


edit = st.tuples(st.sampled_from(["insert", "delete", "value", "name", "dup", "case"]), st.integers(0, 10_000),
                 st.integers(1, 99_999))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), edits=st.lists(edit, max_size=25), seg=st.integers(1, 64))
def test_random_edits_are_all_found_and_counted_per_contract(n: int, edits: list, seg: int) -> None:
    ids = make_ids("001", 0, n + 50)
    src = [(ids[i], Decimal(i * 7 % 1000) / 4, f"Account {i}") for i in range(n)]
    src = [(a, b.quantize(Decimal("0.01")), c) for a, b, c in src]
    tgt = list(src)
    spare = iter(ids[n:])
    for kind, pos, val in edits:
        if not tgt and kind != "insert":
            continue
        i = pos % max(len(tgt), 1)
        if kind == "insert":
            k = next(spare, None)
            if k:
                tgt.append((k, Decimal(val) / 100, "new"))
        elif kind == "delete":
            tgt.pop(i)
        elif kind == "value":
            tgt[i] = (tgt[i][0], tgt[i][1] + Decimal(val) / 100, tgt[i][2])
        elif kind == "name":
            tgt[i] = (tgt[i][0], tgt[i][1], tgt[i][2] + "x")
        elif kind == "dup":
            tgt.append(tgt[i])
        elif kind == "case":  # a case-only change of the 15-char body is a different record
            k = tgt[i][0]
            body = k[:15].swapcase()
            from engine.core.sfid import to18

            tgt[i] = (to18(body), tgt[i][1], tgt[i][2])
    ref = reference(src, tgt)
    s = canonicalize(frame(src), FIELDS, SideOptions())
    t = canonicalize(frame(tgt), FIELDS, SideOptions())
    r = compare(s, t, boundaries=choose_boundaries(s.frame["__key"], seg))
    c = ref["counts"]
    assert r.missing_in_target == c["missing_in_target"]
    assert r.missing_in_source == c["missing_in_source"]
    assert r.mismatched == c["mismatched"]
    assert r.unchanged == c["unchanged"]
    assert r.duplicate_keys_source == c["dup_s"]
    assert r.duplicate_keys_target == c["dup_t"]
    assert r.columns["clv"].mismatched == ref["cols"]["clv"]
    assert r.columns["name"].mismatched == ref["cols"]["name"]
    assert r.columns["clv"].abs_variance == ref["abs"]
    assert r.columns["clv"].source_abs_total == ref["src_total"]
    assert r.missing_in_target + r.missing_in_source + r.mismatched + r.unchanged == r.union_keys
    assert (r.source_tree.root == r.target_tree.root) == (not r.divergent)
    # the record diff in small groups of segments gives exactly the same result as in one piece
    from engine.core import diff as diff_mod

    saved, diff_mod.CHUNK_ROWS = diff_mod.CHUNK_ROWS, 3
    try:
        small = compare(s, t, boundaries=choose_boundaries(s.frame["__key"], seg))
    finally:
        diff_mod.CHUNK_ROWS = saved
    assert small.summary() | {"elapsed_s": 0} == r.summary() | {"elapsed_s": 0}
    assert small.differences.equals(r.differences)
    if not r.has_differences and r.duplicate_keys_target == r.duplicate_keys_source == 0:
        assert r.source_tree.root == r.target_tree.root


def test_contract_example_duplicate_key() -> None:
    f = (FieldSpec("k", "k", ColumnType("text"), is_key=True), FieldSpec("v", "v", ColumnType("int")))
    s = canonicalize(pl.DataFrame({"k": ["K"], "v": [10]}), f, SideOptions())
    t = canonicalize(pl.DataFrame({"k": ["K", "K"], "v": [10, 20]}), f, SideOptions())
    r = compare(s, t)
    assert (r.duplicate_keys_target, r.mismatched, r.columns["v"].mismatched) == (1, 1, 0)


def test_same_duplicates_on_both_sides_are_unchanged() -> None:
    f = (FieldSpec("k", "k", ColumnType("text"), is_key=True), FieldSpec("v", "v", ColumnType("int")))
    df = pl.DataFrame({"k": ["K", "K", "L"], "v": [1, 2, 3]})
    r = compare(canonicalize(df, f, SideOptions()), canonicalize(df.reverse(), f, SideOptions()))
    assert (r.mismatched, r.unchanged, r.duplicate_keys_source, r.duplicate_keys_target) == (0, 2, 1, 1)
    assert not r.divergent
    assert r.columns["v"].source_abs_total == 3  # K is duplicated: only L is in the population


def test_source_abs_total_counts_the_keys_unique_on_both_sides_only() -> None:
    """Σ|source| is abs_variance's population (the contract): a key duplicated on either side, or
    missing from the target, or in flight, is not in it, so amount_variance_ratio compares like
    with like. Equal segments count their unique keys too."""
    f = (FieldSpec("k", "k", ColumnType("text"), is_key=True), FieldSpec("v", "v", ColumnType("decimal", 2)))
    src = pl.DataFrame({"k": ["a", "b", "b", "c", "d", "e", "f", "g", "h"],
                        "v": ["1.00", "100.00", "100.00", "1000.00", "-2.00", "3.00", "10000.00", "4.00", "5.00"]})
    tgt = pl.DataFrame({"k": ["a", "b", "d", "e", "e", "f", "g", "h"],
                        "v": ["1.50", "100.00", "-2.00", "3.00", "3.00", "9.00", "4.00", "5.00"]})
    s, t = canonicalize(src, f, SideOptions()), canonicalize(tgt, f, SideOptions())
    for bounds in ([], ["c"], ["b", "d", "g"]):  # one segment; equal segments ("g".."h") next to divergent ones
        r = compare(s, t, boundaries=bounds, in_flight_keys={"f"})
        assert (r.duplicate_keys_source, r.duplicate_keys_target, r.missing_in_target, r.in_flight) == (1, 1, 1, 1)
        # b (duplicated in the source), e (in the target), c (missing in the target), f (in flight): out
        assert r.columns["v"].source_abs_total == Decimal("12.00"), bounds  # a, d, g, h: 1 + 2 + 4 + 5
        assert r.columns["v"].abs_variance == Decimal("0.50")


def test_tolerance_absorbs_small_differences() -> None:
    f = (FieldSpec("k", "k", ColumnType("text"), is_key=True),
         FieldSpec("v", "v", ColumnType("decimal", 2), tolerance=Decimal("0.05")))
    s = canonicalize(pl.DataFrame({"k": ["a", "b"], "v": ["1.00", "1.00"]}), f, SideOptions())
    t = canonicalize(pl.DataFrame({"k": ["a", "b"], "v": ["1.05", "1.06"]}), f, SideOptions())
    r = compare(s, t)
    assert r.mismatched == 1 and r.columns["v"].abs_variance == Decimal("0.06")


def test_in_flight_keys_are_not_differences() -> None:
    f = (FieldSpec("k", "k", ColumnType("text"), is_key=True), FieldSpec("v", "v", ColumnType("int")))
    s = canonicalize(pl.DataFrame({"k": ["a", "b", "c"], "v": [1, 2, 3]}), f, SideOptions())
    t = canonicalize(pl.DataFrame({"k": ["a", "b", "c"], "v": [1, 9, 8]}), f, SideOptions())
    r = compare(s, t, in_flight_keys={"b"})
    assert (r.mismatched, r.in_flight, r.unchanged) == (1, 1, 1)
    assert r.differences["key"].to_list() == ["c"]


def test_scaled_and_wide_decimals_compare_alike() -> None:
    """Decimals are held as scaled int64 when they fit, else as Decimal(38, s): a side with one huge
    value (wide form) against a side without (scaled form) must give the same answer as two sides
    that agree on the form, and values are reported as decimals, never as unscaled integers."""
    f = (FieldSpec("k", "k", ColumnType("text"), is_key=True),
         FieldSpec("v", "v", ColumnType("decimal", 2), Decimal("0.05")))
    src = pl.DataFrame({"k": ["a", "b", "c", "d"], "v": ["1.00", "2.50", "-3.10", "7"]})
    tgt = pl.DataFrame({"k": ["a", "b", "c", "d"], "v": ["1.04", "2.60", "-3.00", "7.00"]})
    s, t = canonicalize(src, f, SideOptions()), canonicalize(tgt, f, SideOptions())
    assert s.frame["v"].dtype == pl.Int64 and t.frame["v"].dtype == pl.Int64
    r = compare(s, t)
    assert (r.mismatched, r.columns["v"].mismatched) == (2, 2)
    assert (r.columns["v"].abs_variance, r.columns["v"].net_variance) == (Decimal("0.20"), Decimal("0.20"))
    assert r.columns["v"].source_abs_total == Decimal("13.60")
    got = r.differences.select("key", "source_value", "target_value").rows()
    assert got == [("b", "2.50", "2.60"), ("c", "-3.10", "-3.00")]
    huge = pl.DataFrame({"k": ["a", "b", "c", "d", "z"], "v": ["1.00", "2.50", "-3.10", "7", "1e17"]})
    wide = canonicalize(huge, f, SideOptions())
    assert isinstance(wide.frame["v"].dtype, pl.Decimal)
    r2 = compare(wide, t)
    assert (r2.mismatched, r2.missing_in_target, r2.columns["v"].abs_variance) == (2, 1, Decimal("0.20"))
    assert r2.differences.filter(pl.col("kind") == "mismatched").select("key", "source_value", "target_value").rows() == got
    # the canonical bytes do not depend on the form: with boundaries that put the huge row in a
    # segment of its own, every other segment hashes the same in wide and in scaled form
    r_b, r2_b = compare(s, t, boundaries=["b", "z"]), compare(wide, t, boundaries=["b", "z"])
    assert len(r_b.source_tree.digests) == len(r2_b.source_tree.digests) == 3
    assert r2_b.source_tree.digests[:2] == r_b.source_tree.digests[:2]
    assert r2_b.source_tree.digests[2] != r_b.source_tree.digests[2]  # "z" is only on the wide side


@settings(max_examples=80, deadline=None)
@given(keys=st.lists(st.text("aAbB0\u00e9", min_size=0, max_size=3), max_size=60),
       bounds=st.sets(st.text("aAbB0\u00e9", min_size=1, max_size=3), max_size=8))
def test_segment_ids_match_a_per_row_count_of_boundaries(keys: list[str], bounds: set[str]) -> None:
    """Segment ids come from one search per boundary; per row they must equal the number of
    boundaries at or below the key, in byte order (duplicated keys and keys equal to a boundary
    included)."""
    from engine.core import merkle

    key_bytes = sorted(k.encode() for k in keys)
    b = sorted(x.encode() for x in bounds)
    seg = merkle.Segmentation(tuple(x.decode() for x in b))
    got = merkle.segment_ids(pl.Series([k.decode() for k in key_bytes], dtype=pl.Utf8), seg).tolist()
    assert got == [sum(1 for x in b if x <= k) for k in key_bytes]


def test_segment_ids_reject_unordered_boundaries() -> None:
    import pytest

    from engine.core import merkle

    with pytest.raises(ValueError, match="increasing"):
        merkle.segment_ids(pl.Series(["a", "b", "c"]), merkle.Segmentation(("c", "a")))


@settings(max_examples=80, deadline=None)
@given(s_keys=st.sets(st.text("aAbB0\u00e9", min_size=0, max_size=3), max_size=40),
       t_keys=st.sets(st.text("aAbB0\u00e9", min_size=0, max_size=3), max_size=40))
def test_pairing_by_merge_finds_exactly_the_shared_keys(s_keys: set[str], t_keys: set[str]) -> None:
    from engine.core.diff import _pair_sorted

    s = sorted(s_keys, key=str.encode)
    t = sorted(t_keys, key=str.encode)
    if not s or not t:
        return
    si, ti = _pair_sorted(pl.Series(s, dtype=pl.Utf8), pl.Series(t, dtype=pl.Utf8))
    shared = sorted(s_keys & t_keys, key=str.encode)
    assert [s[i] for i in si] == shared and [t[i] for i in ti] == shared


def test_divergent_ranges_name_the_segments_that_differ_and_their_rows() -> None:
    """The values, not just the keys: with boundaries b and d, a change in segment [b, d) and a row
    missing from [d, …) make exactly those two ranges divergent, with each side's row counts."""
    f = (FieldSpec("k", "k", ColumnType("text"), is_key=True), FieldSpec("v", "v", ColumnType("int")))
    src = pl.DataFrame({"k": ["a", "b", "c", "d", "e"], "v": ["1", "2", "3", "4", "5"]})
    tgt = pl.DataFrame({"k": ["a", "b", "c", "d"], "v": ["1", "2", "30", "4"]})
    s, t = canonicalize(src, f, SideOptions()), canonicalize(tgt, f, SideOptions())
    r = compare(s, t, boundaries=["b", "d"])
    assert r.divergent_ranges() == [
        {"from": "b", "to": "d", "source_rows": 2, "target_rows": 2},
        {"from": "d", "to": None, "source_rows": 2, "target_rows": 1},
    ]
    assert r.summary()["divergent_ranges"] == r.divergent_ranges()


def test_variances_and_totals_of_wide_decimals_are_exact() -> None:
    """Sums beyond the decimal module's default 28 digits are neither rounded nor a crash."""
    f = (FieldSpec("k", "k", ColumnType("text"), is_key=True), FieldSpec("v", "v", ColumnType("decimal", 2)))
    big = "9" * 34 + ".99"
    src = pl.DataFrame({"k": ["a", "b", "c"], "v": [big, big, "0.01"]})
    tgt = pl.DataFrame({"k": ["a", "b", "c"], "v": ["9" * 33 + "8.99", big, "0.01"]})
    for bounds in ([], ["b", "c"]):
        r = compare(canonicalize(src, f, SideOptions()), canonicalize(tgt, f, SideOptions()), boundaries=bounds)
        assert (r.columns["v"].abs_variance, r.columns["v"].net_variance) == (Decimal("1.00"), Decimal("-1.00"))
        assert r.columns["v"].source_abs_total == Decimal("1" + "9" * 34 + ".99")  # 2·big + 0.01
