"""A row condition for a PostgreSQL read (`--source-where`/`--target-where`, a mapping's
``target_where``), checked before any of it reaches a server.

The condition is the user's own SQL, pasted into ``SELECT … WHERE (<condition>)``; pasted text is
the classic way to turn a read into a write (``true)) TO STDOUT …; COMMIT; TRUNCATE …``). So it
must be exactly one expression, and PostgreSQL's own parser (pglast wraps libpg_query, the server's
grammar) decides that, not a regular expression:

* its tokens hold no statement separator and no comment (a comment could swallow the closing
  parenthesis recon adds), and its parentheses never close more than they opened, so the text
  cannot leave the ``WHERE ( … )`` it is pasted into;
* the whole ``SELECT 1 WHERE (<condition>)`` parses as one plain SELECT, and nothing inside it is
  a set operation, a CTE (a data-modifying one included), a row lock, a parameter, or a call to a
  function that acts on settings, sessions, files, locks or other servers.

The reader then lets the server check the same text again: it prepares exactly the SELECT it will
run through the extended protocol, which refuses a second statement (:class:`PgRead`), inside a
READ ONLY transaction. None of this replaces the real boundary, a role that may only SELECT
(README, "Threat model"): a user-defined function may do anything its owner allows.
"""

from __future__ import annotations

from typing import Any, Final

from engine.core.errors import UsageError

#: functions a row filter has no business calling: settings, sessions, sleeping, locks, server
#: files, large objects, sequences, notifications, queries given as text, other servers. Names
#: starting with ``pg_`` are refused as a family (``pg_sleep``, ``pg_terminate_backend``,
#: ``pg_read_file``, ``pg_advisory_lock``, ``pg_notify``, ``pg_reload_conf`` …).
DENIED_FUNCTIONS: Final[frozenset[str]] = frozenset({
    "set_config", "nextval", "setval", "currval", "lastval", "txid_current", "txid_current_if_assigned",
    "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "cursor_to_xml", "cursor_to_xmlschema",
    "table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema", "schema_to_xml", "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema", "database_to_xml", "database_to_xmlschema", "database_to_xml_and_xmlschema",
})
DENIED_PREFIXES: Final[tuple[str, ...]] = ("pg_", "dblink", "lo_", "txid_", "binary_upgrade_")

_FIX: Final[str] = "give one boolean expression over the table's columns, e.g. \"region = 'EU' AND amount > 0\""


def check_condition(text: str, option: str) -> str:
    """The condition, unchanged, once it is known to be exactly one harmless expression; else a
    UsageError (exit 2) naming ``option`` and what is wrong.

    >>> check_condition("region = 'EU' AND amount > 0", "--target-where")
    "region = 'EU' AND amount > 0"
    >>> check_condition("true) UNION ALL SELECT 1 WHERE (true", "--target-where")
    Traceback (most recent call last):
    ...
    engine.core.errors.UsageError: --target-where ...
    """
    import pglast
    from pglast import parser

    if not text.strip():
        raise UsageError(f"{option} is empty: {_FIX}, or leave the option out")
    if "\x00" in text:
        raise UsageError(f"{option} contains a NUL character: {_FIX}")
    try:
        tokens = parser.scan(text)
    except pglast.parser.ParseError as exc:
        raise UsageError(f"{option} is not valid SQL ({_first_line(exc)}): {_FIX}") from None
    depth = 0
    for tok in tokens:
        if tok.name == "ASCII_59":
            raise UsageError(f"{option} contains ';': a condition is one expression, never a statement; {_FIX}")
        if tok.name in ("SQL_COMMENT", "C_COMMENT"):
            raise UsageError(f"{option} contains a comment: remove it; {_FIX}")
        if tok.name == "ASCII_40":
            depth += 1
        elif tok.name == "ASCII_41":
            depth -= 1
            if depth < 0:
                raise UsageError(f"{option} closes a parenthesis it did not open: {_FIX}")
    if depth:
        raise UsageError(f"{option} leaves a parenthesis open: {_FIX}")
    try:
        stmts = pglast.parse_sql(f"SELECT 1 WHERE (\n{text}\n)")
    except pglast.parser.ParseError as exc:
        raise UsageError(f"{option} is not a valid SQL expression ({_first_line(exc)}): {_FIX}") from None
    if len(stmts) != 1:
        raise UsageError(f"{option} holds more than one statement: {_FIX}")
    top = stmts[0].stmt
    if (type(top).__name__ != "SelectStmt" or top.fromClause or top.withClause or top.lockingClause
            or top.intoClause or top.groupClause or top.havingClause or top.sortClause or top.limitCount
            or top.limitOffset or _setop(top)):
        raise UsageError(f"{option} reaches outside its WHERE clause: {_FIX}")
    problem = _forbidden(top.whereClause)
    if problem:
        raise UsageError(f"{option} {problem}: {_FIX}")
    return text


def _setop(node: Any) -> bool:
    op = getattr(node, "op", None)
    return op is not None and getattr(op, "name", str(op)) != "SETOP_NONE"


def _forbidden(expr: Any) -> str | None:
    """What in the parsed expression a row filter may not hold, or None."""
    from pglast import ast, visitors

    found: list[str] = []

    class Check(visitors.Visitor):  # type: ignore[misc]
        def visit(self, ancestors: Any, node: Any) -> None:
            if isinstance(node, ast.SelectStmt):
                if _setop(node):
                    found.append("holds a set operation (UNION, INTERSECT, EXCEPT)")
                if node.withClause:
                    found.append("holds a WITH clause")
                if node.lockingClause:
                    found.append("locks rows (FOR UPDATE/SHARE)")
                if node.intoClause:
                    found.append("holds SELECT INTO")
            elif isinstance(node, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)):
                found.append("modifies data")
            elif isinstance(node, ast.ParamRef):
                found.append("holds a parameter ($n)")
            elif isinstance(node, ast.FuncCall):
                name = node.funcname[-1].sval.lower()
                if name in DENIED_FUNCTIONS or name.startswith(DENIED_PREFIXES):
                    found.append(f"calls {name}(), which a row condition may not call")

    if expr is not None:
        Check()(expr)
    return found[0] if found else None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
