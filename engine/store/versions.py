# ruff: noqa: S608 - every identifier below goes through psycopg.sql.Identifier; values are parameters
"""The version store: a warehouse table turned into versioned storage, and corrections written to
it as new versions (the DDL and SQL of `recon repair` against the target database).

Here rather than in :mod:`engine.app.repair` because it is storage: the table's layout, its
migration, its triggers and how a version is closed and written do not depend on where a
correction comes from. Which records to correct and with what (the plan read from `recon
explain`, Salesforce's re-extracted values, the SEC subset first, verification, the ledger) stays
in the use case.

Why versions, and how the warehouse table becomes them:

Corrections are never silent updates. On the first ``--apply`` the target table (e.g.
``warehouse.customer_clv``) is migrated, in one transaction, into a version store
``<table>_versions`` (its columns plus ``version_id``, ``valid_from``, ``valid_to``,
``recorded_at``, ``source`` = original | repair | load, ``run_id``, ``correction_id``,
``finding_ref``, ``supersedes``, ``evidence``), and ``<table>`` becomes a VIEW of the current
versions (``valid_to IS NULL``) with the same columns and privileges, so every reader — ``recon
diff`` included — keeps working unchanged. Whatever guarded the table (constraints, the primary
key, row-level security, column grants, triggers, the views built on it) is carried over or the
migration is refused before anything changes: :mod:`engine.store.version_guards`. The rows that were there become ``original`` versions
whose ``valid_from`` and ``recorded_at`` are the migration time (the table kept no history; its
own ``updated_at`` column is carried along). A version store is created only when there is
something to correct. A correction closes the current version (sets its
``valid_to``) and inserts the new one in the same transaction; a trigger on the version store
rejects every other UPDATE, every DELETE and TRUNCATE, so history can only grow. Writers that
still write the old table name (the aggregation) go through INSTEAD OF triggers on the view that
do the same close-and-insert (``source = 'load'``): even they cannot overwrite a value silently.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from engine.connectors.base import PostgresRef, redact_dsn
from engine.core import classes
from engine.core.errors import UsageError
from engine.core.normalize import parse_decimal
from engine.store import version_guards as guards

CORRECTION_VERSION = "recon-repair/v1"
VERSION_COLUMNS = ("version_id", "valid_from", "valid_to", "recorded_at", "source", "run_id", "correction_id",
                   "finding_ref", "supersedes", "evidence")
VIEW_MARKER = "recon versioned view v1"
STATUSES = ("pending", "applied", "already_applied", "in_sync", "conflict", "not_in_salesforce")


_dec = parse_decimal


def _same(a: Any, b: Any) -> bool:
    """Equal as numbers when both are (``100`` = ``100.00``), else as text; NULL equals only NULL."""
    da, db = _dec(a), _dec(b)
    if da is not None and db is not None:
        return da == db
    return (None if a in (None, "") else str(a)) == (None if b in (None, "") else str(b))


# -- the target ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """The warehouse table a mapping writes to, and the columns a correction touches.

    key / value: target column names of the mapping's key and of the repaired amount column.
    updated_at: set to the repair time on a new version (the mapping's ``target_updated_at``).
    count_column: set to the number of distinct stream events of the record (``[repair]``).
    """

    ref: PostgresRef
    mapping: str
    sobject: str
    source_column: str
    key: str
    value: str
    updated_at: str | None
    count_column: str | None

    @property
    def identity(self) -> str:
        """host:port/database#schema.table, without user or password (part of every correction id)."""
        from engine.connectors.postgres.connector import dsn_location

        loc = dsn_location(self.ref.dsn)
        return f"{loc.get('host', '')}:{loc.get('port', '')}/{loc.get('database', '')}#{self.ref.schema}.{self.ref.table}"

    @property
    def versions_table(self) -> str:
        return f"{self.ref.table}_versions"

    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.ref.schema, self.ref.table)

    def vident(self) -> sql.Identifier:
        return sql.Identifier(self.ref.schema, self.versions_table)

    def where(self) -> str:
        return f"{redact_dsn(self.ref.dsn)}#{self.ref.schema}.{self.ref.table}"


