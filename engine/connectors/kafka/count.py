"""Count a topic's messages by reading every partition to its end (EOF), not by watermarks:
some brokers (Tansu) answer ListOffsets wrongly, so only EOF is trusted."""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer, KafkaError, TopicPartition

from engine.connectors.kafka.client import all_topics, existing_partitions


def count_messages(bootstrap: str, topic: str, timeout: float = 60.0) -> int:
    import time

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"recon-count-{uuid.uuid4()}",
                  "enable.auto.commit": False, "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    try:
        parts = existing_partitions(all_topics(c, timeout=10), topic, bootstrap)
        c.assign([TopicPartition(topic, p, -2) for p in parts])
        pending, n = set(parts), 0
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for m in c.consume(10_000, 0.5):
                err = m.error()
                if err is None:
                    n += 1
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(m.partition())
        return n
    finally:
        c.close()
