"""`recon diff` end to end: references → extraction (both sides concurrently) → types → canonical
form → Merkle localisation → record diff → outputs. The algorithm lives in `normalize`, `merkle`
and `diff`; this module only wires sources to it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from engine import workspace
from engine.app.incremental import StateOptions
from engine.app.scale import ScaleOptions, decide
from engine.config import Config, Mapping
from engine.connectors.base import (
    Extract,
    FileRef,
    ReadRequest,
    Source,
    SourceColumn,
    parse_reference,
    take_frame,
)
from engine.connectors.registry import source_for
from engine.core import merkle
from engine.core.diff import DiffResult, compare
from engine.core.errors import UsageError
from engine.core.normalize import (
    KINDS,
    Canonical,
    ColumnType,
    FieldSpec,
    SideOptions,
    canonicalize,
)


@dataclass(frozen=True)
class DiffRequest:
    """One `recon diff` run.

    keys / columns: (source column, target column) pairs; columns empty = every column both sides share.
    tolerance: absolute tolerance by source column name.
    unique_key: fail (exit 2) when a key is duplicated on either side.
    segment_rows: target rows per Merkle segment.
    """

    source: str
    target: str
    keys: tuple[tuple[str, str], ...]
    columns: tuple[tuple[str, str], ...] = ()
    tolerance: dict[str, Decimal] = field(default_factory=dict)
    source_where: str | None = None
    target_where: str | None = None
    as_of: datetime | None = None
    target_updated_at: str | None = None
    source_updated_at: str | None = None
    unique_key: bool = False
    segment_rows: int = merkle.DEFAULT_SEGMENT_ROWS
    types: dict[str, str] = field(default_factory=dict)
    mapping: str | None = None

    @classmethod
    def from_mapping(cls, m: Mapping, **overrides: Any) -> DiffRequest:
        base = dict(source=m.source, target=m.target, keys=m.key, columns=m.columns, tolerance=m.tolerance,
                    source_where=m.source_where, target_where=m.target_where,
                    target_updated_at=m.target_updated_at, source_updated_at=m.source_updated_at,
                    types=m.types, mapping=m.name)
        base.update({k: v for k, v in overrides.items() if v not in (None, (), {})})
        return cls(**base)

    def identity(self) -> dict[str, Any]:
        """What this diff compared, canonically and without secrets: every setting that changes its
        counts (sides, key, columns, tolerances, types, conditions, ``as_of``). Recorded in the
        summary as ``request``, so the gate can tell a diff of the mapping from one narrowed by a
        condition, loosened by a tolerance or run on other tables."""
        def pairs(ps: tuple[tuple[str, str], ...]) -> list[list[str]]:
            return [[a, b] for a, b in ps]

        return {
            "source": _safe_ref(self.source), "target": _safe_ref(self.target),
            "key": pairs(self.keys), "columns": pairs(self.columns),
            "tolerance": {k: format(Decimal(v).normalize(), "f") for k, v in sorted(self.tolerance.items())},
            "types": dict(sorted(self.types.items())),
            "source_where": self.source_where, "target_where": self.target_where,
            "target_updated_at": self.target_updated_at,
            "as_of": self.as_of.isoformat() if self.as_of else None,
        }


@dataclass
class DiffRun:
    request: DiffRequest
    result: DiffResult
    source_meta: dict[str, Any]
    target_meta: dict[str, Any]
    fields: tuple[FieldSpec, ...]
    #: each side's canonical frame (one pass); None when the run went by key ranges, whose parts
    #: were never in memory at once (``profiles`` and ``snapshot_parts`` stand in for them)
    source_canonical: Canonical | None
    target_canonical: Canonical | None
    #: side → (rows, NULLs per field name), for lineage
    profiles: dict[str, tuple[int, dict[str, int]]] = field(default_factory=dict)
    #: side → the directory of its canonical snapshot parts (key-range runs asked for snapshots)
    snapshot_parts: dict[str, Path] = field(default_factory=dict)
    #: the key-range plan, executor, workers, per-range digests and retries (key-range runs)
    plan: dict[str, Any] | None = None
    #: an incremental run's facts (``--state``): mode, why, watermarks, the state's digests
    incremental: dict[str, Any] | None = None
    #: ``ok``, or ``state_drift`` when a full check found the incremental state wrong (a run
    #: status, not a finding: the results are the full read's)
    status: str = "ok"

    def profile(self, side: str) -> tuple[int, dict[str, int]]:
        """(rows, NULLs per field) of one side's canonical form."""
        canon = self.source_canonical if side == "source" else self.target_canonical
        if canon is not None:
            return canon.frame.height, {f.name: int(canon.frame[f.name].null_count()) for f in self.fields
                                        if f.name in canon.frame.columns}
        return self.profiles[side]

    def summary(self) -> dict[str, Any]:
        s = self.result.summary()
        if self.incremental is not None:
            s["incremental"] = dict(self.incremental)
            s["status"] = self.status
        if self.plan is not None:
            s["plan"] = dict(self.plan)
            s["retries"] = self.plan.get("retries", 0)
        s["source"].update({"ref": _safe_ref(self.request.source), "extract": self.source_meta})
        s["target"].update({"ref": _safe_ref(self.request.target), "extract": self.target_meta})
        s["mapping"] = self.request.mapping
        s["request"] = self.request.identity()
        s["key"] = [f"{a}={b}" for a, b in self.request.keys]
        s["compared_columns"] = {f.name: f.ctype.describe() for f in self.fields if not f.is_key}
        if self.request.as_of:
            s["as_of"] = self.request.as_of.isoformat()
        return s


