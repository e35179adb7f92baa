# ruff: noqa: S608 - the victim tables' names are made here (atk164.clv_<hex>), never taken from input
"""Issue 16.4, SOQL built from data: a warehouse-only key reaching explain's ``Id IN (…)``, a forged
record id reaching repair's re-extraction, and a ``--source-where`` that closes its parentheses.

Every row works on its own copy of ``warehouse.customer_clv`` (schema ``atk164``, a fresh table per
row), so the scenario's data stays as it was. What reached Salesforce is read from the local org's
counters (records served by Bulk result pages)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import polars as pl
import psycopg

from engine.local.salesforce import control_request
from engine.local.state import read_json
from tests.integration.attacks import Attack, Run
from tests.stack_fixtures import Stack

#: the review's payload around well-formed ids (an org refuses ``'x'`` as an Id literal, this it runs)
HOSTILE_ID = "001000000000000') OR Id != null OR Id IN ('001000000000000"
HOSTILE_WHERE = "Name = 'nobody') OR (Id != null"


def _db(stack: Stack) -> psycopg.Connection:
    return psycopg.connect(stack.endpoints["postgres_socket_dsn"], autocommit=True)


def _bulk_records_served(stack: Stack) -> int:
    """Records the local org has served through Bulk API result pages, so far."""
    state = read_json(stack.state / "salesforce" / "state.json") or {}
    stats = control_request(state, "GET", "stats")
    return int(stats["records"].get("bulk_results", 0))


def _victim(stack: Stack, *, extra_key: str | None = None) -> str:
    """A fresh copy of the warehouse table (plus a row keyed ``extra_key``); its schema.table."""
    table = f"atk164.clv_{uuid.uuid4().hex[:10]}"
    with _db(stack) as c:
        c.execute("CREATE SCHEMA IF NOT EXISTS atk164")
        c.execute("GRANT USAGE ON SCHEMA atk164 TO PUBLIC")
        c.execute(f"CREATE TABLE {table} AS SELECT * FROM warehouse.customer_clv")
        if extra_key is not None:
            c.execute(f"INSERT INTO {table} (account_id, clv, event_count, updated_at) VALUES (%s, 1.00, 1, now())",
                      (extra_key,))
        c.execute(f"GRANT SELECT ON {table} TO PUBLIC")
    return table


def _target(stack: Stack, table: str) -> str:
    return f"{stack.endpoints['postgres_dsn']}#{table}"


def _diff(stack: Stack, table: str, out: Path) -> None:
    run = stack.run("diff", "salesforce:Account", _target(stack, table), "-k", "Id=account_id",
                    "-c", "Customer_Lifetime_Value__c=clv", "-C", str(stack.config), "--out", str(out))
    assert run.returncode == 1, (run.returncode, run.stderr[-2000:])


def _table_state(stack: Stack, table: str) -> tuple[str, int, str]:
    """(relkind, rows, digest of the rows) of the victim."""
    with _db(stack) as c:
        kind = c.execute("SELECT relkind::text FROM pg_class WHERE oid = %s::regclass", (table,)).fetchone()[0]
        n, digest = c.execute(f"SELECT count(*), md5(string_agg(t::text, ',' ORDER BY account_id)) FROM {table} t"
                              ).fetchone()
    return kind, n, digest


# -- explain: a warehouse-only key is never sent to Salesforce -------------------------------------
def _explain_setup(stack: Stack, tmp: Path) -> dict[str, Any]:
    table = _victim(stack, extra_key=HOSTILE_ID)
    _diff(stack, table, tmp / "diff")
    d = pl.read_parquet(tmp / "diff" / "differences.parquet")
    assert d.filter(pl.col("key") == HOSTILE_ID)["kind"].to_list() == ["missing_in_source"]
    asked = d.filter(pl.col("kind") != "missing_in_source")["key"].n_unique()
    return {"table": table, "asked": asked, "served_before": _bulk_records_served(stack)}


def _explain_after(stack: Stack, tmp: Path, ctx: dict[str, Any], run: Run) -> None:
    served = _bulk_records_served(stack) - ctx["served_before"]
    assert served <= ctx["asked"], f"explain read {served} records from Salesforce for {ctx['asked']} keys"
    findings = pl.read_parquet(tmp / "explain" / "findings.parquet")
    assert HOSTILE_ID not in findings["Id"].to_list()


# -- repair: a forged record id in findings stops the repair before anything is written ------------
def _repair_setup(stack: Stack, tmp: Path) -> dict[str, Any]:
    table = _victim(stack)
    _diff(stack, table, tmp / "diff")
    run = stack.run("explain", "--diff", str(tmp / "diff"), "-C", str(stack.config), "--out", str(tmp / "explain"))
    assert run.returncode == 1, (run.returncode, run.stderr[-2000:])
    fp = tmp / "explain" / "findings.parquet"
    f = pl.read_parquet(fp)
    first = f.filter(pl.col("class") == "duplicate_inflation")["Id"][0]
    f.with_columns(pl.when(pl.col("Id") == first).then(pl.lit(HOSTILE_ID)).otherwise(pl.col("Id")).alias("Id")
                   ).write_parquet(fp)
    return {"table": table, "before": _table_state(stack, table), "served_before": _bulk_records_served(stack)}


def _repair_after(stack: Stack, tmp: Path, ctx: dict[str, Any], run: Run) -> None:
    # the forged findings file is refused before any of its ids is read (17.1: it matches no recorded
    # `recon explain` run); repair's own id check stays behind it (tests/integration/test_salesforce_soql_injection.py)
    assert "findings.parquet" in run.stderr and "recon explain" in run.stderr, run.stderr
    assert _table_state(stack, ctx["table"]) == ctx["before"], "the victim table changed"
    assert _bulk_records_served(stack) == ctx["served_before"], "repair re-extracted from Salesforce"
    with _db(stack) as c:
        versions = c.execute("SELECT to_regclass(%s)", (ctx["table"] + "_versions",)).fetchone()[0]
    assert versions is None, "the victim table was versioned"


# -- diff: a --source-where that closes its parentheses --------------------------------------------
def _where_setup(stack: Stack, tmp: Path) -> dict[str, Any]:
    return {"table": _victim(stack), "served_before": _bulk_records_served(stack)}


def _where_after(stack: Stack, tmp: Path, ctx: dict[str, Any], run: Run) -> None:
    assert repr(HOSTILE_WHERE) in run.stderr and "--source-where" in run.stderr, run.stderr
    assert not (tmp / "diff").exists(), "diff wrote outputs"
    assert _bulk_records_served(stack) == ctx["served_before"]


ATTACKS = [
    Attack(
        item="16.4", name="explain-warehouse-only-key", payload=HOSTILE_ID,
        setup=_explain_setup,
        command=lambda s, tmp, ctx: ["explain", "--diff", str(tmp / "diff"), "-C", str(s.config),
                                     "--out", str(tmp / "explain")],
        exit=1, after=_explain_after),
    Attack(
        item="16.4", name="repair-forged-id", payload=HOSTILE_ID,
        setup=_repair_setup,
        command=lambda s, tmp, ctx: ["repair", "--from-explain", str(tmp / "explain"), "--mapping", "clv",
                                     "-C", str(s.config), "--apply", "--target", _target(s, ctx["table"]),
                                     "--out", str(tmp / "repair")],
        exit=4, after=_repair_after),
    Attack(
        item="16.4", name="source-where-closes-parenthesis", payload=HOSTILE_WHERE,
        setup=_where_setup,
        command=lambda s, tmp, ctx: ["diff", "salesforce:Account", _target(s, ctx["table"]), "-k", "Id=account_id",
                                     "-c", "Customer_Lifetime_Value__c=clv", "--source-where", HOSTILE_WHERE,
                                     "-C", str(s.config), "--out", str(tmp / "diff"), "--json"],
        exit=2, after=_where_after),
]
