"""Where the warehouse's consumer stands, and the events it has not applied yet.

Two sources of "applied up to", as ``[gate] NAME.lag_offsets`` says: ``kafka``, the offsets the
consumer group committed to Kafka (read with an OffsetFetch through a consumer that is given the
group's id but never subscribes: it does not join the group, cannot trigger a rebalance, and never
commits), or ``postgres``, the next offsets `recon consume` stores in its ``_offsets`` table in the
same transaction as the events (the truth for that consumer; its Kafka commits are informational
and may trail). The events from there to each partition's end are read by the one scan
(:func:`engine.connectors.kafka.scan.scan`, its own throw-away group, assign only) and parsed by the
one event parser, like every other read of the topic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.connectors.kafka.scan import LAST_OFFSET, Scan, Window, _consumer, scan, topic_partitions
from engine.core.errors import ServiceUnreachable, UsageError, kafka_config_error
from engine.core.events import EventFields


def kafka_committed(bootstrap: str, topic: str, group: str, partitions: list[int],
                    extra: dict[str, str] | None = None, timeout: float = 30) -> dict[int, int | None]:
    """The group's committed offsets per partition (None: nothing committed). A coordinator that is
    moving or still loading the group (``NOT_COORDINATOR``, ``COORDINATOR_LOAD_IN_PROGRESS``) is
    waited out like an unreachable broker; past ``timeout``: exit 5."""
    from confluent_kafka import KafkaException, TopicPartition

    from engine.connectors.kafka import errors as kafka_errors
    from engine.connectors.retry import RetryPolicy

    reported: list[Any] = []
    try:
        c = _consumer(bootstrap, {**(extra or {}), "group.id": group}, error_cb=reported.append)
    except KafkaException as exc:
        raise kafka_config_error(exc) from None

    def fetch() -> dict[int, int | None]:
        tps = c.committed([TopicPartition(topic, p) for p in partitions], timeout=5)
        out: dict[int, int | None] = {}
        for tp in tps:
            if tp.error is not None:
                raise KafkaException(tp.error)
            out[tp.partition] = tp.offset if tp.offset >= 0 else None
        return out

    try:
        return RetryPolicy(timeout).run(fetch, lambda exc: kafka_errors.classify(exc, bootstrap, reported),
                                        service=f"Kafka at {bootstrap}",
                                        doing=f"while fetching the committed offsets of group {group!r}",
                                        hint="check the bootstrap address and that the broker runs")
    finally:
        c.close()


def postgres_stored(dsn: str, table: str, topic: str, *, passfile: str | Path | None = None,
                    statement_timeout_ms: int = 60_000) -> dict[int, int | None]:
    """The next offsets `recon consume --table TABLE` stored for ``topic`` (None: none stored, or
    reset by ``--reset-offsets``), read in a READ ONLY transaction of a read-only session."""
    import psycopg
    from psycopg import sql

    from engine.connectors.kafka.consumer.settings import parse_table
    from engine.connectors.postgres.connection import classify, connect, session_settings

    ref = parse_table(table)
    where = f"{ref.display}_offsets"
    conn = connect(dsn, passfile=passfile, autocommit=True)
    try:
        conn.execute(session_settings(statement_timeout_ms))
        conn.read_only = True
        with conn.transaction():
            rows = conn.execute(sql.SQL("SELECT kafka_partition, next_offset FROM {} WHERE kafka_topic = %s").format(
                ref.ident("_offsets")), (topic,)).fetchall()
    except psycopg.errors.UndefinedTable:
        raise UsageError(f"no table {where}: [gate] lag_table must be the events table `recon consume --table` "
                         "writes (its offsets are in TABLE_offsets)") from None
    except psycopg.Error as exc:
        verdict = classify(exc, where)
        if isinstance(verdict, UsageError):
            raise verdict from None
        raise ServiceUnreachable(f"PostgreSQL: cannot read {where}: {str(exc).strip().splitlines()[0]}") from None
    finally:
        conn.close()
    return {int(p): (None if o is None else int(o)) for p, o in rows}


def unapplied(bootstrap: str, topic: str, committed: dict[int, int | None], *, fields: EventFields | None = None,
              extra: dict[str, str] | None = None) -> Scan:
    """The messages from each partition's committed offset (the beginning when none) to its end:
    an offsets window open at the top, so the end is found by partition EOF, not by a watermark."""
    parts = topic_partitions(bootstrap, topic, extra)
    window = Window(offsets={p: (committed.get(p) or 0, LAST_OFFSET) for p in parts})
    return scan(bootstrap, topic, window, fields, kafka_config=extra)


def _text(exc: Exception) -> str:
    """A KafkaException's message (its argument is a KafkaError), else the exception's text."""
    first = exc.args[0] if exc.args else None
    return first.str() if hasattr(first, "str") else str(exc)


__all__ = ["kafka_committed", "postgres_stored", "topic_partitions", "unapplied"]
