"""Where the touched segments go in the new segment list when some of them were split: the fast
forms (one lookup or binary search per boundary) against the definitions, written out as plainly
as possible (one scan of the boundaries per touched segment and boundary)."""

from __future__ import annotations

import bisect

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.app.incremental import _pieces, _touched_bounds


def _pieces_by_definition(T: list[int], bounds: list[str], new_bounds: list[str]) -> dict[int, list[int]]:
    extra = [b for b in new_bounds if b not in bounds]
    out, pos = {}, 0
    for i in T:
        n = 1 + sum(1 for b in extra if bisect.bisect_right(bounds, b) == i)
        out[i] = list(range(pos, pos + n))
        pos += n
    return out


def _touched_by_definition(T: list[int], bounds: list[str], new_bounds: list[str]) -> list[str]:
    out = []
    for b in new_bounds:
        if b in bounds:
            i = bounds.index(b) + 1  # the segment b starts
            keep = i in T and i != T[0]
        else:
            keep = bisect.bisect_right(bounds, b) in T  # a split point inside that segment
        if keep:
            out.append(b)
    return out


@st.composite
def _layouts(draw: st.DrawFn) -> tuple[list[int], list[str], list[str]]:
    keys = sorted(draw(st.sets(st.integers(0, 500), min_size=0, max_size=40)))
    bounds = [f"k{k:04d}" for k in keys]
    splits = draw(st.sets(st.integers(0, 500), max_size=12))
    new_bounds = sorted(set(bounds) | {f"k{k:04d}" for k in splits})
    T = sorted(draw(st.sets(st.integers(0, len(bounds)), max_size=len(bounds) + 1)))
    # a split point lies only inside a touched segment (only those are rewritten)
    new_bounds = [b for b in new_bounds if b in bounds or bisect.bisect_right(bounds, b) in T]
    return T, bounds, new_bounds


@settings(max_examples=300, deadline=None)
@given(_layouts())
def test_pieces_and_touched_bounds_match_their_definitions(layout: tuple[list[int], list[str], list[str]]) -> None:
    T, bounds, new_bounds = layout
    assert _pieces(T, bounds, new_bounds) == _pieces_by_definition(T, bounds, new_bounds)
    assert _touched_bounds(T, bounds, new_bounds) == _touched_by_definition(T, bounds, new_bounds)


def test_a_split_segment_gets_one_position_per_piece() -> None:
    bounds = ["b", "d", "f"]  # segments: <b, [b,d), [d,f), >=f
    new_bounds = ["b", "c", "d", "e", "f"]  # c splits segment 1, e splits segment 2
    assert _pieces([1, 2, 3], bounds, new_bounds) == {1: [0, 1], 2: [2, 3], 3: [4]}
    assert _touched_bounds([1, 2, 3], bounds, new_bounds) == ["c", "d", "e", "f"]
