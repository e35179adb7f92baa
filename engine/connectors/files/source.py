"""Parquet and CSV snapshots.

CSV is read the way Salesforce Bulk writes it: a header row, every value as text, an empty field
is NULL; the types come from the other side's schema or the JSON sidecar (``PATH.json``, see
:mod:`engine.connectors.files.sidecar`), and normalization parses the text. Parquet carries its own
types; its string columns (a snapshot of text) take the sidecar's too.
"""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from engine.connectors.base import Extract, FileRef, SourceColumn
from engine.connectors.files import sidecar
from engine.core.errors import UsageError
from engine.core.keyorder import int_intervals
from engine.core.normalize import KEY_SEPARATOR, FieldSpec
from engine.core.plan import KeyRange

#: Arrow's largest block. A file up to this size is parsed as one block: Arrow (26) loses the LF of a
#: quoted CR LF that straddles a block boundary, even with ``newlines_in_values``
CSV_MAX_BLOCK_BYTES = (1 << 31) - 1


def _kind_of_arrow(t: pa.DataType) -> tuple[str, int | None]:
    if pa.types.is_decimal(t):
        return "decimal", t.scale
    if pa.types.is_integer(t):
        return "int", None
    if pa.types.is_floating(t):
        return "float", None
    if pa.types.is_boolean(t):
        return "bool", None
    if pa.types.is_date(t):
        return "date", None
    if pa.types.is_timestamp(t):
        return "timestamp", None
    return "text", None


def _parquet_column(f: pa.Field, declared: sidecar.Declared | None) -> SourceColumn:
    """A Parquet column's own type; a string column (a snapshot of text) takes the sidecar's."""
    kind, scale = _kind_of_arrow(f.type)
    is_text = pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or \
        (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(f.type))
    if declared is not None and is_text:
        kind, scale = declared.kind, declared.scale
    return SourceColumn(f.name, kind, scale, str(f.type))


def _csv_columns(path: Path, names: list[str]) -> dict[str, SourceColumn]:
    kinds = sidecar.read_schema(path, names)
    return {n: SourceColumn(n, kinds[n].kind, kinds[n].scale, "csv") if n in kinds else SourceColumn(n, "text", None, "csv")
            for n in names}


def columns_of(ref: FileRef) -> dict[str, SourceColumn]:
    """Declared columns without reading the data (Parquet: its schema; CSV: header + sidecar)."""
    path = Path(ref.path)
    if not path.exists():
        raise UsageError(f"file not found: {path} (check the {ref.format}: reference)")
    if ref.format == "parquet":
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise UsageError(f"cannot read Parquet {path}: {exc}") from None
        kinds = sidecar.read_schema(path, schema.names)
        return {f.name: _parquet_column(f, kinds.get(f.name)) for f in schema}
    return _csv_columns(path, _csv_header(path))


