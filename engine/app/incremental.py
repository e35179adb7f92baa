"""Incremental diffs (`recon diff … --state DIR`): a run that costs what changed.

An incremental run is a key-range plan in which most ranges are reused. The state
(:class:`engine.workspace.StateDirectory`) keeps, per side, the canonical rows of every segment,
their digests and row counts, and a watermark; and the run's totals and differences. A run asks
each side what changed since its watermark (a source's ``changes()``, returning
:class:`~engine.connectors.base.SideChanges`), maps the changed and deleted keys to the segments
they fall in (the *touched* segments), and recomputes only those:

* the touched segments' previous rows are loaded from the state's packs (each segment's rows
  checked against its digest first)
  and diffed once more as they were, which gives exactly their share of the previous totals;
* the changes are applied (a changed key's rows replaced, a deleted key's removed), the touched
  segments are hashed and diffed again;
* totals = previous totals − the touched segments' old share + their new share, exactly (counts
  and ``Decimal`` variances); the differences of untouched segments are kept, the touched ones'
  replaced; the roots are rebuilt from every segment's digest.

**Boundaries are fixed between full runs.** Incremental runs and their full checks use the
state's boundaries; only ``--full`` (or a first run, or a changed mapping) cuts them anew. A
segment whose source rows grow past twice ``--segment-rows`` is split at the keys a full cut would
choose inside it: one boundary list changes, the other segments' digests do not (their leaves move
along in the tree, which is rebuilt from the digests).

**What an incremental run trusts**, and how it is checked: that each side reports every change
after its watermark (PostgreSQL: ``updated_at`` set by ``now()`` on every write; Salesforce:
getUpdated / getDeleted; files: their digest). A row count in the same snapshot catches deletions
nobody listed (the side's keys are then read to find them). Every ``--full-every`` runs, or with
``--verify-full``, a full read with the state's boundaries checks the state: different roots are
``status: state_drift`` (a run status, not a finding): the state is rebuilt from the full read,
whose results the run reports.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3
import numpy as np
import polars as pl
import pyarrow as pa

from engine.app import state_index
from engine.connectors.base import ReadRequest, SideChanges, Source, take_frame
from engine.core import merkle
from engine.core.diff import DIFF_SCHEMA, EXACT, ColumnStats, DiffResult, compare
from engine.core.errors import UsageError, VerificationError
from engine.core.normalize import (
    ENCODING_VERSION,
    Canonical,
    FieldSpec,
    canonicalize,
    is_scaled,
    key_expr,
    to_decimal,
    typed,
)
from engine.workspace import StateDirectory

if TYPE_CHECKING:
    from engine.app.reconcile import DiffRequest, DiffRun

STATE_VERSION = 2  # 2: segments in packs, checked by their digests
DEFAULT_FULL_EVERY = 24
#: segments of a state are small, unlike a one-off diff's (16,384 rows): 0.1% of random changes
#: touch every segment of 16,384 rows but about one in eight of 128 rows, and an incremental run
#: re-reads, re-hashes and rewrites only the segments it touches (bench/RESULTS.md, "Incremental
#: runs at 10M"); a full run pays about a second more per 10M rows for hashing the extra segments
DEFAULT_STATE_SEGMENT_ROWS = 128
SIDES = ("source", "target")
_COUNTS = state_index.COUNTS


@dataclass(frozen=True)
class StateOptions:
    """``--state DIR`` and how it is checked.

    full: ``--full`` (re-cut the boundaries, rebuild the state from a full read).
    verify_full: ``--verify-full`` (this run also reads both sides whole with the state's boundaries
    and compares roots). full_every: every N-th run does that check (``--full-every``, default 24).
    """

    dir: Path
    full: bool = False
    verify_full: bool = False
    full_every: int = DEFAULT_FULL_EVERY

    def check(self) -> None:
        if self.full and self.verify_full:
            raise UsageError("--full and --verify-full exclude each other: --full rebuilds the state, "
                             "--verify-full checks it")
        if not 1 <= self.full_every <= 1_000_000:
            raise UsageError(f"--full-every must be a whole number of runs from 1 to 1000000 (got {self.full_every})")


# -- the state's index ---------------------------------------------------------------------------------
def _fields_json(fields: tuple[FieldSpec, ...]) -> list[dict[str, Any]]:
    return [{"column": f.column, "name": f.name, "kind": f.ctype.kind, "scale": f.ctype.scale,
             "precision": f.ctype.precision, "tolerance": None if f.tolerance is None else str(f.tolerance),
             "key": f.is_key} for f in fields]


def _identity_digest(req: DiffRequest, fields: tuple[tuple[FieldSpec, ...], tuple[FieldSpec, ...]],
                     segment_rows: int) -> str:
    doc = {"request": req.identity(), "fields": [_fields_json(f) for f in fields], "segment_rows": segment_rows,
           "encoding_version": ENCODING_VERSION, "state_version": STATE_VERSION}
    return blake3.blake3(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _file_digest(path: Path) -> str:
    return blake3.blake3(path.read_bytes()).hexdigest()


def _totals_json(r: DiffResult) -> dict[str, Any]:
    out: dict[str, Any] = {k: int(getattr(r, k)) for k in _COUNTS}
    out["columns"] = {n: [c.mismatched, *(None if v is None else str(v)
                                          for v in (c.abs_variance, c.net_variance, c.source_abs_total))]
                      for n, c in r.columns.items()}
    return out


def _add(a: Decimal | None, b: Decimal | None, sign: int = 1) -> Decimal | None:
    if b is None:
        return a
    with localcontext(EXACT):
        return (a or Decimal(0)) + sign * b


# -- the state's packs ---------------------------------------------------------------------------------
PACK_ROWS = 1 << 20  # rows per pack file a full run writes (cut at segment boundaries; written in parallel)


class _Packs:
    """The state's pack files for one run: each opened once, memory-mapped, never copied whole.

    A pack is an uncompressed Arrow IPC file holding the rows of consecutive segments; a segment is
    ``(file, offset, rows)`` in the index. Why packs instead of a file per segment: segments are
    small (a few hundred rows, so that random changes touch few of them) and there are many of
    them; a run writes one pack per batch of touched segments, and the segments it did not touch
    keep pointing into older packs. A segment's rows are checked against its Merkle digest (the
    digest of exactly those rows) whenever they are used; a pack is never trusted as a whole.
    """

    def __init__(self, state: StateDirectory, fields: tuple[FieldSpec, ...] = (), bounds: list[str] | None = None
                 ) -> None:
        self.state = state
        #: the state's boundaries when the run began: an entry's ``seg`` is its key range there
        self.bounds = bounds
        #: the previous run's differences once read and checked (:func:`_differences_of`), for
        #: the run's end: the state's other stored file, read once
        self.previous_differences: pl.DataFrame | None = None
        #: the canonical columns every pack must hold, with a type their kind is stored as
        self._want = {f.name: f.ctype for f in fields}
        self._open: dict[str, tuple[list[pa.RecordBatch], np.ndarray]] = {}
        self._schema: dict[str, pa.Schema] = {}

    def table(self, name: str) -> tuple[list[pa.RecordBatch], np.ndarray]:
        """The pack's record batches (memory-mapped, their buffers' sizes checked) and the row each
        begins at, then its end."""
        t = self._open.get(name)
        if t is None:
            p = self.state.resolve(name)
            if p.exists() and not p.is_file():  # a FIFO would block the open, a device feed it forever
                raise VerificationError(f"{p} does not match the state's index (not a regular file): rebuild the "
                                        "state with --full")
            try:
                reader = pa.ipc.open_file(pa.memory_map(str(p)))
                batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
                for b in batches:
                    b.validate()  # O(columns): buffers as large as their lengths say (not their values)
                t = batches, np.concatenate([[0], np.cumsum([b.num_rows for b in batches])]).astype(np.int64)
                schema = reader.schema
            except FileNotFoundError:
                raise VerificationError(f"{p} is missing from the incremental state: rebuild it with --full") from None
            except (OSError, pa.ArrowException) as exc:
                raise VerificationError(f"{p} does not match the state's index (not a readable pack: {exc}): "
                                        "rebuild the state with --full") from None
            # every pack holds the same columns in the same order (their types may differ: a decimal
            # scaled in one, wide in another); one that does not would fail a concatenation later
            if any(other.names != schema.names for other in list(self._schema.values())):
                raise VerificationError(f"{p} does not match the state's index (its columns {schema.names} differ "
                                        "from the other packs'): rebuild the state with --full")
            if self._want:
                _check_pack_schema(schema, self._want, p)
            # two threads may open one pack at once: the first mapping is the one every caller uses
            self._schema.setdefault(name, schema)
            t = self._open.setdefault(name, t)
        return t

    def schema(self, name: str) -> pa.Schema:
        """The Arrow schema of pack ``name`` (opened and checked as :meth:`table` does)."""
        self.table(name)
        return self._schema[name]

    def _rows(self, name: str, o: np.ndarray, m: np.ndarray, columns: list[str] | None = None
              ) -> list[tuple[pa.RecordBatch, np.ndarray]]:
        """Each record batch of pack ``name`` with the positions in it of the segments ``(o, m)``
        (offsets, rows; ascending), once their bounds and the value offsets they follow are checked."""
        batches, starts = self.table(name)
        idx = _ranges(o, o + m)
        if (o < 0).any() or (m < 0).any() or (o + m > starts[-1]).any() or (np.diff(idx) <= 0).any():
            raise VerificationError(f"{self.state.resolve(name)} does not hold the rows the state's index "
                                    "says (short, or segments overlapping): rebuild the state with --full")
        cut = np.searchsorted(idx, starts)
        out = []
        for b, batch in enumerate(batches):
            part = idx[cut[b]:cut[b + 1]] - starts[b]
            if not len(part):
                continue
            if columns is not None:
                batch = batch.select(columns)
            _check_offsets(batch, part, self.state.resolve(name))
            out.append((batch, part))
        return out

    def take(self, entries: list[dict[str, Any]], columns: list[str] | None = None,
             fields: tuple[FieldSpec, ...] = ()) -> pl.DataFrame:
        """The rows of ``entries``, in their order, as one frame (unchecked: see :meth:`load`)."""
        if not entries:
            return pl.DataFrame()
        off, n, by_file = _layout(entries)
        at = np.concatenate([[0], np.cumsum(n)])  # where each entry's rows go in the result
        parts: list[pl.DataFrame] = []
        dest: list[np.ndarray] = []
        for name, ks in by_file.items():  # one gather per batch of a pack, however its segments interleave
            k = np.asarray(ks, dtype=np.int64)
            for batch, part in self._rows(name, off[k], n[k], columns):
                whole = len(part) == batch.num_rows  # ascending and unique: every row, in order
                parts.append(pl.from_arrow(batch if whole else batch.take(pa.array(part))))  # type: ignore[arg-type]
            dest.append(_ranges(at[k], at[k] + n[k]))
        # a decimal scaled in one pack and wide in another is made wide in all (never cast as is: the
        # scaled form is an integer count of the scale's units)
        if not parts:  # every entry empty: the pack's columns, no rows (an empty pack has no batch)
            first = entries[0]["parts"][0][0]
            self.table(first)
            empty = self._schema[first].empty_table()
            return pl.from_arrow(empty.select(columns) if columns is not None else empty)  # type: ignore[return-value]
        frame = parts[0] if len(parts) == 1 else _concat(parts, fields).rechunk()
        where = np.concatenate(dest)
        if len(where) > 1 and not (where[1:] > where[:-1]).all():  # back into the entries' order
            order = np.empty(len(where), dtype=np.int64)
            order[where] = np.arange(len(where), dtype=np.int64)
            frame = frame[pl.Series(order)]
        return frame

    def gather(self, entries: list[dict[str, Any]]) -> pa.Table | None:
        """:meth:`take` in Arrow: the rows of ``entries`` in their order, copied once (slices of the
        memory-mapped batches joined); None when there are none, or when the packs' schemas differ (a
        decimal scaled in one pack and wide in another: :meth:`take` unifies those)."""
        off, n, by_file = _layout(entries)
        for name, ks in by_file.items():  # checked as :meth:`take` checks them, before any slice is read
            k = np.asarray(ks, dtype=np.int64)
            self._rows(name, off[k], n[k])
        schemas = {self._schema[name] for name in by_file}
        if len(schemas) != 1 or not int(n.sum()):
            return None
        slices: list[pa.RecordBatch] = []
        for name, o, m in (p for e in entries for p in e["parts"]):
            batches, starts = self.table(name)
            b = int(np.searchsorted(starts, o, side="right")) - 1
            while m > 0:  # a segment may run across a batch boundary
                part = min(m, int(starts[b + 1]) - o)
                slices.append(batches[b].slice(o - int(starts[b]), part))
                o, m, b = o + part, m - part, b + 1
        schema = schemas.pop()
        if len(slices) == 1:  # combine_chunks leaves one chunk as it is: a view of the mapped file,
            # which could change between its check and its use; the rows are copied like any others
            return pa.Table.from_arrays([pa.concat_arrays([c]) for c in slices[0].columns], schema=schema)
        return pa.Table.from_batches(slices, schema=schema).combine_chunks()

    def load_arrow(self, entries: list[dict[str, Any]], fields: tuple[FieldSpec, ...]) -> pa.Table | None:
        """:meth:`load` in Arrow (see :meth:`gather` for None), each segment checked against its digest."""
        table = self.gather(entries)
        if table is not None:
            self._verify(table, entries, fields)
        return table

    def load(self, entries: list[dict[str, Any]], fields: tuple[FieldSpec, ...]) -> pl.DataFrame:
        """The rows of ``entries`` (in order, one frame), each segment checked against its digest."""
        frame = self.take(entries, fields=fields)
        if not entries:
            return frame
        self._verify(frame, entries, fields)
        return frame

    def _verify(self, frame: pl.DataFrame | pa.Table, entries: list[dict[str, Any]], fields: tuple[FieldSpec, ...]
                ) -> None:
        counts = np.fromiter((int(e["rows"]) for e in entries), dtype=np.int64, count=len(entries))
        if len(frame) != int(counts.sum()):
            raise VerificationError(f"{self.state.dir}: a segment's rows differ from its index entry: "
                                    "rebuild the state with --full")
        digests, _ = merkle.hash_segments(frame, fields, counts)
        for e, d in zip(entries, digests, strict=True):
            if d.hex() != e["digest"]:
                raise VerificationError(f"{self.state.resolve(e['parts'][0][0])} does not match the state's index (a "
                                        "segment's rows changed after they were written): rebuild the state with --full")
        # the digest covers the key's typed columns, not ``__key``, the text every search and
        # match uses: it must be the one those columns give
        keys = [f.name for f in fields if f.is_key]
        typed_keys = pl.from_arrow(frame.select(keys)) if isinstance(frame, pa.Table) else frame.select(keys)
        stored = pl.Series(frame.column("__key")) if isinstance(frame, pa.Table) else frame["__key"]
        derived = typed_keys.select(key_expr(fields).alias("__key"))["__key"]  # type: ignore[union-attr]
        if stored.dtype != pl.Utf8 or not bool((stored == derived).fill_null(False).all()) \
                or stored.null_count() or derived.null_count():
            raise VerificationError(f"{self.state.dir}: a segment's stored key text is not the one its key columns "
                                    "give (a pack changed after it was written): rebuild the state with --full")
        if self.bounds is not None and all("seg" in e for e in entries):
            _check_ranges(stored, [int(e["seg"]) for e in entries], counts, self.bounds, self.state)

    def load_each(self, entries: list[dict[str, Any]], fields: tuple[FieldSpec, ...]) -> list[pl.DataFrame]:
        """:meth:`load`, one frame per entry (slices of one frame)."""
        frame = self.load(entries, fields)
        out, at = [], 0
        for e in entries:
            out.append(frame.slice(at, int(e["rows"])))
            at += int(e["rows"])
        return out

    def keys(self, entries: list[dict[str, Any]]) -> pl.Series:
        """The stored keys of ``entries`` (unchecked: what a deletion count and key read need)."""
        if not entries:
            return pl.Series("__key", [], dtype=pl.Utf8)
        return self.take(entries, ["__key"])["__key"]


class _Loaded:
    """One side's touched segments, loaded from their packs and checked against their digests once
    per run, in batches of about HASH_CHUNK_ROWS rows.

    Why: the deletion count needs the touched segments' stored keys and the rewrite needs their
    rows; reading the keys first and the rows again later cost a second gather of every touched
    segment (a second of a 10M-row run). A batch that cannot stay in Arrow (see
    :meth:`_Packs.gather`) is left to the Polars path, which loads it itself. Where each segment
    sits is kept in arrays, not per-segment objects: thousands of segments are touched per run.
    Memory: every touched row of both sides is held until the run ends (about 430 MB at 10M rows
    and 0.1% changed; at most both tables whole, which a state run is only allowed when it fits:
    ``scale.decide`` refuses ``--state`` otherwise).
    """

    def __init__(self, store: _Packs, entries: list[dict[str, Any]], fields: tuple[FieldSpec, ...],
                 rows: np.ndarray) -> None:
        self.store, self.entries, self.fields, self.n = store, entries, fields, rows
        #: per segment: its batch (-1: not loaded) and its first row there; batches[k] is None when
        #: the batch is not in Arrow
        self.batch_of = np.full(len(rows), -1, dtype=np.int64)
        self.start_of = np.zeros(len(rows), dtype=np.int64)
        self.batches: list[pa.Table | None] = []
        self._segs: list[tuple[np.ndarray, np.ndarray]] = []  # per batch: its segments, where each begins

    def missing(self, T: list[int]) -> list[list[int]]:
        """The segments of ``T`` not loaded yet, in batches of about HASH_CHUNK_ROWS rows (ascending)."""
        t = np.asarray(T, dtype=np.int64)
        t = t[self.batch_of[t] < 0] if len(t) else t
        return [t[a:b].tolist() for a, b in _chunks(self.n[t].tolist())]

    def fetch(self, segs: list[int]) -> pa.Table | None:
        """The rows of ``segs``, checked (:meth:`_Packs._verify`; runs in a worker thread: no shared
        state is written)."""
        return self.store.load_arrow([self.entries[i] for i in segs], self.fields)

    def add(self, segs: list[int], table: pa.Table | None) -> None:
        s = np.asarray(segs, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(self.n[s])[:-1]]).astype(np.int64)
        self.batch_of[s] = len(self.batches)
        self.start_of[s] = starts
        self.batches.append(table)
        self._segs.append((s, starts))

    def rows(self, segs: list[int]) -> pa.Table | None:
        """The stored rows of ``segs`` (loaded, ascending) as one table of slices (not copied), or
        None when one of them is not in Arrow or their batches' schemas differ."""
        s = np.asarray(segs, dtype=np.int64)
        if not len(s):
            return None
        k, at, n = self.batch_of[s], self.start_of[s], self.n[s]
        if (k < 0).any():
            raise RuntimeError("a segment's rows were asked for before they were loaded")
        # runs of segments whose rows follow each other in one batch: one slice each
        new_run = np.ones(len(s), dtype=bool)
        new_run[1:] = (k[1:] != k[:-1]) | (at[1:] != at[:-1] + n[:-1])
        first = np.flatnonzero(new_run)
        size = np.add.reduceat(n, first)
        tables: list[pa.Table] = []
        for j, m in zip(first.tolist(), size.tolist(), strict=True):
            if not m:  # no rows (a batch of empty segments is not loaded in Arrow: nothing to take)
                continue
            b = self.batches[int(k[j])]
            if b is None:
                return None
            tables.append(b.slice(int(at[j]), m))
        if len({t.schema for t in tables}) != 1:  # none (every segment empty) or schemas that differ
            return None
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)

    def held(self, T: list[int], removed: pl.Series) -> np.ndarray:
        """Per segment of ``T`` (every one loaded), how many of the keys ``removed`` its stored rows hold."""
        import pyarrow.compute as pc  # imported while the changes are read (see _incremental)

        out = np.zeros(len(T), dtype=np.int64)
        if not len(removed) or not T:
            return out
        T_arr = np.asarray(T, dtype=np.int64)
        rm = removed.to_arrow()
        for table, (segs, starts) in zip(self.batches, self._segs, strict=True):
            if table is None:  # the Polars path's keys (a batch whose packs' schemas differ)
                hit = _found(self.store.keys([self.entries[i] for i in segs.tolist()]), removed)
            else:
                col = table.column("__key")
                hit = np.flatnonzero(pc.is_in(col, value_set=rm.cast(col.type)).to_numpy(zero_copy_only=False))
            seg = segs[np.searchsorted(starts, hit, side="right") - 1]
            j = np.searchsorted(T_arr, seg)
            np.add.at(out, j[(j < len(T_arr)) & (T_arr[np.minimum(j, len(T_arr) - 1)] == seg)], 1)
        return out

    def keys(self, segs: list[int]) -> pl.Series:
        """The stored keys of ``segs`` (loaded, ascending)."""
        if not segs:
            return pl.Series("__key", [], dtype=pl.Utf8)
        table = self.rows(segs)
        if table is None:
            return self.store.keys([self.entries[i] for i in segs])
        return pl.Series("__key", table.column("__key"))


