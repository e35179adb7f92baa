"""How the scenario's duplicates come about, for real, on the Apache broker: `recon scenario load
--cause replay|rewind|redelivery|aborted|mixed`.

The generator's plan (:func:`engine.local.scenario.generate`) says which events reach the warehouse
twice: every delivered event of the maintenance window. The cause says how:

* ``replay`` (:data:`CAUSE_NAMES`: ``producer_replay``): a second producer sends the window's block
  again (the default; :func:`engine.local.scenario.produce`);
* ``rewind`` (``offset_rewind``): the warehouse's consumer group commits past the window, then its
  offsets are reset backwards to the window's start with the AdminClient, and the group reads the
  window again;
* ``redelivery`` (``redelivery_before_commit``): a group member applies the window's events and
  leaves the group without committing them; the next member starts from the last commit and reads
  them again;
* ``aborted`` (``aborted_read_uncommitted``): a transactional producer writes the window's events,
  the warehouse's consumer (``read_uncommitted``) applies them, the producer aborts and retries:
  the same events again, committed;
* ``mixed``: each partition gets one cause, in the order of :data:`MIXED`.

The warehouse consumer is a real member of the group :func:`group_name` names, and naive: every
message it is handed is one warehouse row (``delivery`` counts the times an offset was applied).
What it was handed is recorded and checked against the plan (each window event twice, every other
event once) before anything is written to the warehouse, so the ground truth is what the broker
delivered, not what was meant.

The stages run one after the other over all partitions; the log never holds more than the stage
needs, so "consume until these offsets arrived" is exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

CAUSES = ("replay", "rewind", "redelivery", "aborted", "mixed")
#: the cause names of `recon explain` and the ground truth
CAUSE_NAMES = {"replay": "producer_replay", "rewind": "offset_rewind", "redelivery": "redelivery_before_commit",
               "aborted": "aborted_read_uncommitted"}
#: ``mixed``: partition p gets MIXED[p % 4] (the scenario gives it at least four partitions)
MIXED = ("rewind", "redelivery", "aborted", "replay")
DEADLINE_S = 60.0


def group_name(topic: str) -> str:
    """The warehouse's consumer group (the scenario's recon.toml names it as ``[kafka] group``)."""
    return f"{topic}-warehouse"


def partition_causes(cause: str, partitions: int) -> dict[int, str]:
    if cause == "mixed":
        return {p: MIXED[p % len(MIXED)] for p in range(partitions)}
    return dict.fromkeys(range(partitions), cause)


@dataclass
class _Log:
    """What was produced, per row of the plan: the offset the broker gave it in the committed log
    (-1: not produced) and, for a window event of an aborted partition, the offset of its copy in
    the aborted transaction."""

    offsets: np.ndarray
    aborted: np.ndarray


def run(messages: pl.DataFrame, topic: str, org_id: str, bootstrap: str, causes: dict[int, str],
        say: Callable[[str], None] = lambda _m: None) -> pl.DataFrame:
    """Produce the plan and let the warehouse's group consume it, each partition's duplicates made
    by its cause. Returns one row per warehouse delivery: the plan's columns, ``offset``,
    ``delivery`` (1, 2, … per offset), ``is_copy`` (a delivery the committed log does not account
    for: a second delivery of an offset, or an aborted message) and ``cause``."""
    from engine.local.scenario import message_value

    m = messages.with_row_index("_row")
    seg = _Segments(m, causes)
    log = _Log(np.full(len(m), -1, dtype=np.int64), np.full(len(m), -1, dtype=np.int64))
    cols = {c: m[c].to_list() for c in ("account_id", "event_type", "event_ts", "cents", "partition", "ts_ms",
                                       "producer_id", "sequence")}

    def records(rows: Iterable[int]) -> list[tuple[int, int, bytes, bytes, int, list[tuple[str, bytes]]]]:
        out = []
        for i in rows:
            acc = cols["account_id"][i]
            value = message_value(org_id, acc, cols["event_type"][i], cols["event_ts"][i], cols["cents"][i])
            out.append((i, cols["partition"][i], value, f"{org_id}:{acc}".encode(), cols["ts_ms"][i],
                        [("org-id", org_id.encode()), ("producer-id", cols["producer_id"][i].encode()),
                         ("sequence", str(cols["sequence"][i]).encode())]))
        return out

    first = _producer(bootstrap)
    restarted = _producer(bootstrap)
    tx = _producer(bootstrap, transactional_id=f"recon-scenario-{topic}") if seg.by_cause("aborted") else None
    if tx is not None:
        tx.init_transactions(DEADLINE_S)
    wh = _Warehouse(bootstrap, topic, group_name(topic))
    try:
        say("producing the events before the maintenance window")
        _send(first, topic, records(seg.rows("pre", exclude=("aborted",)) + seg.rows("win", only=("replay",))), log)
        _send(restarted, topic, records(seg.rows("copy", only=("replay",)) + seg.rows("post", only=("replay",))), log)
        if tx is not None:
            _send_tx(tx, topic, records(seg.rows("pre", only=("aborted",))), log, commit=True)
        wh.join()
        wh.consume_until(_last(log.offsets, m, seg.all_rows(("pre",)) + seg.rows("win", only=("replay",))
                               + seg.rows("copy", only=("replay",)) + seg.rows("post", only=("replay",))))
        wh.commit()  # the window's start, on every partition the window is still to come

        say("the maintenance window: the warehouse's consumer applies its events")
        _send(first, topic, records(seg.rows("win", only=("rewind", "redelivery"))), log)
        if tx is not None:
            tx.begin_transaction()
            _send(tx, topic, records(seg.rows("win", only=("aborted",))), log, aborted=True)
        wh.consume_until(_last(log.offsets, m, seg.rows("win", only=("rewind", "redelivery")))
                         | _last(log.aborted, m, seg.rows("win", only=("aborted",))))
        wh.commit(seg.partitions("rewind"))  # past the window: the rewind resets it backwards later
        if tx is not None:
            say("the transactional producer aborts, then retries the window's events")
            tx.abort_transaction(DEADLINE_S)
            _send_tx(tx, topic, records(seg.rows("win", only=("aborted",))), log, commit=True)
            wh.consume_until(_last(log.offsets, m, seg.rows("win", only=("aborted",))))
            wh.commit(seg.partitions("aborted"))
        wh.close()  # leaves the group: the window's events on redelivery partitions were never committed

        rewind = seg.partitions("rewind")
        if rewind:
            say("resetting the warehouse group's offsets back to the window's start (AdminClient)")
            _reset_offsets(bootstrap, topic, group_name(topic),
                           {p: int(log.offsets[seg.first("win", p)]) for p in rewind if seg.first("win", p) is not None})

        say("after the window: the next group member carries on from the committed offsets")
        _send(restarted, topic, records(seg.rows("post", exclude=("replay", "aborted"))), log)
        if tx is not None:
            _send_tx(tx, topic, records(seg.rows("post", only=("aborted",))), log, commit=True)
        wh.join()
        wh.consume_until(_last(log.offsets, m, seg.rows("win", only=("rewind", "redelivery"))
                               + seg.rows("post", exclude=("replay",))))
        wh.commit()
        wh.close()
    finally:
        wh.close()
        if tx is not None:
            tx.flush(10)
    return _deliveries(m, log, wh.delivered, causes)


class _Segments:
    """The plan's rows of each partition by stage: ``pre`` (before the window), ``win`` (the
    window's originals), ``copy`` (the planned second delivery of each, produced only by a replay)
    and ``post``."""

    def __init__(self, m: pl.DataFrame, causes: dict[int, str]) -> None:
        self.causes = causes
        stage = (pl.when(pl.col("is_copy")).then(pl.lit("copy"))
                 .when(pl.col("phase") == 2).then(pl.lit("post"))
                 .when(pl.col("duplicated")).then(pl.lit("win")).otherwise(pl.lit("pre")))
        f = m.with_columns(stage.alias("_stage")).sort("partition", "position")
        self._rows: dict[tuple[str, int], list[int]] = {}
        for (st, p), g in f.group_by(["_stage", "partition"]):
            self._rows[(str(st), int(p))] = g["_row"].to_list()

    def partitions(self, cause: str) -> list[int]:
        return sorted(p for p, c in self.causes.items() if c == cause)

    def by_cause(self, cause: str) -> bool:
        return bool(self.partitions(cause))

    def rows(self, stage: str, only: tuple[str, ...] | None = None, exclude: tuple[str, ...] = ()) -> list[int]:
        out: list[int] = []
        for p in sorted(self.causes):
            c = self.causes[p]
            if (only is None or c in only) and c not in exclude:
                out.extend(self._rows.get((stage, p), []))
        return out

    def all_rows(self, stages: tuple[str, ...]) -> list[int]:
        return [r for s in stages for r in self.rows(s)]

    def first(self, stage: str, p: int) -> int | None:
        rows = self._rows.get((stage, p))
        return rows[0] if rows else None


def _producer(bootstrap: str, transactional_id: str | None = None) -> Any:
    from confluent_kafka import Producer

    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5,
                            "log_level": 3, "compression.type": "lz4"}
    if transactional_id:
        conf["transactional.id"] = transactional_id
    return Producer(conf)


def _send(producer: Any, topic: str, recs: list[Any], log: _Log, *, aborted: bool = False) -> None:
    """Produce and wait for every delivery report; record the offsets (and ``aborted``)."""
    errors: list[str] = []

    def make_cb(i: int) -> Callable[[Any, Any], None]:
        def cb(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                (log.aborted if aborted else log.offsets)[i] = msg.offset()
        return cb

    for i, part, value, key, ts_ms, headers in recs:
        while True:
            try:
                producer.produce(topic, value=value, key=key, partition=part, timestamp=ts_ms, headers=headers,
                                 on_delivery=make_cb(i))
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(DEADLINE_S) or errors:
        raise RuntimeError(f"producing the scenario failed: {errors[:3]}")


def _send_tx(producer: Any, topic: str, recs: list[Any], log: _Log, *, commit: bool) -> None:
    if not recs:
        return
    producer.begin_transaction()
    _send(producer, topic, recs, log)
    if commit:
        producer.commit_transaction(DEADLINE_S)


def _last(offsets: np.ndarray, m: pl.DataFrame, rows: list[int]) -> dict[int, int]:
    """partition → the highest of ``offsets`` among ``rows`` (what the consumer must have been handed)."""
    parts = m["partition"].to_numpy()
    out: dict[int, int] = {}
    for r in rows:
        o = int(offsets[r])
        if o < 0:
            raise RuntimeError(f"the scenario lost track of message {r}: no offset")
        p = int(parts[r])
        out[p] = max(out.get(p, -1), o)
    return out


class _Warehouse:
    """The naive warehouse consumer: a classic-protocol group member that applies whatever it is
    handed (``read_uncommitted``) and commits only when told to."""

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        self.bootstrap, self.topic, self.group = bootstrap, topic, group
        self.c: Any = None
        self.delivered: list[tuple[int, int]] = []
        self.position: dict[int, int] = {}

    def join(self) -> None:
        from confluent_kafka import Consumer

        from engine.connectors.kafka.client import fast_rejoin_consumer_config

        self.c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group, "enable.auto.commit": False,
                           "auto.offset.reset": "earliest", "isolation.level": "read_uncommitted", "log_level": 3,
                           **fast_rejoin_consumer_config()})
        self.c.subscribe([self.topic])
        self.position = {}

    def consume_until(self, targets: dict[int, int]) -> None:
        """Apply messages until every partition of ``targets`` handed over its target offset."""
        todo = {p: o for p, o in targets.items() if self.position.get(p, 0) <= o}
        deadline = time.monotonic() + DEADLINE_S
        while todo:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the warehouse consumer did not receive offsets {todo} of {self.topic!r}")
            for msg in self.c.consume(1000, 0.2):
                if msg.error() is not None:
                    continue
                p, o = msg.partition(), msg.offset()
                self.delivered.append((p, o))
                self.position[p] = o + 1
                if p in todo and o >= todo[p]:
                    del todo[p]

    def commit(self, partitions: list[int] | None = None) -> None:
        from confluent_kafka import TopicPartition

        parts = sorted(self.position) if partitions is None else [p for p in partitions if p in self.position]
        if parts:
            self.c.commit(offsets=[TopicPartition(self.topic, p, self.position[p]) for p in parts], asynchronous=False)

    def close(self) -> None:
        if self.c is not None:
            self.c.close()  # auto-commit is off: closing commits nothing
            self.c = None


def _reset_offsets(bootstrap: str, topic: str, group: str, offsets: dict[int, int]) -> None:
    """alter_consumer_group_offsets, retried until the coordinator has seen the last member leave
    (a group with members refuses it)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
    from confluent_kafka.admin import AdminClient

    if not offsets:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    req = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p, o) for p, o in sorted(offsets.items())])]
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            res = admin.alter_consumer_group_offsets(req)[group].result()
            bad = [tp for tp in res.topic_partitions if tp.error is not None]
            if not bad:
                return
            last: Exception = RuntimeError(str(bad[0].error))
        except KafkaException as exc:
            last = exc
        if time.monotonic() > deadline:
            raise RuntimeError(f"resetting the offsets of group {group!r} failed: {last}")
        time.sleep(0.2)  # the coordinator has not processed the member's LeaveGroup yet


