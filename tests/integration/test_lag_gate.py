# ruff: noqa: S608 - SQL built from the test's own constant schema and table names
"""`recon gate --lag` on a real Apache Kafka broker and PostgreSQL: the breaker's ``lag`` reason
opens while the warehouse's consumer is paused and money waits in the topic, and closes once
`recon consume --until-caught-up` has applied it, while a ``variance`` reason a diff opened stays
open until a diff closes it. Every decision is in the ledger; the SQL guard names the open reasons.

Runs on the shared ``scenario_stack``'s services without touching what other tests read: its own
topics, schema, mappings, and a ledger in a database of its own.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from engine.core.sfid import to18
from engine.local.kafka import create_topic
from tests.stack_fixtures import Stack

ORG = "00D5g0000000001EAA"
ACCOUNTS = [to18(f"001000000000{i:03d}") for i in range(1, 4)]


@dataclass
class Lag:
    stack: Stack
    config: Path
    ledger_dsn: str  # the administrator's
    writer_dsn: str  # the application role's, which appends
    schema: str
    tag: str

    def recon(self, *args: str) -> Any:
        return self.stack.run(*args, env={"PGPASSFILE": self.stack.endpoints["pgpass_file"]})

    def gate(self, *args: str) -> tuple[int, dict[str, Any]]:
        res = self.recon("gate", "-C", str(self.config), "--json", *args)
        assert res.returncode in (0, 3), res.stderr
        return res.returncode, json.loads(res.stdout)

    def topic(self, mode: str) -> str:
        return f"lag-{mode}-{self.tag}"

    def group(self, mode: str) -> str:
        return f"warehouse-{mode}-{self.tag}"

    def events_table(self, mode: str) -> str:
        return f"{self.schema}.events_{mode}"


def _replace_db(dsn: str, db: str) -> str:
    """The socket DSN (postgresql://user@/db?host=…) on another database."""
    head, _, rest = dsn.partition("@")
    host_part, _, query = rest.partition("?")
    return f"{head}@{host_part.split('/')[0]}/{db}" + (f"?{query}" if query else "")


@pytest.fixture(scope="module")
def lag(scenario_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lag]:
    ep = scenario_stack.endpoints
    tag = uuid.uuid4().hex[:8]
    schema, ledger_db = f"lag_{tag}", f"recon_lag_{tag}"
    admin = ep["postgres_socket_dsn"]
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {ledger_db}")
        c.execute(f"CREATE SCHEMA {schema}")
        for t in ("src", "tgt"):
            c.execute(f"CREATE TABLE {schema}.{t} (id text PRIMARY KEY, amount numeric(18, 2))")
            c.execute(f"INSERT INTO {schema}.{t} SELECT 'k' || i, i FROM generate_series(1, 20) i")
        c.execute(f"UPDATE {schema}.tgt SET amount = amount + 5 WHERE id IN ('k1', 'k2')")  # variance: 10 %
    ledger_dsn = _replace_db(admin, ledger_db)
    # the gate appends as the application role; the administrator initialises (the writer must differ)
    writer_dsn = ledger_dsn.replace("postgresql://recon@", "postgresql://recon_app@", 1)
    for mode in ("kafka", "postgres"):
        create_topic(ep["kafka_bootstrap"], f"lag-{mode}-{tag}", partitions=2)
    base = scenario_stack.config.read_text()
    cfg = tmp_path_factory.mktemp("lag") / "recon.toml"
    pg = f"{admin}#{schema}"
    mappings = "".join(f"""
[mapping.lag_{mode}]
source = "{pg}.src"
target = "{pg}.tgt"
key = ["id"]
columns = ["amount"]
""" for mode in ("kafka", "postgres"))
    text = (base.replace(f'topic = "{_toml_value(base, "topic")}"', f'topic = "lag-kafka-{tag}"')
            .replace("[kafka]\n", f'[kafka]\ngroup = "warehouse-kafka-{tag}"\n')
            .replace(f'[ledger]\ndsn = "{_toml_value(base, "dsn", after="[ledger]")}"', f'[ledger]\ndsn = "{writer_dsn}"')
            .replace("[gate]\n", f'[gate]\nlag_kafka = {{ variance_ratio = 0.05, lag_amount = "100.00", '
                                 f'lag_seconds = 86400 }}\n'
                                 f'lag_postgres = {{ lag_amount = "100.00", lag_offsets = "postgres", '
                                 f'lag_table = "{schema}.events_postgres" }}\n')) + mappings
    cfg.write_text(text)
    state = Lag(scenario_stack, cfg, ledger_dsn, writer_dsn, schema, tag)
    init = state.recon("ledger", "init", "-C", str(cfg), "--dsn", ledger_dsn, "--writer", "recon_app")
    assert init.returncode == 0, init.stderr
    yield state


def _toml_value(text: str, key: str, after: str = "[kafka]") -> str:
    """The quoted value of ``key`` in the first table at or after the ``after`` header."""
    section = text[text.index(after):]
    line = next(ln for ln in section.splitlines() if ln.startswith(f"{key} = "))
    return line.split('"')[1]


def _config_for(lag: Lag, mode: str) -> Path:
    """The postgres mode reads its own topic: the same config with [kafka] topic swapped."""
    if mode == "kafka":
        return lag.config
    p = lag.config.with_name(f"recon-{mode}.toml")
    p.write_text(lag.config.read_text().replace(f'topic = "{lag.topic("kafka")}"', f'topic = "{lag.topic(mode)}"'))
    return p


def _produce(lag: Lag, mode: str, amounts: list[str], start: int) -> None:
    producer = Producer({"bootstrap.servers": lag.stack.endpoints["kafka_bootstrap"]})
    for i, amount in enumerate(amounts, start):
        acc = ACCOUNTS[i % len(ACCOUNTS)]
        ev = {"org_id": ORG, "account_id": acc, "event_type": "purchase",
              "event_ts": f"2026-08-01T10:{i // 60:02d}:{i % 60:02d}.000Z", "amount": amount}
        producer.produce(lag.topic(mode), json.dumps(ev).encode(), key=f"{ORG}:{acc}".encode(),
                         headers=[("org-id", ORG.encode())], partition=i % 2)
    assert producer.flush(30) == 0


def _consume(lag: Lag, mode: str) -> None:
    res = lag.recon("consume", "--bootstrap", lag.stack.endpoints["kafka_bootstrap"], "--topic", lag.topic(mode),
                    "--group", lag.group(mode), "--dsn", lag.stack.endpoints["postgres_socket_dsn"],
                    "--table", lag.events_table(mode), "--org-id", ORG, "--until-caught-up", "--json",
                    "--metrics-interval", "0")
    assert res.returncode == 0, res.stderr


def _wait_kafka_commits(lag: Lag, mode: str, ends: dict[int, int], deadline_s: float = 30) -> None:
    """`recon consume` commits to Kafka asynchronously after each database commit (informational):
    wait for those commits themselves, not for a time."""
    c = Consumer({"bootstrap.servers": lag.stack.endpoints["kafka_bootstrap"], "group.id": lag.group(mode),
                  "enable.auto.commit": False})
    try:
        stop = time.monotonic() + deadline_s
        while True:
            got = {tp.partition: tp.offset for tp in c.committed(
                [TopicPartition(lag.topic(mode), p) for p in ends], timeout=10)}
            if got == ends:
                return
            assert time.monotonic() < stop, f"the group's commits stayed at {got}, not {ends}"
            time.sleep(0.2)
    finally:
        c.close()


def _guard(lag: Lag, mapping: str) -> str | None:
    """None when recon_audit.assert_circuit_closed passes, else its message."""
    with psycopg.connect(lag.ledger_dsn, autocommit=True) as c:
        try:
            c.execute("SELECT recon_audit.assert_circuit_closed(%s)", (mapping,))
        except psycopg.Error as exc:
            assert exc.sqlstate == "RC003", exc
            return str(exc)
    return None


def _decisions(lag: Lag, mapping: str) -> list[tuple[str, dict[str, str]]]:
    with psycopg.connect(lag.ledger_dsn) as c:
        rows = c.execute("SELECT body FROM recon_audit.gate_decisions WHERE mapping = %s ORDER BY seq",
                         (mapping,)).fetchall()
    return [(r[0]["kind"], r[0]["reasons"]) for r in rows]


def test_lag_opens_with_money_in_flight_and_catching_up_closes_only_lag(lag: Lag) -> None:
    """lag_offsets = "kafka": the group's committed offsets. 100.00 in flight is not above the
    100.00 limit (exact, strictly above); one more cent is. A refund counts by its size: the
    events net to far less than the limit."""
    m, mode = "lag_kafka", "kafka"
    _produce(lag, mode, ["60.00", "-30.00", "10.00"], 0)
    rc, doc = lag.gate("--lag", "--mapping", m)
    assert (rc, doc["decision"]["lag"]["amount"], doc["reasons"]) == (0, "100", {"lag": "closed"}), doc
    assert doc["decision"]["lag"]["events"] == 3 and doc["decision"]["lag"]["group"] == lag.group(mode)
    _produce(lag, mode, ["-0.01"], 3)
    rc, doc = lag.gate("--lag", "--mapping", m)
    assert (rc, doc["state"], doc["open_reasons"]) == (3, "open", ["lag"]), doc
    assert doc["decision"]["lag"]["amount"] == "100.01" and doc["decision"]["tripped"] == ["lag_amount"]

    d1 = lag.config.parent / "d1"
    assert lag.recon("diff", "-C", str(lag.config), "--mapping", m, "--out", str(d1)).returncode == 1
    rc, doc = lag.gate("--diff", str(d1))
    assert (rc, doc["reasons"], doc["open_reasons"]) == (3, {"variance": "open", "lag": "open"}, ["variance", "lag"])
    message = _guard(lag, m)
    assert message is not None and "reasons: lag, variance" in message, message

    _consume(lag, mode)
    _wait_kafka_commits(lag, mode, {0: 2, 1: 2})
    rc, doc = lag.gate("--lag", "--mapping", m)
    assert (rc, doc["decision"]["state"], doc["reasons"]) == (3, "closed", {"variance": "open", "lag": "closed"}), doc
    assert doc["decision"]["lag"]["events"] == 0 and doc["decision"]["lag"]["lag_seconds"] is None
    message = _guard(lag, m)
    assert message is not None and "reasons: variance (" in message, message

    with psycopg.connect(lag.stack.endpoints["postgres_socket_dsn"], autocommit=True) as c:
        c.execute(f"UPDATE {lag.schema}.tgt t SET amount = s.amount FROM {lag.schema}.src s WHERE s.id = t.id")
    d2 = lag.config.parent / "d2"
    assert lag.recon("diff", "-C", str(lag.config), "--mapping", m, "--out", str(d2)).returncode == 0
    rc, doc = lag.gate("--diff", str(d2))
    assert (rc, doc["state"], doc["reasons"]) == (0, "closed", {"variance": "closed", "lag": "closed"}), doc
    assert _guard(lag, m) is None
    assert _decisions(lag, m) == [("lag", {"lag": "closed"}), ("lag", {"lag": "open"}), ("diff", {"variance": "open"}),
                                  ("lag", {"lag": "closed"}), ("diff", {"variance": "closed"})]
    verify = lag.recon("ledger", "verify", "--dsn", lag.ledger_dsn)
    assert verify.returncode == 0, verify.stderr


def test_lag_from_the_offsets_recon_consume_stores(lag: Lag) -> None:
    """lag_offsets = "postgres": the offsets in TABLE_offsets, not the group's Kafka commits (the
    group here commits nothing the gate reads: its own name is not even configured)."""
    m, mode = "lag_postgres", "postgres"
    cfg = _config_for(lag, mode)
    _consume(lag, mode)  # creates the tables (an empty topic: nothing applied)
    _produce(lag, mode, ["50.00", "50.00", "0.01"], 0)
    res = lag.recon("gate", "-C", str(cfg), "--json", "--lag", "--mapping", m)
    doc = json.loads(res.stdout)
    assert (res.returncode, doc["open_reasons"], doc["decision"]["lag"]["amount"]) == (3, ["lag"], "100.01"), res.stderr
    assert doc["decision"]["lag"]["table"] == lag.events_table(mode)
    assert "reasons: lag (" in (_guard(lag, m) or "")
    _consume(lag, mode)
    res = lag.recon("gate", "-C", str(cfg), "--json", "--lag", "--mapping", m)
    doc = json.loads(res.stdout)
    assert (res.returncode, doc["reasons"], doc["decision"]["lag"]["partitions"]["0"]["committed"]) == \
        (0, {"lag": "closed"}, 2), res.stderr
    assert _guard(lag, m) is None
    assert _decisions(lag, m) == [("lag", {"lag": "open"}), ("lag", {"lag": "closed"})]


def test_decisions_from_before_reasons_count_as_variance(lag: Lag) -> None:
    """A ledger written before reasons existed: its decisions (no ``reasons`` key) decide
    ``variance`` with their state, for the guard and `recon gate --status` alike, and a lag
    decision after them neither reopens nor closes that state."""
    from engine.store import breaker
    from engine.store.ledger import Ledger

    m = "legacy"
    old = {"run_id": "r", "mapping": m, "kind": "diff", "reason": "within thresholds"}
    with Ledger(lag.writer_dsn) as led:
        led.append("gate_decisions", {**old, "state": "open"})
    message = _guard(lag, m)
    assert message is not None and "reasons: variance (" in message, message
    with Ledger(lag.writer_dsn) as led:
        led.append("gate_decisions", {**old, "state": "closed"})
        led.append("gate_decisions", {**old, "kind": "lag", "state": "open", "reasons": {"lag": "open"}})
    states = breaker.reason_states(lag.ledger_dsn, m)
    assert {r: v["state"] for r, v in states.items()} == {"variance": "closed", "lag": "open"}
    assert "reasons: lag (" in (_guard(lag, m) or "")
    res = lag.recon("gate", "-C", str(lag.config), "--json", "--status", "--mapping", m)
    assert (res.returncode, json.loads(res.stdout)["open_reasons"]) == (3, ["lag"]), res.stderr