def _check_ranges(keys: pl.Series, segs: list[int], counts: np.ndarray, bounds: list[str], state: StateDirectory
                  ) -> None:
    """The keys of segments ``segs`` (``counts`` rows each, in this order) lie in order and inside
    each segment's own key range ``[bounds[i-1], bounds[i])``. Why: two index entries swapped (pack,
    offset, rows and digest together) each pass their digest, and their rows would be spliced and
    counted as the other segment's."""
    ends = np.cumsum(counts)
    full = [(i, int(e - m), int(e - 1)) for i, m, e in zip(segs, counts.tolist(), ends.tolist(), strict=True) if m]
    # segments not ascending cannot hold ascending keys; otherwise the keys must be in order
    ascending = all(a < b for a, b in itertools.pairwise(segs))
    ok = ascending and (len(keys) < 2 or bool((keys.slice(1) > keys.slice(0, len(keys) - 1)).all()))
    for pairs, below in (([(f, bounds[i - 1]) for i, f, _ in full if 0 < i <= len(bounds)], False),
                         ([(last, bounds[i]) for i, _, last in full if i < len(bounds)], True)):
        if ok and pairs:
            at = pl.Series([p for p, _ in pairs], dtype=pl.Int64)
            edge = pl.Series([b for _, b in pairs], dtype=pl.Utf8)
            ok = bool(((keys.gather(at) < edge) if below else (keys.gather(at) >= edge)).all())
    if not ok:
        raise VerificationError(f"{state.index_path}: a segment's rows are not of its key range (index entries "
                                "moved after they were written): rebuild the state with --full")


def _stored_types(kind: str, scale: int | None) -> tuple[Callable[[pa.DataType], bool], str]:
    """Whether an Arrow type is one a canonical column of ``kind`` is stored as, and its name."""
    return {
        "text": (lambda t: t in (pa.large_string(), pa.string()), "text"),
        "id": (lambda t: t in (pa.large_string(), pa.string()), "text"),
        # wide (decimal128 at the mapping's scale) or scaled (int64 units of the scale)
        "decimal": (lambda t: t == pa.int64() or (pa.types.is_decimal128(t) and t.scale == (scale or 0)),
                    f"decimal128(·, {scale or 0}) or int64"),
        "int": (lambda t: t == pa.int64(), "int64"),
        "float": (lambda t: t == pa.float64(), "double"),
        "bool": (lambda t: t == pa.bool_(), "bool"),
        "date": (lambda t: t == pa.date32(), "date32"),
        "timestamp": (lambda t: pa.types.is_timestamp(t) and t.unit == "us" and t.tz in ("UTC", "+00:00"),
                      "timestamp[us, UTC]"),
    }[kind]


def _check_pack_schema(schema: pa.Schema, want: dict[str, Any], path: Path) -> None:
    """A pack holds exactly the canonical columns, each in a type its kind is stored as: a column
    recast after it was written (an int as a float hashes to the same bytes; a dictionary or view
    type fails deep inside Polars) is refused before any of its values is read."""
    names = set(schema.names)
    if names != {*want, "__key"} or len(schema.names) != len(names):
        raise VerificationError(f"{path} does not match the state's index (its columns {schema.names} are not the "
                                f"state's {sorted({*want, '__key'})}): rebuild the state with --full")
    for f in schema:
        ok, what = _stored_types("text", None) if f.name == "__key" else _stored_types(want[f.name].kind,
                                                                                     want[f.name].scale)
        if not ok(f.type):
            raise VerificationError(f"{path} does not match the state's index (its column {f.name} is {f.type}, "
                                    f"stored as {what}): rebuild the state with --full")


def _check_layout(state: StateDirectory, store: _Packs, index: dict[str, Any], side: str) -> None:
    """Every segment of ``side`` lies inside its pack, and no two overlap: a segment whose row count
    was raised would otherwise read into its neighbour's rows wherever they are taken unchecked (the
    stored keys of untouched segments, which the deletion search compares). Opens every pack the
    index names, as a run does anyway (compaction counts their rows)."""
    s = index["sides"][side]["segments"]
    if not s["rows"]:
        return
    code = np.asarray(s["file"], dtype=np.int64)
    off = np.asarray(s["offset"], dtype=np.int64)
    n = np.asarray(s["rows"], dtype=np.int64)
    size = np.asarray([int(store.table(f)[1][-1]) for f in s["files"]], dtype=np.int64)
    order = np.lexsort((off, code))
    code, off, n = code[order], off[order], n[order]
    full = n > 0
    code, off, n = code[full], off[full], n[full]
    end = off + n
    bad = end > size[code]
    same = code[1:] == code[:-1]
    if bad.any() or (same & (off[1:] < end[:-1])).any():
        raise VerificationError(f"{state.index_path}: the {side} segments do not fit their packs (one reaches past "
                                "its pack or into another's rows): rebuild the state with --full")