def _safe_ref(text: str) -> str:
    try:
        return str(parse_reference(text))
    except UsageError:
        return "<malformed>"


# -- reading a side: through its connector -------------------------------------------------------
def _coarsest_precision(*sources: Source) -> str:
    """The timestamp precision both sides can hold: a millisecond side (Salesforce) rounds both."""
    return "ms" if any(s.timestamp_precision == "ms" for s in sources) else "us"


# -- type resolution ---------------------------------------------------------------------------
_RANK = {"text": 0, "bool": 1, "date": 2, "int": 3, "float": 4, "decimal": 5, "timestamp": 6, "id": 7}


def resolve_type(a: SourceColumn, b: SourceColumn, *, precision: str, override: str | None) -> ColumnType:
    """The type both sides are compared as: the more specific declared kind wins (text is parsed).
    ``precision``: the timestamp precision both sides can hold (see :func:`_coarsest_precision`)."""
    if override:
        kind, _, arg = override.partition(":")
        if kind not in KINDS:
            raise UsageError(f"unknown type {override!r} for column {a.name}: use one of {', '.join(KINDS)}")
        scale = int(arg) if kind == "decimal" and arg else (a.scale or b.scale or 2 if kind == "decimal" else None)
        return ColumnType(kind, scale, precision)  # type: ignore[arg-type]
    kinds = {a.kind, b.kind}
    if kinds <= {"id", "text"} and "id" in kinds:
        return ColumnType("id")
    if "decimal" in kinds or kinds == {"int", "float"} or ("float" in kinds and "decimal" in kinds):
        scales = [s for s in (a.scale, b.scale) if s is not None]
        if "decimal" in kinds:
            return ColumnType("decimal", max(scales) if scales else 6)
        return ColumnType("float")
    kind = max(kinds, key=lambda k: _RANK.get(k, 0))
    if kind == "id":
        kind = "text"
    return ColumnType(kind, None, precision)  # type: ignore[arg-type]


def run_diff(req: DiffRequest, config: Config, progress: Any = None, *, scale: ScaleOptions | None = None,
             on_progress: Callable[[dict[str, Any]], None] | None = None, work_dir: Path | None = None,
             snapshots: bool = False, state: StateOptions | None = None) -> DiffRun:
    """Run one diff. The cyclic garbage collector is paused meanwhile: the data lives in Arrow and
    Polars buffers, the few Python objects made form no cycles, and each collection would walk
    every object the imports left behind (perf: ~1% of a diff's CPU)."""
    import gc

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _run_diff(req, config, progress, scale=scale or ScaleOptions(), on_progress=on_progress,
                         work_dir=work_dir, snapshots=snapshots, state=state)
    finally:
        if was_enabled:
            gc.enable()


