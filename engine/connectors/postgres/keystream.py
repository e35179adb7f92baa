"""A single key column streamed in canonical key order, for the coordinator's cut of a range run.

The in-memory cut reads every source key and sorts it (≈64 B of RSS per key: 1.9 GB at 30M keys,
bench/RESULTS.md "Key ranges at scale"). For a key whose canonical order PostgreSQL can produce,
the server sorts instead and one COPY streams the keys in that order, in the run's snapshot, to a
client that keeps one Arrow batch at a time (:class:`engine.core.merkle.StreamingCut`):

* text / id on a string column: canonical text is the stored text (assuming NFC, as
  :mod:`.keyrange` does), so ``ORDER BY k COLLATE "C"`` (byte order);
* int2/int4/int8: canonical text is the decimal text, so ``ORDER BY k::text COLLATE "C"``.

The order is a claim the client checks batch by batch (a key stored decomposed, an id whose
15-character form sorts elsewhere than its 18-character one): when it fails, the caller cuts in
memory. Read only, as every read: a READ ONLY transaction in a read-only session, the COPY run by
a psql child that imports the same snapshot.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
from engine.connectors.postgres.copy_stream import _csv_options, _psql_binary, _start_children
from engine.connectors.refs import PostgresRef, secret_keys
from engine.core.errors import QueryRejected

if TYPE_CHECKING:
    import polars as pl

    from engine.connectors.postgres.copy_stream import _Child
    from engine.core.normalize import FieldSpec


def order_by(kind: str, base: str, column: str) -> sql.Composable | None:
    """The ORDER BY that gives a single key's canonical byte order, or None when the server cannot."""
    ident = sql.Identifier(column)
    if kind in ("text", "id") and base in keyrange.STRING_TYPES:
        return sql.SQL('{} COLLATE "C"').format(ident)
    if kind == "int" and base in keyrange.INT_BOUNDS:
        return sql.SQL('({})::text COLLATE "C"').format(ident)
    return None


class SortedKeys:
    """The key column of ``ref`` (under ``where``) in canonical order, as Polars batches.

    ``supported`` is False (and nothing was started) when the key's type has no server order or
    no psql is at hand to stream the COPY; the caller then cuts in memory. A context manager:
    leaving it stops the child and ends the transaction.
    """

    def __init__(self, ref: PostgresRef, key: FieldSpec, where: str | None, *, snapshot: str | None,
                 passfile: str | Path | None = None,
                 statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS) -> None:
        from engine.connectors.postgres.source import _arrow_type, describe, resolve_columns

        self.where_text = f"{ref.schema}.{ref.table}"
        if where is not None:
            check_condition(where, f"the row condition on {self.where_text}")
        self.children: list[_Child] = []
        self.supported = False
        psql = _psql_binary() if not set(secret_keys(ref.dsn)) - {"password"} else None
        if psql is None:
            self.conn = None
            return
        pf = str(passfile) if passfile is not None else None
        self.conn = connect(ref.dsn, passfile=pf)
        try:
            self.conn.autocommit = True
            self.conn.execute(session_settings(statement_timeout_ms))
            self.conn.autocommit = False
            self.conn.read_only = True
            self.conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            if snapshot is not None:
                self.conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            else:
                snapshot = self.conn.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
            (col,) = resolve_columns(describe(self.conn, ref), [key.column], self.where_text)
            order = order_by(key.ctype.kind, col.base, col.name)
            if order is None:
                return
            self.column, self.type, self.padded = col.name, _arrow_type(col), col.base == "bpchar"
            cond = sql.SQL(" WHERE ({})").format(sql.SQL(where)) if where else sql.SQL("")
            query = sql.SQL("SELECT {} FROM {}{}").format(sql.Identifier(col.name),
                                                         sql.Identifier(ref.schema, ref.table), cond)
            if where:
                server_check(self.conn, query, self.where_text)
            copy = sql.SQL("COPY ({} ORDER BY {}) TO STDOUT (FORMAT csv)").format(query, order)
            self.children = _start_children(psql, self.conn, ref, [copy.as_string(self.conn)], str(snapshot), pf,
                                            statement_timeout_ms)
            self.supported = True
        except psycopg.errors.Error as exc:
            self.close()
            raise QueryRejected(f"PostgreSQL rejected the query on {self.where_text}: "
                                f"{str(exc).splitlines()[0]}") from None
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> Iterator[pl.DataFrame]:
        """One frame of the key column per Arrow batch (a few MiB of CSV each)."""
        import polars as pl
        import pyarrow as pa
        import pyarrow.csv as pacsv

        (child,) = self.children
        ro, co = _csv_options([self.column], {self.column: self.type})
        try:
            reader = pacsv.open_csv(child, read_options=ro, convert_options=co)
        except pa.ArrowInvalid as exc:  # no output: an empty table, or an error the exit status tells
            child.read()
            self._finish(child, None if "Empty CSV" in str(exc) else exc)
            return
        for batch in reader:
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            if self.padded:  # char(n): without its blanks, as every read gives it
                frame = frame.with_columns(pl.col(self.column).str.strip_chars_end(" "))
            yield frame
        self._finish(child, None)

    def _finish(self, child: _Child, parse_error: Exception | None) -> None:
        rc, err = child.finish()
        self.children = []
        if rc != 0:
            line = next((ln for ln in err.splitlines() if ln.startswith(("ERROR:", "FATAL:", "psql:"))),
                        err.strip().splitlines()[0] if err.strip() else f"psql exited with {rc}")
            line = line.split("ERROR:", 1)[-1].split("FATAL:", 1)[-1].strip()
            raise QueryRejected(f"PostgreSQL rejected the key query on {self.where_text}: {line}")
        if parse_error is not None:
            raise QueryRejected(f"cannot parse the key COPY output of {self.where_text}: {parse_error}")

    def close(self) -> None:
        for child in self.children:
            child.stop()
        self.children = []
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.rollback()
            with contextlib.suppress(Exception):
                self.conn.close()

    def __enter__(self) -> SortedKeys:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
