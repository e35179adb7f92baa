"""The SOQL subset the extractors use: a lark grammar, validation against describe, translation to SQL.

Supported: `SELECT f1, f2 … | COUNT() FROM Obj [WHERE cond] [ORDER BY f [ASC|DESC] [NULLS FIRST|LAST], …]
[LIMIT n] [OFFSET n]`, where `cond` combines comparisons (`= != < <= > >=`), `IN (…)`, `NOT IN (…)`,
`LIKE`, `NOT`, `AND`, `OR` and parentheses (AND and OR cannot be mixed without parentheses, as in
SOQL). Literals: strings with SOQL escapes, numbers, `null`, `true`/`false`, dates (`2026-01-02`)
and datetimes (`2026-01-02T03:04:05Z`, `.000Z`, `+00:00`).

Semantics follow Salesforce where it differs from SQL, because extractors are written against
Salesforce's behaviour, not PostgreSQL's:

* field and object names are case-insensitive and map to their canonical API names;
* `null` is a value: `x = null`, `x != null`; `x != 'a'` and `x NOT IN (…)` include rows where x is null;
  every predicate is two-valued, so `NOT` never drops null rows silently;
* `=`, `!=`, `IN` and `LIKE` on text fields are case-insensitive; `<`, `>` and ORDER BY compare bytes
  (`COLLATE "C"`), which is exactly Salesforce's order for Ids (the only field ranges are used on);
* 15-character Ids match their 18-character form in `=`, `!=` and `IN`;
* ORDER BY defaults to NULLS FIRST for ASC and NULLS LAST for DESC; results are always totally
  ordered (Id is appended as a tie-breaker, and is the order when there is no ORDER BY).

Literals are always bound as parameters and names always quoted with `psycopg.sql.Identifier`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError
from psycopg import sql

from engine.core.sfid import suffix as id_suffix
from engine.local.sfapi import schema
from engine.local.sfapi.schema import FieldDef, SObject

MAX_OFFSET = 2000

GRAMMAR = r"""
start: query
query: SELECT select_list FROM NAME where_clause? order_clause? limit_clause? offset_clause?
select_list: count_all | field_ref ("," field_ref)*
count_all: COUNT "(" ")"
field_ref: NAME ("." NAME)*
where_clause: WHERE condition
?condition: unary | and_cond | or_cond
and_cond: unary (AND unary)+
or_cond: unary (OR unary)+
?unary: NOT unary                                 -> not_cond
      | "(" condition ")"
      | field_ref OP value                        -> compare
      | field_ref IN "(" value ("," value)* ")"   -> in_list
      | field_ref NOT IN "(" value ("," value)* ")" -> not_in_list
      | field_ref LIKE value                      -> like
value: STRING | NUMBER | DATE | DATETIME | NULL | TRUE | FALSE
order_clause: ORDER BY order_item ("," order_item)*
order_item: field_ref (ASC | DESC)? (NULLS (FIRST | LAST))?
limit_clause: LIMIT NUMBER
offset_clause: OFFSET NUMBER

