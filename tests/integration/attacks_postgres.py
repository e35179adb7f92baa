# ruff: noqa: S608 - the setup's SQL names the test's own fixed schema and tables
"""Item 16.1: a row condition must not be able to write to the warehouse, by any reader.

The victim is ``adv.victim`` (three rows) in the scenario's warehouse database, recreated before
each row; ``adv.secret_other`` holds what a UNION would leak, ``adv.evil()`` writes when called
and ``adv.slow()`` sleeps. Every attack must end with exit 2 and the victim's three rows intact.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

from tests.integration.attacks import Attack, Run
from tests.stack_fixtures import Stack

TRUNCATE = "true)) TO STDOUT (FORMAT csv); COMMIT; TRUNCATE adv.victim; --"
UNION = "true) UNION ALL SELECT id, secret FROM adv.secret_other WHERE (true"

_SETUP = """
CREATE SCHEMA IF NOT EXISTS adv;
DROP TABLE IF EXISTS adv.victim;
CREATE TABLE adv.victim (id text PRIMARY KEY, amount numeric(18,2) NOT NULL);
INSERT INTO adv.victim VALUES ('a', 1.00), ('b', 2.00), ('c', 3.00);
DROP TABLE IF EXISTS adv.secret_other;
CREATE TABLE adv.secret_other (id text, secret text);
INSERT INTO adv.secret_other VALUES ('x', 'do-not-leak');
CREATE OR REPLACE FUNCTION adv.evil() RETURNS boolean LANGUAGE plpgsql AS
  $$ BEGIN DELETE FROM adv.victim; RETURN true; END $$;
CREATE OR REPLACE FUNCTION adv.slow() RETURNS boolean LANGUAGE plpgsql AS
  $$ BEGIN PERFORM pg_sleep(4); RETURN true; END $$;
"""


def _setup(stack: Stack, tmp: Path) -> dict:
    with psycopg.connect(stack.endpoints["postgres_socket_dsn"], autocommit=True) as conn:
        conn.execute(_SETUP)
    src = tmp / "victim.csv"
    src.write_text("id,amount\na,1.00\nb,2.00\nc,3.00\n")
    return {"csv": f"csv:{src}"}


def _intact(stack: Stack, tmp: Path, ctx: dict, run: Run) -> None:
    with psycopg.connect(stack.endpoints["postgres_socket_dsn"]) as conn:
        rows = conn.execute("SELECT id, amount::text FROM adv.victim ORDER BY id").fetchall()
    assert rows == [("a", "1.00"), ("b", "2.00"), ("c", "3.00")], rows
    assert "do-not-leak" not in run.stdout + run.stderr


def _diff(where: str) -> object:
    def command(stack: Stack, tmp: Path, ctx: dict) -> list[str]:
        target = f"{stack.endpoints['postgres_dsn']}#adv.victim"
        return ["diff", "-C", str(stack.config), ctx["csv"], target, "-k", "id", "-c", "amount",
                "--target-where", where, "--json"]
    return command


def _mapping_diff(where: str) -> object:
    """The condition from recon.toml's mapping (the early read starts from it before anything else)."""
    def command(stack: Stack, tmp: Path, ctx: dict) -> list[str]:
        cfg = tmp / "adv.toml"
        target = f"{stack.endpoints['postgres_dsn']}#adv.victim"
        cfg.write_text(stack.config.read_text() + f"""
[mapping.adv]
source = "{ctx['csv']}"
target = "{target}"
key = ["id"]
columns = ["amount"]
target_where = '''{where}'''
""")
        return ["diff", "-C", str(cfg), "--mapping", "adv", "--json"]
    return command


def _timeout_diff(stack: Stack, tmp: Path, ctx: dict) -> list[str]:
    cfg = tmp / "timeout.toml"
    cfg.write_text(stack.config.read_text().replace("[postgres]\n", "[postgres]\nstatement_timeout = 1\n", 1))
    target = f"{stack.endpoints['postgres_dsn']}#adv.victim"
    return ["diff", "-C", str(cfg), ctx["csv"], target, "-k", "id", "-c", "amount", "--target-where", "adv.slow()"]


def _said(*words: str) -> object:
    def after(stack: Stack, tmp: Path, ctx: dict, run: Run) -> None:
        _intact(stack, tmp, ctx, run)
        for w in words:
            assert w in run.stderr, run.stderr
    return after


ATTACKS = [
    *(Attack("16.1", f"truncate-{reader}", TRUNCATE, _diff(TRUNCATE), 2, _said("--target-where"), _setup,  # type: ignore[arg-type]
             {"RECON_PG_READER": reader}) for reader in ("psql", "adbc", "psycopg")),
    Attack("16.1", "union", UNION, _diff(UNION), 2, _said("--target-where"), _setup,  # type: ignore[arg-type]
           {"RECON_PG_READER": "psycopg"}),
    Attack("16.1", "truncate-from-mapping", TRUNCATE, _mapping_diff(TRUNCATE), 2,  # type: ignore[arg-type]
           _said("[mapping.adv] target_where"), _setup),
    Attack("16.1", "set-config", "set_config('default_transaction_read_only','off',false) = 'off'",
           _diff("set_config('default_transaction_read_only','off',false) = 'off'"), 2,  # type: ignore[arg-type]
           _said("set_config"), _setup),
    *(Attack("16.1", f"writing-function-{reader}", "adv.evil()", _diff("adv.evil()"), 2,  # type: ignore[arg-type]
             _said("read-only transaction"), _setup, {"RECON_PG_READER": reader})
      for reader in ("psql", "adbc", "psycopg")),
    Attack("16.1", "statement-timeout", "adv.slow() with [postgres] statement_timeout = 1", _timeout_diff, 2,
           _said("statement timeout"), _setup),
]
