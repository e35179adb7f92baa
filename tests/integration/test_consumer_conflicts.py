"""A conflicting event (same id, another payload) is a dead letter with reason ``conflict``, never a
silent duplicate; a true duplicate — the same amount, however it is spelled — stays a duplicate.

The sink is driven directly (hand-made Kafka messages, the embedded PostgreSQL, no broker): each
``_write`` is one batch transaction, so a second call meets the first one's rows through the
probe, a single call meets its own copies in the batch. The migration test starts from the tables
as the previous version of the consumer created them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import polars as pl
import psycopg
import pytest
from confluent_kafka import Message
from psycopg import sql

from engine.connectors.kafka import consumer as c
from engine.core.ids import event_id
from tests.pg_fixtures import PgHandle

ORG = "00D5g0000000001EAA"
ACC = "0015g0000000001AAA"
TS = "2026-08-01T10:00:00.000Z"
EID = event_id(ORG, ACC, "purchase", TS)


def _msg(amount: Any, offset: int, partition: int = 0, ts: str = TS) -> Message:
    ev = {"org_id": ORG, "account_id": ACC, "event_type": "purchase", "event_ts": ts, "amount": amount}
    return Message(topic="t", partition=partition, offset=offset, key=b"k", value=json.dumps(ev).encode(),
                   headers=[("org-id", ORG.encode()), ("producer-id", b"1"), ("sequence", str(offset).encode())],
                   timestamp=(1, 1_785_578_400_000 + offset), error=None)


class _Topic:
    """One partition's consumer position and the sink that writes its batches."""

    def __init__(self, pg: PgHandle, table: str) -> None:
        settings = c.ConsumerSettings(bootstrap="unused:9092", topic="t", group="g", dsn=pg.info.socket_dsn,
                                      table=c.parse_table(table))
        self.table = table
        self.pg = pg
        self.sink = c.Sink(settings, lambda _s: True)
        self.sink.connect()
        self.sink.ensure_schema()
        self.pos: dict[int, int | None] = self.sink.prepare_partitions([0])

    def write(self, *msgs: Message) -> c.Counters:
        batch = c.transform(list(msgs), c.FieldNames(), ORG, self.pos)
        per, fenced = self.sink.write(batch)
        assert not fenced
        self.pos.update(batch.next_offset)
        total = c.Counters()
        for x in per.values():
            total.add(x)
        return total

    def rows(self, query: str, suffix: str = "") -> list[tuple[Any, ...]]:
        schema, name = self.table.split(".")
        with psycopg.connect(self.pg.info.socket_dsn) as conn:
            return conn.execute(sql.SQL(query).format(sql.Identifier(schema, name + suffix))).fetchall()

    def events(self) -> list[tuple[str, str]]:
        return [(str(e), str(a)) for e, a in self.rows("SELECT event_id, amount FROM {} ORDER BY event_id")]

    def dead(self) -> list[tuple[int, str]]:
        return self.rows("SELECT kafka_offset, reason FROM {} ORDER BY kafka_offset", "_dead_letters")


@pytest.fixture
def topic(embedded_pg: PgHandle) -> Iterator[_Topic]:
    t = _Topic(embedded_pg, f"consume_conflict.t_{uuid.uuid4().hex[:8]}")
    yield t
    t.sink.close()


def test_a_conflicting_payload_is_dead_lettered_not_a_duplicate(topic: _Topic) -> None:
    """The review's case: 100.00 then 5000.00 for one id gave one row and a duplicate, no dead letter."""
    assert topic.write(_msg("100.00", 0)).applied == 1
    n = topic.write(_msg("5000.00", 1))
    assert topic.dead() == [(1, "conflict")]
    assert (n.consumed, n.applied, n.duplicates, n.dead_letters, n.conflicts) == (1, 0, 0, 1, 1)
    assert topic.events() == [(EID, "100.00")]  # the first payload stays; the aggregates never see 5000
    assert topic.rows("SELECT clv, event_count FROM {}", "_aggregates") == [(Decimal("100.00"), 1)]
    (detail,) = topic.rows("SELECT detail FROM {}", "_dead_letters")[0]
    assert EID in detail and "100.00" in detail and "5000.00" in detail
    (p,) = topic.sink.partition_rows()
    assert (p["duplicates"], p["dead_letters"], p["conflicts"]) == (0, 1, 1)


