"""The circuit breaker's state in the ledger database: the latest decision per mapping and per
reason, appending a decision, and the SQL guard ``recon_audit.assert_circuit_closed`` that halts an
aggregation while the breaker is open (DDL owned by ``recon_audit_owner``, see :func:`install_guard`).

State per reason (:data:`engine.core.gate.REASONS`): every decision's body names the reasons it
decides (``reasons``: ``{"variance": "open"}``, ``{"lag": "closed"}``, …); a reason's state is its
latest chained decision's, and the breaker is closed only when no reason is open. A decision
states only its own reasons, so two gates deciding different reasons at once cannot overwrite each
other's state (nothing is merged in Python). Decisions written before reasons existed (no
``reasons`` key) decide ``variance`` with their ``state``: an existing ledger keeps its meaning and
its hash chain (the body's form is unchanged, a key was added)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from engine.core.errors import UsageError
from engine.core.gate import REASONS, Decision

SQLSTATE_OPEN = "RC003"
GUARD_VERSION = 3  # 2: only decisions linked to the row before them count; 3: state per reason
GUARD_MARKER = f"recon circuit breaker guard v{GUARD_VERSION}"


# a decision counts only when chained: linked to the row right before it (see guard_sql)
_CHAINED = "EXISTS (SELECT 1 FROM recon_audit.chain p WHERE p.seq = g.seq - 1 AND p.row_hash = g.prev_hash)"


# the latest chained decision of each reason; {mapping} and {extra} (more columns) are filled in for
# the SQL function and for Python, so `recon gate` and the guard read the same rows
_REASONS_SQL = """
SELECT r.reason, CASE WHEN d.st = 'closed' THEN 'closed' ELSE 'open' END AS state, d.seq, d.recorded_at, d.kind,
       d.detail, d.operator, d.run_id{extra}
  FROM unnest(ARRAY[{reasons}]::text[]) WITH ORDINALITY AS r(reason, ord)
 CROSS JOIN LATERAL (
   SELECT COALESCE(g.body -> 'reasons', jsonb_build_object('variance', g.body -> 'state')) ->> r.reason AS st,
          g.seq, g.recorded_at, g.body ->> 'kind' AS kind, g.body ->> 'reason' AS detail,
          g.body ->> 'operator' AS operator, g.run_id, g.canonical
     FROM recon_audit.gate_decisions g
    WHERE g.mapping = {mapping}
      AND COALESCE(g.body -> 'reasons', '{"variance": null}'::jsonb) ? r.reason
      AND {chained}
    ORDER BY g.seq DESC
    LIMIT 1) d
 ORDER BY r.ord""".replace("{chained}", _CHAINED).replace(
    "{reasons}", ", ".join("'" + r + "'" for r in REASONS))


def reason_states(dsn: str, mapping: str, *, passfile: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Each reason's latest chained decision: {reason: {state, seq, recorded_at, kind, body}}; a
    reason never decided is absent (it is not open). The same rows the SQL guard reads."""
    from engine.store.ledger import Ledger, _db_error

    query = _REASONS_SQL.replace("{mapping}", "%s").replace("{extra}", ", d.canonical")
    with Ledger(dsn, passfile=passfile) as led:
        try:
            rows = led.conn.execute(query, (mapping,)).fetchall()  # type: ignore[call-overload]
        except psycopg.Error as exc:
            raise _db_error(exc, dsn, "read") from None
    return {str(r[0]): {"state": r[1], "seq": int(r[2]), "recorded_at": r[3].isoformat(), "kind": r[4],
                        "body": json.loads(r[8])} for r in rows}


def open_reasons(states: dict[str, dict[str, Any]]) -> list[str]:
    """The open reasons, in :data:`REASONS` order: the breaker is open while this is not empty."""
    return [r for r in REASONS if (states.get(r) or {}).get("state", "closed") != "closed"]


def latest_decision(dsn: str, mapping: str, *, passfile: str | Path | None = None) -> dict[str, Any] | None:
    """The latest chained decision for a mapping: {seq, recorded_at, state, body}, or None. The same
    one the SQL guard reads, so `recon gate --status` and the guard never disagree."""
    from engine.store.ledger import Ledger, _db_error

    with Ledger(dsn, passfile=passfile) as led:
        try:
            row = led.conn.execute(sql.SQL(
                "SELECT g.seq, g.recorded_at, g.canonical FROM recon_audit.gate_decisions g WHERE g.mapping = %s "
                "AND {} ORDER BY g.seq DESC LIMIT 1").format(sql.SQL(_CHAINED)), (mapping,)).fetchone()
        except psycopg.Error as exc:
            raise _db_error(exc, dsn, "read") from None
    if row is None:
        return None
    body = json.loads(row[2])
    return {"seq": int(row[0]), "recorded_at": row[1].isoformat(), "state": body.get("state"), "body": body}


