# ruff: noqa: S608 - tamper statements built from table-name constants and integer seqs, run as the test superuser
"""The recon_audit ledger on a real embedded PostgreSQL: append-only for the writer (also under
session_replication_role=replica), hash chain and checkpoints catching every tamper a superuser with
triggers disabled can do, and concurrent writers that never fork the chain.

Each test works on its own copy (CREATE DATABASE … TEMPLATE) of one populated ledger, so tampering
never leaks between tests. The writer is the stack's application role `recon_app`; the
administrator that runs `init` is the owner role `recon` (CREATEROLE); tampering uses the superuser.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import psycopg
import pytest

from engine.core.errors import UsageError, VerificationError
from engine.evidence import manifest as mf
from engine.store import ledger as lg

TEMPLATE = "ledger_tpl"


def _dsn(pg, user: str, db: str) -> str:  # noqa: ANN001
    return f"postgresql://{user}@/{db}?host={pg.info.socket_dir}&port={pg.info.port}"


def _superuser(pg, db: str = "postgres") -> psycopg.Connection:  # noqa: ANN001
    return psycopg.connect(pg.info.superuser_socket_dsn(db), autocommit=True)


@pytest.fixture(scope="module")
def template(embedded_pg, tmp_path_factory) -> dict:  # noqa: ANN001
    """A populated ledger with rows in every table and an exported, signed checkpoint."""
    keys = tmp_path_factory.mktemp("ledgerkeys")
    priv, pub = mf.keygen(keys)
    with _superuser(embedded_pg) as c:
        c.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {TEMPLATE} OWNER recon")
    admin = _dsn(embedded_pg, "recon", TEMPLATE)
    writer = _dsn(embedded_pg, "recon_app", TEMPLATE)
    with lg.Ledger(admin) as a:
        info = a.init(writer="recon_app")
        assert info["created"] and a.init(writer="recon_app")["created"] is False  # idempotent
    with lg.Ledger(writer) as w:
        for i in range(3):
            run_id = str(uuid.uuid4())
            w.record_run(run_id, {"command": "diff", "summary": {"mismatched": i, "amount": "12.50"}},
                         inputs=[{"side": "source", "system": "salesforce", "rows": 10 + i},
                                 {"side": "target", "system": "postgresql", "rows": 11 + i}],
                         lineage=[{"kind": "openlineage_event", "sha256": "ab" * 32}])
            w.append("findings", {"run_id": run_id, "class": "duplicate_event", "key": f"001{i}"})
            w.append("corrections", {"run_id": run_id, "key": f"001{i}", "from": "10.00", "to": "12.50"})
            w.append("gate_decisions", {"run_id": run_id, "mapping": "clv", "state": "closed", "ratio": 0.01})
            if i == 1:
                w.checkpoint()
        note = keys / "checkpoint.note"
        cp = w.export_checkpoint(note, priv)
    rows = cp.size
    return {"admin": admin, "writer": writer, "note": note, "pub": pub, "priv": priv, "rows": rows, "keys": keys}


@pytest.fixture()
def db(embedded_pg, template, request) -> dict:  # noqa: ANN001
    name = f"ledger_{request.node.name.split('[')[0][-30:]}_{uuid.uuid4().hex[:6]}".lower()
    with _superuser(embedded_pg) as c:
        c.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE} OWNER recon")
    yield {**template, "name": name, "admin": _dsn(embedded_pg, "recon", name),
           "writer": _dsn(embedded_pg, "recon_app", name)}
    with _superuser(embedded_pg) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def tamper(pg, db: str, *statements: str) -> None:  # noqa: ANN001
    """What a superuser (or the owner) can still do: disable the triggers and edit."""
    with _superuser(pg, db) as c, c.transaction():
        for t in lg.TABLES:
            c.execute(f"ALTER TABLE recon_audit.{t} DISABLE TRIGGER USER")
        for s in statements:
            c.execute(s)
        for t in lg.TABLES:
            for trigger in ("append_only_row", "append_only_truncate"):
                c.execute(f"ALTER TABLE recon_audit.{t} ENABLE ALWAYS TRIGGER {trigger}")


def seq_of(pg, db: str, table: str, which: str = "min") -> int:  # noqa: ANN001
    with _superuser(pg, db) as c:
        return int(c.execute(f"SELECT {which}(seq) FROM recon_audit.{table}").fetchone()[0])


# -- an untouched ledger ---------------------------------------------------------------------------
def test_untouched_ledger_verifies_with_and_without_the_exported_checkpoint(db) -> None:  # noqa: ANN001
    rep = lg.verify(db["writer"])
    assert rep.ok, rep.problems
    assert rep.rows == db["rows"] and set(rep.tables) == set(lg.TABLES)
    assert rep.checkpoints_checked == 3  # genesis, the one in the middle, the exported one
    rep = lg.verify(db["admin"], checkpoint_file=db["note"], pubkey=db["pub"])  # the admin may read
    assert rep.ok and rep.external_checkpoint["signature_verified"] is True
    assert rep.external_checkpoint["size"] == db["rows"]


def test_schema_is_owned_by_a_role_the_writer_does_not_hold_and_triggers_fire_always(db, embedded_pg) -> None:  # noqa: ANN001
    with _superuser(embedded_pg, db["name"]) as c:
        owners = {r[0] for r in c.execute(
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'recon_audit'").fetchall()}
        assert owners == {lg.OWNER_ROLE}
        assert c.execute("SELECT pg_has_role('recon_app', %s, 'MEMBER')", (lg.OWNER_ROLE,)).fetchone()[0] is False
        assert c.execute("SELECT pg_has_role('recon', %s, 'USAGE')", (lg.OWNER_ROLE,)).fetchone()[0] is False
        trig = c.execute("""SELECT c.relname, t.tgname, t.tgenabled FROM pg_trigger t
                              JOIN pg_class c ON c.oid = t.tgrelid
                              JOIN pg_namespace n ON n.oid = c.relnamespace
                             WHERE n.nspname = 'recon_audit' AND NOT t.tgisinternal""").fetchall()
        assert len(trig) == 3 * len(lg.TABLES)
        assert {r[1] for r in trig} == {"append_only_row", "append_only_truncate", "append_only_chain"}
        assert {r[2] for r in trig} == {"A"}  # ENABLE ALWAYS: replica mode does not skip them
        privs = c.execute("""SELECT privilege_type FROM information_schema.role_table_grants
                              WHERE grantee = %s AND table_schema = 'recon_audit'""", (lg.WRITER_ROLE,)).fetchall()
        assert {p[0] for p in privs} == {"SELECT", "INSERT"}


# -- the writer cannot change history --------------------------------------------------------------
@pytest.mark.parametrize("statement", [
    "UPDATE recon_audit.runs SET canonical = '{}'",
    "DELETE FROM recon_audit.runs",
    "TRUNCATE recon_audit.runs",
    "TRUNCATE recon_audit.checkpoints CASCADE",
])
def test_writer_cannot_update_delete_or_truncate(db, statement: str) -> None:  # noqa: ANN001
    with psycopg.connect(db["writer"], autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(statement)
        # the writer may not switch triggers off with replica mode …
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="session_replication_role"):
            c.execute("SET session_replication_role = replica")
    assert lg.verify(db["writer"]).ok


def test_writer_allowed_replica_mode_is_still_rejected(db, embedded_pg) -> None:  # noqa: ANN001
    """Even if a DBA lets the writer set replica mode (PostgreSQL 15+ GRANT SET ON PARAMETER), it
    holds no UPDATE/DELETE/TRUNCATE privilege, so the edit fails before any trigger question."""
    with _superuser(embedded_pg, db["name"]) as c:
        c.execute("GRANT SET ON PARAMETER session_replication_role TO recon_app")
    try:
        with psycopg.connect(db["writer"], autocommit=True) as c:
            c.execute("SET session_replication_role = replica")
            for s in ("UPDATE recon_audit.inputs SET canonical = '{}'", "DELETE FROM recon_audit.inputs",
                      "TRUNCATE recon_audit.inputs"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    c.execute(s)
    finally:
        with _superuser(embedded_pg, db["name"]) as c:
            c.execute("REVOKE SET ON PARAMETER session_replication_role FROM recon_app")


@pytest.mark.parametrize("as_owner", [False, True], ids=["superuser", "owner-role"])
def test_triggers_reject_changes_under_replica_mode(db, embedded_pg, as_owner: bool) -> None:  # noqa: ANN001
    """The owner and superusers hold the privileges, so here the ENABLE ALWAYS triggers are what
    refuses: replica mode (which skips ordinary triggers) changes nothing."""
    with _superuser(embedded_pg, db["name"]) as c:
        c.execute("SET session_replication_role = replica")
        if as_owner:
            c.execute(f"SET ROLE {lg.OWNER_ROLE}")
        for t in ("runs", "checkpoints", "gate_decisions"):
            for s in (f"UPDATE recon_audit.{t} SET canonical = canonical || ' '", f"DELETE FROM recon_audit.{t}",
                      f"TRUNCATE recon_audit.{t} CASCADE"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                    c.execute(s)
    assert lg.verify(db["writer"]).ok


# -- tampering with triggers disabled --------------------------------------------------------------
@pytest.mark.parametrize("table", lg.TABLES)
def test_changing_one_row_of_any_table_is_named(db, embedded_pg, table: str) -> None:  # noqa: ANN001
    seq = seq_of(embedded_pg, db["name"], table, "max" if table == "checkpoints" else "min")
    tamper(embedded_pg, db["name"],
           f"UPDATE recon_audit.{table} SET canonical = jsonb_set(canonical::jsonb, '{{note}}', '\"edited\"')::text "
           f"WHERE seq = {seq}")
    rep = lg.verify(db["writer"])
    assert not rep.ok
    assert rep.first_broken == {"table": table, "seq": seq}
    assert rep.reason == f"row {table} seq {seq}: contents changed after it was written (row hash mismatch)"


def test_changing_the_recorded_time_or_a_link_is_named(db, embedded_pg) -> None:  # noqa: ANN001
    seq = seq_of(embedded_pg, db["name"], "inputs")
    tamper(embedded_pg, db["name"], f"UPDATE recon_audit.inputs SET recorded_at = recorded_at - interval '1 day' "
                                    f"WHERE seq = {seq}")
    assert lg.verify(db["writer"]).first_broken == {"table": "inputs", "seq": seq}
    seq2 = seq_of(embedded_pg, db["name"], "findings")
    tamper(embedded_pg, db["name"], f"UPDATE recon_audit.inputs SET recorded_at = recorded_at + interval '1 day' "
                                    f"WHERE seq = {seq}",
           f"UPDATE recon_audit.findings SET prev_hash = repeat('0', 64) WHERE seq = {seq2}")
    rep = lg.verify(db["writer"])
    assert rep.first_broken == {"table": "findings", "seq": seq2}
    assert "prev_hash does not link" in rep.reason


def test_deleting_a_row_is_named(db, embedded_pg) -> None:  # noqa: ANN001
    seq = seq_of(embedded_pg, db["name"], "corrections")
    tamper(embedded_pg, db["name"], f"DELETE FROM recon_audit.corrections WHERE seq = {seq}")
    rep = lg.verify(db["writer"])
    assert not rep.ok and rep.first_broken["seq"] == seq + 1
    assert f"seq {seq} missing before it: rows were deleted" in rep.reason


def test_reordering_rows_is_named(db, embedded_pg) -> None:  # noqa: ANN001
    with _superuser(embedded_pg, db["name"]) as c:
        a, b = (r[0] for r in c.execute("SELECT seq FROM recon_audit.runs ORDER BY seq LIMIT 2").fetchall())
    tamper(embedded_pg, db["name"],
           f"UPDATE recon_audit.runs SET seq = 999999 WHERE seq = {a}",
           f"UPDATE recon_audit.runs SET seq = {a} WHERE seq = {b}",
           f"UPDATE recon_audit.runs SET seq = {b} WHERE seq = 999999")
    rep = lg.verify(db["writer"])
    assert rep.first_broken == {"table": "runs", "seq": a}


def test_moving_a_row_to_another_table_is_named(db, embedded_pg) -> None:  # noqa: ANN001
    seq = seq_of(embedded_pg, db["name"], "findings")
    tamper(embedded_pg, db["name"],
           "INSERT INTO recon_audit.corrections (seq, recorded_at, prev_hash, row_hash, canonical) "
           f"SELECT seq, recorded_at, prev_hash, row_hash, canonical FROM recon_audit.findings WHERE seq = {seq}",
           f"DELETE FROM recon_audit.findings WHERE seq = {seq}")
    rep = lg.verify(db["writer"])
    assert rep.first_broken == {"table": "corrections", "seq": seq}


def test_truncating_a_table_is_named(db, embedded_pg) -> None:  # noqa: ANN001
    first = seq_of(embedded_pg, db["name"], "inputs")
    tamper(embedded_pg, db["name"], "TRUNCATE recon_audit.inputs")
    rep = lg.verify(db["writer"])
    assert not rep.ok and rep.first_broken["seq"] == first + 2  # the two inputs of the first run are gone
    assert f"seqs {first}..{first + 1} missing" in rep.reason


def _rewrite(pg, db: str, *, fix_checkpoints: bool) -> int:  # noqa: ANN001
    """A superuser edits one early row and recomputes every later hash (and optionally every stored
    checkpoint), so the chain is internally consistent again."""
    with _superuser(pg, db) as c:
        rows = c.execute("SELECT table_name, seq, recorded_at, canonical FROM recon_audit.chain ORDER BY seq").fetchall()
    target = next(r[1] for r in rows if r[0] == "runs")
    prev, leaves, stmts = lg.GENESIS_PREV, [], []
    for table, seq, ts, text in rows:
        body = json.loads(text)
        if seq == target:
            body["summary"]["mismatched"] = 999  # the figure someone wants to hide
        if table == "checkpoints" and fix_checkpoints and body.get("size"):
            body["root"] = lg.merkle_root(leaves[: body["size"]]).hex()
        text = lg.canonical_json(body)
        h = lg.row_hash(prev, table, seq, lg._utc_text(ts), text)
        stmts.append(f"UPDATE recon_audit.{table} SET canonical = '{text}', prev_hash = '{prev.hex()}', "
                     f"row_hash = '{h.hex()}' WHERE seq = {seq}")
        prev = h
        leaves.append(h)
    tamper(pg, db, *stmts)
    return target


def test_consistent_rewrite_passes_the_chain_but_fails_a_stored_checkpoint(db, embedded_pg) -> None:  # noqa: ANN001
    _rewrite(embedded_pg, db["name"], fix_checkpoints=False)
    rep = lg.verify(db["writer"])
    assert not rep.ok and rep.first_broken["table"] == "checkpoints"
    assert "its root does not match the first" in rep.reason


def test_wholesale_consistent_rewrite_is_caught_only_by_the_exported_checkpoint(db, embedded_pg) -> None:  # noqa: ANN001
    _rewrite(embedded_pg, db["name"], fix_checkpoints=True)
    assert lg.verify(db["writer"]).ok  # the database alone cannot tell: this is why checkpoints leave it
    rep = lg.verify(db["writer"], checkpoint_file=db["note"], pubkey=db["pub"])
    assert not rep.ok
    assert rep.reason == (f"checkpoint {db['note']}: the first {db['rows']} rows no longer have its root: "
                          "the ledger was rewritten")


def test_dropped_tail_is_caught_by_the_exported_checkpoint(db, embedded_pg) -> None:  # noqa: ANN001
    keep = db["rows"] - 4
    tamper(embedded_pg, db["name"], *(f"DELETE FROM recon_audit.{t} WHERE seq > {keep}" for t in lg.TABLES))
    assert lg.verify(db["writer"]).ok
    rep = lg.verify(db["writer"], checkpoint_file=db["note"], pubkey=db["pub"])
    assert not rep.ok and rep.first_broken == {"table": None, "seq": keep + 1}
    assert f"covers {db['rows']} rows but the ledger holds {keep}" in rep.reason


def test_rows_appended_after_the_checkpoint_still_verify_against_it(db) -> None:  # noqa: ANN001
    with lg.Ledger(db["writer"]) as w:
        w.append("findings", {"run_id": "later", "note": "after the export"})
    assert lg.verify(db["writer"], checkpoint_file=db["note"], pubkey=db["pub"]).ok


def test_forged_or_foreign_checkpoint_files_are_rejected(db, tmp_path) -> None:  # noqa: ANN001
    text = db["note"].read_text()
    forged = tmp_path / "forged.note"
    forged.write_text(text.replace(f"\n{db['rows']}\n", f"\n{db['rows'] - 1}\n", 1))
    with pytest.raises(VerificationError, match="altered after signing"):
        lg.verify(db["writer"], checkpoint_file=forged, pubkey=db["pub"])
    _, other = mf.keygen(tmp_path / "other")
    with pytest.raises(VerificationError, match="not signed by"):
        lg.verify(db["writer"], checkpoint_file=db["note"], pubkey=other)
    foreign = tmp_path / "foreign.note"
    foreign.write_text(lg.sign_note(lg.Checkpoint("recon.dev/ledger/other", 3, b"\x01" * 32), db["priv"]))
    rep = lg.verify(db["writer"], checkpoint_file=foreign, pubkey=db["pub"])
    assert not rep.ok and "is for ledger recon.dev/ledger/other" in rep.reason


# -- concurrency -----------------------------------------------------------------------------------
def test_concurrent_appenders_never_fork_the_chain(db) -> None:  # noqa: ANN001
    threads_n, per = 6, 12
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            with lg.Ledger(db["writer"]) as w:
                for j in range(per):
                    if j % 3 == 0:
                        w.append_many([("runs", {"t": i, "j": j}), ("inputs", {"t": i, "j": j})])
                    else:
                        w.append("findings", {"t": i, "j": j})
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    code = ("import sys\nfrom engine.store.ledger import Ledger\n"
            "with Ledger(sys.argv[1]) as w:\n"
            "    for j in range(12): w.append('lineage', {'proc': sys.argv[2], 'j': j})\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, db["writer"], str(p)], cwd=Path(__file__).parents[2])
             for p in range(2)]
    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert not errors, errors
    rep = lg.verify(db["writer"])
    assert rep.ok, rep.problems
    assert rep.rows == db["rows"] + threads_n * (per + per // 3) + 2 * 12


# -- the writer cannot take the ledger over (17.2) ----------------------------------------------------
def _role(pg, name: str, attrs: str = "LOGIN", member_of: str | None = None) -> str:  # noqa: ANN001
    with _superuser(pg) as c:
        c.execute(f"DROP ROLE IF EXISTS {name}")
        c.execute(f"CREATE ROLE {name} {attrs}")
        if member_of:
            c.execute(f"GRANT {member_of} TO {name}")
    return name


def _drop_role(pg, db: str, name: str) -> None:  # noqa: ANN001
    for d in (db, "postgres"):
        with _superuser(pg, d) as c:
            c.execute(f"DROP OWNED BY {name}")
    with _superuser(pg) as c:
        c.execute(f"DROP ROLE IF EXISTS {name}")


def _writes(c: psycopg.Connection, role: str) -> bool:
    """Whether ``role`` has the writer's privileges or may SET ROLE to it (PostgreSQL 16+ makes the
    role that created recon_audit_writer an ADMIN-only member of it: that is neither)."""
    if c.execute("SELECT to_regrole(%s)", (lg.WRITER_ROLE,)).fetchone()[0] is None:
        return False
    return bool(c.execute("SELECT pg_has_role(%s, %s, 'USAGE') OR pg_has_role(%s, %s, 'SET')",
                          (role, lg.WRITER_ROLE, role, lg.WRITER_ROLE)).fetchone()[0])


@pytest.mark.parametrize("writer", [None, "recon"], ids=["default", "itself"])
def test_init_refuses_the_initialising_role_as_writer(embedded_pg, writer: str | None) -> None:  # noqa: ANN001
    """Before, the default writer was the administrator, which (PostgreSQL 16+) holds ADMIN OPTION
    on the owner role it created: it could grant itself the owner and rewrite the whole ledger."""
    name = f"ledger_fresh_{uuid.uuid4().hex[:6]}"
    with _superuser(embedded_pg) as c:
        c.execute(f"CREATE DATABASE {name} OWNER recon")
    try:
        with pytest.raises(UsageError, match="must not be the role that runs init"):
            lg.Ledger(_dsn(embedded_pg, "recon", name)).init(writer=writer)
        with _superuser(embedded_pg, name) as c:
            assert c.execute("SELECT to_regnamespace('recon_audit')").fetchone()[0] is None  # nothing half-made
            assert _writes(c, "recon") is False
    finally:
        with _superuser(embedded_pg) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.parametrize("kind", ["createrole", "superuser", "member-of-admin", "member-of-owner"])
def test_init_refuses_a_writer_with_a_path_to_the_owner(db, embedded_pg, kind: str) -> None:  # noqa: ANN001
    name = f"ledger_w_{kind.replace('-', '_')}"
    attrs = {"createrole": "LOGIN CREATEROLE", "superuser": "LOGIN SUPERUSER"}.get(kind, "LOGIN")
    member_of = {"member-of-admin": "recon", "member-of-owner": lg.OWNER_ROLE}.get(kind)
    _role(embedded_pg, name, attrs, member_of)
    try:
        with pytest.raises(UsageError, match=f"writer role {name} could take over the ledger"):
            lg.Ledger(db["admin"]).init(writer=name)
        with _superuser(embedded_pg) as c:
            assert c.execute("SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
                             "WHERE r.rolname = %s AND m.roleid = %s::regrole",
                             (name, lg.WRITER_ROLE)).fetchone()[0] == 0
    finally:
        _drop_role(embedded_pg, db["name"], name)


@pytest.mark.parametrize("statement", [
    f"GRANT {lg.OWNER_ROLE} TO current_user",
    f"SET ROLE {lg.OWNER_ROLE}",
    "ALTER TABLE recon_audit.gate_decisions DISABLE TRIGGER USER",
    "ALTER TABLE recon_audit.gate_decisions DISABLE TRIGGER append_only_row",
    "ALTER ROLE current_user CREATEROLE",
    f"ALTER ROLE {lg.OWNER_ROLE} LOGIN",
    f"GRANT {lg.WRITER_ROLE} TO recon",
])
def test_writer_cannot_take_over_the_owner(db, statement: str) -> None:  # noqa: ANN001
    with psycopg.connect(db["writer"], autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(statement)
    assert lg.verify(db["writer"]).ok


def test_reinit_moves_the_writer_off_the_admin_of_an_old_ledger(db, embedded_pg) -> None:  # noqa: ANN001
    """A ledger made by an earlier recon, where the admin was also the writer: the upgrade takes the
    writer role away from the admin (it keeps reading) and gives it to the named writer."""
    with psycopg.connect(db["admin"], autocommit=True) as c:  # what the earlier init did
        c.execute(f"GRANT {lg.WRITER_ROLE} TO recon")
        assert _writes(c, "recon") is True
    info = lg.Ledger(db["admin"]).init(writer="recon_app")
    assert info["revoked"] == ["recon"]
    with _superuser(embedded_pg, db["name"]) as c:
        assert _writes(c, "recon") is False
        assert c.execute("SELECT pg_has_role('recon', %s, 'USAGE')", (lg.READER_ROLE,)).fetchone()[0] is True
    with pytest.raises(UsageError, match="cannot append to"):
        lg.Ledger(db["admin"]).append("findings", {"by": "the admin"})
    assert lg.verify(db["admin"]).ok


def test_init_without_writer_keeps_the_existing_writers(db) -> None:  # noqa: ANN001
    """Rerunning init to upgrade an existing ledger needs no --writer when it has a safe writer."""
    info = lg.Ledger(db["admin"]).init()
    assert info["writer"] == "recon_app" and info["created"] is False


@pytest.mark.parametrize(("num", "ok"), [(150007, False), (90624, False), (160000, True), (180001, True)])
def test_postgresql_before_16_is_refused(num: int, ok: bool) -> None:
    if ok:
        lg.require_server_version(num, "postgresql://x@h/db")
    else:
        with pytest.raises(UsageError, match=r"needs PostgreSQL 16 or later.*postgresql://x@h/db"):
            lg.require_server_version(num, "postgresql://x@h/db")


# -- the chain is checked on insert (17.3) -------------------------------------------------------
def _head(pg, db: str) -> tuple[int, str]:  # noqa: ANN001
    with _superuser(pg, db) as c:
        seq, h = c.execute("SELECT seq, row_hash FROM recon_audit.chain ORDER BY seq DESC LIMIT 1").fetchone()
    return int(seq), str(h)


def _decision(mapping: str, state: str) -> str:
    return lg.canonical_json({"run_id": "forged", "mapping": mapping, "state": state, "kind": "override",
                              "reason": "forged", "operator": "mallory"})


def _guard_state(dsn: str, mapping: str) -> str | None:
    """None when assert_circuit_closed passes, else the SQLSTATE it raised."""
    with psycopg.connect(dsn, autocommit=True) as c:
        try:
            c.execute("SELECT recon_audit.assert_circuit_closed(%s)", (mapping,))
        except psycopg.Error as exc:
            return exc.sqlstate
    return None


@pytest.mark.parametrize("forge", ["far-seq", "wrong-prev", "reused-seq", "skipped-seq"])
def test_writer_cannot_insert_a_row_that_does_not_extend_the_chain(db, embedded_pg, forge: str) -> None:  # noqa: ANN001
    from engine.store import breaker

    breaker.install_guard(db["admin"])
    with lg.Ledger(db["writer"]) as w:
        w.append("gate_decisions", json.loads(_decision("victim", "open")))
    assert _guard_state(db["writer"], "victim") == breaker.SQLSTATE_OPEN
    head, head_hash = _head(embedded_pg, db["name"])
    seq, prev = {"far-seq": (1_000_000, head_hash), "wrong-prev": (head + 1, "0" * 64),
                 "reused-seq": (head, head_hash), "skipped-seq": (head + 2, head_hash)}[forge]
    with psycopg.connect(db["writer"], autocommit=True) as c:
        with pytest.raises(psycopg.Error, match="does not extend the chain"):
            c.execute("INSERT INTO recon_audit.gate_decisions (seq, recorded_at, prev_hash, row_hash, canonical) "
                      "VALUES (%s, now(), %s, %s, %s)", (seq, prev, "1" * 64, _decision("victim", "closed")))
    assert _guard_state(db["writer"], "victim") == breaker.SQLSTATE_OPEN
    assert _head(embedded_pg, db["name"]) == (head, head_hash)
    assert lg.verify(db["writer"]).ok


def test_init_upgrades_an_old_ledger_and_the_guard_skips_unchained_decisions(db, embedded_pg) -> None:  # noqa: ANN001
    """An old ledger (no insert trigger) took a forged closed decision at seq 1000000; rerunning
    init installs the trigger and the new guard, which ignores that row, and verify names it."""
    from engine.store import breaker

    with _superuser(embedded_pg, db["name"]) as c:
        for t in lg.TABLES:
            c.execute(f"DROP TRIGGER IF EXISTS append_only_chain ON recon_audit.{t}")
    breaker.install_guard(db["admin"])
    with lg.Ledger(db["writer"]) as w:
        w.append("gate_decisions", json.loads(_decision("victim", "open")))
    _, head_hash = _head(embedded_pg, db["name"])
    with _superuser(embedded_pg, db["name"]) as c:  # what the writer could do before the trigger
        c.execute("SET ROLE recon_app")
        c.execute("INSERT INTO recon_audit.gate_decisions (seq, recorded_at, prev_hash, row_hash, canonical) "
                  "VALUES (1000000, now(), %s, %s, %s)", (head_hash, "1" * 64, _decision("victim", "closed")))
    lg.Ledger(db["admin"]).init(writer="recon_app")
    assert _guard_state(db["writer"], "victim") == breaker.SQLSTATE_OPEN
    with psycopg.connect(db["writer"], autocommit=True) as c:
        assert c.execute("SELECT seq FROM recon_audit.circuit_state('victim')").fetchone()[0] < 1_000_000
        assert breaker.latest_decision(db["writer"], "victim")["state"] == "open"  # `recon gate --status` agrees
        with pytest.raises(psycopg.Error, match="does not extend the chain"):
            c.execute("INSERT INTO recon_audit.gate_decisions (seq, recorded_at, prev_hash, row_hash, canonical) "
                      "VALUES (2000000, now(), %s, %s, %s)", ("1" * 64, "2" * 64, _decision("victim", "closed")))
    rep = lg.verify(db["writer"])
    assert not rep.ok and rep.first_broken == {"table": "gate_decisions", "seq": 1_000_000}


# -- checkpoints never sign a broken chain (17.4) -------------------------------------------------
def _flip_a_decision(pg, db: str) -> int:  # noqa: ANN001
    seq = seq_of(pg, db, "gate_decisions")
    tamper(pg, db, f"UPDATE recon_audit.gate_decisions SET canonical = replace(canonical, 'closed', 'open') "
                   f"WHERE seq = {seq}")
    return seq


def test_checkpoint_refuses_a_broken_chain(db, embedded_pg, tmp_path) -> None:  # noqa: ANN001
    seq = _flip_a_decision(embedded_pg, db["name"])
    before = seq_of(embedded_pg, db["name"], "checkpoints", "count")
    with lg.Ledger(db["writer"]) as w:
        with pytest.raises(VerificationError, match=f"row gate_decisions seq {seq}: contents changed"):
            w.checkpoint()
        note = tmp_path / "cp.note"
        with pytest.raises(VerificationError, match="no checkpoint taken"):
            w.export_checkpoint(note, db["priv"])
    assert not note.exists()
    assert seq_of(embedded_pg, db["name"], "checkpoints", "count") == before


def test_evidence_refuses_to_embed_a_checkpoint_of_a_broken_chain(db, embedded_pg, tmp_path) -> None:  # noqa: ANN001
    from engine.app import evidence

    _flip_a_decision(embedded_pg, db["name"])
    rows = lg.verify(db["writer"]).rows
    manifest = tmp_path / "m.json"
    out = tmp_path / "out.json"
    out.write_text("{}")
    with pytest.raises(VerificationError, match="no checkpoint taken"):
        evidence.record_evidence("diff", {"mismatched": 0}, [], [out], ledger_dsn=db["writer"],
                                 manifest_path=manifest, signing_key=db["priv"], config_digest="0" * 64,
                                 lineage_dir=tmp_path / "ol")
    assert not manifest.exists()
    assert lg.verify(db["writer"]).rows == rows  # the run is not recorded either: all or nothing


# -- errors and the CLI ----------------------------------------------------------------------------
def test_uninitialised_database_and_unprivileged_init_are_usage_errors(embedded_pg) -> None:  # noqa: ANN001
    name = f"ledger_empty_{uuid.uuid4().hex[:6]}"
    with _superuser(embedded_pg) as c:
        c.execute(f"CREATE DATABASE {name} OWNER recon")
    try:
        with pytest.raises(UsageError, match="no ledger at .*run `recon ledger init"):
            lg.Ledger(_dsn(embedded_pg, "recon", name)).append("runs", {})
        with pytest.raises(UsageError, match="cannot initialise"):
            lg.Ledger(_dsn(embedded_pg, "recon_app", name)).init(writer="recon")
        with pytest.raises(UsageError, match="does not exist"):
            lg.Ledger(_dsn(embedded_pg, "recon", name)).init(writer="no_such_role")
        with pytest.raises(ValueError, match="unknown ledger table"):
            lg.Ledger(_dsn(embedded_pg, "recon", name)).append("nope", {})
    finally:
        with _superuser(embedded_pg) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _recon(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli.main", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_cli_init_checkpoint_and_verify_over_tcp(db, embedded_pg, tmp_path) -> None:  # noqa: ANN001
    info = embedded_pg.info
    env = {**os.environ, "PGPASSFILE": str(embedded_pg.paths.pgpass_file)}
    env.pop("PGPASSWORD", None)
    tcp = f"postgresql://recon_app@{info.host}:{info.port}/{db['name']}"
    note = tmp_path / "cp.note"
    res = _recon("ledger", "checkpoint", "--dsn", tcp, "--out", str(note), "--signing-key", str(db["priv"]),
                 "--json", env=env)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["size"] == db["rows"] + 1
    env["RECON_LEDGER_DSN"] = tcp
    res = _recon("ledger", "verify", "--checkpoint", str(note), "--key", str(db["pub"]), "--json", env=env)
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["ok"] and rep["external_checkpoint"]["signature_verified"]
    seq = seq_of(embedded_pg, db["name"], "gate_decisions")
    tamper(embedded_pg, db["name"], f"UPDATE recon_audit.gate_decisions SET canonical = "
                                    f"replace(canonical, 'closed', 'open') WHERE seq = {seq}")
    res = _recon("ledger", "verify", env=env)
    assert res.returncode == 4
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"row gate_decisions seq {seq}" in lines[0] and "Traceback" not in res.stderr
    assert embedded_pg.creds["postgres_app_password"] not in res.stdout + res.stderr
    res = _recon("ledger", "verify", "--dsn", f"postgresql://recon_app@{info.host}:1/x", env={
        **env, "RECON_CONNECT_DEADLINE": "1"})
    assert res.returncode == 5