# -- corrections -----------------------------------------------------------------------------------
@dataclass
class Correction:
    """One record to correct. ``new_value`` is Salesforce's value: at explain time in the plan,
    re-extracted at apply time."""

    record_id: str
    cls: str
    sec_critical: bool
    old_value: str | None
    explain_sf_value: str | None
    stream_events: int
    owner_id: str | None
    copy_offsets: list[str]
    duplicated_event_ids: list[str]
    correction_id: str
    finding: dict[str, Any]
    status: str = "pending"
    new_value: str | None = None
    detail: str | None = None
    salesforce: dict[str, Any] | None = None
    old_version_id: int | None = None
    new_version_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"Id": self.record_id, "class": self.cls, "sec_critical": self.sec_critical,
                "old_value": self.old_value,
                "new_value": self.new_value if self.new_value is not None else self.explain_sf_value,
                "new_value_source": "salesforce re-extraction" if self.salesforce else "salesforce at explain time",
                "status": self.status, "detail": self.detail, "correction_id": self.correction_id,
                "owner_id": self.owner_id, "stream_events": self.stream_events,
                "evidence": {"kafka_copy_offsets": self.copy_offsets,
                             "duplicated_event_ids": self.duplicated_event_ids,
                             "raw_stream_value": self.finding.get("raw_stream_value"),
                             "dedup_stream_value": self.finding.get("dedup_stream_value"),
                             "salesforce": self.salesforce},
                "old_version_id": self.old_version_id, "new_version_id": self.new_version_id}


def correction_id(target_identity: str, findings_sha256: str, record_id: str, cls: str, old_value: str | None) -> str:
    """Deterministic: the same plan applied to the same target always yields the same ids."""
    text = "\x00".join([CORRECTION_VERSION, target_identity, findings_sha256, record_id, cls, old_value or ""])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# -- the table and its versions --------------------------------------------------------------------
@dataclass(frozen=True)
class TableInfo:
    kind: str  # "table" (not yet versioned) or "versioned"
    columns: list[tuple[str, str]]  # base columns (name, format_type), in order
    versions_exists: bool


def _columns(conn: psycopg.Connection, qualified: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (qualified,)).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def inspect(conn: psycopg.Connection, target: Target) -> TableInfo:
    """Is the target still a plain table, or already the view over its version store?"""
    q = target.ident().as_string(conn)
    vq = target.vident().as_string(conn)
    row = conn.execute("SELECT c.relkind, obj_description(c.oid, 'pg_class') FROM pg_class c "
                       "WHERE c.oid = to_regclass(%s)", (q,)).fetchone()
    v_exists = conn.execute("SELECT to_regclass(%s)", (vq,)).fetchone()[0] is not None  # type: ignore[index]
    if row is None:
        raise UsageError(f"{target.where()} does not exist: check the mapping's target")
    relkind, comment = row
    if relkind in ("r", "p"):
        if v_exists:
            raise UsageError(f"{target.ref.schema}.{target.versions_table} exists but {target.ref.schema}."
                             f"{target.ref.table} is still a table: a migration was interrupted outside recon; "
                             "inspect both and drop the stray one")
        kind = "table"
    elif relkind == "v" and v_exists and str(comment or "").startswith(VIEW_MARKER):
        kind = "versioned"
    else:
        raise UsageError(f"{target.where()} is a view or other relation recon did not create: repair writes "
                         "to a table (which it turns into a versioned view on the first --apply)")
    cols = _columns(conn, q)
    names = {c for c, _ in cols}
    for need in (target.key, target.value):
        if need not in names:
            raise UsageError(f"{target.where()} has no column {need!r} (columns: {', '.join(sorted(names))})")
    if kind == "table":
        clash = sorted(names & set(VERSION_COLUMNS))
        if clash:
            raise UsageError(f"{target.where()} already has column(s) {', '.join(clash)} that the version store "
                             "needs: rename them before repairing")
    return TableInfo(kind, cols, v_exists)