def _layout(entries: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, dict[str, list[int]]]:
    """The entries' parts, in order (their rows, concatenated, are the entries' rows): each part's
    offset and rows, and which parts (positions) each pack holds."""
    parts = [p for e in entries for p in e["parts"]]
    off = np.fromiter((int(p[1]) for p in parts), dtype=np.int64, count=len(parts))
    n = np.fromiter((int(p[2]) for p in parts), dtype=np.int64, count=len(parts))
    by_file: dict[str, list[int]] = {}
    for k, p in enumerate(parts):
        by_file.setdefault(p[0], []).append(k)
    return off, n, by_file


def _chunks(sizes: list[int]) -> list[tuple[int, int]]:
    """Runs ``[j0, j1)`` of consecutive items of about HASH_CHUNK_ROWS rows together (an item larger
    than that alone): the batches a run loads, rewrites and hashes touched segments in."""
    out: list[tuple[int, int]] = []
    size = j0 = 0
    for j, n in enumerate(sizes):
        if j > j0 and size + n > merkle.HASH_CHUNK_ROWS:
            out.append((j0, j))
            j0, size = j, 0
        size += n
    if sizes:
        out.append((j0, len(sizes)))
    return out


def _check_offsets(batch: pa.RecordBatch, rows: np.ndarray, path: Path) -> None:
    """The value offsets of ``rows`` in every variable-width column lie inside its data buffer, before
    a gather follows them: a pack whose offsets were changed after it was written is refused here,
    not read out of bounds (its values are then checked by the segments' digests)."""
    for col in batch.columns:
        if col.type not in (pa.large_string(), pa.string(), pa.large_binary(), pa.binary()):
            continue
        wide = col.type in (pa.large_string(), pa.large_binary())
        _, off_buf, data_buf = col.buffers()
        offsets = np.frombuffer(off_buf, dtype=np.int64 if wide else np.int32)[col.offset: col.offset + len(col) + 1]
        lo, hi = offsets[rows], offsets[rows + 1]
        size = 0 if data_buf is None else data_buf.size
        if len(rows) and ((lo > hi).any() or lo.min() < 0 or hi.max() > size):
            raise VerificationError(f"{path} does not match the state's index (a value's offsets lie outside "
                                    "its data): rebuild the state with --full")


def _write_pack(state: StateDirectory, side: str, generation: int, number: int, frame: pl.DataFrame | pa.Table
                ) -> str:
    p = state.fresh(state.segment_path(side, generation, number))
    # uncompressed (LZ4 cost 5 s to write and 4 s to read per 10M rows, and a compressed pack cannot
    # be memory-mapped), in Arrow's classic large_string layout (readable by any Arrow reader), and
    # straight to the file: through a BytesIO the write took 2.6x as long
    if isinstance(frame, pa.Table):  # rows that stayed in Arrow (see _Packs.gather): written as they are
        with pa.OSFile(str(p), "wb") as sink, pa.ipc.new_file(sink, frame.schema) as writer:
            writer.write_table(frame)
    else:
        frame.write_ipc(p, compression="uncompressed", compat_level=pl.CompatLevel.oldest())
    state.durable(p)
    return state.relative(p)


def _write_side(state: StateDirectory, side: str, generation: int, frame: pl.DataFrame, counts: np.ndarray,
                first: int = 0) -> list[dict[str, Any]]:
    """Write ``frame`` (sorted by key, ``counts`` rows per segment) as packs of about PACK_ROWS
    rows cut at segment boundaries; one ``{file, offset, rows}`` per segment."""
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    cuts = [0]
    for j in range(1, len(counts)):
        if starts[j] - starts[cuts[-1]] >= PACK_ROWS:
            cuts.append(j)
    cuts.append(len(counts))

    def one(k: int) -> list[dict[str, Any]]:
        a, b = cuts[k], cuts[k + 1]
        lo = int(starts[a])
        name = _write_pack(state, side, generation, first + k, frame.slice(lo, int(starts[b]) - lo))
        return [{"parts": ((name, int(starts[j]) - lo, int(counts[j])),), "rows": int(counts[j])} for j in range(a, b)]

    with ThreadPoolExecutor(2) as pool:
        return [e for part in pool.map(one, range(len(cuts) - 1)) for e in part]


def _segments_json(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """A side's segment list as the index stores it: columns, not one object per segment (there are
    tens of thousands)."""
    parts = [p for e in entries for p in e["parts"]]
    files = sorted({p[0] for p in parts})
    no = {f: i for i, f in enumerate(files)}
    return {"files": files, "file": [no[p[0]] for p in parts], "offset": [int(p[1]) for p in parts],
            "rows": [int(p[2]) for p in parts], "digests": "".join(e["digest"] for e in entries),
            "parts": [len(e["parts"]) for e in entries]}


def _segments_of(state: StateDirectory, index: dict[str, Any], side: str, check_only: bool = False
                 ) -> list[dict[str, Any]]:
    """A side's segment list from the index, checked (``check_only``: its shape alone, which is
    instant; the entries are built while the servers answer)."""
    try:
        s = index["sides"][side]["segments"]
        files, dig = list(s["files"]), str(s["digests"])
        n = len(dig) // 64
        per = [1] * n if s.get("parts") is None else [int(k) for k in s["parts"]]
        n_parts = sum(per)
        if not (len(s["file"]) == len(s["offset"]) == len(s["rows"]) == n_parts and len(dig) == 64 * n == 64 * len(per)):
            raise ValueError("columns of different lengths")
        if n != len(index["boundaries"]) + 1:
            raise ValueError(f"{n} segments for {len(index['boundaries']) + 1} key ranges")
        if check_only:
            return []
        flat = [(files[f], int(o), int(r)) for f, o, r in zip(s["file"], s["offset"], s["rows"], strict=True)]
        out, at = [], 0
        for i, k in enumerate(per):
            ps = tuple(flat[at:at + k])
            at += k
            out.append({"parts": ps, "rows": sum(p[2] for p in ps), "digest": dig[64 * i: 64 * i + 64], "seg": i})
        return out
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise VerificationError(f"{state.index_path}: its {side} segment list is malformed ({exc}): "
                                "rebuild the state with --full") from None


# -- the run ------------------------------------------------------------------------------------------
@dataclass
class _Side:
    name: str
    src: Source
    fields: tuple[FieldSpec, ...]
    where: str | None
    updated_at: str | None


def run_state(req: DiffRequest, opts: StateOptions, *, say: Callable[[str], None], ssrc: Source, tsrc: Source,
              fields_s: tuple[FieldSpec, ...], fields_t: tuple[FieldSpec, ...], t0: float,
              snapshots: bool = False) -> DiffRun:
    """One run against the state in ``opts.dir`` (locked for the run): incremental when the state
    allows, else full, saying why; a full check when due."""
    from engine.app.reconcile import DiffRun

    opts.check()
    if req.as_of is not None:
        raise UsageError("--as-of cannot be combined with --state: an incremental run is always of now")
    state = StateDirectory(Path(opts.dir))
    lock = state.lock()
    try:
        index = _checked_index(state, opts)
        before = _file_digest(state.index_path) if index is not None else None
        sides = (_Side("source", ssrc, fields_s, req.source_where, getattr(req, "source_updated_at", None)),
                 _Side("target", tsrc, fields_t, req.target_where, req.target_updated_at))
        ident = _identity_digest(req, (fields_s, fields_t), req.segment_rows)
        reason = _why_full(opts, index, ident)
        runs = int(index.get("runs", 0)) if index else 0
        since_full = int(index.get("runs_since_full", 0)) if index else 0
        check_due = reason is None and (opts.verify_full or since_full + 1 >= opts.full_every)
        info: dict[str, Any] = {"state": str(state.dir), "state_before": before, "run": runs + 1}
        if reason is not None:
            say(f"full run: {reason}")
            result, written, marks, fmeta = _full(req, state, index, sides, None, say)
            info.update(mode="full", reason=reason, runs_since_full=0)
            status = "ok"
        else:
            assert index is not None
            say("incremental run: asking each side what changed")
            try:
                result, written, marks, fmeta, inc = _incremental(req, state, index, sides, say)
            except _NeedFull as exc:
                say(f"full run: {exc}")
                result, written, marks, fmeta = _full(req, state, index, sides, None, say)
                info.update(mode="full", reason=str(exc), runs_since_full=0)
                check_due = False
            else:
                info.update(mode="incremental", runs_since_full=since_full + 1, **inc)
            status = "ok"
            if check_due:
                why = "--verify-full" if opts.verify_full else f"every {opts.full_every} runs (--full-every)"
                say(f"full check ({why}): reading both sides whole with the state's boundaries")
                full_result, _, marks, fmeta = _full(req, state, index, sides, list(result.segmentation.boundaries), say,
                                                     write=False)
                roots = (full_result.source_tree.root == result.source_tree.root
                         and full_result.target_tree.root == result.target_tree.root)
                # the roots vouch for the rows; the totals and differences a run carries forward have
                # no digest of their own, so they are compared too
                carried = _same_totals(result, full_result)
                # the roots come from the index's digests: a stored segment no run has loaded since
                # (its pack or its parts changed, its digest kept) is found only by reading it
                stored = _every_segment_checks(state, written if written is not None else index,
                                               (fields_s, fields_t))
                same = roots and carried and stored
                info["full_check"] = {"why": why, "equal": same, "roots_equal": roots, "totals_equal": carried,
                                      "stored_segments_check": stored,
                                      "incremental_roots": [result.source_tree.root_hex, result.target_tree.root_hex],
                                      "full_roots": [full_result.source_tree.root_hex,
                                                     full_result.target_tree.root_hex]}
                if not same:
                    status = "state_drift"
                    say("state drift: the full read differs from the incremental state (roots, totals or differences); rebuilding the state")
                result = full_result
                # on the index this run committed: its generation is taken, and its packs are what a
                # crash before the new commit must leave intact
                _commit_full(state, written if written is not None else index, req, ident, result, fmeta, marks, runs)
                info["runs_since_full"] = 0
        info["watermarks"] = {s: marks.get(s) for s in SIDES}
        info["state_after"] = _file_digest(state.index_path)
        result.elapsed_s = time.perf_counter() - t0
        run_ = DiffRun(req, result, fmeta["source"], fmeta["target"], fields_s, None, None,
                       profiles=_profiles(result, fmeta),
                       snapshot_parts=_snapshot_parts(state, (fields_s, fields_t)) if snapshots else {})
        run_.incremental = info  # type: ignore[attr-defined]
        run_.status = status  # type: ignore[attr-defined]
        return run_
    finally:
        lock.close()


def _every_segment_checks(state: StateDirectory, index: dict[str, Any],
                          fields: tuple[tuple[FieldSpec, ...], tuple[FieldSpec, ...]]) -> bool:
    """Whether every stored segment of both sides loads and matches its digest, key text and key
    range (:meth:`_Packs._verify`), batch by batch: what a full check adds to comparing roots."""
    try:
        for side, fs in zip(SIDES, fields, strict=True):
            store = _Packs(state, fs, list(index["boundaries"]))
            ents = _segments_of(state, index, side)
            for a, b in _chunks([int(e["rows"]) for e in ents]):
                if store.load_arrow(ents[a:b], fs) is None:  # packs whose types differ: load unifies
                    store.load(ents[a:b], fs)
    except VerificationError:
        return False
    return True


def _snapshot_parts(state: StateDirectory, fields: tuple[tuple[FieldSpec, ...], tuple[FieldSpec, ...]]
                    ) -> dict[str, Path]:
    """Each side's canonical snapshot for a manifest (``manifest verify --data``): the state's
    segments as the index now names them, checked and concatenated in key order."""
    import tempfile

    from engine.core.normalize import decimal_view

    index = state.load_index()
    assert index is not None
    keep = Path(tempfile.mkdtemp(prefix="recon-snap-"))  # moved into place by write_snapshots
    out = {}
    store = _Packs(state, fields[0])
    for side, fs in zip(SIDES, fields, strict=True):
        frame = store.load(_segments_of(state, index, side), fs)
        p = keep / f"{side}.parquet"
        decimal_view(frame, fs).write_parquet(p)
        out[side] = p
    return out


def _same_totals(a: DiffResult, b: DiffResult) -> bool:
    """The counts, column statistics (as numbers: ``1.0`` is ``1.00``) and differences of two results."""
    if any(int(getattr(a, k)) != int(getattr(b, k)) for k in _COUNTS) or a.columns.keys() != b.columns.keys():
        return False
    if any(a.columns[n] != b.columns[n] for n in a.columns):  # dataclass equality: Decimal compares by value
        return False
    order = ["key", "kind", "column"]
    return a.differences.sort(order, nulls_last=True).equals(b.differences.sort(order, nulls_last=True))


def _checked_index(state: StateDirectory, opts: StateOptions) -> dict[str, Any] | None:
    """The state's index, refused (exit 4) when it is not one this version writes whole
    (:mod:`engine.app.state_index`); with ``--full``, which rebuilds from the sources, an unreadable
    or malformed index is set aside instead (its files are removed by the rebuild's commit)."""
    try:
        index = state.load_index()
        if index is not None and index.get("version") == STATE_VERSION \
                and index.get("encoding_version") == ENCODING_VERSION:
            state_index.check(index)
    except (UsageError, VerificationError) as exc:
        if opts.full:
            return None
        if isinstance(exc, VerificationError):
            raise VerificationError(f"{state.index_path}: {exc}") from None
        raise
    return index


def _why_full(opts: StateOptions, index: dict[str, Any] | None, ident: str) -> str | None:
    if opts.full:
        return "--full"
    if index is None:
        return "first run: no state yet"
    if index.get("version") != STATE_VERSION or index.get("encoding_version") != ENCODING_VERSION:
        return "the state was written by another version of recon (its format or encoding differs)"
    if index.get("identity") != ident:
        return "the mapping changed since the state was written (sides, key, columns, types, tolerances or conditions)"
    totals = index.get("totals") or {}
    if totals.get("duplicate_keys_source") or totals.get("duplicate_keys_target"):
        return "the key is not unique on a side: incremental runs need a unique key"
    return None


def _profiles(result: DiffResult, fmeta: dict[str, Any]) -> dict[str, tuple[int, dict[str, int]]]:
    return {"source": (result.source_rows, fmeta.get("nulls", {}).get("source", {})),
            "target": (result.target_rows, fmeta.get("nulls", {}).get("target", {}))}


def _request(side: _Side, *, keys_only: bool = False, ordered: bool = False,
             count_ranges: tuple[tuple[str | None, str | None], ...] = ()) -> ReadRequest:
    fields = [f for f in side.fields if f.is_key] if keys_only else list(side.fields)
    keys = tuple(f for f in side.fields if f.is_key)
    return ReadRequest([f.column for f in fields], side.where, updated_at=side.updated_at,
                       key_columns=[f.column for f in keys], key_fields=keys if ordered or count_ranges else (),
                       key_order=ordered, count_ranges=count_ranges)


def _ask(side: _Side, since: dict[str, Any] | None,
         count_ranges: tuple[tuple[str | None, str | None], ...] = ()) -> SideChanges:
    """The side's changes since ``since``; a source that cannot list changes is read whole.
    ``count_ranges``: the first step of :func:`_narrow`, counted in the changes' own snapshot where
    the side can (instead of a ``count(*)``: one pass over the key's index, not two)."""
    changes = getattr(side.src, "changes", None)
    if changes is None:
        e = side.src.read(_request(side))
        return SideChanges(mode="whole", frame=e.frame, columns=e.columns, watermark={}, rows_now=e.frame.height,
                           reason=f"{side.src.ref} cannot list its changes: read whole every run", meta=e.meta)
    return changes(_request(side, count_ranges=count_ranges), since)


def _canon(side: _Side, frame: pl.DataFrame) -> Canonical:
    try:
        return canonicalize(frame, side.fields, side.src.side)
    except ValueError as exc:
        raise UsageError(f"cannot normalize {side.src.ref}: {exc}") from None


def _canon_keys(side: _Side, frame: pl.DataFrame | None) -> pl.Series:
    keys = tuple(f for f in side.fields if f.is_key)
    if frame is None or frame.height == 0:
        return pl.Series("__key", [], dtype=pl.Utf8)
    try:
        df = pl.DataFrame([typed(frame[f.column], f.ctype, side.src.side).alias(f.name) for f in keys])
    except (ValueError, pl.exceptions.PolarsError) as exc:
        raise UsageError(f"cannot normalize the deleted keys of {side.src.ref}: {exc}") from None
    return df.select(key_expr(keys).alias("__key"))["__key"]


def _nulls(c: Canonical) -> dict[str, int]:
    return {f.name: int(c.frame[f.name].null_count()) for f in c.fields}


# -- full -----------------------------------------------------------------------------------------------
def _full(req: DiffRequest, state: StateDirectory, index: dict[str, Any] | None, sides: tuple[_Side, _Side],
          boundaries: list[str] | None, say: Callable[[str], None], *, write: bool = True
          ) -> tuple[DiffResult, dict[str, Any] | None, dict[str, Any], dict[str, Any]]:
    """Both sides read whole (each side's own ``changes(since=None)``: its read and its watermark),
    diffed in one pass; the state is written from the result unless ``write`` is False."""
    def read(side: _Side) -> tuple[SideChanges, Canonical, bool]:
        """One side read and put in canonical order: the first side's sort runs while the other
        side is still being read, and canonicalize gets the only reference to the raw frame, so it
        frees the raw columns as it goes (as a one-off diff does)."""
        g = _ask(side, None)
        as_stored = _keys_as_stored(side, g.frame)
        try:
            c = canonicalize(take_frame(g), side.fields, side.src.side)
        except ValueError as exc:
            raise UsageError(f"cannot normalize {side.src.ref}: {exc}") from None
        return g, c, as_stored

    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(read, sides))
    got = [d[0] for d in done]
    canon = [d[1] for d in done]
    stored = {s.name: d[2] for s, d in zip(sides, done, strict=True)}
    if boundaries is None:
        boundaries = merkle.choose_boundaries(canon[0].frame["__key"], req.segment_rows)
    say(f"hashing and comparing {len(boundaries) + 1:,} segments")
    result = compare(canon[0], canon[1], boundaries=boundaries)
    fmeta = {"source": dict(got[0].meta), "target": dict(got[1].meta),
             "nulls": {"source": _nulls(canon[0]), "target": _nulls(canon[1])}, "canon": canon,
             "keys_as_stored": stored}
    marks = {s.name: g.watermark for s, g in zip(sides, got, strict=True)}
    written = None
    if write:
        runs = int(index.get("runs", 0)) if index else 0
        ident = _identity_digest(req, (sides[0].fields, sides[1].fields), req.segment_rows)
        written = _commit_full(state, index, req, ident, result, fmeta, marks, runs)
    return result, written, marks, fmeta


