# ruff: noqa: S608 - the setup's SQL names the test's own databases, roles and integer seqs
"""Items 17.2-17.4: the ledger's writer cannot take the ledger over, cannot plant a row outside the
chain, and a broken chain is never signed (checkpoint, manifest).

Each row works on its own ledger database ``adv_ledger_<hex>`` on the scenario stack's PostgreSQL,
initialised by the stack's administrator (``recon``, CREATEROLE) for its own writer role
``adv_ledger_writer`` (a plain login role); the scenario's ledger and data are not touched. The
``recon_audit_*`` roles are shared by the cluster, so that writer is one more member of them.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from engine.evidence import manifest as mf
from engine.store import breaker
from engine.store import ledger as lg
from tests.integration.attacks import Attack, Run
from tests.stack_fixtures import Stack

WRITER = "adv_ledger_writer"
CREATOR = "adv_ledger_creator"
VICTIM = "adv_victim"
FAR = 1_000_000

TAKEOVER = (
    f"GRANT {lg.OWNER_ROLE} TO current_user",
    f"SET ROLE {lg.OWNER_ROLE}",
    "ALTER TABLE recon_audit.gate_decisions DISABLE TRIGGER USER",
    "ALTER ROLE current_user CREATEROLE",
    f"ALTER ROLE {lg.OWNER_ROLE} LOGIN",
    "UPDATE recon_audit.gate_decisions SET canonical = replace(canonical, '\"open\"', '\"closed\"')",
)


# -- setup -----------------------------------------------------------------------------------------
def _dsn(stack: Stack, user: str, db: str) -> str:
    info = conninfo_to_dict(stack.endpoints["postgres_socket_dsn"])
    return f"postgresql://{user}@/{db}?host={info['host']}&port={info['port']}"


def _superuser(stack: Stack, db: str) -> psycopg.Connection:
    creds = json.loads(Path(stack.endpoints["credentials_file"]).read_text())
    return psycopg.connect(_dsn(stack, creds["postgres_superuser"], db), autocommit=True)


def _role(stack: Stack, name: str, attrs: str) -> None:
    with _superuser(stack, "postgres") as c:
        if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
            c.execute(f"CREATE ROLE {name} {attrs}")


def _database(stack: Stack, *, init: bool = True, decision: str | None = "open") -> dict[str, Any]:
    """A fresh database; with ``init`` a ledger whose writer recorded one decision for VICTIM."""
    name = f"adv_ledger_{uuid.uuid4().hex[:8]}"
    _role(stack, WRITER, "LOGIN NOSUPERUSER NOCREATEROLE")
    with _superuser(stack, "postgres") as c:
        c.execute(f"CREATE DATABASE {name} OWNER recon")
    ctx = {"db": name, "admin": _dsn(stack, "recon", name), "writer": _dsn(stack, WRITER, name)}
    if init:
        with lg.Ledger(ctx["admin"]) as admin:
            admin.init(writer=WRITER)
        breaker.install_guard(ctx["admin"])  # init installs it too; explicit for ledgers made by an older recon
        if decision:
            with lg.Ledger(ctx["writer"]) as w:
                w.append("gate_decisions", _body(decision, "recon gate"))
    return ctx


def _body(state: str, operator: str) -> dict[str, Any]:
    return {"run_id": str(uuid.uuid4()), "mapping": VICTIM, "state": state, "kind": "override",
            "reason": f"{state} by {operator}", "operator": operator}


def _head(ctx: dict[str, Any]) -> tuple[int, str]:
    with psycopg.connect(ctx["admin"]) as c:
        seq, h = c.execute("SELECT seq, row_hash FROM recon_audit.chain ORDER BY seq DESC LIMIT 1").fetchone()
    return int(seq), str(h)


def _insert(conn: psycopg.Connection, seq: int, prev: str, state: str) -> None:
    conn.execute("INSERT INTO recon_audit.gate_decisions (seq, recorded_at, prev_hash, row_hash, canonical) "
                 "VALUES (%s, now(), %s, %s, %s)", (seq, prev, "1" * 64, lg.canonical_json(_body(state, "mallory"))))


def _try_as_writer(ctx: dict[str, Any], statements: tuple[str, ...]) -> dict[str, str]:
    """Each statement on its own, as the writer: its SQLSTATE and first line, or 'succeeded'."""
    out = {}
    with psycopg.connect(ctx["writer"], autocommit=True) as c:
        for s in statements:
            try:
                c.execute(s)
                out[s] = "succeeded"
            except psycopg.Error as exc:
                out[s] = f"{exc.sqlstate} {str(exc).splitlines()[0]}"
    return out


def _setup_takeover(stack: Stack, tmp: Path) -> dict[str, Any]:
    ctx = _database(stack)
    ctx["tried"] = _try_as_writer(ctx, TAKEOVER)
    return ctx


def _setup_fresh(stack: Stack, tmp: Path) -> dict[str, Any]:
    return _database(stack, init=False)


def _setup_creator(stack: Stack, tmp: Path) -> dict[str, Any]:
    _role(stack, CREATOR, "LOGIN NOSUPERUSER CREATEROLE")
    return _database(stack, init=False)


def _setup_far_seq(stack: Stack, tmp: Path) -> dict[str, Any]:
    ctx = _database(stack)
    ctx["head"] = head = _head(ctx)
    with psycopg.connect(ctx["writer"], autocommit=True) as c:
        try:
            _insert(c, FAR, head[1], "closed")
            ctx["insert"] = "succeeded"
        except psycopg.Error as exc:
            ctx["insert"] = str(exc).splitlines()[0]
    return ctx


def _setup_legacy(stack: Stack, tmp: Path) -> dict[str, Any]:
    """A ledger as an older recon left it (no insert trigger), where the writer planted a closed
    decision at seq 1000000 linked to the real head: every later append would chain after it."""
    ctx = _database(stack)
    with _superuser(stack, ctx["db"]) as c:
        for t in lg.TABLES:
            c.execute(f"DROP TRIGGER IF EXISTS append_only_chain ON recon_audit.{t}")
    with psycopg.connect(ctx["writer"], autocommit=True) as c:
        _insert(c, FAR, _head(ctx)[1], "closed")
    return ctx


def _setup_tampered(stack: Stack, tmp: Path) -> dict[str, Any]:
    """The owner (or a superuser) flips the open decision to closed with the triggers disabled."""
    ctx = _database(stack)
    priv, pub = mf.keygen(tmp / "keys")
    with _superuser(stack, ctx["db"]) as c, c.transaction():
        c.execute("ALTER TABLE recon_audit.gate_decisions DISABLE TRIGGER USER")
        ctx["seq"] = c.execute("UPDATE recon_audit.gate_decisions SET canonical = replace(canonical, '\"open\"', "
                               "'\"closed\"') WHERE mapping = %s RETURNING seq", (VICTIM,)).fetchone()[0]
        for (trigger,) in c.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'recon_audit.gate_decisions'"
                                    "::regclass AND NOT tgisinternal").fetchall():
            c.execute(f"ALTER TABLE recon_audit.gate_decisions ENABLE ALWAYS TRIGGER {trigger}")
        c.execute("CREATE TABLE public.adv_t (id text PRIMARY KEY, amount numeric(18,2) NOT NULL)")
        c.execute("INSERT INTO public.adv_t VALUES ('a', 1.00), ('b', 2.00)")
        c.execute("ALTER TABLE public.adv_t OWNER TO recon")
    (tmp / "src.csv").write_text("id,amount\na,1.00\nb,2.00\n")
    ctx.update(key=str(priv), pub=str(pub), rows=lg.verify(ctx["writer"]).rows)
    return ctx


# -- commands --------------------------------------------------------------------------------------
def _status(stack: Stack, tmp: Path, ctx: dict[str, Any]) -> list[str]:
    return ["gate", "--status", "--mapping", VICTIM, "--ledger", ctx["writer"]]


def _verify(stack: Stack, tmp: Path, ctx: dict[str, Any]) -> list[str]:
    return ["ledger", "verify", "--dsn", ctx["writer"]]


def _init(*extra: str) -> Any:
    def command(stack: Stack, tmp: Path, ctx: dict[str, Any]) -> list[str]:
        return ["ledger", "init", "--dsn", ctx["admin"], *extra]
    return command


def _checkpoint(stack: Stack, tmp: Path, ctx: dict[str, Any]) -> list[str]:
    return ["ledger", "checkpoint", "--dsn", ctx["writer"], "--out", str(tmp / "cp.note"), "--signing-key", ctx["key"]]


def _diff_with_manifest(stack: Stack, tmp: Path, ctx: dict[str, Any]) -> list[str]:
    return ["diff", f"csv:{tmp / 'src.csv'}", f"{ctx['admin']}#public.adv_t", "-k", "id", "-c", "amount",
            "--ledger", ctx["writer"], "--manifest", str(tmp / "m" / "manifest.json"), "--signing-key", ctx["key"]]


# -- state afterwards ------------------------------------------------------------------------------
def _guard(ctx: dict[str, Any]) -> str | None:
    with psycopg.connect(ctx["writer"], autocommit=True) as c:
        try:
            c.execute("SELECT recon_audit.assert_circuit_closed(%s)", (VICTIM,))
        except psycopg.Error as exc:
            return exc.sqlstate
    return None


def _breaker_open_and_ledger_verifies(stack: Stack, tmp: Path, ctx: dict[str, Any], run: Run) -> None:
    assert "ledger OK" in run.stdout, run.stdout
    assert _guard(ctx) == breaker.SQLSTATE_OPEN
    status = stack.run(*_status(stack, tmp, ctx))
    assert status.returncode == 3 and "open" in status.stdout, (status.stdout, status.stderr)


def _after_takeover(stack: Stack, tmp: Path, ctx: dict[str, Any], run: Run) -> None:
    refused = {s: r for s, r in ctx["tried"].items() if r.startswith("42501")}
    assert refused == ctx["tried"], ctx["tried"]  # insufficient_privilege, every one
    _breaker_open_and_ledger_verifies(stack, tmp, ctx, run)


def _no_ledger(stack: Stack, ctx: dict[str, Any]) -> None:
    with _superuser(stack, ctx["db"]) as c:
        assert c.execute("SELECT to_regnamespace('recon_audit')").fetchone()[0] is None  # nothing half-made


def _after_refused_init(*words: str, role: str) -> Any:
    def after(stack: Stack, tmp: Path, ctx: dict[str, Any], run: Run) -> None:
        for w in words:
            assert w in run.stderr, run.stderr
        _no_ledger(stack, ctx)
        with _superuser(stack, "postgres") as c:
            uses = c.execute("SELECT to_regrole(%s) IS NOT NULL AND (pg_has_role(%s, %s, 'USAGE') OR "
                             "pg_has_role(%s, %s, 'SET'))",
                             (lg.WRITER_ROLE, role, lg.WRITER_ROLE, role, lg.WRITER_ROLE)).fetchone()[0]
        assert uses is False, f"{role} became a writer"
    return after


def _after_far_seq(stack: Stack, tmp: Path, ctx: dict[str, Any], run: Run) -> None:
    assert "does not extend the chain" in ctx["insert"], ctx["insert"]
    assert _head(ctx) == ctx["head"]
    _breaker_open_and_ledger_verifies(stack, tmp, ctx, run)


def _after_legacy(stack: Stack, tmp: Path, ctx: dict[str, Any], run: Run) -> None:
    assert _guard(ctx) == breaker.SQLSTATE_OPEN  # the planted decision does not count
    status = stack.run(*_status(stack, tmp, ctx))
    assert status.returncode == 3, (status.stdout, status.stderr)
    with psycopg.connect(ctx["writer"], autocommit=True) as c:  # the upgrade put the insert trigger in
        try:
            _insert(c, 2 * FAR, "2" * 64, "closed")
            raise AssertionError("the writer planted a second row after the upgrade")
        except psycopg.errors.IntegrityConstraintViolation as exc:
            assert "does not extend the chain" in str(exc)
    verify = stack.run("ledger", "verify", "--dsn", ctx["writer"])
    assert verify.returncode == 4 and f"row gate_decisions seq {FAR}" in verify.stderr, verify.stderr


def _after_refused_checkpoint(what: Path) -> Any:
    def after(stack: Stack, tmp: Path, ctx: dict[str, Any], run: Run) -> None:
        assert f"row gate_decisions seq {ctx['seq']}: contents changed" in run.stderr, run.stderr
        assert "no checkpoint taken" in run.stderr, run.stderr
        assert not (tmp / what).exists()
        rep = lg.verify(ctx["writer"])
        assert rep.rows == ctx["rows"]  # nothing recorded: no checkpoint, no run
        assert rep.first_broken == {"table": "gate_decisions", "seq": ctx["seq"]}
    return after


PLANT = f"as the writer: INSERT INTO recon_audit.gate_decisions (seq, …) VALUES ({FAR}, …, state closed)"
ATTACKS = [
    Attack("17.2", "writer-takes-over-the-owner", "; ".join(TAKEOVER), _verify, 0, _after_takeover,
           _setup_takeover),
    Attack("17.2", "init-makes-the-admin-the-writer", "recon ledger init --dsn ADMIN (default writer: itself)",
           _init(), 2, _after_refused_init("must not be the role that runs init", role="recon"), _setup_fresh),
    Attack("17.2", "init-with-a-createrole-writer", f"recon ledger init --dsn ADMIN --writer {CREATOR} (CREATEROLE)",
           _init("--writer", CREATOR), 2,
           _after_refused_init(f"writer role {CREATOR} could take over the ledger", "CREATEROLE", role=CREATOR),
           _setup_creator),
    Attack("17.3", "writer-plants-a-far-seq", PLANT, _verify, 0, _after_far_seq, _setup_far_seq),
    Attack("17.3", "planted-before-the-upgrade", f"{PLANT} on an older ledger, then recon ledger init",
           _init(), 0, _after_legacy, _setup_legacy),
    Attack("17.4", "checkpoint-of-a-broken-chain", "a decision flipped open→closed, then recon ledger checkpoint",
           _checkpoint, 4, _after_refused_checkpoint(Path("cp.note")), _setup_tampered),
    Attack("17.4", "manifest-of-a-broken-chain", "a decision flipped open→closed, then diff --ledger --manifest",
           _diff_with_manifest, 4, _after_refused_checkpoint(Path("m") / "manifest.json"), _setup_tampered),
]
