"""What an incremental state's index (``state.json``) must hold before a run rests anything on it.

Why a declared schema: the index is the state's root. Every pack is checked against the digests it
lists, but the index itself came from disk, and a field of the wrong type, a negative row count, a
digest that is not hex or boundaries out of order used to surface deep inside a run as a traceback
(``internal error``, exit 70), or, for a negative pack number or a changed total, as a run that went
on with the wrong numbers. Each field is declared here once, with its type and range, and decoded
by msgspec (typed specs in the manner of dlt's configuration: a field is what its annotation says
or the run stops); the rules that tie fields together follow in :func:`check`. A failure is one
line naming the field, exit 4, and the fix (``--full`` rebuilds the state from the sources).

What this cannot catch: an index rewritten consistently (digests recomputed over changed packs,
totals moved together with the differences file). Those numbers have no second copy in the
state; the manifest's ``state_before``/``state_after`` and the ledger's record of each run are
where a changed state shows (README, "What incremental trusts").

>>> check({"version": 2})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
engine.core.errors.VerificationError: the state's index is malformed (Object missing required field `encoding_version`): rebuild the state with --full
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import numpy as np
import polars as pl

from engine.core.errors import VerificationError

#: the run's counts as the index keeps them (totals), in DiffResult's names
COUNTS = ("source_rows", "target_rows", "source_keys", "union_keys", "missing_in_target", "missing_in_source",
          "mismatched", "unchanged", "in_flight", "duplicate_keys_source", "duplicate_keys_target")

FIX = "rebuild the state with --full"

#: a count or position: no larger than a double holds exactly (a JSON number another tool wrote)
_N = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
_HEX64 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
#: a decimal total as ``str(Decimal)`` writes it, with a bounded exponent (an unbounded one overflows
#: the exact context the totals are moved in)
_DEC = Annotated[str, msgspec.Meta(pattern=r"^-?[0-9]{1,80}(\.[0-9]{1,80})?(E[+-]?[0-9]{1,3})?$")]


class Segments(msgspec.Struct, forbid_unknown_fields=True):
    """A side's segments as columns: pack names; per part (a run of rows in one pack) its pack (a
    position in ``files``), offset and rows; per segment how many parts it has, in key order, and its
    digest (64 hex characters each, one string).

    Why parts: an incremental run writes only the rows that changed, and a touched segment becomes
    its untouched rows where they already lie plus the changed rows in the run's own pack (README,
    "The state"). ``parts`` absent: one part per segment (a state written before parts existed)."""

    #: as :meth:`engine.workspace.StateDirectory.segment_path` names them (generation-number)
    files: list[Annotated[str, msgspec.Meta(pattern="^segments/(source|target)/[0-9]{6}-[0-9]{6}\\.arrow$")]]
    file: list[_N]
    offset: list[_N]
    rows: list[_N]
    digests: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]*$")]
    parts: list[Annotated[int, msgspec.Meta(ge=1, le=2**31)]] | None = None


class Side(msgspec.Struct, forbid_unknown_fields=True):
    segments: Segments
    #: the connector's own document (each connector checks what it reads back)
    watermark: dict[str, Any] | None
    keys_as_stored: bool = False


class Sides(msgspec.Struct, forbid_unknown_fields=True):
    source: Side
    target: Side


class Differences(msgspec.Struct, forbid_unknown_fields=True):
    file: Annotated[str, msgspec.Meta(pattern="^differences/[0-9]{6}\\.parquet$")]
    blake3: _HEX64
    rows: _N


class Totals(msgspec.Struct, forbid_unknown_fields=True):
    source_rows: _N
    target_rows: _N
    source_keys: _N
    union_keys: _N
    missing_in_target: _N
    missing_in_source: _N
    mismatched: _N
    unchanged: _N
    in_flight: _N
    duplicate_keys_source: _N
    duplicate_keys_target: _N
    #: per compared column: mismatched, abs_variance, net_variance, source_abs_total
    columns: dict[str, tuple[_N, _DEC | None, _DEC | None, _DEC | None]]


class Index(msgspec.Struct, forbid_unknown_fields=True):
    version: int
    encoding_version: int
    identity: _HEX64
    segment_rows: Annotated[int, msgspec.Meta(ge=1, le=2**31)]
    boundaries: list[str]
    generation: Annotated[int, msgspec.Meta(ge=1, le=999_999)]
    runs: _N
    runs_since_full: _N
    written_at: str
    sides: Sides
    totals: Totals
    differences: Differences


def _bad(what: str) -> VerificationError:
    return VerificationError(f"the state's index is malformed ({what}): {FIX}")


def check(index: dict[str, Any]) -> None:
    """Refuse (exit 4) an index that is not what a run of this version writes: types and ranges
    (:class:`Index`), then the rules between fields: boundaries strictly increasing, one entry per
    segment on each side, pack positions inside the pack list, rows that add up to the totals, and
    counts that agree with each other."""
    try:
        ix = msgspec.convert(index, Index, strict=True)
    except msgspec.ValidationError as exc:
        raise _bad(str(exc)) from None
    n_seg = len(ix.boundaries) + 1
    b = pl.Series(ix.boundaries, dtype=pl.Utf8)
    if len(b) > 1 and not bool((b.slice(1) > b.slice(0, len(b) - 1)).all()):  # str order: code points, bytes
        raise _bad("the segment boundaries are not strictly increasing")
    for name, side in (("source", ix.sides.source), ("target", ix.sides.target)):
        s = side.segments
        n_parts = n_seg if s.parts is None else sum(s.parts)
        if (s.parts is not None and len(s.parts) != n_seg) or len(s.digests) != 64 * n_seg:
            raise _bad(f"the {name} side lists {len(s.digests) // 64} segments for {n_seg} key ranges")
        if not len(s.file) == len(s.offset) == len(s.rows) == n_parts:
            raise _bad(f"the {name} side lists {len(s.rows)} parts, its segments name {n_parts}")
        if n_seg and max(s.file) >= len(s.files):
            raise _bad(f"a {name} segment names pack {max(s.file)} of {len(s.files)}")
        if len(set(s.files)) != len(s.files):
            raise _bad(f"the {name} side names a pack twice")
        if any(not f.startswith(f"segments/{name}/") for f in s.files):
            raise _bad(f"the {name} side names a pack of the other side")
        # a run writes under generation + 1: a pack of a later generation would be overwritten
        # while segments still point into it
        newest = max((int(f.rsplit("/", 1)[1][:6]) for f in s.files), default=0)
        if newest > ix.generation:
            raise _bad(f"a {name} pack is of generation {newest}, the index is at {ix.generation}")
        total = int(np.asarray(s.rows, dtype=np.int64).sum())
        said = ix.totals.source_rows if name == "source" else ix.totals.target_rows
        if total != said:
            raise _bad(f"the {name} segments hold {total:,} rows, its totals say {said:,}")
    t = ix.totals
    if t.unchanged != t.union_keys - t.missing_in_target - t.missing_in_source - t.mismatched - t.in_flight:
        raise _bad("the totals do not add up (unchanged ≠ keys − missing − mismatched − in flight)")
    if t.source_keys > t.union_keys or t.source_keys > t.source_rows:
        raise _bad("the totals do not add up (more source keys than keys or rows)")
    if int(ix.differences.file[len("differences/"):][:6]) > ix.generation:
        raise _bad(f"its differences file is of a later generation than the index ({ix.generation})")
    if ix.runs_since_full > ix.runs:
        raise _bad("more runs since the last full run than runs")


def check_differences(index: dict[str, Any], diffs: pl.DataFrame) -> None:
    """The differences file (its digest already checked against the index) against the index's
    totals: the counts a run carries forward must be the ones its differences list."""
    t = index["totals"]
    kind = diffs["kind"]
    got = {"missing_in_target": int((kind == "missing_in_target").sum()),
           "missing_in_source": int((kind == "missing_in_source").sum()),
           "mismatched": int((kind == "duplicate_key").sum())
           + int(diffs.filter(pl.col("kind") == "mismatched")["key"].n_unique())}
    for k, v in got.items():
        if int(t[k]) != v:
            raise _bad(f"its totals say {int(t[k]):,} {k}, its differences list {v:,}")
    per_column = diffs.filter(pl.col("kind") == "mismatched")["column"].value_counts()
    listed = dict(zip(per_column["column"].to_list(), per_column["count"].to_list(), strict=True))
    for name, stats in t["columns"].items():
        n = int(listed.pop(name, 0))
        if int(stats[0]) != n:
            raise _bad(f"its totals say {int(stats[0]):,} mismatched in {name}, its differences list {n:,}")
    if listed:
        raise _bad(f"its differences name columns its totals do not ({', '.join(sorted(map(str, listed)))})")
    if int(index["differences"]["rows"]) != diffs.height:
        raise _bad(f"its differences file holds {diffs.height:,} rows, the index says {index['differences']['rows']:,}")
