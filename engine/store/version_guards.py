# ruff: noqa: S608 - identifiers go through psycopg.sql.Identifier; expressions come from PostgreSQL's own deparser
"""What guarded a table before `recon repair` versions it, and how each guard survives the move.

Versioning (:func:`engine.store.versions.migrate`) replaces ``<table>`` by ``<table>_versions`` and a
view of the current versions. A plain copy of the columns would quietly drop everything that
protected the table: constraints, row-level security, column grants, triggers, and the views built
on it. Each guard is therefore read from the catalog before anything changes and either carried —
onto the version store where it must hold for every version, onto the view where it guards writes
— or the migration is refused with one line naming it, before anything was written (the migration
is one transaction):

* CHECK constraints and outbound foreign keys hold for every version, so they go onto the version
  store as they were (NOT VALID included). A foreign key whose parent may cascade or null it is
  refused: history cannot be changed, so the parent's delete would fail instead.
* Unique indexes (the primary key, UNIQUE constraints) become partial unique indexes over the
  current versions (``valid_to IS NULL``), under their own names: a key is unique among current
  rows while every past version of it stays.
* Row-level security: the policies are copied onto the version store (same RLS switches), and the
  view is ``security_invoker`` (PostgreSQL 15+) so readers see what the policies let them see.
  Writes through the view become versions through a SECURITY DEFINER function, which would bypass
  the policies; an INSTEAD OF trigger running as the writer checks them just before (USING on the
  row changed: skipped if it fails; WITH CHECK on the new row: refused), as PostgreSQL would have —
  except that the carried BEFORE triggers already fired for a row USING then skips.
* Grants: table and column privileges go onto the view, and SELECT also onto the history.
* Triggers: BEFORE row triggers fire on the view as INSTEAD OF triggers ahead of the version
  write (they may change or skip the row as before); statement triggers go onto the view as they
  were. What a view cannot carry (AFTER row, constraint, WHEN, UPDATE OF, transition-table or
  TRUNCATE triggers, triggers not plainly enabled) and rules on the table are refused.
* Inbound foreign keys are refused: many versions share a key, so nothing can reference it.
* Dependent views are dropped and recreated over the new view (options, owner, grants, comments,
  their own triggers, rules and defaults), so they keep showing current rows instead of following
  the table to its history; a materialized view on top is refused.

Catalog text is read with ``search_path`` set to ``pg_catalog`` (by the caller), so every name in a
deparsed expression or definition is schema-qualified and means the same object when replayed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from engine.core.errors import UsageError

#: INSTEAD OF triggers fire in name order (bytewise); recon's two must come after the carried ones
RLS_TRIGGER = "zz_recon_rls_check"
WRITE_TRIGGER = "zz_recon_write_version"

_ROW, _BEFORE, _INSERT, _DELETE, _UPDATE, _TRUNCATE = 1, 2, 4, 8, 16, 32
_CMDS = {"*": "ALL", "r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}
_OPTION = re.compile(r"^[a-z_]+$")
Grant = tuple[str, str, bool]  # grantee ('PUBLIC' or a role), privilege, grantable
ColumnGrant = tuple[str, str, str, bool]  # column, grantee, privilege, grantable


@dataclass(frozen=True)
class Trigger:
    name: str
    row: bool
    timing: str  # BEFORE | AFTER (as on the table)
    events: tuple[str, ...]
    function: tuple[str, str]
    args: tuple[str, ...]


@dataclass(frozen=True)
class Policy:
    name: str
    permissive: bool
    command: str
    roles: tuple[str, ...] | None  # None: PUBLIC
    using: str | None
    check: str | None


@dataclass
class DependentView:
    name: str  # qualified, as PostgreSQL prints it
    schema: str
    relname: str
    definition: str
    options: list[str]
    owner: str
    acl: list[Grant]
    column_acl: list[ColumnGrant]
    comment: str | None
    column_comments: list[tuple[str, str]]
    defaults: list[tuple[str, str]]
    triggers: list[str]
    rules: list[str]


@dataclass
class Guards:
    """Everything that guarded the table, ready to be replayed on the version store and view."""

    checks: list[tuple[str, str]] = field(default_factory=list)  # name, definition
    foreign_keys: list[tuple[str, str]] = field(default_factory=list)
    unique: list[tuple[str, str]] = field(default_factory=list)  # name, CREATE UNIQUE INDEX … for the version store
    rls: bool = False
    force_rls: bool = False
    policies: list[Policy] = field(default_factory=list)
    acl: list[Grant] = field(default_factory=list)
    column_acl: list[ColumnGrant] = field(default_factory=list)
    triggers: list[Trigger] = field(default_factory=list)
    views: list[DependentView] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"check_constraints": [n for n, _ in self.checks], "foreign_keys": [n for n, _ in self.foreign_keys],
                "unique_indexes": [n for n, _ in self.unique], "row_level_security": self.rls,
                "policies": [p.name for p in self.policies], "triggers": [t.name for t in self.triggers]}


def _refuse(where: str, why: str) -> UsageError:
    return UsageError(f"cannot version {where}: {why} (nothing was changed)")


def read(conn: psycopg.Connection, oid: int, where: str, *, key: str, versions: sql.Identifier) -> Guards:
    """The table's guards, or a refusal naming the first one that cannot be carried."""
    g = Guards()
    _refuse_inbound(conn, oid, where)
    for name, kind, defn, upd, dele in conn.execute(
            "SELECT conname, contype::text, pg_get_constraintdef(oid), confupdtype::text, confdeltype::text "
            "FROM pg_constraint WHERE conrelid = %s AND contype IN ('c', 'f', 'x') ORDER BY conname",
            (oid,)).fetchall():
        if kind == "x":
            raise _refuse(where, f"exclusion constraint {name} cannot be limited to current versions by recon; "
                                 "drop it before repairing and recreate it on the version store by hand")
        if kind == "f" and (upd not in ("a", "r") or dele not in ("a", "r")):
            raise _refuse(where, f"foreign key {name} cascades or nulls the table's rows when its parent changes, "
                                 "and versions cannot be changed; make it ON UPDATE/DELETE NO ACTION before repairing")
        (g.checks if kind == "c" else g.foreign_keys).append((str(name), str(defn)))
    g.unique = _unique(conn, oid, where, key, versions)
    row = conn.execute("SELECT relrowsecurity, relforcerowsecurity, current_setting('server_version_num')::int "
                       "FROM pg_class WHERE oid = %s", (oid,)).fetchone()
    g.rls, g.force_rls, server = bool(row[0]), bool(row[1]), int(row[2])  # type: ignore[index]
    if g.rls and server < 150000:
        raise _refuse(where, "it has row-level security, which a view keeps only as a security_invoker view "
                             "(PostgreSQL 15 or later)")
    g.policies = [Policy(str(r[0]), bool(r[1]), _CMDS[str(r[2])], None if r[3] is None else tuple(r[3]), r[4], r[5])
                  for r in conn.execute(
        "SELECT polname, polpermissive, polcmd::text, "
        "CASE WHEN 0::oid = ANY (polroles) THEN NULL ELSE ARRAY(SELECT rolname::text FROM pg_roles "
        "WHERE oid = ANY (polroles) ORDER BY rolname) END, "
        "pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid) "
        "FROM pg_policy WHERE polrelid = %s ORDER BY polname", (oid,)).fetchall()]
    g.acl, g.column_acl = grants(conn, oid)
    g.triggers = _triggers(conn, oid, where, rls=g.rls)
    rules = [str(r[0]) for r in conn.execute(
        "SELECT rulename FROM pg_rewrite WHERE ev_class = %s AND rulename <> '_RETURN' ORDER BY 1", (oid,)).fetchall()]
    if rules:
        raise _refuse(where, f"rule {rules[0]} on the table would not act on a view the same way; drop it before "
                             "repairing")
    g.views = _dependent_views(conn, oid, where)
    return g