def _run_diff(req: DiffRequest, config: Config, progress: Any = None, *, scale: ScaleOptions,
              on_progress: Callable[[dict[str, Any]], None] | None, work_dir: Path | None,
              snapshots: bool, state: StateOptions | None = None) -> DiffRun:
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    sref, tref = parse_reference(req.source), parse_reference(req.target)
    if not req.keys:
        raise UsageError("no key: pass -k/--key SRC[=TGT] (repeatable for compound keys) or use a mapping")
    ssrc, tsrc = source_for(sref, config), source_for(tref, config)
    say("reading schemas")
    with ThreadPoolExecutor(2) as ex:
        fs, ft = ex.submit(ssrc.describe), ex.submit(tsrc.describe)
        s_cols, t_cols = fs.result(), ft.result()
    pairs = list(req.columns)
    if not pairs:
        t_lower = {n.lower(): n for n in t_cols}
        keyset = {k.lower() for k, _ in req.keys}
        pairs = [(n, t_lower[n.lower()]) for n in s_cols if n.lower() in t_lower and n.lower() not in keyset]
    s_find = _finder(s_cols, str(sref), "key/column", ssrc)
    t_find = _finder(t_cols, str(tref), "key/column", tsrc)
    key_pairs = [(s_find(a), t_find(b)) for a, b in req.keys]
    col_pairs = [(s_find(a), t_find(b)) for a, b in pairs]
    precision = _coarsest_precision(ssrc, tsrc)
    fields_s, fields_t = [], []
    tol_lower = {k.lower(): v for k, v in req.tolerance.items()}
    for known in req.tolerance:
        if known.lower() not in {a.lower() for a, _ in col_pairs}:
            raise UsageError(f"--tolerance names {known!r}, which is not a compared column")
    for is_key, (a, b) in [(True, p) for p in key_pairs] + [(False, p) for p in col_pairs]:
        ctype = resolve_type(s_cols[a], t_cols[b], precision=precision, override=req.types.get(a))
        tol = tol_lower.get(a.lower())
        if tol is not None and ctype.kind not in _NUMERIC:
            raise UsageError(_untyped_tolerance(a, ctype, sref, tref))
        fields_s.append(FieldSpec(a, a, ctype, tol, is_key))
        fields_t.append(FieldSpec(b, a, ctype, tol, is_key))
    s_opts, t_opts = ssrc.side, tsrc.side
    if state is not None:  # incremental (engine.app.incremental): one pass over what changed
        from engine.app.incremental import run_state

        return run_state(req, state, say=say, ssrc=ssrc, tsrc=tsrc, fields_s=tuple(fields_s),
                         fields_t=tuple(fields_t), t0=t0, snapshots=snapshots)
    if decide(req.source, req.target, config, scale).ranges:
        return _run_ranges(req, config, say, ssrc, tsrc, tuple(fields_s), tuple(fields_t), scale=scale,
                           on_progress=on_progress, work_dir=work_dir, snapshots=snapshots, t0=t0)

    say("extracting and normalizing both sides")
    key_s, key_t = [a for a, _ in key_pairs], [b for _, b in key_pairs]

    boundaries: list[list[str]] = []
    ready = threading.Event()

    def side(src: Source, fields: list[FieldSpec], opts: SideOptions, where: str | None,
             updated_at: str | None, keys: list[str], chooser: bool) -> tuple[Extract, Canonical, Any]:
        # each side normalizes as soon as its own data is in, overlapping the slower side's read
        ref = src.ref
        e = src.read(ReadRequest([f.column for f in fields], where, as_of=req.as_of, updated_at=updated_at,
                                 key_columns=keys))
        say(f"read {e.frame.height:,} rows from {ref}; normalizing")
        try:  # canonicalize gets the only reference to the raw frame, so it can free it as it goes
            c = canonicalize(take_frame(e), tuple(fields), opts)
        except ValueError as exc:
            raise UsageError(f"cannot normalize {ref}: {exc}") from None
        if chooser:  # boundaries come from the source's keys and apply to both sides
            try:
                boundaries.append(merkle.choose_boundaries(c.frame["__key"], req.segment_rows))
            finally:
                ready.set()
        if not ready.wait(timeout=24 * 3600) or not boundaries:
            raise RuntimeError("source side failed before choosing segment boundaries")
        say(f"hashing {ref} into {len(boundaries[0]) + 1:,} BLAKE3 segments")
        tree = merkle.side_tree(c.frame, c.fields, merkle.Segmentation(tuple(boundaries[0])))
        return e, c, tree

    with ThreadPoolExecutor(2) as ex:
        fs = ex.submit(side, ssrc, fields_s, s_opts, req.source_where, None, key_s, True)
        ft = ex.submit(side, tsrc, fields_t, t_opts, req.target_where, req.target_updated_at, key_t, False)
        try:
            es, cs, s_hashed = fs.result()
        except BaseException:
            ready.set()
            raise
        et, ct, t_hashed = ft.result()
    say("comparing")
    in_flight = _in_flight_keys(es, fields_s, s_opts) | _in_flight_keys(et, fields_t, t_opts)
    result = compare(cs, ct, boundaries=boundaries[0], in_flight_keys=in_flight, hashed=(s_hashed, t_hashed))
    if req.unique_key and (result.duplicate_keys_source or result.duplicate_keys_target):
        raise UsageError(f"the key is not unique: {result.duplicate_keys_source} duplicated key(s) in the source, "
                         f"{result.duplicate_keys_target} in the target (drop --unique-key to count them instead)")
    result.elapsed_s = time.perf_counter() - t0
    return DiffRun(req, result, es.meta, et.meta, tuple(fields_s), cs, ct)


