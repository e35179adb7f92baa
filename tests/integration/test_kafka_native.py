"""The native scan loop (C, librdkafka into Arrow buffers) against the pure-Python loop on the same
topics of a real broker: same frame, row for row and column for column, whatever the messages hold
(tombstones, bad JSON, values spanning lines, empty values, null keys, repeated or missing headers),
for every kind of window, across chunk boundaries; and its errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import polars as pl
import pytest
from confluent_kafka import Producer

from engine.connectors.kafka import native as kn
from engine.connectors.kafka import scan as ks
from engine.core import forensics
from engine.core.errors import ServiceUnreachable, UsageError
from tests import prereqs
from tests.kafka_fixtures import BrokerHandle, TopicFactory

ORG = "00D8d00000RECONEA5"


@pytest.fixture(autouse=True)
def _needs_native() -> None:
    prereqs.require_native_scan()


def _event(i: int, **over: object) -> bytes:
    ev = {"org_id": ORG, "account_id": f"0015g{i:013d}", "event_type": "purchase",
          "event_ts": f"2026-08-01T10:{i // 60 % 60:02d}:{i % 60:02d}.000Z", "amount": f"{i}.25", **over}
    return json.dumps(ev).encode()


def _hostile(bootstrap: str, topic: str) -> int:
    """Every kind of message the scan must survive, spread over partitions 0 and 1 (2 stays empty);
    returns the message count."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "compression.type": "lz4"})
    n = 0
    for i in range(40):
        part = i % 2
        hs: list[tuple[str, bytes | None]] | None = [("org-id", ORG.encode()), ("producer-id", b"7"),
                                                     ("sequence", str(i).encode())]
        value: bytes | None = _event(i)
        key: bytes | None = f"k{i}".encode()
        if i % 7 == 3:
            value = None  # tombstone
        elif i % 11 == 5:
            value = b"{not json"
        elif i % 13 == 6:
            value = json.dumps({"org_id": ORG, "account_id": f"x{i}", "amount": 1}, indent=1).encode()  # spans lines
        elif i == 18:
            value = b""  # empty: a value, not a tombstone
        elif i == 20:
            value = _event(i, amount=None, extra={"nested": [1, 2]})
        if i % 5 == 1:
            key = None
        if i % 6 == 2:
            hs = None
        elif i % 6 == 4:
            hs = [("sequence", b"99"), ("producer-id", b"8"), ("sequence", str(i).encode()), ("org-id", None)]
        p.produce(topic, key=key, value=value, partition=part, headers=hs, timestamp=1_785_000_000_000 + i * 1000)
        n += 1
    assert p.flush(30) == 0
    return n


