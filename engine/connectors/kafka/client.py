"""Kafka client settings that product code and the local stack share.

The measured rejoin times behind these values are in ``engine/local/kafka.py``'s docstring (the
stack is where they were measured); the settings themselves are product behaviour, so they live
here and the stack imports them, never the other way round.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

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
