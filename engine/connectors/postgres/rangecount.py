"""Rows per canonical key range, counted by PostgreSQL through the key's index: how an incremental
run finds the rows a table deleted without reading every key.

A table keeps no trace of a deleted row, so finding one takes a pass over the keys. Reading
10M keys costs 2-2.5 s of server and client time a side; counting them per key range in the
server, through an index-only scan, costs a fraction of that and sends back one number per range
(bench/RESULTS.md, "Incremental runs at 10M"). The caller compares the counts with the ones its
state predicts and narrows down only the ranges that moved.

Exact only where the server's order is canonical byte order and an index serves it: a single
``text`` key on a string column whose collation sorts by bytes (or with a ``COLLATE "C"`` index),
stored in Unicode NFC (as :mod:`.keyrange` assumes), and no row condition on the side. Anything
else gets ``None`` from :func:`open_ranges` and the caller reads the keys. The counts are also
refused when the key column holds a NULL (a row in no range).

Read only, as every read: one READ ONLY, REPEATABLE READ transaction in a read-only session, key
values passed as parameters, identifiers through ``sql.Identifier``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from engine.connectors.postgres import keyrange
from engine.connectors.postgres.connection import connect, session_settings
from engine.connectors.refs import PostgresRef
from engine.core.errors import QueryRejected

if TYPE_CHECKING:
    from engine.core.normalize import FieldSpec


class KeyRanges:
    """Counts and keys of canonical key ranges ``[lo, hi)`` (``lo`` None: from the first key; ``hi``
    None: to the last), all in one snapshot."""

    def __init__(self, conn: psycopg.Connection, ref: PostgresRef, column: str, base: str, order: str) -> None:
        self.conn, self.ref = conn, ref
        self._col = sql.Identifier(column)
        self._table = sql.Identifier(ref.schema, ref.table)
        # compare as the column's own type (a text parameter against a char(n) column would cast the
        # column, and no index serves that), in byte order
        self._cast = sql.SQL(base)
        self._padded = base == "bpchar"
        self._cmp = self._col if order == "native" else sql.SQL('{} COLLATE "C"').format(self._col)
        #: a NULL key is in no range (the caller's counts would not add up): through the index too
        self.null_keys = bool(conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {} IS NULL)").format(
            self._table, self._col)).fetchone()[0])  # type: ignore[index]

    def _bounds(self, lo: sql.Composable, hi: sql.Composable | None) -> sql.Composable:
        cond = sql.SQL("{} >= {}::{}").format(self._cmp, lo, self._cast)
        return cond if hi is None else sql.SQL("{} AND {} < {}::{}").format(cond, self._cmp, hi, self._cast)

    def exact_for(self, ranges: Sequence[tuple[str | None, str | None]]) -> bool:
        """Whether the server's comparison is canonical byte order at these bounds: a char(n) column
        compares without trailing blanks, so a bound ending in one (cut from a text key on the other
        side) would put keys on the wrong side of it."""
        return not self._padded or not any(b is not None and b.endswith(" ") for r in ranges for b in r)

    def present(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` the table holds (stored text, through the same index)."""
        if not keys:
            return set()
        q = sql.SQL("SELECT {}::text FROM {} WHERE {} = ANY(%s::{}[])").format(
            self._col, self._table, self._col, self._cast)
        return {r[0] for r in self.conn.execute(q, (list(keys),)).fetchall()}

    def counts(self, ranges: Sequence[tuple[str | None, str | None]]) -> list[int]:
        """Rows per range, in order: one index descent and an index-only count per range."""
        out = [0] * len(ranges)
        closed = [(i, "" if lo is None else lo, hi) for i, (lo, hi) in enumerate(ranges) if hi is not None]
        if closed:
            q = sql.SQL("SELECT (SELECT count(*) FROM {} WHERE {}) FROM unnest(%s::text[], %s::text[]) "
                        "WITH ORDINALITY AS b(lo, hi, i) ORDER BY b.i").format(
                self._table, self._bounds(sql.SQL("b.lo"), sql.SQL("b.hi")))
            got = self.conn.execute(q, ([c[1] for c in closed], [c[2] for c in closed])).fetchall()
            for (i, _, _), (n,) in zip(closed, got, strict=True):
                out[i] = int(n)
        for i, (lo, hi) in enumerate(ranges):
            if hi is None:  # open above (the last range): no text is greater than every key
                q = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(self._table, self._bounds(sql.Placeholder(), None))
                out[i] = int(self.conn.execute(q, ("" if lo is None else lo,)).fetchone()[0])  # type: ignore[index]
        return out

    def keys(self, ranges: Sequence[tuple[str | None, str | None]]) -> list[str]:
        """The stored keys of the ranges (as text), through the same index."""
        out: list[str] = []
        closed = [("" if lo is None else lo, hi) for lo, hi in ranges if hi is not None]
        if closed:
            q = sql.SQL("SELECT t.k FROM unnest(%s::text[], %s::text[]) AS b(lo, hi), "
                        "LATERAL (SELECT {}::text AS k FROM {} WHERE {}) t").format(
                self._col, self._table, self._bounds(sql.SQL("b.lo"), sql.SQL("b.hi")))
            out += [r[0] for r in self.conn.execute(q, ([c[0] for c in closed], [c[1] for c in closed])).fetchall()]
        for lo, hi in ranges:
            if hi is None:
                q = sql.SQL("SELECT {}::text FROM {} WHERE {}").format(self._col, self._table,
                                                                         self._bounds(sql.Placeholder(), None))
                out += [r[0] for r in self.conn.execute(q, ("" if lo is None else lo,)).fetchall()]
        return out


def key_ranges_on(conn: psycopg.Connection, ref: PostgresRef, keys: Sequence[FieldSpec], where: str | None
                  ) -> KeyRanges | None:
    """A :class:`KeyRanges` in ``conn``'s transaction, or None when counting by range would not be
    exact or not be served by an index (see the module's docstring)."""
    from engine.connectors.postgres.source import describe, resolve_columns

    key = [k for k in keys if k.is_key] or list(keys)
    if where is not None or len(key) != 1 or key[0].ctype.kind != "text":
        return None
    (col,) = resolve_columns(describe(conn, ref), [key[0].column], f"{ref.schema}.{ref.table}")
    if col.base not in keyrange.STRING_TYPES:
        return None
    facts = keyrange.text_key_facts(conn, ref.schema, ref.table, col.name)
    if not facts.indexed or facts.order == "pattern":
        return None
    ranges = KeyRanges(conn, ref, col.name, col.base, facts.order)
    return None if ranges.null_keys else ranges


@contextlib.contextmanager
def open_ranges(ref: PostgresRef, keys: Sequence[FieldSpec], where: str | None, *,
                passfile: str | Path | None, statement_timeout_ms: int) -> Iterator[KeyRanges | None]:
    """:func:`key_ranges_on` in a fresh read-only snapshot of its own."""
    key = [k for k in keys if k.is_key] or list(keys)
    if where is not None or len(key) != 1 or key[0].ctype.kind != "text":
        yield None
        return
    conn = connect(ref.dsn, passfile=passfile)
    try:
        conn.autocommit = True
        conn.execute(session_settings(statement_timeout_ms))
        conn.autocommit = False
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        try:
            yield key_ranges_on(conn, ref, keys, where)
        except psycopg.errors.Error as exc:
            raise QueryRejected(f"PostgreSQL rejected a key range count on {ref.schema}.{ref.table}: "
                                f"{str(exc).splitlines()[0]}") from None
    finally:
        with contextlib.suppress(Exception):
            conn.rollback()
        with contextlib.suppress(Exception):
            conn.close()
