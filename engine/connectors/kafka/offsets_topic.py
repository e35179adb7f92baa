"""Read one consumer group's records from ``__consumer_offsets``, read-only.

The group's records live in one partition of the topic (:func:`engine.core.offsets_log.coordinator_partition`),
which is read from its log start to its end with ``assign()``: the reader never subscribes, so it
never joins the audited group (or any group), and it never commits (``enable.auto.commit`` and
offset storing off; its own ``group.id`` is a throw-away name librdkafka requires and no record of
it is written). ``isolation.level=read_committed``, forced over any ``--kafka-config`` value: a
transactional offset commit that was aborted must not count as a commit. The end is the partition
EOF, which a read_committed fetch reports at the last stable offset (an open transaction's commits
are not read yet).

A broker without the topic (Tansu keeps group state elsewhere; a principal that may not describe
it is given a listing without it, which looks the same) and an authorization refusal are usage
errors (exit 2, one line).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, Final

import numpy as np
import pyarrow as pa

from engine.connectors.kafka.client import all_topics
from engine.core import offsets_log
from engine.core.errors import ReconError, ServiceUnreachable, UsageError, kafka_config_error

OFFSETS_TOPIC: Final = "__consumer_offsets"
BATCH: Final = 10_000
#: settings that make the read read-only and committed-only, applied after --kafka-config
_FORCED: Final = {"enable.auto.commit": False, "enable.auto.offset.store": False, "enable.partition.eof": True,
                  "isolation.level": "read_committed"}


def _missing(bootstrap: str) -> UsageError:
    return UsageError(f"the broker at {bootstrap} lists no {OFFSETS_TOPIC} topic: --group needs Apache Kafka "
                      f"(Tansu keeps no group log) and a principal allowed to DESCRIBE and READ {OFFSETS_TOPIC} "
                      "(kafka-acls --add --operation Describe --operation Read --topic __consumer_offsets)")


def _denied(bootstrap: str, why: str) -> UsageError:
    return UsageError(f"Kafka at {bootstrap} denied reading {OFFSETS_TOPIC} ({why}): grant this principal "
                      f"DESCRIBE and READ on topic {OFFSETS_TOPIC} (kafka-acls), or run without --group")


def _conf(bootstrap: str, extra: dict[str, str]) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "group.id": f"recon-offsets-{uuid.uuid4()}",
            "auto.offset.reset": "earliest", "fetch.wait.max.ms": 100, **extra, **_FORCED}


def read_group(bootstrap: str, group: str, extra: dict[str, str] | None = None, *, timeout: float = 30.0,
               logger: Any = None, progress: Callable[[int], None] | None = None,
               ) -> tuple[offsets_log.GroupRecords, int]:
    """``group``'s records (decoded) and the ``__consumer_offsets`` partition they were read from."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

    from engine.connectors.kafka import errors as kafka_errors
    from engine.connectors.retry import RetryPolicy

    if not group:
        raise UsageError("--group is empty: name the warehouse's consumer group")
    reported: list[Any] = []
    from engine.connectors.kafka.scan import _LIBRDKAFKA_LOG

    conf = {**_conf(bootstrap, extra or {}), "logger": logger if logger is not None else _LIBRDKAFKA_LOG}
    try:
        c = Consumer({**conf, "error_cb": reported.append})
    except KafkaException as exc:
        raise kafka_config_error(exc) from None

    def probe() -> Any:
        try:
            return all_topics(c, timeout=1.0)
        except KafkaException:
            c.poll(0)
            raise

    try:
        md = RetryPolicy(timeout).run(probe, lambda exc: kafka_errors.classify(exc, bootstrap, reported),
                                      service=f"Kafka at {bootstrap}",
                                      hint="check the bootstrap address and that the broker runs")
        t = md.topics.get(OFFSETS_TOPIC)
        if t is None or not t.partitions:
            raise _missing(bootstrap)
        if t.error is not None:
            raise _denied(bootstrap, t.error.str())
        part = offsets_log.coordinator_partition(group, len(t.partitions))
        c.assign([TopicPartition(OFFSETS_TOPIC, part, OFFSET_BEGINNING)])
        keys: list[bytes | None] = []
        values: list[bytes | None] = []
        offs: list[int] = []
        tss: list[int] = []
        quiet_since = time.monotonic()
        while True:
            msgs = c.consume(BATCH, 0.2)
            if not msgs:
                if time.monotonic() - quiet_since > timeout:
                    raise ServiceUnreachable(f"Kafka at {bootstrap} sent nothing from {OFFSETS_TOPIC} "
                                             f"partition {part} for {timeout:.0f} s (no end of partition either)")
                continue
            quiet_since = time.monotonic()
            done = False
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        done = True
                        continue
                    if err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                        raise _denied(bootstrap, err.str())
                    v = kafka_errors.verdict(err, bootstrap)
                    if isinstance(v, ReconError):
                        raise v
                    continue  # transient: librdkafka retries the fetch itself
                keys.append(m.key())
                values.append(m.value())
                offs.append(m.offset())
                tss.append(m.timestamp()[1])
            if progress is not None:
                progress(len(offs))
            if done:
                break
    finally:
        c.close()
    records = offsets_log.decode(pa.array(keys, pa.binary()), pa.array(values, pa.binary()),
                                 np.array(offs, np.int64), np.array(tss, np.int64), group)
    return records, part
