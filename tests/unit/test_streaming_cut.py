"""The streaming cut (:class:`engine.core.merkle.StreamingCut`) gives exactly the boundaries and
segment counts of the in-memory cut, whatever the batch edges: it replaces that cut for sources
that stream their keys in canonical order, so any difference would change a run's roots."""

from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest

from engine.core import merkle


def _stream(keys: list[str], segment_rows: int, edges: list[int]) -> tuple[list[str], list[int]]:
    cut = merkle.StreamingCut(segment_rows)
    lo = 0
    for hi in [*edges, len(keys)]:
        assert cut.feed(pl.Series("k", keys[lo:hi], dtype=pl.Utf8))
        lo = hi
    assert cut.rows == len(keys)
    return cut.boundaries, cut.counts().tolist()


def _memory(keys: list[str], segment_rows: int) -> tuple[list[str], list[int]]:
    s = pl.Series("k", keys, dtype=pl.Utf8)
    b = merkle.choose_boundaries(s, segment_rows)
    return b, merkle.segment_counts(s, merkle.Segmentation(tuple(b))).tolist()


@pytest.mark.parametrize("seed", range(40))
def test_random_sorted_keys_with_heavy_duplicates(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.choice([1, 2, 5, 50, 300, 1000])
    alphabet = rng.choice([2, 5, 30, 1000])  # 2 distinct keys: runs far longer than a segment
    keys = sorted(f"k{rng.randrange(alphabet):04d}" for _ in range(n))
    seg = rng.choice([1, 2, 3, 7, 16, 64])
    edges = sorted(rng.sample(range(1, n), min(n - 1, rng.randrange(0, 20)))) if n > 1 else []
    assert _stream(keys, seg, edges) == _memory(keys, seg)


def test_batch_edges_on_duplicates() -> None:
    """A boundary's segment starts at its key's first row, even when that row is batches back."""
    keys = ["a"] * 3 + ["b"] * 10 + ["c"] * 2 + ["d"]
    for seg in (1, 2, 4, 5):
        expected = _memory(keys, seg)
        for edges in ([], [4], [4, 8], [3, 5, 7, 9, 11, 13], list(range(1, len(keys)))):
            assert _stream(keys, seg, edges) == expected, (seg, edges)
    assert _stream(keys, 4, [4, 8]) == (["b"], [3, 13])
    assert _stream(keys, 7, [4, 8]) == (["b", "c"], [3, 10, 3])


def test_first_key_repeated_is_no_boundary() -> None:
    keys = ["a"] * 9 + ["b", "c"]
    assert _stream(keys, 2, [1, 3, 6]) == _memory(keys, 2) == (["c"], [10, 1])


def test_empty_and_one_row() -> None:
    assert _stream([], 4, []) == _memory([], 4) == ([], [0])
    assert _stream(["x"], 1, []) == _memory(["x"], 1) == ([], [1])
    cut = merkle.StreamingCut(3)
    assert cut.feed(pl.Series("k", [], dtype=pl.Utf8))
    assert cut.counts().tolist() == [0]


def test_order_breaks_are_refused() -> None:
    cut = merkle.StreamingCut(2)
    assert not cut.feed(pl.Series("k", ["b", "a"]))  # within a batch
    assert cut.rows == 0
    assert cut.feed(pl.Series("k", ["a", "c"]))
    assert not cut.feed(pl.Series("k", ["b", "d"]))  # across batches
    assert not cut.feed(pl.Series("k", ["d", None]))  # a NULL key: the in-memory cut reports it
    assert cut.feed(pl.Series("k", ["c", "e"]))  # continuing from an equal key is sorted
    assert cut.rows == 4
    # byte order, not a locale's: "B" (0x42) sorts before "a" (0x61)
    assert not merkle.StreamingCut(2).feed(pl.Series("k", ["a", "B"]))
    assert isinstance(cut.counts(), np.ndarray)
