"""What recon puts into SOQL from data: record ids and ``--source-where`` conditions, checked so that
neither can change the query's shape.

SOQL has no bind parameters over the REST and Bulk APIs, so every value recon sends is text inside
the query. Two rules keep that text from being read as anything but a value or a filter:

* a record id goes into a query only when :func:`engine.core.sfid.is_valid` accepts it (15 or 18
  letters and digits, the 18-character suffix matching its body): such an id cannot hold a quote;
* a condition is parsed as exactly one SOQL condition expression with a grammar of the WHERE clause
  (lark, LALR), every field it names is looked up in the sObject's describe, and the query gets the
  condition re-written from the parse tree, not the user's text. So there is no way to close the
  WHERE clause and append ``LIMIT``, ``ORDER BY``, ``FROM``, a second query or a semi-join: the
  grammar has no such tokens, and what is sent is only what was parsed.

Why a grammar rather than a pattern or a blocklist: a condition is nested (parentheses, ``NOT``,
``IN`` lists, quoted strings with escapes), and only a parser tells a quote inside a string from
one that closes it. Why lark: it is a well-kept, pure-Python parser generator with no dependencies,
and its LALR parser with a contextual lexer answers in microseconds; the local test org already
parses full SOQL with it (``engine.local``, which product code may not import), so this module
keeps its own grammar, limited to the WHERE expression.

The subset: comparisons ``= != < <= > >=``, ``LIKE``, ``IN``/``NOT IN`` lists, ``INCLUDES``/
``EXCLUDES`` (multi-select picklists), ``NOT``, ``AND``, ``OR`` and parentheses (``AND`` and ``OR``
cannot be mixed without parentheses, as in SOQL); literals: strings (SOQL escapes only), numbers,
``null``, ``true``/``false``, dates, datetimes and date literals (``TODAY``, ``LAST_N_DAYS:30``…);
fields by name or through a relationship (``Owner.IsActive``), optionally inside a date function
(``CALENDAR_YEAR(CreatedDate)``, with ``convertTimezone``). Currency literals (``USD5000``),
semi-joins and geolocation ``DISTANCE`` are not accepted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import polars as pl
from lark import Lark, Token, Tree
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from engine.core import sfid
from engine.core.errors import UsageError

_DATE_FUNCTIONS = ("CALENDAR_MONTH", "CALENDAR_QUARTER", "CALENDAR_YEAR", "DAY_IN_MONTH", "DAY_IN_WEEK",
                   "DAY_IN_YEAR", "DAY_ONLY", "FISCAL_MONTH", "FISCAL_QUARTER", "FISCAL_YEAR", "HOUR_IN_DAY",
                   "WEEK_IN_MONTH", "WEEK_IN_YEAR")
_PERIODS = "DAYS|WEEKS|MONTHS|QUARTERS|YEARS|FISCAL_QUARTERS|FISCAL_YEARS"

GRAMMAR = r"""
?start: condition
?condition: unary | and_cond | or_cond
and_cond: unary (AND unary)+
or_cond: unary (OR unary)+
?unary: NOT unary                                        -> not_cond
      | "(" condition ")"                                -> group
      | operand OP value                                 -> compare
      | operand LIKE STRING                              -> like
      | operand IN "(" value ("," value)* ")"            -> in_list
      | operand NOT IN "(" value ("," value)* ")"        -> not_in_list
      | operand INCLUDES "(" STRING ("," STRING)* ")"    -> includes
      | operand EXCLUDES "(" STRING ("," STRING)* ")"    -> excludes
?operand: field_ref
        | DATE_FN "(" field_or_tz ")"                    -> date_fn
?field_or_tz: field_ref
            | CONVERT_TZ "(" field_ref ")"               -> convert_tz
field_ref: NAME ("." NAME)*
?value: STRING | NUMBER | DATE | DATETIME | NULL | TRUE | FALSE | DATE_LITERAL

