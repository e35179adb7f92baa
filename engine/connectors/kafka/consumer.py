"""The idempotent Kafka-to-PostgreSQL consumer behind ``recon consume``.

Why it cannot double count
--------------------------
The incident was a producer replaying a block of events: Kafka held two copies of each, at two
different offsets, and the warehouse summed both. Kafka's own exactly-once machinery cannot help a
sink with that (the producer's sequence numbers are invisible to consumers, and a copy sitting at
another offset is a *new* message to Kafka). So the sink makes duplicates irrelevant:

* every event gets its business id from ``engine.core.ids`` (UUIDv5 over org id, record id, event
  type and event time: :func:`engine.core.ids.event_ids`, or the same bytes hashed column-wise by
  :func:`_fast_rows`), so two copies of one event have one id wherever they sit;
* one PostgreSQL transaction per batch: the batch's new events are COPYed straight into the
  events table, the per-record aggregates are upserted from exactly those new rows, and dead
  letters, the *next* offset of every partition (``msg.offset() + 1``, never a logical offset)
  and the running counters go into the same transaction. Which events are new is decided by the
  primary key: the COPY is first tried as is, under a savepoint (a replay is rare and comes in a
  block, so almost every batch has no stored event); if the key rejects an id, the savepoint is
  undone, the batch's ids are looked up (one ``= ANY(array)`` probe), the stored ones counted as
  duplicates and the rest COPYed, and the next batches probe first until a probe finds nothing.
  A crash at any point loses nothing and repeats nothing: either the whole batch and its offsets
  are committed, or neither is;
* offsets live in PostgreSQL, not in Kafka: on assignment the consumer seeks to the stored offsets
  (Kafka commits are made after the database commit and are informational only, for lag tools);
* the stored offset row of a partition is also a fence (locked ``FOR UPDATE`` in the batch's
  transaction). A batch is written for a partition only if the stored offset is exactly where the
  batch continues from; otherwise another member (after a rebalance, or a zombie of one) got there
  first, the partition's part of the batch is dropped and the consumer seeks to the stored
  offset. That keeps even the *counters* exact when two members of a group race, not just the
  events.

Fetching and transforming batch N+1 overlaps writing batch N (one writer thread, one batch in
flight; the polling thread also prepares the COPY text, so the writer only sends); a rebalance
waits for the batch in flight before partitions change hands. The transformation is column-wise
(Polars) for messages in the producers' shape, and the interpreter's GC and thread switch
interval are tuned for the run (see ``_runtime_tuning``): both measured, in ``bench/RESULTS.md``.

The accounting is part of the schema: the offsets table has a CHECK constraint
``consumed = applied + duplicates + dead_letters`` per partition, ``applied`` equals the rows the
consumer inserted and ``dead_letters`` the dead-letter rows it stored. A redelivered event (same
event id) and a redelivered poison message (same topic/partition/offset, already dead-lettered)
both count as ``duplicates``: deliveries that changed nothing.

Tables, next to the events table ``S.T`` (all created when missing):

* ``S.T`` — ``event_id uuid`` primary key, ``org_id``, ``record_id``, ``event_type``,
  ``event_ts``, ``amount numeric``, ``lineage jsonb``, ``ingested_at``;
* ``S.T_aggregates`` — per record: ``record_id``, ``clv`` (sum of amounts), ``event_count``,
  ``last_event_ts``, ``updated_at``;
* ``S.T_dead_letters`` — keyed by (``kafka_topic``, ``kafka_partition``, ``kafka_offset``), with
  the raw ``key``/``value`` bytes, the headers, ``reason`` and ``detail``;
* ``S.T_offsets`` — per (``kafka_topic``, ``kafka_partition``): ``next_offset`` and the counters.

The transformation is pure (:func:`transform`): Kafka messages in, COPY text and dead letters
out, so it is unit-tested without services and its source is part of the lineage digest.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gc
import hashlib
import inspect
import json
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import polars as pl

from engine.connectors.kafka.client import fast_rejoin_consumer_config
from engine.connectors.kafka.scan import EventFields
from engine.core.errors import ReconError, ServiceUnreachable, UsageError, kafka_config_error
from engine.core.ids import NAMESPACE, canonical_time, event_ids, name_expr
from engine.core.sfid import to18

__all__ = [
    "DEFAULT_API_VERSION",
    "Batch",
    "ConsumeResult",
    "ConsumerSettings",
    "Counters",
    "DeadLetter",
    "FieldNames",
    "Sink",
    "TableRef",
    "consumer_config",
    "normalize_org_id",
    "parse_kafka_config",
    "parse_table",
    "run",
    "transform",
    "transform_digest",
]

log = logging.getLogger(__name__)
# A library logs only where the application says: without these, logging's last-resort handler
# would print warnings (and librdkafka's connection chatter) on stderr next to the CLI's one-line
# errors. Operator-facing notices go through the ``report`` callback of :func:`run` instead.
log.addHandler(logging.NullHandler())
logging.getLogger(__name__ + ".librdkafka").addHandler(logging.NullHandler())

#: The Salesforce API version recorded in every event's lineage. It mirrors
#: ``engine.connectors.salesforce.client.DEFAULT_API_VERSION`` (not imported: that module pulls in the
#: Salesforce client, which the consumer does not need).
DEFAULT_API_VERSION: Final[str] = "59.0"
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
_MAX_EVENT_TYPE_LEN: Final[int] = 255
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
        raise UsageError(f"--table {raw!r} is not schema.table, e.g. --table warehouse.clv_events")
    schema, name = (p.strip() for p in parts)
    for part in (schema, name):
        if "\x00" in part or '"' in part:
            raise UsageError(f"--table {raw!r}: names must not contain quotes or NUL characters")
    if len(schema.encode()) > 63:
        raise UsageError(f"--table {raw!r}: the schema name is longer than 63 bytes")
    if len(name.encode()) > _MAX_TABLE_NAME:
        raise UsageError(f"--table {raw!r}: the table name may have at most {_MAX_TABLE_NAME} bytes, so that "
                         f"{name}_dead_letters still fits PostgreSQL's 63-byte identifiers")
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
    """Read a librdkafka properties file (``key=value`` or ``key: value``; ``#``/``!`` comments).

    Values are never echoed in errors: such files hold SASL passwords. Properties the consumer
    manages itself (group, bootstrap, commit and EOF settings) are refused with a pointer to the
    option that sets them.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--kafka-config {p}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--kafka-config {p}: cannot read it ({type(exc).__name__})") from None
    conf: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s[0] in "#!":
            continue
        m = re.match(r"^([^=:\s]+)\s*[=:]\s*(.*)$", s)
        if not m:
            raise UsageError(f"--kafka-config {p}, line {lineno}: expected key=value")
        key, value = m.group(1), m.group(2).strip()
        if key in _MANAGED_KAFKA_KEYS:
            hint = {"bootstrap.servers": "--bootstrap", "metadata.broker.list": "--bootstrap",
                    "group.id": "--group", "auto.offset.reset": "--reset-offsets"}.get(key)
            fix = f"use {hint}" if hint else "recon consume manages it (offsets live in PostgreSQL)"
            raise UsageError(f"--kafka-config {p}, line {lineno}: property {key!r} cannot be set here: {fix}")
        conf[key] = value
    return conf


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
    kafka_config: Mapping[str, str] = field(default_factory=dict)
    fields: FieldNames = field(default_factory=FieldNames)
    batch_size: int = DEFAULT_BATCH_SIZE
    deadline_s: float = DEFAULT_DEADLINE_S
    metrics_interval_s: float = DEFAULT_METRICS_INTERVAL_S
    api_version: str = DEFAULT_API_VERSION
    instance_id: str | None = None

    def __post_init__(self) -> None:
        if not self.bootstrap.strip():
            raise UsageError("--bootstrap is empty: give host:port of a broker")
        if not re.fullmatch(r"[a-zA-Z0-9._-]{1,249}", self.topic or "") or self.topic in (".", ".."):
            raise UsageError(f"--topic {self.topic!r} is not a valid Kafka topic name")
        if not self.group.strip():
            raise UsageError("--group is empty: give the consumer group name")
        if not 1 <= self.batch_size <= 1_000_000:
            raise UsageError(f"--batch-size {self.batch_size} must be between 1 and 1000000")
        if not self.deadline_s > 0:
            raise UsageError(f"--deadline {self.deadline_s} must be a positive number of seconds")
        if self.metrics_interval_s < 0:
            raise UsageError("--metrics-interval must be >= 0 (0 turns the metrics line off)")
        if not re.fullmatch(r"v?\d{1,3}\.\d", self.api_version.strip()):
            raise UsageError(f"--api-version {self.api_version!r} is not a Salesforce API version like 59.0")
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
        raise UsageError("--dsn is not a valid libpq connection string (e.g. postgresql://user@host:5432/db; "
                         "the password comes from PGPASSWORD or PGPASSFILE)") from None
    port = str(d.get("port") or "")
    if port and not all(x.strip().isdigit() for x in port.split(",")):
        raise UsageError(f"--dsn: port {port!r} is not a number")


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


# ---------------------------------------------------------------------------------------------
# the pure transformation: Kafka messages -> COPY rows and dead letters


@dataclass
class DeadLetter:
    """A message that cannot become an event, with why."""

    partition: int
    offset: int
    ts_ms: int | None
    ts_type: str
    key: bytes | None
    value: bytes | None
    headers_json: str
    reason: str
    detail: str


#: The event rows of a batch, one per message that became an event, in arrival order (offset
#: order within a partition). ``line`` is the row's whole COPY text line (event id first, lineage
#: JSON last, newline included); ``rec``/``amt``/``ts`` feed the aggregates of the rows actually
#: inserted; ``part`` is the partition the message was read from.
_ROW_SCHEMA: Final[dict[str, Any]] = {"id": pl.String, "line": pl.String, "part": pl.Int64, "rec": pl.String,
                                      "amt": pl.String, "ts": pl.String}
_ID_LEN: Final[int] = 36  # a canonical UUID: the first field of every COPY line


def _no_rows() -> pl.DataFrame:
    return pl.DataFrame(schema=_ROW_SCHEMA)


@dataclass(frozen=True)
class _Prepared:
    """What the writer sends for a batch's rows, computed before the batch is handed to it.

    The polling thread builds these while the writer thread is busy with the previous batch, so
    the writer only sends: PostgreSQL is not kept waiting while Python joins megabytes of text.
    ``rows`` has the batch's first copy of each event id (in-batch duplicates counted per
    partition in ``duplicates``); ``copy`` is their COPY text, ``aggregate`` the array literals of
    the aggregate upsert and ``applied`` their count per partition, all valid when none of the
    ids is stored yet (the writer's optimistic path). Rows are in event id order (the stored
    order of rows carries no meaning; which copy of a duplicate is kept is decided before).
    """

    rows: pl.DataFrame
    duplicates: dict[int, int]
    copy: bytes
    aggregate: tuple[str, str, str]
    applied: dict[int, int]

    @classmethod
    def of(cls, frame: pl.DataFrame) -> _Prepared:
        duplicates: dict[int, int] = {}
        if frame.height:
            # in-batch duplicates: the first copy (lowest offset of its partition) is the one kept
            first = frame.get_column("id").is_first_distinct()
            if not first.all():
                duplicates = _per_part(frame.filter(~first))
                frame = frame.filter(first)
            # in event id order: the primary key's B-tree then takes the batch's keys in one
            # ordered sweep instead of at random; measured 4.8 -> 4.1 µs of server CPU per row
            frame = frame.sort("id")
        return cls(frame, duplicates, *_payload(frame))


def _per_part(frame: pl.DataFrame) -> dict[int, int]:
    """Rows per partition."""
    return {int(p): int(n) for p, n in frame.get_column("part").value_counts().iter_rows()} if frame.height else {}


def _payload(frame: pl.DataFrame) -> tuple[bytes, tuple[str, str, str], dict[int, int]]:
    """COPY text, aggregate array literals and rows per partition of event rows.

    Joined by Polars, not Python: psycopg adapts a list element by element in Python (~1 µs
    each); the elements are validated ids, decimals and times that need no quoting in an array
    literal."""
    if not frame.height:
        return b"", ("{}", "{}", "{}"), {}
    copy = frame.get_column("line").str.join("").item().encode()
    # sorted by record: PostgreSQL's sort for the upsert's ORDER BY (lock order) then only
    # confirms it, ~0.1 µs per event less on the server, which is the pipeline's bottleneck
    by_rec = frame.select("rec", "amt", "ts").sort("rec")
    agg = tuple("{" + by_rec.get_column(c).str.join(",").item() + "}" for c in ("rec", "amt", "ts"))
    return copy, agg, _per_part(frame)  # type: ignore[return-value]


@dataclass
class Batch:
    """One consume() call, transformed.

    The event rows are columns (``frame``, see ``_ROW_SCHEMA``) rather than Python lists, so that
    the writer dedups, probes and COPYs a batch with a handful of vectorised operations instead
    of a few Python operations per row; ``row_msgs[i]`` is the Kafka message of frame row ``i``.
    The list views (``ids``, ``rows``, ``row_parts``, ...) are for tests and the one-by-one
    fallback. Dead letters are in arrival order. ``start[p]`` is the offset position the batch
    continues from on partition ``p`` (None: the partition's beginning): the batch may only be
    written for ``p`` while PostgreSQL still stores exactly that position. ``epoch[p]`` tells
    which assignment or seek of ``p`` the batch was read under, so a stale conflict report never
    triggers a second seek.
    """

    frame: pl.DataFrame = field(default_factory=_no_rows)
    row_msgs: list[Any] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    consumed: dict[int, int] = field(default_factory=dict)
    start: dict[int, int | None] = field(default_factory=dict)
    next_offset: dict[int, int] = field(default_factory=dict)
    epoch: dict[int, int] = field(default_factory=dict)
    eof: dict[int, bool] = field(default_factory=dict)
    errors: list[Any] = field(default_factory=list)
    _prepared: _Prepared | None = field(default=None, repr=False, compare=False)

    def prepared(self) -> _Prepared:
        """The writer's payload of the rows (computed once; see :class:`_Prepared`)."""
        if self._prepared is None:
            self._prepared = _Prepared.of(self.frame)
        return self._prepared

    @property
    def partitions(self) -> list[int]:
        return sorted(self.next_offset)

    def __len__(self) -> int:
        return sum(self.consumed.values())

    @property
    def ids(self) -> list[str]:
        """The event id of each row."""
        return self.frame.get_column("id").to_list()

    @property
    def rows(self) -> list[str]:
        """Each row's COPY text line after its event id (a tab first, the newline last)."""
        return self.frame.get_column("line").str.slice(_ID_LEN).to_list()

    @property
    def row_parts(self) -> list[int]:
        return self.frame.get_column("part").to_list()

    @property
    def row_records(self) -> list[str]:
        return self.frame.get_column("rec").to_list()

    @property
    def row_amounts(self) -> list[str]:
        return self.frame.get_column("amt").to_list()

    @property
    def row_times(self) -> list[str]:
        return self.frame.get_column("ts").to_list()

    def row(self, i: int) -> Batch:
        """Row ``i`` alone, as a batch of one message (the fallback writes those one by one)."""
        p, off = int(self.frame.get_column("part")[i]), self.row_msgs[i].offset()
        return Batch(frame=self.frame.slice(i, 1), row_msgs=[self.row_msgs[i]], consumed={p: 1},
                     next_offset={p: off + 1}, epoch={p: self.epoch[p]} if p in self.epoch else {})

    def only(self, keep: Callable[[int], bool]) -> Batch:
        """The part of the batch whose partitions pass ``keep`` (EOFs and errors are kept)."""
        parts = self.frame.get_column("part")
        kept = [p for p in parts.unique().to_list() if keep(p)]
        mask = parts.is_in(kept)
        return Batch(
            frame=self.frame.filter(mask), row_msgs=[m for m, k in zip(self.row_msgs, mask.to_list(), strict=True) if k],
            dead=[d for d in self.dead if keep(d.partition)],
            consumed={p: n for p, n in self.consumed.items() if keep(p)},
            start={p: o for p, o in self.start.items() if keep(p)},
            next_offset={p: o for p, o in self.next_offset.items() if keep(p)},
            epoch={p: e for p, e in self.epoch.items() if keep(p)},
            eof=dict(self.eof), errors=list(self.errors))


_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_NEEDS_ESCAPE = re.compile(r"[\\\t\n\r]")
_AMOUNT = re.compile(r"[+-]?[0-9]{1,38}(?:\.[0-9]{1,38})?")
_CANON_TS = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")


def _copy_text(s: str) -> str:
    """A value for COPY's text format (tabs, newlines and backslashes escaped)."""
    return s.translate(_ESCAPES) if _NEEDS_ESCAPE.search(s) else s


def _clean_text(b: bytes | None) -> str | None:
    """UTF-8 text PostgreSQL can store (no NUL, no invalid bytes), else None."""
    if b is None:
        return None
    try:
        s = b.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in s else s


def _headers_json(headers: Sequence[tuple[str, bytes | None]] | None) -> str:
    """Headers as a JSON array of ``{"key", "value"}`` (``value_base64`` for binary values)."""
    out: list[dict[str, Any]] = []
    for k, v in headers or ():
        name = k.replace("\x00", "\\u0000") if isinstance(k, str) else repr(k)
        text = _clean_text(v)
        if v is None:
            out.append({"key": name, "value": None})
        elif text is not None:
            out.append({"key": name, "value": text})
        else:
            out.append({"key": name, "value_base64": base64.b64encode(v).decode("ascii")})
    return json.dumps(out, ensure_ascii=False) if out else "[]"


def _detail(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL_LEN else text[: _MAX_DETAIL_LEN - 1] + "…"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for the whole process: json.loads(..., parse_float=...) would build a new one per
# call (a third of the parse time). Floats stay text so that amounts are exact decimals.
_DECODER = json.JSONDecoder(parse_float=str, parse_constant=_reject_constant)
_SCAN = _DECODER.scan_once


def _parse(value: bytes) -> Any:
    """The JSON value of a message (UTF-8). The common compact ``{...}`` takes the C scanner
    directly; anything else (whitespace around it, another type) goes through the full decoder."""
    s = value.decode("utf-8")
    if s[:1] == "{":
        try:
            obj, end = _SCAN(s, 0)
        except StopIteration:
            raise ValueError("not JSON") from None
        if end == len(s):
            return obj
    return _DECODER.decode(s)


_id18_cache: dict[str, str | None] = {}
_event_types: dict[str, str | None] = {}


def _event_type_copy(typ: Any) -> str | None:
    """The event type escaped for COPY, or None when it is not a storable non-empty text (too long,
    NUL, lone surrogate). Cached: a stream has a handful of event types."""
    if type(typ) is not str:
        return None
    r = _event_types.get(typ, "")
    if r != "":
        return r
    if not typ or len(typ) > _MAX_EVENT_TYPE_LEN or "\x00" in typ or (not typ.isascii() and not _encodable(typ)):
        r = None
    else:
        r = _copy_text(typ)
    if len(_event_types) > 10_000:
        _event_types.clear()
    _event_types[typ] = r
    return r


def _id18(value: Any) -> str | None:
    """18-character Salesforce id or None; cached, because ids repeat heavily in a stream."""
    if type(value) is not str:
        return None
    r = _id18_cache.get(value, "")
    if r == "":
        try:
            r = to18(value)
        except ValueError:
            r = None
        if len(_id18_cache) > 1_000_000:
            _id18_cache.clear()
        _id18_cache[value] = r
    return r


#: Off only in tests, which compare the vectorised path with the per-message one row for row.
_FAST_PATH: bool = True


def transform(messages: Iterable[Any], fields: FieldNames, org_guard: str | None,
              positions: Mapping[int, int | None] | None = None, api_version: str = DEFAULT_API_VERSION) -> Batch:
    """Turn consumed messages into COPY rows of the events table, and dead letters.

    Pure and deterministic: the same messages always give the same rows, which is what makes a
    replay land on the same event ids. ``org_guard`` is the 18-character org id whose events are
    accepted (None: any org). Messages carrying errors are partition-EOF events (recorded in
    ``eof``) or client errors (in ``errors``, for the caller to judge).

    ``positions`` (partition → next offset this consumer has read up to, None or absent for the
    partition's beginning) becomes the batch's ``start``. Messages below it, and repeats of an
    offset within the batch, are dropped: around a rebalance librdkafka can hand out messages
    prefetched for the previous assignment next to the re-fetched ones, and an offset must be
    counted once. Offsets only grow within a partition, so this never drops a new message.

    Two paths give the same rows. Messages in the shape producers write (compact JSON with the
    five fields in order, plain ASCII values, the org-id/producer-id/sequence headers) go through
    :func:`_fast_rows`, column-wise: per message only the Kafka accessors and SHA-1 run in Python.
    Every other message takes the per-message path below, which decides dead letters. The
    lineage JSON of each row is written here, as text, rather than by ``jsonb_build_object`` in
    the insert: PostgreSQL spent about 5 µs per row on that.
    """
    b = Batch()
    kept, kparts, koffs = _positions(messages, b, positions)
    tails_by_topic: dict[str, str] = {}
    api = json.dumps(api_version.lstrip("vV"))
    digest = transform_digest()
    fast: pl.DataFrame | None = None
    slow: Iterable[int] = range(len(kept))
    if _FAST_PATH and kept:
        fast, slow = _fast_rows(kept, kparts, koffs, fields, org_guard, api, digest)
    f_org, f_rec, f_typ, f_ts, f_amt = (fields.org_id, fields.record_id, fields.event_type,
                                        fields.event_time, fields.amount)
    parse = _parse
    id18 = _id18
    canon_match = _CANON_TS.fullmatch
    amount_match = _AMOUNT.fullmatch
    event_type_copy = _event_type_copy
    orgs: list[str] = []
    recs: list[str] = []
    typs: list[str] = []
    tss: list[str] = []
    amts: list[str] = []
    tails: list[str] = []
    parts: list[int] = []
    idx: list[int] = []
    frag = _json_fragment
    dead = b.dead

    for i in slow:
        m, p, off = kept[i], kparts[i], koffs[i]
        value = m.value()
        reason = detail = ""
        try:
            d = parse(value) if value is not None else None
        except (ValueError, TypeError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            d = None
            reason, detail = "unparsable", _detail(f"not JSON: {exc}")
        if type(d) is not dict:
            if not reason:
                reason = "unparsable"
                detail = "no value (tombstone)" if value is None else f"JSON {type(d).__name__}, not an object"
        else:
            org, rec, typ, ts, amt = (d.get(f_org), d.get(f_rec), d.get(f_typ), d.get(f_ts), d.get(f_amt))
            if org is None or rec is None or typ is None or ts is None or amt is None:
                missing = [n for n, v in ((f_org, org), (f_rec, rec), (f_typ, typ), (f_ts, ts), (f_amt, amt))
                           if v is None]
                reason, detail = "missing_field", "missing or null: " + ", ".join(missing)
            elif (org18 := id18(org)) is None:
                reason, detail = "invalid_org_id", _detail(f"{f_org} {org!r} is not a Salesforce id")
            elif org_guard is not None and org18 != org_guard:
                reason, detail = "foreign_org", f"{f_org} {org18} is not {org_guard}"
            elif (rec18 := id18(rec)) is None:
                reason, detail = "invalid_record_id", _detail(f"{f_rec} {rec!r} is not a Salesforce id")
            elif (typ_c := event_type_copy(typ)) is None:
                reason, detail = "invalid_event_type", _detail(f"{f_typ} {typ!r} is not a non-empty text "
                                                               f"of at most {_MAX_EVENT_TYPE_LEN} characters")
            elif (ts_c := ts if type(ts) is str and canon_match(ts) and ts.isascii()
                  else _canonical_ts(ts, canon_match)) is None:
                reason, detail = "invalid_event_time", _detail(f"{f_ts} {ts!r} is not an ISO-8601 time")
            else:
                if type(amt) is int:
                    amt = str(amt)
                if type(amt) is not str or amount_match(amt) is None:
                    reason, detail = "invalid_amount", _detail(f"{f_amt} {amt!r} is not a decimal number")
                else:
                    h_org = h_pid = h_seq = None  # JSON string literals of the known headers
                    extra = None
                    hdrs = m.headers()
                    if hdrs:
                        for hk, hv in hdrs:
                            if hk == "org-id":
                                h_org = frag(hv)
                            elif hk == "producer-id":
                                h_pid = frag(hv)
                            elif hk == "sequence":
                                h_seq = f'"{hv.decode("ascii")}"' if hv is not None and hv.isdigit() else frag(hv)
                            else:
                                if extra is None:
                                    extra = {}
                                t = _clean_text(hv)
                                extra[hk.replace("\x00", "\\u0000")] = (
                                    t if t is not None or hv is None
                                    else {"base64": base64.b64encode(hv).decode("ascii")})
                    if (org_guard is not None and h_org is not None
                            and id18(h_org_raw := json.loads(h_org.replace("\\\\", "\\"))) not in (None, org_guard)):
                        reason, detail = "foreign_org", _detail(f"header org-id {h_org_raw!r} is not {org_guard}")
                    else:
                        # lineage: JSON text (jsonb normalises key order), one COPY field
                        if extra is None:
                            if h_org is not None and h_pid is not None and h_seq is not None:
                                hj = f'{{"org-id":{h_org},"producer-id":{h_pid},"sequence":{h_seq}}}'
                            else:
                                hj = "{" + ",".join(f'"{n}":{v}' for n, v in (("org-id", h_org), ("producer-id", h_pid),
                                                                              ("sequence", h_seq)) if v is not None) + "}"
                        else:
                            extra.update({n: json.loads(v.replace("\\\\", "\\")) for n, v in (
                                ("org-id", h_org), ("producer-id", h_pid), ("sequence", h_seq)) if v is not None})
                            hj = json.dumps(extra, ensure_ascii=True, sort_keys=True).replace("\\", "\\\\")
                        ts_type, ts_ms = m.timestamp()
                        key = m.key()
                        if key is None:
                            kj = ""
                        elif (kf := frag(key)) is not None:
                            kj = ',"key":' + kf
                        else:
                            kj = f',"key_base64":"{base64.b64encode(key).decode("ascii")}"'
                        tail = tails_by_topic.get(topic := m.topic())
                        if tail is None:
                            tail = tails_by_topic[topic] = _lineage_tail(topic, api, digest)
                        lineage = (f'{{"partition":{p},"offset":{off},"timestamp":{ts_ms},"timestamp_type":'
                                   f'"{_TS_TYPE_NAMES[ts_type]}"{kj},"headers":{hj}{tail}' if ts_type in (1, 2) else
                                   f'{{"partition":{p},"offset":{off},"timestamp_type":"NotAvailable"'
                                   f'{kj},"headers":{hj}{tail}')
                        orgs.append(org18)
                        recs.append(rec18)
                        typs.append(typ)
                        tss.append(ts_c)
                        amts.append(amt)
                        parts.append(p)
                        idx.append(i)
                        tails.append(f"\t{org18}\t{rec18}\t{typ_c}\t{ts_c}\t{amt}\t{lineage}\n")
                        continue
        ts_type, ts_ms = m.timestamp()
        dead.append(DeadLetter(p, off, ts_ms if ts_type else None, _TS_TYPE_NAMES.get(ts_type, "NotAvailable"),
                               m.key(), value, _headers_json(m.headers()), reason, detail))

    ids = event_ids(orgs, recs, typs, tss) if orgs else []
    # every field was validated above, so no id can be None; a None here is a bug, never a dead letter
    if None in ids:  # pragma: no cover - defensive
        raise RuntimeError("event_ids rejected a validated event")
    frame = pl.DataFrame({"idx": idx, "id": ids, "line": [e + t for e, t in zip(ids, tails, strict=True)],  # type: ignore[operator]
                          "part": parts, "rec": recs, "amt": amts, "ts": tss},
                         schema={"idx": pl.Int64, **_ROW_SCHEMA})
    if fast is not None and fast.height:
        frame = fast if not idx else pl.concat([fast, frame]).sort("idx")
    b.row_msgs = kept if frame.height == len(kept) else [kept[i] for i in frame.get_column("idx").to_list()]
    b.frame = frame.drop("idx")
    return b


def _lineage_tail(topic: str, api: str, digest: str) -> str:
    """The end of every lineage JSON of a topic: the fields that do not vary per message."""
    return f',"topic":{json.dumps(topic)},"api_version":{api},"transform_digest":"{digest}","event_id_layout":1}}'


def _positions(messages: Iterable[Any], b: Batch,
               positions: Mapping[int, int | None] | None) -> tuple[list[Any], list[int], list[int]]:
    """The messages to transform, with their partitions and offsets; fills the batch's ``eof``,
    ``errors``, ``consumed``, ``start`` and ``next_offset`` (see :func:`transform`).

    The usual batch (no error events, offsets increasing within each partition from where the
    consumer stands) is recognised with a few list and numpy operations; anything else is
    walked message by message.
    """
    msgs = messages if isinstance(messages, list) else list(messages)
    pos_in = positions or {}
    consumed, start, nxt, eof = b.consumed, b.start, b.next_offset, b.eof
    # not ``errors.count(None)``: KafkaError's == raises on None
    if msgs and set(map(type, [m.error() for m in msgs])) == {type(None)}:
        parts = [m.partition() for m in msgs]
        offs = [m.offset() for m in msgs]
        pa, oa = np.asarray(parts, dtype=np.int64), np.asarray(offs, dtype=np.int64)
        ok = True
        per: list[tuple[int, int, int]] = []
        for p in dict.fromkeys(parts):
            o = oa[pa == p]
            lo = pos_in.get(p)
            if (lo is not None and int(o[0]) < lo) or (len(o) > 1 and not bool((o[1:] > o[:-1]).all())):
                ok = False
                break
            per.append((p, len(o), int(o[-1]) + 1))
        if ok:
            for p, n, after in per:
                eof[p] = False
                consumed[p] = n
                start[p] = pos_in.get(p)
                nxt[p] = after
            return msgs, parts, offs
    pos: dict[int, int] = {p: o for p, o in pos_in.items() if o is not None}
    kept: list[Any] = []
    kparts: list[int] = []
    koffs: list[int] = []
    for m in msgs:
        err = m.error()
        if err is not None:
            if err.code() == -191:  # KafkaError._PARTITION_EOF
                eof[m.partition()] = True
            else:
                b.errors.append(err)
            continue
        p = m.partition()
        off = m.offset()
        if off < pos.get(p, -1):
            continue
        pos[p] = off + 1
        eof[p] = False
        if p in consumed:
            consumed[p] += 1
        else:
            consumed[p] = 1
            start[p] = pos_in.get(p)
        nxt[p] = off + 1
        kept.append(m)
        kparts.append(p)
        koffs.append(off)
    return kept, kparts, koffs


#: JSON string content that needs no escaping, in JSON nor in COPY text: printable ASCII without
#: the quote and the backslash. A value made only of these is its own JSON literal (in quotes).
_PLAIN: Final[str] = r'[ !#-\[\]-~]'
_SUFFIX_ALPHABET: Final[np.ndarray] = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345", dtype=np.uint8)
_HEADER_NAMES: Final[tuple[str, str, str]] = ("org-id", "producer-id", "sequence")


@functools.cache
def _fast_pattern(fields: FieldNames) -> str | None:
    """The regex of a message value the column-wise path takes: a JSON object with exactly the five
    fields in order (any JSON whitespace between tokens), each a string of plain characters
    (``_PLAIN``), the ids 18 characters, the time canonical and the amount a decimal; one capture
    group per value. For such a value ``json.loads`` gives exactly the captured texts, and every
    guard of the per-message path passes except the id checksums, which are checked column-wise.
    None when a field name is not a plain identifier (or names repeat): such names need escaping
    in JSON or in the regex, and those messages take the other path."""
    names = (fields.org_id, fields.record_id, fields.event_type, fields.event_time, fields.amount)
    if len(set(names)) != 5 or not all(re.fullmatch(r"[A-Za-z0-9_]+", n) for n in names):
        return None
    values = ("[0-9A-Za-z]{18}", "[0-9A-Za-z]{18}", f"{_PLAIN}{{1,{_MAX_EVENT_TYPE_LEN}}}", _CANON_TS.pattern,
              _AMOUNT.pattern)
    ws = "[ \\t\\n\\r]*"  # JSON's whitespace, allowed around every token as json.loads does
    members = f"{ws},{ws}".join(f'"{n}"{ws}:{ws}"({v})"' for n, v in zip(names, values, strict=True))
    return f"^{ws}\\{{{ws}{members}{ws}\\}}{ws}$"


def _valid18(ids: pl.Series) -> np.ndarray:
    """Per element of a column of 18-character ``[0-9A-Za-z]`` texts: is its case-safe suffix the
    one its first 15 characters give (what ``engine.core.sfid.to18`` checks), computed with numpy."""
    n = len(ids)
    if not n:
        return np.zeros(0, dtype=bool)
    buf = np.frombuffer(ids.str.join("").item().encode("ascii"), dtype=np.uint8).reshape(n, 18)
    upper = (buf[:, :15] >= ord("A")) & (buf[:, :15] <= ord("Z"))
    groups = upper.reshape(n, 3, 5).astype(np.int64) @ (1 << np.arange(5, dtype=np.int64))
    return (_SUFFIX_ALPHABET[groups] == buf[:, 15:]).all(axis=1)


_HEX_DIGITS: Final[np.ndarray] = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _uuid_texts(digests: bytes) -> pl.Series:
    """Canonical UUIDv5 texts from concatenated 20-byte SHA-1 digests, as ``engine.core.ids`` forms
    them (first 16 bytes, version 5, RFC 9562 variant), with NumPy instead of a Python f-string
    per id."""
    d = np.frombuffer(digests, dtype=np.uint8).reshape(-1, 20)[:, :16].copy()
    d[:, 6] = (d[:, 6] & 0x0F) | 0x50
    d[:, 8] = (d[:, 8] & 0x3F) | 0x80
    hexd = np.empty((len(d), 32), dtype=np.uint8)
    hexd[:, 0::2] = _HEX_DIGITS[d >> 4]
    hexd[:, 1::2] = _HEX_DIGITS[d & 0x0F]
    out = np.full((len(d), 36), ord("-"), dtype=np.uint8)
    for src, dst in ((slice(0, 8), slice(0, 8)), (slice(8, 12), slice(9, 13)), (slice(12, 16), slice(14, 18)),
                     (slice(16, 20), slice(19, 23)), (slice(20, 32), slice(24, 36))):
        out[:, dst] = hexd[:, src]
    return pl.Series(out.view("S36").ravel()).cast(pl.String)


def _standard_headers(hdrs: list[Any]) -> tuple[list[bytes], list[bytes], list[bytes], list[bool] | None]:
    """The org-id, producer-id and sequence header values, for messages whose headers are exactly
    those three in that order (``ok``: which ones are; None when all are), b"" for the others."""
    if None not in hdrs and set(map(len, hdrs)) == {3}:  # comprehensions: 3x faster than zip(*hdrs)
        if {(h[0][0], h[1][0], h[2][0]) for h in hdrs} == {_HEADER_NAMES}:
            v0, v1, v2 = [h[0][1] for h in hdrs], [h[1][1] for h in hdrs], [h[2][1] for h in hdrs]
            if None not in v0 and None not in v1 and None not in v2:
                return v0, v1, v2, None
    h0: list[bytes] = []
    h1: list[bytes] = []
    h2: list[bytes] = []
    ok: list[bool] = []
    for h in hdrs:
        if (h is not None and len(h) == 3 and (h[0][0], h[1][0], h[2][0]) == _HEADER_NAMES
                and h[0][1] is not None and h[1][1] is not None and h[2][1] is not None):
            h0.append(h[0][1])
            h1.append(h[1][1])
            h2.append(h[2][1])
            ok.append(True)
        else:
            h0.append(b"")
            h1.append(b"")
            h2.append(b"")
            ok.append(False)
    return h0, h1, h2, ok


def _ascii_text(values: list[bytes | None], ok: np.ndarray) -> pl.Series:
    """Bytes as a text column; elements that are not ASCII become "" and are cleared in ``ok``
    (one ``isascii`` over the joined batch in the usual all-ASCII case). None stays null."""
    present = [v for v in values if v is not None] if None in values else values
    if not b"".join(present).isascii():  # type: ignore[arg-type]
        bad = [v is not None and not v.isascii() for v in values]
        ok &= ~np.asarray(bad, dtype=bool)
        values = [b"" if x else v for v, x in zip(values, bad, strict=True)]
    return pl.Series(values, dtype=pl.Binary).cast(pl.String)


def _fast_rows(kept: list[Any], parts: list[int], offs: list[int], fields: FieldNames, org_guard: str | None,
               api: str, digest: str) -> tuple[pl.DataFrame, list[int]]:
    """The rows of the messages in producer shape, built column-wise; and the indexes (into
    ``kept``) of the other messages, for the per-message path.

    A message is taken here only when the per-message path would accept it and would write
    exactly the row built here: its value matches :func:`_fast_pattern`, its ids pass the
    checksum, its org is the guard (when there is one), its headers are the three standard ones
    with plain values (the org-id header equal to the guard), its key is absent or plain, and
    the batch has one topic. ``tests/unit/test_consumer_parse.py`` compares both paths row by row.
    The event id is :func:`engine.core.ids.event_ids`'s UUIDv5, with the name built by
    :func:`engine.core.ids.name_expr` (all fields here are canonical ASCII) and one SHA-1 per row.
    """
    n = len(kept)
    pattern = _fast_pattern(fields)
    topics = {m.topic() for m in kept}
    if pattern is None or len(topics) != 1:
        return pl.DataFrame(schema={"idx": pl.Int64, **_ROW_SCHEMA}), list(range(n))
    tail = _lineage_tail(topics.pop(), api, digest)
    ok = np.ones(n, dtype=bool)
    values = [m.value() for m in kept]
    if None in values:
        ok &= np.asarray([v is not None for v in values], dtype=bool)
        values = [b"" if v is None else v for v in values]
    keys = [m.key() for m in kept]
    h_org, h_pid, h_seq, h_ok = _standard_headers([m.headers() for m in kept])
    if h_ok is not None:
        ok &= np.asarray(h_ok, dtype=bool)
    stamps = [m.timestamp() for m in kept]
    ts_types, ts_ms = [t[0] for t in stamps], [t[1] for t in stamps]
    plain = f"^{_PLAIN}*$"
    df = pl.DataFrame({
        "idx": pl.Series(range(n), dtype=pl.Int64), "v": _ascii_text(values, ok), "k": _ascii_text(keys, ok),
        "ho": _ascii_text(h_org, ok), "hp": _ascii_text(h_pid, ok), "hs": _ascii_text(h_seq, ok),  # type: ignore[arg-type]
        "tt": pl.Series(ts_types, dtype=pl.Int64), "tm": pl.Series(ts_ms, dtype=pl.Int64),
        "part": pl.Series(parts, dtype=pl.Int64), "o": pl.Series(offs, dtype=pl.Int64),
    })
    v = df.get_column("v").str.extract_groups(pattern).struct  # null fields where it does not match
    df = df.with_columns(org=v.field("1"), rec=v.field("2"), typ=v.field("3"), ts=v.field("4"), amt=v.field("5"))
    good = (pl.col("org").is_not_null() & pl.col("ho").str.contains(plain) & pl.col("hp").str.contains(plain)
            & pl.col("hs").str.contains(plain) & (pl.col("k").is_null() | pl.col("k").str.contains(plain)))
    if org_guard is not None:
        good = good & (pl.col("ho") == org_guard)
    ok &= df.select(good).to_series().fill_null(False).to_numpy()
    # rows that failed get a valid placeholder id, so the checksum arrays keep their shape
    dummy = "000000000000000AAA"
    okc = pl.Series(ok)
    for col in ("org", "rec"):
        ok &= _valid18(df.get_column(col).zip_with(okc, pl.Series([dummy] * n)) if not ok.all() else df.get_column(col))
    if org_guard is not None:
        ok &= (df.get_column("org") == org_guard).fill_null(False).to_numpy()
    slow = np.flatnonzero(~ok).tolist()
    if slow:
        df = df.filter(pl.Series(ok))
    if not df.height:
        return pl.DataFrame(schema={"idx": pl.Int64, **_ROW_SCHEMA}), slow
    ns, sha1 = NAMESPACE.bytes, hashlib.sha1
    names = df.select(name_expr("org", "rec", "typ", "ts").cast(pl.Binary)).to_series().to_list()
    ids = _uuid_texts(b"".join([sha1(ns + x).digest() for x in names]))
    tt = pl.col("tt")
    stamp = (pl.when(tt == 1).then(pl.concat_str([pl.lit(',"timestamp":'), pl.col("tm").cast(pl.String),
                                                 pl.lit(',"timestamp_type":"CreateTime"')]))
             .when(tt == 2).then(pl.concat_str([pl.lit(',"timestamp":'), pl.col("tm").cast(pl.String),
                                               pl.lit(',"timestamp_type":"LogAppendTime"')]))
             .otherwise(pl.lit(',"timestamp_type":"NotAvailable"')))
    key = pl.when(pl.col("k").is_null()).then(pl.lit("")).otherwise(pl.concat_str([pl.lit(',"key":"'), pl.col("k"),
                                                                                   pl.lit('"')]))
    lineage = pl.concat_str([pl.lit('{"partition":'), pl.col("part").cast(pl.String), pl.lit(',"offset":'),
                             pl.col("o").cast(pl.String), stamp, key, pl.lit(',"headers":{"org-id":"'), pl.col("ho"),
                             pl.lit('","producer-id":"'), pl.col("hp"), pl.lit('","sequence":"'), pl.col("hs"),
                             pl.lit('"}' + tail)])
    tab = pl.lit("\t")
    return (df.with_columns(id=ids)
            .select("idx", "id", pl.concat_str([pl.col("id"), tab, pl.col("org"), tab, pl.col("rec"), tab, pl.col("typ"),
                                               tab, pl.col("ts"), tab, pl.col("amt"), tab, lineage, pl.lit("\n")]).alias("line"),
                    "part", "rec", "amt", "ts")), slow


_fragments: dict[bytes, str | None] = {}


def _json_fragment(b: bytes | None) -> str | None:
    """The JSON string literal of header or key bytes, ready for a COPY text field (backslashes
    doubled), or None unless clean UTF-8 (no NUL).

    Cached: org ids, producer ids and keys repeat across a stream, and this runs several times
    per message. Plain printable ASCII skips json.dumps (a third of its cost). JSON literals hold
    no raw tab or newline, so doubling backslashes is all the COPY escaping they need, and the
    lineage built from them needs no scan of its own.
    """
    r = _fragments.get(b, "")  # type: ignore[arg-type]
    if r != "":
        return r
    if b is None:
        return None
    s = _clean_text(b)
    if s is None:
        r = None
    elif s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        r = f'"{s}"'
    else:
        r = json.dumps(s, ensure_ascii=True).replace("\\", "\\\\")
    if len(_fragments) > 200_000:
        _fragments.clear()
    _fragments[b] = r
    return r


def _encodable(s: str) -> bool:
    """False for strings with lone surrogates (JSON allows "\\ud800"; UTF-8 and PostgreSQL don't)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _canonical_ts(ts: Any, canon_match: Callable[[str], Any]) -> str | None:
    """The event time as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC, ms), or None when it is not a time.

    ASCII digits only: Python's ``\\d`` and ``fromisoformat`` accept other scripts' digits,
    which PostgreSQL would reject and so block the whole batch.
    """
    if type(ts) is not str or not ts.isascii():
        return None
    if canon_match(ts):
        t = ts
    else:
        try:
            t = canonical_time(ts)
        except (ValueError, TypeError, OverflowError):
            return None
    # canonical_time keeps years 1..9999; the regex pins the shape PostgreSQL will parse
    return t if canon_match(t) else None


# ---------------------------------------------------------------------------------------------
# SQL


def _sql_texts() -> dict[str, str]:
    """Statement templates (``{events}`` etc. are filled with quoted identifiers).

    Kept in one place because they are part of the transformation: their text is hashed into the
    lineage digest together with :func:`transform` and ``engine/ids.py``.

    Why not ``INSERT … ON CONFLICT DO NOTHING`` from a staging table: measured on the embedded
    PostgreSQL (backend CPU per event, 100k events), staging + insert-select took 11.3 µs and the
    probe + direct COPY below 10.2 µs, the aggregates being 4 of those in both; a single
    statement (staging, insert-select ``RETURNING`` feeding the aggregates in a CTE) was still
    1 µs above the probe. The probe itself costs 1.3–2 µs per event, hence the optimistic COPY
    of :meth:`Sink.write`, which skips it unless the primary key finds a stored id. The key also
    guards the race a probe cannot see (another transaction inserting the same event id right
    now): the COPY then fails with a unique violation and the whole batch is retried.
    """
    return {
        "existing": "SELECT event_id::text FROM {events} WHERE event_id = ANY(%s::uuid[])",
        "copy": "COPY {events} (event_id, org_id, record_id, event_type, event_ts, amount, lineage) FROM STDIN",
        "aggregate": """
            INSERT INTO {aggregates} AS a (record_id, clv, event_count, last_event_ts, updated_at)
            SELECT r, sum(am), count(*), max(ts), now()
            FROM unnest(%s::text[], %s::numeric[], %s::timestamptz[]) AS x(r, am, ts)
            GROUP BY r ORDER BY r
            ON CONFLICT (record_id) DO UPDATE SET
                clv = a.clv + EXCLUDED.clv,
                event_count = a.event_count + EXCLUDED.event_count,
                last_event_ts = greatest(a.last_event_ts, EXCLUDED.last_event_ts),
                updated_at = EXCLUDED.updated_at""",
    }


_DDL: Final[str] = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {events} (
    event_id uuid PRIMARY KEY,
    org_id text COLLATE "C" NOT NULL,
    record_id text COLLATE "C" NOT NULL,
    event_type text NOT NULL,
    event_ts timestamptz NOT NULL,
    amount numeric NOT NULL,
    lineage jsonb NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {aggregates} (
    record_id text COLLATE "C" PRIMARY KEY,
    clv numeric NOT NULL,
    event_count bigint NOT NULL,
    last_event_ts timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
) WITH (fillfactor = 70);
CREATE TABLE IF NOT EXISTS {dead_letters} (
    kafka_topic text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset bigint NOT NULL,
    kafka_timestamp timestamptz,
    kafka_timestamp_type text NOT NULL,
    key bytea,
    value bytea,
    headers jsonb NOT NULL,
    reason text NOT NULL,
    detail text NOT NULL,
    dead_lettered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kafka_topic, kafka_partition, kafka_offset)
);
CREATE TABLE IF NOT EXISTS {offsets} (
    kafka_topic text NOT NULL,
    kafka_partition integer NOT NULL,
    next_offset bigint CHECK (next_offset >= 0),
    consumed bigint NOT NULL DEFAULT 0,
    applied bigint NOT NULL DEFAULT 0,
    duplicates bigint NOT NULL DEFAULT 0,
    dead_letters bigint NOT NULL DEFAULT 0,
    group_id text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kafka_topic, kafka_partition),
    CONSTRAINT every_offset_accounted_for CHECK (consumed = applied + duplicates + dead_letters)
);
"""

_REQUIRED_COLUMNS: Final[Mapping[str, tuple[str, ...]]] = {
    "": ("event_id", "org_id", "record_id", "event_type", "event_ts", "amount", "lineage"),
    "_aggregates": ("record_id", "clv", "event_count", "last_event_ts", "updated_at"),
    "_dead_letters": ("kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp", "kafka_timestamp_type",
                      "key", "value", "headers", "reason", "detail"),
    "_offsets": ("kafka_topic", "kafka_partition", "next_offset", "consumed", "applied", "duplicates",
                 "dead_letters", "group_id", "updated_at"),
}


@functools.cache
def transform_digest() -> str:
    """``sha256:<hex>`` of the code that turns a Kafka message into a row.

    Covers ``engine/ids.py`` and ``engine/sfid.py`` (the event id and its canonicalisation), the
    source of :func:`transform` and its helpers, and the SQL that builds the stored row. Computed
    once per process; a changed digest in the lineage means rows were produced by different code.
    """
    from engine.core import ids, sfid

    h = hashlib.sha256()
    parts = [inspect.getsource(ids), inspect.getsource(sfid)]
    parts += [inspect.getsource(fn) for fn in (transform, _parse, _canonical_ts, _clean_text, _copy_text, _encodable,
                                               _json_fragment, _event_type_copy, _lineage_tail, _positions,
                                               _fast_pattern, _valid18, _uuid_texts, _standard_headers, _ascii_text,
                                               _fast_rows)]
    parts += [f"{_AMOUNT.pattern}|{_CANON_TS.pattern}|{_MAX_EVENT_TYPE_LEN}|{_PLAIN}"]
    parts += [v for _, v in sorted(_sql_texts().items())]
    for part in parts:
        b = part.encode("utf-8")
        h.update(str(len(b)).encode() + b":" + b)
    return "sha256:" + h.hexdigest()


# ---------------------------------------------------------------------------------------------
# counters and results


@dataclass
class Counters:
    """consumed = applied + duplicates + dead_letters, always (the CHECK constraint holds it too)."""

    consumed: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_letters: int = 0

    def add(self, other: Counters) -> None:
        self.consumed += other.consumed
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.dead_letters += other.dead_letters

    def as_dict(self) -> dict[str, int]:
        return {"consumed": self.consumed, "applied": self.applied, "duplicates": self.duplicates,
                "dead_letters": self.dead_letters}


@dataclass
class ConsumeResult:
    """What ``recon consume`` reports: this run's counters and the totals stored in PostgreSQL."""

    topic: str
    group: str
    table: str
    run: Counters
    totals: Counters
    partitions: list[dict[str, Any]]
    stopped_by: str
    elapsed_s: float
    batches: int
    api_version: str = DEFAULT_API_VERSION

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic, "group": self.group, "table": self.table,
            "transform_digest": transform_digest(), "api_version": self.api_version,
            "run": self.run.as_dict(), "totals": self.totals.as_dict(), "partitions": self.partitions,
            "stopped_by": self.stopped_by, "elapsed_s": round(self.elapsed_s, 3), "batches": self.batches,
            "events_per_s": round(self.run.consumed / self.elapsed_s, 1) if self.elapsed_s > 0 else 0.0,
        }


# ---------------------------------------------------------------------------------------------
# PostgreSQL side


#: Connection failures the user must fix (credentials, names, TLS setup): exit 2 at once instead of
#: retrying until the deadline. Everything else (refused, timed out, starting up) is retried.
_USER_DB_ERRORS: Final[tuple[str, ...]] = (
    "password authentication failed", "no password supplied", "does not exist", "invalid connection option",
    "invalid integer value", "invalid sslmode", "pg_hba.conf", "permission denied", "is not permitted to log in",
    "certificate verify failed", "server does not support SSL",
)


def _is_transient(exc: BaseException) -> bool:
    import psycopg

    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return True
    state = getattr(exc, "sqlstate", None) or ""
    # serialization failure, deadlock, admin shutdown/crash, cannot connect now, connection errors;
    # a unique violation can only be another transaction inserting one of the batch's event ids
    # between the existence probe and the COPY: the retried batch sees it and skips it
    return state in ("23505", "40001", "40P01", "57P01", "57P02", "57P03") or state.startswith("08")


class Sink:
    """The PostgreSQL side: schema, stored offsets and the one-transaction-per-batch write."""

    def __init__(self, settings: ConsumerSettings, sleep: Callable[[float], bool],
                 notice: Callable[[str], None] | None = None) -> None:
        self.s = settings
        self._sleep = sleep
        self._notice = notice or log.warning
        self.conn: Any = None
        self._stmts: dict[str, Any] = {}
        #: Whether the next batch probes for stored event ids before its COPY (see :meth:`write`).
        self._probe_first = False

    # -- connection ------------------------------------------------------------------------
    def connect(self, since: float | None = None) -> None:
        """Connect, retrying until the deadline (counted from ``since``, when the outage began).

        Credential and naming errors are the user's to fix: they fail at once with exit 2.
        """
        import psycopg

        start = time.monotonic() if since is None else since
        delay = 0.1
        while True:
            try:
                conn = psycopg.connect(self.s.dsn, autocommit=False, connect_timeout=max(2, int(min(10, self.s.deadline_s))),
                                       application_name=f"recon consume {self.s.table.display}"[:63])
                break
            except psycopg.OperationalError as exc:
                msg = str(exc)
                if any(h in msg for h in _USER_DB_ERRORS):
                    raise UsageError(_db_user_error(msg, self.s.dsn_display)) from None
                if time.monotonic() - start + delay > self.s.deadline_s:
                    raise ServiceUnreachable(f"PostgreSQL at {self.s.dsn_display} unreachable for "
                                             f"{self.s.deadline_s:g} s (--deadline): {_first_line(msg)}") from None
                self._notice(f"PostgreSQL at {self.s.dsn_display} unreachable, retrying in {delay:g} s: "
                             f"{_first_line(msg)}")
                if not self._sleep(delay):
                    raise ServiceUnreachable(f"stopped while PostgreSQL at {self.s.dsn_display} was unreachable") from None
                delay = min(delay * 2, 5.0)
        self.close()
        self.conn = conn

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None

    def retrying(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (one transaction), reconnecting with backoff on transient errors.

        ``fn`` must be safe to repeat after a failed attempt: every caller's transaction either
        committed entirely or not at all, and the offset fence turns a lost commit acknowledgement
        into a harmless conflict.
        """
        start: float | None = None
        delay = 0.1
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self.connect(since=start)
                return fn()
            except ReconError:
                raise
            except Exception as exc:
                if not _is_transient(exc):
                    with contextlib.suppress(Exception):
                        self.conn.rollback()
                    raise
                with contextlib.suppress(Exception):
                    self.conn.rollback()
                now = time.monotonic()
                start = start if start is not None else now
                if now - start + delay > self.s.deadline_s:
                    raise ServiceUnreachable(f"PostgreSQL at {self.s.dsn_display} unreachable for "
                                             f"{self.s.deadline_s:g} s (--deadline) while {what}: "
                                             f"{_first_line(str(exc))}") from None
                self._notice(f"PostgreSQL error while {what}, retrying in {delay:g} s: {_first_line(str(exc))}")
                if self.conn is not None and (self.conn.closed or self.conn.broken):
                    self.close()
                if not self._sleep(delay):
                    raise ServiceUnreachable(f"stopped while PostgreSQL at {self.s.dsn_display} was unreachable "
                                             f"({what}); nothing uncommitted was lost: it is re-read on restart") from None
                delay = min(delay * 2, 5.0)

    # -- schema ----------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        """Create the four tables when missing (under an advisory lock: concurrent starters race)."""
        import psycopg
        from psycopg import sql

        t = self.s.table
        ddl = sql.SQL(_DDL).format(schema=sql.Identifier(t.schema), events=t.ident(), aggregates=t.ident("_aggregates"),
                                   dead_letters=t.ident("_dead_letters"), offsets=t.ident("_offsets"))

        def do() -> None:
            with self.conn.transaction():
                self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"recon consume {t.display}",))
                self.conn.execute(ddl)
            self.conn.commit()

        try:
            self.retrying("creating tables", do)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise UsageError(f"cannot create {t.display} and its companion tables: {_first_line(str(exc))} "
                             "(grant CREATE on the schema, or create them as an owner first)") from None
        rows = self.retrying("checking tables", lambda: self._columns())
        for suffix, cols in _REQUIRED_COLUMNS.items():
            have = rows.get(t.name + suffix, set())
            missing = [c for c in cols if c not in have]
            if missing:
                raise UsageError(f"table {t.schema}.{t.name + suffix} exists but is not a recon consume table "
                                 f"(missing columns: {', '.join(missing)}): choose another --table")

    def _columns(self) -> dict[str, set[str]]:
        t = self.s.table
        names = [t.name + s for s in _REQUIRED_COLUMNS]
        cur = self.conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = ANY(%s)", (t.schema, names))
        out: dict[str, set[str]] = {}
        for tn, cn in cur.fetchall():
            out.setdefault(tn, set()).add(cn)
        self.conn.commit()
        return out

    # -- offsets ---------------------------------------------------------------------------
    def reset_offsets(self) -> int:
        """Forget the stored offsets of the topic (the counters stay: they are totals)."""
        from psycopg import sql

        def do() -> int:
            cur = self.conn.execute(sql.SQL("UPDATE {} SET next_offset = NULL, updated_at = now() "
                                            "WHERE kafka_topic = %s").format(self.s.table.ident("_offsets")),
                                    (self.s.topic,))
            n = cur.rowcount
            self.conn.commit()
            return n

        return int(self.retrying("resetting offsets", do))

    def prepare_partitions(self, partitions: Sequence[int]) -> dict[int, int | None]:
        """Make sure every partition has an offsets row and return the stored next offsets."""
        from psycopg import sql

        off = self.s.table.ident("_offsets")

        def do() -> dict[int, int | None]:
            self.conn.execute(sql.SQL(
                "INSERT INTO {} (kafka_topic, kafka_partition, group_id) SELECT %s, p, %s FROM unnest(%s::int[]) p "
                "ORDER BY p ON CONFLICT DO NOTHING").format(off), (self.s.topic, self.s.group, list(partitions)))
            rows = self.conn.execute(sql.SQL(
                "SELECT kafka_partition, next_offset FROM {} WHERE kafka_topic = %s AND kafka_partition = ANY(%s)"
            ).format(off), (self.s.topic, list(partitions))).fetchall()
            self.conn.commit()
            return {int(p): (None if o is None else int(o)) for p, o in rows}

        return dict(self.retrying("reading stored offsets", do))

    def partition_rows(self) -> list[dict[str, Any]]:
        from psycopg import sql

        def do() -> list[dict[str, Any]]:
            rows = self.conn.execute(sql.SQL(
                "SELECT kafka_partition, next_offset, consumed, applied, duplicates, dead_letters FROM {} "
                "WHERE kafka_topic = %s ORDER BY kafka_partition").format(self.s.table.ident("_offsets")),
                (self.s.topic,)).fetchall()
            self.conn.commit()
            keys = ("partition", "next_offset", "consumed", "applied", "duplicates", "dead_letters")
            return [dict(zip(keys, (None if v is None else int(v) for v in r), strict=True)) for r in rows]

        return list(self.retrying("reading counters", do))

    # -- the batch transaction -------------------------------------------------------------
    def _statements(self) -> dict[str, Any]:
        if not self._stmts:
            from psycopg import sql

            t = self.s.table
            texts = _sql_texts()
            self._stmts = {
                "existing": sql.SQL(texts["existing"]).format(events=t.ident()),
                "copy": sql.SQL(texts["copy"]).format(events=t.ident()),
                "aggregate": sql.SQL(texts["aggregate"]).format(aggregates=t.ident("_aggregates")),
                "lock": sql.SQL("SELECT kafka_partition, next_offset FROM {} WHERE kafka_topic = %s "
                                "AND kafka_partition = ANY(%s) ORDER BY kafka_partition FOR UPDATE").format(t.ident("_offsets")),
                "dead": sql.SQL(
                    "INSERT INTO {} (kafka_topic, kafka_partition, kafka_offset, kafka_timestamp, kafka_timestamp_type, "
                    "key, value, headers, reason, detail) "
                    "SELECT %s, p, o, to_timestamp(ts / 1000.0), tt, k, v, h::jsonb, r, d "
                    "FROM unnest(%s::int[], %s::bigint[], %s::bigint[], %s::text[], %s::bytea[], %s::bytea[], "
                    "%s::text[], %s::text[], %s::text[]) AS x(p, o, ts, tt, k, v, h, r, d) "
                    "ORDER BY p, o ON CONFLICT DO NOTHING RETURNING kafka_partition").format(t.ident("_dead_letters")),
                "offsets": sql.SQL(
                    "INSERT INTO {} AS o (kafka_topic, kafka_partition, next_offset, consumed, applied, duplicates, "
                    "dead_letters, group_id, updated_at) "
                    "SELECT %s, p, n, c, a, du, dl, %s, now() FROM unnest(%s::int[], %s::bigint[], %s::bigint[], "
                    "%s::bigint[], %s::bigint[], %s::bigint[]) AS x(p, n, c, a, du, dl) ORDER BY p "
                    "ON CONFLICT (kafka_topic, kafka_partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, "
                    "consumed = o.consumed + EXCLUDED.consumed, applied = o.applied + EXCLUDED.applied, "
                    "duplicates = o.duplicates + EXCLUDED.duplicates, dead_letters = o.dead_letters + EXCLUDED.dead_letters, "
                    "group_id = EXCLUDED.group_id, updated_at = EXCLUDED.updated_at").format(t.ident("_offsets")),
            }
        return self._stmts

    def write(self, batch: Batch) -> tuple[dict[int, Counters], dict[int, int | None]]:
        """Write one batch in one transaction; returns (counters per written partition, conflicts).

        The offsets rows of the batch's partitions are locked first. A partition whose stored
        offset is not the position the batch continues from (``batch.start``) was written by
        someone else meanwhile (another group member after a rebalance, or this consumer's own
        commit whose acknowledgement was lost): its part of the batch is not written, and the
        returned ``conflicts`` maps it to the stored offset to seek to.

        Events already stored are found by the primary key first (optimistic COPY under a
        savepoint) and by the probe only after the key rejected one: see the module docstring.
        """
        import psycopg

        st = self._statements()
        conn = self.conn
        topic = self.s.topic
        with conn.transaction():
            rows = conn.execute(st["lock"], (topic, batch.partitions)).fetchall()
            stored = {int(p): (None if o is None else int(o)) for p, o in rows}
            conflicts = {p: stored.get(p) for p in batch.partitions if stored.get(p) != batch.start.get(p)}
            if conflicts:
                batch = batch.only(lambda p: p not in conflicts)
            if not batch.partitions:
                return {}, conflicts
            per: dict[int, Counters] = {p: Counters(consumed=n) for p, n in batch.consumed.items()}
            # column-wise: a handful of vectorised operations per batch, whatever its size
            pr = batch.prepared()
            for p, n in pr.duplicates.items():
                per[p].duplicates += n
            f, agg, applied = pr.rows, pr.aggregate, pr.applied
            copied = False
            if f.height and not self._probe_first:
                # optimistic: no event of the batch is stored yet (the primary key proves it, or
                # the COPY fails and is undone by its savepoint)
                try:
                    with conn.transaction(), conn.cursor() as cur, cur.copy(st["copy"]) as cp:
                        cp.write(memoryview(pr.copy))
                    copied = True
                except psycopg.errors.UniqueViolation:
                    self._probe_first = True
            if f.height and not copied:
                existing = [r[0] for r in conn.execute(
                    st["existing"], ("{" + f.get_column("id").str.join(",").item() + "}",)).fetchall()]
                # a replay is being read while ids are found stored: keep probing first
                self._probe_first = bool(existing)
                if existing:
                    hit = f.get_column("id").is_in(existing)
                    for p, n in _per_part(f.filter(hit)).items():
                        per[p].duplicates += n
                    f = f.filter(~hit)
                    copy, agg, applied = _payload(f)
                else:
                    copy = pr.copy
                if f.height:
                    with conn.cursor() as cur, cur.copy(st["copy"]) as cp:
                        cp.write(memoryview(copy))
            if f.height:
                conn.execute(st["aggregate"], agg)
                for p, n in applied.items():
                    per[p].applied += n
            if batch.dead:
                d = batch.dead
                new = conn.execute(st["dead"], (
                    topic, [x.partition for x in d], [x.offset for x in d], [x.ts_ms for x in d],
                    [x.ts_type for x in d], [x.key for x in d], [x.value for x in d], [x.headers_json for x in d],
                    [x.reason for x in d], [x.detail for x in d])).fetchall()
                # stored now: dead letter; already stored by an earlier delivery: a duplicate
                for x in d:
                    per[x.partition].duplicates += 1
                for (p,) in new:
                    per[p].duplicates -= 1
                    per[p].dead_letters += 1
            ps = sorted(per)
            for p in ps:
                c = per[p]
                if c.consumed != c.applied + c.duplicates + c.dead_letters:  # pragma: no cover - a bug
                    raise RuntimeError(f"accounting error on partition {p}: {c}")
            conn.execute(st["offsets"], (
                topic, self.s.group, ps, [batch.next_offset[p] for p in ps], [per[p].consumed for p in ps],
                [per[p].applied for p in ps], [per[p].duplicates for p in ps], [per[p].dead_letters for p in ps]))
        return per, conflicts


def _first_line(msg: str) -> str:
    return " ".join(msg.strip().splitlines()[0].split()) if msg.strip() else msg


def _db_user_error(msg: str, where: str) -> str:
    m = msg.lower()
    if "no password supplied" in m:
        return (f"PostgreSQL at {where} asks for a password and none was given: set PGPASSWORD or PGPASSFILE "
                "(or a .pgpass file)")
    if "password authentication failed" in m:
        return f"PostgreSQL at {where} refused the password: check PGPASSWORD / PGPASSFILE and the user in --dsn"
    text = _first_line(msg)
    text = re.sub(r"^connection failed: ", "", text)
    return f"cannot connect to PostgreSQL at {where}: {text}"


# ---------------------------------------------------------------------------------------------
# the consume loop


class _Stop:
    """Stop flag set by SIGTERM/SIGINT; ``sleep`` wakes early when it is set.

    The first signal asks for a graceful stop (the batch in hand is committed); a second one
    interrupts at once (KeyboardInterrupt). That is safe too: a transaction cut short never
    commits, and the next run reads the stored offsets.
    """

    def __init__(self, external: threading.Event | None) -> None:
        self.event = external or threading.Event()
        self.signal: str | None = None

    def sleep(self, seconds: float) -> bool:
        """Sleep; False when a stop was requested (the caller gives up waiting)."""
        return not self.event.wait(seconds)

    @contextlib.contextmanager
    def handlers(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum: int, _frame: Any) -> None:
            if self.event.is_set() and self.signal is not None:
                raise KeyboardInterrupt
            self.signal = signal.Signals(signum).name
            self.event.set()

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


#: The writer thread waits for PostgreSQL about seven times per batch (lock, probe, COPY,
#: aggregates, offsets, commit) and each time needs the GIL back from the polling thread, which
#: lets go of it only every ``sys.getswitchinterval()`` (5 ms by default): up to 35 ms per batch
#: during which PostgreSQL sits idle. At 0.5 ms the handover costs ~0.5 µs of CPU per event and
#: gave ~12% more events/s on two cores.
_SWITCH_INTERVAL_S: Final[float] = 0.0005
#: Every message's headers are a list of tuples (four GC-tracked objects) that lives until its
#: batch is committed, so the collector ran often and, in its full passes, walked every object
#: of the process (Polars, NumPy, psycopg...): measured at ~4.5 µs of CPU per event, as much as
#: the whole transformation. During a run the objects that existed before it are frozen (never
#: traversed) and the youngest generation is collected every 50,000 allocations instead of 700.
_GC_GEN0_THRESHOLD: Final[int] = 50_000


_tuning_lock = threading.Lock()
_tuning_users = 0
_tuning_saved: tuple[float, tuple[int, ...]] = (0.0, ())


@contextlib.contextmanager
def _runtime_tuning() -> Iterator[None]:
    """Interpreter settings for the duration of a run (see above), restored afterwards.

    Process-wide, so counted: with several runs in one process (threads of an embedding
    program), the first one in applies them and the last one out restores what it found.
    """
    global _tuning_users, _tuning_saved
    with _tuning_lock:
        _tuning_users += 1
        if _tuning_users == 1:
            _tuning_saved = (sys.getswitchinterval(), gc.get_threshold())
            interval, threshold = _tuning_saved
            sys.setswitchinterval(min(interval, _SWITCH_INTERVAL_S))
            gc.freeze()
            gc.set_threshold(max(threshold[0], _GC_GEN0_THRESHOLD), *threshold[1:])
    try:
        yield
    finally:
        with _tuning_lock:
            _tuning_users -= 1
            if _tuning_users == 0:
                interval, threshold = _tuning_saved
                gc.set_threshold(*threshold)
                gc.unfreeze()
                sys.setswitchinterval(interval)


class _Runner:
    """One consumer-group member: polls and transforms on this thread, writes on a writer thread.

    The two overlap (batch N is committed while batch N+1 is fetched and transformed): parsing
    and hashing in Python and the insert in PostgreSQL each take about half the time, and both
    the Kafka client and psycopg release the GIL while they wait. At most one batch is in flight,
    and every Kafka client call stays on this thread. Rebalance callbacks first wait for the
    batch in flight, so a revoked partition's last batch is committed before another member
    can read its stored offset.
    """

    def __init__(self, settings: ConsumerSettings, report: Callable[[str], None] | None,
                 stop: threading.Event | None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.s = settings
        self.report = report
        self.stop = _Stop(stop)
        self.sink = Sink(settings, self.stop.sleep, self._notice)
        self.consumer: Any = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recon-consume-writer")
        self.inflight: Any = None  # Future of the batch being written
        self.assigned: set[int] = set()
        self.pos: dict[int, int | None] = {}  # next offset read per partition (None: from the beginning)
        self.epoch: dict[int, int] = {}  # bumped at each assignment or seek of a partition
        self.eof: dict[int, bool] = {}
        self.assign_seen = False
        self.in_rebalance = False
        self.callback_error: BaseException | None = None
        self.broker_down_since: float | None = None
        self.run_counters = Counters()
        self.batches = 0
        self._metrics_at = time.monotonic()
        self._metrics_base = Counters()
        self._cooperative = "cooperative" in str(settings.kafka_config.get("partition.assignment.strategy", ""))

    # -- Kafka callbacks (run inside consume(), on this thread) -----------------------------
    def _on_error(self, err: Any) -> None:
        from confluent_kafka import KafkaError

        code = err.code()
        # only "all brokers down" counts as an outage: single connection drops (_TRANSPORT, e.g. the
        # broker closing an idle connection) are routine and librdkafka reconnects by itself
        if code == KafkaError._ALL_BROKERS_DOWN:
            if self.broker_down_since is None:
                self.broker_down_since = time.monotonic()
                self._notice(f"Kafka at {self.s.bootstrap}: {err.str()}; retrying for up to {self.s.deadline_s:g} s")
        elif code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED,
                      KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED) or err.fatal():
            self.callback_error = self.callback_error or UsageError(
                f"Kafka at {self.s.bootstrap} refused the consumer: {err.str()} (check --kafka-config and ACLs)")
        else:
            log.info("Kafka: %s", err.str())

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        from confluent_kafka import OFFSET_BEGINNING

        try:
            self._drain()
            stored = self.sink.prepare_partitions([tp.partition for tp in partitions])
        except BaseException as exc:  # noqa: BLE001 - re-raised after consume() returns
            self.callback_error = exc
            if self._cooperative:
                consumer.incremental_assign([])
            else:
                consumer.assign([])
            return
        for tp in partitions:
            nxt = stored.get(tp.partition)
            tp.offset = OFFSET_BEGINNING if nxt is None else nxt
            self.pos[tp.partition] = nxt
            self.epoch[tp.partition] = self.epoch.get(tp.partition, 0) + 1
            self.eof[tp.partition] = False
        if self._cooperative:
            consumer.incremental_assign(partitions)
            self.assigned |= {tp.partition for tp in partitions}
        else:
            consumer.assign(partitions)
            self.assigned = {tp.partition for tp in partitions}
        self.assign_seen = True
        self.in_rebalance = False
        log.info("assigned partitions %s of %s", sorted(self.assigned), self.s.topic)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        try:
            self._drain()  # commit what was read from the partitions before giving them up
        except BaseException as exc:  # noqa: BLE001 - re-raised after consume() returns
            self.callback_error = self.callback_error or exc
        gone = {tp.partition for tp in partitions}
        self.assigned -= gone
        for p in gone:
            self.pos.pop(p, None)
            self.eof.pop(p, None)
            self.epoch[p] = self.epoch.get(p, 0) + 1
        if self._cooperative:
            consumer.incremental_unassign(partitions)
        else:
            self.in_rebalance = True
            consumer.unassign()

    # -- main loop -------------------------------------------------------------------------
    def run(self) -> ConsumeResult:
        t0 = time.monotonic()
        with self.stop.handlers(), _runtime_tuning():
            try:
                self.sink.connect()
                self.sink.ensure_schema()
                if self.s.reset_offsets:
                    n = self.sink.reset_offsets()
                    log.info("forgot %d stored offsets of %s", n, self.s.topic)
                self._open_consumer()
                stopped_by = self._loop()
                self._drain()
                self._metrics(force=True)
            finally:
                self.pool.shutdown(wait=True)  # never close the connection under a write
                self._close_consumer()
            parts = self.sink.partition_rows()
            self.sink.close()
        totals = Counters()
        for r in parts:
            totals.add(Counters(r["consumed"], r["applied"], r["duplicates"], r["dead_letters"]))
        return ConsumeResult(topic=self.s.topic, group=self.s.group, table=self.s.table.display, run=self.run_counters,
                             totals=totals, partitions=parts, stopped_by=stopped_by,
                             elapsed_s=time.monotonic() - t0, batches=self.batches,
                             api_version=self.s.api_version.lstrip("vV"))

    def _open_consumer(self) -> None:
        from confluent_kafka import Consumer, KafkaException

        conf = consumer_config(self.s)
        conf["error_cb"] = self._on_error
        conf["logger"] = logging.getLogger("engine.connectors.kafka.consumer.librdkafka")
        try:
            self.consumer = Consumer(conf)
        except KafkaException as exc:
            raise kafka_config_error(exc) from None  # names the property, never its value
        self._check_topic()
        self.consumer.subscribe([self.s.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)

    def _check_topic(self) -> None:
        """Fail with exit 2 on a missing topic *before* anything names it.

        Lists all topics (a Metadata request naming no topic), as ``engine.local.kafka.topic_exists``
        does: on Tansu a request naming the topic would create it. It goes through the consumer so
        that the ``--kafka-config`` security settings (SASL/SSL) apply.
        """
        from confluent_kafka import KafkaException

        start = time.monotonic()
        delay = 0.2
        while True:
            try:
                md = self.consumer.list_topics(timeout=min(5.0, max(1.0, self.s.deadline_s)))
                break
            except KafkaException as exc:
                # serve the error callback (nothing is subscribed yet, so no message is taken): a
                # refused login must be exit 2 at once, not an outage waited out until --deadline
                self.consumer.poll(0)
                if self.callback_error is not None:
                    raise self.callback_error from None
                if time.monotonic() - start + delay > self.s.deadline_s:
                    why = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
                    raise ServiceUnreachable(f"Kafka at {self.s.bootstrap} unreachable for {self.s.deadline_s:g} s "
                                             f"(--deadline): {why}") from None
                if not self.stop.sleep(delay):
                    raise ServiceUnreachable(f"stopped while Kafka at {self.s.bootstrap} was unreachable") from None
                delay = min(delay * 2, 5.0)
        if self.callback_error is not None:
            raise self.callback_error
        tm = md.topics.get(self.s.topic)
        if tm is None or not tm.partitions:
            raise UsageError(f"topic {self.s.topic!r} does not exist on {self.s.bootstrap}: check --topic")
        if tm.error is not None:
            raise UsageError(f"topic {self.s.topic!r} on {self.s.bootstrap} is not readable: {tm.error.str()}")
        self.broker_down_since = None

    def _close_consumer(self) -> None:
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                self.consumer.close()
            self.consumer = None

    def _loop(self) -> str:
        consumer = self.consumer
        fields, guard = self.s.fields, self.s.org_id
        while True:
            if self.stop.event.is_set():
                return f"signal ({self.stop.signal})" if self.stop.signal else "stop requested"
            msgs = consumer.consume(self.s.batch_size, _CONSUME_TIMEOUT_S)
            if self.callback_error is not None:
                raise self.callback_error
            if msgs:
                self.broker_down_since = None
                batch = transform(msgs, fields, guard, self.pos, self.s.api_version)
                for err in batch.errors:
                    self._kafka_error(err)
                if any(p not in self.assigned for p in batch.next_offset):
                    # read just before this call revoked the partition: its new owner reads it again
                    batch = batch.only(lambda p: p in self.assigned)
                for p, at_end in batch.eof.items():
                    if p in self.assigned:
                        self.eof[p] = at_end
                if batch.next_offset:
                    for p, n in batch.next_offset.items():
                        self.pos[p] = n
                        batch.epoch[p] = self.epoch.get(p, 0)
                    batch.prepared()  # here, while the writer is still busy with the previous batch
                    self._drain()
                    self.inflight = self.pool.submit(self._write_job, batch)
            else:
                self._check_broker()
                if self.inflight is not None and self.inflight.done():
                    self._drain()
            self._metrics()
            if self.s.until_caught_up and self._caught_up():
                self._drain()  # a conflict found while committing may send a partition back
                if self._caught_up():
                    return "caught_up"

    def _caught_up(self) -> bool:
        return self.assign_seen and not self.in_rebalance and all(self.eof.get(p) for p in self.assigned)

    def _kafka_error(self, err: Any) -> None:
        from confluent_kafka import KafkaError

        code = err.code()
        if code in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION):
            raise UsageError(f"topic {self.s.topic!r} disappeared from {self.s.bootstrap}: {err.str()}")
        if code in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED):
            raise UsageError(f"Kafka at {self.s.bootstrap} denied access: {err.str()} (check --kafka-config and ACLs)")
        if err.fatal():
            raise ServiceUnreachable(f"Kafka consumer failed: {err.str()}")
        log.warning("Kafka: %s", err.str())

    def _check_broker(self) -> None:
        """Exit 5 once the broker has been unreachable past the deadline (librdkafka retries forever)."""
        from confluent_kafka import KafkaException

        if self.broker_down_since is None:
            return
        down = time.monotonic() - self.broker_down_since
        if down < min(2.0, self.s.deadline_s):
            return
        try:
            self.consumer.list_topics(timeout=1.0)
            self.broker_down_since = None
            return
        except KafkaException:
            pass
        if time.monotonic() - self.broker_down_since > self.s.deadline_s:
            raise ServiceUnreachable(f"Kafka at {self.s.bootstrap} unreachable for {self.s.deadline_s:g} s (--deadline)")

    # -- writing (the writer thread) -------------------------------------------------------
    def _write_job(self, batch: Batch) -> list[tuple[Batch, dict[int, Counters], dict[int, int | None]]]:
        """Runs on the writer thread: the batch's transaction, with retries and the fallback."""
        import psycopg

        try:
            per, conflicts = self.sink.retrying("writing a batch", lambda: self.sink.write(batch))
            return [(batch, per, conflicts)]
        except (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.ProgramLimitExceeded) as exc:
            # a row PostgreSQL refuses despite validation must not block the stream: write the batch
            # one message at a time so that only the offending messages are dead-lettered
            self._notice(f"PostgreSQL rejected a batch ({_first_line(str(exc))}); writing it message by message")
            return self._one_by_one(batch)

    def _one_by_one(self, batch: Batch) -> list[tuple[Batch, dict[int, Counters], dict[int, int | None]]]:
        """Fallback after PostgreSQL refused a batch: one transaction per message, in offset order.

        Only messages PostgreSQL refuses on their own become dead letters (reason
        ``rejected_by_database``); everything else is written exactly as in a batch. Slow, and
        only ever used for a batch that failed.
        """
        import psycopg

        items: list[tuple[int, int, Batch, Any]] = []
        parts = batch.row_parts
        for i, m in enumerate(batch.row_msgs):
            items.append((parts[i], m.offset(), batch.row(i), m))
        for d in batch.dead:
            items.append((d.partition, d.offset, Batch(dead=[d], consumed={d.partition: 1},
                                                       next_offset={d.partition: d.offset + 1}), None))
        items.sort(key=lambda x: (x[0], x[1]))
        pos = dict(batch.start)
        out = []
        for p, off, one, m in items:
            one.start, one.epoch = {p: pos[p]}, dict(batch.epoch)
            try:
                per, conflicts = self.sink.retrying("writing a message", lambda one=one: self.sink.write(one))
            except (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.ProgramLimitExceeded) as exc:
                if m is None:
                    raise  # a dead letter itself was refused: a bug, not data to route around
                ts_type, ts_ms = m.timestamp()
                dl = DeadLetter(p, off, ts_ms if ts_type else None, _TS_TYPE_NAMES.get(ts_type, "NotAvailable"),
                                m.key(), m.value(), _headers_json(m.headers()), "rejected_by_database",
                                _detail(_first_line(str(exc))))
                one = Batch(dead=[dl], consumed={p: 1}, start={p: pos[p]}, next_offset={p: off + 1},
                            epoch=dict(batch.epoch))
                per, conflicts = self.sink.retrying("dead-lettering a message", lambda one=one: self.sink.write(one))
            pos[p] = off + 1
            out.append((one, per, conflicts))
        return out

    def _drain(self) -> None:
        """Wait for the batch in flight and account for it (raises what the writer raised)."""
        fut, self.inflight = self.inflight, None
        if fut is None:
            return
        for batch, per, conflicts in fut.result():
            self._committed(batch, per, conflicts)

    def _committed(self, batch: Batch, per: Mapping[int, Counters], conflicts: Mapping[int, int | None]) -> None:
        from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

        self.batches += 1
        for c in per.values():
            self.run_counters.add(c)
        for p, stored in conflicts.items():
            if batch.epoch.get(p) != self.epoch.get(p) or p not in self.assigned:
                continue  # read under an earlier assignment or seek: already handled
            self._notice(f"partition {p} of {self.s.topic} was written by another consumer (stored next offset "
                         f"{stored}): seeking there")
            self.epoch[p] = self.epoch.get(p, 0) + 1
            self.pos[p] = stored
            self.eof[p] = False
            with contextlib.suppress(KafkaException, RuntimeError):
                self.consumer.seek(TopicPartition(self.s.topic, p, OFFSET_BEGINNING if stored is None else stored))
        tps = [TopicPartition(self.s.topic, p, batch.next_offset[p]) for p in per if p in self.assigned]
        if tps:  # informational only (lag tools); the truth is the offsets table
            with contextlib.suppress(KafkaException, RuntimeError):
                self.consumer.commit(offsets=tps, asynchronous=True)

    def _notice(self, text: str) -> None:
        """An operator-facing line (retries, reconnects, fencing): the report channel, else the log."""
        if self.report is not None:
            self.report(f"consume: {text}")
        else:
            log.warning("%s", text)

    def _metrics(self, force: bool = False) -> None:
        if not self.report or self.s.metrics_interval_s <= 0:
            return
        now = time.monotonic()
        dt = now - self._metrics_at
        if not force and dt < self.s.metrics_interval_s:
            return
        c, b = self.run_counters, self._metrics_base
        rate = (c.consumed - b.consumed) / dt if dt > 0 else 0.0
        self.report(f"consume: {self.s.topic}: {rate:,.0f} events/s, {c.consumed:,} consumed, {c.applied:,} applied, "
                    f"{c.duplicates:,} duplicates skipped, {c.dead_letters:,} dead letters, "
                    f"partitions {sorted(self.assigned)}")
        self._metrics_at = now
        self._metrics_base = Counters(**c.as_dict())


def run(settings: ConsumerSettings, *, report: Callable[[str], None] | None = None,
        stop: threading.Event | None = None) -> ConsumeResult:
    """Consume ``settings.topic`` into PostgreSQL until caught up (if asked) or stopped.

    ``report`` receives the periodic metrics line and operator notices (retries, reconnects,
    fencing), each one line starting with ``consume: ``; ``stop`` lets an embedding program stop the
    loop (SIGTERM and SIGINT do the same when this runs on the main thread): the batch in hand is
    finished and committed first. Raises :class:`UsageError` for what the user can fix and
    :class:`ServiceUnreachable` when PostgreSQL or Kafka stay away past ``settings.deadline_s``.
    """
    return _Runner(settings, report, stop).run()
