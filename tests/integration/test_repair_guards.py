# ruff: noqa: S608 - SQL names the test's own schema (a fixed prefix and a random suffix)
"""Item 17.6: versioning a table for `recon repair` keeps everything that guarded it.

Each test builds a table with one guard (a CHECK constraint, row-level security, column grants,
triggers, a primary key, an inbound foreign key, dependent views) in its own schema of the session's
embedded PostgreSQL, runs the store's migration as the table's owner (what ``recon repair --apply``
does first), and checks the guard still holds through the view and on the version store — or that
the migration was refused with nothing changed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from engine.connectors.base import PostgresRef
from engine.core.errors import UsageError
from engine.store.versions import Target, inspect, migrate
from tests.pg_fixtures import PgHandle

ALICE, BOB = "g17_alice", "g17_bob"


@dataclass
class Db:
    own: psycopg.Connection  # the table owner (recon), as repair connects
    su: psycopg.Connection  # a superuser, to act as other roles
    schema: str
    dsn: str

    def migrate(self, table: str = "t", key: str = "id", value: str = "amount") -> dict[str, Any]:
        tgt = Target(ref=PostgresRef(self.dsn, self.schema, table), mapping="m", sobject="Account",
                     source_column="Amount__c", key=key, value=value, updated_at=None, count_column=None)
        return migrate(self.own, tgt, inspect(self.own, tgt))

    def as_role(self, role: str, stmt: str, params: tuple = ()) -> psycopg.Cursor:
        self.su.execute(f"SET ROLE {role}")
        try:
            return self.su.execute(stmt, params)
        finally:
            self.su.execute("RESET ROLE")

    def kind(self, table: str = "t") -> tuple[str | None, str | None]:
        row = self.own.execute("SELECT (SELECT relkind::text FROM pg_class WHERE oid = to_regclass(%s)), "
                               "to_regclass(%s)::text", (f"{self.schema}.{table}",
                                                         f"{self.schema}.{table}_versions")).fetchone()
        return row[0], row[1]  # type: ignore[index]


@pytest.fixture
def db(embedded_pg: PgHandle) -> Iterator[Db]:
    schema = f"g17_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(embedded_pg.superuser_dsn, autocommit=True) as su, \
            psycopg.connect(embedded_pg.info.socket_dsn, autocommit=True) as own:
        for role in (ALICE, BOB):
            su.execute(f"DO $$ BEGIN CREATE ROLE {role}; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        own.execute(f"CREATE SCHEMA {schema}")
        own.execute(f"GRANT USAGE ON SCHEMA {schema} TO {ALICE}, {BOB}")
        yield Db(own, su, schema, embedded_pg.info.socket_dsn)
        own.execute(f"DROP SCHEMA {schema} CASCADE")


def test_check_constraints_are_kept_and_enforced(db: Db) -> None:
    s = db.schema
    db.own.execute(f"CREATE TABLE {s}.t (id text PRIMARY KEY, amount numeric(18,2) NOT NULL "
                   f"CONSTRAINT amount_not_negative CHECK (amount >= 0))")
    db.own.execute(f"INSERT INTO {s}.t VALUES ('a', 1), ('b', 2)")
    db.migrate()
    for stmt in (f"INSERT INTO {s}.t VALUES ('c', -1)", f"UPDATE {s}.t SET amount = -5 WHERE id = 'a'"):
        with pytest.raises(psycopg.errors.CheckViolation, match="amount_not_negative"):
            db.own.execute(stmt)
    assert db.own.execute(f"SELECT count(*) FROM {s}.t_versions").fetchone()[0] == 2  # type: ignore[index]


def test_primary_key_and_unique_constraints_hold_over_current_versions(db: Db) -> None:
    s = db.schema
    db.own.execute(f"CREATE TABLE {s}.t (id text PRIMARY KEY, account text NOT NULL, amount numeric, "
                   f"email text CONSTRAINT t_email_key UNIQUE)")
    db.own.execute(f"INSERT INTO {s}.t VALUES ('a', 'acc1', 1, 'a@x'), ('b', 'acc2', 2, 'b@x')")
    db.migrate(key="account")  # the mapping's key is not the primary key
    for dup in ("('a', 'acc9', 1, 'z@x')", "('z', 'acc9', 1, 'a@x')"):
        with pytest.raises(psycopg.errors.UniqueViolation):
            db.own.execute(f"INSERT INTO {s}.t VALUES {dup}")
    db.own.execute(f"UPDATE {s}.t SET amount = 5 WHERE account = 'acc1'")  # a new version of the same key
    assert db.own.execute(f"SELECT count(*) FROM {s}.t_versions WHERE id = 'a'").fetchone()[0] == 2  # type: ignore[index]
    defs = dict(db.own.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s "
                               "AND tablename = 't_versions'", (s,)).fetchall())
    assert "WHERE (valid_to IS NULL)" in defs["t_pkey"] and "UNIQUE" in defs["t_pkey"], defs
    assert "WHERE (valid_to IS NULL)" in defs["t_email_key"], defs


def _rls_table(db: Db) -> None:
    s = db.schema
    db.own.execute(f"CREATE TABLE {s}.t (id text PRIMARY KEY, owner name NOT NULL, amount numeric)")
    db.own.execute(f"INSERT INTO {s}.t VALUES ('a', '{ALICE}', 1), ('b', '{BOB}', 2)")
    db.own.execute(f"ALTER TABLE {s}.t ENABLE ROW LEVEL SECURITY")
    db.own.execute(f"CREATE POLICY own_rows ON {s}.t USING (owner = current_user)")
    db.own.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {s}.t TO {ALICE}, {BOB}")


def test_row_level_security_still_filters_reads_through_the_view(db: Db) -> None:
    _rls_table(db)
    s = db.schema
    assert db.as_role(ALICE, f"SELECT id FROM {s}.t").fetchall() == [("a",)]
    db.migrate()
    assert db.as_role(ALICE, f"SELECT id FROM {s}.t").fetchall() == [("a",)]
    assert db.as_role(BOB, f"SELECT id FROM {s}.t_versions").fetchall() == [("b",)]  # history too
    assert db.own.execute(f"SELECT count(*) FROM {s}.t").fetchone()[0] == 2  # type: ignore[index]
    opts = db.own.execute("SELECT reloptions FROM pg_class WHERE oid = %s::regclass", (f"{s}.t",)).fetchone()[0]  # type: ignore[index]
    assert "security_invoker=true" in (opts or []), opts


def test_row_level_security_still_checks_writes_through_the_view(db: Db) -> None:
    _rls_table(db)
    s = db.schema
    db.migrate()
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        db.as_role(ALICE, f"INSERT INTO {s}.t VALUES ('c', '{BOB}', 3)")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        db.as_role(ALICE, f"UPDATE {s}.t SET owner = '{BOB}' WHERE id = 'a'")
    assert db.as_role(ALICE, f"UPDATE {s}.t SET amount = 0 WHERE id = 'b'").rowcount == 0
    assert db.as_role(ALICE, f"UPDATE {s}.t SET amount = 7 WHERE id = 'a'").rowcount == 1
    assert db.as_role(ALICE, f"INSERT INTO {s}.t VALUES ('c', '{ALICE}', 3)").rowcount == 1
    rows = db.own.execute(f"SELECT id, amount::text FROM {s}.t ORDER BY id").fetchall()
    assert rows == [("a", "7"), ("b", "2"), ("c", "3")]


def test_column_grants_are_kept_on_the_view_and_history(db: Db) -> None:
    s = db.schema
    db.own.execute(f"CREATE TABLE {s}.t (id text PRIMARY KEY, amount numeric, secret text)")
    db.own.execute(f"INSERT INTO {s}.t VALUES ('a', 1, 'hidden')")
    db.own.execute(f"GRANT SELECT (id, amount), UPDATE (amount) ON {s}.t TO {ALICE}")
    out = db.migrate()
    assert db.as_role(ALICE, f"SELECT id, amount::text FROM {s}.t").fetchall() == [("a", "1")]
    assert db.as_role(ALICE, f"UPDATE {s}.t SET amount = 3 WHERE id = 'a'").rowcount == 1
    assert db.as_role(ALICE, f"SELECT count(*) FROM {s}.t_versions WHERE id = 'a'").fetchone()[0] == 2  # type: ignore[index]
    for stmt in (f"SELECT secret FROM {s}.t", f"UPDATE {s}.t SET secret = 'x'", f"SELECT secret FROM {s}.t_versions",
                 f"DELETE FROM {s}.t"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            db.as_role(ALICE, stmt)
    assert f"UPDATE (amount) to {ALICE}" in out["privileges_copied"], out


def test_triggers_still_fire_on_writes_through_the_view(db: Db) -> None:
    s = db.schema
    db.own.execute(f"CREATE TABLE {s}.t (id text PRIMARY KEY, code text, amount numeric)")
    db.own.execute(f"CREATE TABLE {s}.log (op text)")
    db.own.execute(f"""CREATE FUNCTION {s}.normalize() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.amount < 0 THEN RAISE EXCEPTION 'negative amount for %', NEW.id; END IF;
  NEW.code := upper(NEW.code);
  RETURN NEW;