SELECT.2: /select\b/i
FROM.2: /from\b/i
WHERE.2: /where\b/i
AND.2: /and\b/i
OR.2: /or\b/i
NOT.2: /not\b/i
IN.2: /in\b/i
LIKE.2: /like\b/i
ORDER.2: /order\b/i
BY.2: /by\b/i
ASC.2: /asc\b/i
DESC.2: /desc\b/i
NULLS.2: /nulls\b/i
FIRST.2: /first\b/i
LAST.2: /last\b/i
LIMIT.2: /limit\b/i
OFFSET.2: /offset\b/i
NULL.2: /null\b/i
TRUE.2: /true\b/i
FALSE.2: /false\b/i
COUNT.2: /count\b/i
NAME: /[A-Za-z_][A-Za-z0-9_]*/
STRING: /'(?:[^'\\]|\\.)*'/s
DATETIME.4: /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?(Z|[+-]\d{2}:?\d{2})/i
DATE.3: /\d{4}-\d{2}-\d{2}/
NUMBER.2: /[+-]?\d+(\.\d+)?/
OP: /!=|<=|>=|=|<|>/
%import common.WS
%ignore WS
"""


class SoqlError(Exception):
    """A query Salesforce would reject: `error_code` and `message` go into the JSON error body as-is."""

    def __init__(self, error_code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message
        self.status = status


# -- AST ------------------------------------------------------------------------------------------

Pos = tuple[int, int]


@dataclass(frozen=True)
class FieldRef:
    path: tuple[str, ...]
    pos: Pos


@dataclass(frozen=True)
class Lit:
    kind: str  # STRING NUMBER DATE DATETIME NULL TRUE FALSE
    raw: str
    pos: Pos


@dataclass(frozen=True)
class Compare:
    field: FieldRef
    op: str
    value: Lit


@dataclass(frozen=True)
class InList:
    field: FieldRef
    values: tuple[Lit, ...]
    negated: bool


@dataclass(frozen=True)
class Like:
    field: FieldRef
    value: Lit


@dataclass(frozen=True)
class BoolOp:
    op: str  # AND | OR
    items: tuple[Any, ...]


@dataclass(frozen=True)
class Not:
    item: Any


@dataclass(frozen=True)
class OrderItem:
    field: FieldRef
    desc: bool
    nulls_first: bool


@dataclass(frozen=True)
class ParsedQuery:
    fields: tuple[FieldRef, ...] | None  # None for COUNT()
    sobject: str
    sobject_pos: Pos
    where: Any
    order_by: tuple[OrderItem, ...]
    limit: Lit | None
    offset: Lit | None


@v_args(inline=True)
class _ToAst(Transformer):  # type: ignore[type-arg]
    def start(self, q: ParsedQuery) -> ParsedQuery:
        return q

    def query(self, _sel: Token, fields: Any, _from: Token, name: Token, *rest: Any) -> ParsedQuery:
        where = order = limit = offset = None
        for part in rest:
            if part is None:
                continue
            kind, val = part
            if kind == "where":
                where = val
            elif kind == "order":
                order = val
            elif kind == "limit":
                limit = val
            else:
                offset = val
        return ParsedQuery(fields, str(name), (name.line, name.column), where, order or (), limit, offset)

    def select_list(self, *items: Any) -> tuple[FieldRef, ...] | None:
        if len(items) == 1 and items[0] == "COUNT":
            return None
        return tuple(items)

    def count_all(self, _tok: Token) -> str:
        return "COUNT"

    def field_ref(self, *names: Token) -> FieldRef:
        return FieldRef(tuple(str(n) for n in names), (names[0].line, names[0].column))

    def where_clause(self, _kw: Token, cond: Any) -> tuple[str, Any]:
        return ("where", cond)

    def and_cond(self, *items: Any) -> BoolOp:
        return BoolOp("AND", tuple(i for i in items if not isinstance(i, Token)))

    def or_cond(self, *items: Any) -> BoolOp:
        return BoolOp("OR", tuple(i for i in items if not isinstance(i, Token)))

    def not_cond(self, _kw: Token, item: Any) -> Not:
        return Not(item)

    def compare(self, f: FieldRef, op: Token, value: Lit) -> Compare:
        return Compare(f, str(op), value)

    def in_list(self, f: FieldRef, _kw: Token, *values: Lit) -> InList:
        return InList(f, tuple(values), False)

    def not_in_list(self, f: FieldRef, _not: Token, _in: Token, *values: Lit) -> InList:
        return InList(f, tuple(values), True)

    def like(self, f: FieldRef, _kw: Token, value: Lit) -> Like:
        return Like(f, value)

    def value(self, tok: Token) -> Lit:
        kind = tok.type if tok.type in ("STRING", "NUMBER", "DATE", "DATETIME") else tok.type
        return Lit(kind, str(tok), (tok.line, tok.column))

    def order_clause(self, _o: Token, _b: Token, *items: OrderItem) -> tuple[str, Any]:
        return ("order", tuple(items))

    def order_item(self, f: FieldRef, *mods: Token) -> OrderItem:
        kinds = [m.type for m in mods]
        desc = "DESC" in kinds
        if "FIRST" in kinds:
            nulls_first = True
        elif "LAST" in kinds:
            nulls_first = False
        else:
            nulls_first = not desc
        return OrderItem(f, desc, nulls_first)

    def limit_clause(self, _kw: Token, n: Token) -> tuple[str, Lit]:
        return ("limit", Lit("NUMBER", str(n), (n.line, n.column)))

    def offset_clause(self, _kw: Token, n: Token) -> tuple[str, Lit]:
        return ("offset", Lit("NUMBER", str(n), (n.line, n.column)))


@lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(GRAMMAR, parser="lalr", lexer="contextual", propagate_positions=False, maybe_placeholders=False)


def _located(text: str, pos: Pos, msg: str) -> str:
    """Salesforce's error layout: the query line, a caret, `ERROR at Row:r:Column:c`, the message."""
    line, col = pos
    lines = text.split("\n")
    src = lines[line - 1] if 0 < line <= len(lines) else text
    return f"\n{src}\n{' ' * max(col - 1, 0)}^\nERROR at Row:{line}:Column:{col}\n{msg}"