def _commit_full(state: StateDirectory, index: dict[str, Any] | None, req: DiffRequest, ident: str,
                 result: DiffResult, fmeta: dict[str, Any], marks: dict[str, Any], runs: int) -> dict[str, Any]:
    canon: list[Canonical] = fmeta.pop("canon")
    gen = int(index.get("generation", 0)) + 1 if index else 1
    seg_entries = {}
    n_seg = len(result.segmentation.boundaries) + 1
    for side, c, tree in zip(SIDES, canon, (result.source_tree, result.target_tree), strict=True):
        counts = np.asarray(tree.rows, dtype=np.int64)
        if len(counts) != n_seg:
            raise RuntimeError("segment count mismatch")
        files = _write_side(state, side, gen, c.frame, counts)
        seg_entries[side] = [{**f, "digest": d.hex()} for f, d in zip(files, tree.digests, strict=True)]
    diffs = _write_differences(state, gen, result.differences)
    new_index = {
        "version": STATE_VERSION, "encoding_version": ENCODING_VERSION, "identity": ident,
        "segment_rows": req.segment_rows, "boundaries": list(result.segmentation.boundaries), "generation": gen,
        "runs": runs + 1, "runs_since_full": 0, "written_at": datetime.now(UTC).isoformat(),
        "sides": {s: {"segments": _segments_json(seg_entries[s]), "watermark": marks.get(s),
                      "keys_as_stored": bool(fmeta.get("keys_as_stored", {}).get(s))} for s in SIDES},
        "totals": _totals_json(result), "differences": diffs,
    }
    _commit(state, new_index)
    return new_index


def _differences_of(state: StateDirectory, index: dict[str, Any]) -> pl.DataFrame:
    """The previous run's differences, checked: the file's digest against the index, its columns,
    and its counts against the index's totals (:func:`state_index.check_differences`)."""
    de = index["differences"]
    dp = state.resolve(de["file"])
    if not dp.is_file() or _file_digest(dp) != de["blake3"]:
        raise VerificationError(f"{dp} does not match the state's index: rebuild the state with --full")
    try:
        prev_diffs = pl.read_parquet(dp)
    except (OSError, pl.exceptions.PolarsError, pl.exceptions.PanicException) as exc:
        raise VerificationError(f"{dp} does not match the state's index (not a readable differences file: "
                                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): "
                                "rebuild the state with --full") from None
    if dict(prev_diffs.schema) != DIFF_SCHEMA:
        raise VerificationError(f"{dp} does not match the state's index (its columns are not a differences "
                                "file's): rebuild the state with --full")
    try:
        state_index.check_differences(index, prev_diffs)
    except VerificationError as exc:
        raise VerificationError(f"{state.index_path}: {exc}") from None
    return prev_diffs


def _write_differences(state: StateDirectory, gen: int, diffs: pl.DataFrame) -> dict[str, Any]:
    p = state.fresh(state.differences_path(gen))
    diffs.write_parquet(p)
    state.durable(p)
    return {"file": state.relative(p), "blake3": _file_digest(p), "rows": diffs.height}


def _commit(state: StateDirectory, index: dict[str, Any]) -> None:
    state.write_index(index)
    keep = [f for s in SIDES for f in index["sides"][s]["segments"]["files"]] + [index["differences"]["file"]]
    state.collect_garbage(keep)


