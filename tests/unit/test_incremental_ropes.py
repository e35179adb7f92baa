"""A touched segment as parts (issue 19): the rows an incremental run keeps stay where they lie and
only the rows new to the state are written. Checked against definitions written out plainly: the
rows the parts name, read back from the packs, are the rewritten segment's rows, in order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.app.incremental import MAX_PARTS, _ropes, _splice, _splice_index


@st.composite
def _splices(draw: st.DrawFn) -> tuple[int, np.ndarray, np.ndarray]:
    n_old = draw(st.integers(0, 40))
    drop = np.asarray(sorted(draw(st.sets(st.integers(0, max(n_old - 1, 0)), max_size=n_old))) if n_old else [],
                      dtype=np.int64)
    ins = np.asarray(sorted(draw(st.lists(st.integers(0, n_old), max_size=12))), dtype=np.int64)
    return n_old, drop, ins


@settings(max_examples=300, deadline=None)
@given(_splices())
def test_the_splice_index_names_the_rows_the_splice_makes(case: tuple[int, np.ndarray, np.ndarray]) -> None:
    n_old, drop, ins = case
    old = pa.table({"v": pa.array(range(n_old), pa.int64())})
    changed = pa.table({"v": pa.array([-1 - j for j in range(len(ins))], pa.int64())})
    made = _splice(old, drop, changed if len(ins) else None, ins).column("v").to_pylist()
    assert _splice_index(n_old, drop, ins).tolist() == made  # old row i is i, changed row j is -1 - j


@st.composite
def _batches(draw: st.DrawFn) -> tuple[list[tuple[str, int, int]], np.ndarray, np.ndarray]:
    """Stored parts (in two packs, each part's offsets ascending per pack, as packs hold rows in key
    order), a splice of the stored rows and the segments the new rows are cut into."""
    sizes = draw(st.lists(st.integers(0, 6), min_size=1, max_size=12))
    parts, at = [], {"a": 0, "b": 0}
    for m in sizes:
        f = draw(st.sampled_from(["a", "b"]))
        at[f] += draw(st.integers(0, 3))  # rows no segment names any more
        parts.append((f, at[f], m))
        at[f] += m
    n_old = sum(sizes)
    n_old_drop = draw(st.sets(st.integers(0, max(n_old - 1, 0)), max_size=n_old)) if n_old else set()
    drop = np.asarray(sorted(n_old_drop), dtype=np.int64)
    ins = np.asarray(sorted(draw(st.lists(st.integers(0, n_old), max_size=30))), dtype=np.int64)
    src = _splice_index(n_old, drop, ins)
    cuts = sorted(draw(st.lists(st.integers(0, len(src)), max_size=5)))
    return parts, src, np.asarray([0, *cuts, len(src)], dtype=np.int64)


@settings(max_examples=400, deadline=None)
@given(_batches())
def test_parts_read_back_are_the_new_rows_and_only_new_rows_are_written(
        case: tuple[list[tuple[str, int, int]], np.ndarray, np.ndarray]) -> None:
    parts, src, at = case
    # what each stored row is, by where it lies
    stored = [(f, o + i) for f, o, m in parts for i in range(m)]
    written, ropes = _ropes(parts, src, at)
    new = [stored[i] if i >= 0 else ("changed", -1 - i) for i in src.tolist()]
    written_rows = [new[r] for r in written.tolist()]
    assert all(new[r][0] == "changed" for r in range(len(new)) if src[r] < 0) and \
        {r for r in range(len(new)) if src[r] < 0} <= set(written.tolist())  # every changed row is written
    for j, segment in enumerate(ropes):
        assert 1 <= len(segment) <= MAX_PARTS
        got = []
        for f, o, m in segment:
            got += [written_rows[o + i] for i in range(m)] if f is None else [(f, o + i) for i in range(m)]
        assert got == new[at[j]:at[j + 1]]
        if len(segment) > 1:
            assert all(m for _f, _o, m in segment)  # an empty part only stands for an empty segment
    # a stored row is rewritten only when its segment would have more than MAX_PARTS parts otherwise
    for r in written.tolist():
        if src[r] >= 0:
            j = int(np.searchsorted(at, r, side="right")) - 1
            assert len(ropes[j]) == 1 or at[j + 1] - at[j] > MAX_PARTS


def test_a_segment_changed_row_by_row_is_written_whole_past_max_parts() -> None:
    parts = [("a", 0, 40)]
    drop = np.arange(1, 40, 4, dtype=np.int64)  # ten rows replaced, none next to another
    src = _splice_index(40, drop, drop)
    written, ropes = _ropes(parts, src, np.asarray([0, len(src)], dtype=np.int64))
    assert ropes == [[(None, 0, 40)]] and written.tolist() == list(range(40))
    few = _splice_index(40, drop[:2], drop[:2])  # two: five parts, kept where they lie
    written, ropes = _ropes(parts, few, np.asarray([0, 40], dtype=np.int64))
    assert written.tolist() == [1, 5] and ropes == [[("a", 0, 1), (None, 0, 1), ("a", 2, 3), (None, 1, 1),
                                                     ("a", 6, 34)]]
