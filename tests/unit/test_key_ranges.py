"""Range reads in canonical key order: the integer intervals of a text range, and the PostgreSQL key
predicate built from key fields, columns and a KeyRange (pure; the same predicates run against
PostgreSQL in tests/integration/test_range_reads.py)."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.connectors.postgres import keyrange
from engine.connectors.postgres.keyrange import TextKeyFacts, key_predicate
from engine.core import normalize
from engine.core.keyorder import INT8_BOUNDS, int_intervals
from engine.core.normalize import ColumnType, FieldSpec
from engine.core.plan import KeyRange

INT8 = st.integers(INT8_BOUNDS[0], INT8_BOUNDS[1])
#: ints whose texts share prefixes, lengths and signs with the bounds
EDGY = st.one_of(st.integers(-1000, 1000), INT8, st.sampled_from([0, -1, 9, 10, 99, 100, INT8_BOUNDS[0],
                                                                  INT8_BOUNDS[1], 10**18, -(10**18)]))
BOUND = st.one_of(st.none(), EDGY.map(str), st.text(alphabet="-0123456789/:a\x00", max_size=21))


def _in(spans: list[tuple[int, int]], n: int) -> bool:
    return any(a <= n <= b for a, b in spans)


@settings(max_examples=400, deadline=None)
@given(st.lists(EDGY, min_size=1, max_size=30), BOUND, BOUND)
def test_int_intervals_hold_exactly_the_ints_whose_text_is_in_range(values: list[int], lo: str | None,
                                                                    hi: str | None) -> None:
    spans = int_intervals(lo, hi)
    for n in values:
        t = str(n).encode()
        want = (lo is None or t >= lo.encode()) and (hi is None or t < hi.encode())
        assert _in(spans, n) == want, (n, lo, hi, spans)
    assert len(spans) <= 38
    assert all(a <= b for a, b in spans) and all(b + 1 < c for (_, b), (c, _) in zip(spans, spans[1:], strict=False))


def test_int_intervals_of_a_typical_range() -> None:
    assert int_intervals("10", "9", 0, 100) == [(2, 8), (10, 89), (100, 100)]
    assert int_intervals(None, None, -5, 5) == [(-5, 5)]
    assert int_intervals("5", "5", -5, 5) == []


def test_key_separator_is_normalize_s() -> None:
    assert keyrange.KEY_SEPARATOR == normalize.KEY_SEPARATOR


def _key(kind: str, column: str = "k") -> FieldSpec:
    return FieldSpec(column, column, ColumnType(kind), is_key=True)  # type: ignore[arg-type]


def _text(pred: keyrange.KeyPredicate) -> str:
    assert pred.condition is not None
    return pred.condition.as_string(None)


def test_text_key_compares_in_c_collation_and_hints_the_index() -> None:
    p = key_predicate([_key("text")], {"k": "text"}, KeyRange("a'b", "m"), table=("s", "t"))
    assert _text(p) == '("k" COLLATE "C" >= \'a\'\'b\' AND "k" COLLATE "C" < \'m\')'
    assert p.indexed is False and p.hint == 'CREATE INDEX ON "s"."t" ("k" COLLATE "C")'
    native = key_predicate([_key("text")], {"k": "varchar"}, KeyRange(None, "m"),
                           text_facts=TextKeyFacts("native", True))
    assert _text(native) == "(\"k\" < 'm')" and native.hint is None and native.indexed
    pattern = key_predicate([_key("text")], {"k": "text"}, KeyRange("a", None), text_facts=TextKeyFacts("pattern", True))
    assert _text(pattern) == "(\"k\" ~>=~ 'a')"


def test_id_key_lower_bound_is_its_15_character_prefix() -> None:
    p = key_predicate([_key("id")], {"k": "bpchar"}, KeyRange("001000000000001AAA", "001000000000002AAA"))
    assert "'001000000000001'" in _text(p) and "< '001000000000002AAA'" in _text(p)


def test_int_key_is_an_or_of_betweens_within_the_type() -> None:
    p = key_predicate([_key("int")], {"k": "int2"}, KeyRange("10", "9"))
    assert _text(p) == '("k" BETWEEN 2 AND 8 OR "k" BETWEEN 10 AND 89 OR "k" BETWEEN 100 AND 899 ' \
        'OR "k" BETWEEN 1000 AND 8999 OR "k" BETWEEN 10000 AND 32767)'
    assert p.indexed


def test_date_key_and_compound_keys() -> None:
    d = key_predicate([_key("date")], {"k": "date"}, KeyRange("2024-01-01", "2024-02-01"))
    assert _text(d) == ("((\"k\" >= '2024-01-01'::date AND \"k\" < '2024-02-01'::date) OR \"k\" < "
                        "'1000-01-01'::date OR \"k\" >= '10000-01-01'::date)")
    both = [_key("text", "a"), _key("int", "b")]
    c = key_predicate(both, {"a": "text", "b": "int8"}, KeyRange("x\x005", "y\x002"))
    assert _text(c) == '("a" COLLATE "C" >= \'x\' AND "a" COLLATE "C" <= \'y\')'
    ints = key_predicate([_key("int", "b"), _key("text", "a")], {"a": "text", "b": "int4"}, KeyRange("5\x00x", "5\x00y"))
    assert _text(ints) == '"b" = 5' or _text(ints) == '("b" = 5)'
    none = key_predicate([_key("decimal")], {"k": "numeric"}, KeyRange("1", "2"))
    assert none.condition is None and not none.pushdown
    assert key_predicate([_key("text")], {"k": "text"}, KeyRange()).condition is None


# -- Parquet row-group pruning: never fewer rows than the range holds ---------------------------------
_KIND_VALUES = {
    "text": st.text(alphabet="aAbB0é_-~", min_size=0, max_size=4),
    "int": EDGY,
    # mostly a few weeks (bounds then share their first characters with a group's min and max),
    # sometimes any date, years below 1000 included (their text is not 10 characters)
    "date": st.one_of(st.dates(min_value=date(2024, 1, 1), max_value=date(2024, 1, 20)),
                      st.dates(min_value=date(900, 1, 1))),
}


@pytest.mark.parametrize("kind", ["text", "int", "date", "compound"])
@settings(max_examples=150, deadline=None)
@given(data=st.data(), sort=st.booleans())
def test_parquet_pruning_keeps_every_group_holding_a_key_of_the_range(kind: str, data: st.DataObject,
                                                                       sort: bool) -> None:
    """Random keys (sorted by canonical key or not) in row groups of 3, a random range between two
    keys (or open, or a bound that is no key): every row whose canonical key lies in the range is in
    a group that is read."""
    import io

    import polars as pl
    import pyarrow.parquet as pq

    from engine.connectors.files.source import row_groups_in_range
    from engine.core.normalize import SideOptions, canonicalize

    first = "text" if kind == "compound" else kind
    a = data.draw(st.lists(_KIND_VALUES[first], min_size=4, max_size=25))
    cols = {"a": a}
    fields = [FieldSpec("a", "a", ColumnType(first), is_key=True)]  # type: ignore[arg-type]
    if kind == "compound":
        cols["b"] = data.draw(st.lists(st.integers(-50, 50), min_size=len(a), max_size=len(a)))
        fields.append(FieldSpec("b", "b", ColumnType("int"), is_key=True))
    frame = pl.DataFrame(cols)
    keys = canonicalize(frame, tuple(fields), SideOptions()).frame["__key"]  # sorted
    frame = frame.with_columns(pl.Series("__k", canonicalize(frame.with_row_index("i"), tuple(
        [*fields, FieldSpec("i", "i", ColumnType("int"))]), SideOptions()).frame.sort("i")["__key"]))
    if sort:
        frame = frame.sort("__k")
    on_key = st.sampled_from(keys.to_list())  # mostly on a key: a group's min or max is often a bound
    bound = st.one_of(st.none(), on_key, on_key, on_key, st.text(alphabet="-09aA\x00é", max_size=5))
    rng = KeyRange(data.draw(bound), data.draw(bound))
    buf = io.BytesIO()
    pq.write_table(frame.drop("__k").to_arrow(), buf, row_group_size=3)
    meta = pq.ParquetFile(io.BytesIO(buf.getvalue())).metadata
    groups, how = row_groups_in_range(meta, tuple(fields), rng)
    assert (how is None) is rng.whole
    inside = frame.with_row_index("row").filter(rng.expr("__k"))["row"].to_list()
    assert {r // 3 for r in inside} <= set(groups), (rng, groups)
