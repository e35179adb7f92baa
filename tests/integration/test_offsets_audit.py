"""`recon kafka-audit --group` on real brokers: a rewind made with the AdminClient, a rebalance of two
classic consumers, a KIP-848 group, the audit leaving the group as it found it, and Tansu (no
``__consumer_offsets``) refused with one line."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from engine import config as config_mod
from engine.app import audit as audit_app
from engine.connectors.kafka.offsets_topic import read_group
from engine.core import group_audit, offsets_log
from tests.kafka_fixtures import BrokerHandle, TopicFactory, read_to_eof
from tests.stack_fixtures import recon

PER_PARTITION = 60


def _fill(bootstrap: str, topic: str, partitions: int = 2) -> None:
    p = Producer({"bootstrap.servers": bootstrap})
    for i in range(PER_PARTITION * partitions):
        p.produce(topic, value=b"not-an-event-%d" % i, partition=i % partitions)
    assert p.flush(30) == 0


def _consumer(bootstrap: str, group: str, protocol: str = "classic") -> Consumer:
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                            "auto.offset.reset": "earliest", "group.protocol": protocol}
    if protocol == "classic":
        conf |= {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
    return Consumer(conf)


def _until(cond: Any, what: str, *consumers: Consumer, timeout: float = 60.0) -> None:
    """Poll the consumers (group protocol work happens in poll) until ``cond()`` holds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        for c in consumers:
            c.poll(0.1)