def test_a_conflict_within_one_batch(topic: _Topic) -> None:
    n = topic.write(_msg("100.00", 0), _msg("5000.00", 1))
    assert (n.applied, n.duplicates, n.dead_letters, n.conflicts) == (1, 0, 1, 1)
    assert topic.events() == [(EID, "100.00")] and topic.dead() == [(1, "conflict")]


def test_the_same_amount_spelled_otherwise_is_a_duplicate(topic: _Topic) -> None:
    """100.0, 100.00, +100 and 100 are one payload (numerically equal), as in forensics; in the
    batch and against the stored row alike."""
    n = topic.write(_msg("100.00", 0), _msg("100.0", 1), _msg(100, 2))
    assert (n.applied, n.duplicates, n.dead_letters, n.conflicts) == (1, 2, 0, 0)
    n = topic.write(_msg("100.00", 3), _msg("+100.000", 4), _msg("0100", 5))
    assert (n.applied, n.duplicates, n.dead_letters, n.conflicts) == (0, 3, 0, 0)
    assert topic.dead() == [] and topic.events() == [(EID, "100.00")]


def test_the_stored_event_is_what_later_copies_are_compared_with(topic: _Topic) -> None:
    """Stored 100.00; a batch with 5000.00 then 100.0: the first is the conflict, the second a
    duplicate of the stored event (not a conflict with the batch's first copy). A redelivery of the
    conflicting message (same offset) changes nothing: a duplicate delivery."""
    topic.write(_msg("100.00", 0))
    other = _msg("1.00", 3, ts="2026-08-01T11:00:00.000Z")
    n = topic.write(_msg("5000.00", 1), _msg("100.0", 2), other)
    assert (n.applied, n.duplicates, n.dead_letters, n.conflicts) == (1, 1, 1, 1)
    assert topic.dead() == [(1, "conflict")]
    topic.sink.reset_offsets()
    topic.pos = topic.sink.prepare_partitions([0])
    n = topic.write(_msg("100.00", 0), _msg("5000.00", 1), _msg("100.0", 2), other)
    assert (n.applied, n.duplicates, n.dead_letters, n.conflicts) == (0, 4, 0, 0)
    (p,) = topic.sink.partition_rows()
    assert (p["consumed"], p["applied"], p["duplicates"], p["dead_letters"], p["conflicts"]) == (8, 2, 5, 1, 1)


