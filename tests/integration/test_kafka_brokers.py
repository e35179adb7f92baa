"""The local Kafka brokers (Apache Kafka 4.x and Tansu) behind one interface, against real processes.

Tests parametrized with ``kafka_broker`` check behaviour the product relies on, which both brokers
must get right; Apache-only tests cover what Tansu lacks (see engine/local/kafka.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from engine.core.errors import ServiceUnreachable, UsageError
from engine.local.kafka import (
    FAST_REJOIN_CONSUMER_CONFIG,
    ApacheKafka,
    TansuBroker,
    choose_backend,
    create_topic,
    delete_topic,
    fast_rejoin_consumer_config,
    get_broker,
    kafka_jars_cached,
    kafka_version,
    topic_exists,
)
from engine.local.state import pid_alive
from tests.kafka_fixtures import BrokerHandle, TopicFactory, produce_and_wait, read_to_eof, require_java

BASE_TS = 1_785_542_400_000  # 2026-08-01T00:00:00Z, older than the default 7-day retention


def _group_consumer(bootstrap: str, group: str) -> Consumer:
    conf = {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
            "enable.auto.commit": False, **FAST_REJOIN_CONSUMER_CONFIG}
    return Consumer(conf)


def _poll_n(consumer: Consumer, n: int, timeout: float = 30.0) -> list[Message]:
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, f"got {len(out)} of {n} messages"
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        out.append(msg)
    return out


# ---------------------------------------------------------------------------------------------
# behaviour both brokers provide


def test_produce_consume_keys_values_headers_timestamps(kafka_broker: BrokerHandle,
                                                        kafka_topic: TopicFactory) -> None:
    topic = kafka_topic(kafka_broker, partitions=3)
    records = [
        {"key": f"k{i}".encode(), "value": f"v{i}".encode(), "partition": i % 3, "timestamp": BASE_TS + i,
         "headers": [("org-id", b"00D"), ("sequence", str(i).encode()), ("sequence", b"dup")]}
        for i in range(30)
    ]
    produce_and_wait(kafka_broker.bootstrap, topic, records)
    messages, eof = read_to_eof(kafka_broker.bootstrap, topic, range(3))
    assert eof == {0: 10, 1: 10, 2: 10}
    by_value = {m.value(): m for m in messages}
    assert len(by_value) == 30
    for i in range(30):
        m = by_value[f"v{i}".encode()]
        assert m.key() == f"k{i}".encode()
        assert m.partition() == i % 3
        assert m.offset() == i // 3  # one offset per message, in produce order per partition
        assert m.timestamp() == (1, BASE_TS + i)  # CreateTime, as the producer set it
        assert m.headers() == [("org-id", b"00D"), ("sequence", str(i).encode()), ("sequence", b"dup")]


def test_consumer_group_resumes_from_committed_offset(kafka_broker: BrokerHandle,
                                                      kafka_topic: TopicFactory) -> None:
    topic = kafka_topic(kafka_broker, partitions=1)
    produce_and_wait(kafka_broker.bootstrap, topic, [{"value": str(i).encode(), "partition": 0} for i in range(10)])
    group = f"g-{topic}"
    first = _group_consumer(kafka_broker.bootstrap, group)
    first.subscribe([topic])
    got = _poll_n(first, 4)
    first.commit(message=got[-1], asynchronous=False)  # commits offset 4: the next one to read
    assert first.committed([TopicPartition(topic, 0)], timeout=10)[0].offset == 4
    first.close()

    second = _group_consumer(kafka_broker.bootstrap, group)
    second.subscribe([topic])
    try:
        rest = _poll_n(second, 6)
        assert [m.offset() for m in rest] == list(range(4, 10))
        assert [m.value() for m in rest] == [str(i).encode() for i in range(4, 10)]
    finally:
        second.close()


def test_partition_eof_gives_the_true_end(kafka_broker: BrokerHandle, kafka_topic: TopicFactory) -> None:
    topic = kafka_topic(kafka_broker, partitions=2)
    assert read_to_eof(kafka_broker.bootstrap, topic, range(2))[1] == {0: 0, 1: 0}
    # two separate batches: on Tansu the high watermark would say 8, the EOF says 12
    for _ in range(2):
        produce_and_wait(kafka_broker.bootstrap, topic, [{"value": b"x", "partition": 0}] * 6)
    messages, eof = read_to_eof(kafka_broker.bootstrap, topic, range(2))
    assert eof == {0: 12, 1: 0}
    assert [m.offset() for m in messages] == list(range(12))


def test_create_topic_is_idempotent_and_delete_empties(kafka_broker: BrokerHandle, kafka_topic: TopicFactory) -> None:
    bs = kafka_broker.bootstrap
    name = kafka_topic(kafka_broker, partitions=3)
    assert topic_exists(bs, name)
    assert create_topic(bs, name, partitions=3) == 3  # exists: fine
    assert create_topic(bs, name, partitions=5) == 3  # an existing topic is left as it is
    produce_and_wait(bs, name, [{"value": b"x", "partition": 1}])

    missing = name + "-missing"
    assert not topic_exists(bs, missing)
    assert not topic_exists(bs, missing)  # asking did not create it (Tansu would on a named request)
    assert delete_topic(bs, missing) is False

    assert delete_topic(bs, name) is True
    assert not topic_exists(bs, name)
    assert create_topic(bs, name, partitions=2, config={"retention.ms": "-1"}) == 2
    assert read_to_eof(bs, name, range(2))[1] == {0: 0, 1: 0}  # a new, empty topic


def test_start_twice_reuses_the_running_broker(kafka_broker: BrokerHandle) -> None:
    before = kafka_broker.broker.status()
    assert before is not None and before["backend"] == kafka_broker.backend
    again = get_broker(kafka_broker.backend, kafka_broker.broker.state_dir)
    st = again.start(timeout=30)
    assert st["pid"] == before["pid"]  # the running broker was reused, not started again
    assert again.bootstrap == kafka_broker.bootstrap
    assert again.backend == kafka_broker.backend
    assert Path(again.pid_file).read_text().strip() == str(before["pid"])


# ---------------------------------------------------------------------------------------------
# Apache Kafka only


def test_offsets_for_times_is_exact_on_apache(apache_kafka: BrokerHandle, kafka_topic: TopicFactory) -> None:
    bs = apache_kafka.bootstrap
    topic = kafka_topic(apache_kafka, partitions=1)
    produce_and_wait(bs, topic, [{"value": str(i).encode(), "partition": 0, "timestamp": BASE_TS + 1000 * i}
                                 for i in range(10)])
    consumer = Consumer({"bootstrap.servers": bs, "group.id": f"oft-{topic}"})
    try:
        def at(ts: int) -> int:
            # one TopicPartition per call: librdkafka mis-answers a partition named twice
            return consumer.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=10)[0].offset

        assert at(BASE_TS - 1) == 0
        assert at(BASE_TS + 5000) == 5
        assert at(BASE_TS + 4500) == 5  # first offset whose timestamp is >= the asked time
        assert at(BASE_TS + 9000) == 9
        assert at(BASE_TS + 10_000) == -1  # past the end: OFFSET_END
        assert consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, 10)
    finally:
        consumer.close()


def test_unknown_topic_is_reported_by_apache(apache_kafka: BrokerHandle) -> None:
    name = f"never-created-{time.monotonic_ns()}"
    md = AdminClient({"bootstrap.servers": apache_kafka.bootstrap}).list_topics(topic=name, timeout=10)
    err = md.topics[name].error
    assert err is not None and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    assert not topic_exists(apache_kafka.bootstrap, name)  # auto.create.topics.enable=false


def test_choose_backend() -> None:
    assert choose_backend("tansu") == "tansu"
    with pytest.raises(UsageError):
        choose_backend("redpanda")
    with pytest.raises(UsageError):
        get_broker("redpanda")
    require_java()
    assert choose_backend("apache") == "apache"
    if kafka_jars_cached():
        assert choose_backend(None) == "apache"
    assert kafka_version().startswith("4.")


@pytest.mark.slow  # ~22 s (a broker restart); the default suite keeps under its 10-minute budget
def test_apache_restart_keeps_topics_and_stop_leaves_no_process(
        apache_kafka: BrokerHandle, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A broker of its own (the session one stays up): start, reuse, stop, restart, stop."""
    broker = ApacheKafka(tmp_path_factory.mktemp("kafka-restart"))
    first = broker.start(timeout=90)
    try:
        bs = broker.bootstrap
        create_topic(bs, "kept", partitions=2)
        produce_and_wait(bs, "kept", [{"value": b"persisted", "partition": 1, "timestamp": BASE_TS}])
        # a consumer group's committed offset survives too
        c = _group_consumer(bs, "kept-group")
        c.subscribe(["kept"])
        c.commit(message=_poll_n(c, 1)[0], asynchronous=False)  # joined: the coordinator is loaded
        c.close()

        assert broker.stop() is True
        assert not pid_alive(first["pid"])
        assert broker.status() is None
        assert not broker.pid_file.exists()
        with pytest.raises(UsageError):
            _ = broker.bootstrap
        assert broker.stop() is False  # stopping twice is harmless

        second = broker.start(timeout=90)
        assert second["pid"] != first["pid"]
        assert second["ports"] == first["ports"]  # same endpoints for clients configured earlier
        messages, eof = read_to_eof(broker.bootstrap, "kept", range(2))
        assert eof == {0: 0, 1: 1}
        assert [(m.value(), m.timestamp()) for m in messages] == [(b"persisted", (1, BASE_TS))]
        c = _group_consumer(broker.bootstrap, "kept-group")
        assert c.committed([TopicPartition("kept", 1)], timeout=10)[0].offset == 1
        c.close()
    finally:
        broker.stop()
    assert not pid_alive(second["pid"])


