# ruff: noqa: S608 - SQL built from the test's own constant schema and table names
"""The fallback class, `unexplained`, on the real stack (issue 22, item 7): the scenario never plants
one, so it was only ever asserted to be 0. Here five in-sync scenario accounts get a warehouse table
and a Kafka topic of their own, built so that each record's Salesforce value (s), warehouse value (w)
and stream sums (raw r, deduplicated d) are known by construction, and `recon diff` → `recon
explain` must class each one as the rules in README "Finding classes" say:

* A: w = r = d = s + 100.00, every event older than Salesforce's last change: the stream agrees with
  the warehouse, Salesforce is lower and not behind the stream: no rule → unexplained;
* B: one event delivered twice, w = r, but d = s + 50.00: the copy explains part of the gap, not
  all → unexplained;
* C: the warehouse holds the record twice (a duplicated key) → unexplained, whatever the values;
* D: one event delivered twice, w = r, d = s → duplicate_inflation (control);
* E: w = s + 7.00, r = d = s → warehouse_only_drift (control).

Only the test's own schema and topic are written: the shared `scenario_stack`'s data is untouched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal

import polars as pl
import psycopg
import pytest
from confluent_kafka import Producer

from engine.local.kafka import create_topic

TOPIC = "unexplained-clv"
SCHEMA = "unexplained_wh"
OLD = "2001-01-0{}T00:00:00.000Z"  # event times long before any Salesforce change: never "stale"


def _events(org: str, acc: str, amounts: list[str], copies: int) -> list[bytes]:
    """One message per event, then the last ``copies`` events delivered again (same id, same payload)."""
    evs = [json.dumps({"org_id": org, "account_id": acc, "event_type": "purchase", "event_ts": OLD.format(i + 1),
                       "amount": a}).encode() for i, a in enumerate(amounts)]
    return evs + evs[len(evs) - copies:]


@pytest.fixture(scope="module")
def planted(scenario_stack, tmp_path_factory) -> Iterator[dict]:
    acc = pl.read_parquet(scenario_stack.state / "scenario" / "accounts.parquet")
    # in-sync accounts (no class, a warehouse row equal to Salesforce); five, the first by Id
    ids = sorted(acc.filter((pl.col("class") == "") & (pl.col("wh_cents") == pl.col("sf_cents")))["Id"].to_list())[:5]
    s = {i: Decimal(int(acc.filter(pl.col("Id") == i)["sf_cents"][0])) / 100 for i in ids}
    a, b, c, d, e = ids
    org = scenario_stack.truth["org_id"]
    # (events, copies delivered again, warehouse rows) per account; amounts with two decimals
    y = Decimal("3.00")  # the amount of the event delivered twice
    plan = {
        a: ([s[a] + 100], 0, [s[a] + 100]),
        b: ([s[b] + 50 - y, y], 1, [s[b] + 50 + y]),
        c: ([s[c]], 0, [s[c], s[c]]),
        d: ([s[d] - y, y], 1, [s[d] + y]),
        e: ([s[e]], 0, [s[e] + 7]),
    }
    bs = scenario_stack.endpoints["kafka_bootstrap"]
    create_topic(bs, TOPIC, partitions=1)
    p = Producer({"bootstrap.servers": bs})
    for i, (amounts, copies, _) in plan.items():
        for v in _events(org, i, [f"{x:.2f}" for x in amounts], copies):
            p.produce(TOPIC, key=f"{org}:{i}".encode(), value=v, partition=0)
    assert p.flush(30) == 0
    with psycopg.connect(scenario_stack.endpoints["postgres_socket_dsn"], autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
        conn.execute(f'CREATE TABLE {SCHEMA}.customer_clv (account_id text COLLATE "C" NOT NULL, '
                     "clv numeric(18,2), event_count integer NOT NULL, updated_at timestamptz NOT NULL)")
        for i, (_, _, rows) in plan.items():
            for w in rows:
                conn.execute(f"INSERT INTO {SCHEMA}.customer_clv VALUES (%s, %s, 1, '2001-01-09T00:00:00Z')", (i, w))
        conn.execute(f"GRANT USAGE ON SCHEMA {SCHEMA} TO PUBLIC")
        conn.execute(f"GRANT SELECT ON {SCHEMA}.customer_clv TO PUBLIC")
    text = scenario_stack.config.read_text()
    block = text[text.index("[mapping.clv]"):]
    cfg = tmp_path_factory.mktemp("unexplained") / "recon.toml"
    cfg.write_text(text + "\n" + block.replace("[mapping.clv]", "[mapping.planted]")
                   .replace("#warehouse.customer_clv", f"#{SCHEMA}.customer_clv"))
    out = cfg.parent
    where = "Id IN (" + ", ".join(f"'{i}'" for i in ids) + ")"
    diff = scenario_stack.run("diff", "-C", str(cfg), "--mapping", "planted", "--source-where", where,
                              "--out", str(out / "diff"), "--json")
    assert diff.returncode == 1, diff.stderr
    exp = scenario_stack.run("explain", "--diff", str(out / "diff"), "-C", str(cfg), "--topic", TOPIC,
                             "--out", str(out / "explain"), "--json")
    assert exp.returncode == 1, exp.stderr
    # (s, w, r, d) by construction; a duplicated key has no single warehouse value
    values = {i: (s[i], rows[0] if len(rows) == 1 else None, sum(amounts) + sum(amounts[len(amounts) - k:]),
                  sum(amounts)) for i, (amounts, k, rows) in plan.items()}
    yield {"ids": ids, "values": values, "diff": json.loads(diff.stdout), "explain": json.loads(exp.stdout),
           "findings": pl.read_parquet(out / "explain" / "findings.parquet")}
    with psycopg.connect(scenario_stack.endpoints["postgres_socket_dsn"], autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")


def test_the_diff_sees_the_planted_records_only(planted) -> None:
    d = planted["diff"]
    assert (d["source"]["rows"], d["target"]["rows"], d["distinct_keys"]) == (5, 6, 5)
    assert (d["mismatched"], d["unchanged"], d["missing_in_target"], d["missing_in_source"]) == (5, 0, 0, 0)
    assert d["duplicate_keys"] == {"source": 0, "target": 1}


def test_a_difference_no_rule_explains_is_unexplained_with_exact_counts(planted) -> None:
    a, b, c, d, e = planted["ids"]
    f = planted["findings"]
    assert dict(zip(f["Id"].to_list(), f["class"].to_list(), strict=True)) == {
        a: "unexplained", b: "unexplained", c: "unexplained", d: "duplicate_inflation", e: "warehouse_only_drift"}
    ex = planted["explain"]
    assert ex["records"] == 5
    assert ex["classes"] == {"duplicate_inflation": 1, "missing_events": 0, "stale_salesforce": 0,
                             "warehouse_only_drift": 1, "missing_in_warehouse": 0, "unexplained": 3}
    # the four values each class rests on, as planted (B and D: one copy of 3.00 each)
    cols = ("salesforce_value", "warehouse_value", "raw_stream_value", "dedup_stream_value")
    got = {r["Id"]: tuple(None if r[k] is None else Decimal(r[k]) for k in cols) for r in f.iter_rows(named=True)}
    assert got == planted["values"]
