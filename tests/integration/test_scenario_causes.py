"""`recon scenario load --cause …`: each cause makes the window's duplicates for real on the Apache
broker (engine.local.causes), the ground truth's copies are what the broker shows, and
`kafka-audit --isolation-check` reads the aborted ranges and producer ids the scenario left.

The checks read the topic with plain confluent-kafka consumers (``read_committed`` and
``read_uncommitted``) and the consumer group through the AdminClient, never through the code under
test. A small scenario (150 accounts) keeps each cause to a couple of seconds of broker work.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import polars as pl
import psycopg
import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from engine.app import explain
from engine.app.audit import isolation_evidence
from engine.core.errors import UsageError
from engine.core.events import EventFields, Window
from engine.core.ids import event_id
from engine.local import causes, scenario
from engine.local.salesforce import ORG_ID
from tests.causes_checks import check_causes
from tests.kafka_fixtures import read_to_eof

ACCOUNTS = 150
SEED = 11


class Loaded:
    """One cause loaded on its own topic: the plan, the deliveries, the ground truth, and the topic
    as each isolation level reads it ((partition, offset) → event id)."""

    def __init__(self, bootstrap: str, topic: str, cause: str) -> None:
        parts = 4 if cause == "mixed" else 3
        self.bootstrap, self.topic, self.cause = bootstrap, topic, cause
        self.causes = causes.partition_causes(cause, parts)
        spec = scenario.ScenarioSpec(accounts=ACCOUNTS, seed=SEED, partitions=parts, cause=cause, topic=topic)
        self.sc = scenario.generate(spec, ORG_ID)
        self.delivered = causes.run(self.sc.messages, topic, ORG_ID, bootstrap, self.causes)
        self.truth = scenario.ground_truth(self.sc, self.delivered)
        self.committed = _read(bootstrap, topic, parts, "read_committed")
        self.uncommitted = _read(bootstrap, topic, parts, "read_uncommitted")

    def planned_copies(self, p: int) -> int:
        return self.sc.messages.filter((pl.col("partition") == p) & pl.col("is_copy")).height


def _read(bootstrap: str, topic: str, parts: int, isolation: str) -> dict[tuple[int, int], str]:
    msgs, _ = read_to_eof(bootstrap, topic, range(parts), {"isolation.level": isolation})
    out = {}
    for m in msgs:
        v = json.loads(m.value())
        out[(m.partition(), m.offset())] = event_id(v["org_id"], v["account_id"], v["event_type"], v["event_ts"])
    return out


class _Causes:
    """Each cause loaded once for the module, when a test first asks for it."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.done: dict[str, Loaded] = {}

    def __getitem__(self, cause: str) -> Loaded:
        if cause not in self.done:
            from engine.local.kafka import create_topic

            topic = f"t-causes-{cause}"
            create_topic(self.bootstrap, topic, partitions=4 if cause == "mixed" else 3)
            self.done[cause] = Loaded(self.bootstrap, topic, cause)
        return self.done[cause]


@pytest.fixture(scope="module")
def loaded(apache_kafka: Any) -> _Causes:
    return _Causes(apache_kafka.bootstrap)


