"""`recon services up` + `recon scenario load` leave the three systems consistent with the ground
truth, `recon diff` finds exactly the injected differences, and `services down` stops everything.

The ground truth is the generator's own bookkeeping; these checks read each system through its
real client (simple-salesforce, confluent-kafka, psycopg) instead of recon's detection code.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import psycopg
import pytest
import requests
from confluent_kafka import Consumer, KafkaError, TopicPartition
from simple_salesforce import Salesforce

from engine.core import ids
from engine.local.state import pid_alive
from tests.stack_fixtures import SCENARIO_ACCOUNTS


def _sf(stack) -> Salesforce:
    creds = json.loads(Path(stack.endpoints["credentials_file"]).read_text())
    session = requests.Session()
    session.trust_env = False
    session.verify = stack.endpoints["salesforce_ca_bundle"]
    r = session.post(stack.endpoints["salesforce_login_url"] + "/services/oauth2/token", data={
        "grant_type": "password", "client_id": creds["salesforce_consumer_key"],
        "client_secret": creds["salesforce_consumer_secret"], "username": creds["salesforce_username"],
        "password": creds["salesforce_password"] + creds["salesforce_security_token"]})
    r.raise_for_status()
    tok = r.json()
    return Salesforce(instance_url=tok["instance_url"], session_id=tok["access_token"], session=session)


def _pg(stack) -> psycopg.Connection:
    return psycopg.connect(stack.endpoints["postgres_socket_dsn"])


def test_services_json_has_contract_keys_and_no_secret(scenario_stack) -> None:
    ep = scenario_stack.endpoints
    for k in ("postgres_dsn", "postgres_socket_dsn", "kafka_bootstrap", "kafka_backend", "salesforce_instance_url",
              "salesforce_login_url", "salesforce_ca_bundle", "credentials_file"):
        assert ep.get(k), k
    creds = json.loads(Path(ep["credentials_file"]).read_text())
    assert oct(os.stat(ep["credentials_file"]).st_mode & 0o777) == "0o600"
    blob = json.dumps(ep)
    for secret_key in ("postgres_password", "salesforce_password", "salesforce_security_token", "salesforce_consumer_secret"):
        assert creds[secret_key] not in blob
    again = scenario_stack.run("services", "up", "--json")  # twice is harmless and returns the same endpoints
    assert again.returncode == 0 and json.loads(again.stdout)["postgres_dsn"] == ep["postgres_dsn"]


def test_salesforce_holds_the_true_values(scenario_stack) -> None:
    truth = pl.read_parquet(Path(scenario_stack.state) / "scenario" / "accounts.parquet")
    sf = _sf(scenario_stack)
    recs = sf.query_all("SELECT Id, Customer_Lifetime_Value__c, OwnerId FROM Account")["records"]
    assert len(recs) == SCENARIO_ACCOUNTS
    got = {r["Id"]: round(r["Customer_Lifetime_Value__c"] * 100) for r in recs}
    want = dict(zip(truth["Id"].to_list(), truth["sf_cents"].to_list(), strict=True))
    assert got == want
    owners = sf.query("SELECT COUNT() FROM User")["totalSize"]
    assert owners >= 400


def test_kafka_topic_carries_every_event_and_the_injected_copies(scenario_stack) -> None:
    truth = scenario_stack.truth
    copies = pl.read_parquet(Path(scenario_stack.state) / "scenario" / "copies.parquet")
    c = Consumer({"bootstrap.servers": scenario_stack.endpoints["kafka_bootstrap"], "group.id": "verify-scenario",
                  "enable.partition.eof": True, "enable.auto.commit": False})
    c.assign([TopicPartition("clv-events", p, 0) for p in range(truth["partitions"])])
    by_offset: dict[tuple[int, int], str] = {}
    pending = set(range(truth["partitions"]))
    while pending:
        for m in c.consume(5000, 1.0):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(m.partition())
                continue
            v = json.loads(m.value())
            assert dict(m.headers())["org-id"].decode() == truth["org_id"]
            by_offset[(m.partition(), m.offset())] = ids.event_id(v["org_id"], v["account_id"], v["event_type"], v["event_ts"])
    c.close()
    assert len(by_offset) == truth["messages_produced"]
    # every recorded copy sits at its recorded offset and repeats an event delivered earlier in its partition
    first_seen: dict[str, tuple[int, int]] = {}
    for (p, o), eid in sorted(by_offset.items()):
        first_seen.setdefault(eid, (p, o))
    for row in copies.iter_rows(named=True):
        eid = by_offset[(row["partition"], row["offset"])]
        assert eid == row["event_id"]
        assert first_seen[eid] < (row["partition"], row["offset"])
    repeated = sum(1 for (p, o), e in by_offset.items() if first_seen[e] != (p, o))
    assert repeated == truth["duplicate_copies"] == len(copies)
    for w in truth["windows"]:
        n = sum(1 for (p, o) in by_offset if p == w["partition"] and w["first_offset"] <= o <= w["last_offset"])
        assert n == w["events"]  # the copies form one unbroken block per partition


def test_warehouse_is_the_sum_of_what_was_delivered(scenario_stack) -> None:
    truth = pl.read_parquet(Path(scenario_stack.state) / "scenario" / "accounts.parquet")
    with _pg(scenario_stack) as c:
        n_events = c.execute("SELECT count(*) FROM warehouse.clv_events").fetchone()[0]
        rows = c.execute("SELECT account_id, (clv * 100)::bigint FROM warehouse.customer_clv").fetchall()
        sums = dict(c.execute("SELECT account_id, (sum(amount) * 100)::bigint FROM warehouse.clv_events GROUP BY 1").fetchall())
    assert n_events == scenario_stack.truth["messages_produced"]
    wh = dict(rows)
    want = {r["Id"]: r["wh_cents"] for r in truth.iter_rows(named=True) if r["wh_cents"] is not None}
    assert wh == want
    drift = set(scenario_stack.truth["classes"]["warehouse_only_drift"])
    assert {k for k, v in wh.items() if sums[k] != v} == drift  # only the manual patches differ from the events


@pytest.mark.parametrize("path", ["rest", "bulk"])
def test_diff_finds_exactly_the_ground_truth(scenario_stack, tmp_path: Path, path: str) -> None:
    env = {"RECON_SF_REST_MAX_ROWS": "100000" if path == "rest" else "0"}
    res = scenario_stack.run("diff", "-C", str(scenario_stack.config), "--mapping", "clv", "--json", "--out",
                             str(tmp_path), env=env)
    assert res.returncode == 1, res.stderr
    s = json.loads(res.stdout)
    exp = scenario_stack.truth["expected_diff"]
    diffs = pl.read_parquet(tmp_path / "differences.parquet")
    assert sorted(diffs.filter(pl.col("kind") == "mismatched")["key"].to_list()) == exp["mismatched"]
    assert sorted(diffs.filter(pl.col("kind") == "missing_in_target")["key"].to_list()) == exp["missing_in_target"]
    assert s["missing_in_source"] == 0 and s["mismatched"] == len(exp["mismatched"])
    assert s["unchanged"] == SCENARIO_ACCOUNTS - len(exp["mismatched"]) - len(exp["missing_in_target"])
    if path == "bulk":
        assert s["source"]["extract"]["bulk_job_ids"], "the Bulk API 2.0 path was not taken"
    else:
        assert not s["source"]["extract"]["bulk_job_ids"]


def test_as_of_puts_later_salesforce_updates_in_flight(scenario_stack) -> None:
    sf = _sf(scenario_stack)
    exp = scenario_stack.truth["expected_diff"]
    unchanged = sf.query("SELECT Id, Customer_Lifetime_Value__c FROM Account ORDER BY Id LIMIT 200")["records"]
    bad = set(exp["mismatched"]) | set(exp["missing_in_target"])
    victim = next(r for r in unchanged if r["Id"] not in bad)
    t = datetime.now(UTC) - timedelta(seconds=1)
    sf.Account.update(victim["Id"], {"Customer_Lifetime_Value__c": victim["Customer_Lifetime_Value__c"] + 1000})
    try:
        res = scenario_stack.run("diff", "-C", str(scenario_stack.config), "--mapping", "clv", "--json",
                                 "--as-of", t.isoformat())
        s = json.loads(res.stdout)
        assert s["in_flight"] == 1
        assert s["mismatched"] == len(exp["mismatched"])  # the update is not a difference
        res = scenario_stack.run("diff", "-C", str(scenario_stack.config), "--mapping", "clv", "--json")
        assert json.loads(res.stdout)["mismatched"] == len(exp["mismatched"]) + 1  # without --as-of it is
    finally:
        sf.Account.update(victim["Id"], {"Customer_Lifetime_Value__c": victim["Customer_Lifetime_Value__c"]})


def test_wrong_salesforce_password_is_exit_2_one_line(scenario_stack) -> None:
    res = scenario_stack.run("diff", "-C", str(scenario_stack.config), "--mapping", "clv",
                             env={"SF_USERNAME": "recon.integration@example.com", "SF_PASSWORD": "not-it-3x4mpl3"})
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("recon: error:") and "Traceback" not in res.stderr
    assert "not-it-3x4mpl3" not in res.stderr + res.stdout


def test_unknown_salesforce_field_is_exit_2(scenario_stack) -> None:
    res = scenario_stack.run("diff", "-C", str(scenario_stack.config), "--mapping", "clv", "-k", "Id=account_id",
                             "-c", "No_Such_Field__c=clv")
    assert res.returncode == 2 and "No_Such_Field__c" in res.stderr


def test_services_down_stops_every_process() -> None:
    import shutil

    from tests.pg_fixtures import server_dir
    from tests.stack_fixtures import recon

    tmp_path = server_dir("down")
    try:
        _services_down_stops_every_process(tmp_path, recon)
    finally:
        recon("services", "down", env={**os.environ, "RECON_STATE_DIR": str(tmp_path / "s")})
        shutil.rmtree(tmp_path, ignore_errors=True)


def _services_down_stops_every_process(tmp_path: Path, recon) -> None:  # noqa: ANN001
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "SF_", "RECON_"))}
    env["RECON_STATE_DIR"] = str(tmp_path / "s")
    up = recon("services", "up", "--json", "--kafka", "tansu", env=env)
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["kafka_backend"] == "tansu"
    st = recon("services", "status", "--json", env=env)
    assert st.returncode == 0
    pids = []
    for f in ("pg/data/postmaster.pid",):
        pids.append(int((tmp_path / "s" / f).read_text().splitlines()[0]))
    for f in tmp_path.joinpath("s").rglob("*.json"):
        try:
            d = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(d, dict) and isinstance(d.get("pid"), int):
            pids.append(d["pid"])
    assert len(pids) >= 3 and all(pid_alive(p) for p in pids)
    down = recon("services", "down", "--json", env=env)
    assert down.returncode == 0
    assert not any(pid_alive(p) for p in pids)
    st = recon("services", "status", "--json", env=env)
    assert st.returncode == 1 and json.loads(st.stdout)["postgres"] == "stopped"


def test_snapshot_then_diff_from_the_snapshot_spends_no_salesforce_call(scenario_stack, tmp_path: Path) -> None:
    snap = tmp_path / "sf.parquet"
    res = scenario_stack.run("snapshot", "salesforce:Account", "-k", "Id", "-c", "Customer_Lifetime_Value__c",
                             "-C", str(scenario_stack.config), "--out", str(snap), "--json")
    assert res.returncode == 0, res.stderr
    side = json.loads(snap.with_name("sf.parquet.json").read_text())
    assert side["rows"] == SCENARIO_ACCOUNTS and side["schema"]["Customer_Lifetime_Value__c"]["kind"] == "decimal"
    assert side["extract"]["org_id"] and side["merkle"]["encoding_version"] == 2
    live = json.loads(scenario_stack.run("diff", "-C", str(scenario_stack.config), "--mapping", "clv", "--json").stdout)
    before = _sf_stats(scenario_stack)
    off = json.loads(scenario_stack.run("diff", f"parquet:{snap}", "-C", str(scenario_stack.config), "--mapping", "clv",
                                        "--json").stdout)
    assert _sf_stats(scenario_stack) == before  # not one Salesforce request
    assert off["merkle"]["source_root"] == live["merkle"]["source_root"] == side["merkle"]["root"]
    assert (off["mismatched"], off["missing_in_target"]) == (live["mismatched"], live["missing_in_target"])


def _sf_stats(stack) -> dict:
    from engine.local.postgres import EmbeddedPostgres
    from engine.local.salesforce import LocalSalesforce
    from engine.local.state import StackPaths

    paths = StackPaths.at(stack.state)
    st = LocalSalesforce(paths, EmbeddedPostgres(paths).status()).control("GET", "/stats")
    return {"requests": st["requests"], "records": st["records"]}