def migrate(conn: psycopg.Connection, target: Target, info: TableInfo) -> dict[str, Any]:
    """Turn the table into ``<table>_versions`` + a view of the current versions, in one transaction,
    carrying every guard of the table (:mod:`engine.store.version_guards`) or refusing before any change."""
    t, v = target.ident(), target.vident()
    cols = [c for c, _ in info.columns]
    col_ids = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
    key = sql.Identifier(target.key)
    guard_fn = sql.Identifier(target.ref.schema, "recon_versions_guard")
    write_fn = sql.Identifier(target.ref.schema, f"{target.ref.table}_write_version")
    q = t.as_string(conn)
    try:
        with conn.transaction():
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(t))
            # deparsed catalog text names every object with its schema; and the copy below must see every
            # row, or fail, rather than the rows a forced row-level security policy lets its owner see
            conn.execute("SELECT set_config('search_path', 'pg_catalog, pg_temp', true), "
                         "set_config('row_security', 'off', true)")
            oid = conn.execute("SELECT to_regclass(%s)::oid", (q,)).fetchone()[0]  # type: ignore[index]
            g = guards.read(conn, oid, target.where(), key=target.key, versions=v)
            conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)").format(v, t))
            conn.execute(sql.SQL("""ALTER TABLE {v}
  ADD COLUMN version_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  ADD COLUMN valid_from timestamptz NOT NULL,
  ADD COLUMN valid_to timestamptz,
  ADD COLUMN recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  ADD COLUMN source text NOT NULL CHECK (source IN ('original', 'repair', 'load')),
  ADD COLUMN run_id text,
  ADD COLUMN correction_id text UNIQUE,
  ADD COLUMN finding_ref text,
  ADD COLUMN supersedes bigint REFERENCES {v} (version_id),
  ADD COLUMN evidence jsonb,
  ADD CHECK (valid_to IS NULL OR valid_to >= valid_from),
  ADD CHECK ((source = 'repair') = (correction_id IS NOT NULL))""").format(v=v))
            n = conn.execute(sql.SQL(
                "INSERT INTO {} ({}, valid_from, recorded_at, source) SELECT {}, now(), now(), 'original' FROM {}"
            ).format(v, col_ids, col_ids, t)).rowcount
            guards.constraints(conn, g, v)  # constraints hold for every version; checked on the rows copied
            conn.execute(sql.SQL("CREATE UNIQUE INDEX {} ON {} ({}) WHERE valid_to IS NULL").format(
                sql.Identifier(f"{target.versions_table}_current"), v, key))
            conn.execute(sql.SQL("CREATE INDEX {} ON {} ({}, valid_from)").format(
                sql.Identifier(f"{target.versions_table}_history"), v, key))
            conn.execute(sql.SQL("""CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  IF TG_OP = 'UPDATE' THEN
    -- the one change a version may undergo: being closed, nothing else about it
    IF OLD.valid_to IS NULL AND NEW.valid_to IS NOT NULL
       AND (to_jsonb(NEW) - 'valid_to') = (to_jsonb(OLD) - 'valid_to') THEN
      RETURN NEW;
    END IF;
  END IF;
  RAISE EXCEPTION '%.% keeps every version: % is not allowed', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP
    USING ERRCODE = 'insufficient_privilege',
          HINT = 'close the current version (set valid_to) and insert a new one';
END $f$""").format(guard_fn))
            conn.execute(sql.SQL("CREATE TRIGGER versions_keep_history BEFORE UPDATE OR DELETE ON {} "
                                 "FOR EACH ROW EXECUTE FUNCTION {}()").format(v, guard_fn))
            conn.execute(sql.SQL("CREATE TRIGGER versions_no_truncate BEFORE TRUNCATE ON {} "
                                 "FOR EACH STATEMENT EXECUTE FUNCTION {}()").format(v, guard_fn))
            guards.drop_views(conn, g)
            conn.execute(sql.SQL("DROP TABLE {}").format(t))
            guards.unique_indexes(conn, g)  # unique indexes under the table's own index names
            # row-level security is kept only if readers read the history as themselves
            invoker = sql.SQL(" WITH (security_invoker = true)" if g.rls else "")
            conn.execute(sql.SQL("CREATE VIEW {}{} AS SELECT {} FROM {} WHERE valid_to IS NULL").format(
                t, invoker, col_ids, v))
            conn.execute(sql.SQL("COMMENT ON VIEW {} IS {}").format(t, sql.Literal(
                f"{VIEW_MARKER}: current versions of {target.ref.schema}.{target.versions_table} "
                "(written by recon repair; writes through this view become new versions)")))
            new_vals = sql.SQL(", ").join(sql.SQL("NEW.{}").format(sql.Identifier(c)) for c in cols)
            conn.execute(sql.SQL("""CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
  recon_t timestamptz := clock_timestamp();
  recon_prev bigint;
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    UPDATE {v} SET valid_to = recon_t WHERE {key} = OLD.{key} AND valid_to IS NULL
      RETURNING version_id INTO recon_prev;
  END IF;
  IF TG_OP = 'DELETE' THEN
    RETURN OLD;
  END IF;
  INSERT INTO {v} ({cols}, valid_from, recorded_at, source, supersedes)
    VALUES ({vals}, recon_t, recon_t, 'load', recon_prev);
  RETURN NEW;
END $f$""").format(fn=write_fn, v=v, key=key, cols=col_ids, vals=new_vals))
            guards.on_view(conn, g, target.ref.schema, t, v)  # the table's triggers and policies first …
            conn.execute(sql.SQL("CREATE TRIGGER {} INSTEAD OF INSERT OR UPDATE OR DELETE ON {} "  # … the write last
                                 "FOR EACH ROW EXECUTE FUNCTION {}()").format(
                sql.Identifier(guards.WRITE_TRIGGER), t, write_fn))
            copied = guards.grant(conn, g, t, v, invoker=g.rls)
            views = guards.recreate_views(conn, g)
        conn.execute(sql.SQL("ANALYZE {}").format(v))
    except psycopg.errors.DependentObjectsStillExist as exc:
        first = (str(exc).splitlines() or [""])[0]
        detail = ((exc.diag.message_detail or "").splitlines() or [""])[0]
        raise UsageError(f"cannot version {target.where()}: {first}{f' ({detail})' if detail else ''}; drop what "
                         "depends on the table first, or migrate it by hand (nothing was changed)") from None
    except psycopg.Error as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"cannot version {target.where()}: {first} (nothing was changed)") from None
    return {"migrated": True, "versions_table": f"{target.ref.schema}.{target.versions_table}",
            "view": f"{target.ref.schema}.{target.ref.table}", "original_versions": n,
            "privileges_copied": copied, "guards_carried": g.summary(), "views_repointed": views}


