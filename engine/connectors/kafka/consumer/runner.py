"""The consume loop: one consumer-group member, from subscription to the last commit.

Owns :func:`run` and :class:`_Runner` (polling and transforming on the calling thread, writing on a
writer thread, rebalance callbacks, Kafka error handling, metrics), the stop flag behind SIGTERM and
SIGINT, and the interpreter tuning applied for the duration of a run.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from engine.connectors.kafka import errors as kafka_errors
from engine.connectors.kafka.client import all_topics, existing_partitions
from engine.connectors.kafka.consumer.batch import Batch, DeadLetter
from engine.connectors.kafka.consumer.settings import (
    _CONSUME_TIMEOUT_S,
    ConsumerSettings,
    consumer_config,
    log,
)
from engine.connectors.kafka.consumer.sink import ConsumeResult, Counters, Sink, _first_line
from engine.connectors.kafka.consumer.transformation import transform
from engine.core.errors import ReconError, ServiceUnreachable, UsageError, kafka_config_error

# ---------------------------------------------------------------------------------------------
# the consume loop


class _Stop:
    """Stop flag set by SIGTERM/SIGINT; ``sleep`` wakes early when it is set.

    The first signal asks for a graceful stop (the batch in hand is committed); a second one
    interrupts at once (KeyboardInterrupt). That is safe too: a transaction cut short never
    commits, and the next run reads the stored offsets.
    """

    def __init__(self, external: threading.Event | None) -> None:
        self.event = external or threading.Event()
        self.signal: str | None = None

    def sleep(self, seconds: float) -> bool:
        """Sleep; False when a stop was requested (the caller gives up waiting)."""
        return not self.event.wait(seconds)

    @contextlib.contextmanager
    def handlers(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum: int, _frame: Any) -> None:
            if self.event.is_set() and self.signal is not None:
                raise KeyboardInterrupt
            self.signal = signal.Signals(signum).name
            self.event.set()

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


#: The writer thread waits for PostgreSQL about seven times per batch (lock, probe, COPY,
#: aggregates, offsets, commit) and each time needs the GIL back from the polling thread, which
#: lets go of it only every ``sys.getswitchinterval()`` (5 ms by default): up to 35 ms per batch
#: during which PostgreSQL sits idle. At 0.5 ms the handover costs ~0.5 µs of CPU per event and
#: gave ~12% more events/s on two cores.
_SWITCH_INTERVAL_S: Final[float] = 0.0005
#: Every message's headers are a list of tuples (four GC-tracked objects) that lives until its
#: batch is committed, so the collector ran often and, in its full passes, walked every object
#: of the process (Polars, NumPy, psycopg...): measured at ~4.5 µs of CPU per event, as much as
#: the whole transformation. During a run the objects that existed before it are frozen (never
#: traversed) and the youngest generation is collected every 50,000 allocations instead of 700.
_GC_GEN0_THRESHOLD: Final[int] = 50_000


_tuning_lock = threading.Lock()
_tuning_users = 0
_tuning_saved: tuple[float, tuple[int, ...]] = (0.0, ())


@contextlib.contextmanager
def _runtime_tuning() -> Iterator[None]:
    """Interpreter settings for the duration of a run (see above), restored afterwards.

    Process-wide, so counted: with several runs in one process (threads of an embedding
    program), the first one in applies them and the last one out restores what it found.
    """
    global _tuning_users, _tuning_saved
    with _tuning_lock:
        _tuning_users += 1
        if _tuning_users == 1:
            _tuning_saved = (sys.getswitchinterval(), gc.get_threshold())
            interval, threshold = _tuning_saved
            sys.setswitchinterval(min(interval, _SWITCH_INTERVAL_S))
            gc.freeze()
            gc.set_threshold(max(threshold[0], _GC_GEN0_THRESHOLD), *threshold[1:])
    try:
        yield
    finally:
        with _tuning_lock:
            _tuning_users -= 1
            if _tuning_users == 0:
                interval, threshold = _tuning_saved
                gc.set_threshold(*threshold)
                gc.unfreeze()
                sys.setswitchinterval(interval)


class _Runner:
    """One consumer-group member: polls and transforms on this thread, writes on a writer thread.

    The two overlap (batch N is committed while batch N+1 is fetched and transformed): parsing
    and hashing in Python and the insert in PostgreSQL each take about half the time, and both
    the Kafka client and psycopg release the GIL while they wait. At most one batch is in flight,
    and every Kafka client call stays on this thread. Rebalance callbacks first wait for the
    batch in flight, so a revoked partition's last batch is committed before another member
    can read its stored offset.
    """

    def __init__(self, settings: ConsumerSettings, report: Callable[[str], None] | None,
                 stop: threading.Event | None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.s = settings
        self.report = report
        self.stop = _Stop(stop)
        self.sink = Sink(settings, self.stop.sleep, self._notice)
        self.consumer: Any = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recon-consume-writer")
        self.inflight: Any = None  # Future of the batch being written
        self.assigned: set[int] = set()
        self.pos: dict[int, int | None] = {}  # next offset read per partition (None: from the beginning)
        self.epoch: dict[int, int] = {}  # bumped at each assignment or seek of a partition
        self.eof: dict[int, bool] = {}
        self.assign_seen = False
        self.in_rebalance = False
        self.callback_error: BaseException | None = None
        self.broker_down_since: float | None = None
        self.run_counters = Counters()
        self.batches = 0
        self._metrics_at = time.monotonic()
        self._metrics_base = Counters()
        self._cooperative = "cooperative" in str(settings.kafka_config.get("partition.assignment.strategy", ""))

    # -- Kafka callbacks (run inside consume(), on this thread) -----------------------------
    def _on_error(self, err: Any) -> None:
        from confluent_kafka import KafkaError

        code = err.code()
        # only "all brokers down" counts as an outage: single connection drops (_TRANSPORT, e.g. the
        # broker closing an idle connection) are routine and librdkafka reconnects by itself
        if code == KafkaError._ALL_BROKERS_DOWN:
            if self.broker_down_since is None:
                self.broker_down_since = time.monotonic()
                self._notice(f"Kafka at {self.s.bootstrap}: {err.str()}; retrying for up to {self.s.deadline_s:g} s")
        elif isinstance(found := kafka_errors.verdict(err, self.s.bootstrap), ReconError):
            self.callback_error = self.callback_error or found  # refused login or ACLs: exit 2
        else:
            log.info("Kafka: %s", err.str())

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        from confluent_kafka import OFFSET_BEGINNING

        try:
            self._drain()
            stored = self.sink.prepare_partitions([tp.partition for tp in partitions])
        except BaseException as exc:  # noqa: BLE001 - re-raised after consume() returns
            self.callback_error = exc
            if self._cooperative:
                consumer.incremental_assign([])
            else:
                consumer.assign([])
            return
        for tp in partitions:
            nxt = stored.get(tp.partition)
            tp.offset = OFFSET_BEGINNING if nxt is None else nxt
            self.pos[tp.partition] = nxt
            self.epoch[tp.partition] = self.epoch.get(tp.partition, 0) + 1
            self.eof[tp.partition] = False
        if self._cooperative:
            consumer.incremental_assign(partitions)
            self.assigned |= {tp.partition for tp in partitions}
        else:
            consumer.assign(partitions)
            self.assigned = {tp.partition for tp in partitions}
        self.assign_seen = True
        self.in_rebalance = False
        log.info("assigned partitions %s of %s", sorted(self.assigned), self.s.topic)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        try:
            self._drain()  # commit what was read from the partitions before giving them up
        except BaseException as exc:  # noqa: BLE001 - re-raised after consume() returns
            self.callback_error = self.callback_error or exc
        gone = {tp.partition for tp in partitions}
        self.assigned -= gone
        for p in gone:
            self.pos.pop(p, None)
            self.eof.pop(p, None)
            self.epoch[p] = self.epoch.get(p, 0) + 1
        if self._cooperative:
            consumer.incremental_unassign(partitions)
        else:
            self.in_rebalance = True
            consumer.unassign()

    # -- main loop -------------------------------------------------------------------------
    def run(self) -> ConsumeResult:
        t0 = time.monotonic()
        with self.stop.handlers(), _runtime_tuning():
            try:
                self.sink.connect()
                self.sink.ensure_schema()
                if self.s.reset_offsets:
                    n = self.sink.reset_offsets()
                    log.info("forgot %d stored offsets of %s", n, self.s.topic)
                self._open_consumer()
                stopped_by = self._loop()
                self._drain()
                self._metrics(force=True)
            finally:
                self.pool.shutdown(wait=True)  # never close the connection under a write
                self._close_consumer()
            parts = self.sink.partition_rows()
            self.sink.close()
        totals = Counters()
        for r in parts:
            totals.add(Counters(r["consumed"], r["applied"], r["duplicates"], r["dead_letters"], r["conflicts"]))
        return ConsumeResult(topic=self.s.topic, group=self.s.group, table=self.s.table.display, run=self.run_counters,
                             totals=totals, partitions=parts, stopped_by=stopped_by,
                             elapsed_s=time.monotonic() - t0, batches=self.batches,
                             api_version=self.s.api_version.lstrip("vV"))

    def _open_consumer(self) -> None:
        from confluent_kafka import Consumer, KafkaException

        conf = consumer_config(self.s)
        conf["error_cb"] = self._on_error
        conf["logger"] = logging.getLogger("engine.connectors.kafka.consumer.librdkafka")
        try:
            self.consumer = Consumer(conf)
        except KafkaException as exc:
            raise kafka_config_error(exc) from None  # names the property, never its value
        self._check_topic()
        self.consumer.subscribe([self.s.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)

    def _check_topic(self) -> None:
        """Fail with exit 2 on a missing topic *before* anything names it.

        Lists all topics (``client.all_topics``: on Tansu a request naming the topic would create
        it) through the consumer, so that the ``--kafka-config`` security settings (SASL/SSL) apply.
        """
        from confluent_kafka import KafkaException

        from engine.connectors.retry import RetryPolicy

        def probe() -> Any:
            try:
                return all_topics(self.consumer, timeout=min(5.0, max(1.0, self.s.deadline_s)))
            except KafkaException:
                # serve the error callback (nothing is subscribed yet, so no message is taken): a
                # refused login must be exit 2 at once, not an outage waited out until the deadline
                self.consumer.poll(0)
                if self.callback_error is not None:
                    raise self.callback_error from None
                raise

        md = RetryPolicy(self.s.deadline_s, field="deadline_s").run(
            probe, lambda exc: kafka_errors.classify(exc, self.s.bootstrap), service=f"Kafka at {self.s.bootstrap}",
            hint="check the bootstrap address and that the broker runs", sleep=self.stop.sleep, notice=self._notice)
        if self.callback_error is not None:
            raise self.callback_error
        existing_partitions(md, self.s.topic, self.s.bootstrap)
        self.broker_down_since = None

    def _close_consumer(self) -> None:
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                self.consumer.close()
            self.consumer = None

    def _loop(self) -> str:
        consumer = self.consumer
        fields, guard = self.s.fields, self.s.org_id
        while True:
            if self.stop.event.is_set():
                return f"signal ({self.stop.signal})" if self.stop.signal else "stop requested"
            msgs = consumer.consume(self.s.batch_size, _CONSUME_TIMEOUT_S)
            if self.callback_error is not None:
                raise self.callback_error
            if msgs:
                self.broker_down_since = None
                batch = transform(msgs, fields, guard, self.pos, self.s.api_version)
                for err in batch.errors:
                    self._kafka_error(err)
                if any(p not in self.assigned for p in batch.next_offset):
                    # read just before this call revoked the partition: its new owner reads it again
                    batch = batch.only(lambda p: p in self.assigned)
                for p, at_end in batch.eof.items():
                    if p in self.assigned:
                        self.eof[p] = at_end
                if batch.next_offset:
                    for p, n in batch.next_offset.items():
                        self.pos[p] = n
                        batch.epoch[p] = self.epoch.get(p, 0)
                    batch.prepared()  # here, while the writer is still busy with the previous batch
                    self._drain()
                    self.inflight = self.pool.submit(self._write_job, batch)
            else:
                self._check_broker()
                if self.inflight is not None and self.inflight.done():
                    self._drain()
            self._metrics()
            if self.s.until_caught_up and self._caught_up():
                self._drain()  # a conflict found while committing may send a partition back
                if self._caught_up():
                    return "caught_up"

    def _caught_up(self) -> bool:
        return self.assign_seen and not self.in_rebalance and all(self.eof.get(p) for p in self.assigned)

    def _kafka_error(self, err: Any) -> None:
        from confluent_kafka import KafkaError

        code = err.code()
        if code in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION):
            raise UsageError(f"topic {self.s.topic!r} disappeared from {self.s.bootstrap}: {err.str()}")
        if code in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED):
            raise UsageError(f"Kafka at {self.s.bootstrap} denied access: {err.str()} (check --kafka-config and ACLs)")
        if err.fatal():
            raise ServiceUnreachable(f"Kafka consumer failed: {err.str()}")
        log.warning("Kafka: %s", err.str())

    def _check_broker(self) -> None:
        """Exit 5 once the broker has been unreachable past the deadline (librdkafka retries forever)."""
        from confluent_kafka import KafkaException

        if self.broker_down_since is None:
            return
        down = time.monotonic() - self.broker_down_since
        if down < min(2.0, self.s.deadline_s):
            return
        try:
            self.consumer.list_topics(timeout=1.0)
            self.broker_down_since = None
            return
        except KafkaException:
            pass
        if time.monotonic() - self.broker_down_since > self.s.deadline_s:
            raise ServiceUnreachable(f"Kafka at {self.s.bootstrap} unreachable for {self.s.deadline_s:g} s: "
                                     "check the bootstrap address and that the broker runs", field="deadline_s")

    # -- writing (the writer thread) -------------------------------------------------------
    def _write_job(self, batch: Batch) -> list[tuple[Batch, dict[int, Counters], dict[int, int | None]]]:
        """Runs on the writer thread: the batch's transaction, with retries and the fallback."""
        import psycopg

        try:
            per, conflicts = self.sink.retrying("writing a batch", lambda: self.sink.write(batch))
            return [(batch, per, conflicts)]
        except (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.ProgramLimitExceeded) as exc:
            # a row PostgreSQL refuses despite validation must not block the stream: write the batch
            # one message at a time so that only the offending messages are dead-lettered
            self._notice(f"PostgreSQL rejected a batch ({_first_line(str(exc))}); writing it message by message")
            return self._one_by_one(batch)

    def _one_by_one(self, batch: Batch) -> list[tuple[Batch, dict[int, Counters], dict[int, int | None]]]:
        """Fallback after PostgreSQL refused a batch: one transaction per message, in offset order.

        Only messages PostgreSQL refuses on their own become dead letters (reason
        ``rejected_by_database``); everything else is written exactly as in a batch. Slow, and
        only ever used for a batch that failed.
        """
        import psycopg

        items: list[tuple[int, int, Batch, Any]] = []
        parts = batch.row_parts
        for i, m in enumerate(batch.row_msgs):
            items.append((parts[i], m.offset(), batch.row(i), m))
        for d in batch.dead:
            items.append((d.partition, d.offset, Batch(dead=[d], consumed={d.partition: 1},
                                                       next_offset={d.partition: d.offset + 1}), None))
        items.sort(key=lambda x: (x[0], x[1]))
        pos = dict(batch.start)
        out = []
        for p, off, one, m in items:
            one.start, one.epoch = {p: pos[p]}, dict(batch.epoch)
            try:
                per, conflicts = self.sink.retrying("writing a message", lambda one=one: self.sink.write(one))
            except (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.ProgramLimitExceeded) as exc:
                if m is None:
                    raise  # a dead letter itself was refused: a bug, not data to route around
                dl = DeadLetter.of(m, "rejected_by_database", _first_line(str(exc)))
                one = Batch(dead=[dl], consumed={p: 1}, start={p: pos[p]}, next_offset={p: off + 1},
                            epoch=dict(batch.epoch))
                per, conflicts = self.sink.retrying("dead-lettering a message", lambda one=one: self.sink.write(one))
            pos[p] = off + 1
            out.append((one, per, conflicts))
        return out

    def _drain(self) -> None:
        """Wait for the batch in flight and account for it (raises what the writer raised)."""
        fut, self.inflight = self.inflight, None
        if fut is None:
            return
        for batch, per, conflicts in fut.result():
            self._committed(batch, per, conflicts)

    def _committed(self, batch: Batch, per: Mapping[int, Counters], conflicts: Mapping[int, int | None]) -> None:
        from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

        self.batches += 1
        for c in per.values():
            self.run_counters.add(c)
        for p, stored in conflicts.items():
            if batch.epoch.get(p) != self.epoch.get(p) or p not in self.assigned:
                continue  # read under an earlier assignment or seek: already handled
            self._notice(f"partition {p} of {self.s.topic} was written by another consumer (stored next offset "
                         f"{stored}): seeking there")
            self.epoch[p] = self.epoch.get(p, 0) + 1
            self.pos[p] = stored
            self.eof[p] = False
            with contextlib.suppress(KafkaException, RuntimeError):
                self.consumer.seek(TopicPartition(self.s.topic, p, OFFSET_BEGINNING if stored is None else stored))
        tps = [TopicPartition(self.s.topic, p, batch.next_offset[p]) for p in per if p in self.assigned]
        if tps:  # informational only (lag tools); the truth is the offsets table
            with contextlib.suppress(KafkaException, RuntimeError):
                self.consumer.commit(offsets=tps, asynchronous=True)

    def _notice(self, text: str) -> None:
        """An operator-facing line (retries, reconnects, fencing): the report channel, else the log."""
        if self.report is not None:
            self.report(f"consume: {text}")
        else:
            log.warning("%s", text)

    def _metrics(self, force: bool = False) -> None:
        if not self.report or self.s.metrics_interval_s <= 0:
            return
        now = time.monotonic()
        dt = now - self._metrics_at
        if not force and dt < self.s.metrics_interval_s:
            return
        c, b = self.run_counters, self._metrics_base
        rate = (c.consumed - b.consumed) / dt if dt > 0 else 0.0
        self.report(f"consume: {self.s.topic}: {rate:,.0f} events/s, {c.consumed:,} consumed, {c.applied:,} applied, "
                    f"{c.duplicates:,} duplicates skipped, {c.dead_letters:,} dead letters ({c.conflicts:,} conflicts), "
                    f"partitions {sorted(self.assigned)}")
        self._metrics_at = now
        self._metrics_base = Counters(**c.as_dict())


def run(settings: ConsumerSettings, *, report: Callable[[str], None] | None = None,
        stop: threading.Event | None = None) -> ConsumeResult:
    """Consume ``settings.topic`` into PostgreSQL until caught up (if asked) or stopped.

    ``report`` receives the periodic metrics line and operator notices (retries, reconnects,
    fencing), each one line starting with ``consume: ``; ``stop`` lets an embedding program stop the
    loop (SIGTERM and SIGINT do the same when this runs on the main thread): the batch in hand is
    finished and committed first. Raises :class:`UsageError` for what the user can fix and
    :class:`ServiceUnreachable` when PostgreSQL or Kafka stay away past ``settings.deadline_s``.
    """
    return _Runner(settings, report, stop).run()