AND.2: /and\b/i
OR.2: /or\b/i
NOT.2: /not\b/i
IN.2: /in\b/i
LIKE.2: /like\b/i
INCLUDES.2: /includes\b/i
EXCLUDES.2: /excludes\b/i
NULL.2: /null\b/i
TRUE.2: /true\b/i
FALSE.2: /false\b/i
DATE_FN.3: /(""" + "|".join(_DATE_FUNCTIONS) + r""")\b/i
CONVERT_TZ.3: /converttimezone\b/i
DATE_LITERAL.3: /(YESTERDAY|TODAY|TOMORROW|(LAST|THIS|NEXT)_(WEEK|MONTH|QUARTER|YEAR|FISCAL_QUARTER|FISCAL_YEAR)|(LAST|NEXT)_90_DAYS|(LAST|NEXT)_N_(""" + _PERIODS + r"""):\d+|N_(""" + _PERIODS + r""")_AGO:\d+)\b/i
NAME: /[A-Za-z][A-Za-z0-9_]*/
STRING: /'(?:[^'\\]|\\[nNrRtTbBfF"'\\_%]|\\u[0-9a-fA-F]{4})*'/
DATETIME.5: /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?(Z|[+-]\d{2}:\d{2})/
DATE.4: /\d{4}-\d{2}-\d{2}/
NUMBER.3: /[+-]?\d+(\.\d+)?/
OP: /!=|<=|>=|=|<|>/
%import common.WS
%ignore WS
"""


@lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(GRAMMAR, parser="lalr", lexer="contextual", maybe_placeholders=False)


def _short(text: str, limit: int = 80) -> str:
    """The user's text for a one-line message: repr-quoted (so newlines and quotes stay visible)."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


# -- record ids -----------------------------------------------------------------------------------
def check_ids(ids: Iterable[str], fix: str = "fix the key values (rerun `recon diff` for fresh differences)"
              ) -> list[str]:
    """The distinct ids, sorted; a value that is no Salesforce id is refused before any query is
    built (exit 2), so an id can never carry a quote into ``Id IN (…)``. Checked column-wise
    (:func:`engine.core.sfid.are_valid`): explain sends every differing key of a diff."""
    s = pl.Series("id", list(ids), dtype=pl.Utf8, strict=False).unique().sort()  # byte order, as sorted()
    ok = sfid.are_valid(s)
    if not ok.all():
        bad = s[int(np.argmin(ok))]
        shown = _short(bad) if isinstance(bad, str) else repr(bad)
        raise UsageError(f"{shown} is not a Salesforce record id (15 or 18 letters and digits, an 18-character "
                         f"id ending in its case suffix): it is not sent to Salesforce; {fix}")
    return s.to_list()


def id_list(ids: Iterable[str]) -> str:
    """``'a', 'b'`` for ``Id IN (…)``, from ids :func:`check_ids` accepted."""
    return ", ".join(f"'{i}'" for i in check_ids(ids))


# -- conditions -----------------------------------------------------------------------------------
class _Fields:
    """The describe's field and relationship names, case-insensitively, to their canonical spelling."""

    def __init__(self, sobject: str, fields: Iterable[Mapping[str, Any]]) -> None:
        self.sobject = sobject
        self.fields: dict[str, Mapping[str, Any]] = {}
        self.relations: dict[str, str] = {}
        for f in fields:
            self.fields[str(f["name"]).lower()] = f
            rel = f.get("relationshipName")
            if rel:
                self.relations[str(rel).lower()] = str(rel)

    def resolve(self, path: list[str], text: str) -> str:
        if len(path) == 1:
            f = self.fields.get(path[0].lower())
            if f is None:
                raise UsageError(f"the Salesforce condition {_short(text)} names {path[0]!r}, which is not a field "
                                 f"of {self.sobject}: fix the field name", field="where")
            if f.get("filterable", True) is False:
                raise UsageError(f"the Salesforce condition {_short(text)} filters on {f['name']!r}, which "
                                 f"{self.sobject} does not allow in a WHERE clause: filter on another field",
                                 field="where")
            return str(f["name"])
        rel = self.relations.get(path[0].lower())
        if rel is None:
            raise UsageError(f"the Salesforce condition {_short(text)} names {'.'.join(path)!r}, but {path[0]!r} is "
                             f"not a relationship of {self.sobject}: fix the field name", field="where")
        return ".".join([rel, *path[1:]])


def _render(node: Tree | Token, names: _Fields, text: str) -> str:
    """SOQL text from the parse tree: only tokens the grammar matched, fields in their describe
    spelling, keywords upper case."""
    if isinstance(node, Token):
        if node.type in ("AND", "OR", "NOT", "IN", "LIKE", "INCLUDES", "EXCLUDES", "NULL", "TRUE", "FALSE",
                         "DATE_FN", "DATE_LITERAL"):
            return node.value.upper()
        if node.type == "CONVERT_TZ":
            return "convertTimezone"
        return str(node.value)
    kids = node.children
    r = [_render(k, names, text) if isinstance(k, Tree | Token) else str(k) for k in kids]
    match node.data:
        case "field_ref":
            return names.resolve([str(k) for k in kids], text)
        case "and_cond" | "or_cond":
            return " ".join(r)
        case "not_cond":
            return f"NOT {r[1]}"
        case "group":
            return f"({r[0]})"
        case "compare":
            return f"{r[0]} {r[1]} {r[2]}"
        case "like":
            return f"{r[0]} LIKE {r[2]}"
        case "in_list" | "includes" | "excludes":
            return f"{r[0]} {r[1]} ({', '.join(r[2:])})"
        case "not_in_list":
            return f"{r[0]} NOT IN ({', '.join(r[3:])})"
        case "date_fn" | "convert_tz":
            return f"{r[0]}({r[1]})"
    raise AssertionError(f"unrendered SOQL node {node.data}")  # the grammar and this function disagree


def _syntax_error(text: str, exc: LarkError) -> UsageError:
    where = ""
    if isinstance(exc, UnexpectedInput):
        col = getattr(exc, "column", None)
        if isinstance(exc, UnexpectedEOF):
            where = " (it ends too early)"
        elif isinstance(exc, UnexpectedToken) and exc.token.type == "$END":
            where = " (it ends too early)"
        elif isinstance(exc, UnexpectedToken | UnexpectedCharacters) and col is not None and col > 0:
            pos = getattr(exc, "pos_in_stream", None)
            start = pos if isinstance(pos, int) and pos >= 0 else col - 1
            where = f" (unexpected {_short(text[start:start + 20], 20)} at character {start + 1})"
    return UsageError(f"the Salesforce condition {_short(text)} is not one SOQL condition{where}: give a single "
                      "WHERE expression such as \"Industry = 'Banking' AND AnnualRevenue > 1000\" (parentheses "
                      "around AND mixed with OR; no LIMIT, ORDER BY, FROM or subquery)", field="where")


def check_condition(text: str, sobject: str, fields: Iterable[Mapping[str, Any]]) -> str:
    """``text`` as one SOQL condition over ``sobject``'s describe ``fields``, re-written from its
    parse tree; a :class:`UsageError` (exit 2) naming the condition and the fix otherwise."""
    if not text.strip():
        raise UsageError("the Salesforce condition is empty: give a SOQL condition or leave the option out",
                         field="where")
    try:
        tree = _parser().parse(text)
    except LarkError as exc:
        raise _syntax_error(text, exc) from None
    return _render(tree, _Fields(sobject, fields), text)