def extract(ref: FileRef, columns: list[str] | None = None, *, key_range: KeyRange | None = None,
            key_fields: tuple[FieldSpec, ...] = ()) -> Extract:
    """The file's rows. ``key_range``: a range task's keys; Parquet row groups whose key statistics
    lie wholly outside it are skipped (see :func:`row_groups_in_range`: that prunes only in a file
    sorted by its key); a CSV file is read whole."""
    t0 = time.perf_counter()
    path = Path(ref.path)
    if not path.exists():
        raise UsageError(f"file not found: {path} (check the {ref.format}: reference)")
    ranged = key_range is not None and not key_range.whole
    pruning: dict[str, object] = {}
    if ref.format == "parquet":
        every = columns_of(ref)
        names = list(every)
        if columns:
            columns = _resolve(names, columns, str(path))
        declared = {name: every[name] for name in columns or names}
        frame = None
        if ranged:
            assert key_range is not None
            try:
                pf = pq.ParquetFile(path)
            except (pa.ArrowInvalid, OSError) as exc:
                raise UsageError(f"cannot read Parquet {path}: {exc}") from None
            groups, how = row_groups_in_range(pf.metadata, key_fields, key_range)
            total = pf.metadata.num_row_groups
            pruning = {"key_pushdown": how is not None, "key_predicate": how or "no pruning: whole file",
                       "row_groups": total, "row_groups_read": len(groups)}
            if len(groups) < total:
                try:
                    table = pf.read_row_groups(groups, columns=columns) if groups else \
                        pf.schema_arrow.empty_table().select(columns or names)
                except (pa.ArrowInvalid, OSError) as exc:
                    raise UsageError(f"cannot read Parquet {path}: {exc}") from None
                loaded = pl.from_arrow(table)
                assert isinstance(loaded, pl.DataFrame)
                frame = loaded
        if frame is None:
            frame = _read_parquet(path, columns)
    else:
        if ranged:
            pruning = {"key_pushdown": False, "key_predicate": "no pruning: a CSV file is read whole"}
        names = _csv_header(path)
        _quotes_pair_up(path)
        try:  # every column as text: nothing is typed by guessing (a 20-digit amount stays exact)
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=True,
                quoted_strings_can_be_null=True),
                # one block (see CSV_MAX_BLOCK_BYTES); beyond it, a quoted value may still hold a line end
                # (a Salesforce text area): Arrow then cuts its blocks only outside quotes
                read_options=pacsv.ReadOptions(block_size=max(1, min(path.stat().st_size + 1, CSV_MAX_BLOCK_BYTES))),
                parse_options=pacsv.ParseOptions(newlines_in_values=True))
        except pa.ArrowInvalid as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "Empty CSV file" in first:  # the header without a line end: a snapshot of no rows
                table = pa.table({n: pa.array([], pa.string()) for n in names})
            else:
                if "UTF8" in first or "UTF-8" in first:
                    first = f"not valid UTF-8 ({first})"
                raise UsageError(f"cannot read CSV {path}: {first}: export it again as UTF-8 CSV") from None
        every = _csv_columns(path, table.column_names)
        if columns:
            columns = _resolve(table.column_names, columns, str(path))
            table = table.select(columns)
        declared = {n: every[n] for n in table.column_names}
        loaded = pl.from_arrow(table)
        assert isinstance(loaded, pl.DataFrame)
        frame = loaded
    meta = {"system": ref.format, "path": str(path.resolve()), "rows": frame.height,
            "extract_s": round(time.perf_counter() - t0, 3), **pruning}
    from engine.connectors.files import sidecar

    read_at = sidecar.read_extracted_at(path)
    if read_at is not None:  # a snapshot says when its source was read; a hand-made file cannot
        meta["extracted_at"] = read_at
    return Extract(frame=frame, columns=declared, meta=meta)


def empty_extract(ref: FileRef, columns: list[str] | None = None) -> Extract:
    """No rows, with the columns, declared types and frame dtypes :func:`extract` gives (the same
    readers, asked for no rows): what an incremental run gets from a file whose digest is unchanged."""
    path = Path(ref.path)
    every = columns_of(ref)
    names = list(every)
    if columns:
        names = _resolve(names, columns, str(path))
    if ref.format == "parquet":
        try:
            frame = pl.read_parquet(path, columns=names, n_rows=0)
        except (pl.exceptions.PolarsError, OSError):
            frame = _read_parquet(path, names).head(0)
    else:
        frame = pl.DataFrame(schema={n: pl.Utf8 for n in names})
    meta = {"system": ref.format, "path": str(path.resolve()), "rows": 0}
    return Extract(frame=frame, columns={n: every[n] for n in names}, meta=meta)


def _read_parquet(path: Path, columns: list[str] | None) -> pl.DataFrame:
    try:  # Polars' own reader builds its columns directly: no Arrow table to convert and free
        return pl.read_parquet(path, columns=columns)
    except (pl.exceptions.PolarsError, OSError):  # types Polars cannot read natively go through Arrow
        try:
            loaded = pl.from_arrow(pq.read_table(path, columns=columns))
        except (pa.ArrowInvalid, OSError) as exc:
            raise UsageError(f"cannot read Parquet {path}: {exc}") from None
        assert isinstance(loaded, pl.DataFrame)
        return loaded


