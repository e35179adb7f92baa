# ruff: noqa: S608 - the setup's SQL names the test's own fixed schema and tables
"""Item 17.1: the gate trusted whatever diff directory it was given.

Each row gets its own ledger (a fresh database of the stack's PostgreSQL), its own mapping
``advgate`` (``advgate.src`` ↔ ``advgate.tgt``: four rows, one amount differs, so a real diff opens
the breaker) and a recon.toml without the scenario's ``[ledger]``. The setup runs that real diff
with ``--ledger`` and lets the gate open the breaker; the attack then tries to close it from an
artefact that is not that diff. Afterwards the breaker is still open on the one decision the real
diff made.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.integration.attacks import Attack, Run
from tests.stack_fixtures import Stack

MAPPING = "advgate"
_TABLES = """
CREATE SCHEMA IF NOT EXISTS advgate;
GRANT USAGE ON SCHEMA advgate TO PUBLIC;
DROP TABLE IF EXISTS advgate.src, advgate.tgt;
CREATE TABLE advgate.src (id text PRIMARY KEY, amount numeric(18,2) NOT NULL);
CREATE TABLE advgate.tgt (id text PRIMARY KEY, amount numeric(18,2) NOT NULL);
INSERT INTO advgate.src VALUES ('a', 1.00), ('b', 2.00), ('c', 3.00), ('d', 4.00);
INSERT INTO advgate.tgt VALUES ('a', 1.00), ('b', 2.00), ('c', 3.00), ('d', 40.00);
GRANT SELECT ON advgate.src, advgate.tgt TO PUBLIC;
"""


def _config(stack: Stack, tmp: Path) -> Path:
    """The scenario's config without its [ledger] (each row brings its own), plus ``advgate``."""
    text = re.sub(r"\n\[ledger\]\ndsn = [^\n]*\n", "\n", stack.config.read_text())
    dsn = stack.endpoints["postgres_dsn"]
    text += (f'\n[mapping.{MAPPING}]\nsource = "{dsn}#advgate.src"\ntarget = "{dsn}#advgate.tgt"\n'
             'key = ["id"]\ncolumns = ["amount"]\ntolerance = { amount = "0.00" }\n')
    cfg = tmp / "recon.toml"
    cfg.write_text(text)
    return cfg


def _ok(run: Run, code: int) -> Run:
    """``run``, once it is known to have exited with exactly ``code``."""
    assert run.returncode == code, (run.returncode, run.stderr[-2000:])
    return run


def _setup(stack: Stack, tmp: Path) -> dict:
    """Tables, a fresh ledger, the real diff (recorded) and the gate's open decision from it."""
    admin = stack.endpoints["postgres_socket_dsn"]
    db = f"advgate_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(_TABLES)
        conn.execute(f'CREATE DATABASE "{db}"')
    ledger_admin = make_conninfo(admin, dbname=db)
    assert conninfo_to_dict(ledger_admin)["dbname"] == db
    _ok(stack.run("ledger", "init", "--dsn", ledger_admin, "--writer", "recon_app"), 0)
    ledger = make_conninfo(admin, dbname=db, user="recon_app")  # the administrator initialises, the writer appends
    cfg = _config(stack, tmp)
    diff = tmp / "diff"
    _ok(stack.run("diff", "-C", str(cfg), "--mapping", MAPPING, "--out", str(diff), "--ledger", ledger, "--json"), 1)
    _ok(stack.run("gate", "--diff", str(diff), "-C", str(cfg), "--ledger", ledger, "--json"), 3)
    return {"ledger": ledger, "cfg": str(cfg), "diff": diff}


def _still_open(stack: Stack, tmp: Path, ctx: dict, run: Run) -> None:
    status = stack.run("gate", "--status", "--mapping", MAPPING, "-C", ctx["cfg"], "--ledger", ctx["ledger"], "--json")
    assert status.returncode == 3, status.stderr
    assert json.loads(status.stdout)["state"] == "open"
    with psycopg.connect(ctx["ledger"]) as conn:
        n = conn.execute("SELECT count(*) FROM recon_audit.gate_decisions").fetchone()[0]  # type: ignore[index]
    assert n == 1, f"{n} decisions: the attack's artefact was recorded as a decision"


def _names(fragment: str) -> object:
    def after(stack: Stack, tmp: Path, ctx: dict, run: Run) -> None:
        assert fragment in run.stderr, run.stderr
        _still_open(stack, tmp, ctx, run)
    return after