def _current_values(conn: psycopg.Connection, target: Target, ids: list[str], relation: sql.Identifier
                    ) -> dict[str, str | None]:
    if not ids:
        return {}
    rows = conn.execute(sql.SQL("SELECT {k}::text, {val}::text FROM {r} WHERE {k} = ANY(%s)").format(
        k=sql.Identifier(target.key), val=sql.Identifier(target.value), r=relation), (ids,)).fetchall()
    return {str(r[0]): r[1] for r in rows}


def _applied(conn: psycopg.Connection, target: Target, cids: list[str]) -> dict[str, dict[str, Any]]:
    """Corrections of this plan already in the version store: id → {version_id, evidence, …}."""
    if not cids:
        return {}
    rows = conn.execute(sql.SQL(
        "SELECT correction_id, version_id, supersedes, {val}::text, evidence, valid_from FROM {v} "
        "WHERE correction_id = ANY(%s)").format(val=sql.Identifier(target.value), v=target.vident()),
        (cids,)).fetchall()
    return {str(r[0]): {"version_id": int(r[1]), "supersedes": r[2], "value": r[3], "evidence": r[4] or {},
                        "valid_from": r[5]} for r in rows}


# -- applying a chunk of corrections ---------------------------------------------------------------
def _precheck(c: Correction, current: str | None, has_row: bool) -> str:
    """Status from the warehouse's current value alone: pending, in_sync or conflict."""
    if not classes.has_warehouse_row(c.cls):
        if not has_row:
            return "pending"
        return "in_sync" if _same(current, c.new_value if c.new_value is not None else c.explain_sf_value) \
            else "conflict"
    if not has_row:
        return "conflict"
    if _same(current, c.new_value if c.new_value is not None else c.explain_sf_value):
        return "in_sync"  # nothing to change (e.g. Salesforce moved to the warehouse's value)
    if _same(current, c.old_value):
        return "pending"
    return "conflict"


