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
warehouse, SIGKILLed after three committed chunks (the hook), then at seeded random points while it
writes, and resumed, ends in the same state. Two more copies hold what repair must not write over:
values another writer changed after the explain (conflicts, exit 1) and a value the warehouse does
not keep as written (verification fails, exit 4).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
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


def _target(stack: Stack, copy: str) -> str:
    """The target reference of one copy of the warehouse table (``warehouse_<copy>.customer_clv``)."""
    port = stack.endpoints["postgres_dsn"].rsplit(":", 1)[1].split("/")[0]
    return f"postgresql://recon@127.0.0.1:{port}/recon#warehouse_{copy}.customer_clv"


def _repairs(c: psycopg.Connection, copy: str) -> int:
    """Repair versions committed to one copy (0 before it is versioned)."""
    if c.execute("SELECT to_regclass(%s)", (f"warehouse_{copy}.customer_clv_versions",)).fetchone()[0] is None:
        return 0
    return int(c.execute(f"SELECT count(*) FROM warehouse_{copy}.customer_clv_versions "
                         "WHERE source = 'repair'").fetchone()[0])


def _progress(stack: Stack, copy: str) -> tuple[int, int]:
    """(repair versions in the copy, ledger rows about it)."""
    with _db(stack) as c:
        done = _repairs(c, copy)
    return done, len(_ledger_corrections(stack, f"#warehouse_{copy}.customer_clv"))