_NUMERIC = ("decimal", "int", "float")


def _run_ranges(req: DiffRequest, config: Config, say: Callable[[str], None], ssrc: Source, tsrc: Source,
                fields_s: tuple[FieldSpec, ...], fields_t: tuple[FieldSpec, ...], *, scale: ScaleOptions,
                on_progress: Callable[[dict[str, Any]], None] | None, work_dir: Path | None, snapshots: bool,
                t0: float) -> DiffRun:
    """The diff as key-range tasks (:mod:`engine.app.ranges`): one snapshot per PostgreSQL side held
    open by this coordinator until every task has finished, the boundaries cut from the source's
    keys, the tasks on the executor, their parts merged."""
    import contextlib
    import tempfile

    from engine.app import ranges
    from engine.core.plan import plan_ranges, range_rows_for
    from engine.executors import make_executor

    workers = scale.resolved_workers()
    executor = make_executor(scale.executor, workers)
    with contextlib.ExitStack() as stack:
        stack.callback(executor.close)
        snaps = []
        for src in (ssrc, tsrc):
            opener = getattr(src, "open_snapshot", None)
            snap = opener() if opener is not None else None
            if snap is not None:
                stack.callback(snap.close)
            snaps.append(snap)
        tok = [s.token if s is not None else None for s in snaps]
        sspec = ranges.SideSpec(req.source, fields_s, req.source_where, None, tok[0])
        tspec = ranges.SideSpec(req.target, fields_t, req.target_where, req.target_updated_at, tok[1])
        sspec, tspec = (ranges.with_pushdown(spec, src) for spec, src in ((sspec, ssrc), (tspec, tsrc)))
        say("cutting segment boundaries from the source's keys")
        boundaries, counts, cut_meta = ranges.cut(sspec, config, req.segment_rows, req.as_of)
        range_rows = scale.range_rows or range_rows_for(scale.resolved_memory(), workers=workers)
        plan = plan_ranges(boundaries, counts.tolist(), range_rows)
        if work_dir is None:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="recon-ranges-")))
        parts_dir = work_dir / "differences"
        snap_dir = work_dir / "snapshots" if snapshots else None
        specs = [ranges.TaskSpec(sspec, tspec, t, config, req.as_of, str(parts_dir),
                                 str(snap_dir) if snap_dir else None) for t in plan.tasks]
        say(f"diffing {len(plan.tasks):,} key range(s) of about {range_rows:,} source rows "
            f"({executor.name}, {executor.workers} at once)")
        prog = ranges.Progress(total=len(specs), rows_total=int(counts.sum()), emit=on_progress or (lambda _p: None))
        prog.start()

        def done(_i: int, r: ranges.TaskResult) -> None:
            for s in snaps:  # a lost snapshot makes every later range read another state: stop
                if s is not None:
                    s.check()
            prog.step(r.counts["source_rows"])

        results = executor.run(ranges.run_task, specs, done)
        for s in snaps:
            if s is not None:
                s.check()
        result = ranges.merge(plan, results)
        if req.unique_key and (result.duplicate_keys_source or result.duplicate_keys_target):
            raise UsageError(f"the key is not unique: {result.duplicate_keys_source} duplicated key(s) in the source, "
                             f"{result.duplicate_keys_target} in the target (drop --unique-key to count them instead)")
        result._differences = result.differences_plan.collect()  # before the parts' directory goes
        result.elapsed_s = time.perf_counter() - t0
        stats = executor.stats
        profiles = {}
        for side in ("source", "target"):
            nulls: dict[str, int] = {}
            for r in results:
                for k, v in r.null_counts[side].items():
                    nulls[k] = nulls.get(k, 0) + v
            profiles[side] = (result.source_rows if side == "source" else result.target_rows, nulls)
        plan_json = {
            "executor": scale.executor, "cut": cut_meta.get("cut", "memory"), "workers": executor.workers, "range_rows": range_rows,
            "ranges": len(plan.tasks), "segments": plan.segments, "retries": stats.retries,
            "ranges_detail": [
                {**t.as_json(), "source_root": merkle.build_tree(r.source_digests, r.source_rows).root_hex,
                 "target_root": merkle.build_tree(r.target_digests, r.target_rows).root_hex,
                 "rows_read": r.rows_read}
                for t, r in zip(plan.tasks, sorted(results, key=lambda x: x.index), strict=True)],
        }
        if stats.retried:
            plan_json["retried"] = stats.retried
        meta = [_merge_meta([r.meta[side] for r in results], rows, sum(r.rows_read[side] for r in results))
                for side, rows in (("source", result.source_rows), ("target", result.target_rows))]
        snap_parts = {}
        if snap_dir is not None:
            from engine.evidence.manifest import concat_snapshot_parts

            keep = Path(tempfile.mkdtemp(prefix="recon-snap-"))  # moved into place by write_snapshots
            snap_parts = {side: concat_snapshot_parts(snap_dir / f"snapshot-{side}", keep / f"{side}.parquet")
                          for side in ("source", "target")}
        return DiffRun(req, result, meta[0], meta[1], fields_s, None, None, profiles=profiles,
                       snapshot_parts=snap_parts, plan=plan_json)