END $$""")
    db.own.execute(f"CREATE FUNCTION {s}.log_op() RETURNS trigger LANGUAGE plpgsql AS "
                   f"$$ BEGIN INSERT INTO {s}.log VALUES (TG_OP); RETURN NULL; END $$")
    db.own.execute(f"CREATE TRIGGER normalize BEFORE INSERT OR UPDATE ON {s}.t FOR EACH ROW "
                   f"EXECUTE FUNCTION {s}.normalize()")
    db.own.execute(f"CREATE TRIGGER log_op AFTER INSERT OR UPDATE OR DELETE ON {s}.t FOR EACH STATEMENT "
                   f"EXECUTE FUNCTION {s}.log_op()")
    db.own.execute(f"INSERT INTO {s}.t VALUES ('a', 'x', 1)")
    db.own.execute(f"DELETE FROM {s}.log")
    db.migrate()
    db.own.execute(f"INSERT INTO {s}.t VALUES ('b', 'abc', 3)")
    db.own.execute(f"UPDATE {s}.t SET code = 'def' WHERE id = 'a'")
    with pytest.raises(psycopg.errors.RaiseException, match="negative amount for a"):
        db.own.execute(f"UPDATE {s}.t SET amount = -1 WHERE id = 'a'")
    assert db.own.execute(f"SELECT id, code FROM {s}.t ORDER BY id").fetchall() == [("a", "DEF"), ("b", "ABC")]
    assert [r[0] for r in db.own.execute(f"SELECT op FROM {s}.log").fetchall()] == ["INSERT", "UPDATE"]


def test_a_trigger_a_view_cannot_carry_is_refused_and_nothing_changes(db: Db) -> None:
    s = db.schema
    db.own.execute(f"CREATE TABLE {s}.t (id text PRIMARY KEY, amount numeric)")
    db.own.execute(f"INSERT INTO {s}.t VALUES ('a', 1)")
    db.own.execute(f"CREATE FUNCTION {s}.audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$")
    db.own.execute(f"CREATE TRIGGER audit_rows AFTER UPDATE ON {s}.t FOR EACH ROW EXECUTE FUNCTION {s}.audit()")
    with pytest.raises(UsageError, match="audit_rows") as err:
        db.migrate()
    assert "nothing was changed" in str(err.value)
    assert db.kind() == ("r", None)


def test_an_inbound_foreign_key_is_refused_by_name_and_nothing_changes(db: Db) -> None:
    s = db.schema
    db.own.execute(f"CREATE TABLE {s}.t (id text PRIMARY KEY, amount numeric)")
    db.own.execute(f"INSERT INTO {s}.t VALUES ('a', 1)")
    db.own.execute(f"CREATE TABLE {s}.child (id int PRIMARY KEY, t_id text CONSTRAINT child_t_fk REFERENCES {s}.t)")
    db.own.execute(f"INSERT INTO {s}.child VALUES (1, 'a')")
    with pytest.raises(UsageError, match=f"foreign key child_t_fk on {s}.child") as err:
        db.migrate()
    assert "nothing was changed" in str(err.value)
    assert db.kind() == ("r", None)
    assert db.own.execute(f"SELECT id, amount::text FROM {s}.t").fetchall() == [("a", "1")]


def test_dependent_views_show_only_current_versions_and_keep_their_grants(db: Db) -> None:
    s = db.schema
    db.own.execute(f"CREATE TABLE {s}.t (id text PRIMARY KEY, amount numeric)")
    db.own.execute(f"INSERT INTO {s}.t VALUES ('a', 1), ('b', 2)")
    db.own.execute(f"CREATE VIEW {s}.big AS SELECT id, amount FROM {s}.t WHERE amount > 1")
    db.own.execute(f"CREATE VIEW {s}.big_ids WITH (security_barrier) AS SELECT id FROM {s}.big")
    db.own.execute(f"COMMENT ON VIEW {s}.big IS 'the big ones'")
    db.own.execute(f"GRANT SELECT ON {s}.big, {s}.big_ids TO {ALICE}")
    out = db.migrate()
    db.own.execute(f"UPDATE {s}.t SET amount = 10 WHERE id = 'b'")
    db.own.execute(f"UPDATE {s}.t SET amount = 20 WHERE id = 'b'")
    assert db.own.execute(f"SELECT id, amount::text FROM {s}.big").fetchall() == [("b", "20")]
    assert db.as_role(ALICE, f"SELECT id FROM {s}.big_ids").fetchall() == [("b",)]
    assert db.own.execute(f"SELECT obj_description('{s}.big'::regclass)").fetchone()[0] == "the big ones"  # type: ignore[index]
    opts = db.own.execute(f"SELECT reloptions FROM pg_class WHERE oid = '{s}.big_ids'::regclass").fetchone()[0]  # type: ignore[index]
    assert opts == ["security_barrier=true"], opts
    assert out["views_repointed"] == [f"{s}.big", f"{s}.big_ids"], out


def test_a_materialized_view_is_refused_and_nothing_changes(db: Db) -> None:
    s = db.schema
    db.own.execute(f"CREATE TABLE {s}.t (id text PRIMARY KEY, amount numeric)")
    db.own.execute(f"CREATE VIEW {s}.v1 AS SELECT id FROM {s}.t")
    db.own.execute(f"CREATE MATERIALIZED VIEW {s}.mv AS SELECT id FROM {s}.v1")
    with pytest.raises(UsageError, match=f"materialized view {s}.mv") as err:
        db.migrate()
    assert "nothing was changed" in str(err.value)
    assert db.kind() == ("r", None)
    assert db.kind("v1")[0] == "v"
