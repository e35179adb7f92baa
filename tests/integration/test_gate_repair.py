# ruff: noqa: S608 - SQL built from constant schema/table names of the test's own stack
"""Circuit breaker and surgical repair on the incident scenario, through the CLI, held against the
generator's ground truth and the local Salesforce server's own counters.

This module runs its own stack (state directory, services, scenario) because the flow is
destructive: the warehouse table becomes a versioned view. The shared `scenario_stack` is never
touched. One pipeline runs once (module fixture) and the tests check its parts:

diff → explain → gate (open, exit 3; the SQL guard raises) → repair dry run (nothing written) →
repair --apply (SEC first; Salesforce records served = records corrected) → repair --apply again
(nothing changes) → diff (only the stale_salesforce remainder) → gate with the exclusion policy
(exit 0; the guard passes) → ledger verify → manifest verify; and the same repair on a copy of the
warehouse, SIGKILLed after three committed chunks and resumed, ends in the same state.
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

from engine.local.postgres import EmbeddedPostgres
from engine.local.salesforce import LocalSalesforce
from engine.local.state import StackPaths
from tests.stack_fixtures import SCENARIO_ACCOUNTS, Stack, own_stack

CORRECTED = ("duplicate_inflation", "missing_events", "warehouse_only_drift", "missing_in_warehouse")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # outside pytest's numbered temp dirs: pytest runs in parallel sessions prune each other's old
    # numbered dirs, which would delete a running stack's data directory
    with own_stack(Path(tempfile.mkdtemp(prefix="recon-gate-repair-")), ledger=True, keys=True) as s:
        yield s


def _sf(stack: Stack) -> LocalSalesforce:
    paths = StackPaths.at(stack.state)
    return LocalSalesforce(paths, EmbeddedPostgres(paths).status())


def _db(stack: Stack) -> psycopg.Connection:
    return psycopg.connect(stack.endpoints["postgres_socket_dsn"], autocommit=True)


def _guard(stack: Stack, mapping: str = "clv") -> str | None:
    """None when the guard passes, else the SQLSTATE it raised."""
    with _db(stack) as c:
        try:
            c.execute("SELECT recon_audit.assert_circuit_closed(%s)", (mapping,))
        except psycopg.Error as exc:
            return exc.sqlstate
    return None


def _state(stack: Stack, schema: str) -> dict[str, Any]:
    """Current values and version history of one warehouse copy (repair-time columns left out)."""
    with _db(stack) as c:
        cur = c.execute(f"SELECT account_id, clv::text, event_count FROM {schema}.customer_clv ORDER BY 1").fetchall()
        hist = c.execute(f"SELECT account_id, count(*), count(*) FILTER (WHERE source = 'repair'), "
                         f"count(*) FILTER (WHERE valid_to IS NULL) FROM {schema}.customer_clv_versions "
                         "GROUP BY 1 ORDER BY 1").fetchall()
    return {"current": cur, "history": hist}


def _ledger_corrections(stack: Stack, target_suffix: str) -> list[dict[str, Any]]:
    with _db(stack) as c:
        rows = c.execute("SELECT canonical FROM recon_audit.corrections ORDER BY seq").fetchall()
    return [b for b in (json.loads(r[0]) for r in rows) if str(b.get("target", "")).endswith(target_suffix)]


def _json(res: Any) -> dict[str, Any]:
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def flow(stack: Stack) -> dict[str, Any]:
    w = stack.config.parent / "flow"
    cfg = str(stack.config)
    keys = stack.config.parent / "keys"
    r: dict[str, Any] = {"dir": w}

    d1 = stack.run("diff", "-C", cfg, "--mapping", "clv", "--out", str(w / "d1"))
    assert d1.returncode == 1, d1.stderr
    ex = stack.run("explain", "--diff", str(w / "d1"), "-C", cfg, "--out", str(w / "explain"), "--json")
    assert ex.returncode == 1, ex.stderr
    r["explain"] = _json(ex)
    r["findings"] = pl.read_parquet(w / "explain" / "findings.parquet")

    r["gate_open"] = stack.run("gate", "--diff", str(w / "d1"), "-C", cfg, "--json")
    r["guard_open"] = _guard(stack)
    r["status_open"] = stack.run("gate", "--status", "--mapping", "clv", "-C", cfg)

    # an untouched copy of the warehouse, for the interrupted repair later
    with _db(stack) as c:
        c.execute("CREATE SCHEMA warehouse_b")
        c.execute("CREATE TABLE warehouse_b.customer_clv (LIKE warehouse.customer_clv INCLUDING ALL)")
        c.execute("INSERT INTO warehouse_b.customer_clv SELECT * FROM warehouse.customer_clv")

    r["dry"] = stack.run("repair", "--from-explain", str(w / "explain"), "-C", cfg, "--out", str(w / "dry"))
    r["dry_json"] = stack.run("repair", "--from-explain", str(w / "explain"), "-C", cfg, "--json")
    with _db(stack) as c:
        r["kind_after_dry"] = c.execute("SELECT relkind::text FROM pg_class WHERE oid = "
                                        "'warehouse.customer_clv'::regclass").fetchone()[0]
        r["versions_after_dry"] = c.execute("SELECT to_regclass('warehouse.customer_clv_versions')").fetchone()[0]

    sf = _sf(stack)
    sf.control("POST", "/stats/reset")
    r["apply"] = stack.run("repair", "--from-explain", str(w / "explain"), "-C", cfg, "--apply", "--out",
                           str(w / "repA"), "--manifest", str(w / "m" / "repair.manifest.json"),
                           "--signing-key", str(keys / "recon.key"), "--json")
    r["stats_apply"] = sf.control("GET", "/stats")
    r["state_a"] = _state(stack, "warehouse")
    r["ledger_a"] = _ledger_corrections(stack, "#warehouse.customer_clv")
    with _db(stack) as c:
        r["version_order"] = c.execute(
            "SELECT (evidence ->> 'sec_critical')::boolean, version_id FROM warehouse.customer_clv_versions "
            "WHERE source = 'repair' ORDER BY version_id").fetchall()

    sf.control("POST", "/stats/reset")
    r["again"] = stack.run("repair", "--from-explain", str(w / "explain"), "-C", cfg, "--apply", "--out",
                           str(w / "repA2"), "--json")
    r["stats_again"] = sf.control("GET", "/stats")
    r["state_a2"] = _state(stack, "warehouse")
    r["ledger_a2"] = _ledger_corrections(stack, "#warehouse.customer_clv")

    d2 = stack.run("diff", "-C", cfg, "--mapping", "clv", "--out", str(w / "d2"), "--json")
    # the stale_salesforce accounts are left to their owners (the warehouse is right), so they still differ
    assert stack.truth["classes"]["stale_salesforce"]
    assert d2.returncode == 1, (d2.returncode, d2.stderr)
    r["d2"] = _json(d2)
    r["d2_diffs"] = pl.read_parquet(w / "d2" / "differences.parquet")

    strict = w / "strict.toml"
    text = stack.config.read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("clv = {"))
    strict.write_text(text.replace(line, 'clv = { variance_ratio = 0.0, amount_variance_ratio = 0.0, '
                                         'column = "Customer_Lifetime_Value__c" }'))
    r["gate_strict_raw"] = stack.run("gate", "--diff", str(w / "d2"), "-C", str(strict), "--json")
    r["guard_strict_raw"] = _guard(stack)
    r["gate_strict_excl"] = stack.run("gate", "--diff", str(w / "d2"), "-C", str(strict), "--exclude-from",
                                      str(w / "repA"), "--json")
    r["guard_strict_excl"] = _guard(stack)
    r["gate_final"] = stack.run("gate", "--diff", str(w / "d2"), "-C", cfg, "--exclude-from", str(w / "repA"),
                                "--manifest", str(w / "mg" / "gate.manifest.json"), "--signing-key",
                                str(keys / "recon.key"), "--json")
    r["guard_final"] = _guard(stack)

    # the same repair on the copy: killed after three committed chunks of ten, then resumed
    port = stack.endpoints["postgres_dsn"].rsplit(":", 1)[1].split("/")[0]
    target_b = f"postgresql://recon@127.0.0.1:{port}/recon#warehouse_b.customer_clv"
    args = ("repair", "--from-explain", str(w / "explain"), "-C", cfg, "--apply", "--target", target_b,
            "--out", str(w / "repB"), "--json")
    r["killed"] = stack.run(*args, env={"RECON_REPAIR_CHUNK_ROWS": "10", "RECON_REPAIR_TEST_KILL_AFTER_CHUNKS": "3"})
    with _db(stack) as c:
        r["b_repairs_after_kill"] = c.execute(
            "SELECT count(*) FROM warehouse_b.customer_clv_versions WHERE source = 'repair'").fetchone()[0]
    r["b_ledger_after_kill"] = len(_ledger_corrections(stack, "#warehouse_b.customer_clv"))
    r["resumed"] = stack.run(*args, env={"RECON_REPAIR_CHUNK_ROWS": "10"})
    r["state_b"] = _state(stack, "warehouse_b")
    r["ledger_b"] = _ledger_corrections(stack, "#warehouse_b.customer_clv")
    return r


def _expected_corrected(stack: Stack) -> set[str]:
    return {i for c in CORRECTED for i in stack.truth["classes"][c]}


def _sec_critical(stack: Stack) -> set[str]:
    """The SEC-critical accounts as the README defines them, from the generator's own accounts:
    the top ``[commission] sec_top_fraction`` (rounded up) by AnnualRevenue."""
    import math
    import tomllib

    frac = tomllib.loads(stack.config.read_text())["commission"]["sec_top_fraction"]
    a = pl.read_parquet(stack.state / "scenario" / "accounts.parquet").sort("AnnualRevenue_cents", descending=True)
    k = math.ceil(a.height * frac)
    assert a["AnnualRevenue_cents"][k - 1] != a["AnnualRevenue_cents"][k]  # no tie at the cut: one answer
    return set(a["Id"][:k].to_list())


def test_gate_opens_on_the_incident_and_the_sql_guard_raises(stack: Stack, flow: dict[str, Any]) -> None:
    g = flow["gate_open"]
    assert g.returncode == 3, g.stderr
    out = _json(g)
    assert out["state"] == "open" and out["recorded"] and out["decision"]["tripped"]
    assert out["decision"]["diff"]["summary_sha256"] and out["decision"]["thresholds"]["variance_ratio"] == 0.005
    assert flow["guard_open"] == "RC003"
    assert flow["status_open"].returncode == 3 and "open" in flow["status_open"].stdout
    assert _guard(stack, "a-mapping-never-gated") is None  # no decision: nothing to halt


def test_dry_run_prints_the_plan_and_writes_nothing(stack: Stack, flow: dict[str, Any]) -> None:
    dry = flow["dry"]
    assert dry.returncode == 1, dry.stderr
    expected = _expected_corrected(stack)
    # the terminal lists the first 60 corrections, each pending, then says how many more; the phase
    # lines count every correction as planned and pending, none applied
    n, sec = len(expected), len(_sec_critical(stack) & expected)
    assert "dry run" in dry.stdout and dry.stdout.count(" pending ") == min(60, n)
    assert (f"… and {n - 60:,} more" in dry.stdout) == (n > 60)
    for name, k in (("SEC-critical", sec), ("rest", n - sec)):
        assert (f"{name}: {k:,} planned, 0 applied, 0 already applied, 0 in sync, 0 conflicts, 0 not in Salesforce, "
                f"0 verified, {k:,} pending") in dry.stdout.splitlines()
    plan = json.loads((flow["dir"] / "dry" / "plan.json").read_text())
    assert {c["Id"] for c in plan["corrections"]} == expected
    assert all(c["status"] == "pending" for c in plan["corrections"])
    f = flow["findings"]
    first = plan["corrections"][0]
    row = f.filter(pl.col("Id") == first["Id"]).row(0, named=True)
    assert (first["old_value"], first["new_value"]) == (row["warehouse_value"], row["salesforce_value"])
    dup = next(c for c in plan["corrections"] if c["class"] == "duplicate_inflation")
    assert dup["evidence"]["kafka_copy_offsets"]
    assert flow["kind_after_dry"] == "r" and flow["versions_after_dry"] is None
    assert _json(flow["dry_json"])["mode"] == "dry_run"


def test_apply_reextracts_exactly_the_corrected_records(stack: Stack, flow: dict[str, Any]) -> None:
    res = flow["apply"]
    assert res.returncode == 0, res.stderr
    out = _json(res)
    expected = _expected_corrected(stack)
    assert out["corrections"]["applied"] == len(expected) and out["corrections"]["conflicts"] == 0
    assert {c["Id"] for c in out["records"] if c["status"] == "applied"} == expected
    served = flow["stats_apply"]["records_by_object"].get("Account", 0)
    assert served == out["corrections"]["applied"] == out["salesforce"]["records_reextracted"]
    assert served < SCENARIO_ACCOUNTS


def test_corrections_are_versions_linked_in_the_ledger(stack: Stack, flow: dict[str, Any]) -> None:
    expected = _expected_corrected(stack)
    hist = {a: (n, rep, cur) for a, n, rep, cur in flow["state_a"]["history"]}
    for acc in expected:
        n, rep, cur = hist[acc]
        missing = acc in stack.truth["classes"]["missing_in_warehouse"]
        assert (n, rep, cur) == ((1, 1, 1) if missing else (2, 1, 1))  # old version closed, never overwritten
    assert all(v == (1, 0, 1) for k, v in hist.items() if k not in expected)
    current = dict((a, v) for a, v, _ in flow["state_a"]["current"])
    f = flow["findings"]
    for row in f.filter(pl.col("class").is_in(list(CORRECTED))).iter_rows(named=True):
        assert current[row["Id"]] == row["salesforce_value"]
    led = flow["ledger_a"]
    assert len(led) == len(expected) and {b["record_id"] for b in led} == expected
    out = _json(flow["apply"])
    jobs = set(out["salesforce"]["bulk_job_ids"])
    for b in led:
        assert b["class"] in CORRECTED and b["finding"]["Id"] == b["record_id"]
        assert b["salesforce"]["bulk_job_id"] in jobs and b["salesforce"]["api_version"]
        assert b["new_value"] == current[b["record_id"]] and b["new_version_id"]
        if b["class"] == "duplicate_inflation":
            assert b["kafka"]["copy_offsets"] and b["kafka"]["topic"] == "clv-events"


def test_sec_subset_applied_and_verified_first(stack: Stack, flow: dict[str, Any]) -> None:
    out = _json(flow["apply"])
    f = flow["findings"]
    # exactly the corrected accounts among the top revenues are SEC-critical (not just "some")
    want = _sec_critical(stack) & _expected_corrected(stack)
    assert want  # the scenario has some, so the order below means something
    assert set(f.filter(pl.col("sec_critical") & pl.col("class").is_in(list(CORRECTED)))["Id"].to_list()) == want
    sec = len(want)
    assert out["sec_critical"]["planned"] == out["sec_critical"]["applied"] == out["sec_critical"]["verified"] == sec
    flags = [s for s, _ in flow["version_order"]]
    assert flags == sorted(flags, reverse=True)  # every SEC version was written before the first other one
    assert out["rest"]["verified"] == out["rest"]["applied"] == len(_expected_corrected(stack)) - sec


def test_second_apply_changes_nothing(stack: Stack, flow: dict[str, Any]) -> None:
    res = flow["again"]
    assert res.returncode == 0, res.stderr
    out = _json(res)
    assert out["corrections"]["applied"] == 0
    assert out["corrections"]["already_applied"] == len(_expected_corrected(stack))
    assert flow["stats_again"]["records_by_object"].get("Account", 0) == 0
    assert flow["state_a2"] == flow["state_a"] and len(flow["ledger_a2"]) == len(flow["ledger_a"])


def test_after_repair_only_the_stale_remainder_differs(stack: Stack, flow: dict[str, Any]) -> None:
    stale = set(stack.truth["classes"]["stale_salesforce"])
    assert flow["explain"]["classes"]["unexplained"] == 0
    assert set(flow["d2_diffs"]["key"].to_list()) == stale  # exactly stale ∪ unexplained (none)
    assert flow["d2"]["missing_in_target"] == 0 and flow["d2"]["mismatched"] == len(stale)
    actions = json.loads((flow["dir"] / "repA" / "action_list.json").read_text())["records"]
    assert {a["Id"] for a in actions} == stale and all(a["owner_id"] and a["evidence"] for a in actions)
    csv_ids = [ln.split(",")[0] for ln in (flow["dir"] / "repA" / "action_list.csv").read_text().splitlines()[1:]]
    assert set(csv_ids) == stale


def test_gate_passes_once_the_remainder_is_excluded_by_the_policy(stack: Stack, flow: dict[str, Any]) -> None:
    raw = flow["gate_strict_raw"]
    assert raw.returncode == 3 and flow["guard_strict_raw"] == "RC003"  # zero tolerance: the remainder trips it
    ex = flow["gate_strict_excl"]
    assert ex.returncode == 0, ex.stderr
    d = _json(ex)["decision"]
    stale = set(stack.truth["classes"]["stale_salesforce"])
    assert {e["key"] for e in d["exclusion"]["excluded"]} == stale and d["exclusion"]["refused"] == []
    assert d["exclusion"]["accepted_classes"] == ["stale_salesforce"] and d["exclusion"]["source"]["kind"] == "repair"
    assert d["ratios"] == {"variance_ratio": 0.0, "amount_variance_ratio": 0.0}
    assert flow["guard_strict_excl"] is None
    final = flow["gate_final"]
    assert final.returncode == 0, final.stderr
    assert flow["guard_final"] is None


def test_killed_repair_resumes_to_the_state_of_an_uninterrupted_one(stack: Stack, flow: dict[str, Any]) -> None:
    assert flow["killed"].returncode == -9, flow["killed"].stderr
    n = len(_expected_corrected(stack))
    f = flow["findings"]
    sec = f.filter(pl.col("sec_critical") & pl.col("class").is_in(list(CORRECTED))).height
    # chunks of ten, the SEC subset in its own chunks first: the sizes of the first three chunks
    sizes = [min(10, sec - i) for i in range(0, sec, 10)] + [min(10, n - sec - i) for i in range(0, n - sec, 10)]
    committed = sum(sizes[:3])
    assert flow["b_repairs_after_kill"] == committed  # three chunks committed before the kill
    assert flow["b_ledger_after_kill"] == committed - sizes[2]  # the third chunk's ledger rows died with it
    res = flow["resumed"]
    assert res.returncode == 0, res.stderr
    out = _json(res)
    assert out["corrections"]["already_applied"] == committed and out["corrections"]["applied"] == n - committed
    assert out["ledger"]["backfilled"] == sizes[2]
    assert flow["state_b"] == flow["state_a"]
    ids = [b["correction_id"] for b in flow["ledger_b"]]
    assert len(ids) == len(set(ids)) == n  # every correction in the ledger exactly once


def test_ledger_and_manifests_verify(stack: Stack, flow: dict[str, Any]) -> None:
    v = stack.run("ledger", "verify", "-C", str(stack.config))
    assert v.returncode == 0, v.stderr + v.stdout
    pub = stack.config.parent / "keys" / "recon.pub"
    for m in (flow["dir"] / "m" / "repair.manifest.json", flow["dir"] / "mg" / "gate.manifest.json"):
        res = stack.run("manifest", "verify", str(m), "--key", str(pub))
        assert res.returncode == 0, res.stderr + res.stdout


def test_override_needs_reason_and_operator_and_is_the_latest_decision(stack: Stack, flow: dict[str, Any]) -> None:
    cfg = str(stack.config)
    bad = stack.run("gate", "--override", "close", "--mapping", "clv", "-C", cfg, "--operator", "jane")
    assert bad.returncode == 2 and "--reason" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    opened = stack.run("gate", "--override", "open", "--mapping", "clv", "-C", cfg, "--reason", "freeze for audit",
                       "--operator", "jane.doe", "--json")
    assert opened.returncode == 3 and _guard(stack) == "RC003"
    closed = stack.run("gate", "--override", "close", "--mapping", "clv", "-C", cfg, "--reason", "audit done",
                       "--operator", "jane.doe", "--json")
    assert closed.returncode == 0 and _guard(stack) is None
    d = _json(closed)["decision"]
    assert (d["kind"], d["operator"], d["reason"], d["previous"]["state"]) == ("override", "jane.doe", "audit done",
                                                                              "open")
    with _db(stack) as c:
        states = [r[0] for r in c.execute("SELECT body ->> 'state' FROM recon_audit.gate_decisions "
                                          "WHERE mapping = 'clv' ORDER BY seq").fetchall()]
    assert states[0] == "open" and states[-2:] == ["open", "closed"]  # a log of decisions, never an updated flag


def test_versioned_warehouse_keeps_history_and_the_guard_serves_granted_roles(stack: Stack, flow: dict[str, Any]) -> None:
    cfg = str(stack.config)
    res = stack.run("gate", "--install-guard", "--guard-role", "recon_app", "-C", cfg,  # an administrator's job
                    "--ledger", stack.endpoints["postgres_dsn"])
    assert res.returncode == 0, res.stderr
    app_dsn = stack.endpoints["postgres_socket_dsn"].replace("postgresql://recon@", "postgresql://recon_app@", 1)
    with psycopg.connect(app_dsn, autocommit=True) as c:
        c.execute("SELECT recon_audit.assert_circuit_closed('clv')")  # the latest decision is closed
        assert c.execute("SELECT state FROM recon_audit.circuit_state('clv')").fetchone()[0] == "closed"
        # the view kept the table's privileges: the application still reads the current values
        assert c.execute("SELECT count(*) FROM warehouse.customer_clv").fetchone()[0] == SCENARIO_ACCOUNTS
    acc = sorted(stack.truth["classes"]["duplicate_inflation"])[0]
    with _db(stack) as c:
        for stmt in ("UPDATE warehouse.customer_clv_versions SET clv = 0 WHERE account_id = %s",
                     "DELETE FROM warehouse.customer_clv_versions WHERE account_id = %s"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="keeps every version"):
                c.execute(stmt, (acc,))
        # a writer that still updates the old table name gets a new version, not an overwrite
        c.execute("UPDATE warehouse.customer_clv SET clv = clv + 1 WHERE account_id = %s", (acc,))
        hist = c.execute("SELECT source, valid_to IS NULL FROM warehouse.customer_clv_versions "
                         "WHERE account_id = %s ORDER BY version_id", (acc,)).fetchall()
    assert hist == [("original", False), ("repair", False), ("load", True)]
