"""Fixtures for real Kafka brokers: one Apache Kafka and one Tansu per test session.

Register with ``pytest_plugins = ["tests.kafka_fixtures"]``. Each broker runs in its own
temporary state directory and is stopped when the session ends, so tests never touch ``./.recon``.

* ``apache_kafka`` / ``tansu_kafka``: session-scoped :class:`BrokerHandle` objects.
* ``kafka_broker``: parametrized over both (the Tansu case carries the ``tansu`` marker), for
  tests of behaviour the product relies on and that both brokers must get right.
* ``kafka_topic``: a factory ``kafka_topic(handle, partitions=3, config=None) -> name`` making
  uniquely named topics, so tests sharing a broker never see each other's messages.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition

from engine.local.kafka import (
    ApacheKafka,
    KafkaBroker,
    TansuBroker,
    create_topic,
    ensure_kafka_jars,
)
from tests import prereqs


@dataclass
class BrokerHandle:
    """A running broker for tests: ``bootstrap`` is what clients need."""

    broker: KafkaBroker

    @property
    def backend(self) -> str:
        return self.broker.backend

    @property
    def bootstrap(self) -> str:
        # read live: a test that restarts the broker may have moved it to other ports
        return self.broker.bootstrap

    @property
    def pid(self) -> int:
        st = self.broker.status()
        assert st is not None, f"{self.backend} broker is not running"
        return int(st["pid"])


def require_java() -> None:
    """Skip (visibly; a failure under CI=true) where Apache Kafka cannot run; Tansu tests still run there."""
    prereqs.require_java()


@pytest.fixture(scope="session")
def apache_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerHandle]:
    require_java()
    ensure_kafka_jars()  # a fetch failure is an error, not a skip: CI must notice it
    broker = ApacheKafka(tmp_path_factory.mktemp("kafka-apache"))
    broker.start(timeout=90)
    try:
        yield BrokerHandle(broker)
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def tansu_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerHandle]:
    broker = TansuBroker(tmp_path_factory.mktemp("kafka-tansu"))
    broker.start(timeout=30)
    try:
        yield BrokerHandle(broker)
    finally:
        broker.stop()


@pytest.fixture(params=["apache", pytest.param("tansu", marks=pytest.mark.tansu)])
def kafka_broker(request: pytest.FixtureRequest) -> BrokerHandle:
    """Each test using this runs once per broker."""
    handle: BrokerHandle = request.getfixturevalue(f"{request.param}_kafka")
    return handle


TopicFactory = Callable[..., str]


@pytest.fixture
def kafka_topic(request: pytest.FixtureRequest) -> TopicFactory:
    """``kafka_topic(handle_or_bootstrap, partitions=3, config=None) -> topic name`` (new, unique)."""
    stem = re.sub(r"[^a-zA-Z0-9._-]+", "-", request.node.name)[:60].strip("-")

    def make(target: BrokerHandle | str, partitions: int = 3, config: Mapping[str, str] | None = None) -> str:
        bootstrap = target if isinstance(target, str) else target.bootstrap
        name = f"t-{stem}-{uuid.uuid4().hex[:8]}"
        create_topic(bootstrap, name, partitions=partitions, config=config)
        return name

    return make



# ---------------------------------------------------------------------------------------------
# client helpers shared by the Kafka tests


def read_to_eof(
    bootstrap: str,
    topic: str,
    partitions: list[int] | range,
    extra: Mapping[str, object] | None = None,
    timeout: float = 30.0,
) -> tuple[list[Message], dict[int, int]]:
    """Read the given partitions from offset 0 until each reports partition EOF.

    Returns the messages in arrival order and ``{partition: offset reported by the EOF event}``.
    This is how product code must find a partition's end (Tansu's watermarks are wrong).
    """
    conf: dict[str, object] = {
        "bootstrap.servers": bootstrap,
        "group.id": f"reader-{uuid.uuid4().hex[:8]}",
        "enable.partition.eof": True,
        "enable.auto.commit": False,
        # an empty fetch waits this long before the broker answers: it is the EOF latency
        "fetch.wait.max.ms": 50,
    }
    conf.update(extra or {})
    consumer = Consumer(conf)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    messages: list[Message] = []
    eof: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(eof) < len(partitions):
            assert time.monotonic() < deadline, f"no EOF on {set(partitions) - set(eof)} of {topic}"
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                assert err.code() == KafkaError._PARTITION_EOF, err
                eof[msg.partition()] = msg.offset()
                continue
            eof.pop(msg.partition(), None)
            messages.append(msg)
    finally:
        consumer.close()
    return messages, eof


def produce_and_wait(bootstrap: str, topic: str, records: list[dict[str, object]],
                     extra: Mapping[str, object] | None = None) -> list[Message]:
    """Produce ``records`` (kwargs of Producer.produce) and return the delivery reports, in order."""
    conf: dict[str, object] = {"bootstrap.servers": bootstrap}
    conf.update(extra or {})
    producer = Producer(conf)
    delivered: list[Message] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered.append(msg)

    for rec in records:
        producer.produce(topic, on_delivery=on_delivery, **rec)
    assert producer.flush(30) == 0, "undelivered messages"
    assert not errors, errors
    return delivered


__all__ = ["BrokerHandle", "TopicFactory", "produce_and_wait", "read_to_eof", "require_java"]
