"""A diff run as key-range tasks: the coordinator cuts the boundaries from the source's keys alone,
groups segments into ranges (:mod:`engine.core.plan`), an executor runs one task per range, and the
coordinator merges the tasks' parts into one :class:`~engine.core.diff.DiffResult`.

Each task reads its range from both sides (in the run's snapshot where the system has one),
canonicalizes, keeps exactly the rows whose canonical key is in the range, and runs the one-pass
:func:`engine.core.diff.compare` on them with the run's boundaries inside the range. A segment
never straddles two tasks, so the merged segment digests are the one-pass digests and the roots,
counts and variances are the same whatever the executor and range size.

A task spec is picklable and holds no secret: references (a PostgreSQL DSN without its password),
the non-secret config, the snapshot token. A worker reads secrets from its own environment.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from engine.config import Config
from engine.connectors.base import Extract, ReadRequest, Source
from engine.connectors.refs import parse_reference
from engine.connectors.registry import source_for
from engine.core import merkle
from engine.core.diff import EXACT, ColumnStats, DiffResult, compare
from engine.core.errors import UsageError
from engine.core.normalize import Canonical, FieldSpec, SideOptions, canonicalize, typed
from engine.core.plan import KeyRange, Plan, RangeTask

PART_NAME = "part-{:05d}.parquet"


@dataclass(frozen=True)
class SideSpec:
    """One side of a task: what to read and in which snapshot (no secret)."""

    ref: str
    fields: tuple[FieldSpec, ...]
    where: str | None = None
    updated_at: str | None = None
    snapshot: str | None = None
    #: whether the system may filter by the key range (false: its stored keys do not all sort as
    #: their canonical form, so each task reads the side whole and filters it itself)
    pushdown: bool = True

    def request(self, key_range: KeyRange | None, as_of: datetime | None, *, keys_only: bool = False) -> ReadRequest:
        fields = [f for f in self.fields if f.is_key] if keys_only else list(self.fields)
        keys = tuple(f for f in self.fields if f.is_key)
        return ReadRequest([f.column for f in fields], self.where, as_of=as_of, updated_at=self.updated_at,
                           key_columns=[f.column for f in keys], key_range=key_range,
                           key_fields=keys if self.pushdown or key_range is None else (), snapshot=self.snapshot)


@dataclass(frozen=True)
class TaskSpec:
    source: SideSpec
    target: SideSpec
    task: RangeTask
    config: Config
    as_of: datetime | None = None
    #: where the task writes its part of differences.parquet (None: it returns the rows)
    parts_dir: str | None = None
    #: where it writes its part of each side's canonical snapshot (manifest --data), if asked
    snapshot_dir: str | None = None


@dataclass
class TaskResult:
    index: int
    source_digests: list[bytes]
    source_rows: list[int]
    target_digests: list[bytes]
    target_rows: list[int]
    counts: dict[str, int]
    columns: dict[str, tuple[int, Decimal | None, Decimal | None, Decimal | None]]
    divergent: list[int]  # global segment indices
    null_counts: dict[str, dict[str, int]]  # side → field name → NULLs
    rows_read: dict[str, int]  # side → rows the system returned (before the exact range filter)
    meta: dict[str, dict[str, Any]]  # side → extraction metadata
    part: str | None = None
    differences: pl.DataFrame | None = None
    elapsed_s: float = 0.0


def _read_side(spec: SideSpec, config: Config, key_range: KeyRange, as_of: datetime | None
               ) -> tuple[Canonical, Extract, int, set[str]]:
    src = source_for(parse_reference(spec.ref), config)
    e = src.read(spec.request(None if key_range.whole else key_range, as_of))
    read = e.frame.height
    frame, e.frame = e.frame, e.frame.clear()
    try:
        c = canonicalize(frame, spec.fields, src.side)
    except ValueError as exc:
        raise UsageError(f"cannot normalize {spec.ref}: {exc}") from None
    if not key_range.whole:
        c = Canonical(frame=c.frame.filter(key_range.expr()), fields=c.fields, unique_keys=c.unique_keys)
    flight = in_flight_keys(e, spec.fields, src.side, key_range)
    return c, e, read, flight


def in_flight_keys(e: Extract, fields: tuple[FieldSpec, ...], opts: SideOptions, key_range: KeyRange) -> set[str]:
    """The canonical keys of the rows the side reports changed after ``--as-of``, in the range."""
    from engine.core.normalize import key_expr

    if e.in_flight is None or e.in_flight.height == 0:
        return set()
    keys = [f for f in fields if f.is_key]
    try:
        df = pl.DataFrame([typed(e.in_flight[f.column], f.ctype, opts).alias(f.name) for f in keys])
    except ValueError as exc:
        raise UsageError(f"cannot normalize the keys changed after --as-of: {exc}") from None
    k = df.select(key_expr(keys).alias("__key")).filter(key_range.expr())
    return set(k["__key"].to_list())


def run_task(spec: TaskSpec) -> TaskResult:
    """Diff one key range; the unit of work an executor runs (module-level: picklable by name)."""
    t0 = time.perf_counter()
    t = spec.task
    with ThreadPoolExecutor(2, thread_name_prefix="recon-side") as pool:  # both sides at once, as one pass does
        fs = pool.submit(_read_side, spec.source, spec.config, t.key_range, spec.as_of)
        ft = pool.submit(_read_side, spec.target, spec.config, t.key_range, spec.as_of)
        cs, es, s_read, s_flight = fs.result()
        ct, et, t_read, t_flight = ft.result()
    r = compare(cs, ct, boundaries=list(t.boundaries), in_flight_keys=s_flight | t_flight)
    if len(r.source_tree.digests) != t.segments:  # the plan and the task disagree: never merge it
        raise RuntimeError(f"range {t.index} hashed {len(r.source_tree.digests)} segments, planned {t.segments}")
    nulls = {side: {f.name: int(c.frame[f.name].null_count()) for f in c.fields}
             for side, c in (("source", cs), ("target", ct))}
    if spec.snapshot_dir:
        from engine.core.normalize import decimal_view

        for side, c in (("source", cs), ("target", ct)):
            d = Path(spec.snapshot_dir) / f"snapshot-{side}"
            d.mkdir(parents=True, exist_ok=True)
            decimal_view(c.frame, c.fields).write_parquet(d / PART_NAME.format(t.index))
    del cs, ct
    diffs = r.differences
    part = None
    if spec.parts_dir is not None:
        p = Path(spec.parts_dir) / PART_NAME.format(t.index)
        p.parent.mkdir(parents=True, exist_ok=True)
        diffs.write_parquet(p)
        part, diffs = str(p), None
    counts = {"source_rows": r.source_rows, "target_rows": r.target_rows, "source_keys": r.source_keys,
              "union_keys": r.union_keys, "missing_in_target": r.missing_in_target,
              "missing_in_source": r.missing_in_source, "mismatched": r.mismatched, "unchanged": r.unchanged,
              "in_flight": r.in_flight, "duplicate_keys_source": r.duplicate_keys_source,
              "duplicate_keys_target": r.duplicate_keys_target}
    cols = {n: (c.mismatched, c.abs_variance, c.net_variance, c.source_abs_total) for n, c in r.columns.items()}
    return TaskResult(
        index=t.index, source_digests=list(r.source_tree.digests), source_rows=list(r.source_tree.rows),
        target_digests=list(r.target_tree.digests), target_rows=list(r.target_tree.rows), counts=counts,
        columns=cols, divergent=[t.first_segment + i for i in r.divergent], null_counts=nulls,
        rows_read={"source": s_read, "target": t_read}, meta={"source": es.meta, "target": et.meta},
        part=part, differences=diffs, elapsed_s=time.perf_counter() - t0)


# -- the coordinator ---------------------------------------------------------------------------------
def cut(source: SideSpec, config: Config, segment_rows: int, as_of: datetime | None
        ) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """The run's boundaries from the source's key columns alone (every ``segment_rows``-th key in
    canonical order, as a one-pass diff chooses them) and the source rows per segment."""
    src: Source = source_for(parse_reference(source.ref), config)
    keys = tuple(f for f in source.fields if f.is_key)
    streamed = _stream_cut(src, source, keys, segment_rows, as_of)
    if streamed is not None:
        return streamed
    e = src.read(source.request(None, as_of, keys_only=True))
    frame, e.frame = e.frame, e.frame.clear()
    try:
        c = canonicalize(frame, keys, src.side)
    except ValueError as exc:
        raise UsageError(f"cannot normalize {source.ref}: {exc}") from None
    k = c.frame["__key"]
    del c
    boundaries = merkle.choose_boundaries(k, segment_rows)
    counts = merkle.segment_counts(k, merkle.Segmentation(tuple(boundaries)))
    del k
    # the keys' read buffers go back to the system: under Dask the coordinator would otherwise hold
    # them (≈0.9 GB of Arrow's pool at 30M keys, bench/RESULTS.md) while the workers run
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    return boundaries, counts, {**e.meta, "cut": "memory"}


def _stream_cut(src: Source, source: SideSpec, keys: tuple[FieldSpec, ...], segment_rows: int,
                as_of: datetime | None) -> tuple[list[str], np.ndarray, dict[str, Any]] | None:
    """The cut from keys the source streams in canonical order (a single text, id or int key of a
    source that can sort it: PostgreSQL), holding one batch and the boundaries instead of every
    key. None when the source cannot, or when a batch's canonical keys break the order (a key not
    stored in NFC, a server order that is not byte order): the caller then cuts in memory."""
    from engine.core.normalize import key_expr

    opener = getattr(src, "sorted_keys", None)
    if opener is None or len(keys) != 1 or keys[0].ctype.kind not in ("text", "id", "int"):
        return None
    (key,) = keys
    picker = merkle.StreamingCut(segment_rows)
    with opener(source.request(None, as_of, keys_only=True)) as stream:
        if not stream.supported:
            return None
        for batch in stream:
            try:
                k = pl.DataFrame([typed(batch[batch.columns[0]], key.ctype, src.side).alias(key.name)]
                                 ).select(key_expr(keys).alias("__key"))["__key"]
            except ValueError:
                return None  # the in-memory cut reports it
            if not picker.feed(k):
                return None
    return picker.boundaries, picker.counts(), {"rows": picker.rows, "cut": "stream"}


def merge(plan: Plan, results: list[TaskResult]) -> DiffResult:
    """One result from the tasks' parts, in range order: digests concatenated (so the roots are
    the one-pass roots), counts and variances summed exactly."""
    results = sorted(results, key=lambda r: r.index)
    if [r.index for r in results] != list(range(len(plan.tasks))):
        raise RuntimeError("a range's result is missing")
    sd = [d for r in results for d in r.source_digests]
    sr = [n for r in results for n in r.source_rows]
    td = [d for r in results for d in r.target_digests]
    tr = [n for r in results for n in r.target_rows]
    if len(sd) != plan.segments:
        raise RuntimeError(f"the ranges hashed {len(sd)} segments, the plan has {plan.segments}")
    total: dict[str, int] = {}
    for r in results:
        for k, v in r.counts.items():
            total[k] = total.get(k, 0) + v
    columns: dict[str, ColumnStats] = {}
    with localcontext(EXACT):
        for name in results[0].columns:
            n, a, b, c = 0, None, None, None
            for r in results:
                rn, ra, rb, rc = r.columns[name]
                n += rn
                a = ra if a is None else (a if ra is None else a + ra)
                b = rb if b is None else (b if rb is None else b + rb)
                c = rc if c is None else (c if rc is None else c + rc)
            columns[name] = ColumnStats(n, a, b, c)
    parts = [r.part for r in results if r.part]
    if parts:
        plan_frame = pl.scan_parquet(parts)
    else:
        frames = [r.differences for r in results if r.differences is not None]
        plan_frame = pl.concat(frames).lazy()
    seg = merkle.Segmentation(plan.boundaries)
    return DiffResult(
        source_rows=total["source_rows"], target_rows=total["target_rows"], source_keys=total["source_keys"],
        union_keys=total["union_keys"], missing_in_target=total["missing_in_target"],
        missing_in_source=total["missing_in_source"], mismatched=total["mismatched"], unchanged=total["unchanged"],
        in_flight=total["in_flight"], duplicate_keys_source=total["duplicate_keys_source"],
        duplicate_keys_target=total["duplicate_keys_target"], columns=columns, segmentation=seg,
        source_tree=merkle.build_tree(sd, sr), target_tree=merkle.build_tree(td, tr),
        divergent=[i for r in results for i in r.divergent], differences_plan=plan_frame)


@dataclass
class Progress:
    """Ranges done, rows/s and an ETA, for the terminal line and ``--progress json``."""

    total: int
    rows_total: int
    emit: Callable[[dict[str, Any]], None]
    done: int = 0
    rows_done: int = 0
    t0: float = field(default_factory=time.perf_counter)

    def start(self) -> None:
        self.emit(self.snapshot())

    def step(self, rows: int) -> None:
        self.done += 1
        self.rows_done += rows
        self.emit(self.snapshot())

    def snapshot(self) -> dict[str, Any]:
        el = time.perf_counter() - self.t0
        rate = self.rows_done / el if el > 0 and self.rows_done else 0.0
        left = max(0, self.rows_total - self.rows_done)
        eta = round(left / rate, 1) if rate else None
        return {"ranges_done": self.done, "ranges_total": self.total, "rows_done": self.rows_done,
                "rows_total": self.rows_total, "rows_per_s": round(rate), "elapsed_s": round(el, 1), "eta_s": eta}



def with_pushdown(spec: SideSpec, src: Source) -> SideSpec:
    """``spec`` without key-range pushdown when the side's stored keys do not all sort as their
    canonical form (a text key not in Unicode NFC): the server would send such a row to the range
    of its stored spelling, and the task that holds it canonically would never see it."""
    from dataclasses import replace

    check = getattr(src, "keys_as_canonical", None)
    if check is None or check(spec.fields, spec.snapshot):
        return spec
    return replace(spec, pushdown=False)