def _merge_meta(metas: list[dict[str, Any]], rows: int, rows_read: int) -> dict[str, Any]:
    """One extraction record for a side read range by range: the first range's facts (system,
    object, snapshot id, ...), the side's rows, and the rows its systems returned over every range
    (more than ``rows`` where a range could not be pushed down: the task filtered them)."""
    out = dict(metas[0]) if metas else {}
    out.update(rows=rows, rows_read=rows_read, ranges=len(metas))
    return out


def _untyped_tolerance(column: str, ctype: ColumnType, *refs: Any) -> str:
    """Why a tolerance cannot apply, and how to type the column: a tolerance on text was ignored
    before (exit 1, no variances), which reads like a real difference nobody can size."""
    from engine.connectors.files import sidecar

    files = [r for r in refs if isinstance(r, FileRef)]
    where = (f"a sidecar {sidecar.path_for(Path(files[0].path))} with {{\"schema\": {{\"{column}\": \"decimal:2\"}}}}"
             if files else f"the mapping's types = {{ {column} = \"decimal:2\" }}")
    return (f"a tolerance on {column!r} (--tolerance or the mapping's tolerance) needs numbers, and {column!r} "
            f"is compared as {ctype.describe()} (neither side declares a number type): declare its type, e.g. {where}")


def _finder(cols: dict[str, SourceColumn], where: str, what: str, src: Any):  # noqa: ANN202
    lower = {n.lower(): n for n in cols}

    def find(name: str) -> str:
        n = name if name in cols else lower.get(name.lower())
        if n is None:
            hint = src.missing_column_hint()  # e.g. a Salesforce field hidden from the integration user
            raise UsageError(f"unknown column {name!r} in {where} (columns: {', '.join(cols)}): "
                             + (f"{hint}; else fix the {what} option" if hint else f"fix the {what} option"))
        return n

    return find