def parse(text: str) -> ParsedQuery:
    """Parse SOQL into an AST, or raise SoqlError(MALFORMED_QUERY) located like Salesforce does."""
    try:
        tree = _parser().parse(text)
    except UnexpectedToken as exc:
        tok = exc.token
        if tok.type == "$END":
            raise SoqlError("MALFORMED_QUERY", _located(text, (exc.line if exc.line > 0 else 1, max(exc.column, 1)),
                                                       "unexpected token: <EOF>")) from None
        raise SoqlError("MALFORMED_QUERY", _located(text, (tok.line, tok.column),
                                                   f"unexpected token: '{tok}'")) from None
    except UnexpectedCharacters as exc:
        raise SoqlError("MALFORMED_QUERY", f"line {exc.line}:{exc.column - 1} no viable alternative at character "
                                           f"'{exc.char}'") from None
    except (UnexpectedEOF, UnexpectedInput):
        raise SoqlError("MALFORMED_QUERY", "unexpected token: <EOF>") from None
    try:
        return _ToAst().transform(tree)  # type: ignore[no-any-return]
    except VisitError as exc:  # pragma: no cover - a grammar/transformer mismatch is a bug
        raise SoqlError("MALFORMED_QUERY", str(exc.orig_exc)) from None


# -- validation -------------------------------------------------------------------------------------

_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}


def unescape_string(raw: str, *, like: bool = False) -> str:
    """Decode a quoted SOQL string literal. For LIKE, keep `\\%`, `\\_` and `\\\\` escaped for PostgreSQL."""
    body = raw[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1] if i + 1 < len(body) else ""
        if like and nxt in ("%", "_", "\\"):
            out.append("\\" + nxt)
            i += 2
        elif nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", body[i + 2 : i + 6] or ""):
            out.append(chr(int(body[i + 2 : i + 6], 16)))
            i += 6
        else:
            raise SoqlError("MALFORMED_QUERY", f"Invalid string literal '{body}'. Illegal character sequence "
                                               f"'\\{nxt}' in string literal.")
    return "".join(out)


_TYPE_WORD = {"currency": "double", "double": "double", "percent": "double", "int": "int", "long": "long",
              "boolean": "boolean", "date": "date", "datetime": "dateTime"}
_ID_LIKE = re.compile(r"^[0-9A-Za-z]{15}(?:[0-9A-Za-z]{3})?$")


def normalize_id(value: str) -> str | None:
    """The 18-character form of a well-formed 15/18-char id (suffix recomputed), else None."""
    if not _ID_LIKE.match(value):
        return None
    return value[:15] + id_suffix(value[:15])


def _parse_datetime(raw: str) -> dt.datetime:
    s = raw.upper().replace("Z", "+00:00")
    m = re.match(r"^(.*T\d{2}:\d{2}:\d{2})(\.\d+)?([+-]\d{2}):?(\d{2})$", s)
    if not m:
        raise ValueError(raw)
    frac = (m.group(2) or ".000")[1:].ljust(3, "0")
    return dt.datetime.fromisoformat(f"{m.group(1)}.{frac}{m.group(3)}:{m.group(4)}")


