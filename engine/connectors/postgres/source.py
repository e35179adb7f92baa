"""PostgreSQL to Arrow: `COPY (SELECT …) TO STDOUT` inside a REPEATABLE READ snapshot.

COPY is the fastest way out of PostgreSQL, and pyarrow's multithreaded CSV reader turns it into
typed columns. libpq hands COPY data out a row per call, so the COPY runs in `psql` children whose
output pyarrow reads off a pipe (no per-row Python), large tables as parallel page ranges; an
in-process psycopg reader remains as the fallback. The snapshot is exported (`pg_export_snapshot()`),
imported by every child, and recorded with the server's time, so a manifest can say exactly which
state was read. Tables, views and materialized views are read the same way. All identifiers go
through `psycopg.sql.Identifier`; the optional `--target-where` condition is the user's own SQL: checked
as exactly one expression (:mod:`engine.connectors.postgres.condition`), prepared by the server
before it runs, and run in READ ONLY transactions of sessions whose default is read only, under a
``statement_timeout``.

A read has two halves: :class:`PgRead` opens the snapshot and starts the COPY children (psycopg
only), :meth:`PgRead.collect` parses their output (pyarrow, Polars). The first half imports no
data library, so `recon diff` can start it before Polars and Arrow have loaded
(:mod:`engine.connectors.postgres.early`): the server formats rows while the interpreter is still importing.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from engine.connectors.postgres import keyrange
from engine.connectors.postgres.condition import check_condition
from engine.connectors.postgres.connection import (
    DEFAULT_STATEMENT_TIMEOUT_MS,
    connect,
    server_check,
    session_settings,
)
from engine.connectors.postgres.copy_stream import (
    _adbc_available,
    _AdbcCannotConnect,
    _Child,
    _collect_children,
    _copy_via_psycopg,
    _psql_binary,
    _PsqlCannotConnect,
    _read_via_adbc,
    _start_children,
)
from engine.connectors.postgres.keyrange import KeyPredicate
from engine.connectors.refs import PostgresRef, redact_dsn, secret_keys
from engine.core.errors import QueryRejected, UsageError

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

    from engine.connectors.base import Extract
    from engine.core.normalize import FieldSpec
    from engine.core.plan import KeyRange

@dataclass(frozen=True)
class PgColumn:
    name: str
    type_name: str  # format_type(): e.g. numeric(18,2), timestamp with time zone
    base: str  # pg_type.typname of the base type: numeric, int8, timestamptz, bpchar …
    scale: int | None


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
    import pyarrow as pa

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


def _adbc_select_expr(c: PgColumn) -> sql.Composable:
    if c.base == "numeric":
        return sql.SQL("({})::text").format(sql.Identifier(c.name))
    return _select_expr(c)


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
            raise UsageError(f"unknown column {w!r} in {where} (columns: {names}): fix the key or compared columns",
                             field="columns")
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
    started: PgRead | None = None,
    passfile: str | Path | None = None,
    statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
    snapshot: str | None = None,
    key_range: KeyRange | None = None,
    key_fields: tuple[FieldSpec, ...] = (),
    changed_since: datetime | None = None,
    key_order: bool = False,
    count_ranges: tuple[tuple[str | None, str | None], ...] = (),
) -> Extract:
    """Read the wanted columns in one snapshot; rows changed after ``as_of`` (by ``updated_at``) are
    reported as in-flight keys. ``started``: a read already under way for the same table and
    condition that covers the wanted columns (see :mod:`engine.connectors.postgres.early`);
    ``passfile``: the libpq password file for the connections (see :func:`connect`);
    ``snapshot``: the run's exported snapshot, read instead of a new one; ``key_range`` and
    ``key_fields``: a range task's keys, read through the predicate of
    :mod:`engine.connectors.postgres.keyrange` (a superset of the range); ``changed_since``: only
    the rows whose ``updated_at`` is at or after it, and the count of every row under the condition
    in the same snapshot (``meta["rows_now"]``: an incremental run's deletion check)."""
    import polars as pl

    from engine.connectors.base import Extract, SourceColumn
    read = started if started is not None else PgRead(ref, columns, where, passfile=passfile,
                                                      statement_timeout_ms=statement_timeout_ms, snapshot=snapshot,
                                                      key_range=key_range, key_fields=key_fields,
                                                      changed=(updated_at, changed_since) if changed_since else None,
                                                      key_order=key_order)
    rows_now = None
    with read:
        cols = resolve_columns(read.available, columns, read.where_text) if columns else read.cols
        frame, reader = read.collect()
        if [c.name for c in cols] != frame.columns:  # an early read may hold more columns
            frame = frame.select(c.name for c in cols)
        in_flight = None
        if as_of is not None and updated_at:
            (uc,) = resolve_columns(read.available, [updated_at], read.where_text)
            kc = resolve_columns(read.available, key_columns or [], read.where_text)
            q = sql.SQL("SELECT {} FROM {} WHERE {} > %s").format(
                sql.SQL(", ").join(sql.SQL("({})::text").format(sql.Identifier(c.name)) for c in kc),
                sql.Identifier(ref.schema, ref.table), sql.Identifier(uc.name))
            rows = read.conn.execute(q, (_as_of_param(uc, as_of, read.where_text),)).fetchall()
            in_flight = pl.DataFrame(rows, schema=[c.name for c in kc], orient="row")
        range_counts = None
        if changed_since is not None:  # the read's own transaction: the same snapshot as its rows
            from engine.connectors.postgres.rangecount import key_ranges_on

            ranges = key_ranges_on(read.conn, ref, key_fields, where) if count_ranges else None
            if ranges is not None and ranges.exact_for(count_ranges):  # they add up to the count
                range_counts = ranges.counts(count_ranges)
                rows_now = sum(range_counts)
            else:
                q = sql.SQL("SELECT count(*) FROM {}{}").format(
                    sql.Identifier(ref.schema, ref.table),
                    sql.SQL(" WHERE ({})").format(sql.SQL(where)) if where else sql.SQL(""))
                rows_now = int(read.conn.execute(q).fetchone()[0])  # type: ignore[index]
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
        "snapshot_id": read.snapshot,
        "server_time": read.server_time.isoformat(),
        "rows": frame.height,
        "where": where,
        "reader": reader,
        "started_early": read.early,
        "extract_s": round(time.perf_counter() - read.t0, 3),
    }
    if snapshot is not None:
        meta["snapshot_imported"] = True
    if changed_since is not None:
        meta["changed_since"] = changed_since.isoformat()
    if rows_now is not None:
        meta["rows_now"] = rows_now
    if range_counts is not None:  # taken out by the caller (tens of thousands of numbers)
        meta["range_counts"] = range_counts
    if key_range is not None and not key_range.whole:
        pred = read.key_pred
        meta["key_pushdown"] = bool(pred and pred.pushdown)
        meta["key_predicate"] = pred.description if pred else "whole table"
        if pred is not None and pred.pushdown:
            meta["key_index"] = bool(pred.indexed)
            if pred.hint:
                meta["hint"] = (f"no index serves the key's byte order, so every range task scans the whole "
                                f"table: {pred.hint}")
    return Extract(frame=frame, columns=declared, meta=meta, in_flight=in_flight)