# ---------------------------------------------------------------------------------------------
# Tansu lifecycle (cheap, so it gets brokers of its own)


@pytest.mark.tansu
def test_tansu_runs_detached_and_forgets_topics_on_restart(tmp_path: Path) -> None:
    """Started by a process that exits, the broker keeps running until stop(); memory storage."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-m", "engine.local.kafka", "start", "--backend", "tansu",
                          "--state-dir", str(tmp_path)], capture_output=True, text=True, timeout=60, env=env,
                         check=True)
    assert '"backend": "tansu"' in out.stdout
    broker = TansuBroker(tmp_path)
    st = broker.status()
    assert st is not None and pid_alive(st["pid"])
    try:
        create_topic(broker.bootstrap, "volatile", partitions=1)
        assert broker.start()["pid"] == st["pid"]
        assert broker.stop() is True
        assert not pid_alive(st["pid"])
        broker.start(timeout=30)
        assert not topic_exists(broker.bootstrap, "volatile")
    finally:
        broker.stop()
    assert broker.status() is None


@pytest.mark.tansu
def test_start_failure_reports_the_broker_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "fake-tansu"
    fake.write_text("#!/bin/sh\necho 'fatal: cannot open the storage engine' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CALF_TANSU_BIN", str(fake))
    broker = TansuBroker(tmp_path / "state")
    with pytest.raises(ServiceUnreachable, match="cannot open the storage engine"):
        broker.start(timeout=10)
    assert broker.status() is None


def test_fast_rejoin_config() -> None:
    cfg = fast_rejoin_consumer_config("worker-1")
    assert cfg["group.instance.id"] == "worker-1"
    assert cfg["session.timeout.ms"] == 6000
    assert "group.instance.id" not in FAST_REJOIN_CONSUMER_CONFIG
    assert "group.instance.id" not in fast_rejoin_consumer_config()