def _refuse_inbound(conn: psycopg.Connection, oid: int, where: str) -> None:
    row = conn.execute("SELECT conname, conrelid::regclass::text FROM pg_constraint WHERE contype = 'f' "
                       "AND confrelid = %s ORDER BY conname LIMIT 1", (oid,)).fetchone()
    if row is not None:
        raise _refuse(where, f"foreign key {row[0]} on {row[1]} references it, and once versioned its key is "
                             "shared by many versions so nothing can reference it; drop the foreign key (or point "
                             "it at another table) before repairing")


def _unique(conn: psycopg.Connection, oid: int, where: str, key: str, versions: sql.Identifier) -> list[tuple[str, str]]:
    """Each unique index as a CREATE statement for the version store, limited to current versions."""
    out: list[tuple[str, str]] = []
    target_text = conn.execute("SELECT %s::regclass::text", (oid,)).fetchone()[0]  # type: ignore[index]
    key_only = f"btree ({conn.execute('SELECT quote_ident(%s)', (key,)).fetchone()[0]})"  # type: ignore[index]
    for name, qname, defn, has_pred in conn.execute(
            "SELECT c.relname, quote_ident(c.relname), pg_get_indexdef(i.indexrelid), i.indpred IS NOT NULL "
            "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = %s AND i.indisunique ORDER BY c.relname", (oid,)).fetchall():
        head = f"CREATE UNIQUE INDEX {qname} ON {target_text} USING "
        if not str(defn).startswith(head):
            raise _refuse(where, f"unique index {name} has a form recon cannot limit to current versions: "
                                 "drop it before repairing and recreate it on the version store by hand")
        body = str(defn)[len(head):]
        if body == key_only:
            continue  # the version store's own index on the key over current versions is this one
        cond = " AND (valid_to IS NULL)" if has_pred else " WHERE (valid_to IS NULL)"
        out.append((str(name), f"CREATE UNIQUE INDEX {qname} ON {versions.as_string(conn)} USING {body}{cond}"))
    return out