def _gate(key: str, *extra: str) -> object:
    def command(stack: Stack, tmp: Path, ctx: dict) -> list[str]:
        given = [e.format(**{k: str(v) for k, v in ctx.items()}) for e in extra]
        return ["gate", "--diff", str(ctx[key]), "-C", ctx["cfg"], "--ledger", ctx["ledger"], *given, "--json"]
    return command


# -- the attacks' setups: each starts from the open breaker ----------------------------------------
def _zeroed_copy(stack: Stack, tmp: Path) -> dict:
    ctx = _setup(stack, tmp)
    copy = tmp / "copy"
    shutil.copytree(ctx["diff"], copy)
    s = json.loads((copy / "summary.json").read_text())
    s.update(mismatched=0, variance_ratio=0.0, amount_variance_ratio={k: 0.0 for k in s["amount_variance_ratio"]})
    s["columns"] = {k: {**v, "mismatched": 0, "abs_variance": "0.00"} for k, v in s["columns"].items()}
    (copy / "summary.json").write_text(json.dumps(s))
    return {**ctx, "copy": copy}


def _self_diff(stack: Stack, tmp: Path) -> dict:
    ctx = _setup(stack, tmp)
    f = tmp / "unrelated.csv"
    f.write_text("id,amount\nq,1.00\n")
    out = tmp / "self"
    _ok(stack.run("diff", f"csv:{f}", f"csv:{f}", "-k", "id", "--out", str(out), "--ledger", ctx["ledger"]), 0)
    return {**ctx, "self": out}


def _variant(*options: str) -> object:
    """A real, recorded diff of the mapping's tables, changed by ``options`` so it passes."""
    def setup(stack: Stack, tmp: Path) -> dict:
        ctx = _setup(stack, tmp)
        out = tmp / "variant"
        _ok(stack.run("diff", "-C", ctx["cfg"], "--mapping", MAPPING, *options, "--out", str(out),
                      "--ledger", ctx["ledger"]), 0)
        return {**ctx, "variant": out}
    return setup


def _forged_plan(stack: Stack, tmp: Path) -> dict:
    ctx = _setup(stack, tmp)
    r = tmp / "forged-repair"
    r.mkdir()
    stale = [{"Id": "d", "kind": "mismatched", "salesforce_value": "4.00", "warehouse_value": "40.00",
              "owner_id": "005x", "stream_value": "40.00"}]
    (r / "plan.json").write_text(json.dumps({"mapping": MAPPING, "column": "amount", "action_list": stale,
                                             "unexplained": []}))
    return {**ctx, "forged": r}


ATTACKS = [
    Attack("17.1", "zeroed-summary-copy",
           "a copy of the open diff's directory with mismatched and both ratios zeroed in summary.json",
           _gate("copy"), 4, _names("summary.json"), setup=_zeroed_copy),
    Attack("17.1", "unrelated-self-diff-without-mapping",
           "a recorded diff of an unrelated file against itself, run without a mapping, given with --mapping advgate",
           _gate("self", "--mapping", MAPPING), 4, _names("without a mapping"), setup=_self_diff),
    Attack("17.1", "narrowed-by-conditions",
           "a recorded diff of the mapping narrowed by --source-where/--target-where to the rows that agree",
           _gate("variant"), 4, _names("source_where, target_where"),
           setup=_variant("--source-where", "id <> 'd'", "--target-where", "id <> 'd'")),
    Attack("17.1", "wider-tolerance",
           "a recorded diff of the mapping with --tolerance amount=100 instead of the mapping's 0.00",
           _gate("variant"), 4, _names("tolerance"), setup=_variant("--tolerance", "amount=100")),
    Attack("17.1", "forged-exclude-from-plan",
           "--exclude-from a hand-written repair dir whose plan.json lists the differing record as stale_salesforce",
           _gate("diff", "--exclude-from", "{forged}"), 4, _names("plan.json"), setup=_forged_plan),
    Attack("17.1", "no-ledger-no-key",
           "the real diff, with neither --ledger nor --key (nor a [ledger] in recon.toml)",
           lambda stack, tmp, ctx: ["gate", "--diff", str(ctx["diff"]), "-C", ctx["cfg"], "--json"], 2,
           _names("give --ledger DSN or --key PUB"), setup=_setup),
]
