"""`recon consume`: the typed request of one consumer run, turned into the Kafka connector's
settings and run. The consumer itself (transform, sink, runner) belongs to the Kafka connector;
this use case only resolves what the command line gives (a table name, an org id, a properties
file) into validated settings, so the CLI never touches a connector."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.connectors.kafka import consumer as c
from engine.core.events import EventFields


@dataclass(frozen=True)
class ConsumeRequest:
    """What `recon consume` was asked, as given (validated when turned into settings)."""

    bootstrap: str
    topic: str
    group: str
    dsn: str
    table: str
    org_id: str | None = None
    until_caught_up: bool = False
    reset_offsets: bool = False
    kafka_config_file: Path | None = None
    fields: EventFields = EventFields()
    batch_size: int = c.DEFAULT_BATCH_SIZE
    deadline_s: float = c.DEFAULT_DEADLINE_S
    metrics_interval_s: float = c.DEFAULT_METRICS_INTERVAL_S
    api_version: str = c.DEFAULT_API_VERSION
    instance_id: str | None = None
    sum_column: str | None = None  # None: the consumer's default

    def settings(self) -> c.ConsumerSettings:
        """The connector's settings: every field checked, the properties file read and vetted."""
        return c.ConsumerSettings(
            bootstrap=self.bootstrap, topic=self.topic, group=self.group, dsn=self.dsn,
            table=c.parse_table(self.table), org_id=c.normalize_org_id(self.org_id),
            until_caught_up=self.until_caught_up, reset_offsets=self.reset_offsets,
            kafka_config=c.parse_kafka_config(self.kafka_config_file) if self.kafka_config_file else {},
            fields=self.fields, batch_size=self.batch_size, deadline_s=self.deadline_s,
            metrics_interval_s=self.metrics_interval_s, api_version=self.api_version, instance_id=self.instance_id,
            sum_column=self.sum_column or c.DEFAULT_SUM_COLUMN,
        )


def run(req: ConsumeRequest, *, report: Callable[[str], None] | None = None) -> c.ConsumeResult:
    """Consume until stopped (or caught up): see :mod:`engine.connectors.kafka.consumer`."""
    return c.run(req.settings(), report=report)
