"""`recon consume`: the idempotent Kafka-to-PostgreSQL consumer (the use case is `engine.app.consume`, the consumer `engine.connectors.kafka.consumer`)."""

from __future__ import annotations

from typing import Annotated

import typer

from engine.cli.options import (
    AmountField,
    EventTimeField,
    EventTypeField,
    KafkaConfigOpt,
    OrgIdField,
    RecordIdField,
)

_TUNING = "Tuning"
#: the consumer's settings and the options that set them (its errors name the setting)
_OPTIONS = {"bootstrap": "--bootstrap", "group": "--group", "dsn": "--dsn", "table": "--table",
            "batch_size": "--batch-size", "deadline_s": "--deadline", "metrics_interval_s": "--metrics-interval",
            "api_version": "--api-version", "sum_column": "--sum-column"}


def register(app: typer.Typer) -> None:
    app.command("consume")(consume)


def consume(
    bootstrap: Annotated[str, typer.Option("--bootstrap", help="Kafka bootstrap servers, host:port[,host:port].")],
    topic: Annotated[str, typer.Option("--topic", help="Topic to consume.")],
    group: Annotated[str, typer.Option("--group", help="Consumer group (members share the partitions).")],
    dsn: Annotated[str, typer.Option("--dsn", help="libpq URI of PostgreSQL; the password comes from PGPASSWORD/PGPASSFILE.")],
    table: Annotated[str, typer.Option("--table", help="Events table schema.table (primary key event_id); created with "
                                                      "its _aggregates, _dead_letters and _offsets tables when missing.")],
    org_id: Annotated[str | None, typer.Option("--org-id", help="Salesforce org id; events of any other org are "
                                                                "dead-lettered (default: no org guard).")] = None,
    until_caught_up: Annotated[bool, typer.Option("--until-caught-up", help="Exit 0 once every assigned partition "
                                                                             "reached its end (partition EOF).")] = False,
    reset_offsets: Annotated[str | None, typer.Option("--reset-offsets", metavar="earliest",
                                                      help="'earliest': forget the offsets stored in PostgreSQL and "
                                                           "replay the topic (a deliberate replay changes nothing).")] = None,
    kafka_config: KafkaConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the counters (this run and persisted totals) as JSON.")] = False,
    record_id_field: RecordIdField = "account_id",
    event_type_field: EventTypeField = "event_type",
    event_time_field: EventTimeField = "event_ts",
    amount_field: AmountField = "amount",
    org_id_field: OrgIdField = "org_id",
    batch_size: Annotated[int, typer.Option("--batch-size", rich_help_panel=_TUNING,
                                            help="Messages per batch (one PostgreSQL transaction each).")] = 10_000,
    deadline: Annotated[float, typer.Option("--deadline", rich_help_panel=_TUNING,
                                            help="Seconds PostgreSQL or Kafka may stay unreachable before exit 5.")] = 60.0,
    metrics_interval: Annotated[float, typer.Option("--metrics-interval", rich_help_panel=_TUNING,
                                                    help="Seconds between metrics lines on stderr (0: off).")] = 10.0,
    api_version: Annotated[str, typer.Option("--api-version", rich_help_panel=_TUNING,
                                             help="Salesforce API version recorded in each event's lineage.")] = "59.0",
    sum_column: Annotated[str | None, typer.Option("--sum-column", help="Column of the _aggregates table that "
                                                   "sums each record's amounts (default: the consumer's).")] = None,
    instance_id: Annotated[str | None, typer.Option("--instance-id", rich_help_panel=_TUNING,
                                                    help="Static group membership id for a singleton worker: a "
                                                         "restarted member gets its partitions back at once.")] = None,
) -> None:
    """Consume a topic into PostgreSQL exactly once: duplicates skipped, poison dead-lettered, offsets stored with the data."""
    from engine.app import consume as use_case
    from engine.cli._shared import emit_json, naming_options
    from engine.core.errors import UsageError
    from engine.core.events import EventFields

    if reset_offsets is not None and reset_offsets != "earliest":
        raise UsageError(f"--reset-offsets {reset_offsets!r}: only 'earliest' is supported (a full replay)")
    req = use_case.ConsumeRequest(
        bootstrap=bootstrap, topic=topic, group=group, dsn=dsn, table=table, org_id=org_id,
        until_caught_up=until_caught_up, reset_offsets=reset_offsets is not None, kafka_config_file=kafka_config,
        fields=EventFields(record_id=record_id_field, event_type=event_type_field, event_time=event_time_field,
                           amount=amount_field, org_id=org_id_field),
        batch_size=batch_size, deadline_s=deadline, metrics_interval_s=metrics_interval, api_version=api_version,
        instance_id=instance_id, sum_column=sum_column,
    )
    with naming_options(**_OPTIONS):
        result = use_case.run(req, report=_metrics_line)
    if as_json:
        emit_json(result.as_dict())
        return
    from engine.cli._shared import out

    r, t = result.run, result.totals
    out.print(f"{result.topic} → {result.table} ({result.stopped_by}, {result.elapsed_s:.1f} s)")
    out.print(f"{'':14}{'this run':>14}{'total':>14}")
    for name in ("consumed", "applied", "duplicates", "dead_letters", "conflicts"):
        out.print(f"{name:14}{getattr(r, name):>14,}{getattr(t, name):>14,}")


def _metrics_line(line: str) -> None:
    """One unwrapped line on stderr: log collectors and schedulers read it whole."""
    import sys

    sys.stderr.write(line + "\n")
    sys.stderr.flush()
