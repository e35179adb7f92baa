"""The window read twice, ``read_uncommitted`` then ``read_committed``, by two consumers that are
assigned their partitions (no group join, no commit): only the offsets (and timestamps, to cut a
time window) are kept. :func:`engine.core.isolation.aborted_runs` compares them.

Order matters: the ``read_uncommitted`` read comes first, so a message appended between the two
reads can only show up in the ``read_committed`` one, where it is ignored, and never look aborted.
A ``read_committed`` consumer's end of partition is the last stable offset (librdkafka reports EOF
there while a transaction is open), which is what :class:`~engine.core.isolation.IsolationRead`
records.
"""

from __future__ import annotations

import time
from typing import Any

from engine.connectors.kafka.client import missing_topic
from engine.connectors.kafka.scan import _consumer, _start_offsets
from engine.core.errors import ServiceUnreachable
from engine.core.events import Window
from engine.core.isolation import IsolationRead


def read_twice(bootstrap: str, topic: str, parts: list[int], window: Window, extra: dict[str, str],
               deadline_s: float = 60.0) -> list[IsolationRead]:
    """Both reads of every partition in the window (for an offsets window, only the partitions it names)."""
    uncommitted = _read(bootstrap, topic, parts, window, extra, "read_uncommitted", deadline_s)
    committed = _read(bootstrap, topic, parts, window, extra, "read_committed", deadline_s)
    out = []
    for p in sorted(uncommitted):
        u_offs, u_end = uncommitted[p]
        c_offs, c_end = committed.get(p, ([], None))
        out.append(IsolationRead(partition=p, uncommitted=u_offs, committed=c_offs, last_stable=c_end,
                                 high_watermark=u_end))
    return out


def _in_window(window: Window, p: int, offset: int, ts_ms: int) -> bool:
    if window.offsets is not None:
        a, b = window.offsets[p]
        return a <= offset <= b
    if window.start is not None and ts_ms < int(window.start.timestamp() * 1000):
        return False
    return window.end is None or ts_ms <= int(window.end.timestamp() * 1000)


def _read(bootstrap: str, topic: str, parts: list[int], window: Window, extra: dict[str, str], isolation: str,
          deadline_s: float) -> dict[int, tuple[list[int], int | None]]:
    """partition → (offsets in the window, ascending; the offset of the end of partition where the
    read reached it, None when it stopped at the window's last offset first)."""
    from confluent_kafka import KafkaError, TopicPartition

    c = _consumer(bootstrap, {**extra, "isolation.level": isolation})
    offsets: dict[int, list[int]] = {}
    ends: dict[int, int | None] = {}
    try:
        starts = _start_offsets(c, topic, parts, window)
        if not starts:
            return {}
        c.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
        stop_at = {p: window.offsets[p][1] for p in starts} if window.offsets is not None else {}
        pending = set(starts)
        for p in starts:
            offsets[p] = []
            ends[p] = None
        idle_since = time.monotonic()
        while pending:
            msgs = c.consume(10_000, 0.1)
            if not msgs:
                if time.monotonic() - idle_since > deadline_s:
                    raise ServiceUnreachable(f"Kafka at {bootstrap} sent nothing for {deadline_s:.0f}s while partitions "
                                             f"{sorted(pending)} had not reached their end: check the broker")
                continue
            idle_since = time.monotonic()
            for m in msgs:
                p = m.partition()
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if p in pending:
                            ends[p] = m.offset()
                            pending.discard(p)
                    elif err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                        raise missing_topic(topic, bootstrap)
                    elif err.fatal():
                        raise ServiceUnreachable(f"Kafka error while reading {topic!r} ({isolation}): {err.str()}")
                    continue
                if p not in pending:
                    continue
                o = m.offset()
                if stop_at and o > stop_at[p]:
                    pending.discard(p)
                    continue
                if _in_window(window, p, o, m.timestamp()[1]):
                    offsets[p].append(o)
                if stop_at and o >= stop_at[p]:
                    pending.discard(p)
    finally:
        c.close()
    return {p: (sorted(set(offsets[p])), ends[p]) for p in offsets}


def summary(reads: list[IsolationRead]) -> dict[str, Any]:
    """The JSON keys the isolation check adds to kafka-audit."""
    from engine.core.isolation import aborted_runs

    aborted, open_tx = aborted_runs(reads)
    return {"aborted": aborted, "open_transaction": open_tx}
