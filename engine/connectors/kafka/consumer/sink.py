"""The consumer's PostgreSQL side: the tables, the stored offsets and the one-transaction-per-batch write.

Owns :class:`Sink` (DDL, the offset fence, the optimistic COPY and the probe, dead letters,
counters, reconnecting with backoff), the classification of database errors (retry, or the
user's to fix), and the counters and result it reports.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import polars as pl

from engine.connectors.kafka.consumer.batch import Batch, DeadLetter, _payload, _per_part
from engine.connectors.kafka.consumer.settings import DEFAULT_API_VERSION, ConsumerSettings, log
from engine.connectors.kafka.consumer.transformation import _sql_texts, transform_digest
from engine.core.errors import ReconError, UsageError

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
    ingested_at timestamptz NOT NULL DEFAULT now(),
    payload_digest bytea GENERATED ALWAYS AS ({payload_digest}) {digest_kind}
);
CREATE TABLE IF NOT EXISTS {aggregates} (
    record_id text COLLATE "C" PRIMARY KEY,
    {total} numeric NOT NULL,
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
    conflicts bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (kafka_topic, kafka_partition),
    CONSTRAINT every_offset_accounted_for CHECK (consumed = applied + duplicates + dead_letters),
    CONSTRAINT conflicts_are_dead_letters CHECK (conflicts BETWEEN 0 AND dead_letters)
);
"""

#: Columns added since the first version of the tables, and how: ``ensure_schema`` adds the missing
#: ones to existing tables (same lock, same transaction as the DDL above). Every row, stored before
#: or after, then has the digest of its own stored amount.
_MIGRATIONS: Final[Mapping[tuple[str, str], str]] = {
    ("", "payload_digest"): "ALTER TABLE {table} ADD COLUMN payload_digest bytea "
                            "GENERATED ALWAYS AS ({payload_digest}) {digest_kind}",
    ("_offsets", "conflicts"): "ALTER TABLE {table} ADD COLUMN conflicts bigint NOT NULL DEFAULT 0, "
                               "ADD CONSTRAINT conflicts_are_dead_letters CHECK (conflicts BETWEEN 0 AND dead_letters)",
}

#: The dead-letter reason of a message whose event id is stored with another payload.
_CONFLICT: Final[str] = "conflict"
#: From this ``server_version_num`` on (PostgreSQL 18) the digest is a VIRTUAL generated column:
#: computed from the stored amount when read (only copies' rows are ever read for it), so inserts
#: pay nothing (a STORED one measured +0.5 µs of backend CPU per row of the COPY, about 8%) and
#: adding it to an existing table is instant. Before, it is STORED: computed on insert, and adding
#: it rewrites the table once (about 20 s per million rows on a busy two-core machine).
_VIRTUAL_DIGEST_SINCE: int = 180000

_REQUIRED_COLUMNS: Final[Mapping[str, tuple[str, ...]]] = {
    "": ("event_id", "org_id", "record_id", "event_type", "event_ts", "amount", "lineage", "payload_digest"),
    "_aggregates": ("record_id", "{total}", "event_count", "last_event_ts", "updated_at"),
    "_dead_letters": ("kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp", "kafka_timestamp_type",
                      "key", "value", "headers", "reason", "detail"),
    "_offsets": ("kafka_topic", "kafka_partition", "next_offset", "consumed", "applied", "duplicates",
                 "dead_letters", "group_id", "updated_at", "conflicts"),
}


# ---------------------------------------------------------------------------------------------
# counters and results