def apply_chunk(conn: psycopg.Connection, tgt: Target, info: TableInfo, chunk: list[Correction], run_id: str, *,
                finding_ref: Callable[[Correction], str], evidence: Callable[[Correction], dict[str, Any]]
                ) -> list[dict[str, Any]]:
    """One transaction: lock, re-check, close old versions, insert new ones. Returns ledger bodies.

    finding_ref / evidence: what each new version records about the finding it corrects (columns
    ``finding_ref`` and ``evidence``); the caller builds them from its plan."""
    v, key, val = tgt.vident(), sql.Identifier(tgt.key), sql.Identifier(tgt.value)
    bodies: list[dict[str, Any]] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"recon.repair:{tgt.identity}",))
        now: datetime = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        ids = [c.record_id for c in chunk]
        rows = conn.execute(sql.SQL(
            "SELECT {k}::text, version_id, {val}::text FROM {v} WHERE {k} = ANY(%s) AND valid_to IS NULL FOR UPDATE"
        ).format(k=key, val=val, v=v), (ids,)).fetchall()
        current = {str(r[0]): (int(r[1]), r[2]) for r in rows}
        done = _applied(conn, tgt, [c.correction_id for c in chunk])
        for c in chunk:
            if c.correction_id in done:
                c.status, c.new_version_id = "already_applied", done[c.correction_id]["version_id"]
                continue
            cur = current.get(c.record_id)
            status = _precheck(c, cur[1] if cur else None, cur is not None)
            if status != "pending":
                c.status = status
                c.detail = (f"the warehouse holds {cur[1] if cur else 'no row'}; the plan expected "
                            f"{c.old_value if c.old_value is not None else 'no row'}") if status == "conflict" else None
                continue
            c.old_version_id = cur[0] if cur else None
            if cur is not None:
                conn.execute(sql.SQL("UPDATE {} SET valid_to = %s WHERE version_id = %s").format(v), (now, cur[0]))
            exprs: list[sql.Composable] = []
            params: list[Any] = []
            for name, typ in info.columns:
                ident = sql.Identifier(name)
                if name == tgt.key:
                    exprs.append(sql.SQL("CAST(%s AS {})").format(sql.SQL(typ)))
                    params.append(c.record_id)
                elif name == tgt.value:
                    exprs.append(sql.SQL("CAST(%s AS {})").format(sql.SQL(typ)))
                    params.append(c.new_value)
                elif name == tgt.updated_at:
                    exprs.append(sql.SQL("CAST(%s AS {})").format(sql.SQL(typ)))
                    params.append(now)
                elif name == tgt.count_column:
                    exprs.append(sql.SQL("CAST(%s AS {})").format(sql.SQL(typ)))
                    params.append(c.stream_events)
                else:  # carried over from the version it replaces (NULL for a record that had none)
                    exprs.append(sql.SQL("o.{}").format(ident))
            ev = evidence(c)
            row = conn.execute(sql.SQL(
                "INSERT INTO {v} ({cols}, valid_from, source, run_id, correction_id, finding_ref, supersedes, evidence) "
                "SELECT {exprs}, %s, 'repair', %s, %s, %s, %s, %s FROM (SELECT 1) AS one "
                "LEFT JOIN {v} AS o ON o.version_id = %s RETURNING version_id"
            ).format(v=v, cols=sql.SQL(", ").join(sql.Identifier(n) for n, _ in info.columns),
                     exprs=sql.SQL(", ").join(exprs)),
                (*params, now, run_id, c.correction_id,
                 finding_ref(c), c.old_version_id, Jsonb(ev),
                 c.old_version_id)).fetchone()
            c.status, c.new_version_id = "applied", int(row[0])  # type: ignore[index]
            bodies.append({**ev, "new_version_id": c.new_version_id, "valid_from": now})
    return bodies
