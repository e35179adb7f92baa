"""PostgreSQL to Arrow: `COPY (SELECT …) TO STDOUT` inside a REPEATABLE READ snapshot.

COPY is the fastest way out of PostgreSQL (no per-row protocol messages, no per-row Python), and
pyarrow's multithreaded CSV reader turns it into typed columns. The snapshot is exported
(`pg_export_snapshot()`) and recorded with the server's time, so a manifest can say exactly which
state was read. Tables, views and materialized views are read the same way. All identifiers go
through `psycopg.sql.Identifier`; the optional `--target-where` condition is the user's own SQL and
runs inside a READ ONLY transaction.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql

from engine.errors import ServiceUnreachable, UsageError
from engine.sources.base import Extract, PostgresRef, SourceColumn, redact_dsn

CONNECT_DEADLINE_S = float(os.environ.get("RECON_CONNECT_DEADLINE", "20"))


@dataclass(frozen=True)
class PgColumn:
    name: str
    type_name: str  # format_type(): e.g. numeric(18,2), timestamp with time zone
    base: str  # pg_type.typname of the base type: numeric, int8, timestamptz, bpchar …
    scale: int | None


def connect(dsn: str, *, deadline_s: float | None = None, **kwargs: Any) -> psycopg.Connection:
    """Connect, retrying while the server is unreachable; user errors fail at once with exit 2."""
    deadline_s = float(os.environ.get("RECON_CONNECT_DEADLINE", CONNECT_DEADLINE_S)) if deadline_s is None else deadline_s
    start = time.monotonic()
    delay = 0.2
    while True:
        try:
            return psycopg.connect(dsn, connect_timeout=5, **kwargs)
        except psycopg.OperationalError as exc:
            msg = str(exc)
            where = redact_dsn(dsn)
            if "password authentication failed" in msg or "no password supplied" in msg:
                raise UsageError(f"PostgreSQL refused the credentials for {where}: check PGPASSWORD, PGPASSFILE "
                                 "or ~/.pgpass") from None
            if "does not exist" in msg:
                first = next((ln for ln in msg.splitlines() if "does not exist" in ln), msg)
                raise UsageError(f"PostgreSQL at {where}: {first.split('FATAL:')[-1].strip()}") from None
            if time.monotonic() - start + delay > deadline_s:
                raise ServiceUnreachable(f"PostgreSQL at {where} is unreachable after {deadline_s:.0f}s: "
                                         "check that the server runs and the host/port are right") from None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def describe(conn: psycopg.Connection, ref: PostgresRef) -> list[PgColumn]:
    """Columns of a table, view or materialized view, in order."""
    qualified = sql.Identifier(ref.schema, ref.table).as_string(conn)
    rows = conn.execute(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod),
                  COALESCE(bt.typname, t.typname),
                  CASE WHEN COALESCE(bt.typname, t.typname) = 'numeric' AND a.atttypmod > 0
                       THEN (a.atttypmod - 4) & 65535 END
             FROM pg_attribute a
             JOIN pg_type t ON t.oid = a.atttypid
             LEFT JOIN pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
            WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY a.attnum""",
        (qualified,),
    ).fetchall()
    if not rows:
        exists = conn.execute("SELECT to_regclass(%s)", (qualified,)).fetchone()
        if not exists or exists[0] is None:
            raise UsageError(f"table {ref.schema}.{ref.table} does not exist in {redact_dsn(ref.dsn)}: "
                             "check the reference's #schema.table")
    return [PgColumn(r[0], r[1], r[2], r[3]) for r in rows]


def _kind(c: PgColumn) -> tuple[str, int | None]:
    b = c.base
    if b == "numeric":
        return "decimal", c.scale
    if b in ("int2", "int4", "int8", "oid"):
        return "int", None
    if b in ("float4", "float8"):
        return "float", None
    if b == "bool":
        return "bool", None
    if b == "date":
        return "date", None
    if b in ("timestamp", "timestamptz"):
        return "timestamp", None
    return "text", None


def _arrow_type(c: PgColumn) -> pa.DataType:
    kind, scale = _kind(c)
    if kind == "decimal":
        precision = 38
        return pa.decimal128(precision, scale) if scale is not None else pa.string()
    return {
        "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "date": pa.date32(),
        "timestamp": pa.timestamp("us", tz="UTC") if c.base == "timestamptz" else pa.timestamp("us"),
    }.get(kind, pa.string())