def grants(conn: psycopg.Connection, oid: int) -> tuple[list[Grant], list[ColumnGrant]]:
    """Table and column privileges of a relation, except its owner's own."""
    table = conn.execute(
        "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, "
        "a.is_grantable FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = %s AND a.grantee <> c.relowner "
        "ORDER BY 1, 2", (oid,)).fetchall()
    cols = conn.execute(
        "SELECT att.attname, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END, "
        "a.privilege_type, a.is_grantable FROM pg_class c JOIN pg_attribute att ON att.attrelid = c.oid "
        "CROSS JOIN LATERAL aclexplode(att.attacl) a WHERE c.oid = %s AND att.attnum > 0 "
        "AND NOT att.attisdropped AND a.grantee <> c.relowner ORDER BY att.attnum, 2, 3", (oid,)).fetchall()
    return ([(str(r[0]), str(r[1]), bool(r[2])) for r in table],
            [(str(r[0]), str(r[1]), str(r[2]), bool(r[3])) for r in cols])


def _triggers(conn: psycopg.Connection, oid: int, where: str, *, rls: bool) -> list[Trigger]:
    out: list[Trigger] = []
    for (name, tgtype, enabled, constraint, ncols, when, transition, fschema, fname, nargs, args) in conn.execute(
            "SELECT t.tgname, t.tgtype, t.tgenabled::text, t.tgconstraint <> 0, cardinality(t.tgattr::int2[]), "
            "t.tgqual IS NOT NULL, t.tgoldtable IS NOT NULL OR t.tgnewtable IS NOT NULL, n.nspname, p.proname, "
            "t.tgnargs, t.tgargs FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
            "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE t.tgrelid = %s AND NOT t.tgisinternal "
            "ORDER BY t.tgname", (oid,)).fetchall():
        row, before = bool(tgtype & _ROW), bool(tgtype & _BEFORE)
        why = ("a constraint trigger" if constraint else
               "not plainly enabled (disabled, or replica/always)" if enabled != "O" else
               "an UPDATE OF column trigger" if ncols else
               "a trigger with a WHEN condition" if when else
               "a trigger with transition tables" if transition else
               "a TRUNCATE trigger" if tgtype & _TRUNCATE else
               "an AFTER row trigger" if row and not before else None)
        if why is None and row and str(name).encode() >= (RLS_TRIGGER if rls else WRITE_TRIGGER).encode():
            why = f"a row trigger whose name sorts after recon's {WRITE_TRIGGER}, so it would fire too late"
        if why:
            raise _refuse(where, f"trigger {name} is {why}, which the view that replaces the table cannot carry; "
                                 "drop it (or change it) before repairing")
        events = tuple(e for bit, e in ((_INSERT, "INSERT"), (_UPDATE, "UPDATE"), (_DELETE, "DELETE")) if tgtype & bit)
        parts = bytes(args).split(b"\x00")[: int(nargs)] if nargs else []
        out.append(Trigger(str(name), row, "BEFORE" if before else "AFTER", events, (str(fschema), str(fname)),
                           tuple(p.decode() for p in parts)))
    return out