@dataclass
class Counters:
    """consumed = applied + duplicates + dead_letters, always (the CHECK constraint holds it too).

    ``conflicts`` are the dead letters whose event id was stored (or came first in the batch) with
    another payload: part of ``dead_letters``, reported apart because, unlike a duplicate, each
    one is a number two producers disagree on."""

    consumed: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    conflicts: int = 0

    def add(self, other: Counters) -> None:
        self.consumed += other.consumed
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.dead_letters += other.dead_letters
        self.conflicts += other.conflicts

    def as_dict(self) -> dict[str, int]:
        return {"consumed": self.consumed, "applied": self.applied, "duplicates": self.duplicates,
                "dead_letters": self.dead_letters, "conflicts": self.conflicts}


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

        Credential and naming errors are the user's to fix: they fail at once with exit 2 (the one
        PostgreSQL classification, :func:`engine.connectors.postgres.connection.classify`).
        """
        from engine.connectors.postgres.connection import connect

        conn = connect(self.s.dsn, passfile=self.s.passfile, deadline_s=self.s.deadline_s, where=self.s.dsn_display,
                       field="deadline_s", since=since, sleep=self._sleep, notice=self._notice,
                       connect_timeout=max(2, int(min(10, self.s.deadline_s))), autocommit=False,
                       application_name=f"recon consume {self.s.table.display}"[:63])
        self.close()
        self.conn = conn

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None

    def retrying(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (one transaction), reconnecting with backoff on transient errors (recon's one
        retry policy, until ``deadline_s`` from the first failure).

        ``fn`` must be safe to repeat after a failed attempt: every caller's transaction either
        committed entirely or not at all, and the offset fence turns a lost commit acknowledgement
        into a harmless conflict.
        """
        from engine.connectors.postgres.connection import classify
        from engine.connectors.retry import Outage, RetryPolicy

        outage_since: float | None = None

        def attempt() -> Any:
            nonlocal outage_since
            try:
                if self.conn is None or self.conn.closed:
                    self.connect(since=outage_since)
                return fn()
            except ReconError:
                raise
            except Exception:
                outage_since = outage_since if outage_since is not None else time.monotonic()
                with contextlib.suppress(Exception):
                    self.conn.rollback()
                if self.conn is not None and (self.conn.closed or self.conn.broken):
                    self.close()
                raise

        def verdict(exc: BaseException) -> Any:
            if getattr(exc, "sqlstate", None) == "23505":
                # a unique violation can only be another transaction inserting one of the batch's
                # event ids between the existence probe and the COPY: the retried batch skips it
                return Outage(_first_line(str(exc)))
            return classify(exc, self.s.dsn_display)

        return RetryPolicy(self.s.deadline_s, field="deadline_s").run(
            attempt, verdict, service=f"PostgreSQL at {self.s.dsn_display}", doing=f"while {what}", sleep=self._sleep,
            notice=self._notice, hint="nothing uncommitted was lost: it is re-read on restart")

    # -- schema ----------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        """Create the four tables when missing and bring tables of an earlier version up to date
        (:data:`_MIGRATIONS`), under an advisory lock: concurrent starters race."""
        import psycopg
        from psycopg import sql

        t = self.s.table
        digest = sql.SQL(_sql_texts()["payload_digest"]).format(amount=sql.Identifier("amount"))
        added = {c for _, c in _MIGRATIONS}

        def do() -> None:
            virtual = self.conn.info.server_version >= _VIRTUAL_DIGEST_SINCE
            kind = sql.SQL("VIRTUAL" if virtual else "STORED")
            ddl = sql.SQL(_DDL).format(schema=sql.Identifier(t.schema), events=t.ident(),
                                       aggregates=t.ident("_aggregates"), dead_letters=t.ident("_dead_letters"),
                                       offsets=t.ident("_offsets"), total=sql.Identifier(self.s.sum_column),
                                       payload_digest=digest, digest_kind=kind)
            with self.conn.transaction():
                self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"recon consume {t.display}",))
                self.conn.execute(ddl)
                have = self._columns(commit=False)
                for (suffix, column), alter in _MIGRATIONS.items():
                    cols = have.get(t.name + suffix, set())
                    earlier = {c.format(total=self.s.sum_column) for c in _REQUIRED_COLUMNS[suffix]} - added
                    if column not in cols and earlier <= cols:  # a consume table of an earlier version
                        if column == "payload_digest" and not virtual:
                            self._notice(f"adding column {column} to {t.schema}.{t.name + suffix}: PostgreSQL "
                                         "rewrites the table once (before version 18), locked while it runs")
                        self.conn.execute(sql.SQL(alter).format(table=t.ident(suffix), payload_digest=digest,
                                                                digest_kind=kind))
            self.conn.commit()

        try:
            self.retrying("creating tables", do)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise UsageError(f"cannot create or upgrade {t.display} and its companion tables: {_first_line(str(exc))} "
                             "(grant CREATE on the schema, or run recon consume once as the tables' owner)") from None
        rows = self.retrying("checking tables", lambda: self._columns())
        for suffix, cols in _REQUIRED_COLUMNS.items():
            have = rows.get(t.name + suffix, set())
            missing = [c.format(total=self.s.sum_column) for c in cols if c.format(total=self.s.sum_column) not in have]
            if missing:
                raise UsageError(f"table {t.schema}.{t.name + suffix} exists but is not a recon consume table "
                                 f"(missing columns: {', '.join(missing)}): choose another --table")

    def _columns(self, commit: bool = True) -> dict[str, set[str]]:
        t = self.s.table
        names = [t.name + s for s in _REQUIRED_COLUMNS]
        cur = self.conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = ANY(%s)", (t.schema, names))
        out: dict[str, set[str]] = {}
        for tn, cn in cur.fetchall():
            out.setdefault(tn, set()).add(cn)
        if commit:
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
                "SELECT kafka_partition, next_offset, consumed, applied, duplicates, dead_letters, conflicts FROM {} "
                "WHERE kafka_topic = %s ORDER BY kafka_partition").format(self.s.table.ident("_offsets")),
                (self.s.topic,)).fetchall()
            self.conn.commit()
            keys = ("partition", "next_offset", "consumed", "applied", "duplicates", "dead_letters", "conflicts")
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
                # copies of stored events whose payload differs (the digest; the amount where a row
                # has none): nested-loop key lookups, as only the copies' ids are given
                "differs": sql.SQL(
                    "SELECT x.n, e.amount::text FROM unnest(%s::bigint[], %s::uuid[], %s::numeric[]) AS x(n, id, amt) "
                    "JOIN {events} e ON e.event_id = x.id "
                    "WHERE NOT coalesce(e.payload_digest = {digest}, e.amount = x.amt)").format(
                    events=t.ident(), digest=sql.SQL(texts["payload_digest"]).format(amount=sql.Identifier("x", "amt"))),
                "copy": sql.SQL(texts["copy"]).format(events=t.ident()),
                "aggregate": sql.SQL(texts["aggregate"]).format(aggregates=t.ident("_aggregates"),
                                                                 total=sql.Identifier(self.s.sum_column)),
                "lock": sql.SQL("SELECT kafka_partition, next_offset FROM {} WHERE kafka_topic = %s "
                                "AND kafka_partition = ANY(%s) ORDER BY kafka_partition FOR UPDATE").format(t.ident("_offsets")),
                "dead": sql.SQL(
                    "INSERT INTO {} (kafka_topic, kafka_partition, kafka_offset, kafka_timestamp, kafka_timestamp_type, "
                    "key, value, headers, reason, detail) "
                    "SELECT %s, p, o, to_timestamp(ts / 1000.0), tt, k, v, h::jsonb, r, d "
                    "FROM unnest(%s::int[], %s::bigint[], %s::bigint[], %s::text[], %s::bytea[], %s::bytea[], "
                    "%s::text[], %s::text[], %s::text[]) AS x(p, o, ts, tt, k, v, h, r, d) "
                    "ORDER BY p, o ON CONFLICT DO NOTHING RETURNING kafka_partition, reason").format(
                    t.ident("_dead_letters")),
                "offsets": sql.SQL(
                    "INSERT INTO {} AS o (kafka_topic, kafka_partition, next_offset, consumed, applied, duplicates, "
                    "dead_letters, conflicts, group_id, updated_at) "
                    "SELECT %s, p, n, c, a, du, dl, cf, %s, now() FROM unnest(%s::int[], %s::bigint[], %s::bigint[], "
                    "%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[]) AS x(p, n, c, a, du, dl, cf) ORDER BY p "
                    "ON CONFLICT (kafka_topic, kafka_partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, "
                    "consumed = o.consumed + EXCLUDED.consumed, applied = o.applied + EXCLUDED.applied, "
                    "duplicates = o.duplicates + EXCLUDED.duplicates, dead_letters = o.dead_letters + EXCLUDED.dead_letters, "
                    "conflicts = o.conflicts + EXCLUDED.conflicts, "
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
            f, agg, applied, later = pr.rows, pr.aggregate, pr.applied, pr.later
            known = f.clear()  # first copies of ids stored before this batch
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
                    known = f.filter(hit)
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
            dead = list(batch.dead)
            if known.height or later.height:
                dead += self._copies(batch, known, later, per)
            if dead:
                new = conn.execute(st["dead"], (
                    topic, [x.partition for x in dead], [x.offset for x in dead], [x.ts_ms for x in dead],
                    [x.ts_type for x in dead], [x.key for x in dead], [x.value for x in dead],
                    [x.headers_json for x in dead], [x.reason for x in dead], [x.detail for x in dead])).fetchall()
                # stored now: dead letter; already stored by an earlier delivery: a duplicate
                for x in dead:
                    per[x.partition].duplicates += 1
                for p, reason in new:
                    per[p].duplicates -= 1
                    per[p].dead_letters += 1
                    if reason == _CONFLICT:
                        per[p].conflicts += 1
            ps = sorted(per)
            for p in ps:
                c = per[p]
                if c.consumed != c.applied + c.duplicates + c.dead_letters:  # pragma: no cover - a bug
                    raise RuntimeError(f"accounting error on partition {p}: {c}")
            conn.execute(st["offsets"], (
                topic, self.s.group, ps, [batch.next_offset[p] for p in ps], [per[p].consumed for p in ps],
                [per[p].applied for p in ps], [per[p].duplicates for p in ps], [per[p].dead_letters for p in ps],
                [per[p].conflicts for p in ps]))
        return per, conflicts

    def _copies(self, batch: Batch, stored: pl.DataFrame, later: pl.DataFrame,
                per: dict[int, Counters]) -> list[DeadLetter]:
        """Sort the batch's rows that were not inserted into duplicates (counted in ``per``) and
        conflicts (returned as dead letters), as :mod:`engine.core.forensics` does: a copy whose
        amount equals, as a number, the amount of the event that stays is a duplicate; any other is
        a conflict. The event that stays is the stored one when the id was stored before this batch
        (``stored``: first copies the key or the probe found; the ``later`` copies of those ids
        too), else the batch's first copy (the other ``later`` copies). Runs only for batches that
        met a stored id or repeat one; PostgreSQL compares with the stored rows (their digest, the
        amount where there is none) in one statement over just those copies."""
        dead: list[DeadLetter] = []
        msgs = batch.row_msgs
        if stored.height:
            again = later.get_column("id").is_in(stored.get_column("id").implode())
            check = pl.concat([stored.select("n", "id", "part", "amt"),
                               later.filter(again).select("n", "id", "part", "amt")])
            later = later.filter(~again)
            arrays = tuple("{" + check.get_column(c).cast(pl.String).str.join(",").item() + "}"
                           for c in ("n", "id", "amt"))
            differ = dict(self.conn.execute(self._statements()["differs"], arrays).fetchall())
            if differ:
                bad = check.get_column("n").is_in(list(differ))
                for n, eid, amt in check.filter(bad).select("n", "id", "amt").iter_rows():
                    dead.append(DeadLetter.of(msgs[n], _CONFLICT, f"event {eid} is stored with amount {differ[n]}; "
                                                                  f"this message has {amt} (same event id, another payload)"))
                check = check.filter(~bad)
            for p, n in _per_part(check).items():
                per[p].duplicates += n
        for p, n in _per_part(later.filter(pl.col("same"))).items():
            per[p].duplicates += n
        for n, eid, amt, n0, amt0 in later.filter(~pl.col("same")).select("n", "id", "amt", "first_n", "first_amt").iter_rows():
            m0 = msgs[n0]
            dead.append(DeadLetter.of(msgs[n], _CONFLICT, f"event {eid} came first with amount {amt0} (partition "
                                                          f"{m0.partition()}, offset {m0.offset()}); this message has "
                                                          f"{amt} (same event id, another payload)"))
        return dead


def _first_line(msg: str) -> str:
    return " ".join(msg.strip().splitlines()[0].split()) if msg.strip() else msg
