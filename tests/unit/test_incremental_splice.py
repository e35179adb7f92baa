"""An incremental run rewrites a batch of touched segments in Arrow (``_splice``): the stored rows
less the removed keys, with the changed rows inserted in key order. It must equal the plain answer
(filter, concatenate, sort) for any mix of removals, replacements and inserts, at the ends too."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.app.incremental import _found, _splice


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_splice_equals_filter_concat_sort(data: st.DataObject) -> None:
    universe = [f"k{i:03d}" for i in range(40)]
    stored = sorted(data.draw(st.sets(st.sampled_from(universe), max_size=25)))
    removed = sorted(data.draw(st.sets(st.sampled_from(universe), max_size=15)))
    changed = sorted(set(data.draw(st.sets(st.sampled_from(universe), max_size=10))))
    removed = sorted(set(removed) | set(changed))  # a changed key's stored row always goes
    old = pa.table({"__key": pa.array(stored, pa.large_string()), "v": pa.array(range(len(stored)), pa.int64())})
    ch = pa.table({"__key": pa.array(changed, pa.large_string()), "v": pa.array([-1 - i for i in range(len(changed))],
                                                                                    pa.int64())})
    keys = pl.Series(old.column("__key"))
    drop = _found(keys, pl.Series(removed, dtype=pl.Utf8))
    ins = keys.search_sorted(pl.Series(changed, dtype=pl.Utf8), side="left").to_numpy().astype(np.int64)
    got = _splice(old, drop, ch if changed else None, ins)
    want = pl.concat([pl.from_arrow(old).filter(~pl.col("__key").is_in(removed)), pl.from_arrow(ch)]).sort("__key")
    assert pl.from_arrow(got).equals(want)
    assert got.column("__key").num_chunks <= 1  # one copy: a single chunk, not thousands of slices