def record_decision(dsn: str, decision: Decision, latest: dict[str, Any] | None, *,
                    passfile: str | Path | None = None) -> dict[str, Any]:
    """Append the decision to ``recon_audit.gate_decisions``; returns the ledger entry."""
    from engine.store.ledger import Ledger

    if latest is not None:
        decision.previous = {"seq": latest["seq"], "state": latest.get("state"), "recorded_at": latest["recorded_at"]}
    with Ledger(dsn, passfile=passfile) as led:
        entry = led.append("gate_decisions", decision.body())
    return entry.to_dict()


def guard_sql() -> list[sql.Composable]:
    """The guard's DDL, run as ``recon_audit_owner`` (by :func:`install_guard` and ``Ledger.init``).

    ``circuit_reasons`` takes, per reason, the latest decision for the mapping *that is chained*:
    its ``prev_hash`` is the ``row_hash`` of the row at ``seq - 1``. The insert trigger keeps new
    rows chained; this keeps a row planted before it (an older ledger) at a seq of its choosing from
    outranking every real decision. One backward index walk per reason (on ``(mapping, seq)``,
    stopping at the reason's latest decision), so the guard stays cheap. ``circuit_state`` keeps its
    columns for existing callers: the breaker as a whole."""
    fn = sql.SQL("recon_audit.assert_circuit_closed(text)")
    st = sql.SQL("recon_audit.circuit_state(text)")
    rs = sql.SQL("recon_audit.circuit_reasons(text)")
    return [
        sql.SQL("CREATE INDEX IF NOT EXISTS gate_decisions_mapping_seq ON recon_audit.gate_decisions (mapping, seq DESC)"),
        sql.SQL("""CREATE OR REPLACE FUNCTION recon_audit.circuit_reasons(p_mapping text)
RETURNS TABLE (reason text, state text, seq bigint, recorded_at timestamptz, kind text, detail text, operator text,
               run_id text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$""" + _REASONS_SQL.replace(
            "{mapping}", "p_mapping").replace("{extra}", "") + "\n$f$"),
        sql.SQL("""CREATE OR REPLACE FUNCTION recon_audit.circuit_state(p_mapping text)
RETURNS TABLE (state text, seq bigint, recorded_at timestamptz, kind text, reason text, operator text, run_id text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
  WITH c AS (SELECT * FROM recon_audit.circuit_reasons(p_mapping))
  SELECT CASE WHEN EXISTS (SELECT 1 FROM c WHERE c.state <> 'closed') THEN 'open' ELSE 'closed' END,
         c.seq, c.recorded_at, c.kind, c.detail, c.operator, c.run_id
    FROM c
   ORDER BY (c.state <> 'closed') DESC, c.seq DESC
   LIMIT 1
$f$"""),
        sql.SQL("""CREATE OR REPLACE FUNCTION recon_audit.assert_circuit_closed(p_mapping text)
RETURNS void LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
  names text;
  detail text;
  facts text;
BEGIN
  IF p_mapping IS NULL THEN
    RAISE EXCEPTION 'recon_audit.assert_circuit_closed: the mapping name is NULL'
      USING ERRCODE = 'null_value_not_allowed';
  END IF;
  -- a reason never decided is not open; any state but 'closed' fails closed
  SELECT string_agg(c.reason, ', ' ORDER BY c.reason),
         string_agg(format('%s since %s (gate decision seq %s): %s', c.reason, c.recorded_at, c.seq, c.detail),
                    '; ' ORDER BY c.reason),
         string_agg(format('%s: decision kind %s, run %s%s', c.reason, c.kind, c.run_id,
                           CASE WHEN c.operator IS NOT NULL THEN ', operator ' || c.operator ELSE '' END),
                    '; ' ORDER BY c.reason)
    INTO names, detail, facts
    FROM recon_audit.circuit_reasons(p_mapping) c
   WHERE c.state IS DISTINCT FROM 'closed';
  IF names IS NOT NULL THEN
    RAISE EXCEPTION 'recon circuit breaker for mapping "%" is open, reasons: % (%)', p_mapping, names, detail
      USING ERRCODE = '{sqlstate}',
            DETAIL = facts,
            HINT = 'variance: repair, run a new diff and `recon gate --diff DIR`; lag: let the consumer catch up '
                   '(`recon consume`) and run `recon gate --lag`; or `recon gate --override close --reason TEXT '
                   '--operator NAME`';
  END IF;
END $f$""".replace("{sqlstate}", SQLSTATE_OPEN)),
        sql.SQL("COMMENT ON FUNCTION {} IS {}").format(fn, sql.Literal(
            f"{GUARD_MARKER}: raises SQLSTATE {SQLSTATE_OPEN} while any reason of the mapping's breaker is "
            "open, listing the open reasons")),
        sql.SQL("COMMENT ON FUNCTION {} IS {}").format(st, sql.Literal(
            f"{GUARD_MARKER}: the breaker of a mapping (open while any reason is), with the latest open "
            "reason's decision (else the latest decision)")),
        sql.SQL("COMMENT ON FUNCTION {} IS {}").format(rs, sql.Literal(
            f"{GUARD_MARKER}: each reason's latest recon gate decision for a mapping")),
        sql.SQL("REVOKE ALL ON FUNCTION {} FROM PUBLIC").format(st),
        sql.SQL("REVOKE ALL ON FUNCTION {} FROM PUBLIC").format(rs),
        sql.SQL("GRANT EXECUTE ON FUNCTION {} TO PUBLIC").format(fn),
        sql.SQL("GRANT EXECUTE ON FUNCTION {} TO recon_audit_writer, recon_audit_reader").format(st),
        sql.SQL("GRANT EXECUTE ON FUNCTION {} TO recon_audit_writer, recon_audit_reader").format(rs),
    ]