# -- incremental ---------------------------------------------------------------------------------------------
def _incremental(req: DiffRequest, state: StateDirectory, index: dict[str, Any], sides: tuple[_Side, _Side],
                 say: Callable[[str], None]
                 ) -> tuple[DiffResult, dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    bounds = list(index["boundaries"])
    seg = merkle.Segmentation(tuple(bounds))
    store = _Packs(state, sides[0].fields, bounds)
    n_seg = len(bounds) + 1
    for s in SIDES:  # a malformed list is refused before either side is asked anything
        _segments_of(state, index, s, check_only=True)
        _check_layout(state, store, index, s)
    compared = sorted(f.name for f in sides[0].fields if not f.is_key)
    if sorted(index["totals"]["columns"]) != compared:
        raise VerificationError(f"{state.index_path}: the state's index is malformed (its totals are of the columns "
                                f"{sorted(index['totals']['columns'])}, the mapping compares {compared}): "
                                "rebuild the state with --full")
    with ThreadPoolExecutor(2) as pool:
        first = tuple(_key_range(bounds, a, b) for a, b in _spans(0, n_seg, NARROW_STEPS[0]))
        asked = [pool.submit(_ask, s, index["sides"][s.name].get("watermark"), first) for s in sides]
        # while the servers work (the changes' read is the run's longest wait): the segment lists,
        # and the modules the rest of the run needs (their import is 40 ms of the critical path)
        import pyarrow.compute  # noqa: F401

        entries = {s: _segments_of(state, index, s) for s in SIDES}
        # the previous differences, checked against the totals (read once: _finish keeps them)
        store.previous_differences = _differences_of(state, index)
        got = [f.result() for f in asked]
    b_arr = pl.Series("b", bounds, dtype=pl.Utf8)

    def seg_of(keys: pl.Series) -> np.ndarray:
        return b_arr.search_sorted(keys, side="right").to_numpy().astype(np.int64) if len(keys) else \
            np.zeros(0, dtype=np.int64)

    # what each side changed: canonical rows (changes) or the whole side, and deleted keys
    plans: list[dict[str, Any]] = []
    touched: set[int] = set()
    for side, g in zip(sides, got, strict=True):
        p: dict[str, Any] = {"mode": g.mode, "reason": g.reason, "rows_now": g.rows_now,
                             "rows_reread": g.frame.height, "range_counts": g.range_counts}
        c = _canon(side, g.frame)
        p["keys_as_stored"] = _keys_as_stored(side, g.frame) and (
            g.mode == "whole" or bool(index["sides"][side.name].get("keys_as_stored")))
        g.frame = g.frame.clear()
        if g.mode == "whole":
            counts = merkle.segment_counts(c.frame["__key"], seg)
            digests, _ = merkle.hash_segments(c.frame, c.fields, counts)
            p["whole"] = c
            p["counts"] = counts
            for i in range(n_seg):
                e = entries[side.name][i]
                if digests[i].hex() != e["digest"] or int(counts[i]) != int(e["rows"]):
                    touched.add(i)
        else:
            if not c.unique_keys:
                raise _NeedFull(f"the changed rows of {side.src.ref} repeat a key: incremental runs need a unique key")
            deleted = _canon_keys(side, g.deleted)
            p["changed"] = c
            p["deleted"] = deleted
            p["deleted_listed"] = len(deleted)  # what the side itself listed (before any key read)
            touched.update(seg_of(c.frame["__key"]).tolist())
            touched.update(seg_of(deleted).tolist())
        plans.append(p)
    if all(p["mode"] != "whole" for p in plans):
        with _reused_memory():
            return _apply_changes(req, state, store, index, sides, got, plans, touched, bounds, entries, seg_of, say)
    return _apply(req, state, store, index, sides, got, plans, touched, bounds, entries, seg_of, say)


@contextlib.contextmanager
def _reused_memory() -> Iterator[None]:
    """Arrow buffers from the C library's allocator while the touched segments are rewritten.

    Why: a run allocates and frees hundreds of batches of a few MB (loaded rows, spliced rows,
    encoding buffers). Arrow's default pool (mimalloc) hands freed pages back to the kernel within
    milliseconds, so each batch faults in fresh pages, and on the benchmark's VM the kernel zeroing
    them was a third of an incremental run's CPU (``perf``: ``clear_page_erms``). glibc, tuned by
    :func:`engine.runtime.tune_malloc`, keeps them for reuse: at 10M rows, system time fell from
    3.2-3.3 s to 1.8-1.9 s and the run from 6.5-7.1 s to 6.1-6.2 s (bench/RESULTS.md, "fourth
    pass"). Only here: a full read's buffers are larger than glibc's mmap threshold, and there the
    switch measured no better. The previous pool comes back afterwards; a buffer is always freed by
    the pool that allocated it. The pool is the process's: two state runs at once in one process
    (recon never does that; `recon watch` runs its cycles one after another) would have to share
    one switch."""
    previous = pa.default_memory_pool()
    try:
        pa.set_memory_pool(pa.system_memory_pool())
        yield
    finally:
        pa.set_memory_pool(previous)


class _NeedFull(Exception):
    """An incremental run found it cannot be exact (the run goes full and says why)."""


def _apply(req: DiffRequest, state: StateDirectory, store: _Packs, index: dict[str, Any], sides: tuple[_Side, _Side],
           got: list[SideChanges], plans: list[dict[str, Any]], touched: set[int], bounds: list[str],
           entries: dict[str, list[dict[str, Any]]], seg_of: Callable[[pl.Series], np.ndarray],
           say: Callable[[str], None], loaded: dict[tuple[str, int], pl.DataFrame] | None = None
           ) -> tuple[DiffResult, dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    n_seg = len(bounds) + 1
    T = sorted(touched)
    say(f"{len(T):,} of {n_seg:,} segments touched")
    t_bounds = [bounds[i - 1] for i in T[1:]]
    # the touched segments' stored rows, loaded once (a second pass, after deletions were found, reuses them)
    loaded = {} if loaded is None else loaded
    old: list[pl.DataFrame] = []
    for side, p in zip(sides, plans, strict=True):
        want = [i for i in T if (side.name, i) not in loaded]
        for i, f in zip(want, store.load_each([entries[side.name][i] for i in want], side.fields), strict=True):
            loaded[(side.name, i)] = f
        prev = _concat([loaded[(side.name, i)] for i in T], side.fields) if T else None
        old.append(_empty_like(p, side) if prev is None or not prev.width else prev)
    # deletions nobody listed: each side's own count, in the snapshot of its changes, against what the
    # state predicts; both sides are checked before one more pass with the deleted keys listed
    kept: dict[str, pl.DataFrame] = {}
    short: list[tuple[_Side, dict[str, Any], int]] = []
    for side, p, prev in zip(sides, plans, old, strict=True):
        if p["mode"] == "whole":
            continue
        ch: Canonical = p["changed"]
        gone = pl.concat([ch.frame["__key"], p["deleted"]]) if len(p["deleted"]) else ch.frame["__key"]
        kept[side.name] = prev.filter(~pl.col("__key").is_in(gone.implode()))
        state_rows = sum(int(entries[side.name][i]["rows"]) for i in range(n_seg))
        predicted = state_rows - prev.height + kept[side.name].height + ch.frame.height
        if p["rows_now"] is not None and p["rows_now"] != predicted:
            say(f"{side.name}: {side.src.ref} holds {p['rows_now']:,} rows, the state predicts {predicted:,}: "
                "reading its keys to find the rows deleted")
            short.append((side, p, predicted))

    def deleted_of(x: tuple[_Side, dict[str, Any], int]) -> pl.Series:
        side = x[0]
        skip = set(T)
        held = pl.concat([kept[side.name]["__key"], x[1]["changed"].frame["__key"],
                          store.keys([e for i, e in enumerate(entries[side.name]) if i not in skip])], rechunk=True)
        return _find_deleted(side, bounds, lambda _segs: held)[0]

    with ThreadPoolExecutor(2) as pool:  # the two key reads at once: each mostly waits on its server
        gone_of = list(pool.map(deleted_of, short))
    redo = plans
    more: set[int] = set()
    for (side, p, predicted), gone_keys in zip(short, gone_of, strict=True):
        found = {**p.get("deletions", {}), "counted": p["rows_now"], "predicted": predicted, "found": len(gone_keys)}
        redo = _with_deleted(redo, sides, side, gone_keys, found)
        more |= set(seg_of(gone_keys).tolist())
    if redo is not plans:  # again with the deleted keys listed (their segments touched, the count accounted for)
        return _apply(req, state, store, index, sides, got, redo, touched | more, bounds, entries, seg_of, say, loaded)
    new: list[pl.DataFrame] = []
    deletions: dict[str, Any] = {}
    for side, p, prev in zip(sides, plans, old, strict=True):
        if p["mode"] == "whole":
            c: Canonical = p["whole"]
            ids = seg_of(c.frame["__key"])
            mask = np.isin(ids, np.asarray(T, dtype=np.int64))
            fresh = c.frame.filter(pl.Series(mask)) if len(T) else c.frame.clear()
        else:
            fresh = _merge(kept[side.name], p["changed"].frame.select(prev.columns), side.fields)
            if "deletions" in p:
                deletions[side.name] = p["deletions"]
        new.append(fresh)
    # split a segment whose source rows grew past twice the segment size (only its subtree changes)
    seg_new_s = _counts_in(new[0]["__key"], t_bounds, len(T))
    split_at: list[str] = []
    starts = np.concatenate([[0], np.cumsum(seg_new_s)]).astype(np.int64)
    for j, n in enumerate(seg_new_s):
        if n > 2 * req.segment_rows:
            keys = new[0]["__key"].slice(int(starts[j]), int(n))
            split_at.extend(merkle.choose_boundaries(keys, req.segment_rows))
    new_bounds = sorted(set(bounds) | set(split_at))
    fields = sides[0].fields
    # the touched segments as they were (their stored digests: no re-hash) and as they are
    old_trees = []
    for s, prev in zip(SIDES, old, strict=True):
        digs = [bytes.fromhex(entries[s][i]["digest"]) for i in T]
        rows = [int(entries[s][i]["rows"]) for i in T]
        if _counts_in(prev["__key"], t_bounds, len(T)).tolist() != rows:
            raise VerificationError(f"{state.dir}: a {s} segment's rows differ from its index entry: rebuild the "
                                    "state with --full")
        old_trees.append((merkle.build_tree(digs, rows), np.asarray(rows, dtype=np.int64)))
    # the keys whose rows changed on either side: when both sides listed their changes, the totals and
    # differences move by these keys' shares alone (every count and variance is a sum over keys), so
    # only their rows are diffed, before and after; a side read whole says only which segments changed
    affected = _affected_keys(plans)
    before = after = None
    after_trees: tuple[tuple[merkle.SideTree, np.ndarray], ...] = ()
    if T:
        # the touched key ranges after any split, hashed as they are
        T2_bounds_all = _touched_bounds(T, bounds, new_bounds)
        after_trees = _hash_sides(new, fields, T2_bounds_all)
        if affected is not None:
            pick = pl.col("__key").is_in(affected.implode())
            before = compare(Canonical(old[0].filter(pick), fields), Canonical(old[1].filter(pick), sides[1].fields),
                             boundaries=[])
            after = compare(Canonical(new[0].filter(pick), fields), Canonical(new[1].filter(pick), sides[1].fields),
                            boundaries=[])
        else:
            before = compare(Canonical(old[0], fields), Canonical(old[1], sides[1].fields), boundaries=t_bounds,
                             hashed=(old_trees[0], old_trees[1]))
            after = compare(Canonical(new[0], fields), Canonical(new[1], sides[1].fields), boundaries=T2_bounds_all,
                            hashed=(after_trees[0], after_trees[1]))
    # rebuild the segment list: untouched entries kept, touched ones replaced (split ones expand)
    gen = int(index["generation"]) + 1
    pieces = _pieces(T, bounds, new_bounds)  # touched old index -> its new segment indices (in the new list)
    after_counts = {s: np.asarray(tr[0].rows, dtype=np.int64) for s, tr in zip(SIDES, after_trees, strict=False)}
    written: dict[str, list[dict[str, Any]]] = {}
    for s, frame in zip(SIDES, new, strict=True):
        if T:
            written[s] = _write_side(state, s, gen, frame, after_counts[s])
    digests_after = {s: list(tr[0].digests) for s, tr in zip(SIDES, after_trees, strict=False)}  # none when T is empty
    return _finish(state, store, index, sides, got, plans, T, n_seg, new_bounds, pieces, entries, written,
                   after_counts,
                   digests_after, before, after, affected, seg_of, deletions, len(split_at), gen)


def _apply_changes(req: DiffRequest, state: StateDirectory, store: _Packs, index: dict[str, Any],
                   sides: tuple[_Side, _Side],
                   got: list[SideChanges], plans: list[dict[str, Any]], touched: set[int], bounds: list[str],
                   entries: dict[str, list[dict[str, Any]]], seg_of: Callable[[pl.Series], np.ndarray],
                   say: Callable[[str], None]
                   ) -> tuple[DiffResult, dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """:func:`_apply` when both sides listed their changes, one segment at a time.

    Why not the whole-frame way: 0.1% of random changes touch every segment, and whole-frame
    operations on millions of string keys (``is_in``, ``merge_sorted``, a sort) cost seconds each,
    several times over (measured at 10M rows: 42 s against a 24 s floor). Per segment, the changed
    and deleted keys are found by binary search in the segment's sorted keys, the few changed rows
    merged into a frame of ``--segment-rows`` rows, hashed and written: small frames, threads over
    segments, the same digests, shares and files as :func:`_apply`.
    """
    n_seg = len(bounds) + 1
    fields = sides[0].fields
    # pass 1: the touched segments' stored rows, loaded and checked once (pass 2 rewrites them; a
    # deletion found adds segments, loaded in a second round)
    plans = [dict(p) for p in plans]
    rows_of = {s: np.fromiter((int(e["rows"]) for e in entries[s]), dtype=np.int64, count=n_seg) for s in SIDES}
    loaded = {s.name: _Loaded(store, entries[s.name], s.fields, rows_of[s.name]) for s in sides}
    while True:  # a second round only when a count says rows were deleted that nobody listed
        T = sorted(touched)
        say(f"{len(T):,} of {n_seg:,} segments touched")
        T_arr = np.asarray(T, dtype=np.int64)
        jobs = [(lo, part) for lo in loaded.values() for part in lo.missing(T)]
        with ThreadPoolExecutor(2) as pool:
            for (lo, part), table in zip(jobs, pool.map(lambda j: j[0].fetch(j[1]), jobs), strict=True):
                lo.add(part, table)
        cuts = [_Cut(p, T, seg_of) for p in plans]
        short: list[tuple[_Side, dict[str, Any], int, np.ndarray, _Cut]] = []
        for side, p, cut in zip(sides, plans, cuts, strict=True):
            if p["rows_now"] is None:
                continue
            # rows per segment once the listed changes are applied: what the side should hold
            gone_before = loaded[side.name].held(T, cut.removed_all)
            expected = rows_of[side.name].copy()
            expected[T_arr] += cut.ch_n - gone_before
            predicted = int(expected.sum())
            if p["rows_now"] != predicted:
                say(f"{side.name}: {side.src.ref} holds {p['rows_now']:,} rows, the state predicts {predicted:,}: "
                    "reading its keys to find the rows deleted")
                short.append((side, p, predicted, expected, cut))
        if not short:
            break

        def deleted_of(x: tuple[_Side, dict[str, Any], int, np.ndarray, _Cut], T_arr: np.ndarray = T_arr
                       ) -> tuple[pl.Series, dict[str, Any]]:
            side, p, predicted, expected, cut = x

            def held_of(segs: list[int]) -> pl.Series:
                """The keys the state holds in ``segs`` once the listed changes are applied."""
                seg = np.asarray(segs, dtype=np.int64)
                j = np.searchsorted(T_arr, seg)
                mine = (j < len(T_arr)) & (T_arr[np.minimum(j, len(T_arr) - 1)] == seg) if len(T_arr) else \
                    np.zeros(len(seg), dtype=bool)
                parts = [store.keys([entries[side.name][i] for i in seg[~mine].tolist()])]
                jt = j[mine]
                if len(jt):
                    k = loaded[side.name].keys(seg[mine].tolist())
                    parts.append(k.filter(~k.is_in(cut.removed_all.implode())) if len(cut.removed_all) else k)
                    ch = cut.changed_all["__key"]
                    parts.append(ch.filter(pl.Series(np.isin(cut.ch_pos, jt))))
                return pl.concat(parts, rechunk=True)

            return _find_deleted(side, bounds, held_of, expected, expect=predicted - p["rows_now"],
                                 first=p.get("range_counts"), ranges_ok=bool(p.get("keys_as_stored")))

        with ThreadPoolExecutor(2) as pool:  # the two key reads at once: each mostly waits on its server
            gone_of = list(pool.map(deleted_of, short))
        for (side, p, predicted, _e, _c), (gone_keys, how) in zip(short, gone_of, strict=True):
            found = {**p.get("deletions", {}), "counted": p["rows_now"], "predicted": predicted,
                     "found": len(gone_keys), **how}
            plans = _with_deleted(plans, sides, side, gone_keys, found)
            touched |= set(seg_of(gone_keys).tolist())
    affected = _affected_keys(plans)
    assert affected is not None
    aff_cut = _Cut({"changed": Canonical(affected.to_frame("__key")), "deleted": affected.clear()}, T, seg_of)

    # the touched segments in batches of about HASH_CHUNK_ROWS stored rows (frames large enough that
    # each operation's fixed cost is small, small enough to stay in cache): per batch and side, the
    # stored rows less the removed keys (binary search), the changed rows merged in, and the rows of
    # the affected keys before and after
    t_arr = np.asarray(T, dtype=np.int64)
    batches = _chunks(np.maximum(rows_of["source"][t_arr], rows_of["target"][t_arr]).tolist())

    def apply_batch(bt: list[int], j0: int, j1: int
                    ) -> tuple[list[pl.DataFrame | pa.Table], list[pl.Series], list[pl.DataFrame], list[pl.DataFrame],
                               list[np.ndarray | None]]:
        news: list[pl.DataFrame | pa.Table] = []
        new_keys: list[pl.Series] = []
        olds: list[pl.DataFrame] = []
        afters: list[pl.DataFrame] = []
        srcs: list[np.ndarray | None] = []  # per side: where each new row came from (the Arrow path)
        aff = aff_cut.removed(j0, j1)
        for side, cut in zip(sides, cuts, strict=True):
            ents = [entries[side.name][i] for i in bt]
            stored = loaded[side.name].rows(bt)
            done = None if stored is None else _rewrite_arrow(stored, cut.removed(j0, j1), cut.changed(j0, j1), aff)
            if done is not None:
                news.append(done[0])
                new_keys.append(done[1])
                olds.append(done[2])
                afters.append(done[3])
                srcs.append(done[4])
                continue
            old = store.load(ents, side.fields)
            if not old.width:  # no stored columns: the changed rows' schema
                old = cut.changed(j0, j1).clear()
            gone = _found(old["__key"], cut.removed(j0, j1))
            kept = old
            if len(gone):
                keep = np.ones(old.height, dtype=bool)
                keep[gone] = False
                kept = old.filter(pl.Series(keep))
            ch = cut.changed(j0, j1)
            new = _merge(kept, ch.select(old.columns), side.fields) if ch.height else kept
            news.append(new)
            new_keys.append(new["__key"])
            pick = pl.col("__key").is_in(aff.implode())
            olds.append(old.filter(pick) if len(aff) else old.clear())
            afters.append(new.filter(pick) if len(aff) else new.clear())
            srcs.append(None)
        return news, new_keys, olds, afters, srcs

    gen = int(index["generation"]) + 1
    file_no = itertools.count()  # a file's number in this generation (unique; its order is the index's business)

    def run_batch(span: tuple[int, int]) -> tuple[dict[int, list[str]],
                                                  list[list[tuple[dict[str, Any], int, bytes]]], list[pl.DataFrame],
                                                  list[tuple[pa.Table | None, str] | None]]:
        """Apply, split and hash one batch, and write what must be written: on the Arrow path only the
        rows that are new to the state (:func:`_ropes`; returned, written once per side for the whole
        run), else the batch whole; only the affected keys' rows are kept."""
        # a batch's decimals may be in the scaled form while another's are wide: the canonical bytes,
        # hence the digests, are the same in both forms, and every concatenation unifies them
        bt = T[span[0]:span[1]]
        news, new_keys, olds, afters, srcs = apply_batch(bt, *span)
        # a segment whose source rows grew past twice the segment size is split (only its subtree changes)
        inner = [bounds[i - 1] for i in bt[1:]]
        counts = _counts_in(new_keys[0], inner, len(bt))
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        split: dict[int, list[str]] = {}
        for j, i in enumerate(bt):
            if counts[j] > 2 * req.segment_rows:
                split[i] = merkle.choose_boundaries(new_keys[0].slice(int(starts[j]), int(counts[j])),
                                                    req.segment_rows)
        seg = merkle.Segmentation(tuple(sorted([*inner, *(b for v in split.values() for b in v)])))
        n_pieces = len(seg.boundaries) + 1
        out = []
        to_write: list[tuple[pa.Table | None, str] | None] = []
        for s, frame, keys, src in zip(SIDES, news, new_keys, srcs, strict=True):
            per = _counts_in(keys, list(seg.boundaries), n_pieces)
            digests, _ = merkle.hash_segments(frame, fields, per)
            at = np.concatenate([[0], np.cumsum(per)]).astype(np.int64)
            if src is None or not isinstance(frame, pa.Table):
                name = _write_pack(state, s, gen, next(file_no), frame)
                out.append([({"parts": ((name, int(at[j]), int(per[j])),)}, int(per[j]), digests[j])
                            for j in range(n_pieces)])
                to_write.append(None)
                continue
            stored_parts = [p for i in bt for p in entries[s][i]["parts"]]
            rows, ropes = _ropes(stored_parts, src, at)
            out.append([({"parts": ropes[j]}, int(per[j]), digests[j]) for j in range(n_pieces)])
            to_write.append((frame.take(pa.array(rows)) if len(rows) else None, stored_parts[0][0]))
        return split, out, [*olds, *afters], to_write

    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(run_batch, batches))
    _write_new_rows(state, gen, file_no, done)
    split = {i: v for d in done for i, v in d[0].items()}
    new_bounds = sorted(set(bounds) | {b for v in split.values() for b in v})
    pieces = _pieces(T, bounds, new_bounds)
    written: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
    after_counts: dict[str, list[int]] = {s: [] for s in SIDES}
    digests_after: dict[str, list[bytes]] = {s: [] for s in SIDES}
    for _split, per_side, _rows, _w in done:
        for s, rows in zip(SIDES, per_side, strict=True):
            for f, n, d in rows:
                written[s].append(f)
                after_counts[s].append(n)
                digests_after[s].append(d)
    before = after = None
    if T:
        parts = [[d[2][k] for d in done] for k in range(4)]
        before = compare(Canonical(_concat(parts[0], fields), fields),
                         Canonical(_concat(parts[1], sides[1].fields), sides[1].fields), boundaries=[])
        after = compare(Canonical(_concat(parts[2], fields), fields),
                        Canonical(_concat(parts[3], sides[1].fields), sides[1].fields), boundaries=[])
    deletions = {s.name: p["deletions"] for s, p in zip(sides, plans, strict=True) if "deletions" in p}
    return _finish(state, store, index, sides, got, plans, T, n_seg, new_bounds, pieces, entries, written,
                   {s: np.asarray(v, dtype=np.int64) for s, v in after_counts.items()}, digests_after, before, after,
                   affected, seg_of, deletions, sum(len(v) for v in split.values()), gen)


def _write_new_rows(state: StateDirectory, gen: int, file_no: Iterator[int],
                    done: list[tuple[Any, list[list[tuple[dict[str, Any], int, bytes]]], Any,
                                     list[tuple[pa.Table | None, str] | None]]]) -> None:
    """Write each side's rows new to the state (:func:`_ropes`) as one pack for the run, in key order
    (batches are in key order, and so are their rows), and point the touched segments' parts at it
    (in place). Why one pack: a pack per batch made dozens of small files per run, each opened by
    every later run. Batches whose rows are stored in different Arrow types (a decimal scaled in one
    pack, wide in another) get a pack each."""
    for k, s in enumerate(SIDES):
        mine = [(b, w) for b, d in enumerate(done) if (w := d[3][k]) is not None]
        tables = [w[0] for _b, w in mine if w[0] is not None]
        where: dict[int, tuple[str, int]] = {}
        if tables and len({t.schema for t in tables}) == 1:
            name = _write_pack(state, s, gen, next(file_no), pa.concat_tables(tables))
            base = 0
            for b, (t, _f) in mine:
                if t is not None:
                    where[b] = (name, base)
                    base += t.num_rows
        else:
            for b, (t, _f) in mine:
                if t is not None:
                    where[b] = (_write_pack(state, s, gen, next(file_no), t), 0)
        for b, (_t, stored) in mine:
            name, base = where.get(b, (stored, 0))
            for e, _n, _d in done[b][1][k]:
                e["parts"] = tuple((name, base + o, m) if f is None else (f, o, m) for f, o, m in e["parts"])


class _Cut:
    """A side's changed rows and its removed keys (changed or deleted: their stored rows go), sorted,
    with where each touched segment's share begins: a run of touched segments (positions ``j0:j1``
    in ``T``) is then one slice, not one per segment (there are thousands)."""

    def __init__(self, p: dict[str, Any], T: list[int], seg_of: Callable[[pl.Series], np.ndarray]) -> None:
        self.changed_all: pl.DataFrame = _sort(p["changed"].frame)
        ch = self.changed_all["__key"]
        self.removed_all: pl.Series = pl.concat([ch, p["deleted"]]).unique().sort() if len(p["deleted"]) else ch
        t = np.asarray(T, dtype=np.int64)
        ch_seg, rm_seg = seg_of(ch), seg_of(self.removed_all)
        self._ch_at = np.searchsorted(ch_seg, t, side="left"), np.searchsorted(ch_seg, t, side="right")
        self._rm_at = np.searchsorted(rm_seg, t, side="left"), np.searchsorted(rm_seg, t, side="right")
        #: changed rows per touched segment; each changed row's and removed key's position in T
        self.ch_n = self._ch_at[1] - self._ch_at[0]
        self.ch_pos = np.searchsorted(t, ch_seg)

    def changed(self, j0: int, j1: int) -> pl.DataFrame:
        a, b = int(self._ch_at[0][j0]), int(self._ch_at[1][j1 - 1])
        return self.changed_all.slice(a, b - a)

    def removed(self, j0: int, j1: int) -> pl.Series:
        a, b = int(self._rm_at[0][j0]), int(self._rm_at[1][j1 - 1])
        return self.removed_all.slice(a, b - a)


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The positions ``lo[k]:hi[k]`` for every k, as one array."""
    n = hi - lo
    return np.repeat(lo - np.concatenate([[0], np.cumsum(n)[:-1]]), n) + np.arange(int(n.sum()), dtype=np.int64)


def _rewrite_arrow(old: pa.Table, removed: pl.Series, changed: pl.DataFrame, affected: pl.Series
                   ) -> tuple[pa.Table, pl.Series, pl.DataFrame, pl.DataFrame, np.ndarray] | None:
    """A batch of touched segments rewritten without leaving Arrow: the stored rows (checked), less
    the removed keys, with the changed rows spliced in at their places; with the new keys and the
    affected keys' rows before and after (in Polars: they are few). Why: converting every stored row
    to Polars and back (to merge, hash and write) was most of an incremental run's CPU. None when the
    rows cannot stay in one Arrow schema (packs or changes with a decimal in different forms, no
    stored columns): :func:`_apply_changes`' Polars path then unifies them. ``old``: the batch's
    stored rows, checked (:class:`_Loaded`). The last item says where each new row came from
    (:func:`_splice_index`), for :func:`_ropes`."""
    ch = None
    if changed.height:
        ch = changed.select(old.column_names).to_arrow(compat_level=pl.CompatLevel.oldest())
        if ch.schema.types != old.schema.types:
            return None
        ch = ch.cast(old.schema)
    keys = pl.Series(old.column("__key"))
    drop = _found(keys, removed)
    ins = keys.search_sorted(changed["__key"], side="left").to_numpy().astype(np.int64) if ch is not None else \
        np.zeros(0, dtype=np.int64)
    new = _splice(old, drop, ch, ins)
    src = _splice_index(old.num_rows, drop, ins)
    new_keys = pl.Series(new.column("__key"))
    if not len(affected):
        return new, new_keys, pl.from_arrow(old.slice(0, 0)), pl.from_arrow(new.slice(0, 0)), src  # type: ignore[return-value]
    before = pl.from_arrow(old.take(pa.array(_found(keys, affected))))
    after = pl.from_arrow(new.take(pa.array(_found(new_keys, affected))))
    return new, new_keys, before, after, src  # type: ignore[return-value]


def _splice_index(n_old: int, drop: np.ndarray, ins: np.ndarray) -> np.ndarray:
    """Where each row of :func:`_splice`'s result comes from: ``i >= 0`` the stored row ``i``,
    ``-1 - j`` the changed row ``j`` (the same order: a changed row before the stored row at its
    place, which it replaces when that row is dropped)."""
    kept = np.delete(np.arange(n_old, dtype=np.int64), drop)
    at = ins - np.searchsorted(drop, ins, side="left")  # in the kept rows: past the drops before it
    return np.insert(kept, at, -1 - np.arange(len(ins), dtype=np.int64))


#: a touched segment whose rows would lie in more runs than this is written whole instead (a gather
#: joins one slice per run; a segment touched run after run would otherwise fragment without end)
MAX_PARTS = 8


def _ropes(stored_parts: list[tuple[str, int, int]], src: np.ndarray, at: np.ndarray
           ) -> tuple[np.ndarray, list[list[tuple[str | None, int, int]]]]:
    """The parts of each new segment (rows ``at[j]:at[j+1]`` of a rewritten batch): runs of rows that
    lie one after the other where they already are (``stored_parts``: the batch's stored rows, part
    by part, as ``src`` counts them), and runs of the rows to be written (file None: offsets in the
    rows written, in their order). Written: every changed row, and every row of a segment that would
    have more than MAX_PARTS parts. Returns the written rows (positions in the new batch, ascending)
    and each segment's parts; an empty segment has one part of no rows."""
    names = sorted({p[0] for p in stored_parts})
    code_of = {f: i for i, f in enumerate(names)}
    p_code = np.fromiter((code_of[p[0]] for p in stored_parts), dtype=np.int64, count=len(stored_parts))
    p_off = np.fromiter((int(p[1]) for p in stored_parts), dtype=np.int64, count=len(stored_parts))
    p_n = np.fromiter((int(p[2]) for p in stored_parts), dtype=np.int64, count=len(stored_parts))
    row_code, row_pos = np.repeat(p_code, p_n), _ranges(p_off, p_off + p_n)
    n = len(src)
    seg = np.searchsorted(at, np.arange(n, dtype=np.int64), side="right") - 1  # each new row's segment
    old = src >= 0
    safe = np.where(old, src, 0)

    def runs(written: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        code = np.where(written, -1, row_code[safe] if len(row_code) else -1)
        pos = np.where(written, np.cumsum(written) - 1, row_pos[safe] if len(row_pos) else 0)
        first = np.ones(n, dtype=bool)
        first[1:] = (seg[1:] != seg[:-1]) | (code[1:] != code[:-1]) | (pos[1:] != pos[:-1] + 1)
        return code, pos, np.flatnonzero(first)

    written = ~old
    code, pos, starts = runs(written)
    per_seg = np.bincount(seg[starts], minlength=len(at) - 1)
    whole = per_seg > MAX_PARTS
    if whole.any():
        written = written | whole[seg]
        code, pos, starts = runs(written)
    lengths = np.diff(np.append(starts, n))
    out: list[list[tuple[str | None, int, int]]] = [[] for _ in range(len(at) - 1)]
    for j, c, o, m in zip(seg[starts].tolist(), code[starts].tolist(), pos[starts].tolist(), lengths.tolist(),
                          strict=True):
        out[j].append((None if c < 0 else names[c], o, m))
    for parts in out:
        if not parts:
            parts.append((None, 0, 0))
    return np.flatnonzero(written), out


def _splice(old: pa.Table, drop: np.ndarray, changed: pa.Table | None, ins: np.ndarray) -> pa.Table:
    """``old`` less its rows at the positions ``drop``, with the rows of ``changed`` inserted before
    the positions ``ins`` (both ascending; a changed row goes before the stored row it replaces):
    slices joined by one copy."""
    pieces: list[pa.Table] = []
    cur = i = 0
    dropped = set(drop.tolist())
    for p in np.union1d(drop, ins).tolist():
        if p > cur:
            pieces.append(old.slice(cur, p - cur))
            cur = p
        j = int(np.searchsorted(ins, p, side="right"))
        if j > i:
            assert changed is not None
            pieces.append(changed.slice(i, j - i))
            i = j
        if p in dropped:
            cur = p + 1
    if cur < old.num_rows:
        pieces.append(old.slice(cur))
    return pa.concat_tables(pieces).combine_chunks() if pieces else old.slice(0, 0)


def _found(col: pl.Series, keys: pl.Series) -> np.ndarray:
    """The positions in ``col`` (sorted, unique) of those of ``keys`` it holds (ascending when
    ``keys`` are)."""
    if not len(keys) or not len(col):
        return np.zeros(0, dtype=np.int64)
    pos = col.search_sorted(keys, side="left").to_numpy().astype(np.int64)
    inside = pos < len(col)
    pos, keys = pos[inside], keys.filter(pl.Series(inside))
    hit = (col.gather(pos) == keys).to_numpy()
    return pos[hit]


def _finish(state: StateDirectory, store: _Packs, index: dict[str, Any], sides: tuple[_Side, _Side],
            got: list[SideChanges],
            plans: list[dict[str, Any]], T: list[int], n_seg: int, new_bounds: list[str],
            pieces: dict[int, list[int]], entries: dict[str, list[dict[str, Any]]],
            written: dict[str, list[dict[str, Any]]], after_counts: dict[str, np.ndarray],
            digests_after: dict[str, list[bytes]], before: DiffResult | None, after: DiffResult | None,
            affected: pl.Series | None, seg_of: Callable[[pl.Series], np.ndarray], deletions: dict[str, Any],
            n_split: int, gen: int
            ) -> tuple[DiffResult, dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The run's result and the state's new index from the touched segments' new files, digests and
    shares (``before``/``after``): untouched entries kept, totals moved by the shares, committed."""
    seg_entries: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
    piece_pos = 0
    for i in range(n_seg):
        if i in pieces:
            for _k in pieces[i]:
                for s in SIDES:
                    seg_entries[s].append({**written[s][piece_pos], "rows": int(after_counts[s][piece_pos]),
                                           "digest": digests_after[s][piece_pos].hex()})
                piece_pos += 1
        else:
            for s in SIDES:
                seg_entries[s].append(entries[s][i])
    compacted = _compact(state, store, seg_entries, gen, {s.name: s.fields for s in sides})
    # totals: previous − the touched segments' old share + their new share
    totals = index["totals"]
    counts = {k: int(totals[k]) for k in _COUNTS}
    columns = {n: ColumnStats(int(v[0]), *(None if x is None else Decimal(x) for x in v[1:]))
               for n, v in totals["columns"].items()}
    if before is not None and after is not None:
        for k in _COUNTS:
            counts[k] += int(getattr(after, k)) - int(getattr(before, k))
        for n in columns:
            a, b = after.columns[n], before.columns[n]
            c0 = columns[n]
            columns[n] = ColumnStats(c0.mismatched + a.mismatched - b.mismatched,
                                     _add(_add(c0.abs_variance, a.abs_variance), b.abs_variance, -1),
                                     _add(_add(c0.net_variance, a.net_variance), b.net_variance, -1),
                                     _add(_add(c0.source_abs_total, a.source_abs_total), b.source_abs_total, -1))
    # differences: the untouched segments' kept, the touched ones' replaced
    prev_diffs = store.previous_differences  # read and checked while the servers answered (_incremental)
    assert prev_diffs is not None
    if T and prev_diffs.height and affected is not None:
        prev_diffs = prev_diffs.filter(~pl.col("key").is_in(affected.implode()))
    elif T and prev_diffs.height:
        ids = seg_of(prev_diffs["key"])
        prev_diffs = prev_diffs.filter(pl.Series(~np.isin(ids, np.asarray(T, dtype=np.int64))))
    diffs = prev_diffs if after is None else pl.concat([prev_diffs, after.differences]).sort("key", maintain_order=True)
    # the whole result, on the (possibly split) boundaries
    sd = [bytes.fromhex(e["digest"]) for e in seg_entries["source"]]
    td = [bytes.fromhex(e["digest"]) for e in seg_entries["target"]]
    sr = [int(e["rows"]) for e in seg_entries["source"]]
    tr = [int(e["rows"]) for e in seg_entries["target"]]
    s_tree, t_tree, divergent = merkle.trees_and_divergence(sd, sr, td, tr)
    result = DiffResult(**counts, columns=columns, segmentation=merkle.Segmentation(tuple(new_bounds)),
                        source_tree=s_tree, target_tree=t_tree, divergent=divergent,
                        differences_plan=diffs.lazy(), _differences=diffs)
    marks = {s.name: g.watermark for s, g in zip(sides, got, strict=True)}
    new_index = dict(index)
    new_index.update({
        "boundaries": new_bounds, "generation": gen, "runs": int(index.get("runs", 0)) + 1,
        "runs_since_full": int(index.get("runs_since_full", 0)) + 1, "written_at": datetime.now(UTC).isoformat(),
        "sides": {s.name: {"segments": _segments_json(seg_entries[s.name]), "watermark": marks[s.name],
                           "keys_as_stored": bool(p.get("keys_as_stored"))} for s, p in zip(sides, plans, strict=True)},
        "totals": _totals_json(result), "differences": _write_differences(state, gen, diffs),
    })
    _commit(state, new_index)
    fmeta = {s.name: {**g.meta, "rows": int(result.source_rows if s.name == "source" else result.target_rows)}
             for s, g in zip(sides, got, strict=True)}
    fmeta["nulls"] = {}
    inc = {"segments": len(new_bounds) + 1, "touched_segments": len(T), "split_segments": n_split,
           "sides": {s.name: {"mode": p["mode"], "reason": p["reason"], "rows_reread": p["rows_reread"],
                              "deleted_listed": p.get("deleted_listed", 0),
                              **({"deletions": deletions[s.name]} if s.name in deletions else {})}
                     for s, g, p in zip(sides, got, plans, strict=True)}}
    if compacted:
        inc["compacted"] = compacted
    return result, new_index, marks, fmeta, inc


#: a pack in which the rows the index still names fall below this share of its rows is compacted
COMPACT_BELOW = 0.25


def _compact(state: StateDirectory, store: _Packs, seg_entries: dict[str, list[dict[str, Any]]], gen: int,
             fields: dict[str, tuple[FieldSpec, ...]]) -> dict[str, dict[str, int]]:
    """Copy the rows still in use out of packs that are mostly unused into this run's own packs,
    so that the run's commit removes those packs (``seg_entries`` is updated in place).

    Why: a run writes its touched segments to new packs, and an older pack stays as long as one of
    its segments is untouched. With random changes a pack rarely empties. With 0.1% of the rows
    changed every hour (about one segment in six touched per run), the state of a 10M-row pair grew
    to 4.9× its rows on disk by the 24th run and 7.6× after 40 (a simulation of the index, in
    bench/RESULTS.md). Below a quarter in use, a pack's rows are moved: the state stays at about
    1.7-2.2× its rows, for about 30% more rows copied than the runs touch. Moved rows are checked
    against their digests before they are copied, so a pack changed after it was written is
    refused under its own name (exit 4) instead of being copied and removed; their digests stay
    as they are. A segment without rows has no rows to move: it points at the start of a pack
    the state keeps (which no rule ever compacts away from under it)."""
    out: dict[str, dict[str, int]] = {}
    own = f"{gen:06d}-"
    for side in SIDES:
        ents = seg_entries[side]
        # a segment with a part in a sparse pack is moved whole (its parts become one), which can
        # leave another pack sparse: repeated until no pack is (moved rows go to the run's own packs)
        sparse: set[str] = set()
        while True:
            moved = [k for k, e in enumerate(ents) if any(p[0] in sparse for p in e["parts"])]
            gone = set(moved)
            used: dict[str, int] = {}
            for k, e in enumerate(ents):
                if k not in gone:
                    for f, _o, n in e["parts"]:
                        used[f] = used.get(f, 0) + int(n)
            more = {f for f, n in used.items() if f not in sparse and not Path(f).name.startswith(own)
                    and n < COMPACT_BELOW * int(store.table(f)[1][-1])}
            if not more:
                break
            sparse |= more
        if not sparse:
            continue
        ks = [k for k in moved if int(ents[k]["rows"])]
        number = state.free_segment_number(side, gen)
        kept = next((f for f in used if f not in sparse), None)
        for a, b in _chunks([int(ents[k]["rows"]) for k in ks]):
            part = [ents[k] for k in ks[a:b]]
            table: pa.Table | pl.DataFrame | None = store.load_arrow(part, fields[side])
            if table is None:  # packs whose schemas differ (load unifies them)
                table = store.load(part, fields[side])
            kept = _write_pack(state, side, gen, number, table)
            number += 1
            at = 0
            for k, e in zip(ks[a:b], part, strict=True):
                ents[k] = {**e, "parts": ((kept, at, int(e["rows"])),)}
                at += int(e["rows"])
        empty = [k for k in moved if not int(ents[k]["rows"])]
        if empty and kept is None:  # no rows left on the side: one empty pack in the stored schema
            kept = _write_pack(state, side, gen, number, store.schema(ents[empty[0]]["parts"][0][0]).empty_table())
        for k in empty:
            ents[k] = {**ents[k], "parts": ((kept, 0, 0),)}
        out[side] = {"packs": len(sparse), "segments": len(moved), "rows": sum(int(ents[k]["rows"]) for k in ks)}
    return out


def _affected_keys(plans: list[dict[str, Any]]) -> pl.Series | None:
    """Every key changed or deleted on either side, or None when a side was read whole."""
    if any(p["mode"] == "whole" for p in plans):
        return None
    parts = [k for p in plans for k in (p["changed"].frame["__key"], p["deleted"]) if len(k)]
    return pl.concat(parts).unique() if parts else pl.Series("__key", [], dtype=pl.Utf8)


def _hash_sides(frames: list[pl.DataFrame], fields: tuple[FieldSpec, ...], boundaries: list[str]
                ) -> tuple[tuple[merkle.SideTree, np.ndarray], ...]:
    """Both sides' trees on ``boundaries``, as :func:`compare` hashes them (a decimal wide on one side is
    wide on both; the source's fields for both)."""
    s, t = frames
    for f in fields:
        if f.ctype.kind == "decimal" and is_scaled(s[f.name]) != is_scaled(t[f.name]):
            s = s.with_columns(to_decimal(s[f.name], f.ctype.scale or 0))
            t = t.with_columns(to_decimal(t[f.name], f.ctype.scale or 0))
    seg = merkle.Segmentation(tuple(boundaries))
    with ThreadPoolExecutor(2) as pool:
        return tuple(pool.map(lambda fr: merkle.side_tree(fr, fields, seg), (s, t)))


def _touched_bounds(T: list[int], bounds: list[str], new_bounds: list[str]) -> list[str]:
    """The boundaries of ``new_bounds`` that start a piece of a touched segment after the first
    touched one: the boundaries the touched segments are compared on. A boundary of the old list
    starts segment ``i + 1``; a split point (new) lies inside the segment ``bisect_right`` finds.
    One dictionary lookup or binary search per boundary: a list search per boundary was quadratic
    in the segments (minutes at 10M rows, 78k segments)."""
    import bisect

    if not T:
        return []
    touched, first = set(T), T[0]
    at = {b: k for k, b in enumerate(bounds)}
    out = []
    for b in new_bounds:
        k = at.get(b)
        if k is not None:
            if k + 1 in touched and k + 1 != first:
                out.append(b)
        elif bisect.bisect_right(bounds, b) in touched:
            out.append(b)
    return out


def _pieces(T: list[int], bounds: list[str], new_bounds: list[str]) -> dict[int, list[int]]:
    """Each touched segment's positions in the new segment list (one, or more when it was split),
    in order: the split points are placed by one binary search each, not one per touched segment
    and split point (which was a second of a 10M-row run with 78 segments split)."""
    import bisect
    from collections import Counter

    inside = Counter(bisect.bisect_right(bounds, b) for b in set(new_bounds) - set(bounds))
    out: dict[int, list[int]] = {}
    pos = 0
    for i in T:
        n = inside.get(i, 0) + 1
        out[i] = list(range(pos, pos + n))
        pos += n
    return out


def _counts_in(keys: pl.Series, boundaries: list[str], n: int) -> np.ndarray:
    if n == 0 and len(keys) == 0:  # no segment touched (nothing changed since the last run)
        return np.zeros(0, dtype=np.int64)
    counts = merkle.segment_counts(keys, merkle.Segmentation(tuple(boundaries)))
    if len(counts) != n:
        raise RuntimeError("segment count mismatch")
    return counts


def _concat(frames: list[pl.DataFrame], fields: tuple[FieldSpec, ...]) -> pl.DataFrame:
    """One frame from several; a decimal column that is scaled in one and wide in another is wide in all."""
    frames = _unify(frames, fields)
    return pl.concat(frames, how="vertical") if frames else pl.DataFrame()


def _unify(frames: list[pl.DataFrame], fields: tuple[FieldSpec, ...]) -> list[pl.DataFrame]:
    frames = [f for f in frames if f.width]
    if len(frames) > 1 and any(f.height for f in frames):  # an empty part's dtypes say nothing
        frames = [f for f in frames if f.height]
    for f in fields:
        if f.ctype.kind == "decimal" and not f.is_key:
            forms = {is_scaled(fr[f.name]) for fr in frames if fr.height}
            if len(forms) > 1:
                frames = [fr.with_columns(to_decimal(fr[f.name], f.ctype.scale or 0)) for fr in frames]
    return frames


def _merge(kept: pl.DataFrame, changed: pl.DataFrame, fields: tuple[FieldSpec, ...]) -> pl.DataFrame:
    """The kept rows (sorted by key, none of the changed keys) and the changed rows, in key order: one
    linear merge instead of a sort of the whole (the changes are a few rows among millions)."""
    parts = _unify([kept, changed], fields)
    if len(parts) == 2 and parts[0].schema == parts[1].schema:
        return parts[0].merge_sorted(_sort(parts[1]), key="__key")
    return _sort(_concat(parts, fields))


def _sort(frame: pl.DataFrame) -> pl.DataFrame:
    return frame if frame["__key"].is_sorted() else frame.sort("__key")


def _empty_like(p: dict[str, Any], side: _Side) -> pl.DataFrame:
    c = p.get("whole") or p.get("changed")
    return c.frame.clear()


def _find_deleted(side: _Side, bounds: list[str], held_of: Callable[[list[int]], pl.Series],
                  expected: np.ndarray | None = None, *, expect: int | None = None,
                  first: list[int] | None = None, ranges_ok: bool = False) -> tuple[pl.Series, dict[str, Any]]:
    """The keys the state holds (after this run's listed changes) that the side no longer does,
    and how they were found (``by``, and the ranges counted and segments compared).

    Where the side can count rows per key range through an index (:func:`_narrow`), that comes
    first. Otherwise one key-only read of the side, in key order (PostgreSQL sorts through its index when one
    serves the key; keys that come unsorted are sorted here). The side's rows per segment are then
    one binary search per boundary, and only the segments whose count differs from ``expected``
    (rows per segment the state predicts) are compared key by key with ``held_of(segments)``
    (the state's keys there): about one segment per deleted row, not millions of keys. A key
    deleted and another inserted in one segment keep its count but are both listed changes, so
    they are in ``expected`` already. When the compared segments yield other than the ``expect``
    rows the counts imply (a row written behind the watermark, say), every segment is compared.

    Exact under what an incremental run trusts (every insert after the watermark is listed): a
    deletion and an unlisted insert in one range of NARROW_STEPS[0] segments keep its count, and
    :func:`_narrow` misses that deletion when other ranges happen to account for every row the
    total says went. The
    unlisted insert is then missing from the state as well, which the periodic full check reports
    (``state_drift``) and repairs.
    """
    if expected is not None and expect is not None and ranges_ok:
        opener = getattr(side.src, "key_ranges", None)
        if opener is not None:
            info: dict[str, Any] = {}
            with opener(_request(side, keys_only=True, ordered=True)) as ranges:
                gone = _narrow(side, ranges, bounds, held_of, expected, info, first) if ranges is not None else None
            if gone is not None and len(gone) == expect:
                return gone, {"by": "range counts", **info}
    e = side.src.read(_request(side, keys_only=True, ordered=True))
    now = _canon_keys(side, e.frame)
    e.frame = e.frame.clear()
    if not now.is_sorted():
        now = now.sort()
    if expected is not None and expect is not None:
        counts = merkle.segment_counts(now, merkle.Segmentation(tuple(bounds)))
        moved = counts != expected
        gone = _anti(held_of(np.flatnonzero(moved).tolist()), now.filter(pl.Series(np.repeat(moved, counts))))
        if len(gone) == expect:
            return gone, {"by": "key read", "segments_compared": int(moved.sum())}
    return _anti(held_of(list(range(len(bounds) + 1))), now), {"by": "key read, every segment",
                                                               "segments_compared": len(bounds) + 1}


#: segments per key range at each step of :func:`_narrow` (the last step: one segment)
NARROW_STEPS = (8, 1)


def _narrow(side: _Side, ranges: Any, bounds: list[str], held_of: Callable[[list[int]], pl.Series],
            expected: np.ndarray, info: dict[str, Any], first: list[int] | None = None) -> pl.Series | None:
    """The deleted keys found by counting rows per key range in the side's server: ranges of
    NARROW_STEPS[0] segments first, then only the ranges whose count moved, cut finer, down to
    single segments, whose stored keys are then compared with the state's. None when the key
    column holds a NULL (a row in no range). Two steps: each count costs about 20 µs of index
    descent besides 15-30 ns a row, so ranges of 8 segments cover the table once cheaply and the
    moved ones (about one per deleted row) are then cut into single segments."""
    n = len(bounds) + 1
    cum = np.concatenate([[0], np.cumsum(expected)]).astype(np.int64)
    if ranges.null_keys or not ranges.exact_for([_key_range(bounds, 0, n)] + [(b, None) for b in bounds]):
        return None
    spans = _spans(0, n, NARROW_STEPS[0])
    info["ranges_counted"] = 0
    while True:
        if first is not None and len(first) == len(spans):  # counted with the changes already
            got, first = np.asarray(first, dtype=np.int64), None
            info["first_step"] = "in the changes' snapshot"
        else:
            got = np.asarray(ranges.counts([_key_range(bounds, a, b) for a, b in spans]), dtype=np.int64)
        info["ranges_counted"] += len(spans)
        want = np.asarray([cum[b] - cum[a] for a, b in spans], dtype=np.int64)
        spans = [sp for sp, g, w in zip(spans, got.tolist(), want.tolist(), strict=True) if g != w]
        if not spans or spans[0][1] - spans[0][0] == 1:
            break
        step = next(s for s in NARROW_STEPS if s < spans[0][1] - spans[0][0])
        spans = [sp for a0, b in spans for sp in _spans(a0, b, step)]
    segs = [a for a, _ in spans]
    info["segments_compared"] = len(segs)
    (key,) = [f.column for f in side.fields if f.is_key]
    now = _canon_keys(side, pl.DataFrame({key: ranges.keys([_key_range(bounds, a, a + 1) for a in segs])},
                                         schema={key: pl.Utf8}))
    gone = _anti(held_of(segs), now)
    # each key found gone is looked up by the index in this snapshot: the first step's counts came
    # from the changes' snapshot, and a row written in between could have moved a count
    still = ranges.present(gone.to_list())
    return gone.filter(~gone.is_in(list(still))) if still else gone


def _spans(a: int, b: int, step: int) -> list[tuple[int, int]]:
    """Segments ``a:b`` in runs of ``step``."""
    return [(i, min(i + step, b)) for i in range(a, b, step)]


def _key_range(bounds: list[str], a: int, b: int) -> tuple[str | None, str | None]:
    """The canonical key range of segments ``a:b`` (None: open)."""
    return (bounds[a - 1] if a > 0 else None, bounds[b - 1] if b < len(bounds) + 1 else None)


def _keys_as_stored(side: _Side, frame: pl.DataFrame) -> bool:
    """Whether every key of ``frame`` (as the side stores it) is its own canonical text: what lets
    the server's byte order of stored keys stand for the canonical order (a text key stored
    decomposed, not in NFC, sorts elsewhere than its canonical form). Checked on every row a full
    run reads and on every changed row after it, so the state knows without a scan of the table."""
    keys = [f for f in side.fields if f.is_key]
    if len(keys) != 1 or keys[0].ctype.kind != "text" or keys[0].column not in frame.columns:
        return False
    raw = frame[keys[0].column].cast(pl.Utf8)
    try:
        canon = typed(raw, keys[0].ctype, side.src.side)
    except (ValueError, pl.exceptions.PolarsError):
        return False
    return bool(raw.eq_missing(canon).all())


def _anti(held: pl.Series, now: pl.Series) -> pl.Series:
    """The keys of ``held`` that ``now`` lacks."""
    return held.to_frame("__key").join(now.to_frame("__key"), on="__key", how="anti")["__key"]


def _with_deleted(plans: list[dict[str, Any]], sides: tuple[_Side, _Side], side: _Side, gone: pl.Series,
                  found: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for s, p in zip(sides, plans, strict=True):
        if s is side:
            p = dict(p)
            p["deleted"] = pl.concat([p["deleted"], gone]) if len(p["deleted"]) else gone
            p["rows_now"] = None  # the keys were read: the count is accounted for
            p["deletions"] = found
        out.append(p)
    return out


__all__ = ["DEFAULT_FULL_EVERY", "DEFAULT_STATE_SEGMENT_ROWS", "StateOptions", "run_state"]