def _runs(copies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The aborted[] entries the ground truth implies: its aborted copies, one run per partition
    (the scenario aborts one contiguous block per partition)."""
    by_p: dict[int, list[int]] = {}
    for c in copies:
        if c["cause"] == "aborted_read_uncommitted":
            by_p.setdefault(c["partition"], []).append(c["offset"])
    return [{"partition": p, "from_offset": min(o), "to_offset": max(o), "events": len(o)} for p, o in sorted(by_p.items())]


def _producer_at(producers: list[dict[str, Any]], p: int, offset: int) -> dict[str, Any]:
    (run,) = [r for r in producers if r["partition"] == p and r["from_offset"] <= offset <= r["to_offset"]]
    return run


def _check_copies(ld: Loaded) -> None:
    """Every copy of the ground truth against the broker, by its cause."""
    copies = ld.truth["copies"]
    assert copies and len(copies) == ld.truth["duplicate_copies"]
    for c in copies:
        key, orig = (c["partition"], c["offset"]), (c["partition"], c["original_offset"])
        assert c["cause"] == causes.CAUSE_NAMES[ld.causes[c["partition"]]]
        assert ld.committed[orig] == c["event_id"]  # the event's one committed message
        if c["cause"] in ("offset_rewind", "redelivery_before_commit"):
            assert key == orig and c["delivery"] == 2  # the same message handed over a second time
        elif c["cause"] == "aborted_read_uncommitted":
            assert key not in ld.committed and ld.uncommitted[key] == c["event_id"]  # aborted
            assert c["offset"] < c["original_offset"] and c["delivery"] == 1  # then retried and committed
        else:
            assert ld.committed[key] == c["event_id"] and c["offset"] > c["original_offset"]  # a second message
    for p, cause in ld.causes.items():  # each window event of a partition once more, no other
        got = [c for c in copies if c["partition"] == p]
        assert len(got) == ld.planned_copies(p), (p, cause)
        assert len({c["event_id"] for c in got}) == len(got)


def _committed_offsets(bootstrap: str, group: str, topic: str, parts: int) -> dict[int, int]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    req = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(parts)])]
    res = admin.list_consumer_group_offsets(req)[group].result()
    return {tp.partition: tp.offset for tp in res.topic_partitions}


@pytest.mark.slow  # each cause alone (~14 s); the default suite checks them together in `mixed`
@pytest.mark.parametrize("cause", ["replay", "rewind", "redelivery", "aborted"])
def test_each_cause_makes_the_copies_the_ground_truth_lists(loaded: _Causes, cause: str) -> None:
    ld = loaded[cause]
    _check_copies(ld)
    assert {c["cause"] for c in ld.truth["copies"]} == {causes.CAUSE_NAMES[cause]}
    # the group ends where the log ends: the duplicates came from its history, not from lag
    ends = {}
    for (p, o) in ld.uncommitted:
        ends[p] = max(ends.get(p, -1), o)
    committed = _committed_offsets(ld.bootstrap, causes.group_name(ld.topic), ld.topic, 3)
    assert all(committed[p] > ends[p] for p in ends), (committed, ends)


def test_isolation_check_finds_the_aborted_ranges_and_the_producers(loaded: _Causes) -> None:
    ld = loaded["aborted"]
    ev = isolation_evidence(ld.bootstrap, ld.topic, Window(), {})
    assert ev["aborted"] == _runs(ld.truth["copies"]) and ev["aborted"]
    assert ev["open_transaction"] == []
    for c in ld.truth["copies"]:  # the retry is the same transactional producer session, not a replay
        a, o = _producer_at(ev["producers"], c["partition"], c["offset"]), \
            _producer_at(ev["producers"], c["partition"], c["original_offset"])
        assert a["producer_id"] == o["producer_id"] >= 0 and a["transactional"]


def test_isolation_check_shows_the_replayed_copies_under_another_producer(loaded: _Causes) -> None:
    ld = loaded["replay"]
    ev = isolation_evidence(ld.bootstrap, ld.topic, Window(), {})
    assert ev["aborted"] == [] and ev["open_transaction"] == []
    for c in ld.truth["copies"]:
        copy = _producer_at(ev["producers"], c["partition"], c["offset"])
        orig = _producer_at(ev["producers"], c["partition"], c["original_offset"])
        assert copy["producer_id"] != orig["producer_id"] and not copy["transactional"]
    # the restarted producer's run starts at the first copy of each partition
    for w in ld.truth["windows"]:
        assert _producer_at(ev["producers"], w["partition"], w["first_offset"])["from_offset"] == w["first_offset"]


def test_the_default_replay_keeps_its_offsets_and_sends_the_copies_from_a_second_producer(
        apache_kafka: Any, kafka_topic: Any) -> None:
    """`scenario load` without --cause (scenario.produce): the offsets of a single producer (the
    demo's numbers), the copies and everything after them under the restarted producer's id."""
    topic = kafka_topic(apache_kafka, partitions=3)
    sc = scenario.generate(scenario.ScenarioSpec(accounts=ACCOUNTS, seed=SEED, topic=topic), ORG_ID)
    delivered = scenario.produce(sc, apache_kafka.bootstrap)
    assert delivered["offset"].to_list() == delivered["position"].to_list()
    ev = isolation_evidence(apache_kafka.bootstrap, topic, Window(), {})
    for p, g in delivered.group_by("partition"):
        runs = [r for r in ev["producers"] if r["partition"] == p[0]]
        first_copy = g.filter(pl.col("phase") > 0)["offset"].min()
        assert [(r["from_offset"], r["to_offset"]) for r in runs] == [(0, first_copy - 1),
                                                                      (first_copy, g["offset"].max())]
        assert runs[0]["producer_id"] != runs[1]["producer_id"]


def test_mixed_gives_each_partition_its_cause_and_kafka_audit_reports_them(loaded: _Causes) -> None:
    ld = loaded["mixed"]
    _check_copies(ld)
    assert {c["cause"] for c in ld.truth["copies"]} == set(causes.CAUSE_NAMES.values())
    base = [sys.executable, "-m", "engine.cli.main", "kafka-audit", "--bootstrap", ld.bootstrap, "--topic", ld.topic,
            "--json"]
    with_check = subprocess.run([*base, "--isolation-check"], capture_output=True, text=True, timeout=120)
    plain = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert with_check.returncode == plain.returncode == 1, with_check.stderr  # the replay partition's duplicates
    s, p = json.loads(with_check.stdout), json.loads(plain.stdout)
    assert s["aborted"] == _runs(ld.truth["copies"]) and len(s["aborted"]) == 1
    assert {r["partition"] for r in s["producers"]} == set(range(4))
    extra = {"aborted", "open_transaction", "producers"}
    assert set(s) - set(p) == extra and not extra & set(p)  # the plain audit's keys are unchanged
    assert {k: v for k, v in s.items() if k not in extra | {"elapsed_s"}} == \
        {k: v for k, v in p.items() if k != "elapsed_s"}


def test_the_config_group_is_not_a_librdkafka_property(loaded: _Causes, tmp_path: Any) -> None:
    """The scenario's recon.toml names the warehouse's group in [kafka]; the audit reads the config
    without handing that key to librdkafka (which refuses unknown properties)."""
    from engine import config as config_mod
    from engine.app.audit import AuditRequest, run_audit

    ld = loaded["aborted"]
    cfg = tmp_path / "recon.toml"
    cfg.write_text(f'[kafka]\nbootstrap = "{ld.bootstrap}"\ntopic = "{ld.topic}"\n'
                   f'group = "{causes.group_name(ld.topic)}"\n')
    a = run_audit(AuditRequest(isolation_check=True), config_mod.load(cfg))
    assert a.events == len(ld.committed) and a.summary()["aborted"] == _runs(ld.truth["copies"])


def test_an_open_transaction_is_reported_not_guessed(apache_kafka: Any, kafka_topic: Any) -> None:
    from confluent_kafka import Producer

    topic = kafka_topic(apache_kafka, partitions=1)
    tx = Producer({"bootstrap.servers": apache_kafka.bootstrap, "transactional.id": f"open-{topic}"})
    tx.init_transactions(30)
    tx.begin_transaction()
    for i in range(3):
        tx.produce(topic, b"x%d" % i, partition=0)
    tx.commit_transaction(30)
    tx.begin_transaction()
    for i in range(2):
        tx.produce(topic, b"y%d" % i, partition=0)
    tx.flush(30)
    try:
        ev = isolation_evidence(apache_kafka.bootstrap, topic, Window(), {})
    finally:
        tx.abort_transaction(30)
    # 0-2 committed, 3 the commit marker, 4-5 still open: not aborted, undecided
    assert ev["aborted"] == []
    assert ev["open_transaction"] == [{"partition": 0, "last_stable_offset": 4, "high_watermark": 6, "undecided": 2}]
    after = isolation_evidence(apache_kafka.bootstrap, topic, Window(), {})  # now aborted: a run, nothing open
    assert after["aborted"] == [{"partition": 0, "from_offset": 4, "to_offset": 5, "events": 2}]
    assert after["open_transaction"] == []


def test_the_warehouse_holds_one_row_per_delivery(loaded: _Causes, embedded_pg: Any) -> None:
    ld = loaded["mixed"]
    db = "h20b_causes_wh"
    with psycopg.connect(embedded_pg.superuser_dsn, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {db}")
        c.execute(f"CREATE DATABASE {db}")
    dsn = embedded_pg.info.superuser_socket_dsn(db)
    with psycopg.connect(dsn) as c:
        scenario.write_warehouse(c, ld.sc, ld.delivered, None)
        rows = c.execute("SELECT kafka_partition, kafka_offset, delivery FROM warehouse.clv_events").fetchall()
    assert len(rows) == ld.truth["warehouse_deliveries"] == len(ld.delivered)
    twice = sorted((p, o) for p, o, d in rows if d == 2)
    assert twice == sorted((c["partition"], c["offset"]) for c in ld.truth["copies"] if c["delivery"] == 2)
    assert twice  # the rewind and the redelivery partitions


def test_a_cause_other_than_replay_needs_the_apache_broker() -> None:
    for cause in ("rewind", "redelivery", "aborted", "mixed"):
        with pytest.raises(UsageError, match="Apache Kafka broker"):
            scenario.check_cause(cause, "tansu")
        scenario.check_cause(cause, "apache")
    scenario.check_cause("replay", "tansu")
    with pytest.raises(UsageError, match="--cause must be one of"):
        scenario.check_cause("bogus", "apache")


# -- issue 20's last mile: explain's Kafka half (explain.stream_causes: the scan, the group's
# __consumer_offsets history, the isolation reads, the record batches, the attribution) on the same
# mixed load gives every copy of the ground truth its cause, with the evidence the scenario left.
# The whole CLI path (scenario load -> diff -> explain) is test_causes_e2e.py (slow).


def test_explain_gives_every_copy_of_the_mixed_scenario_its_cause(loaded: _Causes) -> None:
    ld = loaded["mixed"]
    rc = explain.stream_causes(ld.bootstrap, ld.topic, causes.group_name(ld.topic), Window(), EventFields(), {},
                               org_id=ORG_ID)
    assert rc.isolation == "read_uncommitted"
    exp = {"kafka": {"windows": rc.attribution.windows, "redelivery_windows": rc.attribution.redelivery_windows,
                     "causes": rc.attribution.totals}}
    check_causes(ld.truth, exp)
    # the group's history and the isolation reads hold what the scenario did, and nothing else
    part = {cause: p for p, cause in ld.causes.items()}
    copies = ld.truth["copies"]

    def offsets(cause: str) -> list[int]:
        return sorted(c["offset"] for c in copies if c["cause"] == causes.CAUSE_NAMES[cause])

    rw, rd, ab = offsets("rewind"), offsets("redelivery"), offsets("aborted")
    assert [(r["partition"], r["from_offset"], r["to_offset"]) for r in rc.raw["rewinds"]] == [
        (part["rewind"], rw[-1] + 1, rw[0])]
    ranges = [(u["partition"], u["from_offset"], u["to_offset"]) for b in rc.raw["rebalances"]
              for u in b["uncommitted"]]
    assert ranges == [(part["redelivery"], rd[0], rd[-1] + 1)]
    assert rc.raw["aborted"] == [{"partition": part["aborted"], "from_offset": ab[0], "to_offset": ab[-1],
                                  "events": len(ab)}]
    assert rc.raw["open_transaction"] == []
    assert {r.get("source", "record_batch") for r in rc.raw["producers"]} == {"record_batch"}
    assert set(rc.raw["history_coverage"]) == {str(p) for p in range(4)}


def test_without_a_group_explain_reads_committed_and_cannot_tell_the_group_causes(loaded: _Causes) -> None:
    """Without a group explain scans read_committed, as before issue 20's evidence: the aborted
    copies are invisible, no rewind or rebalance is read, and only the replay partition's copies
    get a cause, from the producer-id headers."""
    ld = loaded["mixed"]
    rc = explain.stream_causes(ld.bootstrap, ld.topic, None, Window(), EventFields(), {}, org_id=ORG_ID)
    assert rc.isolation == "read_committed" and rc.raw["history_coverage"] is None
    assert rc.attribution.totals == {"producer_replay": ld.planned_copies(causes.MIXED.index("replay"))}
    assert {e["source"] for w in rc.attribution.windows for c in w["causes"] for e in c["evidence"]} == {"header"}
