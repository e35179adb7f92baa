"""How an incremental run finds the rows a side deleted without listing them (`_find_deleted`).

The side's keys arrive in key order; its rows per segment are compared with the state's, and only
the segments whose count moved are compared key by key. When those segments do not account for
every row the side's count says went (a change behind the watermark keeps a count, say), every
segment is compared: the answer is exact either way, which these tests hold it to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import pytest

from engine.app import incremental as inc
from engine.connectors.base import Extract
from engine.core.normalize import ColumnType, FieldSpec, SideOptions

KEY = (FieldSpec("id", "id", ColumnType("text"), is_key=True),)
#: three segments: [.., a3) [a3, a5) [a5, ..)
BOUNDS = ["a3", "a5"]
HELD = ["a1", "a2", "a3", "a4", "a5", "a6"]


@dataclass
class _Keys:
    """A side that holds ``keys`` now: only the key-only read is used here (no database needed)."""

    keys: list[str]
    ref: str = "test#side"
    side: SideOptions = field(default_factory=SideOptions)
    reads: list[Any] = field(default_factory=list)

    def read(self, req: Any) -> Extract:
        self.reads.append(req)
        assert req.columns == ["id"], "the deletion check reads the key columns only"
        return Extract(pl.DataFrame({"id": self.keys}, schema={"id": pl.Utf8}), {})


def _side(keys: list[str]) -> inc._Side:
    return inc._Side("target", _Keys(keys), KEY, None, "updated_at")  # type: ignore[arg-type]


class _Held:
    """The state's keys per segment, recording which segments were asked for."""

    def __init__(self, keys: list[str]) -> None:
        s = pl.Series("__key", keys)
        ids = np.searchsorted(np.array(BOUNDS), np.array(keys), side="right")
        self.by = {i: s.filter(pl.Series(ids == i)) for i in range(len(BOUNDS) + 1)}
        self.asked: list[list[int]] = []

    def __call__(self, segs: list[int]) -> pl.Series:
        self.asked.append(list(segs))
        return pl.concat([self.by[i] for i in segs]) if segs else pl.Series("__key", [], dtype=pl.Utf8)


def _expected(keys: list[str]) -> np.ndarray:
    return np.bincount(np.searchsorted(np.array(BOUNDS), np.array(keys), side="right"), minlength=len(BOUNDS) + 1)


def test_only_the_segments_whose_count_moved_are_compared_key_by_key() -> None:
    side = _side(["a6", "a1", "a3", "a4"])  # a2 and a5 deleted; the keys arrive unsorted: sorted here
    held = _Held(HELD)
    gone, how = inc._find_deleted(side, BOUNDS, held, _expected(HELD), expect=2)
    assert how == {"by": "key read", "segments_compared": 2}
    assert sorted(gone.to_list()) == ["a2", "a5"]
    assert held.asked == [[0, 2]]  # segment 1 kept its count: never compared
    (req,) = side.src.reads  # type: ignore[attr-defined]
    assert req.key_order and [f.name for f in req.key_fields] == ["id"]  # asks the side for key order


def test_a_deletion_hidden_behind_an_unlisted_insert_falls_back_to_every_segment() -> None:
    # a2 went and a2x came in segment 0 without being listed (written behind the watermark): the
    # counts of every segment hold, the side's total says one row went, so every segment is compared
    side = _side(["a1", "a2x", "a3", "a4", "a5", "a6"])
    held = _Held(HELD)
    gone, how = inc._find_deleted(side, BOUNDS, held, _expected(HELD), expect=1)
    assert how == {"by": "key read, every segment", "segments_compared": 3}
    assert gone.to_list() == ["a2"]
    assert held.asked == [[], [0, 1, 2]]


@pytest.mark.parametrize("expect", [0, 1])
def test_nothing_deleted_finds_nothing(expect: int) -> None:
    held = _Held(HELD)
    assert inc._find_deleted(_side(HELD), BOUNDS, held, _expected(HELD), expect=expect)[0].len() == 0


def test_without_counts_every_segment_is_compared() -> None:
    held = _Held(HELD)
    gone, _ = inc._find_deleted(_side(["a1", "a3", "a4", "a6", "z9"]), BOUNDS, held)  # z9: new, not the state's business
    assert sorted(gone.to_list()) == ["a2", "a5"] and held.asked == [[0, 1, 2]]
