"""What a scan of an event topic is, apart from how it is read: the event's field names, the window
to read, the scanned frame, and the one timestamp format. Pure data, so the forensics in ``core``
can analyse a scan without importing a Kafka client."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

from engine.core.errors import UsageError


@dataclass(frozen=True)
class EventFields:
    """Names of the JSON fields in an event (configurable in every command that reads events:
    producers differ). One definition for kafka-audit, explain and consume."""

    record_id: str = "account_id"
    event_type: str = "event_type"
    event_time: str = "event_ts"
    amount: str = "amount"
    org_id: str = "org_id"

    def __post_init__(self) -> None:
        names = [self.record_id, self.event_type, self.event_time, self.amount, self.org_id]
        if any(not n or not n.strip() for n in names):
            raise UsageError("field names must not be empty (--record-id-field, --event-type-field, "
                             "--event-time-field, --amount-field, --org-id-field)")
        if len(set(names)) != len(names):
            raise UsageError(f"field names must be distinct, got {', '.join(names)}")

    def names(self) -> list[str]:
        return [self.org_id, self.record_id, self.event_type, self.event_time, self.amount]


@dataclass(frozen=True)
class Window:
    """Which part of the topic to read: a time range, explicit offsets per partition, or all of it.

    offsets: partition → (first offset, last offset) inclusive.
    lookback_s: start this much earlier than ``start`` (to recognise duplicates of earlier events),
      without counting those earlier messages in the window.
    """

    start: datetime | None = None
    end: datetime | None = None
    offsets: dict[int, tuple[int, int]] | None = None
    lookback_s: float = 0.0


@dataclass
class Scan:
    """The scanned messages, in (partition, offset) order. ``frame`` columns: partition, offset,
    ts_ms, ts_type, key, org_header, producer_id, sequence, in_window, status ('ok' | 'unparsable' |
    'tombstone'), raw (str, only for unparsable), and the parsed fields (org_id, record_id,
    event_type, event_time, amount as text)."""

    frame: pl.DataFrame
    topic: str
    partitions: dict[int, dict[str, int | None]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0


def iso_ms(ts_ms: int | None) -> str | None:
    if ts_ms is None:
        return None
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