def _kill_at_random_points(stack: Stack, args: tuple[str, ...], *, kills: int, seed: int, planned: int
                           ) -> list[dict[str, Any]]:
    """Start the repair ``kills`` times and SIGKILL it once the copy holds a random number of repair
    versions (then a random few ms more), as the consumer's crash test does: the kills land between
    or inside chunk transactions, ledger appends and re-extractions, not only at the hook's point.
    Returns, per start, its exit code, the repair versions at its start, every count seen while it
    ran, and (repairs, ledger rows) afterwards."""
    rng = random.Random(seed)
    start = _progress(stack, "b")[0]
    thresholds = sorted(rng.uniform(start + 1, 0.9 * planned) for _ in range(kills))
    out = []
    with _db(stack) as c:
        for threshold in thresholds:
            at_start, seen = _repairs(c, "b"), set()
            p = subprocess.Popen([sys.executable, "-m", "engine.cli.main", *args], text=True,
                                 env={**stack.env, "RECON_REPAIR_CHUNK_ROWS": "10"},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                deadline = time.monotonic() + 120
                while p.poll() is None and (done := _repairs(c, "b")) < threshold:
                    seen.add(done)
                    assert time.monotonic() < deadline, "the repair made no progress"
                    time.sleep(0.005)
                if p.poll() is None:
                    time.sleep(rng.uniform(0, 0.03))
                    p.kill()
                _, err = p.communicate(timeout=60)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            out.append({"threshold": threshold, "returncode": p.returncode, "stderr": err, "start": at_start,
                        "seen": sorted(seen), "after": _progress(stack, "b")})
    return out


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

    # untouched copies of the warehouse: for the interrupted repair later (b), conflicts (c) and a
    # failed verification (d)
    with _db(stack) as c:
        for copy in ("warehouse_b", "warehouse_c", "warehouse_d"):
            c.execute(f"CREATE SCHEMA {copy}")
            c.execute(f"CREATE TABLE {copy}.customer_clv (LIKE warehouse.customer_clv INCLUDING ALL)")
            c.execute(f"INSERT INTO {copy}.customer_clv SELECT * FROM warehouse.customer_clv")

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

    # the same repair on the copy: killed by the hook after three committed chunks of ten (before the
    # third chunk's ledger rows), then at seeded random points, then resumed
    args = ("repair", "--from-explain", str(w / "explain"), "-C", cfg, "--apply", "--target", _target(stack, "b"),
            "--out", str(w / "repB"), "--json")
    r["killed"] = stack.run(*args, env={"RECON_REPAIR_CHUNK_ROWS": "10", "RECON_REPAIR_TEST_KILL_AFTER_CHUNKS": "3"})
    r["b_repairs_after_kill"], r["b_ledger_after_kill"] = _progress(stack, "b")
    r["random_kills"] = _kill_at_random_points(stack, args, kills=2, seed=22,
                                               planned=len(r["findings"].filter(pl.col("class").is_in(CORRECTED))))
    r["b_before_resume"] = _progress(stack, "b")
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
    kills = flow["random_kills"]
    assert sum(k["returncode"] == -9 for k in kills) >= len(kills) - 1, kills  # at most the last one finished
    progress = [(committed, committed - sizes[2])] + [k["after"] for k in kills]
    for k in kills:
        assert k["returncode"] in (-9, 0), k["stderr"][-2000:]
        if k["start"] >= sec:  # the rest, in chunks of ten from the first pending one: a reader sees whole
            # chunks only, while the repair runs (sampled every few ms) and after the kill
            assert all((x - k["start"]) % 10 == 0 or x == n for x in [*k["seen"], k["after"][0]]), k
    for (before, _), (later, later_ledger) in zip(progress, progress[1:], strict=False):
        assert later >= before  # nothing committed is undone
        assert later_ledger <= later  # the ledger never records a correction the warehouse lacks
    repairs, ledger = flow["b_before_resume"]
    assert (repairs, ledger) == progress[-1]
    res = flow["resumed"]
    assert res.returncode == 0, res.stderr
    out = _json(res)
    assert out["corrections"]["already_applied"] == repairs and out["corrections"]["applied"] == n - repairs
    assert out["ledger"]["backfilled"] == repairs - ledger
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


# -- what repair must not write over -----------------------------------------------------------------
def _pick(flow: dict[str, Any], *conds: pl.Expr) -> str:
    """The first record (by Id) of the explain's findings matching ``conds``."""
    return str(flow["findings"].filter(*conds).sort("Id")["Id"][0])


def _finding(flow: dict[str, Any], rid: str) -> dict[str, Any]:
    return dict(flow["findings"].filter(pl.col("Id") == rid).row(0, named=True))


@pytest.fixture(scope="module")
def conflicts(stack: Stack, flow: dict[str, Any]) -> dict[str, Any]:
    """Copy c, changed by another writer after the explain: one value moved on (``changed``), a row
    appeared for a record the warehouse lacked (``appeared``), one value already set to Salesforce's
    (``settled``); then ``repair --apply`` on it."""
    w, cfg = flow["dir"], str(stack.config)
    r: dict[str, Any] = {
        "changed": _pick(flow, pl.col("class") == "duplicate_inflation"),
        "appeared": _pick(flow, pl.col("class") == "missing_in_warehouse"),
        "settled": _pick(flow, pl.col("class") == "warehouse_only_drift")}
    with _db(stack) as c:
        c.execute("UPDATE warehouse_c.customer_clv SET clv = clv + 7 WHERE account_id = %s", (r["changed"],))
        c.execute("INSERT INTO warehouse_c.customer_clv VALUES (%s, 1.23, 1, now())", (r["appeared"],))
        c.execute("UPDATE warehouse_c.customer_clv SET clv = %s WHERE account_id = %s",
                  (_finding(flow, r["settled"])["salesforce_value"], r["settled"]))
        r["before"] = dict(c.execute("SELECT account_id, clv::text FROM warehouse_c.customer_clv WHERE account_id = "
                                     "ANY(%s)", ([r["changed"], r["appeared"], r["settled"]],)).fetchall())
    sf = _sf(stack)
    sf.control("POST", "/stats/reset")
    r["res"] = stack.run("repair", "--from-explain", str(w / "explain"), "-C", cfg, "--apply", "--target",
                         _target(stack, "c"), "--out", str(w / "repC"), "--json")
    r["stats"] = sf.control("GET", "/stats")
    r["state"] = _state(stack, "warehouse_c")
    return r


def test_values_changed_since_the_explain_are_conflicts_left_as_they_are(stack: Stack, flow: dict[str, Any],
                                                                          conflicts: dict[str, Any]) -> None:
    res = conflicts["res"]
    assert res.returncode == 1, res.stderr  # applied what it could; the conflicts are left to act on
    out = _json(res)
    n = len(_expected_corrected(stack))
    changed, appeared, settled = conflicts["changed"], conflicts["appeared"], conflicts["settled"]
    assert {k: out["corrections"][k] for k in ("applied", "conflicts", "in_sync", "not_in_salesforce", "pending",
                                               "verified")} == {"applied": n - 3, "conflicts": 2, "in_sync": 1,
                                                                "not_in_salesforce": 0, "pending": 0,
                                                                "verified": n - 3}
    rec = {x["Id"]: x for x in out["records"]}
    assert rec[changed]["old_value"] == _finding(flow, changed)["warehouse_value"]
    assert (rec[changed]["status"], rec[changed]["detail"]) == (
        "conflict", f"the warehouse holds {conflicts['before'][changed]}; the plan expected {rec[changed]['old_value']}")
    assert (rec[appeared]["status"], rec[appeared]["detail"]) == (
        "conflict", "the warehouse holds 1.23; the plan expected no row")
    assert (rec[settled]["status"], rec[settled]["detail"]) == ("in_sync", None)
    # the other writer's values stand, with no repair version written over them
    current = {a: v for a, v, _ in conflicts["state"]["current"]}
    assert {a: current[a] for a in (changed, appeared, settled)} == conflicts["before"]
    repaired = {a for a, _, rep, _ in conflicts["state"]["history"] if rep}
    assert repaired == _expected_corrected(stack) - {changed, appeared, settled}
    # every other record as on the copy repaired without interference; the three not even re-extracted
    assert [row for row in conflicts["state"]["current"] if row[0] not in (changed, appeared, settled)] == \
        [row for row in flow["state_a"]["current"] if row[0] not in (changed, appeared, settled)]
    assert conflicts["stats"]["records_by_object"].get("Account", 0) == out["salesforce"]["records_reextracted"] \
        == n - 3


@pytest.fixture(scope="module")
def unverified(stack: Stack, flow: dict[str, Any]) -> dict[str, Any]:
    """Copy d, versioned as repair does it first, with a trigger that stores one SEC-critical
    record's repaired value plus one: the warehouse does not hold what repair wrote. Then
    ``repair --apply`` on it."""
    from psycopg import sql

    from engine.connectors.base import PostgresRef
    from engine.store.versions import Target, inspect, migrate

    w, cfg = flow["dir"], str(stack.config)
    skewed = _pick(flow, pl.col("sec_critical"), pl.col("class") == "duplicate_inflation")
    tgt = Target(ref=PostgresRef(stack.endpoints["postgres_socket_dsn"], "warehouse_d", "customer_clv"),
                 mapping="clv", sobject="Account", source_column="Customer_Lifetime_Value__c", key="account_id",
                 value="clv", updated_at="updated_at", count_column="event_count")
    with _db(stack) as c:
        migrate(c, tgt, inspect(c, tgt))
        c.execute("CREATE FUNCTION warehouse_d.skew() RETURNS trigger LANGUAGE plpgsql AS "
                  "$f$ BEGIN NEW.clv := NEW.clv + 1; RETURN NEW; END $f$")
        c.execute(sql.SQL("CREATE TRIGGER skew BEFORE INSERT ON warehouse_d.customer_clv_versions "
                                  "FOR EACH ROW WHEN (NEW.source = 'repair' AND NEW.account_id = {}) "
                                  "EXECUTE FUNCTION warehouse_d.skew()").format(sql.Literal(skewed)))
    sf = _sf(stack)
    sf.control("POST", "/stats/reset")
    res = stack.run("repair", "--from-explain", str(w / "explain"), "-C", cfg, "--apply", "--target",
                    _target(stack, "d"), "--out", str(w / "repD"), "--json")
    with _db(stack) as c:
        repaired = dict(c.execute("SELECT (evidence ->> 'sec_critical')::boolean, count(*) FROM "
                                  "warehouse_d.customer_clv_versions WHERE source = 'repair' GROUP BY 1").fetchall())
        held = c.execute("SELECT clv::text FROM warehouse_d.customer_clv WHERE account_id = %s", (skewed,)).fetchone()[0]
    return {"skewed": skewed, "res": res, "stats": sf.control("GET", "/stats"), "repaired": repaired, "held": held,
            "ledger": _ledger_corrections(stack, "#warehouse_d.customer_clv")}


def test_a_value_the_warehouse_does_not_keep_fails_verification_with_exit_4(stack: Stack, flow: dict[str, Any],
                                                                              unverified: dict[str, Any]) -> None:
    """The SEC subset is applied and verified before the rest is even re-extracted: the failed
    verification stops the repair there, exit 4, one line naming the record and both values."""
    from decimal import Decimal

    res, skewed = unverified["res"], unverified["skewed"]
    assert res.returncode == 4, res.stderr
    sf_value = _finding(flow, skewed)["salesforce_value"]
    assert Decimal(unverified["held"]) == Decimal(sf_value) + 1
    assert res.stderr.splitlines() == [
        f"recon: error: after repair, 1 record(s) of {_target(stack, 'd')} do not hold Salesforce's value "
        f"(first: {skewed}: warehouse {unverified['held']}, Salesforce {sf_value})"], res.stderr
    f = flow["findings"]
    sec = f.filter(pl.col("sec_critical") & pl.col("class").is_in(list(CORRECTED))).height
    assert unverified["repaired"] == {True: sec}  # the SEC subset written, nothing of the rest
    assert unverified["stats"]["records_by_object"].get("Account", 0) == sec  # the rest was never re-extracted
    assert len(unverified["ledger"]) == sec  # what was committed is recorded, the skewed record too