def row_groups_in_range(meta: pq.FileMetaData, key_fields: tuple[FieldSpec, ...],
                        rng: KeyRange) -> tuple[list[int], str | None]:
    """The row groups that may hold a key of ``rng``, and how that was decided (None: it could not
    be, every group is read).

    A group is skipped only when its key column's min/max statistics prove that no key in it has
    a canonical text in the range: a text key (Parquet orders UTF-8 statistics by bytes, as
    canonical order does; an ``id`` key's 15-character form sorts before its 18-character one, so
    the lower bound is its first 15 characters), an integer key (its texts between min and max, by
    :func:`engine.core.keyorder.int_intervals`) or a date key (4-digit years). For a compound key,
    the first field, between the range's first parts. Text keys are compared as stored, so they are
    assumed in Unicode NFC, as canonical text is (an ASCII key always is). This prunes only in a
    file sorted by its key:
    in an unsorted file every group's min and max span nearly every range, so each task reads the
    whole file.
    """
    keys = [f for f in key_fields if f.is_key] or list(key_fields)
    every = list(range(meta.num_row_groups))
    if not keys or rng.whole:
        return every, None
    first = keys[0]
    schema = meta.schema.to_arrow_schema()
    name = first.column if first.column in schema.names else \
        {n.lower(): n for n in schema.names}.get(first.column.lower())
    paths = [meta.schema.column(i).path for i in range(meta.num_columns)]
    if name is None or name not in paths:  # absent, or nested: no statistics to go by
        return every, None
    col, arrow_type = paths.index(name), schema.field(name).type
    kind, compound = first.ctype.kind, len(keys) > 1
    lo, hi = rng.lo, rng.hi
    if compound:  # the first field's text lies between the bounds' first parts, both included
        lo = lo.split(KEY_SEPARATOR, 1)[0] if lo is not None else None
        hi = hi.split(KEY_SEPARATOR, 1)[0] + KEY_SEPARATOR if hi is not None else None
    is_text = pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or \
        (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(arrow_type))
    if kind in ("text", "id") and is_text:
        test = "text"
        if kind == "id" and lo is not None:
            lo = lo[:15]
    elif kind == "int" and pa.types.is_integer(arrow_type):
        test = "int"
    elif kind == "date" and pa.types.is_date(arrow_type) and not compound:
        test = "date"
    else:
        return every, None
    blo = lo.encode() if lo is not None else None
    bhi = hi.encode() if hi is not None else None
    keep = []
    for g in every:
        stats = meta.row_group(g).column(col).statistics
        if stats is None or not stats.has_min_max:
            keep.append(g)
            continue
        mn, mx = stats.min, stats.max
        if test == "text":
            bmn = mn.encode() if isinstance(mn, str) else bytes(mn)
            bmx = mx.encode() if isinstance(mx, str) else bytes(mx)
            outside = (blo is not None and bmx < blo) or (bhi is not None and bmn >= bhi)
        elif test == "int":
            outside = not int_intervals(lo, hi, int(mn), int(mx))
        elif 1000 <= mn.year and mx.year <= 9999:  # 4-digit years: the text orders as the date
            outside = (lo is not None and mx.isoformat() < lo) or (hi is not None and mn.isoformat() >= hi)
        else:
            outside = False
        if not outside:
            keep.append(g)
    return keep, f"row-group statistics of {name}"


def _csv_header(path: Path) -> list[str]:
    """The column names of a CSV snapshot (a byte-order mark is not part of the first name); a file
    without a header row or with a name twice cannot be a snapshot."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), None)
    except UnicodeDecodeError:
        raise UsageError(f"cannot read CSV {path}: its header is not valid UTF-8: export it again as UTF-8 CSV") from None
    except csv.Error as exc:
        raise UsageError(f"cannot read CSV {path}: {exc}") from None
    except OSError as exc:  # a directory, a file it may not read: the reference is wrong, not recon
        raise UsageError(f"cannot read CSV {path}: {exc.strerror or exc}: check the csv: reference") from None
    if header is None:
        raise UsageError(f"cannot read CSV {path}: no header row (the file is empty): a CSV snapshot starts with "
                         "the column names")
    if not header:
        raise UsageError(f"cannot read CSV {path}: its first line is blank: a CSV snapshot starts with the "
                         "column names")
    seen: set[str] = set()
    for i, name in enumerate(header, 1):
        if not name:  # a trailing comma, or two in a row: a column nobody can name in -c, -k or the sidecar
            raise UsageError(f"cannot read CSV {path}: column {i} of the header has no name")
        if name in seen:
            raise UsageError(f"cannot read CSV {path}: the header names column {name!r} twice")
        seen.add(name)
    return header


def _quotes_pair_up(path: Path) -> None:
    """Refuse a file whose quote characters do not pair up. Arrow reads a quoted value left open (a
    download cut inside a value) to the end of the file as one value, silently dropping every row after
    it. In a CSV as Bulk API writes it (RFC 4180) quotes only open and close values or are doubled
    inside them, so their count is even; one pass of ``bytes.count`` per block costs little next to
    the parse."""
    n = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            n += block.count(b'"')
    if n % 2:
        raise UsageError(f"cannot read CSV {path}: a quoted value is never closed (the file has an odd number "
                         "of '\"' characters; was it cut short?): export it again")


def _resolve(names: list[str], wanted: list[str], where: str) -> list[str]:
    lower = {n.lower(): n for n in names}
    out = []
    for w in wanted:
        n = w if w in names else lower.get(w.lower())
        if n is None:
            raise UsageError(f"unknown column {w!r} in {where} (columns: {', '.join(names)}): fix -k/-c")
        out.append(n)
    return out
