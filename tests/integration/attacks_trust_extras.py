"""Issue 17's remaining rows: a diff that does not say when it read a side (17.5), the trusted Unix
socket of the local stack (should-fix), and a broker's partition ids (should-fix, through the
metadata check every Kafka command shares: a hostile endpoint, ``hostile_kafka.py``, answers
Metadata with partition id INT32_MAX, which no real broker would).

17.5: the mapping ``advstale`` reads a CSV snapshot (which records no extraction time) against a
warehouse table, in its own ledger. A first recorded diff finds a difference and the gate opens the
breaker; the CSV is then edited to agree and diffed again (recorded too, exit 0). That diff cannot
say when its source was read, so it counts as stale: the gate refuses it (exit 2) and the breaker
stays open on its one decision.
"""

from __future__ import annotations

import json
import re
import stat
import uuid
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.integration.attacks import Attack, Run
from tests.integration.attacks_gate import _ok
from tests.integration.hostile_kafka import hostile_broker
from tests.stack_fixtures import Stack

MAPPING = "advstale"


def _stale_setup(stack: Stack, tmp: Path) -> dict:
    admin = stack.endpoints["postgres_socket_dsn"]
    db = f"advstale_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS advstale; GRANT USAGE ON SCHEMA advstale TO PUBLIC; "
                     "DROP TABLE IF EXISTS advstale.tgt; "
                     "CREATE TABLE advstale.tgt (id text PRIMARY KEY, amount numeric(18,2) NOT NULL); "
                     "INSERT INTO advstale.tgt VALUES ('a', 1.00), ('b', 2.00); "
                     "GRANT SELECT ON advstale.tgt TO PUBLIC")
        conn.execute(f'CREATE DATABASE "{db}"')
    _ok(stack.run("ledger", "init", "--dsn", make_conninfo(admin, dbname=db), "--writer", "recon_app"), 0)
    ledger = make_conninfo(admin, dbname=db, user="recon_app")
    src = tmp / "src.csv"
    src.write_text("id,amount\na,1.00\nb,20.00\n")
    (tmp / "src.csv.json").write_text(json.dumps({"columns": {"id": "text", "amount": "decimal:2"}}))
    text = re.sub(r"\n\[ledger\]\ndsn = [^\n]*\n", "\n", stack.config.read_text())
    text += (f'\n[mapping.{MAPPING}]\nsource = "csv:{src}"\n'
             f'target = "{stack.endpoints["postgres_dsn"]}#advstale.tgt"\n'
             'key = ["id"]\ncolumns = ["amount"]\ntolerance = { amount = "0.00" }\n')
    cfg = tmp / "recon.toml"
    cfg.write_text(text)
    first = tmp / "first"
    _ok(stack.run("diff", "-C", str(cfg), "--mapping", MAPPING, "--out", str(first), "--ledger", ledger), 1)
    _ok(stack.run("gate", "--diff", str(first), "-C", str(cfg), "--ledger", ledger, "--json"), 3)
    src.write_text("id,amount\na,1.00\nb,2.00\n")  # now it agrees: a diff would close the breaker
    second = tmp / "second"
    _ok(stack.run("diff", "-C", str(cfg), "--mapping", MAPPING, "--out", str(second), "--ledger", ledger), 0)
    return {"ledger": ledger, "cfg": str(cfg), "second": second}


def _stale_after(stack: Stack, tmp: Path, ctx: dict, run: Run) -> None:
    assert "does not say when both sides were read" in run.stderr, run.stderr
    status = stack.run("gate", "--status", "--mapping", MAPPING, "-C", ctx["cfg"], "--ledger", ctx["ledger"], "--json")
    assert status.returncode == 3 and json.loads(status.stdout)["state"] == "open", status.stdout
    with psycopg.connect(ctx["ledger"]) as conn:
        assert conn.execute("SELECT count(*) FROM recon_audit.gate_decisions").fetchone() == (1,)


def _broker_setup(stack: Stack, tmp: Path) -> dict:
    broker = hostile_broker("advpart", [0, 2**31 - 1])
    return {"bootstrap": broker.__enter__(), "broker": broker}


def _broker_after(stack: Stack, tmp: Path, ctx: dict, run: Run) -> None:
    assert "reported partition id 2147483647 for topic 'advpart', outside 0..1048575" in run.stderr, run.stderr
    assert ctx["bootstrap"] in run.stderr and "--bootstrap" in run.stderr
    assert run.stdout == ""  # refused before any result: no JSON a scheduler could take for an audit


def _socket_after(stack: Stack, tmp: Path, ctx: dict, run: Run) -> None:
    assert json.loads(run.stdout)["postgres"] == "running"
    sock_dir = Path(conninfo_to_dict(stack.endpoints["postgres_socket_dsn"])["host"])
    socks = [p for p in sock_dir.glob(".s.PGSQL.*") if not p.name.endswith(".lock")]
    assert socks, sock_dir
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in socks), [oct(p.stat().st_mode) for p in socks]
    assert stat.S_IMODE(sock_dir.stat().st_mode) == 0o700
    with psycopg.connect(stack.endpoints["postgres_socket_dsn"]) as conn:
        assert conn.execute("SHOW unix_socket_permissions").fetchone() == ("0700",)


ATTACKS = [
    Attack("17.5", "diff-without-an-extraction-time",
           "a recorded diff of the mapping whose CSV side says nothing about when it was read, to close an open breaker",
           lambda stack, tmp, ctx: ["gate", "--diff", str(ctx["second"]), "-C", ctx["cfg"], "--ledger", ctx["ledger"],
                                    "--json"], 2, _stale_after, setup=_stale_setup),
    Attack("17.s", "trusted-socket-for-every-local-user",
           "any local user of the machine connecting to the stack's trust-auth Unix socket as the superuser",
           lambda stack, tmp, ctx: ["services", "status", "--json"], 0, _socket_after),
    Attack("17.s", "partition-id-past-the-native-table",
           "a broker at --bootstrap answering Metadata with partition id 2**31-1 (INT32_MAX overflowed the "
           "native scan's max_part + 1)",
           lambda stack, tmp, ctx: ["kafka-audit", "--bootstrap", ctx["bootstrap"], "--topic", "advpart",
                                    "--json"], 2, _broker_after, setup=_broker_setup,
           teardown=lambda ctx: ctx["broker"].__exit__(None, None, None)),
]
