"""The idempotent Kafka-to-PostgreSQL consumer behind ``recon consume``.

Why it cannot double count
--------------------------
The incident was a producer replaying a block of events: Kafka held two copies of each, at two
different offsets, and the warehouse summed both. Kafka's own exactly-once machinery cannot help a
sink with that (the producer's sequence numbers are invisible to consumers, and a copy sitting at
another offset is a *new* message to Kafka). So the sink makes duplicates irrelevant:

* every event gets its business id from ``engine.core.ids`` (UUIDv5 over org id, record id, event
  type and event time: :func:`engine.core.ids.event_ids`, or the same bytes hashed column-wise by
  :func:`_fast_rows`), so two copies of one event have one id wherever they sit;
* one PostgreSQL transaction per batch: the batch's new events are COPYed straight into the
  events table, the per-record aggregates are upserted from exactly those new rows, and dead
  letters, the *next* offset of every partition (``msg.offset() + 1``, never a logical offset)
  and the running counters go into the same transaction. Which events are new is decided by the
  primary key: the COPY is first tried as is, under a savepoint (a replay is rare and comes in a
  block, so almost every batch has no stored event); if the key rejects an id, the savepoint is
  undone, the batch's ids are looked up (one ``= ANY(array)`` probe), the stored ones counted as
  duplicates and the rest COPYed, and the next batches probe first until a probe finds nothing.
  A crash at any point loses nothing and repeats nothing: either the whole batch and its offsets
  are committed, or neither is;
* offsets live in PostgreSQL, not in Kafka: on assignment the consumer seeks to the stored offsets
  (Kafka commits are made after the database commit and are informational only, for lag tools);
* the stored offset row of a partition is also a fence (locked ``FOR UPDATE`` in the batch's
  transaction). A batch is written for a partition only if the stored offset is exactly where the
  batch continues from; otherwise another member (after a rebalance, or a zombie of one) got there
  first, the partition's part of the batch is dropped and the consumer seeks to the stored
  offset. That keeps even the *counters* exact when two members of a group race, not just the
  events.

Fetching and transforming batch N+1 overlaps writing batch N (one writer thread, one batch in
flight; the polling thread also prepares the COPY text, so the writer only sends); a rebalance
waits for the batch in flight before partitions change hands. The transformation is column-wise
(Polars) for messages in the producers' shape, and the interpreter's GC and thread switch
interval are tuned for the run (see ``_runtime_tuning``): both measured, in ``bench/RESULTS.md``.

The accounting is part of the schema: the offsets table has a CHECK constraint
``consumed = applied + duplicates + dead_letters`` per partition, ``applied`` equals the rows the
consumer inserted and ``dead_letters`` the dead-letter rows it stored. A redelivered event (same
event id) and a redelivered poison message (same topic/partition/offset, already dead-lettered)
both count as ``duplicates``: deliveries that changed nothing. A *conflict* is not a duplicate: a
message whose event id is stored (or came earlier in its batch) with another payload — the amount,
compared as a number, as :mod:`engine.core.forensics` does — is dead-lettered with reason
``conflict`` and counted in ``conflicts`` as well as ``dead_letters`` (the first payload stays).
Every event row carries ``payload_digest`` (SHA-256 of the canonical amount, a generated column:
PostgreSQL computes it, no Python runs per row for it; virtual from PostgreSQL 18, so inserts pay
nothing); copies of stored events are compared by digest, and by the stored amount where a row has
none.

Tables, next to the events table ``S.T`` (all created when missing):

* ``S.T`` — ``event_id uuid`` primary key, ``org_id``, ``record_id``, ``event_type``,
  ``event_ts``, ``amount numeric``, ``lineage jsonb``, ``ingested_at``, ``payload_digest``;
* ``S.T_aggregates`` — per record: ``record_id``, the sum of amounts (``--sum-column``, default ``clv``), ``event_count``,
  ``last_event_ts``, ``updated_at``;
* ``S.T_dead_letters`` — keyed by (``kafka_topic``, ``kafka_partition``, ``kafka_offset``), with
  the raw ``key``/``value`` bytes, the headers, ``reason`` and ``detail``;
* ``S.T_offsets`` — per (``kafka_topic``, ``kafka_partition``): ``next_offset`` and the counters.

Columns added by later versions are added to existing tables on start (``sink._MIGRATIONS``).

The transformation is pure (:func:`transform`): Kafka messages in, COPY text and dead letters
out, so it is unit-tested without services and its source is part of the lineage digest.

The package, by concern: ``settings`` (options, constants, the librdkafka configuration),
``batch`` (the transformed batch the writer takes), ``values`` (checking and encoding one value),
``transformation`` (the pure transformation and its digest), ``sink`` (the PostgreSQL side) and
``runner`` (the consume loop). ``__all__`` is its API; the names imported ``as`` themselves below
are re-exported for the use case (the defaults) and for the tests and benchmarks (private names).
``transformation`` is the module of the :func:`transform` function (so patching ``_FAST_PATH`` there
reaches it).
"""

from __future__ import annotations

from engine.connectors.kafka.consumer.batch import Batch, DeadLetter
from engine.connectors.kafka.consumer.runner import _GC_GEN0_THRESHOLD as _GC_GEN0_THRESHOLD
from engine.connectors.kafka.consumer.runner import _SWITCH_INTERVAL_S as _SWITCH_INTERVAL_S
from engine.connectors.kafka.consumer.runner import _runtime_tuning as _runtime_tuning
from engine.connectors.kafka.consumer.runner import run
from engine.connectors.kafka.consumer.settings import (
    DEFAULT_API_VERSION,
    DEFAULT_SUM_COLUMN,
    ConsumerSettings,
    FieldNames,
    TableRef,
    consumer_config,
    normalize_org_id,
    parse_kafka_config,
    parse_table,
)
from engine.connectors.kafka.consumer.settings import DEFAULT_BATCH_SIZE as DEFAULT_BATCH_SIZE
from engine.connectors.kafka.consumer.settings import DEFAULT_DEADLINE_S as DEFAULT_DEADLINE_S
from engine.connectors.kafka.consumer.settings import DEFAULT_METRICS_INTERVAL_S as DEFAULT_METRICS_INTERVAL_S
from engine.connectors.kafka.consumer.sink import ConsumeResult, Counters, Sink
from engine.connectors.kafka.consumer.transformation import _fast_rows as _fast_rows
from engine.connectors.kafka.consumer.transformation import transform, transform_digest

__all__ = [
    "DEFAULT_API_VERSION",
    "DEFAULT_SUM_COLUMN",
    "Batch",
    "ConsumeResult",
    "ConsumerSettings",
    "Counters",
    "DeadLetter",
    "FieldNames",
    "Sink",
    "TableRef",
    "consumer_config",
    "normalize_org_id",
    "parse_kafka_config",
    "parse_table",
    "run",
    "transform",
    "transform_digest",
]