def _deliveries(m: pl.DataFrame, log: _Log, delivered: list[tuple[int, int]], causes: dict[int, str]
                ) -> pl.DataFrame:
    """One row per delivery, joined to the plan by (partition, offset); checked against the plan."""
    committed = m.with_columns(pl.Series("offset", log.offsets), pl.lit(False).alias("aborted"))
    aborted = m.with_columns(pl.Series("offset", log.aborted), pl.lit(True).alias("aborted"))
    produced = pl.concat([committed, aborted]).filter(pl.col("offset") >= 0)
    d = pl.DataFrame({"partition": [p for p, _ in delivered], "offset": [o for _, o in delivered]},
                     schema={"partition": produced["partition"].dtype, "offset": pl.Int64})
    d = d.with_columns((pl.int_range(pl.len()).over("partition", "offset") + 1).alias("delivery"))
    out = d.join(produced, on=["partition", "offset"], how="left")
    if out["_row"].null_count():
        raise RuntimeError("the warehouse consumer was handed a message the scenario did not produce")
    out = out.with_columns(
        (pl.col("is_copy") | (pl.col("delivery") > 1) | pl.col("aborted")).alias("is_copy"),
        pl.col("partition").replace_strict({p: CAUSE_NAMES[c] for p, c in causes.items()},
                                           return_dtype=pl.Utf8).alias("cause"))
    planned = m.group_by("event_id").agg(pl.len().alias("n"))
    got = out.group_by("event_id").agg(pl.len().alias("n"))
    diff = planned.join(got, on="event_id", how="full", coalesce=True).filter(
        pl.col("n").fill_null(0) != pl.col("n_right").fill_null(0))
    if len(diff):
        raise RuntimeError(f"the warehouse consumer's deliveries differ from the plan for {len(diff)} events")
    return out.sort("partition", "offset", "delivery").drop("_row", "aborted")


def delete_group(bootstrap: str, group: str) -> None:
    """Forget a previous load's group (its committed offsets), so that the group's history in
    ``__consumer_offsets`` starts with this load. A group that does not exist is fine."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    listed = admin.list_consumer_groups(request_timeout=30).result()
    if group not in {g.group_id for g in listed.valid}:
        return  # (a fresh broker has no group, nor yet the coordinator a deletion would need)
    # a fresh broker creates __consumer_offsets on first use: its coordinator answers "not
    # coordinator" or "loading" for a while
    transient = (KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                 KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._TIMED_OUT)
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            admin.delete_consumer_groups([group], request_timeout=30)[group].result()
            return
        except KafkaException as exc:
            code = exc.args[0].code()
            if code == KafkaError.GROUP_ID_NOT_FOUND:
                return
            if code not in transient or time.monotonic() > deadline:
                raise
        time.sleep(0.2)  # the coordinator is still loading: ask again