@dataclass(frozen=True)
class Query:
    """A validated query: canonical fields and typed literal values, ready to translate."""

    text: str
    sobject: SObject
    fields: tuple[FieldDef, ...]  # empty for COUNT()
    is_count: bool
    where: Any  # tree of ("cmp", f, op, value) | ("in", f, values, negated) | ("like", f, pattern)
    #             | ("and"|"or", items) | ("not", item)
    order_by: tuple[tuple[FieldDef, bool, bool], ...]  # (field, desc, nulls_first)
    limit: int | None
    offset: int | None


Lookup = Callable[[str], SObject | None]


class _Validator:
    def __init__(self, text: str, obj: SObject) -> None:
        self.text = text
        self.obj = obj

    def field(self, ref: FieldRef) -> FieldDef:
        path = ref.path
        if len(path) > 1 and path[0].lower() == self.obj.name.lower():
            path = path[1:]
        if len(path) > 1:
            raise SoqlError("INVALID_FIELD", _located(
                self.text, ref.pos,
                f"Didn't understand relationship '{path[0]}' in field path. If you are attempting to use a custom "
                "relationship, be sure to append the '__r' after the custom relationship name. Please reference "
                "your WSDL or the describe call for the appropriate names."))
        f = self.obj.field(path[0])
        if f is None:
            raise SoqlError("INVALID_FIELD", _located(
                self.text, ref.pos,
                f"No such column '{path[0]}' on entity '{self.obj.name}'. If you are attempting to use a custom "
                "field, be sure to append the '__c' after the custom field name. Please reference your WSDL or "
                "the describe call for the appropriate names."))
        return f

    def _type_error(self, f: FieldDef, lit: Lit) -> SoqlError:
        if f.is_text or f.type in schema.ID_TYPES:
            msg = f"value of filter criterion for field '{f.name}' must be of type string and should be enclosed in quotes"
        else:
            word = _TYPE_WORD.get(f.type, f.type)
            msg = (f"value of filter criterion for field '{f.name}' must be of type {word} and should not be "
                   "enclosed in quotes")
        return SoqlError("INVALID_FIELD", _located(self.text, lit.pos, msg))

    def value(self, f: FieldDef, lit: Lit, op: str) -> Any:
        """The typed Python value of a literal compared with field `f` (None for null)."""
        if lit.kind == "NULL":
            if op not in ("=", "!=", "in"):
                raise SoqlError("MALFORMED_QUERY", _located(self.text, lit.pos,
                                                           "null can only be compared with = and !="))
            return None
        t = f.type
        if f.is_text or t in schema.ID_TYPES:
            if lit.kind != "STRING":
                raise self._type_error(f, lit)
            s = unescape_string(lit.raw)
            if t in schema.ID_TYPES and op in ("=", "!=", "in"):
                norm = normalize_id(s)
                if norm is None:
                    raise SoqlError("INVALID_QUERY_FILTER_OPERATOR", _located(self.text, lit.pos,
                                                                             f"invalid ID field: {s}"))
                return norm
            return s
        if t in schema.NUMERIC_TYPES or t in schema.INT_TYPES:
            if lit.kind != "NUMBER":
                raise self._type_error(f, lit)
            try:
                return Decimal(lit.raw)
            except InvalidOperation:  # pragma: no cover - the lexer only lets numbers through
                raise self._type_error(f, lit) from None
        if t == "boolean":
            if lit.kind not in ("TRUE", "FALSE"):
                raise self._type_error(f, lit)
            return lit.kind == "TRUE"
        if t == "date":
            if lit.kind != "DATE":
                raise self._type_error(f, lit)
            try:
                return dt.date.fromisoformat(lit.raw)
            except ValueError:
                raise SoqlError("MALFORMED_QUERY", _located(self.text, lit.pos, f"invalid date: {lit.raw}")) from None
        if t == "datetime":
            if lit.kind != "DATETIME":
                raise self._type_error(f, lit)
            try:
                return _parse_datetime(lit.raw)
            except ValueError:
                raise SoqlError("MALFORMED_QUERY", _located(self.text, lit.pos,
                                                           f"invalid dateTime: {lit.raw}")) from None
        raise self._type_error(f, lit)

    def filterable(self, f: FieldDef, ref: FieldRef) -> FieldDef:
        if not f.filterable:
            raise SoqlError("INVALID_FIELD", _located(self.text, ref.pos,
                                                      f"field '{f.name}' can not be filtered in a query call"))
        return f

    def cond(self, node: Any) -> Any:
        if isinstance(node, BoolOp):
            return (node.op.lower(), tuple(self.cond(i) for i in node.items))
        if isinstance(node, Not):
            return ("not", self.cond(node.item))
        if isinstance(node, Compare):
            f = self.filterable(self.field(node.field), node.field)
            if f.type == "boolean" and node.op not in ("=", "!="):
                raise SoqlError("INVALID_FIELD", _located(self.text, node.value.pos,
                                                          f"invalid operator on boolean field: {node.op}"))
            return ("cmp", f, node.op, self.value(f, node.value, node.op))
        if isinstance(node, InList):
            f = self.filterable(self.field(node.field), node.field)
            return ("in", f, tuple(self.value(f, v, "in") for v in node.values), node.negated)
        if isinstance(node, Like):
            f = self.filterable(self.field(node.field), node.field)
            if not f.is_text:
                raise SoqlError("INVALID_FIELD", _located(self.text, node.field.pos,
                                                          f"invalid operator on {f.type} field: LIKE"))
            if node.value.kind != "STRING":
                raise self._type_error(f, node.value)
            return ("like", f, unescape_string(node.value.raw, like=True))
        raise AssertionError(node)  # pragma: no cover


