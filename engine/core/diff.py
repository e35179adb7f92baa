"""Record-level diff of two canonical sides, inside the segments the Merkle trees say diverge.

Counting rules (ARCHITECTURE.md, the contract): every distinct key of the union falls in exactly
one class — ``missing_in_target``, ``missing_in_source``, ``mismatched``, ``unchanged`` (or
``in_flight`` when ``--as-of`` says it changed after the snapshot time). A key duplicated on a side
is mismatched unless both sides hold the same multiset of rows; per-column counts and variances
only look at keys unique on both sides. The warehouse may hold the very duplicates the incident is
about: they are counted, never double counted and never a crash.

Everything here is columnar (Polars); no Python loop touches rows.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Context, Decimal, localcontext
from typing import Any

import numpy as np
import polars as pl

from engine.core import merkle
from engine.core.normalize import (
    ENCODING_VERSION,
    Canonical,
    FieldSpec,
    decimal_view,
    is_scaled,
    row_text,
    same_as_previous,
    scaled_text,
    to_decimal,
)
from engine.core.tolerance import tolerance_at_scale, tolerance_units

#: the decimal module's context for sums: Decimal(38, s) values summed over many rows need more
#: than its default 28 digits, which would round silently (or fail in ``quantize``)
EXACT = Context(prec=120)

DIFF_SCHEMA = {"key": pl.Utf8, "kind": pl.Utf8, "column": pl.Utf8, "source_value": pl.Utf8, "target_value": pl.Utf8}


@dataclass(frozen=True)
class ColumnStats:
    mismatched: int
    abs_variance: Decimal | None
    net_variance: Decimal | None
    source_abs_total: Decimal | None


@dataclass
class DiffResult:
    """Everything `recon diff` reports; ``differences`` has one row per key and kind (and column)."""

    source_rows: int
    target_rows: int
    source_keys: int
    union_keys: int
    missing_in_target: int
    missing_in_source: int
    mismatched: int
    unchanged: int
    in_flight: int
    duplicate_keys_source: int
    duplicate_keys_target: int
    columns: dict[str, ColumnStats]
    segmentation: merkle.Segmentation
    source_tree: merkle.SideTree
    target_tree: merkle.SideTree
    divergent: list[int]
    differences_plan: pl.LazyFrame
    elapsed_s: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    _differences: pl.DataFrame | None = field(default=None, repr=False)

    @property
    def differences(self) -> pl.DataFrame:
        """One row per key and kind (and column), sorted by key. Built on first use: a run that
        only reports counts (``--json`` without ``--out``) never formats the values as text."""
        if self._differences is None:
            self._differences = self.differences_plan.collect()
        return self._differences

    @property
    def has_differences(self) -> bool:
        return bool(self.mismatched or self.missing_in_target or self.missing_in_source)

    @property
    def variance_ratio(self) -> float:
        bad = self.mismatched + self.missing_in_target + self.missing_in_source
        return bad / self.source_keys if self.source_keys else (1.0 if bad else 0.0)

    def amount_variance_ratio(self) -> dict[str, float]:
        out = {}
        for name, c in self.columns.items():
            if c.abs_variance is None or c.source_abs_total is None:
                continue
            out[name] = float(c.abs_variance / c.source_abs_total) if c.source_abs_total else (
                0.0 if not c.abs_variance else float("inf"))
        return out

    def divergent_ranges(self) -> list[dict[str, Any]]:
        ranges = self.segmentation.ranges()
        return [{"from": ranges[i][0], "to": ranges[i][1], "source_rows": self.source_tree.rows[i],
                 "target_rows": self.target_tree.rows[i]} for i in self.divergent]

    def summary(self) -> dict[str, Any]:
        """The `--json` object (contract keys)."""
        return {
            "source": {"rows": self.source_rows, "keys": self.source_keys},
            "target": {"rows": self.target_rows},
            "missing_in_target": self.missing_in_target,
            "missing_in_source": self.missing_in_source,
            "mismatched": self.mismatched,
            "unchanged": self.unchanged,
            "in_flight": self.in_flight,
            "distinct_keys": self.union_keys,
            "duplicate_keys": {"source": self.duplicate_keys_source, "target": self.duplicate_keys_target},
            "columns": {
                name: {"mismatched": c.mismatched,
                       "abs_variance": None if c.abs_variance is None else str(c.abs_variance),
                       "net_variance": None if c.net_variance is None else str(c.net_variance),
                       "source_abs_total": None if c.source_abs_total is None else str(c.source_abs_total)}
                for name, c in self.columns.items()
            },
            "variance_ratio": self.variance_ratio,
            "amount_variance_ratio": self.amount_variance_ratio(),
            "merkle": {
                "encoding_version": ENCODING_VERSION,
                "boundaries_digest": self.segmentation.digest,
                "source_root": self.source_tree.root_hex,
                "target_root": self.target_tree.root_hex,
                "segments": len(self.source_tree.digests),
                "divergent_segments": len(self.divergent),
            },
            "divergent_ranges": self.divergent_ranges(),
            "elapsed_s": round(self.elapsed_s, 3),
            **({"meta": self.meta} if self.meta else {}),
        }


def _abs_total(col: pl.Series, scale: int | None = None, step: int = 1 << 20) -> Decimal:
    """Σ|value|, a slice at a time: the absolute values of a whole column would be one more copy
    of it at the moment memory peaks. Scaled decimals are summed exactly (no 64-bit overflow)."""
    scaled = scale is not None and is_scaled(col)
    with localcontext(EXACT):
        return _abs_total_exact(col, scale if scaled else None, step)


def _abs_total_exact(col: pl.Series, scale: int | None, step: int) -> Decimal:
    total = Decimal(0)
    for lo in range(0, len(col), step):
        part = col.slice(lo, step)
        if col.dtype.is_integer():  # 64-bit sums are exact while every |value| times the count stays below 2**63
            lo_v, hi_v = part.min(), part.max()
            top = max(abs(int(lo_v)), abs(int(hi_v))) if lo_v is not None else 0  # type: ignore[arg-type]
            if top * len(part) < 1 << 63:
                v = int(part.abs().sum())
            else:
                v = part.cast(pl.Decimal(38, 0)).abs().sum()
        else:
            v = part.abs().sum()
        total += Decimal(str(v)) if v is not None else Decimal(0)
    return total.scaleb(-scale) if scale is not None else total


def _dup_and_distinct(keys: pl.Series, counts: np.ndarray, unique: bool | None = None
                      ) -> tuple[int, np.ndarray, np.ndarray | None]:
    """Distinct keys duplicated on this side, distinct keys per segment (keys sorted; ``counts``:
    rows per segment), and the row numbers of the duplicated keys' rows (None when there are none);
    ``unique`` is what canonicalization already found out (no second pass)."""
    if len(keys) == 0 or unique:
        return 0, counts.copy(), None
    same_as_prev = same_as_previous(keys)
    first_of_run = ~same_as_prev
    # a run of length >= 2 starts where the next row repeats the key
    next_same = np.append(same_as_prev[1:], False)
    dup_keys = int(np.count_nonzero(first_of_run & next_same))
    ends = np.cumsum(counts)  # a row's segment: the first segment ending after it
    segs = np.searchsorted(ends, np.flatnonzero(first_of_run), side="right")
    distinct = np.bincount(segs, minlength=len(counts))
    return dup_keys, distinct, (np.flatnonzero(same_as_prev | next_same) if dup_keys else None)


def _equal_segments_abs_total(col: pl.Series, starts: np.ndarray, div_mask: np.ndarray,
                              dup_rows: np.ndarray | None, scale: int | None) -> Decimal:
    """Σ|value| over the equal segments' rows whose key is unique: their share of
    ``source_abs_total`` (the record diff adds the divergent segments' pairs). Runs of equal
    segments are contiguous rows, summed as slices; an equal segment holds the same rows on both
    sides, so a key unique in the source is unique in the target there too."""
    with localcontext(EXACT):
        return _equal_segments_abs_total_exact(col, starts, div_mask, dup_rows, scale)


def _equal_segments_abs_total_exact(col: pl.Series, starts: np.ndarray, div_mask: np.ndarray,
                                    dup_rows: np.ndarray | None, scale: int | None) -> Decimal:
    total = Decimal(0)
    n = len(div_mask)
    edges = np.flatnonzero(np.diff(np.concatenate([[True], div_mask, [True]]).astype(np.int8)))
    for a, b in zip(edges[0::2], edges[1::2], strict=True):  # [a, b): a run of equal segments
        lo, hi = int(starts[a]), int(starts[min(b, n)])
        if hi > lo:
            total += _abs_total(col.slice(lo, hi - lo), scale)
    if dup_rows is not None and len(dup_rows):  # duplicated keys in equal segments are out
        seg_of = np.searchsorted(starts[1:], dup_rows, side="right")
        out = dup_rows[~div_mask[seg_of]]
        if len(out):
            total -= _abs_total(col.gather(out), scale)
    return total


def compare(
    source: Canonical,
    target: Canonical,
    *,
    segment_rows: int = merkle.DEFAULT_SEGMENT_ROWS,
    boundaries: list[str] | None = None,
    in_flight_keys: set[str] | None = None,
    hashed: tuple[tuple[merkle.SideTree, np.ndarray], tuple[merkle.SideTree, np.ndarray]] | None = None,
) -> DiffResult:
    """Diff two canonical sides (already sorted by ``__key``).

    ``hashed`` passes each side's tree and rows per segment when the caller hashed the sides already
    (e.g. concurrently, each as soon as its data arrived), on the given ``boundaries``.
    """
    t0 = time.perf_counter()
    s, t = source.frame, target.frame
    fields = source.fields
    for f in fields:  # a decimal too large for 64 bits on one side: both sides use the wide form
        if f.ctype.kind == "decimal" and is_scaled(s[f.name]) != is_scaled(t[f.name]):
            s = s.with_columns(to_decimal(s[f.name], f.ctype.scale or 0))
            t = t.with_columns(to_decimal(t[f.name], f.ctype.scale or 0))
    value_fields = [f for f in fields if not f.is_key]
    seg = merkle.Segmentation(tuple(boundaries if boundaries is not None
                                    else merkle.choose_boundaries(s["__key"], segment_rows)))
    n_seg = len(seg.boundaries) + 1
    if hashed is None:
        (s_tree, s_counts), (t_tree, t_counts) = merkle.side_tree(s, fields, seg), merkle.side_tree(t, fields, seg)
    else:
        (s_tree, s_counts), (t_tree, t_counts) = hashed
    divergent = merkle.divergent_segments(s_tree, t_tree)

    dup_s, distinct_s, dup_rows_s = _dup_and_distinct(s["__key"], s_counts, source.unique_keys)
    dup_t, distinct_t, _ = _dup_and_distinct(t["__key"], t_counts, target.unique_keys)
    div_mask = np.zeros(n_seg, dtype=bool)
    div_mask[divergent] = True
    same_union = int(distinct_s[~div_mask].sum())  # equal segments: same distinct keys on both sides

    # the record diff runs over groups of divergent segments (about CHUNK_ROWS rows each): segments
    # are the same key ranges on both sides, so each group is a complete, independent diff and the
    # memory for pairing rows stays bounded whatever the table size
    s_starts = np.concatenate([[0], np.cumsum(s_counts)])
    t_starts = np.concatenate([[0], np.cumsum(t_counts)])
    parts_diffs: list[pl.LazyFrame] = []
    counts: dict[str, int] = {}
    col_stats: dict[str, tuple[int, Decimal | None, Decimal | None, Decimal | None]] = {}
    def one(group: list[int]) -> tuple[pl.LazyFrame, dict[str, int], dict[str, Any]]:
        return _record_diff(_rows_in(s, s_starts, group), _rows_in(t, t_starts, group), list(fields),
                            in_flight_keys or set(), dups=bool(dup_s or dup_t))

    groups = _segment_groups(divergent, s_counts + t_counts, CHUNK_ROWS)
    # groups are independent and Polars releases the GIL: two at a time keep both cores busy
    # (the merge's binary search is single-threaded); map() keeps them in key order
    with ThreadPoolExecutor(min(2, len(groups))) as pool:
        results = list(pool.map(one, groups))
    for d, c, _ in results:
        parts_diffs.append(d)
        for k, v in c.items():
            counts[k] = counts.get(k, 0) + v
    diffs = pl.concat(parts_diffs) if len(parts_diffs) > 1 else parts_diffs[0]  # groups are in key order
    union_keys = same_union + counts["union"]
    columns = {}
    with localcontext(EXACT):
        for _, _, st in results:
            for name, (n, a, b, c) in st.items():
                n0, a0, b0, c0 = col_stats.get(name, (0, None, None, None))
                col_stats[name] = (n0 + n, a if a0 is None else a0 + (a or 0), b if b0 is None else b0 + (b or 0),
                                   c if c0 is None else c0 + (c or 0))
        for f in value_fields:
            n, a, b, pairs_total = col_stats[f.name]
            total = None
            if pairs_total is not None:  # Σ|source| over the keys unique on both sides (abs_variance's population)
                scale = f.ctype.scale if f.ctype.kind == "decimal" else None
                total = pairs_total + _equal_segments_abs_total(s[f.name], s_starts, div_mask, dup_rows_s, scale)
                if f.ctype.kind == "decimal":
                    total = total.quantize(Decimal(1).scaleb(-(f.ctype.scale or 0)))
            columns[f.name] = ColumnStats(n, a, b, total)
    unchanged = union_keys - counts["missing_in_target"] - counts["missing_in_source"] - counts["mismatched"] \
        - counts["in_flight"]
    return DiffResult(
        source_rows=len(s), target_rows=len(t), source_keys=int(distinct_s.sum()), union_keys=union_keys,
        missing_in_target=counts["missing_in_target"], missing_in_source=counts["missing_in_source"],
        mismatched=counts["mismatched"], unchanged=unchanged, in_flight=counts["in_flight"],
        duplicate_keys_source=dup_s, duplicate_keys_target=dup_t, columns=columns, segmentation=seg,
        source_tree=s_tree, target_tree=t_tree, divergent=divergent, differences_plan=diffs,
        elapsed_s=time.perf_counter() - t0,
    )


CHUNK_ROWS = 1 << 18


def _segment_groups(divergent: list[int], rows: np.ndarray, limit: int) -> list[list[int]]:
    """Consecutive runs of divergent segments holding about ``limit`` rows (both sides) each; one
    empty group when nothing diverges, so the diff still yields its (empty) outputs."""
    groups: list[list[int]] = []
    cur: list[int] = []
    n = 0
    for i in divergent:
        cur.append(i)
        n += int(rows[i])
        if n >= limit:
            groups.append(cur)
            cur, n = [], 0
    if cur or not groups:
        groups.append(cur)
    return groups


def _rows_in(frame: pl.DataFrame, starts: np.ndarray, segments: list[int]) -> pl.DataFrame:
    """The rows of some segments: contiguous runs of a key-sorted side, so slices, not a row
    filter (the whole frame, without a copy, when the segments cover it)."""
    if not segments:
        return frame.clear()
    lo, hi = int(starts[segments[0]]), int(starts[segments[-1] + 1])
    if segments[-1] - segments[0] + 1 == len(segments):  # one run
        return frame if (lo, hi) == (0, frame.height) else frame.slice(lo, hi - lo)
    # one gather, not a concatenation of a slice per segment: small segments (an incremental
    # state's 128 rows) would leave thousands of chunks, which every later operation pays for
    seg = np.asarray(segments, dtype=np.int64)
    lo_, n = starts[seg].astype(np.int64), (starts[seg + 1] - starts[seg]).astype(np.int64)
    idx = np.repeat(lo_ - np.concatenate([[0], np.cumsum(n)[:-1]]), n) + np.arange(int(n.sum()), dtype=np.int64)
    return frame[pl.Series(idx)] if len(idx) else frame.clear()


def _merge_unique(us: pl.DataFrame, ut: pl.DataFrame, names: list[str]
                  ) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, int]:
    """Pair two sides whose keys are unique and sorted by their bytes: a linear merge of the two
    key columns (:func:`_pair_sorted`) instead of a hash join, and no pairing work at all when
    both sides hold the same keys. Returns the pairs (``name`` and ``name__t`` columns),
    the keys missing in the target, those missing in the source, and the number of distinct keys."""
    sk, tk = us["__key"], ut["__key"]
    right = [pl.col(n).alias(n + "__t") for n in names]
    if len(sk) == len(tk) and sk.equals(tk):
        pairs = us.select("__key", *names).hstack(ut.select(right))
        return pairs, us.select("__key").clear(), ut.select("__key").clear(), len(sk)
    if len(tk) == 0 or len(sk) == 0:
        pairs = us.select("__key", *names).clear().hstack(ut.select(right).clear())
        return pairs, us.select("__key"), ut.select("__key"), len(sk) + len(tk)
    si, ti = _pair_sorted(sk, tk)
    s_hit = np.zeros(len(sk), dtype=bool)
    s_hit[si] = True
    t_hit = np.zeros(len(tk), dtype=bool)
    t_hit[ti] = True
    # both sides are in key order, so the paired rows of each side, kept in order, line up:
    # two filters (cheaper than gathers) build the pairs
    left, rightf = us.select("__key", *names), ut.select(right)
    pairs = (left if len(si) == len(sk) else left.filter(pl.Series(s_hit))).hstack(
        rightf if len(ti) == len(tk) else rightf.filter(pl.Series(t_hit)))
    miss_t = us.select("__key").filter(pl.Series(~s_hit))
    miss_s = ut.select("__key").filter(pl.Series(~t_hit))
    return pairs, miss_t, miss_s, len(sk) + len(miss_s)


def _pair_sorted(sk: pl.Series, tk: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of the equal keys of two sorted, unique key columns, in key order.

    A linear merge (Polars' ``merge_sorted``) rather than a binary search of one column in the
    other: after merging, a key present on both sides sits next to its twin, so one comparison of
    neighbours finds every pair (about half the cost of the search at a million keys)."""
    side = pl.concat([pl.zeros(len(sk), pl.Boolean, eager=True), pl.ones(len(tk), pl.Boolean, eager=True)])
    a = pl.DataFrame({"k": sk, "t": side.slice(0, len(sk))})
    b = pl.DataFrame({"k": tk, "t": side.slice(len(sk), len(tk))})
    m = a.merge_sorted(b, "k")
    k, from_t = m["k"], m["t"].to_numpy()
    n = len(k)
    first = np.flatnonzero((k.slice(1, n - 1) == k.slice(0, n - 1)).to_numpy())  # m[i] == m[i + 1]
    # a merged position i holds row c[i] - 1 of the target (c: target rows up to i) or row
    # i - c[i] of the source; of each pair one position is the target's, the other the source's
    c = np.cumsum(from_t, dtype=np.int64)
    t_first = from_t[first]
    s_at = np.where(t_first, first + 1, first)
    t_at = np.where(t_first, first, first + 1)
    return s_at - c[s_at], c[t_at] - 1


def _exact_int_sum(col: pl.Series) -> int:
    """Σ of an int64 column, exact: 64-bit while every |value| times the count stays below 2**63,
    else in 128-bit decimals."""
    if len(col) == 0 or col.null_count() == len(col):
        return 0
    top = max(abs(int(col.min())), abs(int(col.max())))  # type: ignore[arg-type]
    if top * len(col) < 1 << 63:
        return int(col.sum())
    return int(Decimal(str(col.cast(pl.Decimal(38, 0)).sum())))


def _value_text(expr: pl.Expr, f: FieldSpec, scaled: bool) -> pl.Expr:
    """A compared value as text for the differences rows: decimals as values (``12.30``), never
    as their scaled-integer representation."""
    return scaled_text(expr, f.ctype.scale or 0) if scaled else expr.cast(pl.Utf8)


def _dup_keys(df: pl.DataFrame) -> pl.Series:
    """Keys occurring more than once (the frame is sorted by key)."""
    k = df["__key"]
    return k.filter(pl.Series(same_as_previous(k))).unique()


def _record_diff(
    ds: pl.DataFrame, dt: pl.DataFrame, fields: list[FieldSpec], in_flight: set[str], *, dups: bool = True
) -> tuple[pl.LazyFrame, dict[str, int], dict[str, tuple[int, Decimal | None, Decimal | None, Decimal | None]]]:
    """``dups=False`` says neither side has a duplicated key anywhere (known from the whole-side
    count), so the per-group search for them is skipped."""
    value_fields = [f for f in fields if not f.is_key]
    names = [f.name for f in value_fields]
    dup_any = pl.concat([_dup_keys(ds), _dup_keys(dt)]).unique() if dups else pl.Series("__key", [], pl.Utf8)
    if in_flight:
        dup_any = pl.concat([dup_any, pl.Series("__key", sorted(in_flight), dtype=pl.Utf8)]).unique()
    flagged = dup_any.to_frame("__key")
    # the common case: keys unique on both sides, paired by a merge of the two sorted key columns
    keep = ~pl.col("__key").is_in(dup_any.implode())
    us = ds.filter(keep) if len(dup_any) else ds  # a filter keeps the key order a merge relies on
    ut = dt.filter(keep) if len(dup_any) else dt
    pairs, miss_t_u, miss_s_u, n_unique_keys = _merge_unique(us, ut, names)
    row = row_text(fields).alias("__row")
    # keys duplicated on a side (or in flight): multiset comparison on a small subset
    if len(flagged):
        ks = decimal_view(ds.join(flagged, on="__key", how="semi"), fields).with_columns(row).group_by("__key").agg(
            pl.len().alias("n_s"), pl.col("__row").sort().alias("rows_s"))
        kt = decimal_view(dt.join(flagged, on="__key", how="semi"), fields).with_columns(row).group_by("__key").agg(
            pl.len().alias("n_t"), pl.col("__row").sort().alias("rows_t"))
        keys = ks.join(kt, on="__key", how="full", coalesce=True)
    else:
        keys = pl.DataFrame(schema={"__key": pl.Utf8, "n_s": pl.UInt32, "rows_s": pl.List(pl.Utf8),
                                    "n_t": pl.UInt32, "rows_t": pl.List(pl.Utf8)})
    if in_flight:
        flight = pl.Series("__key", sorted(in_flight), dtype=pl.Utf8)
        keys = keys.with_columns(pl.col("__key").is_in(flight.implode()).alias("in_flight"))
    else:
        keys = keys.with_columns(pl.lit(False).alias("in_flight"))
    union = n_unique_keys + len(keys)
    n_flight = int(keys["in_flight"].sum())
    keys = keys.filter(~pl.col("in_flight"))
    miss_t = pl.concat([miss_t_u, keys.filter(pl.col("n_t").is_null()).select("__key")])
    miss_s = pl.concat([miss_s_u, keys.filter(pl.col("n_s").is_null()).select("__key")])
    both = keys.filter(pl.col("n_s").is_not_null() & pl.col("n_t").is_not_null())
    dup_mismatch = both.filter(pl.col("rows_s") != pl.col("rows_t"))
    # a key unique on both sides that was only flagged for being in flight never gets here
    diff_exprs, deltas = [], {}
    for f in value_fields:
        a, b = pl.col(f.name), pl.col(f.name + "__t")
        null_diff = a.is_null() != b.is_null()
        if f.ctype.kind in ("decimal", "int", "float"):
            tol = f.tolerance if f.tolerance is not None else 0
            if f.ctype.kind == "decimal" and is_scaled(pairs[f.name]):  # unscaled integers: tolerance in units
                tol_lit = pl.lit(tolerance_units(Decimal(tol), f.ctype.scale or 0, (1 << 63) - 1), pl.Int64)
            elif f.ctype.kind == "decimal":
                tol_lit = pl.lit(tolerance_at_scale(Decimal(tol), f.ctype.scale or 0)).cast(pl.Decimal(38, f.ctype.scale or 0))
            else:
                tol_lit = pl.lit(float(tol))
            same = a == b
            if f.ctype.kind == "float":  # canonical floats: NaN equals NaN, as in the encoding
                same = same | (a.is_nan() & b.is_nan())
            value_diff = (~same & ~((b - a).abs() <= tol_lit)).fill_null(False)
            deltas[f.name] = True
        else:
            value_diff = (a != b).fill_null(False)
        diff_exprs.append((null_diff | value_diff).alias(f"__d_{f.name}"))
    # one pass computes every column's verdict; only the mismatched pairs are kept for the details
    flags = [pl.col(f"__d_{n}") for n in names]
    mism_unique = pairs.with_columns(diff_exprs).filter(pl.any_horizontal(*flags)) if names else pairs.clear()
    with localcontext(EXACT):  # this runs in the pool's threads: each has its own decimal context
        stats, col_rows = _column_verdicts(mism_unique, pairs, value_fields, deltas)
    return _differences_plan(dup_mismatch, col_rows, names, miss_s, miss_t), {
        "union": union,
        "in_flight": n_flight,
        "missing_in_target": len(miss_t),
        "missing_in_source": len(miss_s),
        "mismatched": len(dup_mismatch) + len(mism_unique),
    }, stats


def _column_verdicts(mism_unique: pl.DataFrame, pairs: pl.DataFrame, value_fields: list[FieldSpec],
                     deltas: dict[str, bool]) -> tuple[dict[str, Any], list[pl.LazyFrame]]:
    """Per compared column: its mismatched count, variances and Σ|source| over the pairs, and the
    plan of its difference rows."""
    stats: dict[str, tuple[int, Decimal | None, Decimal | None, Decimal | None]] = {}
    col_rows = []
    for f in value_fields:
        sub = mism_unique.filter(pl.col(f"__d_{f.name}"))
        scaled = f.ctype.kind == "decimal" and is_scaled(sub[f.name])  # unscaled int64 on both sides
        if f.name in deltas and len(sub):
            both_vals = sub.filter(pl.col(f.name).is_not_null() & pl.col(f.name + "__t").is_not_null())
            dv = both_vals.select((pl.col(f.name + "__t") - pl.col(f.name)).alias("d"))["d"]
            if scaled:  # |values| < 2**62: each difference fits, the sums are taken exactly
                abs_v: Decimal | None = Decimal(_exact_int_sum(dv.abs())).scaleb(-(f.ctype.scale or 0))
                net_v: Decimal | None = Decimal(_exact_int_sum(dv)).scaleb(-(f.ctype.scale or 0))
            else:
                abs_v = Decimal(str(dv.abs().sum())) if len(dv) else Decimal(0)
                net_v = Decimal(str(dv.sum())) if len(dv) else Decimal(0)
        elif f.name in deltas:
            abs_v = net_v = Decimal(0)
        else:
            abs_v = net_v = None
        if f.ctype.kind == "decimal" and abs_v is not None:
            q = Decimal(1).scaleb(-(f.ctype.scale or 0))
            abs_v, net_v = abs_v.quantize(q), net_v.quantize(q)  # type: ignore[union-attr]
        # Σ|source| of the pairs (keys unique on both sides, not in flight): abs_variance's population
        src_total = _abs_total(pairs[f.name], f.ctype.scale if f.ctype.kind == "decimal" else None) \
            if f.name in deltas else None
        stats[f.name] = (len(sub), abs_v, net_v, src_total)
        col_rows.append(sub.lazy().select(
            pl.col("__key").alias("key"), pl.lit("mismatched").alias("kind"), pl.lit(f.name).alias("column"),
            _value_text(pl.col(f.name), f, scaled).alias("source_value"),
            _value_text(pl.col(f.name + "__t"), f, scaled).alias("target_value")))
    return stats, col_rows


def _differences_plan(dup_mismatch: pl.DataFrame, col_rows: list[pl.LazyFrame], names: list[str],
                      miss_s: pl.DataFrame, miss_t: pl.DataFrame) -> pl.LazyFrame:
    """One row per key and kind (and column), sorted by key: a plan, run only when the rows are
    wanted (DiffResult.differences)."""
    none = pl.lit(None, pl.Utf8)
    frames = [  # in (kind, column) order, so one stable sort by key orders by (key, kind, column)
        dup_mismatch.lazy().select(pl.col("__key").alias("key"), pl.lit("duplicate_key").alias("kind"), none.alias("column"),
                            pl.format("{} row(s)", pl.col("n_s")).alias("source_value"),
                            pl.format("{} row(s)", pl.col("n_t")).alias("target_value")),
        *[col_rows[i] for i in sorted(range(len(col_rows)), key=lambda i: names[i])],
        miss_s.lazy().select(pl.col("__key").alias("key"), pl.lit("missing_in_source").alias("kind"), none.alias("column"),
                      none.alias("source_value"), none.alias("target_value")),
        miss_t.lazy().select(pl.col("__key").alias("key"), pl.lit("missing_in_target").alias("kind"), none.alias("column"),
                      none.alias("source_value"), none.alias("target_value")),
    ]
    return pl.concat([f.cast(DIFF_SCHEMA) for f in frames]).sort("key", maintain_order=True)
