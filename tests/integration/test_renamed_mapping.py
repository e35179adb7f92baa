# ruff: noqa: S608 - SQL built from constant schema/table names of the test's own stack
"""Column roles come from the mapping, not from names: the incident scenario reconciled twice, once
through the standard mapping (`clv`: Customer_Lifetime_Value__c ↔ warehouse.customer_clv) and once
through `renamed`, whose every name differs (Salesforce's Lifetime_Value__c, which the scenario
fills with the same values, ↔ warehouse.renamed_clv with key `sf_key` and amount `ltv_amount`),
named only by `[mapping.renamed.roles]` (the amount; the other roles spelled out explicitly) and a
`[gate] renamed` entry without a column (the gate takes the amount role).

diff → explain → gate → repair (dry run) must find the same classes, counts and exposure for both.
Own stack (the gate records breaker decisions in the ledger): the shared `scenario_stack` is never
touched.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pytest

from tests.stack_fixtures import Stack, own_stack

RENAMED = """
[mapping.renamed]
source = "salesforce:Account"
target = "{dsn}#warehouse.renamed_clv"
key = ["Id=sf_key"]
columns = ["Lifetime_Value__c=ltv_amount"]
target_updated_at = "updated_at"
tolerance = {{ Lifetime_Value__c = "0.00" }}

[mapping.renamed.roles]
amount = "Lifetime_Value__c"
owner = "OwnerId"
commission_rate = "Commission_Rate__c"
rank_by = "AnnualRevenue"
modstamp = "SystemModstamp"
"""


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # outside pytest's numbered temp dirs: pytest runs in parallel sessions prune each other's old
    # numbered dirs, which would delete a running stack's data directory
    with own_stack(Path(tempfile.mkdtemp(prefix="recon-renamed-")), ledger=True) as s:
        yield s


def _config(stack: Stack) -> Path:
    text = stack.config.read_text()
    gate_line = next(ln for ln in text.splitlines() if ln.startswith("clv = {"))
    text = text.replace(gate_line, gate_line + "\nrenamed = { variance_ratio = 0.005, amount_variance_ratio = 0.005 }")
    text += RENAMED.format(dsn=stack.endpoints["postgres_dsn"])
    out = stack.config.parent / "renamed.toml"
    out.write_text(text)
    return out


@pytest.fixture(scope="module")
def runs(stack: Stack) -> dict[str, dict[str, Any]]:
    with psycopg.connect(stack.endpoints["postgres_socket_dsn"], autocommit=True) as c:
        c.execute("CREATE TABLE warehouse.renamed_clv AS SELECT account_id AS sf_key, clv AS ltv_amount, event_count, "
                  "updated_at FROM warehouse.customer_clv")
        c.execute("GRANT SELECT ON warehouse.renamed_clv TO PUBLIC")
    cfg = str(_config(stack))
    out: dict[str, dict[str, Any]] = {}
    for name in ("clv", "renamed"):
        w = stack.config.parent / "flow" / name
        r: dict[str, Any] = {}
        diff = stack.run("diff", "-C", cfg, "--mapping", name, "--out", str(w / "diff"), "--json")
        r["diff"] = diff
        ex = stack.run("explain", "--diff", str(w / "diff"), "-C", cfg, "--out", str(w / "explain"), "--json")
        r["explain"] = ex
        r["gate"] = stack.run("gate", "--diff", str(w / "diff"), "-C", cfg, "--json")
        r["repair"] = stack.run("repair", "--from-explain", str(w / "explain"), "-C", cfg, "--out", str(w / "dry"),
                                "--json")
        r["dir"] = w
        out[name] = r
    return out


def _ok(res: Any, code: int) -> dict[str, Any]:
    """The JSON of a run that exited with exactly ``code``."""
    assert res.returncode == code, (res.returncode, res.stderr)
    return json.loads(res.stdout)


def test_diff_finds_the_same_differences(runs: dict[str, dict[str, Any]]) -> None:
    a, b = (_ok(runs[n]["diff"], 1) for n in ("clv", "renamed"))
    for k in ("mismatched", "missing_in_target", "missing_in_source", "unchanged", "in_flight", "variance_ratio"):
        assert a.get(k) == b.get(k), k
    ca, cb = a["columns"]["Customer_Lifetime_Value__c"], b["columns"]["Lifetime_Value__c"]
    names = {"clv", "ltv_amount", "Customer_Lifetime_Value__c", "Lifetime_Value__c"}
    assert _strip(ca, names) == _strip(cb, names)
    assert a["amount_variance_ratio"]["Customer_Lifetime_Value__c"] == b["amount_variance_ratio"]["Lifetime_Value__c"]


def test_explain_finds_the_same_classes_and_exposure(stack: Stack, runs: dict[str, dict[str, Any]]) -> None:
    a, b = (_ok(runs[n]["explain"], 1) for n in ("clv", "renamed"))
    assert b["column"] == "Lifetime_Value__c" and a["column"] == "Customer_Lifetime_Value__c"
    for k in ("records", "classes", "exposure", "sec_critical", "sec_critical_accounts"):
        assert a[k] == b[k], k
    assert a["classes"]["duplicate_inflation"] == len(stack.truth["classes"]["duplicate_inflation"]) > 0
    fa, fb = (pl.read_parquet(runs[n]["dir"] / "explain" / "findings.parquet").sort("Id") for n in ("clv", "renamed"))
    assert fa.columns == fb.columns
    assert fa.equals(fb)


def test_gate_opens_for_both_on_the_amount_role(runs: dict[str, dict[str, Any]]) -> None:
    a, b = (_ok(runs[n]["gate"], 3) for n in ("clv", "renamed"))
    assert a["state"] == b["state"] == "open"
    da, db = a["decision"], b["decision"]
    assert da["tripped"] and db["tripped"]
    assert da["column"] == "Customer_Lifetime_Value__c" and db["column"] == "Lifetime_Value__c"
    for k in ("ratios", "raw_ratios", "thresholds", "tripped", "reason"):
        assert da[k] == db[k], k


def test_repair_plans_the_same_corrections(runs: dict[str, dict[str, Any]]) -> None:
    a, b = (_ok(runs[n]["repair"], 1) for n in ("clv", "renamed"))
    assert a["mode"] == b["mode"] == "dry_run"
    for k in ("classes", "corrections", "sec_critical", "rest", "action_list", "unexplained", "exit_code"):
        assert a[k] == b[k], k
    pa_, pb = (json.loads((runs[n]["dir"] / "dry" / "plan.json").read_text()) for n in ("clv", "renamed"))
    key = ("Id", "class", "sec_critical", "old_value")
    assert [{k: c.get(k) for k in key} for c in pa_["corrections"]] == [{k: c.get(k) for k in key} for c in pb["corrections"]]
    assert pb["corrections"], "the scenario plants corrections"


def _strip(d: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """``d`` without the entries that only name a column."""
    return {k: v for k, v in d.items() if not (isinstance(v, str) and v in names)}
