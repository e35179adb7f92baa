"""What one ``recon consume`` run is told: the options, validated, and the Kafka client's configuration.

Owns the constants every other part of the consumer shares (defaults, limits, Kafka's timestamp
type names), the events table reference, the ``--org-id``/``--kafka-config``/``--dsn`` checks and
the package's logger. Nothing here connects to Kafka or PostgreSQL.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from engine.connectors.kafka.client import fast_rejoin_consumer_config, read_kafka_properties
from engine.connectors.kafka.scan import EventFields
from engine.core.errors import UsageError
from engine.core.events import MAX_EVENT_TYPE_LEN
from engine.core.sfid import to18

# The package's logger, under the name it had when the consumer was one module
# (``engine.connectors.kafka.consumer``), so that logging configured by name still applies.
log = logging.getLogger(__name__.rpartition(".")[0])
# A library logs only where the application says: without these, logging's last-resort handler
# would print warnings (and librdkafka's connection chatter) on stderr next to the CLI's one-line
# errors. Operator-facing notices go through the ``report`` callback of :func:`run` instead.
log.addHandler(logging.NullHandler())
logging.getLogger(log.name + ".librdkafka").addHandler(logging.NullHandler())

#: The Salesforce API version recorded in every event's lineage. It mirrors
#: ``engine.connectors.salesforce.client.DEFAULT_API_VERSION`` (not imported: that module pulls in the
#: Salesforce client, which the consumer does not need).
DEFAULT_API_VERSION: Final[str] = "59.0"
#: the aggregates table's column holding each record's sum of amounts (the scenario's CLV)
DEFAULT_SUM_COLUMN: Final[str] = "clv"
_OTHER_AGGREGATE_COLUMNS: Final[frozenset[str]] = frozenset({"record_id", "event_count", "last_event_ts", "updated_at"})
DEFAULT_BATCH_SIZE: Final[int] = 10_000
DEFAULT_DEADLINE_S: Final[float] = 60.0
DEFAULT_METRICS_INTERVAL_S: Final[float] = 10.0
#: Companion tables get these suffixes; PostgreSQL truncates identifiers at 63 bytes, so the
#: events table name may use at most 63 - len("_dead_letters") bytes.
_SUFFIXES: Final[tuple[str, ...]] = ("_aggregates", "_dead_letters", "_offsets")
_MAX_TABLE_NAME: Final[int] = 63 - max(len(s) for s in _SUFFIXES)
#: librdkafka properties the consumer owns: letting a properties file change them would silently
#: break the exactly-once design (auto commit, EOF detection) or contradict an option.
_MANAGED_KAFKA_KEYS: Final[frozenset[str]] = frozenset({
    "bootstrap.servers", "metadata.broker.list", "group.id", "enable.auto.commit",
    "enable.auto.offset.store", "enable.partition.eof", "auto.offset.reset",
})
_CONSUME_TIMEOUT_S: Final[float] = 0.25
_MAX_EVENT_TYPE_LEN: Final[int] = MAX_EVENT_TYPE_LEN  # the one event rule's (engine.core.events)
_MAX_DETAIL_LEN: Final[int] = 500

# Kafka timestamp types as confluent-kafka reports them (TIMESTAMP_NOT_AVAILABLE, CREATE_TIME,
# LOG_APPEND_TIME), and Kafka's own names for them in the lineage.
_TS_TYPE_NAMES: Final[Mapping[int, str]] = {0: "NotAvailable", 1: "CreateTime", 2: "LogAppendTime"}


# ---------------------------------------------------------------------------------------------
# options


# one definition of the event's field names for every command that reads events
FieldNames = EventFields


@dataclass(frozen=True)
class TableRef:
    """The events table ``schema.name`` and its companion tables, as safe SQL identifiers."""

    schema: str
    name: str

    def ident(self, suffix: str = "") -> Any:
        from psycopg import sql

        return sql.Identifier(self.schema, self.name + suffix)

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}"


def parse_table(text: str) -> TableRef:
    """``schema.table`` (or ``table``, in schema ``public``) → :class:`TableRef`.

    Names are used verbatim (case kept) and always quoted, so anything PostgreSQL allows in a
    quoted identifier works; the table name is limited so that its companions fit in 63 bytes.
    """
    raw = (text or "").strip()
    parts = raw.split(".")
    if len(parts) == 1:
        parts = ["public", parts[0]]
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise UsageError(f"table name {raw!r} is not schema.table, e.g. warehouse.clv_events", field="table")
    schema, name = (p.strip() for p in parts)
    for part in (schema, name):
        if "\x00" in part or '"' in part:
            raise UsageError(f"table name {raw!r}: names must not contain quotes or NUL characters", field="table")
    if len(schema.encode()) > 63:
        raise UsageError(f"table name {raw!r}: the schema name is longer than 63 bytes", field="table")
    if len(name.encode()) > _MAX_TABLE_NAME:
        raise UsageError(f"table name {raw!r}: the table name may have at most {_MAX_TABLE_NAME} bytes, so that "
                         f"{name}_dead_letters still fits PostgreSQL's 63-byte identifiers", field="table")
    return TableRef(schema, name)


def normalize_org_id(text: str | None) -> str | None:
    """The 18-character form of an organization id (``00D…``), or None when the guard is off."""
    if text is None or not text.strip():
        return None
    value = text.strip()
    try:
        org = to18(value)
    except ValueError:
        raise UsageError(f"--org-id {value!r} is not a Salesforce organization id (15 or 18 characters, "
                         "starting with 00D)") from None
    if not org.startswith("00D"):
        raise UsageError(f"--org-id {value!r} is not an organization id: those start with 00D")
    return org


def parse_kafka_config(path: str | Path) -> dict[str, str]:
    """The ``--kafka-config`` properties file (grammar and errors:
    ``engine.connectors.kafka.client.read_kafka_properties``), minus what the consumer manages.

    Properties the consumer manages itself (group, bootstrap, commit and EOF settings) are refused
    with a pointer to the option that sets them: a file changing them would silently break the
    exactly-once design. Values are never echoed: such files hold SASL passwords.
    """
    props = read_kafka_properties(path)
    for lineno, key, _ in props:
        if key in _MANAGED_KAFKA_KEYS:
            hint = {"bootstrap.servers": "--bootstrap", "metadata.broker.list": "--bootstrap",
                    "group.id": "--group", "auto.offset.reset": "--reset-offsets"}.get(key)
            fix = f"use {hint}" if hint else "recon consume manages it (offsets live in PostgreSQL)"
            raise UsageError(f"--kafka-config {Path(path)}, line {lineno}: property {key!r} cannot be set here: {fix}")
    return {key: value for _, key, value in props}


@dataclass(frozen=True)
class ConsumerSettings:
    """Everything one ``recon consume`` run needs, validated on construction."""

    bootstrap: str
    topic: str
    group: str
    dsn: str
    table: TableRef
    org_id: str | None = None
    until_caught_up: bool = False
    reset_offsets: bool = False
    #: librdkafka properties of the --kafka-config file: SASL/SSL secrets, so never in a repr
    kafka_config: Mapping[str, str] = field(default_factory=dict, repr=False)
    fields: FieldNames = field(default_factory=FieldNames)
    batch_size: int = DEFAULT_BATCH_SIZE
    deadline_s: float = DEFAULT_DEADLINE_S
    metrics_interval_s: float = DEFAULT_METRICS_INTERVAL_S
    api_version: str = DEFAULT_API_VERSION
    instance_id: str | None = None
    #: libpq password file of the PostgreSQL connection (else PGPASSWORD, PGPASSFILE, ~/.pgpass)
    passfile: str | None = None
    #: the aggregates column that sums the amounts per record
    sum_column: str = DEFAULT_SUM_COLUMN

    def __post_init__(self) -> None:
        if not self.bootstrap.strip():
            raise UsageError("the Kafka bootstrap address is empty: give host:port of a broker", field="bootstrap")
        if not re.fullmatch(r"[a-zA-Z0-9._-]{1,249}", self.topic or "") or self.topic in (".", ".."):
            raise UsageError(f"--topic {self.topic!r} is not a valid Kafka topic name")
        if not self.group.strip():
            raise UsageError("the consumer group name is empty", field="group")
        if not 1 <= self.batch_size <= 1_000_000:
            raise UsageError(f"batch size {self.batch_size} must be between 1 and 1000000", field="batch_size")
        if not self.deadline_s > 0:
            raise UsageError(f"deadline {self.deadline_s} must be a positive number of seconds", field="deadline_s")
        if self.metrics_interval_s < 0:
            raise UsageError(f"metrics interval {self.metrics_interval_s} must be >= 0 seconds (0 turns the metrics "
                             "line off)", field="metrics_interval_s")
        if not re.fullmatch(r"v?\d{1,3}\.\d", self.api_version.strip()):
            raise UsageError(f"{self.api_version!r} is not a Salesforce API version like 59.0", field="api_version")
        if (not re.fullmatch(r"[a-z_][a-z0-9_]*", self.sum_column) or len(self.sum_column.encode()) > 63
                or self.sum_column in _OTHER_AGGREGATE_COLUMNS):
            raise UsageError(f"sum column {self.sum_column!r} must be a lower-case column name (letters, digits, _; "
                             f"at most 63 bytes) other than {', '.join(sorted(_OTHER_AGGREGATE_COLUMNS))}",
                             field="sum_column")
        _check_dsn(self.dsn)

    @property
    def dsn_display(self) -> str:
        """host:port/db of the DSN, for messages (never the password)."""
        return _dsn_display(self.dsn)


def _check_dsn(dsn: str) -> None:
    from psycopg import conninfo

    try:
        d = conninfo.conninfo_to_dict(dsn)
    except Exception:  # psycopg.ProgrammingError; the message may quote the DSN, so it is not shown
        raise UsageError("the PostgreSQL DSN is not a valid libpq connection string (e.g. "
                         "postgresql://user@host:5432/db; the password comes from PGPASSWORD or PGPASSFILE)",
                         field="dsn") from None
    port = str(d.get("port") or "")
    if port and not all(x.strip().isdigit() for x in port.split(",")):
        raise UsageError(f"the PostgreSQL DSN's port {port!r} is not a number", field="dsn")


def _dsn_display(dsn: str) -> str:
    from psycopg import conninfo

    try:
        d = conninfo.conninfo_to_dict(dsn)
    except Exception:
        return "(invalid DSN)"
    host = str(d.get("host") or "localhost")
    return f"{host}:{d.get('port') or 5432}/{d.get('dbname') or d.get('user') or ''}"


def consumer_config(settings: ConsumerSettings) -> dict[str, Any]:
    """The librdkafka configuration of the consumer (without callbacks).

    Offsets are stored in PostgreSQL, so Kafka's auto commit and offset store are off; the
    fast-rejoin settings let a restarted member get its partitions back in seconds; partition EOF
    events tell ``--until-caught-up`` where the end is (watermarks lie on some brokers).
    """
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap,
        "client.id": "recon-consume",
        "isolation.level": "read_committed",
        "fetch.wait.max.ms": 100,
        **fast_rejoin_consumer_config(settings.instance_id),
    }
    conf.update(settings.kafka_config)
    conf.update({
        "group.id": settings.group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
    })
    return conf