def _commit(c: Consumer, topic: str, offsets: dict[int, int]) -> None:
    """Commit explicit offsets, retried while the coordinator is still loading (a new broker)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            c.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
            return
        except Exception:
            assert time.monotonic() < deadline
            c.poll(0.2)


def _audit(bootstrap: str, topic: str, group: str) -> Any:
    return audit_app.run_group_audit(audit_app.AuditRequest(bootstrap=bootstrap, topic=topic, group=group),
                                     config_mod.load(None))


def _group_state(bootstrap: str, group: str) -> tuple[Any, ...]:
    """What the AdminClient says about the group, plus the group's own records in __consumer_offsets."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    offs = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result()
    desc = admin.describe_consumer_groups([group])[group].result()
    members = sorted((m.member_id, m.client_id, tuple(sorted((tp.topic, tp.partition)
                                                             for tp in m.assignment.topic_partitions)))
                     for m in desc.members)
    recs, _ = read_group(bootstrap, group)
    meta = [(lo, g.generation if g else None, len(g.members) if g else None) for lo, _, g in recs.metadata]
    return (sorted((tp.topic, tp.partition, tp.offset) for tp in offs.topic_partitions), str(desc.state),
            members, meta, recs.commits.to_pylist())


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def test_a_rewind_made_with_the_admin_client_is_reported(apache_kafka: BrokerHandle,
                                                         kafka_topic: TopicFactory) -> None:
    bs = apache_kafka.bootstrap
    topic = kafka_topic(apache_kafka, partitions=2)
    _fill(bs, topic)
    group = f"rewind-{uuid.uuid4().hex[:8]}"
    c = _consumer(bs, group)  # commits without joining (no subscribe): the group stays empty
    _commit(c, topic, {0: 100})
    c.close()
    before = int(time.time() * 1000)
    admin = AdminClient({"bootstrap.servers": bs})
    fut = admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 40)])])
    fut[group].result()
    after = int(time.time() * 1000)
    res = recon("kafka-audit", "--bootstrap", bs, "--topic", topic, "--group", group, "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["events"] == 0 and out["unparsable"] == 2 * PER_PARTITION  # the existing keys are unchanged
    [r] = out["rewinds"]
    assert (r["partition"], r["from_offset"], r["to_offset"], r["events_redelivered"]) == (0, 100, 40, 60)
    assert before <= _ms(r["committed_at"]) <= after
    assert out["group"] == group and out["rebalances"] == []
    assert list(out["history_coverage"]) == ["0"] and out["history_coverage"]["0"]["commits"] == 2
    assert out["offsets_records"]["unparsable"] == 0 and out["offsets_records"]["read"] >= 2
    assert out["offsets_records"]["partition"] == offsets_log.coordinator_partition(group, 50)


def test_a_rebalance_of_two_classic_consumers_and_the_audit_is_read_only(apache_kafka: BrokerHandle,
                                                                        kafka_topic: TopicFactory) -> None:
    bs = apache_kafka.bootstrap
    topic = kafka_topic(apache_kafka, partitions=2)
    _fill(bs, topic)
    group = f"rebalance-{uuid.uuid4().hex[:8]}"
    a = _consumer(bs, group)
    a.subscribe([topic])
    _until(lambda: len(a.assignment()) == 2, "a's assignment", a)
    _commit(a, topic, {0: 10, 1: 12})  # a goes on processing beyond these, then loses the partitions
    b = _consumer(bs, group)
    b.subscribe([topic])
    _until(lambda: len(b.assignment()) == 1 and len(a.assignment()) == 1, "the second member's join", a, b)
    a.close()
    _until(lambda: len(b.assignment()) == 2, "b taking both partitions", b)
    _commit(b, topic, {0: 50, 1: 45})
    try:
        state = _group_state(bs, group)
        res = recon("kafka-audit", "--bootstrap", bs, "--topic", topic, "--group", group)
        assert res.returncode == 0, res.stderr
        assert "rebalance: generation 1 -> 2" in res.stdout and "p0 10-50, p1 12-45" in res.stdout
        g = _audit(bs, topic, group).summary()
        assert _group_state(bs, group) == state  # offsets, members, generation, and no new record of the group
    finally:
        b.close()
    assert [(r["previous_generation"], r["generation"], len(r["members"])) for r in g["rebalances"]] == [
        (1, 2, 2), (2, 3, 1)]
    assert g["rebalances"][0]["uncommitted"] == [{"partition": 0, "from_offset": 10, "to_offset": 50},
                                                 {"partition": 1, "from_offset": 12, "to_offset": 45}]
    assert g["rebalances"][1]["uncommitted"] == [] and g["rewinds"] == []
    assert state[3][-1][1] == 3 and state[3][-1][2] == 1  # the group's last record: generation 3, one member


def test_a_kip848_group_is_skipped_not_unparsable_and_its_commits_decode(apache_kafka: BrokerHandle,
                                                                        kafka_topic: TopicFactory, tmp_path) -> None:
    bs = apache_kafka.bootstrap
    topic = kafka_topic(apache_kafka, partitions=2)
    _fill(bs, topic)
    group = f"kip848-{uuid.uuid4().hex[:8]}"
    c = _consumer(bs, group, protocol="consumer")
    c.subscribe([topic])
    try:
        _until(lambda: len(c.assignment()) == 2, "the KIP-848 assignment", c)
        _commit(c, topic, {0: 30, 1: 20})
        _commit(c, topic, {0: 5})
    finally:
        c.close()
    # the group named by [kafka] group in the config (-C), which is recon's key, not a librdkafka property
    cfg_file = tmp_path / "recon.toml"
    cfg_file.write_text(f'[kafka]\nbootstrap = "{bs}"\ntopic = "{topic}"\ngroup = "{group}"\n')
    cfg = config_mod.load(cfg_file)
    ga = audit_app.run_group_audit(audit_app.AuditRequest(), cfg)
    assert ga is not None
    g = ga.summary()
    assert g["group"] == group and audit_app.run_audit(audit_app.AuditRequest(), cfg).unparsable == 2 * PER_PARTITION
    assert g["offsets_records"]["unparsable"] == 0 and g["offsets_records"]["skipped_types"] >= 4
    assert [(r["partition"], r["from_offset"], r["to_offset"]) for r in g["rewinds"]] == [(0, 30, 5)]
    assert sorted(g["history_coverage"]) == ["0", "1"] and g["rebalances"] == []


@pytest.mark.tansu
def test_tansu_has_no_group_log_exit_2_one_line(tansu_kafka: BrokerHandle, kafka_topic: TopicFactory) -> None:
    topic = kafka_topic(tansu_kafka, partitions=1)
    res = recon("kafka-audit", "--bootstrap", tansu_kafka.bootstrap, "--topic", topic, "--group", "g", "--json")
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1 and "__consumer_offsets" in res.stderr
    assert "Apache Kafka" in res.stderr and "Traceback" not in res.stderr


def test_an_aborted_transactional_offset_commit_is_not_a_commit(apache_kafka: BrokerHandle,
                                                                kafka_topic: TopicFactory) -> None:
    bs = apache_kafka.bootstrap
    topic = kafka_topic(apache_kafka, partitions=1)
    group = f"txn-{uuid.uuid4().hex[:8]}"
    c = _consumer(bs, group)
    _commit(c, topic, {0: 100})
    p = Producer({"bootstrap.servers": bs, "transactional.id": f"recon-test-{group}"})
    p.init_transactions(60)
    p.begin_transaction()
    p.send_offsets_to_transaction([TopicPartition(topic, 0, 10)], c.consumer_group_metadata(), 60)
    p.abort_transaction(60)
    c.close()
    # the aborted commit of 10 is in the log: a read_uncommitted read of the partition decodes it
    msgs, _ = read_to_eof(bs, "__consumer_offsets", [offsets_log.coordinator_partition(group, 50)],
                          {"isolation.level": "read_uncommitted"})
    uncommitted = offsets_log.decode(pa.array([m.key() for m in msgs], pa.binary()),
                                     pa.array([m.value() for m in msgs], pa.binary()),
                                     np.array([m.offset() for m in msgs]), np.zeros(len(msgs), np.int64), group)
    assert uncommitted.commits["offset"].to_pylist() == [100, 10]
    g = _audit(bs, topic, group).summary()  # read_committed: no commit of 10, hence no rewind
    assert g["rewinds"] == [] and g["history_coverage"]["0"]["commits"] == 1


def test_compaction_leaves_only_the_surviving_commits_in_the_coverage(apache_kafka: BrokerHandle,
                                                                      kafka_topic: TopicFactory) -> None:
    """Fast compaction of __consumer_offsets on the session broker (restored afterwards): a rewind whose
    commits were compacted away is not reported, and the coverage starts at the surviving commit."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    bs = apache_kafka.bootstrap
    admin = AdminClient({"bootstrap.servers": bs})
    fast = [(ResourceType.TOPIC, "__consumer_offsets", {"segment.ms": "100", "min.cleanable.dirty.ratio": "0.01"}),
            (ResourceType.BROKER, "1", {"log.cleaner.backoff.ms": "200"})]

    def alter(op: AlterConfigOpType) -> None:
        for rtype, name, entries in fast:
            res = ConfigResource(rtype, name, incremental_configs=[
                ConfigEntry(k, v if op == AlterConfigOpType.SET else None, incremental_operation=op)
                for k, v in entries.items()])
            for f in admin.incremental_alter_configs([res]).values():
                f.result()

    topic = kafka_topic(apache_kafka, partitions=1)
    group = f"compacted-{uuid.uuid4().hex[:8]}"
    c = _consumer(bs, group)
    alter(AlterConfigOpType.SET)
    try:
        _commit(c, topic, {0: 100})
        _commit(c, topic, {0: 40})  # a rewind ...
        rewound = int(time.time() * 1000)
        deadline = time.monotonic() + 60
        while True:  # ... whose records the cleaner removes once a later commit rolls their segment
            _commit(c, topic, {0: 50})
            recs = read_group(bs, group)[0]  # the cleaner goes on: one read for both the check and the audit
            surviving = recs.commits["offset"].to_pylist()
            if 100 not in surviving and 40 not in surviving:
                break
            assert time.monotonic() < deadline, f"__consumer_offsets was not compacted: {surviving}"
        g = group_audit.audit(recs, topic).summary()
    finally:
        alter(AlterConfigOpType.DELETE)
        c.close()
    assert g["rewinds"] == []
    assert _ms(g["history_coverage"]["0"]["first_commit"]) >= rewound
    assert g["history_coverage"]["0"]["commits"] == len(surviving) and set(surviving) == {50}