def _as_of_param(uc: PgColumn, as_of: datetime, where: str) -> datetime:
    """``--as-of`` as the ``updated_at`` column compares it. A ``timestamptz`` is an instant: T as
    given. A naive ``timestamp`` (or a ``date``) holds UTC wall time, as recon reads it everywhere:
    T as a naive UTC time, so the comparison never goes through the session's TimeZone (with the
    server in New York, a row changed at 10:00 UTC would otherwise count as changed at 14:00 UTC).
    Any other type cannot say when a row changed: exit 2 naming the column."""
    from datetime import UTC

    if uc.base == "timestamptz":
        return as_of
    if uc.base in ("timestamp", "date"):
        return as_of.astimezone(UTC).replace(tzinfo=None)
    raise UsageError(f"target_updated_at {uc.name!r} of {where} is {uc.type_name}: --as-of needs the time each row "
                     "last changed, a timestamp, timestamptz or date column")


class PgRead:
    """A read under way: an open READ ONLY, REPEATABLE READ transaction, its exported snapshot, and
    (with psql available) the COPY children already streaming into memory.

    ``columns``: the wanted columns (an unknown one is a usage error), or with ``lenient`` a guess
    (the table's columns matching it, case-insensitively, are read; unknown names are ignored).
    ``passfile``: the libpq password file of every connection of the read (psycopg's, the psql
    children's, ADBC's). Use as a context manager: leaving it ends the transaction and stops any
    child still running.
    """

    def __init__(self, ref: PostgresRef, columns: list[str] | None, where: str | None, *,
                 lenient: bool = False, passfile: str | Path | None = None,
                 statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS, snapshot: str | None = None,
                 key_range: KeyRange | None = None, key_fields: tuple[FieldSpec, ...] = (),
                 changed: tuple[str | None, datetime] | None = None, key_order: bool = False) -> None:
        self.ref, self.where = ref, where
        #: the key predicate of a range read (see :mod:`engine.connectors.postgres.keyrange`)
        self.key_pred: KeyPredicate | None = None
        self.passfile = str(passfile) if passfile is not None else None
        self.where_text = f"{ref.schema}.{ref.table}"
        if where is not None:  # before any connection: the text never reaches a server unchecked
            check_condition(where, f"the row condition on {self.where_text}")
        self.statement_timeout_ms = statement_timeout_ms
        self.t0 = time.perf_counter()
        self.early = False  # set when engine.connectors.postgres.early started it ahead of the diff
        self.children: list[_Child] = []
        self.conn = connect(ref.dsn, passfile=self.passfile)
        try:
            # session defaults first: even a statement that escaped its transaction would be read
            # only and bounded in time
            self.conn.autocommit = True
            self.conn.execute(session_settings(statement_timeout_ms))
            self.conn.autocommit = False
            self.conn.read_only = True
            self.conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            # the transaction starts with this statement and stays open until close(); a range
            # task of a run reads the run's snapshot instead of exporting its own
            if snapshot is not None:
                self.conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
                self.snapshot, self.server_time = snapshot, self.conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
            else:
                self.snapshot, self.server_time = self.conn.execute(
                    "SELECT pg_export_snapshot(), now()").fetchone()  # type: ignore[misc]
            self.available = describe(self.conn, ref)
            if columns and lenient:
                want = {c.lower() for c in columns}
                self.cols = [c for c in self.available if c.name.lower() in want] or self.available
            elif columns:
                self.cols = resolve_columns(self.available, columns, self.where_text)
            else:
                self.cols = self.available
            conds: list[sql.Composable] = []
            if where:
                conds.append(sql.SQL("({})").format(sql.SQL(where)))  # the user's own condition
            if key_range is not None and not key_range.whole:
                self.key_pred = _key_predicate(self.conn, ref, self.available, key_range, key_fields)
                if self.key_pred.condition is not None:
                    conds.append(self.key_pred.condition)
            if changed is not None:  # an incremental run's changed rows (engine.connectors.postgres.changes)
                column, since = changed
                if not column:
                    raise UsageError(f"{self.where_text}: an incremental read needs the column that says when a "
                                     "row last changed (the mapping's source_updated_at / target_updated_at)")
                (uc,) = resolve_columns(self.available, [column], self.where_text)
                if uc.base not in ("timestamptz", "timestamp"):
                    raise UsageError(f"{self.where_text}: {uc.name!r} is {uc.type_name}: an incremental read needs "
                                     "a timestamptz (or timestamp) column set by now() on every write")
                conds.append(sql.SQL("{} >= {}").format(sql.Identifier(uc.name),
                                                        sql.Literal(_as_of_param(uc, since, self.where_text))))
            cond = sql.SQL(" WHERE {}").format(sql.SQL(" AND ").join(conds)) if conds else sql.SQL("")
            query = sql.SQL("SELECT {} FROM {}{}").format(
                sql.SQL(", ").join(_select_expr(c) for c in self.cols), sql.Identifier(ref.schema, ref.table), cond)
            order = _key_order(self.available, key_fields, self.where_text) if key_order else None
            if order is not None:  # one ordered query (page ranges would each be sorted apart)
                query = sql.SQL("{} ORDER BY {}").format(query, order)
            self.copy_sql = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(query)
            # ADBC reads binary COPY, where the driver decodes NUMERIC slowly: the server formats it
            self.adbc_sql = sql.SQL("SELECT {} FROM {}{}{}").format(
                sql.SQL(", ").join(_adbc_select_expr(c) for c in self.cols), sql.Identifier(ref.schema, ref.table),
                cond, sql.SQL(" ORDER BY {}").format(order) if order is not None else sql.SQL(""))
            if where:
                server_check(self.conn, query, self.where_text)
            # a secret other than the password (sslpassword, an OAuth client secret) has no
            # environment variable, so it would sit on the children's command lines: read in-process
            psql = _psql_binary() if not set(secret_keys(ref.dsn)) - {"password"} else None
            if order is not None:  # a narrow, ordered read: ADBC's binary COPY (10M keys: 2.1-2.5 s)
                psql = None
            if psql is not None:
                # page ranges split a scan of the whole table; a range an index serves is read by
                # one COPY (each page range would walk the same index part again)
                split = not (self.key_pred is not None and self.key_pred.indexed)
                copies = [sql.SQL("COPY ({} {} {}) TO STDOUT (FORMAT csv)").format(
                    query, sql.SQL("AND" if conds else "WHERE"), part).as_string(self.conn)
                    for part in (_ctid_ranges(self.conn, ref) if split else [])] or [self.copy_sql.as_string(self.conn)]
                self.children = _start_children(psql, self.conn, ref, copies, self.snapshot, self.passfile,
                                                statement_timeout_ms)
        except psycopg.errors.Error as exc:
            self.close()
            raise QueryRejected(f"PostgreSQL rejected the query on {self.where_text}: "
                                f"{str(exc).splitlines()[0]}") from None
        except BaseException:
            self.close()
            raise

    def covers(self, columns: list[str] | None) -> bool:
        """Whether this read holds every wanted column (all of the table's when None)."""
        have = {c.name for c in self.cols}
        try:
            wanted = resolve_columns(self.available, columns, self.where_text) if columns else self.available
        except UsageError:
            return False  # the regular read reports it
        return all(c.name in have for c in wanted)

    def collect(self) -> tuple[pl.DataFrame, str]:
        """The rows as a Polars frame, and which reader produced them."""
        names = [c.name for c in self.cols]
        types = {c.name: _arrow_type(c) for c in self.cols}
        if self.children:
            try:
                frame = _collect_children(self.children, self.where_text, names, types)
                return frame, "psql" if len(self.children) == 1 else f"psql x{len(self.children)}"
            except _PsqlCannotConnect:  # e.g. a connection limit or a pg_hba rule psql trips over
                self._stop_children()
        if _adbc_available():
            try:
                frame = _read_via_adbc(self.conn, self.ref, self.snapshot, self.adbc_sql.as_string(self.conn),
                                       self.where_text, names, types, self.passfile, self.statement_timeout_ms)
                return frame, "adbc"
            except _AdbcCannotConnect:
                pass
        return _copy_via_psycopg(self.conn, self.ref, self.copy_sql, names, types), "psycopg"

    def _stop_children(self) -> None:
        for child in self.children:
            child.stop()
        self.children = []

    def close(self) -> None:
        self._stop_children()
        with contextlib.suppress(Exception):
            self.conn.rollback()  # read only: nothing to keep
        with contextlib.suppress(Exception):
            self.conn.close()

    def __enter__(self) -> PgRead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _key_order(available: list[PgColumn], key_fields: tuple[FieldSpec, ...], where: str) -> sql.Composable | None:
    """The ORDER BY giving a single key's canonical order (see :mod:`.keystream`), or None."""
    from engine.connectors.postgres.keystream import order_by

    keys = [f for f in key_fields if f.is_key] or list(key_fields)
    if len(keys) != 1:
        return None
    (col,) = resolve_columns(available, [keys[0].column], where)
    return order_by(keys[0].ctype.kind, col.base, col.name)