@pytest.fixture(params=["v", "s"], ids=["virtual", "stored"])
def digest_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The digest column as PostgreSQL 18 makes it (virtual), and as older servers do (stored)."""
    from engine.connectors.kafka.consumer import sink

    if request.param == "s":
        monkeypatch.setattr(sink, "_VIRTUAL_DIGEST_SINCE", 10**9)
    return str(request.param)


def _generated(t: _Topic) -> str:
    schema, name = t.table.split(".")
    with psycopg.connect(t.pg.info.socket_dsn) as conn:
        row = conn.execute("SELECT attgenerated FROM pg_attribute WHERE attrelid = %s::regclass "
                           "AND attname = 'payload_digest'", (f'"{schema}"."{name}"',)).fetchone()
    assert row is not None
    return str(row[0])


def test_the_payload_digest_is_part_of_each_event(embedded_pg: PgHandle, digest_kind: str) -> None:
    """Each event row has the digest of its canonical amount: equal for every spelling."""
    t = _Topic(embedded_pg, f"consume_conflict.d_{uuid.uuid4().hex[:8]}")
    try:
        assert _generated(t) == digest_kind
        t.write(_msg("100.50", 0), _msg("7", 1, ts="2026-08-01T11:00:00.000Z"))
        got = t.rows("SELECT amount::text, payload_digest = sha256(convert_to(trim_scale(amount)::text, 'UTF8')), "
                     "payload_digest = sha256('100.5'::bytea) FROM {} ORDER BY event_ts")
        assert got == [("100.50", True, True), ("7", True, False)]
        assert t.write(_msg("100.5", 2), _msg("70", 3, ts="2026-08-01T11:00:00.000Z")).conflicts == 1
    finally:
        t.sink.close()


def test_canonical_amount_text_is_postgresql_trim_scale(embedded_pg: PgHandle) -> None:
    """The batch compares its own copies by canonical text; the stored rows by PostgreSQL's numeric:
    both must be one definition."""
    from engine.core.decimals import canonical_text

    amounts = ["100", "100.0", "100.00", "+100", "0100.500", "-0", "-0.000", "0", "000.0100", "-12.340", "+0.5",
               "5", "-5.000001", "1" * 38 + "." + "0" * 37 + "1", "10", "1000.000", "-100.00"]
    mine = pl.Series(amounts).to_frame("a").select(canonical_text(pl.col("a"))).to_series().to_list()
    with psycopg.connect(embedded_pg.info.socket_dsn) as conn:
        pg = [r[0] for r in conn.execute("SELECT trim_scale(a::numeric)::text FROM unnest(%s::text[]) "
                                         "WITH ORDINALITY AS x(a, i) ORDER BY i", (amounts,)).fetchall()]
    assert mine == pg


# ---------------------------------------------------------------------------------------------
# migration from the previous version's tables

#: the tables exactly as the consumer before the payload digest created them
_OLD_DDL = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE {events} (
    event_id uuid PRIMARY KEY, org_id text COLLATE "C" NOT NULL, record_id text COLLATE "C" NOT NULL,
    event_type text NOT NULL, event_ts timestamptz NOT NULL, amount numeric NOT NULL, lineage jsonb NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE {aggregates} (
    record_id text COLLATE "C" PRIMARY KEY, clv numeric NOT NULL, event_count bigint NOT NULL,
    last_event_ts timestamptz NOT NULL, updated_at timestamptz NOT NULL) WITH (fillfactor = 70);
CREATE TABLE {dead_letters} (
    kafka_topic text NOT NULL, kafka_partition integer NOT NULL, kafka_offset bigint NOT NULL,
    kafka_timestamp timestamptz, kafka_timestamp_type text NOT NULL, key bytea, value bytea, headers jsonb NOT NULL,
    reason text NOT NULL, detail text NOT NULL, dead_lettered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kafka_topic, kafka_partition, kafka_offset));
CREATE TABLE {offsets} (
    kafka_topic text NOT NULL, kafka_partition integer NOT NULL, next_offset bigint CHECK (next_offset >= 0),
    consumed bigint NOT NULL DEFAULT 0, applied bigint NOT NULL DEFAULT 0, duplicates bigint NOT NULL DEFAULT 0,
    dead_letters bigint NOT NULL DEFAULT 0, group_id text, updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kafka_topic, kafka_partition),
    CONSTRAINT every_offset_accounted_for CHECK (consumed = applied + duplicates + dead_letters));
INSERT INTO {events} VALUES ({eid}, {org}, {acc}, 'purchase', {ts}, 100.00, '{{}}');
INSERT INTO {aggregates} VALUES ({acc}, 100.00, 1, {ts}, now());
INSERT INTO {offsets} (kafka_topic, kafka_partition, next_offset, consumed, applied, duplicates)
    VALUES ('t', 0, 2, 2, 1, 1);
"""


def test_an_events_table_of_the_previous_version_is_migrated(embedded_pg: PgHandle, digest_kind: str) -> None:
    """The events table gains the digest column and the offsets table the conflicts counter, the
    stored rows and counters intact; a row stored before gets the digest of its stored amount, so
    it compares by its stored fields."""
    table = f"consume_conflict.old_{uuid.uuid4().hex[:8]}"
    schema, name = table.split(".")
    ddl = sql.SQL(_OLD_DDL).format(schema=sql.Identifier(schema), events=sql.Identifier(schema, name),
                                   **{s: sql.Identifier(schema, f"{name}_{s}")
                                      for s in ("aggregates", "dead_letters", "offsets")},
                                   eid=sql.Literal(EID), org=sql.Literal(ORG), acc=sql.Literal(ACC), ts=sql.Literal(TS))
    with psycopg.connect(embedded_pg.info.socket_dsn) as conn:
        conn.execute(ddl)
    t = _Topic(embedded_pg, table)
    try:
        assert t.pos == {0: 2} and _generated(t) == digest_kind
        (p,) = t.sink.partition_rows()
        assert (p["consumed"], p["applied"], p["duplicates"], p["dead_letters"], p["conflicts"]) == (2, 1, 1, 0, 0)
        n = t.write(_msg("100.0", 2), _msg("5000.00", 3))
        assert (n.applied, n.duplicates, n.dead_letters, n.conflicts) == (0, 1, 1, 1)
        assert t.events() == [(EID, "100.00")] and t.dead() == [(3, "conflict")]
        assert t.rows("SELECT payload_digest = sha256('100'::bytea) FROM {}") == [(True,)]
        t.sink.ensure_schema()  # a second start finds nothing to migrate
    finally:
        t.sink.close()