def _dependent_views(conn: psycopg.Connection, oid: int, where: str) -> list[DependentView]:
    """Views built on the table, directly or through other views, dependencies first."""
    rows = conn.execute("""
WITH RECURSIVE dep(oid, depth) AS (
  SELECT r.ev_class, 1 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
   WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = %(t)s
     AND r.ev_class <> %(t)s AND r.rulename = '_RETURN'
  UNION
  SELECT r.ev_class, dep.depth + 1 FROM dep JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass
     AND d.refobjid = dep.oid AND d.classid = 'pg_rewrite'::regclass
    JOIN pg_rewrite r ON r.oid = d.objid WHERE r.ev_class <> dep.oid AND r.rulename = '_RETURN')
SELECT c.oid, c.relkind::text, c.oid::regclass::text, n.nspname, c.relname, max(dep.depth)
  FROM dep JOIN pg_class c ON c.oid = dep.oid JOIN pg_namespace n ON n.oid = c.relnamespace
 GROUP BY 1, 2, 3, 4, 5 ORDER BY 6, 3""", {"t": oid}).fetchall()
    out: list[DependentView] = []
    for void, kind, name, schema, relname, _depth in rows:
        if kind != "v":
            raise _refuse(where, f"materialized view {name} depends on it; drop it before repairing and recreate it "
                                 "afterwards")
        meta = conn.execute("SELECT pg_get_viewdef(c.oid), coalesce(c.reloptions, '{}'), pg_get_userbyid(c.relowner), "
                            "obj_description(c.oid, 'pg_class') FROM pg_class c WHERE c.oid = %s", (void,)).fetchone()
        acl, column_acl = grants(conn, void)
        out.append(DependentView(
            name=str(name), schema=str(schema), relname=str(relname),
            definition=str(meta[0]).strip().rstrip(";"), options=[str(o) for o in meta[1]],  # type: ignore[index]
            owner=str(meta[2]), acl=acl, column_acl=column_acl, comment=meta[3],  # type: ignore[index]
            column_comments=[(str(r[0]), str(r[1])) for r in conn.execute(
                "SELECT attname, col_description(attrelid, attnum) FROM pg_attribute WHERE attrelid = %s "
                "AND attnum > 0 AND col_description(attrelid, attnum) IS NOT NULL ORDER BY attnum", (void,)).fetchall()],
            defaults=[(str(r[0]), str(r[1])) for r in conn.execute(
                "SELECT a.attname, pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a "
                "ON a.attrelid = d.adrelid AND a.attnum = d.adnum WHERE d.adrelid = %s ORDER BY a.attnum",
                (void,)).fetchall()],
            triggers=[str(r[0]) for r in conn.execute(
                "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = %s AND NOT tgisinternal "
                "ORDER BY tgname", (void,)).fetchall()],
            rules=[str(r[0]).strip().rstrip(";") for r in conn.execute(
                "SELECT pg_get_ruledef(oid) FROM pg_rewrite WHERE ev_class = %s AND rulename <> '_RETURN' "
                "ORDER BY rulename", (void,)).fetchall()]))
    return out


# -- replaying -------------------------------------------------------------------------------------
def drop_views(conn: psycopg.Connection, g: Guards) -> None:
    """Drop the dependent views (all in one statement, without CASCADE: anything else that depends on
    them stops the migration)."""
    if g.views:
        conn.execute(sql.SQL("DROP VIEW {}").format(
            sql.SQL(", ").join(sql.Identifier(v.schema, v.relname) for v in g.views)))


def constraints(conn: psycopg.Connection, g: Guards, versions: sql.Identifier) -> None:
    """CHECK constraints and outbound foreign keys onto the version store, once its rows are in."""
    for name, defn in g.checks + g.foreign_keys:
        conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(versions, sql.Identifier(name))
                     + sql.SQL(defn))


def unique_indexes(conn: psycopg.Connection, g: Guards) -> None:
    """The unique indexes over current versions, under their own names (so after the table is gone)."""
    for _name, stmt in g.unique:
        conn.execute(stmt)  # without parameters psycopg sends the text as it is