def compile_query(text: str, *, lookup: Lookup = schema.sobject, bulk: bool = False) -> Query:
    """Parse and validate a query against the org's describe; raise SoqlError as Salesforce would."""
    if not text or not text.strip():
        raise SoqlError("MALFORMED_QUERY", "unexpected token: <EOF>")
    p = parse(text)
    obj = lookup(p.sobject)
    if obj is None:
        raise SoqlError("INVALID_TYPE", _located(
            text, p.sobject_pos,
            f"sObject type '{p.sobject}' is not supported. If you are attempting to use a custom object, be sure to "
            "append the '__c' after the entity name. Please reference your WSDL or the describe call for the "
            "appropriate names."))
    v = _Validator(text, obj)
    fields: list[FieldDef] = []
    if p.fields is not None:
        seen: set[str] = set()
        for ref in p.fields:
            f = v.field(ref)
            if f.name in seen:
                raise SoqlError("MALFORMED_QUERY", f"duplicate field selected: {f.name}")
            seen.add(f.name)
            fields.append(f)
    where = v.cond(p.where) if p.where is not None else None
    order = []
    for item in p.order_by:
        f = v.field(item.field)
        if not f.sortable:
            raise SoqlError("INVALID_FIELD", _located(text, item.field.pos,
                                                      f"field '{f.name}' can not be sorted in a query call"))
        order.append((f, item.desc, item.nulls_first))
    limit = _int_clause(text, p.limit, "LIMIT")
    offset = _int_clause(text, p.offset, "OFFSET")
    if offset is not None and offset > MAX_OFFSET:
        raise SoqlError("NUMBER_OUTSIDE_VALID_RANGE", f"Maximum SOQL offset allowed is {MAX_OFFSET}")
    if bulk:
        if p.fields is None:
            raise SoqlError("INVALIDJOB", "Aggregate queries are not supported by Bulk API 2.0: COUNT()")
        if offset is not None:
            raise SoqlError("INVALIDJOB", "OFFSET is not supported by Bulk API 2.0")
    return Query(text, obj, tuple(fields), p.fields is None, where, tuple(order), limit, offset)


def _int_clause(text: str, lit: Lit | None, what: str) -> int | None:
    if lit is None:
        return None
    if not re.fullmatch(r"\d+", lit.raw):
        raise SoqlError("MALFORMED_QUERY", _located(text, lit.pos, f"unexpected token: '{lit.raw}'"))
    return int(lit.raw)


# -- translation ------------------------------------------------------------------------------------

_OPS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def _col(f: FieldDef) -> sql.Composable:
    return sql.Identifier(f.name)