@pytest.fixture
def both_loops(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Call ``scan`` through either loop: ``run(native: bool, *args, **kwargs)``."""

    def run(native: bool, *args: object, **kwargs: object) -> ks.Scan:
        with monkeypatch.context() as m:
            m.setenv(kn.ENV, "1" if native else "0")
            return ks.scan(*args, **kwargs)  # type: ignore[arg-type]

    yield run


def _same(a: ks.Scan, b: ks.Scan) -> None:
    assert a.frame.schema == b.frame.schema
    assert a.frame.equals(b.frame), (a.frame, b.frame)
    assert a.partitions == b.partitions
    assert a.samples == b.samples


def test_native_frame_equals_python_frame_on_hostile_messages(kafka_broker: BrokerHandle, kafka_topic: TopicFactory,
                                                              both_loops, monkeypatch: pytest.MonkeyPatch) -> None:
    topic = kafka_topic(kafka_broker, partitions=3)
    n = _hostile(kafka_broker.bootstrap, topic)
    py = both_loops(False, kafka_broker.bootstrap, topic, workers=1)
    nat = both_loops(True, kafka_broker.bootstrap, topic, workers=1)
    assert py.frame.height == n
    _same(nat, py)
    f = nat.frame
    assert f.group_by("status").len().sort("status").rows() == [("ok", 30), ("tombstone", 6), ("unparsable", 4)]
    assert f.filter(pl.col("offset") == 8, pl.col("partition") == 0)["producer_id"].to_list() == ["8"]
    assert f["key"].null_count() == 8
    # chunks of 3 messages: tombstones, bad values and lines spanning values fall across chunk edges
    monkeypatch.setattr(kn, "CHUNK_ROWS", 3)
    _same(both_loops(True, kafka_broker.bootstrap, topic, workers=1), py)
    a1, a2 = forensics.audit(nat, org_id=ORG).summary(), forensics.audit(py, org_id=ORG).summary()
    a1.pop("elapsed_s"), a2.pop("elapsed_s")
    assert a1 == a2


def test_native_windows_equal_python_windows(kafka_broker: BrokerHandle, kafka_topic: TopicFactory, both_loops) -> None:
    topic = kafka_topic(kafka_broker, partitions=3)
    _hostile(kafka_broker.bootstrap, topic)
    bs = kafka_broker.bootstrap
    windows = [
        ks.Window(offsets={0: (2, 9), 1: (0, 0)}),
        ks.Window(offsets={1: (5, 400)}),  # past the end: read to EOF
        ks.Window(start=datetime.fromtimestamp(1_785_000_010, UTC), end=datetime.fromtimestamp(1_785_000_030, UTC)),
        ks.Window(start=datetime.fromtimestamp(1_785_000_010, UTC), lookback_s=5),
        ks.Window(start=datetime(2001, 1, 1, tzinfo=UTC), end=datetime(2001, 1, 2, tzinfo=UTC)),  # empty
    ]
    for w in windows:
        py, nat = both_loops(False, bs, topic, w, workers=1), both_loops(True, bs, topic, w, workers=1)
        _same(nat, py)
    assert both_loops(True, bs, topic, windows[0], workers=1).frame.height == 9
    if kafka_broker.backend == "apache":
        # a first offset past the partition's end: Apache answers out-of-range and the client restarts
        # at the beginning; none of those messages is in the window. (Tansu answers nothing at all:
        # the scan then waits for its deadline.)
        w = ks.Window(offsets={0: (500, 600), 1: (19, 19)})
        py, nat = both_loops(False, bs, topic, w, workers=1), both_loops(True, bs, topic, w, workers=1)
        _same(nat, py)
        assert nat.frame.select("partition", "offset").rows() == [(1, 19)]


def test_native_through_workers_equals_one_process(kafka_broker: BrokerHandle, kafka_topic: TopicFactory,
                                                   both_loops) -> None:
    topic = kafka_topic(kafka_broker, partitions=3)
    _hostile(kafka_broker.bootstrap, topic)
    one = both_loops(True, kafka_broker.bootstrap, topic, workers=1)
    many = both_loops(True, kafka_broker.bootstrap, topic, workers=3)
    assert many.frame.equals(one.frame.sort(["partition", "offset"]))


def test_native_reports_a_vanished_topic_and_a_silent_broker(apache_kafka: BrokerHandle, kafka_topic: TopicFactory,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kn.ENV, "1")
    topic = kafka_topic(apache_kafka, partitions=1)
    conf = ks._consumer_conf(apache_kafka.bootstrap, {})

    def parse(*_: object) -> None:
        return None

    # a partition the topic does not have: librdkafka says so, the scan says which topic
    with pytest.raises(UsageError, match="does not exist"):
        kn.read(apache_kafka.bootstrap, topic, conf, {7: -2}, {}, ks.HEADERS, 10, None, parse)
    # a broker that answers nothing: the deadline names the partitions still pending
    dead = ks._consumer_conf("127.0.0.1:9", {"reconnect.backoff.max.ms": 100, "log_level": 0})
    with pytest.raises(ServiceUnreachable, match=r"sent nothing for 1s while partitions \[0\]"):
        kn.read("127.0.0.1:9", topic, dead, {0: -2}, {}, ks.HEADERS, 1, None, parse)
    # a property librdkafka refuses: named, its value never shown
    with pytest.raises(UsageError, match="'no.such.property'") as exc:
        kn.read(apache_kafka.bootstrap, topic, {**conf, "no.such.property": "hunter2"}, {0: -2}, {}, ks.HEADERS, 10,
                None, parse)
    assert "hunter2" not in str(exc.value)


def test_native_equals_python_past_the_buffers_first_sizes(apache_kafka: BrokerHandle, kafka_topic: TopicFactory,
                                                          both_loops, monkeypatch: pytest.MonkeyPatch) -> None:
    """Enough messages, and values large enough, that every column buffer of a chunk grows several
    times (first sizes: 8,192 rows, 64 KiB of data) and a fill ends on its byte limit."""
    topic = kafka_topic(apache_kafka, partitions=2)
    p = Producer({"bootstrap.servers": apache_kafka.bootstrap, "linger.ms": 20, "compression.type": "lz4"})
    for i in range(30_000):
        value = _event(i) if i % 997 else _event(i, note="x" * 150_000)  # a few 150 KB values
        p.produce(topic, key=f"key-{i}".encode(), value=value, partition=i % 2,
                  headers=[("org-id", ORG.encode()), ("producer-id", b"7"), ("sequence", str(i // 2).encode())])
        if i % 5000 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    monkeypatch.setattr(kn, "CHUNK_BYTES", 1 << 20)  # several fills end on bytes, not rows
    py = both_loops(False, apache_kafka.bootstrap, topic, workers=1)
    nat = both_loops(True, apache_kafka.bootstrap, topic, workers=1)
    assert nat.frame.height == 30_000
    _same(nat, py)
    assert nat.frame["status"].unique().to_list() == ["ok"]


def test_the_native_loop_refuses_a_partition_id_it_cannot_index() -> None:
    """The C side keeps the same bound as the metadata check: partition INT32_MAX made
    max_part + 1 overflow in recon_scan_open; now the open fails with a line naming the id (no
    broker is contacted: opening only creates the consumer)."""
    with pytest.raises(ServiceUnreachable, match="partition id 2147483647 is outside"):
        kn.read("127.0.0.1:1", "t", {}, {2**31 - 1: -2}, {}, ("org-id", "producer-id", "sequence"), 1.0, None,
                lambda *a: a)
