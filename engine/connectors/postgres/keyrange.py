"""A range task's key predicate: the SQL that lets PostgreSQL return (about) one
:class:`~engine.core.plan.KeyRange` of canonical keys instead of the whole table.

Canonical key order is the byte order of the canonical key text (:mod:`engine.core.normalize`),
which is rarely the database's own order, so each key kind gets its own translation. The predicate
may select a superset of the range, never a subset: the task keeps exactly the rows
``KeyRange.expr()`` selects, so a looser predicate only costs rows read, a tighter one would lose
rows. Everything here is pure (no connection): values go in as ``sql.Literal``, identifiers as
``sql.Identifier``.

* **text / id** on a string column (text, varchar, char): byte order is the "C" collation. When
  the column's own collation already sorts by bytes (C, POSIX, or a builtin-provider collation:
  code point order is UTF-8 byte order), the plain comparison is used and its ordinary index serves
  it. Otherwise ``col COLLATE "C" >= lo AND col COLLATE "C" < hi``, which a default-collation index
  cannot serve: every task then scans the whole table, unless an index on ``(col COLLATE "C")``
  exists (or one with ``text_pattern_ops``, used through ``~>=~`` / ``~<~``). :func:`text_order`
  reads those facts from the catalog; the extract's meta says whether an index serves the
  predicate (``key_index``) and, when none does, the ``CREATE INDEX`` that fixes it (``hint``).
  An ``id`` key's canonical form adds the 3-character suffix to a 15-character id, so the lower
  bound is cut to its first 15 characters (a 15-character prefix sorts before its 18-character
  form). The comparison is on the stored text: keys are assumed stored in Unicode NFC (an ASCII key
  always is); a key stored decomposed could sort elsewhere than its NFC form.
* **int** (int2/int4/int8): canonical text order ("10" < "9") is not numeric order, but the
  integers whose decimal text lies in ``[lo, hi)`` form, for each sign and number of digits, one
  numeric interval (among texts of equal length, text order is numeric order). So the predicate
  is an OR of at most 38 ``BETWEEN``s (fewer after merging neighbours), which the btree serves as a
  BitmapOr of index range scans: the encoding stays as it is (no encoding v3).
* **date**: ``YYYY-MM-DD`` sorts like the date for 4-digit years; dates outside years 1000-9999 are
  always included (their text is not 10 characters).
* **compound keys**: the key text is the fields' texts joined by NUL, so a key in ``[lo, hi)`` has
  a first field between lo's first part and hi's first part, both included: a superset predicate
  on the first field when it is text or int.
* anything else: no predicate (``key_pushdown: false``): the task reads the whole table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Final, Literal

from psycopg import sql

from engine.core.keyorder import INT8_BOUNDS, int_intervals

if TYPE_CHECKING:  # both modules import Polars, which a PostgreSQL read must not wait for (see .early)
    from engine.core.normalize import FieldSpec
    from engine.core.plan import KeyRange

#: :data:`engine.core.normalize.KEY_SEPARATOR` (a unit test keeps them equal)
KEY_SEPARATOR: Final[str] = "\x00"

#: PostgreSQL integer types and their bounds
INT_BOUNDS: Final[dict[str, tuple[int, int]]] = {
    "int2": (-(2**15), 2**15 - 1),
    "int4": (-(2**31), 2**31 - 1),
    "int8": INT8_BOUNDS,
}
STRING_TYPES: Final[tuple[str, ...]] = ("text", "varchar", "bpchar")

#: how a text key column can be compared in byte order: its own collation already does
#: ("native"), an index with a pattern opclass serves ``~>=~`` ("pattern"), or ``COLLATE "C"``
TextOrder = Literal["native", "pattern", "collate"]


@dataclass(frozen=True)
class TextKeyFacts:
    """What the catalog says about a text key column (see :func:`text_order`)."""

    order: TextOrder
    #: an index serves the predicate (a btree whose first column is the key, in byte order)
    indexed: bool


@dataclass(frozen=True)
class KeyPredicate:
    """The SQL condition for one range (None: read everything) and what to tell the manifest."""

    condition: sql.Composable | None
    #: a short, non-secret description (no key values): which translation was used
    description: str
    #: an index can serve the condition (None: not known, or no condition)
    indexed: bool | None = None
    #: for an unserved text key: the index that would serve it
    hint: str | None = None

    @property
    def pushdown(self) -> bool:
        return self.condition is not None


def key_predicate(keys: Sequence[FieldSpec], columns: Mapping[str, str], rng: KeyRange, *,
                  table: tuple[str, str] = ("public", "t"), text_facts: TextKeyFacts | None = None) -> KeyPredicate:
    """The condition selecting (a superset of) the rows whose canonical key lies in ``rng``.

    ``keys``: the key fields in mapping order; ``columns``: each key column's ``pg_type.typname``
    (``PgColumn.base``) by column name; ``table``: (schema, table) for the index hint;
    ``text_facts``: for a single text/id key, how the column can be compared in byte order
    (default: ``COLLATE "C"`` without an index).
    """
    keys = [k for k in keys if k.is_key] or list(keys)
    if rng.whole or not keys:
        return KeyPredicate(None, "whole table")
    first = keys[0]
    base = columns.get(first.column, "")
    kind = first.ctype.kind
    ident = sql.Identifier(first.column)
    if len(keys) > 1:
        lo = rng.lo.split(KEY_SEPARATOR, 1)[0] if rng.lo is not None else None
        hi = rng.hi.split(KEY_SEPARATOR, 1)[0] if rng.hi is not None else None
        if kind in ("text", "id") and base in STRING_TYPES:
            if kind == "id" and lo is not None:
                lo = lo[:15]
            facts = text_facts or TextKeyFacts("collate", False)
            cond = _text_bounds(ident, lo, hi, facts.order, hi_inclusive=True)
            return KeyPredicate(cond, f"first key field {first.column} between the range's first parts "
                                f"({_text_how(facts.order)})", facts.indexed)
        if kind == "int" and base in INT_BOUNDS:
            # the texts t with lo <= t <= hi are those with lo <= t < hi + NUL (NUL is the least byte)
            cond = _int_condition(ident, base, lo, None if hi is None else hi + KEY_SEPARATOR)
            return KeyPredicate(cond, f"first key field {first.column} between the range's first parts "
                                "(integer intervals)", True)
        return KeyPredicate(None, "no predicate: compound key whose first field is not text or integer")
    if kind in ("text", "id") and base in STRING_TYPES:
        lo = rng.lo[:15] if kind == "id" and rng.lo is not None else rng.lo
        facts = text_facts or TextKeyFacts("collate", False)
        hint = None
        if not facts.indexed:
            name = sql.Identifier(*table).as_string(None)
            col = sql.Identifier(first.column).as_string(None)
            hint = (f'CREATE INDEX ON {name} ({col} COLLATE "C")' if facts.order == "collate"
                    else f"CREATE INDEX ON {name} ({col})")
        return KeyPredicate(_text_bounds(ident, lo, rng.hi, facts.order), f"{first.column} in byte order "
                            f"({_text_how(facts.order)})", facts.indexed, hint)
    if kind == "int" and base in INT_BOUNDS:
        return KeyPredicate(_int_condition(ident, base, rng.lo, rng.hi), f"{first.column} as integer intervals",
                            True)
    if kind == "date" and base == "date":
        return KeyPredicate(_date_condition(ident, rng.lo, rng.hi), f"{first.column} as a date range", True)
    return KeyPredicate(None, f"no predicate: key {first.column} is {kind} on a {base or 'unknown'} column")


def _text_how(order: TextOrder) -> str:
    return {"native": "the column's collation", "pattern": "pattern operators", "collate": 'COLLATE "C"'}[order]


def _text_bounds(ident: sql.Identifier, lo: str | None, hi: str | None, order: TextOrder, *,
                 hi_inclusive: bool = False) -> sql.Composable:
    if order == "native":
        col: sql.Composable = ident
        ge, lt, le = ">=", "<", "<="
    elif order == "pattern":
        col, ge, lt, le = ident, "~>=~", "~<~", "~<=~"
    else:
        col = sql.SQL('{} COLLATE "C"').format(ident)
        ge, lt, le = ">=", "<", "<="
    parts: list[sql.Composable] = []
    if lo is not None:
        parts.append(sql.SQL("{} {} {}").format(col, sql.SQL(ge), sql.Literal(lo)))
    if hi is not None:
        parts.append(sql.SQL("{} {} {}").format(col, sql.SQL(le if hi_inclusive else lt), sql.Literal(hi)))
    return sql.SQL("({})").format(sql.SQL(" AND ").join(parts)) if parts else sql.SQL("TRUE")


# -- integers -------------------------------------------------------------------------------------
def _int_condition(ident: sql.Identifier, base: str, lo: str | None, hi: str | None) -> sql.Composable:
    low, high = INT_BOUNDS[base]
    spans = int_intervals(lo, hi, low, high)
    if not spans:
        return sql.SQL("FALSE")
    if spans == [(low, high)]:
        return sql.SQL("TRUE")
    parts = [sql.SQL("{} = {}").format(ident, sql.Literal(a)) if a == b else
             sql.SQL("{} BETWEEN {} AND {}").format(ident, sql.Literal(a), sql.Literal(b)) for a, b in spans]
    return sql.SQL("({})").format(sql.SQL(" OR ").join(parts))


# -- dates ----------------------------------------------------------------------------------------
def _as_date(text: str | None) -> date | None:
    if text is None or len(text) != 10:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _date_condition(ident: sql.Identifier, lo: str | None, hi: str | None) -> sql.Composable:
    """Dates of 4-digit years compare as their text; any other year is always included. A bound
    that is not a ``YYYY-MM-DD`` date (only a hand-made boundary could be) is widened to the next
    date text below or above it, or dropped."""
    parts: list[sql.Composable] = []
    if lo is not None:
        d = _as_date(lo[:10])
        if d is not None:  # texts >= lo start at lo's date (lo longer than 10: still that date's or later)
            parts.append(sql.SQL("{} >= {}::date").format(ident, sql.Literal(d.isoformat())))
    if hi is not None:
        d = _as_date(hi[:10])
        if d is not None:
            op = "<" if len(hi) == 10 else "<="  # "2024-01-01x" admits 2024-01-01 itself
            parts.append(sql.SQL("{} {} {}::date").format(ident, sql.SQL(op), sql.Literal(d.isoformat())))
    if not parts:
        return sql.SQL("TRUE")
    inside = sql.SQL(" AND ").join(parts)
    return sql.SQL("(({}) OR {} < '1000-01-01'::date OR {} >= '10000-01-01'::date)").format(inside, ident, ident)


# -- the catalog ----------------------------------------------------------------------------------
#: a btree index whose first column is the key, non-partial, with its collation and opclass name
_INDEXES_SQL: Final[str] = """
SELECT ic.collname, ic.collprovider, ic.collcollate, opc.opcname
  FROM pg_index i
  JOIN pg_class ix ON ix.oid = i.indexrelid
  JOIN pg_am am ON am.oid = ix.relam AND am.amname = 'btree'
  JOIN pg_opclass opc ON opc.oid = i.indclass[0]
  LEFT JOIN pg_collation ic ON ic.oid = i.indcollation[0]
 WHERE i.indrelid = %(rel)s::regclass AND i.indkey[0] = %(attnum)s AND i.indpred IS NULL AND i.indisvalid