class _SqlBuilder:
    """Accumulates parameters while turning the validated condition tree into SQL."""

    def __init__(self) -> None:
        self.params: list[Any] = []

    def p(self, value: Any) -> sql.Composable:
        self.params.append(value)
        return sql.Placeholder()

    def _two_valued(self, f: FieldDef, expr: sql.Composable) -> sql.Composable:
        # nullable columns: a comparison with null must be false (not unknown), as in SOQL
        return sql.SQL("({}) IS TRUE").format(expr) if f.nillable else expr

    def cond(self, node: Any) -> sql.Composable:
        kind = node[0]
        if kind in ("and", "or"):
            joiner = sql.SQL(" AND " if kind == "and" else " OR ")
            return sql.SQL("({})").format(joiner.join(self.cond(i) for i in node[1]))
        if kind == "not":
            return sql.SQL("(NOT ({}))").format(self.cond(node[1]))
        if kind == "cmp":
            return self.compare(node[1], node[2], node[3])
        if kind == "in":
            return self.in_list(node[1], node[2], node[3])
        if kind == "like":
            f, pattern = node[1], node[2]
            return self._two_valued(f, sql.SQL("{} ILIKE {}").format(_col(f), self.p(pattern)))
        raise AssertionError(node)  # pragma: no cover

    def compare(self, f: FieldDef, op: str, value: Any) -> sql.Composable:
        c = _col(f)
        if value is None:
            return sql.SQL("{} IS NULL" if op == "=" else "{} IS NOT NULL").format(c)
        ci = f.is_text and op in ("=", "!=")
        lhs = sql.SQL("lower({})").format(c) if ci else c
        rhs = sql.SQL("lower({})").format(self.p(value)) if ci else self.p(value)
        if op == "!=":
            return sql.SQL("{} IS DISTINCT FROM {}").format(lhs, rhs)
        return self._two_valued(f, sql.SQL("{} {} {}").format(lhs, sql.SQL(_OPS[op]), rhs))

    def in_list(self, f: FieldDef, values: Sequence[Any], negated: bool) -> sql.Composable:
        c = _col(f)
        has_null = any(v is None for v in values)
        vals = [v for v in values if v is not None]
        parts: list[sql.Composable] = []
        if vals:
            if f.is_text:
                arr = sql.SQL("ARRAY(SELECT lower(x) FROM unnest({}::text[]) AS x)").format(self.p(vals))
                member = sql.SQL("lower({}) = ANY({})").format(c, arr)
            else:
                member = sql.SQL("{} = ANY({})").format(c, self.p(vals))
            parts.append(member)
        if has_null:
            parts.append(sql.SQL("{} IS NULL").format(c))
        inside = sql.SQL("({})").format(sql.SQL(" OR ").join(parts)) if parts else sql.SQL("false")
        if negated:
            return sql.SQL("({}) IS NOT TRUE").format(inside)
        return sql.SQL("({}) IS TRUE").format(inside) if f.nillable else inside


def where_sql(q: Query, *, include_deleted: bool) -> tuple[sql.Composable, list[Any]]:
    """The WHERE clause (including the IsDeleted filter of `query` vs `queryAll`) and its parameters."""
    b = _SqlBuilder()
    parts: list[sql.Composable] = []
    if q.sobject.has_is_deleted and not include_deleted:
        parts.append(sql.SQL('"IsDeleted" = false'))
    if q.where is not None:
        parts.append(b.cond(q.where))
    if not parts:
        return sql.SQL(""), b.params
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(parts), b.params


def order_sql(q: Query) -> sql.Composable:
    """ORDER BY with explicit NULLS placement and Id as the final tie-breaker (stable paging)."""
    items = []
    has_id = False
    for f, desc, nulls_first in q.order_by:
        has_id = has_id or f.name == "Id"
        items.append(sql.SQL("{} {} NULLS {}").format(_col(f), sql.SQL("DESC" if desc else "ASC"),
                                                    sql.SQL("FIRST" if nulls_first else "LAST")))
    if not has_id:
        items.append(sql.SQL('"Id" ASC'))
    return sql.SQL(" ORDER BY ") + sql.SQL(", ").join(items)


