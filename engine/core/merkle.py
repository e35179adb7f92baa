"""Key-range segments hashed with BLAKE3 and arranged in a Merkle tree, to localise divergence.

Boundaries are chosen once per run (every ``segment_rows``-th key of one side, or taken from a
previous manifest) and applied to *both* sides: a row inserted or deleted on one side then changes
only its own segment, never shifts the others. Segment ``i`` holds the keys ``b[i] <= key < b[i+1]``
(the first segment is open below, the last open above).

A segment's digest is one BLAKE3 call over the contiguous bytes of its rows' canonical encoding
(``engine.core.normalize``, version 2: slices of the typed columns' own buffers, joined by one copy). The tree follows RFC 6962's domain separation (leaf = H(0x00 || index || digest),
node = H(0x01 || left || right)) so a leaf can never be passed off as a node. Segments are
independent: a distributed engine (Dask, Ray) can hash disjoint key ranges and hand the digests to
:func:`build_tree`.

>>> choose_boundaries(pl.Series(["a", "b", "c", "d", "e"]), segment_rows=2)
['c', 'e']
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import blake3
import numpy as np
import polars as pl
import pyarrow as pa

from engine.core.normalize import FieldSpec, frame_bytes, segment_bytes

LEAF = b"\x00"
NODE = b"\x01"
DEFAULT_SEGMENT_ROWS = 16_384
HASH_CHUNK_ROWS = 1 << 17  # rows whose encoding buffers exist at once per thread (bounded memory)
HASH_THREADS = 2  # slices hashed at once


@dataclass(frozen=True)
class SideTree:
    """One side's segments.

    digests: BLAKE3 digest per segment (32 bytes each).
    rows: row count per segment.
    root: the Merkle root over all segments.
    """

    digests: tuple[bytes, ...]
    rows: tuple[int, ...]
    root: bytes

    @property
    def root_hex(self) -> str:
        return self.root.hex()


@dataclass(frozen=True)
class Segmentation:
    """The boundaries shared by both sides and their digest (stored with every root)."""

    boundaries: tuple[str, ...]

    @property
    def digest(self) -> str:
        return boundaries_digest(self.boundaries)

    def ranges(self) -> list[tuple[str | None, str | None]]:
        """(from inclusive, to exclusive) per segment; None = unbounded."""
        b = list(self.boundaries)
        if not b:
            return [(None, None)]
        return [(None, b[0])] + [(b[i], b[i + 1] if i + 1 < len(b) else None) for i in range(len(b))]


def boundaries_digest(boundaries: tuple[str, ...] | list[str]) -> str:
    # the boundary list's own framing is version 1 whatever the row encoding: old manifests verify
    h = blake3.blake3(b"recon-boundaries-v1\n")
    for b in boundaries:
        e = b.encode()
        h.update(str(len(e)).encode() + b":" + e)
    return h.hexdigest()


def choose_boundaries(sorted_keys: pl.Series, segment_rows: int = DEFAULT_SEGMENT_ROWS) -> list[str]:
    """Every ``segment_rows``-th distinct key of an already sorted key column (the first excluded,
    so no segment starts empty)."""
    if segment_rows < 1:
        raise ValueError("segment_rows must be positive")
    picks = sorted_keys.gather_every(segment_rows, offset=segment_rows).to_list()
    out: list[str] = []
    for p in picks:  # one per segment, not per row; drops repeats of a heavily duplicated key
        if not out or p != out[-1]:
            out.append(p)
    if out and out[0] == sorted_keys[0]:
        out = out[1:]
    return out


def segment_counts(sorted_keys: pl.Series, seg: Segmentation) -> np.ndarray:
    """Rows per segment (keys sorted): rows are sorted, so a segment is a run, found with one
    binary search per boundary, not one per row, and nothing of a row's size is kept."""
    if not seg.boundaries:
        return np.array([len(sorted_keys)], dtype=np.int64)
    b = pl.Series("b", list(seg.boundaries), dtype=pl.Utf8)
    starts = sorted_keys.search_sorted(b, side="left").to_numpy().astype(np.int64)
    counts = np.diff(np.concatenate([[0], starts, [len(sorted_keys)]]))
    if (counts < 0).any():
        raise ValueError("segment boundaries are not in increasing order")
    return counts