def _select_expr(c: PgColumn) -> sql.Composable:
    ident = sql.Identifier(c.name)
    if c.base == "timestamptz":  # UTC wall time: no offset syntax for the CSV reader to guess at
        return sql.SQL("({} AT TIME ZONE 'UTC')").format(ident)
    if c.base == "bpchar":  # char(n) pads with blanks; its value does not include them
        return sql.SQL("({})::text").format(ident)
    if c.base not in ("numeric", "int2", "int4", "int8", "float4", "float8", "bool", "date", "timestamp",
                      "text", "varchar", "oid"):
        return sql.SQL("({})::text").format(ident)
    return ident


def resolve_columns(available: list[PgColumn], wanted: list[str], where: str) -> list[PgColumn]:
    by_name = {c.name: c for c in available}
    by_lower: dict[str, PgColumn] = {}
    for c in available:
        by_lower.setdefault(c.name.lower(), c)
    out = []
    for w in wanted:
        c = by_name.get(w) or by_lower.get(w.lower())
        if c is None:
            names = ", ".join(x.name for x in available)
            raise UsageError(f"unknown column {w!r} in {where} (columns: {names}): fix the -k/-c option or mapping")
        out.append(c)
    return out


def extract(
    ref: PostgresRef,
    columns: list[str] | None = None,
    where: str | None = None,
    *,
    updated_at: str | None = None,
    as_of: datetime | None = None,
    key_columns: list[str] | None = None,
) -> Extract:
    """Read the wanted columns in one snapshot; rows changed after ``as_of`` (by ``updated_at``) are
    reported as in-flight keys."""
    t0 = time.perf_counter()
    with connect(ref.dsn) as conn:
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            snap, server_time = conn.execute("SELECT pg_export_snapshot(), now()").fetchone()  # type: ignore[misc]
            available = describe(conn, ref)
            cols = resolve_columns(available, columns, f"{ref.schema}.{ref.table}") if columns else available
            query = sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join(_select_expr(c) for c in cols), sql.Identifier(ref.schema, ref.table))
            if where:
                query = sql.SQL("{} WHERE ({})").format(query, sql.SQL(where))  # the user's own condition
            buf = io.BytesIO()
            try:
                with conn.cursor().copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(query)) as cp:
                    for chunk in cp:
                        buf.write(chunk)
            except psycopg.errors.Error as exc:
                raise UsageError(f"PostgreSQL rejected the query on {ref.schema}.{ref.table}: "
                                 f"{str(exc).splitlines()[0]}") from None
            in_flight = None
            if as_of is not None and updated_at:
                (uc,) = resolve_columns(available, [updated_at], f"{ref.schema}.{ref.table}")
                kc = resolve_columns(available, key_columns or [], f"{ref.schema}.{ref.table}")
                q = sql.SQL("SELECT {} FROM {} WHERE {} > %s").format(
                    sql.SQL(", ").join(sql.SQL("({})::text").format(sql.Identifier(c.name)) for c in kc),
                    sql.Identifier(ref.schema, ref.table), sql.Identifier(uc.name))
                rows = conn.execute(q, (as_of,)).fetchall()
                in_flight = pl.DataFrame(rows, schema=[c.name for c in kc], orient="row")
    names = [c.name for c in cols]
    types = {c.name: _arrow_type(c) for c in cols}
    buf.seek(0)
    table = pacsv.read_csv(
        buf,
        read_options=pacsv.ReadOptions(column_names=names, block_size=1 << 24),
        convert_options=pacsv.ConvertOptions(column_types=types, true_values=["t"], false_values=["f"],
                                             strings_can_be_null=True, quoted_strings_can_be_null=False),
    ) if buf.getbuffer().nbytes else pa.table({n: pa.array([], type=types[n]) for n in names})
    buf.close()  # the CSV text is as large as the table: free it before the frame is built
    frame = pl.from_arrow(table)
    del table
    assert isinstance(frame, pl.DataFrame)
    declared = {}
    for c in cols:
        kind, scale = _kind(c)
        declared[c.name] = SourceColumn(c.name, kind, scale, c.type_name)
    meta = {
        "system": "postgresql",
        "dsn": redact_dsn(ref.dsn),
        "object": f"{ref.schema}.{ref.table}",
        "snapshot_id": snap,
        "server_time": server_time.isoformat(),
        "rows": frame.height,
        "where": where,
        "extract_s": round(time.perf_counter() - t0, 3),
    }
    return Extract(frame=frame, columns=declared, meta=meta, in_flight=in_flight)


def list_columns(ref: PostgresRef) -> list[PgColumn]:
    with connect(ref.dsn) as conn:
        return describe(conn, ref)
