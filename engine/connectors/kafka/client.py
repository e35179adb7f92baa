"""What every Kafka command shares about the client: its settings, the ``--kafka-config``
properties file, and whether a topic exists.

The fast-rejoin settings are product behaviour; the measured rejoin times behind them are in
``engine/local/kafka.py``'s docstring (the stack is where they were measured), and the stack
imports them from here, never the other way round. So does the stack's topic listing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, NamedTuple

from engine.core.errors import UsageError

#: Consumer settings for workers that must get their partitions back quickly after a crash of a
#: previous member. ``group.protocol`` is pinned to "classic": with the KIP-848 protocol the
#: broker's 45 s session timeout applies, and Tansu never assigned partitions to such a consumer.
FAST_REJOIN_CONSUMER_CONFIG: Final[Mapping[str, str | int]] = {
    "group.protocol": "classic",
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1000,
}


def fast_rejoin_consumer_config(group_instance_id: str | None = None) -> dict[str, str | int]:
    """:data:`FAST_REJOIN_CONSUMER_CONFIG`, optionally with static membership.

    A ``group_instance_id`` makes a restarted singleton worker take its partitions back at once on
    Apache Kafka (0.1 s instead of ~6 s) - but a second live consumer with the same id is fenced.
    """
    cfg: dict[str, str | int] = dict(FAST_REJOIN_CONSUMER_CONFIG)
    if group_instance_id:
        cfg["group.instance.id"] = group_instance_id
    return cfg


# ---------------------------------------------------------------------------------------------
# the --kafka-config properties file


class KafkaProperty(NamedTuple):
    """One ``key=value`` line of a properties file, with its line number for messages."""

    line: int
    key: str
    value: str


#: ``key=value`` or ``key: value``: the key has no white space, ``=`` or ``:`` (the first of
#: those ends it); white space around the separator and the value is dropped; the value is the
#: rest of the line, ``=`` and ``:`` included (a JAAS config or a password may hold them).
_PROPERTY = re.compile(r"^([^=:\s]+)\s*[=:]\s*(.*)$")


def read_kafka_properties(path: str | Path) -> list[KafkaProperty]:
    """The properties of a librdkafka properties file, in file order (a repeated key: the last wins
    once they are put in a dict).

    Grammar, one line at a time: blank lines and lines starting with ``#`` or ``!`` (after white
    space) are comments; every other line is one :data:`_PROPERTY`, else the file is refused
    naming the line number. No line continuations or escapes: librdkafka takes values verbatim.
    The file is UTF-8. Values are never echoed in errors (nor is a refused line): such files hold
    SASL passwords.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--kafka-config {p}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--kafka-config {p}: cannot read it ({type(exc).__name__})") from None
    props: list[KafkaProperty] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s[0] in "#!":
            continue
        m = _PROPERTY.match(s)
        if not m:
            raise UsageError(f"--kafka-config {p}, line {lineno}: expected key=value")
        props.append(KafkaProperty(lineno, m.group(1), m.group(2).strip()))
    return props


def load_kafka_config(path: str | Path | None) -> dict[str, str]:
    """The ``--kafka-config`` file as librdkafka properties ({} when no file is given); the grammar
    is :func:`read_kafka_properties`'s."""
    if not path:
        return {}
    return {prop.key: prop.value for prop in read_kafka_properties(path)}


# ---------------------------------------------------------------------------------------------
# does the topic exist?


def all_topics(client: Any, timeout: float) -> Any:
    """The cluster's metadata for every topic (a confluent-kafka ``ClusterMetadata``), from a
    consumer's or an admin client's ``list_topics``.

    Never asks about one topic by name: Tansu creates any topic a Metadata request names, so
    checking a topic by name there would make the topic it checks.
    Asked through the caller's client, so that its security settings (SASL/SSL) apply.
    """
    return client.list_topics(timeout=timeout)


def missing_topic(topic: str, bootstrap: str) -> UsageError:
    """The error (exit 2) of every command that finds ``topic`` missing, whichever way it found out
    (the metadata, a fetch's unknown-topic error, the native loop's)."""
    return UsageError(f"topic {topic!r} does not exist on {bootstrap}: check --topic")


def existing_partitions(metadata: Any, topic: str, bootstrap: str) -> list[int]:
    """The partitions of ``topic`` in metadata from :func:`all_topics`, sorted.

    A topic that is not listed, or listed without partitions, does not exist
    (:func:`missing_topic`); one listed with an error (e.g. not authorized) is not readable. Both
    are usage errors: the user names the topic and holds the credentials.
    """
    t = metadata.topics.get(topic)
    if t is None or not t.partitions:
        raise missing_topic(topic, bootstrap)
    if t.error is not None:
        raise UsageError(f"topic {topic!r} on {bootstrap} is not readable: {t.error.str()}")
    bad = [p for p in t.partitions if type(p) is not int or not 0 <= p <= MAX_PARTITION_ID]
    if bad:  # a broker's answer is input too: the native scan sizes a table by the largest id
        raise UsageError(f"the broker at {bootstrap} reported partition id {bad[0]!r} for topic {topic!r}, "
                         f"outside 0..{MAX_PARTITION_ID}: check --bootstrap points at a Kafka cluster you trust")
    return sorted(t.partitions)


#: the largest partition id recon accepts from a broker's metadata (a topic of a million partitions
#: is far beyond any real cluster; kafka_scan.c keeps the same bound)
MAX_PARTITION_ID: Final[int] = (1 << 20) - 1
