"""The circuit breaker's state in the ledger database: the latest decision per mapping, appending
a decision, and the SQL guard ``recon_audit.assert_circuit_closed`` that halts an aggregation while
the breaker is open (DDL owned by ``recon_audit_owner``, see :func:`install_guard`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from engine.core.errors import UsageError
from engine.core.gate import Decision

SQLSTATE_OPEN = "RC003"
GUARD_VERSION = 2  # 2: only decisions linked to the row before them count
GUARD_MARKER = f"recon circuit breaker guard v{GUARD_VERSION}"


# a decision counts only when chained: linked to the row right before it (see guard_sql)
_CHAINED = "EXISTS (SELECT 1 FROM recon_audit.chain p WHERE p.seq = g.seq - 1 AND p.row_hash = g.prev_hash)"


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

    ``circuit_state`` takes the latest decision for the mapping *that is chained*: its ``prev_hash``
    is the ``row_hash`` of the row at ``seq - 1``. The insert trigger keeps new rows chained; this
    keeps a row planted before it (an older ledger) at a seq of its choosing from outranking every
    real decision. One index probe per table, so the guard stays cheap."""
    fn = sql.SQL("recon_audit.assert_circuit_closed(text)")
    st = sql.SQL("recon_audit.circuit_state(text)")
    return [
        sql.SQL("CREATE INDEX IF NOT EXISTS gate_decisions_mapping_seq ON recon_audit.gate_decisions (mapping, seq DESC)"),
        sql.SQL("""CREATE OR REPLACE FUNCTION recon_audit.circuit_state(p_mapping text)
RETURNS TABLE (state text, seq bigint, recorded_at timestamptz, kind text, reason text, operator text, run_id text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
  SELECT COALESCE(g.body ->> 'state', 'open'), g.seq, g.recorded_at, g.body ->> 'kind', g.body ->> 'reason',
         g.body ->> 'operator', g.run_id
    FROM recon_audit.gate_decisions g
   WHERE g.mapping = p_mapping
     AND {chained}
   ORDER BY g.seq DESC
   LIMIT 1
$f$""".replace("{chained}", _CHAINED)),
        sql.SQL("""CREATE OR REPLACE FUNCTION recon_audit.assert_circuit_closed(p_mapping text)
RETURNS void LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
  d record;
BEGIN
  IF p_mapping IS NULL THEN
    RAISE EXCEPTION 'recon_audit.assert_circuit_closed: the mapping name is NULL'
      USING ERRCODE = 'null_value_not_allowed';
  END IF;
  SELECT * INTO d FROM recon_audit.circuit_state(p_mapping);
  -- no decision yet: nothing to halt; any state but 'closed' fails closed
  IF FOUND AND d.state IS DISTINCT FROM 'closed' THEN
    RAISE EXCEPTION 'recon circuit breaker for mapping "%" is open since % (gate decision seq %): %',
        p_mapping, d.recorded_at, d.seq, d.reason
      USING ERRCODE = '{sqlstate}',
            DETAIL = format('decision kind %s, run %s%s', d.kind, d.run_id,
                            CASE WHEN d.operator IS NOT NULL THEN ', operator ' || d.operator ELSE '' END),
            HINT = 'repair, run a new diff and `recon gate --diff DIR`, or `recon gate --override close '
                   '--reason TEXT --operator NAME`';
  END IF;
END $f$""".replace("{sqlstate}", SQLSTATE_OPEN)),
        sql.SQL("COMMENT ON FUNCTION {} IS {}").format(fn, sql.Literal(
            f"{GUARD_MARKER}: raises SQLSTATE {SQLSTATE_OPEN} while the latest recon gate decision for the "
            "mapping is open")),
        sql.SQL("COMMENT ON FUNCTION {} IS {}").format(st, sql.Literal(
            f"{GUARD_MARKER}: the latest recon gate decision for a mapping")),
        sql.SQL("REVOKE ALL ON FUNCTION {} FROM PUBLIC").format(st),
        sql.SQL("GRANT EXECUTE ON FUNCTION {} TO PUBLIC").format(fn),
        sql.SQL("GRANT EXECUTE ON FUNCTION {} TO recon_audit_writer, recon_audit_reader").format(st),
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