def _in_flight_keys(e: Extract, fields: list[FieldSpec], opts: SideOptions) -> set[str]:
    from engine.app.ranges import in_flight_keys
    from engine.core.plan import KeyRange

    return in_flight_keys(e, tuple(fields), opts, KeyRange())


def read_outputs(diff_dir: Path) -> tuple[dict[str, Any], Path, Path]:
    """The other half of :func:`write_outputs`, for the commands that start from a diff directory
    (explain, gate): its summary, the summary's path and the differences' path, or a one-line error."""
    d = workspace.DiffOutput(Path(diff_dir))
    return d.load_summary(), d.summary_path, d.differences_path


def write_outputs(run: DiffRun, out: Path) -> dict[str, Path]:
    """`summary.json` and `differences.parquet` (key, kind, column, source value, target value)."""
    return workspace.DiffOutput(out).write(run.summary(), run.result.differences)


def snapshot(ref_text: str, out: Path, config: Config, *, keys: list[str], columns: list[str] | None = None,
             where: str | None = None, segment_rows: int = merkle.DEFAULT_SEGMENT_ROWS) -> dict[str, Any]:
    """Extract one side into a Parquet file plus a JSON sidecar (``PATH.json``): schema, row count,
    Merkle root and boundaries of its canonical form, extraction metadata. A later diff can read
    ``parquet:PATH`` instead of the live system (and spend no API calls), and a manifest's root can
    be recomputed from it."""
    ref = parse_reference(ref_text)
    src = source_for(ref, config)
    cols = src.describe()
    find = _finder(cols, str(ref), "-k/-c", src)
    key_cols = [find(k) for k in keys]
    if not key_cols:
        raise UsageError("no key: pass -k/--key (the Merkle segments are key ranges)")
    wanted = [find(c) for c in columns] if columns else list(cols)
    for k in reversed(key_cols):
        if k not in wanted:
            wanted.insert(0, k)
    e = src.read(ReadRequest(wanted, where, key_columns=key_cols))
    precision = _coarsest_precision(src)
    fields = tuple(FieldSpec(c, c, resolve_type(cols[c], cols[c], precision=precision, override=None), None,
                             c in key_cols) for c in wanted)
    try:
        canon = canonicalize(e.frame, fields, src.side)
    except ValueError as exc:
        raise UsageError(f"cannot normalize {ref}: {exc}") from None
    seg = merkle.Segmentation(tuple(merkle.choose_boundaries(canon.frame["__key"], segment_rows)))
    tree, _ = merkle.side_tree(canon.frame, canon.fields, seg)
    out.parent.mkdir(parents=True, exist_ok=True)
    e.frame.write_parquet(out)
    from engine.connectors.files import sidecar
    from engine.core.normalize import ENCODING_VERSION

    side = sidecar.write(
        out, {f.column: f.ctype for f in fields}, native_types={c: cols[c].native_type for c in wanted},
        source=str(ref), rows=e.frame.height, key=key_cols, extract=e.meta,
        merkle={"encoding_version": ENCODING_VERSION, "root": tree.root_hex, "segments": len(tree.digests),
                "boundaries": list(seg.boundaries), "boundaries_digest": seg.digest})
    return {"parquet": str(out), "sidecar": str(side), "rows": e.frame.height, "merkle_root": tree.root_hex}