def on_view(conn: psycopg.Connection, g: Guards, schema: str, view: sql.Identifier, versions: sql.Identifier) -> None:
    """Row-level security and triggers, once the view exists (before recon's own write trigger)."""
    for t in g.triggers:
        fn = sql.SQL("{}({})").format(sql.Identifier(*t.function), sql.SQL(", ").join(sql.Literal(a) for a in t.args))
        events = sql.SQL(" OR ".join(t.events))
        if t.row:
            conn.execute(sql.SQL("CREATE TRIGGER {} INSTEAD OF {} ON {} FOR EACH ROW EXECUTE FUNCTION {}").format(
                sql.Identifier(t.name), events, view, fn))
        else:
            conn.execute(sql.SQL("CREATE TRIGGER {} {} {} ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}").format(
                sql.Identifier(t.name), sql.SQL(t.timing), events, view, fn))
    if g.rls:
        conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(versions))
    if g.force_rls:
        conn.execute(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(versions))
    for p in g.policies:
        roles = sql.SQL("PUBLIC") if p.roles is None else sql.SQL(", ").join(sql.Identifier(r) for r in p.roles)
        stmt = sql.SQL("CREATE POLICY {} ON {} AS {} FOR {} TO {}").format(
            sql.Identifier(p.name), versions, sql.SQL("PERMISSIVE" if p.permissive else "RESTRICTIVE"),
            sql.SQL(p.command), roles)
        if p.using is not None:
            stmt += sql.SQL(" USING (") + sql.SQL(p.using) + sql.SQL(")")
        if p.check is not None:
            stmt += sql.SQL(" WITH CHECK (") + sql.SQL(p.check) + sql.SQL(")")
        conn.execute(stmt)
    if g.rls:
        check_fn = sql.Identifier(schema, "recon_rls_check")
        conn.execute(sql.SQL(_RLS_CHECK).format(check_fn))
        conn.execute(sql.SQL("CREATE TRIGGER {} INSTEAD OF INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW "
                             "EXECUTE FUNCTION {}({})").format(sql.Identifier(RLS_TRIGGER), view, check_fn,
                                                               sql.Literal(versions.as_string(conn))))


def grant(conn: psycopg.Connection, g: Guards, view: sql.Identifier, versions: sql.Identifier, *,
          invoker: bool) -> list[str]:
    """The table's privileges onto the view; SELECT also onto the history (as readable as the current
    values were). A security_invoker view reads the history as the reader, who then needs
    ``valid_to`` too. Returns the privileges copied, as a report names them."""
    copied: list[str] = []
    for grantee, priv, grantable in g.acl:
        if priv not in ("SELECT", "INSERT", "UPDATE", "DELETE"):
            continue
        who = sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee)
        opt = sql.SQL(" WITH GRANT OPTION" if grantable else "")
        conn.execute(sql.SQL("GRANT {} ON {} TO {}{}").format(sql.SQL(priv), view, who, opt))
        if priv == "SELECT":
            conn.execute(sql.SQL("GRANT SELECT ON {} TO {}{}").format(versions, who, opt))
        copied.append(f"{priv} to {grantee}")
    by: dict[tuple[str, str, bool], list[str]] = {}
    for col, grantee, priv, grantable in g.column_acl:
        if priv in ("SELECT", "INSERT", "UPDATE"):
            by.setdefault((grantee, priv, grantable), []).append(col)
    for (grantee, priv, grantable), cols in by.items():
        who = sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee)
        opt = sql.SQL(" WITH GRANT OPTION" if grantable else "")
        idents = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
        conn.execute(sql.SQL("GRANT {} ({}) ON {} TO {}{}").format(sql.SQL(priv), idents, view, who, opt))
        if priv == "SELECT":
            hist = cols + ["valid_to"] if invoker else cols
            conn.execute(sql.SQL("GRANT SELECT ({}) ON {} TO {}{}").format(
                sql.SQL(", ").join(sql.Identifier(c) for c in hist), versions, who, opt))
        copied.append(f"{priv} ({', '.join(cols)}) to {grantee}")
    return copied