def guard_installed(dsn: str, *, passfile: str | Path | None = None) -> bool:
    """True when the current version of the guard function is in the ledger database."""
    from engine.store.ledger import Ledger

    with Ledger(dsn, passfile=passfile) as led:
        row = led.conn.execute(
            "SELECT obj_description(to_regprocedure('recon_audit.assert_circuit_closed(text)'), 'pg_proc')"
        ).fetchone()
    return bool(row and row[0] and str(row[0]).startswith(GUARD_MARKER))


def install_guard(dsn: str, grant_to: tuple[str, ...] = (), *, passfile: str | Path | None = None) -> dict[str, Any]:
    """Create ``recon_audit.assert_circuit_closed`` (and ``circuit_state``) as ``recon_audit_owner``,
    the way ``Ledger.init`` creates the ledger: in one transaction, through a SET-only membership the
    connecting role grants itself and revokes again. Idempotent. ``grant_to``: roles that will call
    the guard (they get ``recon_audit_reader``, which carries USAGE on the schema). ``passfile`` (here
    and in the other functions): the libpq password file of the connection."""
    from engine.store.ledger import OWNER_ROLE, READER_ROLE, Ledger, _db_error

    with Ledger(dsn, passfile=passfile) as led:
        conn = led.conn
        try:
            with conn.transaction():
                if conn.execute("SELECT to_regclass('recon_audit.gate_decisions')").fetchone()[0] is None:  # type: ignore[index]
                    raise UsageError(f"no ledger at {led.where}: run `recon ledger init` first")
                me, is_super = conn.execute(
                    "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()  # type: ignore[misc]
                if not is_super:
                    conn.execute(sql.SQL("GRANT {} TO {} WITH INHERIT FALSE, SET TRUE").format(
                        sql.Identifier(OWNER_ROLE), sql.Identifier(me)))
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(OWNER_ROLE)))
                for stmt in guard_sql():
                    conn.execute(stmt)
                conn.execute("RESET ROLE")
                if not is_super:
                    conn.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(OWNER_ROLE), sql.Identifier(me)))
                for role in grant_to:
                    conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(READER_ROLE), sql.Identifier(role)))
        except psycopg.errors.InsufficientPrivilege as exc:
            first = (str(exc).splitlines() or [""])[0]
            raise UsageError(f"cannot install the circuit-breaker guard in {led.where}: {first} (an administrator "
                             "installs it: rerun `recon ledger init`, or `recon gate --install-guard` as the role "
                             "that ran it)") from None
        except psycopg.Error as exc:
            raise _db_error(exc, dsn, "install the guard in") from None
    return {"function": "recon_audit.assert_circuit_closed(text)", "state_function": "recon_audit.circuit_state(text)",
            "sqlstate": SQLSTATE_OPEN, "owner": OWNER_ROLE, "version": GUARD_VERSION,
            "granted_to": list(grant_to)}


def ensure_guard(dsn: str, *, passfile: str | Path | None = None) -> bool:
    """Install the guard unless the current version is there; True when it was (re)installed."""
    if guard_installed(dsn, passfile=passfile):
        return False
    install_guard(dsn, passfile=passfile)
    return True


