"""The adversarial review's attacks on `recon consume` (issue 16), each on its own topic and events
table of the shared stack (the scenario's topic and tables are never touched)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from tests.integration.attacks import Attack, Run
from tests.stack_fixtures import Stack

ORG = "00D5g0000000001EAA"
ACC = "0015g0000000001AAA"


def _events(*amounts: str) -> list[bytes]:
    """Messages of one event (same org, record, type and time: one event id) with these amounts."""
    return [json.dumps({"org_id": ORG, "account_id": ACC, "event_type": "purchase",
                        "event_ts": "2026-08-01T10:00:00.000Z", "amount": a}).encode() for a in amounts]


def _topic_with(*values: bytes) -> Callable[[Stack, Path], dict]:
    """A setup that puts ``values`` on a new one-partition topic and names a new events table."""

    def setup(stack: Stack, _tmp: Path) -> dict:
        from confluent_kafka import Producer

        from engine.local.kafka import create_topic

        bootstrap = stack.endpoints["kafka_bootstrap"]
        topic = f"t-attack-{uuid.uuid4().hex[:8]}"
        create_topic(bootstrap, topic, partitions=1)
        producer = Producer({"bootstrap.servers": bootstrap})
        for v in values:
            producer.produce(topic, v, key=b"k", partition=0)
        assert producer.flush(30) == 0
        return {"topic": topic, "table": f"attack_consume.t_{uuid.uuid4().hex[:8]}"}

    return setup


def _consume(stack: Stack, _tmp: Path, ctx: dict) -> list[str]:
    return ["consume", "--bootstrap", stack.endpoints["kafka_bootstrap"], "--topic", ctx["topic"],
            "--group", f"g-{uuid.uuid4().hex[:8]}", "--dsn", stack.endpoints["postgres_socket_dsn"],
            "--table", ctx["table"], "--org-id", ORG, "--until-caught-up", "--json", "--metrics-interval", "0"]


def _conflict_dead_lettered(stack: Stack, _tmp: Path, ctx: dict, run: Run) -> None:
    import psycopg
    from psycopg import sql

    out = json.loads(run.stdout)
    assert out["run"] == {"consumed": 3, "applied": 1, "duplicates": 1, "dead_letters": 1, "conflicts": 1}, out
    assert out["totals"] == out["run"]
    schema, name = ctx["table"].split(".")
    with psycopg.connect(stack.endpoints["postgres_socket_dsn"]) as conn:
        def rows(query: str, suffix: str = "") -> list[tuple]:
            return conn.execute(sql.SQL(query).format(sql.Identifier(schema, name + suffix))).fetchall()

        assert rows("SELECT amount FROM {}") == [(Decimal("100.00"),)]  # the first payload stays
        assert rows("SELECT clv, event_count FROM {}", "_aggregates") == [(Decimal("100.00"), 1)]
        (dl,) = rows("SELECT kafka_offset, reason, detail, value FROM {}", "_dead_letters")
        assert dl[:2] == (1, "conflict") and "5000.00" in dl[2] and b'"5000.00"' in bytes(dl[3])


ATTACKS = [
    Attack(
        item="16.3", name="conflicting-payload-dead-lettered",
        payload="two messages with the same org, record, type and time, amounts 100.00 and 5000.00 "
                "(then 100.0: the first amount spelled otherwise, a true duplicate)",
        command=_consume, exit=0, after=_conflict_dead_lettered,
        setup=_topic_with(*_events("100.00", "5000.00", "100.0"))),
]