def recreate_views(conn: psycopg.Connection, g: Guards) -> list[str]:
    """The dependent views again, now over the view of current versions, as they were."""
    me = conn.execute("SELECT current_user::text").fetchone()[0]  # type: ignore[index]
    for v in g.views:
        ident = sql.Identifier(v.schema, v.relname)
        opts: list[sql.Composable] = []
        for o in v.options:
            k, _, val = o.partition("=")
            if not _OPTION.match(k):
                raise UsageError(f"view {v.name} has an option recon does not know how to restore: {o}")
            opts.append(sql.SQL("{} = {}").format(sql.SQL(k), sql.Literal(val)))
        with_ = sql.SQL(" WITH ({})").format(sql.SQL(", ").join(opts)) if opts else sql.SQL("")
        conn.execute(sql.SQL("CREATE VIEW {}{} AS ").format(ident, with_) + sql.SQL(v.definition))
        for col, expr in v.defaults:
            conn.execute(sql.SQL("ALTER VIEW {} ALTER COLUMN {} SET DEFAULT ").format(ident, sql.Identifier(col))
                         + sql.SQL(expr))
        for stmt in v.triggers + v.rules:
            conn.execute(stmt)  # without parameters psycopg sends the text as it is
        if v.comment is not None:
            conn.execute(sql.SQL("COMMENT ON VIEW {} IS {}").format(ident, sql.Literal(v.comment)))
        for col, text in v.column_comments:
            conn.execute(sql.SQL("COMMENT ON COLUMN {}.{} IS {}").format(ident, sql.Identifier(col), sql.Literal(text)))
        if v.owner != me:
            conn.execute(sql.SQL("ALTER VIEW {} OWNER TO {}").format(ident, sql.Identifier(v.owner)))
        for grantee, priv, grantable in v.acl:
            who = sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee)
            conn.execute(sql.SQL("GRANT {} ON {} TO {}{}").format(
                sql.SQL(priv), ident, who, sql.SQL(" WITH GRANT OPTION" if grantable else "")))
        for col, grantee, priv, grantable in v.column_acl:
            who = sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee)
            conn.execute(sql.SQL("GRANT {} ({}) ON {} TO {}{}").format(
                sql.SQL(priv), sql.Identifier(col), ident, who, sql.SQL(" WITH GRANT OPTION" if grantable else "")))
    return [v.name for v in g.views]


# Runs as the writer (not SECURITY DEFINER): current_user and the policies' own expressions mean
# what they meant on the table. USING filters the row being changed (a row the writer may not
# change is skipped silently, as PostgreSQL does); WITH CHECK (or USING) must pass for the new row.
# Permissive policies: at least one passes; restrictive ones: all pass; none applicable: denied.
_RLS_CHECK = """CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
  rel regclass := TG_ARGV[0]::regclass;
  c record;
  p record;
  phase text;
  r record;
  passed boolean;
  any_ok boolean;
  all_ok boolean;
BEGIN
  SELECT relrowsecurity AS enabled, relforcerowsecurity AS forced, relowner INTO c FROM pg_class WHERE oid = rel;
  IF NOT c.enabled OR (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user)
     OR (NOT c.forced AND pg_has_role(current_user, c.relowner, 'USAGE')) THEN
    IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
    RETURN NEW;
  END IF;
  FOREACH phase IN ARRAY CASE TG_OP WHEN 'INSERT' THEN ARRAY['check'] WHEN 'UPDATE' THEN ARRAY['using', 'check']
                                    ELSE ARRAY['using'] END LOOP
    IF phase = 'using' THEN r := OLD; ELSE r := NEW; END IF;
    any_ok := false;
    all_ok := true;
    FOR p IN SELECT pol.polpermissive AS permissive,
                    CASE WHEN phase = 'using' THEN pg_get_expr(pol.polqual, pol.polrelid)
                         ELSE coalesce(pg_get_expr(pol.polwithcheck, pol.polrelid),
                                       pg_get_expr(pol.polqual, pol.polrelid)) END AS expr
               FROM pg_policy pol
              WHERE pol.polrelid = rel
                AND pol.polcmd IN ('*', CASE TG_OP WHEN 'INSERT' THEN 'a' WHEN 'UPDATE' THEN 'w' ELSE 'd' END)
                AND (0::oid = ANY (pol.polroles) OR EXISTS (
                       SELECT 1 FROM unnest(pol.polroles) AS x(role) WHERE pg_has_role(current_user, x.role, 'USAGE')))
    LOOP
      CONTINUE WHEN p.expr IS NULL;
      EXECUTE format('SELECT coalesce((%s), false) FROM (SELECT ($1).*) AS recon_row', p.expr) INTO passed USING r;
      IF p.permissive THEN
        any_ok := any_ok OR passed;
      ELSE
        all_ok := all_ok AND passed;
      END IF;
    END LOOP;
    IF NOT (any_ok AND all_ok) THEN
      IF phase = 'using' THEN RETURN NULL; END IF;
      RAISE EXCEPTION 'new row violates row-level security policy for table "%"', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
    END IF;
  END LOOP;
  IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
  RETURN NEW;
END $f$"""
