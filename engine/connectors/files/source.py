"""Parquet and CSV snapshots.

CSV is read the way Salesforce Bulk writes it: a header row, every value as text, an empty field
is NULL; the types come from the other side's schema or a JSON sidecar (``PATH.json`` with a
``schema`` of column → kind), and normalization parses the text. Parquet carries its own types.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from engine.connectors.base import Extract, FileRef, SourceColumn
from engine.core.errors import UsageError


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


def sidecar(path: Path) -> dict | None:
    side = path.with_name(path.name + ".json")
    if side.exists():
        return json.loads(side.read_text())
    return None


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
        return {f.name: SourceColumn(f.name, *_kind_of_arrow(f.type), str(f.type)) for f in schema}
    return extract(ref).columns


def extract(ref: FileRef, columns: list[str] | None = None) -> Extract:
    t0 = time.perf_counter()
    path = Path(ref.path)
    if not path.exists():
        raise UsageError(f"file not found: {path} (check the {ref.format}: reference)")
    if ref.format == "parquet":
        names = list(columns_of(ref))
        if columns:
            columns = _resolve(names, columns, str(path))
        schema = pq.read_schema(path)
        declared = {}
        for name in columns or names:
            f = schema.field(name)
            kind, scale = _kind_of_arrow(f.type)
            declared[f.name] = SourceColumn(f.name, kind, scale, str(f.type))
        try:  # Polars' own reader builds its columns directly: no Arrow table to convert and free
            frame = pl.read_parquet(path, columns=columns)
        except (pl.exceptions.PolarsError, OSError):  # types Polars cannot read natively go through Arrow
            try:
                loaded = pl.from_arrow(pq.read_table(path, columns=columns))
            except (pa.ArrowInvalid, OSError) as exc:
                raise UsageError(f"cannot read Parquet {path}: {exc}") from None
            assert isinstance(loaded, pl.DataFrame)
            frame = loaded
    else:
        names = _csv_header(path)
        try:  # every column as text: nothing is typed by guessing (a 20-digit amount stays exact)
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=True,
                quoted_strings_can_be_null=True), read_options=pacsv.ReadOptions(block_size=1 << 24))
        except pa.ArrowInvalid as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "UTF8" in first or "UTF-8" in first:
                first = f"not valid UTF-8 ({first})"
            raise UsageError(f"cannot read CSV {path}: {first}: export it again as UTF-8 CSV") from None
        if columns:
            columns = _resolve(table.column_names, columns, str(path))
            table = table.select(columns)
        side = sidecar(path) or {}
        kinds = side.get("schema", {})
        declared = {n: SourceColumn(n, kinds.get(n, {}).get("kind", "text") if isinstance(kinds.get(n), dict)
                                    else kinds.get(n, "text"),
                                    kinds.get(n, {}).get("scale") if isinstance(kinds.get(n), dict) else None,
                                    "csv") for n in table.column_names}
        loaded = pl.from_arrow(table)
        assert isinstance(loaded, pl.DataFrame)
        frame = loaded
    meta = {"system": ref.format, "path": str(path.resolve()), "rows": frame.height,
            "extract_s": round(time.perf_counter() - t0, 3)}
    return Extract(frame=frame, columns=declared, meta=meta)


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
    if not header:
        raise UsageError(f"cannot read CSV {path}: no header row (the file is empty): a CSV snapshot starts with "
                         "the column names")
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise UsageError(f"cannot read CSV {path}: the header names column {name!r} twice")
        seen.add(name)
    return header


def _resolve(names: list[str], wanted: list[str], where: str) -> list[str]:
    lower = {n.lower(): n for n in names}
    out = []
    for w in wanted:
        n = w if w in names else lower.get(w.lower())
        if n is None:
            raise UsageError(f"unknown column {w!r} in {where} (columns: {', '.join(names)}): fix -k/-c")
        out.append(n)
    return out
