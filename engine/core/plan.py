"""The key-range plan: a diff larger than memory (or spread over a cluster) runs as independent
tasks, each reading one range of canonical keys from both sides.

The Merkle segments are already key ranges (:mod:`engine.core.merkle`); a range task is a run of
whole consecutive segments. Because boundaries are canonical keys chosen once for the run and a
segment never straddles two tasks, a task hashes exactly the segments a one-pass diff would hash,
so the roots, counts and variances are the same for every executor and range size: the
coordinator only concatenates the tasks' segment digests (in segment order) and sums their counts.

>>> p = plan_ranges(["c", "e", "g"], [2, 2, 2, 2], range_rows=4)
>>> [(t.key_range.lo, t.key_range.hi, t.boundaries) for t in p.tasks]
[(None, 'e', ('c',)), ('e', None, ('g',))]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

#: Bytes of process memory one source row costs in a one-pass diff, both sides together (measured:
#: 5.2 GB peak for 10M rows PostgreSQL↔PostgreSQL with four compared columns, bench/RESULTS.md),
#: used only when a source cannot say how wide its rows are.
DEFAULT_BYTES_PER_ROW = 520
MIN_RANGE_ROWS = 1_024


@dataclass(frozen=True)
class KeyRange:
    """Canonical keys ``lo <= key < hi`` (byte order of the canonical key text); None is open.

    A connector may return a superset of the range (its native order can differ from canonical
    order); the task keeps exactly the rows :meth:`expr` selects, so a server predicate only ever
    saves work, never decides membership.
    """

    lo: str | None = None
    hi: str | None = None

    @property
    def whole(self) -> bool:
        return self.lo is None and self.hi is None

    def expr(self, column: str = "__key") -> pl.Expr:
        """Whether a canonical key lies in the range (Polars compares strings by their UTF-8 bytes)."""
        c = pl.col(column)
        e = pl.lit(True)
        if self.lo is not None:
            e = e & (c >= pl.lit(self.lo, dtype=pl.Utf8))
        if self.hi is not None:
            e = e & (c < pl.lit(self.hi, dtype=pl.Utf8))
        return e

    def as_json(self) -> dict[str, str | None]:
        return {"from": self.lo, "to": self.hi}


@dataclass(frozen=True)
class RangeTask:
    """One task: segments ``first_segment .. first_segment + segments - 1`` of the run.

    boundaries: the run's boundaries strictly inside the range, so the task's own segmentation is
    exactly these segments. source_rows: the source rows counted in the range when it was cut.
    """

    index: int
    first_segment: int
    segments: int
    key_range: KeyRange
    boundaries: tuple[str, ...]
    source_rows: int

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, **self.key_range.as_json(), "first_segment": self.first_segment,
                "segments": self.segments, "source_rows": self.source_rows}


@dataclass(frozen=True)
class Plan:
    boundaries: tuple[str, ...]
    tasks: tuple[RangeTask, ...]
    range_rows: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def segments(self) -> int:
        return len(self.boundaries) + 1


def plan_ranges(boundaries: Sequence[str], segment_rows: Sequence[int], range_rows: int) -> Plan:
    """Group consecutive segments into tasks of about ``range_rows`` source rows (a segment larger
    than that is a task of its own: segments are never split).

    ``segment_rows``: source rows per segment (``len(boundaries) + 1`` values).
    """
    b = tuple(boundaries)
    counts = list(segment_rows)
    if len(counts) != len(b) + 1:
        raise ValueError("one row count per segment is needed")
    if range_rows < 1:
        raise ValueError("range_rows must be positive")
    tasks: list[RangeTask] = []
    i = 0
    n = len(counts)
    while i < n:
        j, rows = i + 1, counts[i]
        while j < n and rows + counts[j] <= range_rows:
            rows += counts[j]
            j += 1
        lo = b[i - 1] if i > 0 else None
        hi = b[j - 1] if j < n else None
        tasks.append(RangeTask(index=len(tasks), first_segment=i, segments=j - i, key_range=KeyRange(lo, hi),
                               boundaries=b[i:j - 1], source_rows=rows))
        i = j
    return Plan(boundaries=b, tasks=tuple(tasks), range_rows=range_rows)


def range_rows_for(memory_limit: int, *, workers: int, bytes_per_row: int = DEFAULT_BYTES_PER_ROW) -> int:
    """Source rows per task so that ``workers`` tasks at once stay within ``memory_limit`` bytes.

    Half the limit is left for what is not a task's rows (the interpreter and libraries, the
    coordinator's key cut, the readers' buffers).

    >>> range_rows_for(3 * 2**30, workers=2, bytes_per_row=520)
    1548666
    """
    per_task = memory_limit // 2 // max(1, workers)
    return max(MIN_RANGE_ROWS, per_task // max(1, bytes_per_row))