"""
_COLUMN_SQL: Final[str] = """
SELECT a.attnum, c.collname, c.collprovider, c.collcollate,
       d.datlocprovider, d.datcollate
  FROM pg_attribute a
  LEFT JOIN pg_collation c ON c.oid = a.attcollation
  CROSS JOIN pg_database d
 WHERE a.attrelid = %(rel)s::regclass AND a.attname = %(col)s AND d.datname = current_database()
"""


def _bytewise(name: str | None, provider: str | None, collate: str | None, db_provider: str | None,
              db_collate: str | None) -> bool:
    """Whether a collation sorts text in byte order (code point order is UTF-8 byte order): libc's
    C and POSIX, and every builtin-provider locale (C, C.UTF-8, PG_UNICODE_FAST); ``default`` is
    the database's."""
    if name == "default":
        provider, collate = db_provider, db_collate
    if provider == "b":
        return True
    return provider == "c" and collate in ("C", "POSIX")


def text_key_facts(conn: object, schema: str, table: str, column: str) -> TextKeyFacts:
    """How a text key column can be compared in byte order, and whether an index serves it."""
    from psycopg import Connection

    assert isinstance(conn, Connection)
    rel = sql.Identifier(schema, table).as_string(conn)
    row = conn.execute(_COLUMN_SQL, {"rel": rel, "col": column}).fetchone()
    if row is None:
        return TextKeyFacts("collate", False)
    attnum, cname, cprov, ccoll, dprov, dcoll = row
    indexes = conn.execute(_INDEXES_SQL, {"rel": rel, "attnum": attnum}).fetchall()
    native = _bytewise(cname, cprov, ccoll, dprov, dcoll)
    if native:  # an index in the column's own (or another bytewise) collation serves plain comparisons
        # the planner matches an index to a comparison only in the very same collation
        return TextKeyFacts("native", any(n == cname and not op.endswith("_pattern_ops") for n, _, _, op in indexes))
    if any(n == "C" and not op.endswith("_pattern_ops") for n, _, _, op in indexes):
        return TextKeyFacts("collate", True)
    if any(op.endswith("_pattern_ops") for *_, op in indexes):
        return TextKeyFacts("pattern", True)
    return TextKeyFacts("collate", False)


def column_indexed(conn: object, schema: str, table: str, column: str) -> bool:
    """Whether a valid, non-partial btree index has ``column`` as its first column (an integer or
    date key's predicate is a set of ranges of the column's own order, which any such index serves)."""
    from psycopg import Connection

    assert isinstance(conn, Connection)
    rel = sql.Identifier(schema, table).as_string(conn)
    row = conn.execute(_COLUMN_SQL, {"rel": rel, "col": column}).fetchone()
    return row is not None and bool(conn.execute(_INDEXES_SQL, {"rel": rel, "attnum": row[0]}).fetchall())