def select_sql(q: Query, columns: Sequence[sql.Composable], *, include_deleted: bool,
               max_rows: int | None = None) -> tuple[sql.Composed, list[Any]]:
    """`SELECT columns FROM table WHERE … ORDER BY … LIMIT … OFFSET …` with its parameters.

    `max_rows` caps the LIMIT further (the REST fast path reads one page plus one row).
    """
    where, params = where_sql(q, include_deleted=include_deleted)
    stmt = sql.SQL("SELECT {} FROM {}{}{}").format(sql.SQL(", ").join(columns), sql.Identifier(q.sobject.name),
                                                   where, order_sql(q))
    limit = q.limit
    if max_rows is not None:
        limit = max_rows if limit is None else min(limit, max_rows)
    if limit is not None:
        stmt = stmt + sql.SQL(" LIMIT {}").format(sql.Placeholder())
        params.append(limit)
    if q.offset:
        stmt = stmt + sql.SQL(" OFFSET {}").format(sql.Placeholder())
        params.append(q.offset)
    return stmt, params


def count_sql(q: Query, *, include_deleted: bool) -> tuple[sql.Composed, list[Any]]:
    """`SELECT count(*)` over the query's rows (honouring LIMIT and OFFSET)."""
    inner, params = select_sql(q, [sql.SQL("1")], include_deleted=include_deleted)
    return sql.SQL("SELECT count(*) FROM ({}) AS q").format(inner), params


# -- value formatting in SQL ---------------------------------------------------------------------

_CSV_DATETIME = 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'
_JSON_DATETIME = 'YYYY-MM-DD"T"HH24:MI:SS.MS"+0000"'
_NUMERIC_HISTORY_TYPES = ("Currency", "Double", "Percent")


def csv_expr(f: FieldDef) -> sql.Composable:
    """A text expression rendering the field the way Bulk API CSV does (NULL stays NULL)."""
    c = _col(f)
    t = f.type
    if t == "boolean":
        return sql.SQL("CASE WHEN {c} THEN 'true' WHEN NOT {c} THEN 'false' END").format(c=c)
    if t in schema.NUMERIC_TYPES or t in schema.INT_TYPES:
        return sql.SQL("{}::text").format(c)
    if t == "date":
        return sql.SQL("to_char({}, 'YYYY-MM-DD')").format(c)
    if t == "datetime":
        return sql.SQL("to_char({} AT TIME ZONE 'UTC', {})").format(c, sql.Literal(_CSV_DATETIME))
    return c


def json_expr(f: FieldDef, obj: SObject) -> sql.Composable:
    """A text expression holding the field's JSON value as the REST API renders it (`null` for NULL)."""
    c = _col(f)
    t = f.type
    if t == "boolean":
        e: sql.Composable = sql.SQL("CASE WHEN {c} THEN 'true' WHEN NOT {c} THEN 'false' END").format(c=c)
    elif t in schema.NUMERIC_TYPES or t in schema.INT_TYPES:
        e = sql.SQL("{}::text").format(c)
    elif t == "date":
        e = sql.SQL("to_json(to_char({}, 'YYYY-MM-DD'))::text").format(c)
    elif t == "datetime":
        e = sql.SQL("to_json(to_char({} AT TIME ZONE 'UTC', {}))::text").format(c, sql.Literal(_JSON_DATETIME))
    elif t == "anyType" and obj.field("DataType") is not None:
        # history values: numbers for numeric data types (as Salesforce sends them), strings otherwise
        e = sql.SQL("CASE WHEN \"DataType\" = ANY({types}) AND {c} ~ '^-?[0-9]+([.][0-9]+)?$' THEN {c} "
                    "ELSE to_json({c})::text END").format(
            c=c, types=sql.Literal(list(_NUMERIC_HISTORY_TYPES)))
    else:
        e = sql.SQL("to_json({})::text").format(c)
    return sql.SQL("COALESCE({}, 'null')").format(e)


def json_record_expr(q: Query, version: str) -> sql.Composable:
    """One text expression producing a whole REST record object, keys in SELECT order."""
    obj = q.sobject
    head = '{"attributes":{"type":"' + obj.name + '","url":"/services/data/v' + version + "/sobjects/" + obj.name + "/"
    parts: list[sql.Composable] = [sql.Literal(head), sql.SQL('"Id"'), sql.Literal('"}')]
    for f in q.fields:
        parts.append(sql.Literal(',"' + f.name + '":'))
        parts.append(json_expr(f, obj))
    parts.append(sql.Literal("}"))
    return sql.SQL(" || ").join(parts)