def _key_predicate(conn: psycopg.Connection, ref: PostgresRef, available: list[PgColumn], rng: KeyRange,
                   key_fields: tuple[FieldSpec, ...]) -> KeyPredicate:
    """The range's predicate over the key columns as this table declares them (the catalog says
    whether a text key can be compared in byte order through an index)."""
    keys = [f for f in key_fields if f.is_key] or list(key_fields)
    if not keys:
        return KeyPredicate(None, "no predicate: the key fields were not given")
    found = resolve_columns(available, [k.column for k in keys], f"{ref.schema}.{ref.table}")
    keys = [replace(k, column=c.name) for k, c in zip(keys, found, strict=True)]
    bases = {c.name: c.base for c in found}
    facts = None
    if keys[0].ctype.kind in ("text", "id") and found[0].base in keyrange.STRING_TYPES:
        facts = keyrange.text_key_facts(conn, ref.schema, ref.table, found[0].name)
    pred = keyrange.key_predicate(keys, bases, rng, table=(ref.schema, ref.table), text_facts=facts)
    if pred.pushdown and facts is None:  # integer and date ranges: any btree on the column serves them
        pred = replace(pred, indexed=keyrange.column_indexed(conn, ref.schema, ref.table, found[0].name))
    return pred


def _strip_padding(frame: pl.DataFrame, names: list[str]) -> pl.DataFrame:
    """char(n) values without their trailing blanks, as PostgreSQL's own ``::text`` gives them
    (the common fully-used char(n), such as an 18-character Id, is left untouched)."""
    import polars as pl

    padded = [n for n in names if frame[n].str.ends_with(" ").any()]
    return frame.with_columns(pl.col(n).str.strip_chars_end(" ") for n in padded) if padded else frame


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


PARALLEL_MIN_PAGES = 2048  # 16 MiB: below this one COPY is as fast


def list_columns(ref: PostgresRef, *, passfile: str | Path | None = None) -> list[PgColumn]:
    with connect(ref.dsn, passfile=passfile) as conn:
        conn.read_only = True
        return describe(conn, ref)
