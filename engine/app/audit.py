"""`recon kafka-audit`: which events of a topic were delivered more than once, and where.

The typed request holds what the command line gives; the use case merges it with the config's
[kafka] table, scans the topic through the Kafka connector and hands the scan to the pure
forensics in core."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.connectors.kafka import scan as ks
from engine.connectors.kafka.client import load_kafka_config
from engine.core import forensics, group_audit
from engine.core.errors import UsageError
from engine.core.events import EventFields, Window


@dataclass(frozen=True)
class AuditRequest:
    """bootstrap/topic default to the config's [kafka]; ``offsets`` is the `P:A-B,…` text."""

    bootstrap: str | None = None
    topic: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    offsets: str | None = None
    lookback_s: float = 0.0
    org_id: str | None = None
    fields: EventFields = EventFields()
    kafka_config_file: Path | None = None
    group: str | None = None
    #: also read the window read_uncommitted vs read_committed (aborted[], open_transaction[]) and
    #: its record-batch headers (producers[]): two more reads of the window, so only when asked
    isolation_check: bool = False


#: [kafka] keys that are recon's, not librdkafka properties
_OWN_KEYS = ("bootstrap", "topic", "group")


def run_audit(req: AuditRequest, config: Config, *,
              progress: Callable[[int], None] | None = None) -> forensics.Audit:
    """Scan the window and audit it; usage errors before any connection is made."""
    k = config.section("kafka")
    bootstrap = req.bootstrap or k.get("bootstrap")
    topic = req.topic or k.get("topic")
    if not bootstrap or not topic:
        raise UsageError("pass --bootstrap and --topic (or -C recon.toml with [kafka] bootstrap and topic)")
    if req.offsets and (req.start or req.end):
        raise UsageError("give either --from/--to or --offsets, not both")
    window = Window(start=req.start, end=req.end, offsets=ks.parse_offsets(req.offsets) if req.offsets else None,
                    lookback_s=req.lookback_s)
    extra = {kk: str(v) for kk, v in k.items() if kk not in _OWN_KEYS}
    extra.update(load_kafka_config(req.kafka_config_file))
    scan = ks.scan(bootstrap, topic, window, req.fields, kafka_config=extra, progress=progress)
    audit = forensics.audit(scan, org_id=req.org_id)
    if req.isolation_check:
        audit.evidence.update(isolation_evidence(bootstrap, topic, window, extra))
    return audit


def run_group_audit(req: AuditRequest, config: Config) -> group_audit.GroupAudit | None:
    """The group's rewinds, rebalances and surviving commit history for the audited topic, from
    ``__consumer_offsets`` (None when neither --group nor [kafka] group names a group)."""
    from engine.connectors.kafka import offsets_topic

    k = config.section("kafka")
    group = req.group if req.group is not None else k.get("group")
    if group is None:
        return None
    bootstrap = req.bootstrap or k.get("bootstrap")
    topic = req.topic or k.get("topic")
    if not bootstrap or not topic:
        raise UsageError("pass --bootstrap and --topic (or -C recon.toml with [kafka] bootstrap and topic)")
    if not isinstance(group, str) or not group:
        raise UsageError("the consumer group is empty: pass --group NAME (or [kafka] group in the config)")
    extra = {kk: str(v) for kk, v in k.items() if kk not in _OWN_KEYS}
    extra.update(load_kafka_config(req.kafka_config_file))
    records, part = offsets_topic.read_group(bootstrap, group, extra)
    return group_audit.audit(records, topic, offsets_partition=part)


def isolation_evidence(bootstrap: str, topic: str, window: Window, extra: dict[str, str]) -> dict[str, Any]:
    """``aborted[]``, ``open_transaction[]`` and ``producers[]`` of the window: the offsets a
    read_uncommitted read returns and a read_committed read does not, and the producer of every
    run of record batches in the offsets the read_uncommitted read returned."""
    from engine.connectors.kafka import batches, isolation
    from engine.core.isolation import producer_runs

    parts = ks.topic_partitions(bootstrap, topic, extra)
    if window.offsets is not None:
        parts = [p for p in parts if p in window.offsets]
    reads = isolation.read_twice(bootstrap, topic, parts, window, extra)
    ranges = {r.partition: (r.uncommitted[0], r.uncommitted[-1]) for r in reads if r.uncommitted}
    return {**isolation.summary(reads),
            "producers": producer_runs(batches.read_batches(bootstrap, topic, ranges, extra), ranges)}