class StreamingCut:
    """:func:`choose_boundaries` and :func:`segment_counts` over a key column that arrives sorted,
    batch by batch, holding one batch and the boundaries: the coordinator's cut of a billion keys
    need not hold a billion keys (bench/RESULTS.md "Key ranges at scale").

    :meth:`feed` refuses (returns False) a batch that is not sorted or does not continue from the
    previous batch's last key, or holds a NULL: the caller then cuts in memory, which sorts.
    """

    def __init__(self, segment_rows: int = DEFAULT_SEGMENT_ROWS) -> None:
        if segment_rows < 1:
            raise ValueError("segment_rows must be positive")
        self.segment_rows = segment_rows
        self.rows = 0
        self._first: str | None = None
        self._last: str | None = None
        self._last_start = 0  # the row where the run of ``_last`` begins (its first occurrence)
        self.boundaries: list[str] = []
        self._starts: list[int] = []  # the row where each boundary's segment begins

    def feed(self, keys: pl.Series) -> bool:
        """Take the next batch of keys; False when it breaks the order (nothing is taken then)."""
        m = len(keys)
        if m == 0:
            return True
        if keys.null_count() or (m > 1 and (keys.slice(1) < keys.slice(0, m - 1)).any()):
            return False
        first, last = keys[0], keys[m - 1]
        if self._last is not None and first < self._last:
            return False
        if self._first is None:
            self._first = first
        s = self.segment_rows
        pick_at = max(s, -(-self.rows // s) * s) - self.rows  # the batch's first row at a multiple of s
        if pick_at < m:
            picks = keys.gather_every(s, offset=pick_at)
            # a boundary's segment starts at its key's first row (search_sorted "left")
            where = keys.search_sorted(picks, side="left").to_list()
            for v, i in zip(picks.to_list(), where, strict=True):
                if v == self._first or (self.boundaries and v == self.boundaries[-1]):
                    continue  # the first key is no boundary; one pick per run of a repeated key
                self.boundaries.append(v)
                self._starts.append(self._last_start if i == 0 and v == self._last else self.rows + i)
        i = int(keys.search_sorted(last, side="left"))
        self._last_start = self._last_start if i == 0 and last == self._last else self.rows + i
        self._last = last
        self.rows += m
        return True

    def counts(self) -> np.ndarray:
        """Rows per segment, as :func:`segment_counts` gives them for :attr:`boundaries`."""
        return np.diff(np.array([0, *self._starts, self.rows], dtype=np.int64))


def segment_ids(sorted_keys: pl.Series, seg: Segmentation) -> np.ndarray:
    """Segment index of each row (keys sorted); segment 0 is below the first boundary."""
    counts = segment_counts(sorted_keys, seg)
    return np.repeat(np.arange(len(counts), dtype=np.int64), counts)


def _starts(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _blake3(data: bytes | memoryview) -> bytes:
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO if len(data) > 1 << 22 else 1).digest()


def hash_segments(frame: pl.DataFrame | pa.Table, fields: tuple[FieldSpec, ...] | list[FieldSpec],
                  counts: np.ndarray) -> tuple[list[bytes], list[int]]:
    """One BLAKE3 call per segment over its contiguous version-2 bytes (rows sorted by key;
    ``counts``: rows per segment; ``frame`` in Polars or, as an incremental state stores it, Arrow)."""
    n_segments = len(counts)
    starts = _starts(counts)
    runs: list[tuple[int, int]] = []  # the column buffers are taken a slice of about HASH_CHUNK_ROWS rows at a time
    i = 0
    while i < n_segments:
        j = i + 1
        while j < n_segments and starts[j + 1] - starts[i] <= HASH_CHUNK_ROWS:
            j += 1
        runs.append((i, j))
        i = j

    def run(span: tuple[int, int]) -> list[bytes]:
        i, j = span
        base = int(starts[i])
        cols = frame_bytes(frame.slice(base, int(starts[j]) - base), fields)
        return [_blake3(segment_bytes(cols, int(starts[k]) - base, int(starts[k + 1]) - base)) for k in range(i, j)]

    if len(runs) < 2 or HASH_THREADS < 2:
        parts = [run(r) for r in runs]
    else:  # slices are independent and their work (Polars, NumPy, BLAKE3) mostly runs without the GIL
        with ThreadPoolExecutor(HASH_THREADS) as pool:
            parts = list(pool.map(run, runs))
    return [d for part in parts for d in part], counts.astype(int).tolist()


def hash_rows_v1(rows: pl.Series, counts: np.ndarray) -> tuple[list[bytes], list[int]]:
    """Version 1: one BLAKE3 call per segment over its rows' texts (``normalize.row_text``), which
    sit in one Arrow string buffer in key order. Kept to verify version-1 manifests."""
    arr = rows.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type != pa.large_string():
        arr = arr.cast(pa.large_string())
    n_segments = len(counts)
    starts = _starts(counts)
    if len(arr):
        _, offsets_buf, data_buf = arr.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
        data = memoryview(data_buf) if data_buf is not None else memoryview(b"")
    digests: list[bytes] = []
    for i in range(n_segments):
        if counts[i] == 0:
            digests.append(blake3.blake3(b"").digest())
            continue
        lo, hi = int(offsets[starts[i]]), int(offsets[starts[i + 1]])
        digests.append(_blake3(data[lo:hi]))
    return digests, counts.astype(int).tolist()


def build_levels(digests: list[bytes] | tuple[bytes, ...]) -> list[list[bytes]]:
    """All levels of the tree, leaves first; an odd node is promoted unchanged (RFC 6962 shape)."""
    # a leaf is BLAKE3(LEAF || index, 8 bytes big-endian || digest), a node BLAKE3(NODE || left ||
    # right), written inline: a tree of tens of thousands of segments is built in every incremental run
    b3 = blake3.blake3
    level = [b3(LEAF + i.to_bytes(8, "big") + d).digest() for i, d in enumerate(digests)] or [b3(LEAF).digest()]
    levels = [level]
    while len(level) > 1:
        nxt = [b3(NODE + a + b).digest() for a, b in zip(level[0::2], level[1::2], strict=False)]
        if len(level) % 2:
            nxt.append(level[-1])
        levels.append(nxt)
        level = nxt
    return levels


def build_tree(digests: list[bytes], rows: list[int]) -> SideTree:
    return SideTree(digests=tuple(digests), rows=tuple(rows), root=build_levels(digests)[-1][0])


def divergent_segments(a: SideTree, b: SideTree) -> list[int]:
    """Descend both trees from the root and return the indices of differing segments.

    With equal roots this is one comparison; otherwise only differing subtrees are visited, which
    is what lets two remote parties exchange O(d log n) hashes instead of every segment digest.
    """
    if len(a.digests) != len(b.digests):
        raise ValueError("trees built on different boundaries")
    return _divergent(build_levels(a.digests), build_levels(b.digests))


def trees_and_divergence(a_digests: list[bytes], a_rows: list[int], b_digests: list[bytes], b_rows: list[int]
                         ) -> tuple[SideTree, SideTree, list[int]]:
    """Both sides' trees and :func:`divergent_segments`, each side's levels built once (with tens of
    thousands of segments, a build is a noticeable part of an incremental run)."""
    if len(a_digests) != len(b_digests):
        raise ValueError("trees built on different boundaries")
    la, lb = build_levels(a_digests), build_levels(b_digests)
    return (SideTree(tuple(a_digests), tuple(a_rows), la[-1][0]), SideTree(tuple(b_digests), tuple(b_rows), lb[-1][0]),
            _divergent(la, lb))


def _divergent(la: list[list[bytes]], lb: list[list[bytes]]) -> list[int]:
    if la[-1][0] == lb[-1][0]:
        return []
    frontier = [0]
    for depth in range(len(la) - 1, 0, -1):
        nxt = []
        for i in frontier:
            for child in (2 * i, 2 * i + 1):
                if child < len(la[depth - 1]) and la[depth - 1][child] != lb[depth - 1][child]:
                    nxt.append(child)
        frontier = nxt
    return frontier


def side_tree(frame: pl.DataFrame, fields: tuple[FieldSpec, ...] | list[FieldSpec],
              seg: Segmentation) -> tuple[SideTree, np.ndarray]:
    """Hash one canonical side (sorted by ``__key``) and return its tree and its rows per segment."""
    counts = segment_counts(frame["__key"], seg)
    digests, _ = hash_segments(frame, fields, counts)
    return build_tree(digests, counts.astype(int).tolist()), counts
