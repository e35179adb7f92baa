"""The local org's data: PostgreSQL tables, bulk loading, DML with field history, and result sets.

Layout (database `salesforce` in the embedded cluster, reached over the trusted Unix socket):

* `public."<sObject>"` — one table per sObject, columns named exactly like the API fields, `Id text
  COLLATE "C"` primary key so that Id order is byte order (Salesforce's PK-chunking order);
* `recon_internal.meta` (schema version) and `recon_internal.id_counters` (per key prefix: the next
  counter of `sfid.make_ids`, shared by the server's inserts and `allocate_ids`);
* `recon_results."<locator or job id>"` — materialised result sets of REST query locators and Bulk
  API 2.0 jobs: `rn` (1-based row number) plus pre-formatted text columns. Salesforce also runs a
  query once and pages through its stored result; doing the same gives stable pages (a snapshot)
  and lets each page be one range scan streamed with `COPY … TO STDOUT`.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import datetime as dt
import io
import queue
import re
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from engine.core.sfid import BASE62, make_ids
from engine.local.sfapi import schema, soql
from engine.local.sfapi.schema import ORG_ID, ORG_NAME, USER_ID, FieldDef, SObject

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

    from engine.local.postgres import PostgresInfo

DATABASE = "salesforce"
SCHEMA_VERSION = 5
RESULTS = "recon_results"
INTERNAL = "recon_internal"
POD = "5g0000"  # the pod part of generated ids (sfid.make_ids' default)


class StoreError(Exception):
    """A DML request Salesforce would reject: goes into a `[{"errorCode", "message", "fields"}]` body."""

    def __init__(self, error_code: str, message: str, status: int = 400, fields: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message
        self.status = status
        self.fields = list(fields)


def store_dsn(pg: PostgresInfo) -> str:
    """DSN of the store database: superuser over the Unix socket (trust auth, local processes only)."""
    return pg.superuser_socket_dsn(DATABASE)


#: the org's clock in SQL, at Salesforce's millisecond precision: the transaction's start time (so a
#: write's SystemModstamp is never earlier than the start of the transaction that made it, which
#: `latestDateCovered` relies on) moved by the control API's offset (`/__recon/clock`)
ORG_NOW = f"date_trunc('milliseconds', {INTERNAL}.org_now())"
#: Salesforce's cap on the ids one getUpdated/getDeleted call returns (`/__recon/replication` lowers it)
DEFAULT_ID_CAP = 600_000
#: how far back getUpdated/getDeleted may start
REPLICATION_WINDOW = dt.timedelta(days=30)


def now_ms() -> dt.datetime:
    """Current UTC time at Salesforce's millisecond precision."""
    t = dt.datetime.now(dt.UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


# -- schema ---------------------------------------------------------------------------------------

def _table_ddl(obj: SObject) -> sql.Composed:
    cols = []
    for f in obj.fields:
        parts = [sql.Identifier(f.name), sql.SQL(f.sql_type)]
        if f.name == "Id":
            parts.append(sql.SQL("PRIMARY KEY"))
        elif not f.nillable:
            parts.append(sql.SQL("NOT NULL"))
        default = _column_default(f)
        if default is not None:
            parts += [sql.SQL("DEFAULT"), default]
        cols.append(sql.SQL(" ").join(parts))
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(sql.Identifier(obj.name), sql.SQL(", ").join(cols))


def _column_default(f: FieldDef) -> sql.Composable | None:
    if f.type == "boolean":
        return sql.SQL("false")
    if f.name in ("CreatedDate", "LastModifiedDate", "SystemModstamp"):
        return sql.SQL(ORG_NOW)
    if f.name in ("OwnerId", "CreatedById", "LastModifiedById"):
        return sql.Literal(USER_ID)
    return None


def ensure_store(pg: PostgresInfo) -> str:
    """Create the `salesforce` database, tables and seed rows when missing; return the store DSN.

    Idempotent and cheap when the schema version matches. On a version change the sObject tables are
    recreated (this is a disposable local org).
    """
    with psycopg.connect(pg.superuser_socket_dsn("postgres"), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C'").format(
                    sql.Identifier(DATABASE)))
    dsn = store_dsn(pg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(7305001)")
        try:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(INTERNAL)))
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(RESULTS)))
            conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.meta (key text PRIMARY KEY, value text)").format(
                sql.Identifier(INTERNAL)))
            row = conn.execute(sql.SQL("SELECT value FROM {}.meta WHERE key = 'schema_version'").format(
                sql.Identifier(INTERNAL))).fetchone()
            if row is None or row[0] != str(SCHEMA_VERSION):
                with conn.transaction():
                    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}.replication CASCADE").format(sql.Identifier(INTERNAL)))
                    _replication_ddl(conn)
                    for obj in schema.SOBJECTS.values():
                        conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(obj.name)))
                        conn.execute(_table_ddl(obj))
                        if obj.field("SystemModstamp") is not None:
                            conn.execute(sql.SQL("CREATE INDEX ON {} ({})").format(
                                sql.Identifier(obj.name), sql.Identifier("SystemModstamp")))
                    conn.execute('CREATE INDEX ON "AccountHistory" ("AccountId", "CreatedDate")')
                    conn.execute('CREATE INDEX ON "Opportunity" ("AccountId")')
                    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}.id_counters").format(sql.Identifier(INTERNAL)))
                    conn.execute(sql.SQL("CREATE TABLE {}.id_counters (prefix text PRIMARY KEY, next bigint NOT NULL)")
                                 .format(sql.Identifier(INTERNAL)))
                    conn.execute(sql.SQL("INSERT INTO {}.meta VALUES ('schema_version', %s) ON CONFLICT (key) "
                                         "DO UPDATE SET value = excluded.value").format(sql.Identifier(INTERNAL)),
                                 (str(SCHEMA_VERSION),))
            _seed(conn)
        finally:
            conn.execute("SELECT pg_advisory_unlock(7305001)")
    return dsn


def _replication_ddl(conn: psycopg.Connection[Any]) -> None:
    """The org's clock and replication settings (one row), and `org_now()`, which the audit columns'
    defaults call: kept in the database so that the server and every loader see one clock."""
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.replication (one boolean PRIMARY KEY DEFAULT true CHECK (one), "
                         "clock_offset interval NOT NULL DEFAULT '0', id_cap integer NOT NULL DEFAULT {}, "
                         "delete_log_horizon timestamptz NOT NULL DEFAULT {})").format(
        sql.Identifier(INTERNAL), sql.Literal(DEFAULT_ID_CAP), sql.Literal(_EPOCH)))
    conn.execute(sql.SQL("INSERT INTO {}.replication DEFAULT VALUES ON CONFLICT DO NOTHING").format(
        sql.Identifier(INTERNAL)))
    conn.execute(sql.SQL("CREATE OR REPLACE FUNCTION {}.org_now() RETURNS timestamptz LANGUAGE sql STABLE AS "
                         "$$ SELECT now() + (SELECT clock_offset FROM {}.replication) $$").format(
        sql.Identifier(INTERNAL), sql.Identifier(INTERNAL)))


def _seed(conn: psycopg.Connection[Any]) -> None:
    """The Organization row and the integration user (the identity every login resolves to)."""
    conn.execute(
        'INSERT INTO "Organization" ("Id", "Name", "OrganizationType", "InstanceName", "IsSandbox", '
        '"DefaultLocaleSidKey", "TimeZoneSidKey", "CreatedDate", "LastModifiedDate", "SystemModstamp") '
        "VALUES (%s, %s, 'Enterprise Edition', 'RECON', false, 'en_US', 'GMT', %s, %s, %s) ON CONFLICT DO NOTHING",
        (ORG_ID, ORG_NAME, _EPOCH, _EPOCH, _EPOCH))
    conn.execute(
        'INSERT INTO "User" ("Id", "Username", "FirstName", "LastName", "Name", "Email", "Alias", "Title", '
        '"IsActive", "UserType", "CreatedDate", "LastModifiedDate", "SystemModstamp") '
        "VALUES (%s, 'recon.integration@example.com', 'Recon', 'Integration', %s, 'recon.integration@example.com', "
        "'recon', 'Integration User', true, 'Standard', %s, %s, %s) ON CONFLICT DO NOTHING",
        (USER_ID, schema.INTEGRATION_USER_NAME, _EPOCH, _EPOCH, _EPOCH))


_EPOCH = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def reset_store(pg: PostgresInfo) -> None:
    """Empty every sObject table and the id counters, then re-seed the org and integration user."""
    dsn = ensure_store(pg)
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(sql.SQL("TRUNCATE {}").format(
            sql.SQL(", ").join(sql.Identifier(o.name) for o in schema.SOBJECTS.values())))
        conn.execute(sql.SQL("TRUNCATE {}.id_counters").format(sql.Identifier(INTERNAL)))
        conn.execute(sql.SQL("DELETE FROM {}.replication").format(sql.Identifier(INTERNAL)))
        conn.execute(sql.SQL("INSERT INTO {}.replication DEFAULT VALUES").format(sql.Identifier(INTERNAL)))
        _seed(conn)


# -- ids ------------------------------------------------------------------------------------------

def _allocate(conn: psycopg.Connection[Any], prefix: str, count: int) -> int:
    row = conn.execute(
        sql.SQL("INSERT INTO {}.id_counters AS c (prefix, next) VALUES (%s, %s) ON CONFLICT (prefix) "
                "DO UPDATE SET next = c.next + %s RETURNING next - %s").format(sql.Identifier(INTERNAL)),
        (prefix, count + 1, count, count)).fetchone()
    assert row is not None
    return int(row[0])


def _ids(conn: psycopg.Connection[Any], obj: SObject, count: int) -> list[str]:
    if count <= 0:
        return []
    return make_ids(obj.key_prefix, _allocate(conn, obj.key_prefix, count), count, pod=POD)


def allocate_ids(pg: PostgresInfo, sobject: str, count: int) -> list[str]:
    """Reserve `count` fresh 18-character ids for `sobject` (sequential, byte-ordered, never reused)."""
    obj = _sobject(sobject)
    with psycopg.connect(ensure_store(pg), autocommit=True) as conn:
        return _ids(conn, obj, count)


def _decode62(s: str) -> int:
    n = 0
    for ch in s:
        n = n * 62 + BASE62.index(ch)
    return n


def _bump_counter(conn: psycopg.Connection[Any], obj: SObject) -> None:
    """After a load with caller-made ids, move the counter past them so server inserts never collide."""
    lo = obj.key_prefix + POD
    row = conn.execute(sql.SQL('SELECT max("Id") FROM {} WHERE "Id" >= %s AND "Id" < %s').format(
        sql.Identifier(obj.name)), (lo, lo + "~")).fetchone()
    if row is None or row[0] is None or not re.fullmatch(r"[0-9A-Za-z]{6}", row[0][9:15]):
        return
    nxt = _decode62(row[0][9:15]) + 1
    conn.execute(sql.SQL("INSERT INTO {}.id_counters AS c (prefix, next) VALUES (%s, %s) ON CONFLICT (prefix) "
                         "DO UPDATE SET next = greatest(c.next, excluded.next)").format(sql.Identifier(INTERNAL)),
                 (obj.key_prefix, nxt))


def _sobject(name: str) -> SObject:
    obj = schema.sobject(name)
    if obj is None:
        raise ValueError(f"unknown sObject {name!r}; known: {', '.join(sorted(schema.SOBJECTS))}")
    return obj


# -- bulk loading ---------------------------------------------------------------------------------

def load_records(pg: PostgresInfo, sobject: str, table: pa.Table | pl.DataFrame, *, replace: bool = False,
                 batch_rows: int = 100_000) -> int:
    """Load records with COPY (fast: scenario generation loads millions); return the number of rows.

    Column names are field API names (any case). `Id` is required and is the caller's choice: use
    `allocate_ids` or `sfid.make_ids`. Omitted audit fields get their defaults (now, the integration
    user, IsDeleted false). Naive timestamps are read as UTC. `replace=True` empties the table first,
    in the same transaction. No field history is written: load `AccountHistory` rows explicitly.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    obj = _sobject(sobject)
    if not isinstance(table, pa.Table):
        if hasattr(table, "to_arrow"):
            table = table.to_arrow()
        else:
            table = pa.table(table)
    names = []
    for col in table.column_names:
        f = obj.field(col)
        if f is None:
            raise ValueError(f"{obj.name} has no field {col!r}; fields: {', '.join(x.name for x in obj.fields)}")
        names.append(f.name)
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate columns for {obj.name}: {table.column_names}")
    table = table.rename_columns(names)
    if "Id" not in names:
        raise ValueError(f"loading {obj.name} needs an Id column (use allocate_ids or engine.core.sfid.make_ids)")
    ids = table.column("Id")
    if ids.null_count:
        raise ValueError(f"{obj.name}.Id has {ids.null_count} null values")
    lengths = pc.utf8_length(ids)
    if pc.any(pc.not_equal(lengths, 18)).as_py():
        if pc.any(pc.and_(pc.not_equal(lengths, 18), pc.not_equal(lengths, 15))).as_py():
            raise ValueError(f"{obj.name}.Id values must be 15- or 18-character Salesforce ids")
        from engine.core.sfid import to18

        table = table.set_column(names.index("Id"), "Id", pa.array([to18(x) for x in ids.to_pylist()], pa.string()))
    if not pc.all(pc.starts_with(table.column("Id"), obj.key_prefix)).as_py():
        raise ValueError(f"{obj.name}.Id values must start with the key prefix {obj.key_prefix!r}")
    # decimals/floats/ints/strings all render fine as CSV; dictionary columns need decoding first
    for i, field in enumerate(table.schema):
        if pa.types.is_dictionary(field.type):
            table = table.set_column(i, field.name, table.column(i).cast(field.type.value_type))
    opts = pacsv.WriteOptions(include_header=False, quoting_style="all_valid")

    def render(batch: pa.RecordBatch) -> bytes:
        buf = io.BytesIO()
        pacsv.write_csv(batch, buf, opts)  # releases the GIL: runs while COPY consumes the previous batch
        return buf.getvalue()

    # FREEZE is allowed (and saves a later vacuum pass) when the table was truncated in this transaction
    copy_stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv{})").format(
        sql.Identifier(obj.name), sql.SQL(", ").join(sql.Identifier(n) for n in names),
        sql.SQL(", FREEZE" if replace else ""))
    dsn = ensure_store(pg)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn, ThreadPoolExecutor(max_workers=2) as pool:
            conn.execute("SET TimeZone = 'UTC'")
            with conn.transaction():
                if replace:
                    conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(obj.name)))
                with conn.cursor() as cur, cur.copy(copy_stmt) as copy:
                    pending: collections.deque[Future[bytes]] = collections.deque()
                    for batch in table.to_batches(max_chunksize=batch_rows):
                        pending.append(pool.submit(render, batch))
                        if len(pending) > 2:
                            copy.write(pending.popleft().result())
                    while pending:
                        copy.write(pending.popleft().result())
                _bump_counter(conn, obj)
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(obj.name)))
    except psycopg.Error as exc:
        diag = exc.diag.message_primary or str(exc).splitlines()[0]
        detail = f" ({exc.diag.message_detail})" if exc.diag.message_detail else ""
        raise ValueError(f"loading {obj.name} failed: {diag}{detail}") from None
    return table.num_rows


def create_users(pg: PostgresInfo, count: int, *, title: str = "Account Executive") -> list[str]:
    """Create `count` active Users (account executives) and return their ids, in creation order.

    Names, usernames and aliases derive from the id counter (`Account Executive 000001`,
    `ae000001@recon.example.com`), so after `reset_store` the same calls give the same users.
    """
    import pyarrow as pa

    with psycopg.connect(ensure_store(pg), autocommit=True) as conn:
        start = _allocate(conn, schema.USER.key_prefix, count) if count > 0 else 0
    if count <= 0:
        return []
    ids = make_ids(schema.USER.key_prefix, start, count, pod=POD)
    seq = [f"{start + i:06d}" for i in range(count)]
    table = pa.table({
        "Id": ids,
        "Username": [f"ae{s}@recon.example.com" for s in seq],
        "FirstName": ["Account"] * count,
        "LastName": [f"Executive {s}" for s in seq],
        "Name": [f"Account Executive {s}" for s in seq],
        "Email": [f"ae{s}@recon.example.com" for s in seq],
        "Alias": [f"ae{s}"[:8] for s in seq],
        "Title": [title] * count,
        "IsActive": [True] * count,
        "UserType": ["Standard"] * count,
    })
    load_records(pg, "User", table)
    return ids


# -- connection pool ------------------------------------------------------------------------------

class Pool:
    """A small thread-safe pool of autocommit connections (the server runs DB work in threads)."""

    def __init__(self, dsn: str, max_size: int = 16) -> None:
        self.dsn = dsn
        self._idle: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(max_size)

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        self._slots.acquire()
        conn: psycopg.Connection[Any] | None = None
        try:
            try:
                conn = self._idle.get_nowait()
                if conn.closed:
                    conn = None
            except queue.Empty:
                conn = None
            if conn is None:
                conn = psycopg.connect(self.dsn, autocommit=True)
                conn.execute("SET TimeZone = 'UTC'")
            yield conn
        finally:
            if conn is not None:
                if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                    self._idle.put(conn)
                else:
                    conn.close()
            self._slots.release()

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


# -- result sets ----------------------------------------------------------------------------------

_CSV_DELIMITERS = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";", "CARET": "^", "BACKQUOTE": "`"}


class Store:
    """Everything the HTTP layer asks of the database; methods are blocking (run them in threads)."""

    def __init__(self, dsn: str, max_connections: int = 16) -> None:
        self.pool = Pool(dsn, max_connections)

    def close(self) -> None:
        self.pool.close()

    def _rt(self, name: str) -> sql.Composable:
        return sql.Identifier(RESULTS, name)

    def drop_all_results(self) -> None:
        with self.pool.connection() as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(RESULTS)))
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(RESULTS)))

    def drop_result(self, name: str) -> None:
        with self.pool.connection() as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self._rt(name)))

    def count(self, q: soql.Query, *, include_deleted: bool) -> int:
        stmt, params = soql.count_sql(q, include_deleted=include_deleted)
        with self.pool.connection() as conn:
            row = conn.execute(stmt, params).fetchone()
        return int(row[0]) if row else 0

    def json_lines(self, q: soql.Query, version: str, *, include_deleted: bool, max_rows: int) -> list[str]:
        """Up to `max_rows` REST record objects as JSON text (the single-page fast path)."""
        stmt, params = soql.select_sql(q, [soql.json_record_expr(q, version)], include_deleted=include_deleted,
                                       max_rows=max_rows)
        with self.pool.connection() as conn:
            return [r[0] for r in conn.execute(stmt, params)]

    def _materialize(self, name: str, columns: Sequence[sql.Composable], col_names: Sequence[str],
                     q: soql.Query, *, include_deleted: bool) -> int:
        select, params = soql.select_sql(q, columns, include_deleted=include_deleted)
        col_defs = sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in col_names)
        with self.pool.connection() as conn:
            conn.execute(sql.SQL("CREATE UNLOGGED TABLE {} (rn bigint, {})").format(self._rt(name), col_defs))
            try:
                cur = conn.execute(
                    sql.SQL("INSERT INTO {} SELECT row_number() OVER (), * FROM ({}) AS s").format(
                        self._rt(name), select), params)
                n = cur.rowcount
                conn.execute(sql.SQL("CREATE INDEX ON {} USING brin (rn) WITH (pages_per_range = 16)").format(
                    self._rt(name)))
            except BaseException:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self._rt(name)))
                raise
        return int(n)

    def materialize_json(self, name: str, q: soql.Query, version: str, *, include_deleted: bool) -> int:
        """Run a REST query once into a result table of JSON record texts; return its row count."""
        return self._materialize(name, [soql.json_record_expr(q, version)], ["line"], q,
                                 include_deleted=include_deleted)

    def json_page(self, name: str, start: int, end: int) -> str:
        """Rows `start < rn <= end` of a JSON result table, joined with commas."""
        with self.pool.connection() as conn:
            row = conn.execute(sql.SQL("SELECT string_agg(line, ',' ORDER BY rn) FROM {} WHERE rn > %s AND rn <= %s")
                               .format(self._rt(name)), (start, end)).fetchone()
        return row[0] if row and row[0] else ""

    def materialize_csv(self, name: str, q: soql.Query, *, include_deleted: bool, null_as_quoted: bool) -> int:
        """Run a Bulk query once into a result table of CSV-formatted texts; return its row count."""
        cols: list[sql.Composable] = []
        for f in q.fields:
            e = soql.csv_expr(f)
            cols.append(sql.SQL("COALESCE({}, '')").format(e) if null_as_quoted else e)
        return self._materialize(name, cols, [f"c{i}" for i in range(len(cols))], q, include_deleted=include_deleted)

    def csv_page(self, name: str, ncols: int, start: int, end: int, *, delimiter: str = "COMMA",
                 crlf: bool = False, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """Stream rows `start < rn <= end` as CSV (every value quoted, quotes doubled) in ~1 MB chunks.

        The header row is the caller's. A generator: the connection is held only while it is
        iterated, and a consumer that stops early (client gone) cancels the COPY.
        """
        delim = _CSV_DELIMITERS.get(delimiter, ",")
        cols = sql.SQL(", ").join(sql.Identifier(f"c{i}") for i in range(ncols))
        stmt = sql.SQL("COPY (SELECT {} FROM {} WHERE rn > {} AND rn <= {} ORDER BY rn) TO STDOUT "
                       "(FORMAT csv, FORCE_QUOTE *, DELIMITER {})").format(
            cols, self._rt(name), sql.Literal(int(start)), sql.Literal(int(end)), sql.Literal(delim))
        with self.pool.connection() as conn, conn.cursor() as cur, cur.copy(stmt) as copy:
            buf: list[bytes] = []
            size = 0
            for data in copy:
                b = bytes(data)
                if crlf:
                    b = b.replace(b"\n", b"\r\n")
                buf.append(b)
                size += len(b)
                if size >= chunk_bytes:
                    yield b"".join(buf)
                    buf, size = [], 0
            if buf:
                yield b"".join(buf)

    # -- records ----------------------------------------------------------------------------------

    def get_record(self, obj: SObject, record_id: str, version: str, fields: Sequence[str] | None = None) -> str:
        """One record as REST JSON text (all fields, or `fields`); 404 when absent or deleted."""
        rid = soql.normalize_id(record_id)
        if rid is None or not rid.startswith(obj.key_prefix):
            raise StoreError("NOT_FOUND", "The requested resource does not exist", 404)
        chosen: list[FieldDef] = []
        for name in fields or [f.name for f in obj.fields]:
            f = obj.field(name)
            if f is None:
                raise StoreError("INVALID_FIELD", f"No such column '{name}' on entity '{obj.name}'", 400)
            if f not in chosen:
                chosen.append(f)
        id_field = obj.field("Id")
        assert id_field is not None
        q = soql.Query(f"{obj.name}/{rid}", obj, tuple(chosen), False, ("cmp", id_field, "=", rid), (), 1, None)
        lines = self.json_lines(q, version, include_deleted=False, max_rows=1)
        if not lines:
            raise StoreError("NOT_FOUND", "The requested resource does not exist", 404)
        return lines[0]

    def changed(self, obj: SObject, start: dt.datetime, end: dt.datetime, *, deleted: bool) -> dict[str, Any]:
        """The body of `sobjects/X/updated` (or `deleted`) for [start, end], with Salesforce's rules.

        * start and end are truncated to the minute (the seconds are ignored);
        * `latestDateCovered` is the end, but never later than the org's clock nor than the start of
          the oldest transaction still open in the org (its writes, committed later, carry that
          transaction's start as SystemModstamp), truncated to the minute: a client that starts
          its next call there misses nothing;
        * the ids are those whose SystemModstamp lies in [start, latestDateCovered): consecutive
          calls chained on latestDateCovered see every change once;
        * a start more than 30 days before the org's clock, or (deleted) before the delete log's
          horizon (`earliestDateAvailable`), or an end before the start: 400 INVALID_REPLICATION_DATE;
        * more ids than the cap (600,000; `/__recon/replication`): 400 EXCEEDED_ID_LIMIT.

        A deletion's `deletedDate` is the SystemModstamp the delete wrote (a deleted record cannot be
        changed again). Hard-deleted records are gone from the table, so they appear in neither list.
        """
        start, end = _minute(start), _minute(end)
        with self.pool.connection() as conn:
            row = conn.execute(sql.SQL(
                "SELECT clock_timestamp() + r.clock_offset, r.id_cap, r.delete_log_horizon, "
                "(SELECT min(a.xact_start) FROM pg_stat_activity a WHERE a.datname = current_database() "
                "AND a.backend_type = 'client backend' AND a.pid <> pg_backend_pid() AND a.xact_start IS NOT NULL) "
                "+ r.clock_offset "
                "FROM {}.replication r").format(sql.Identifier(INTERNAL))).fetchone()
            assert row is not None
            now, cap, horizon, oldest_open = row
            if end < start:
                raise StoreError("INVALID_REPLICATION_DATE", "endDate must not be before startDate", 400)
            if start < now - REPLICATION_WINDOW:
                raise StoreError("INVALID_REPLICATION_DATE", "startDate cannot be more than 30 days ago "
                                 f"(org time {_iso(now)})", 400)
            if deleted and start < horizon:
                raise StoreError("INVALID_REPLICATION_DATE", f"startDate is before earliestDateAvailable "
                                 f"{_iso(horizon)}", 400)
            covered = _minute(min(x for x in (end, now, oldest_open) if x is not None))
            stmt = sql.SQL('SELECT "Id", "SystemModstamp" FROM {} WHERE {} "IsDeleted" AND "SystemModstamp" >= %s '
                           'AND "SystemModstamp" < %s ORDER BY "Id" LIMIT %s').format(
                sql.Identifier(obj.name), sql.SQL("" if deleted else "NOT"))
            rows = conn.execute(stmt, (start, covered, cap + 1)).fetchall() if covered > start else []
        if len(rows) > cap:
            raise StoreError("EXCEEDED_ID_LIMIT", f"The number of records in the time range exceeds the limit of "
                             f"{cap} ids: choose start and end dates closer together", 400)
        if deleted:
            return {"deletedRecords": [{"id": r[0], "deletedDate": _iso(r[1])} for r in rows],
                    "earliestDateAvailable": _iso(_minute(horizon)), "latestDateCovered": _iso(covered)}
        return {"ids": [r[0] for r in rows], "latestDateCovered": _iso(covered)}

    def replication(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Read and set the org's clock and replication settings (the control API's `clock` and
        `replication`): `now` (ISO: the clock then runs on from there), `offset_seconds` (from real
        time), `advance_seconds` (added to the offset), `id_cap`, `delete_log_horizon` (ISO)."""
        with self.pool.connection() as conn, conn.transaction():
            internal = sql.Identifier(INTERNAL)
            if "now" in changes:
                conn.execute(sql.SQL("UPDATE {}.replication SET clock_offset = %s::timestamptz - clock_timestamp()")
                             .format(internal), (parse_datetime(str(changes["now"])),))
            if "offset_seconds" in changes:
                conn.execute(sql.SQL("UPDATE {}.replication SET clock_offset = make_interval(secs => %s)")
                             .format(internal), (float(changes["offset_seconds"]),))
            if "advance_seconds" in changes:
                conn.execute(sql.SQL("UPDATE {}.replication SET clock_offset = clock_offset + make_interval(secs => %s)")
                             .format(internal), (float(changes["advance_seconds"]),))
            if "id_cap" in changes:
                conn.execute(sql.SQL("UPDATE {}.replication SET id_cap = %s").format(internal),
                             (max(1, int(changes["id_cap"])),))
            if "delete_log_horizon" in changes:
                conn.execute(sql.SQL("UPDATE {}.replication SET delete_log_horizon = %s").format(internal),
                             (parse_datetime(str(changes["delete_log_horizon"])),))
            row = conn.execute(sql.SQL("SELECT clock_timestamp() + clock_offset, extract(epoch FROM clock_offset), "
                                       "id_cap, delete_log_horizon FROM {}.replication").format(internal)).fetchone()
        assert row is not None
        return {"now": _iso(row[0]), "offset_seconds": float(row[1]), "id_cap": int(row[2]),
                "delete_log_horizon": _iso(row[3])}

    def clock_offset(self) -> float:
        """Seconds the org's clock is ahead of real time."""
        with self.pool.connection() as conn:
            row = conn.execute(sql.SQL("SELECT extract(epoch FROM clock_offset) FROM {}.replication").format(
                sql.Identifier(INTERNAL))).fetchone()
        return float(row[0]) if row else 0.0

    def hard_delete(self, obj: SObject, ids: Sequence[str]) -> int:
        """Remove records physically (Bulk API hardDelete, or a purged Recycle Bin): no IsDeleted row
        stays for queryAll and no entry for getDeleted, as with Salesforce's hard deletes; only a
        comparison of Id sets can notice them."""
        norm = [soql.normalize_id(i) for i in ids]
        if any(n is None or not n.startswith(obj.key_prefix) for n in norm):
            raise StoreError("MALFORMED_ID", f"ids must be {obj.name} ids", 400)
        with self.pool.connection() as conn, conn.transaction():
            if obj.name == "Account":
                conn.execute('DELETE FROM "Opportunity" WHERE "AccountId" = ANY(%s)', (norm,))
            if obj.history_object:
                hobj = schema.SOBJECTS[obj.history_object]
                conn.execute(sql.SQL("DELETE FROM {} WHERE {} = ANY(%s)").format(
                    sql.Identifier(hobj.name), sql.Identifier(hobj.history_parent_field or "ParentId")), (norm,))
            cur = conn.execute(sql.SQL('DELETE FROM {} WHERE "Id" = ANY(%s)').format(sql.Identifier(obj.name)), (norm,))
            return int(cur.rowcount)

    def create_record(self, obj: SObject, data: dict[str, Any], user_id: str) -> str:
        """Insert one record (REST `POST sobjects/X/`), writing a `created` history row when tracked."""
        if not obj.createable:
            raise StoreError("INVALID_TYPE", f"sObject type '{obj.name}' is not supported for create", 400)
        values = self._coerce(obj, data, creating=True)
        missing = [f.name for f in obj.fields if not f.nillable and f.createable and f.name not in values
                   and _column_default(f) is None and not (obj.name == "User" and f.name == "Email")]
        if obj.name == "User":
            values.setdefault("Email", values.get("Username"))
            values["Name"] = " ".join(x for x in (values.get("FirstName"), values.get("LastName")) if x)
            values["UserType"] = "Standard"
            values.setdefault("IsActive", True)
        if missing:
            raise StoreError("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]",
                             400, missing)
        for name in ("CreatedById", "LastModifiedById"):
            if obj.field(name) is not None:
                values[name] = user_id
        if obj.field("OwnerId") is not None:
            values.setdefault("OwnerId", user_id)
        with self.pool.connection() as conn, conn.transaction():
            now = self._now(conn)
            for name in ("CreatedDate", "LastModifiedDate", "SystemModstamp"):
                if obj.field(name) is not None:
                    values[name] = now
            self._check_references(conn, obj, values)
            rid = _ids(conn, obj, 1)[0]
            values["Id"] = rid
            cols = list(values)
            conn.execute(sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                sql.Identifier(obj.name), sql.SQL(", ").join(sql.Identifier(c) for c in cols),
                sql.SQL(", ").join(sql.Placeholder() * len(cols))), [values[c] for c in cols])
            if obj.history_object:
                self._history(conn, obj, rid, [("created", "Text", None, None)], user_id, now)
        return rid

    def update_record(self, obj: SObject, record_id: str, data: dict[str, Any], user_id: str) -> None:
        """Update one record: bump LastModifiedDate/SystemModstamp, write history for tracked fields."""
        if not obj.updateable:
            raise StoreError("INVALID_TYPE", f"sObject type '{obj.name}' is not supported for update", 400)
        rid = self._record_id(obj, record_id)
        values = self._coerce(obj, data, creating=False)
        with self.pool.connection() as conn, conn.transaction():
            old = self._lock_row(conn, obj, rid)
            self._check_references(conn, obj, values)
            now = max(self._now(conn), old["SystemModstamp"] + dt.timedelta(milliseconds=1))
            sets = dict(values)
            sets.update({"LastModifiedDate": now, "SystemModstamp": now, "LastModifiedById": user_id})
            conn.execute(sql.SQL("UPDATE {} SET {} WHERE {} = %s").format(
                sql.Identifier(obj.name),
                sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in sets),
                sql.Identifier("Id")), [*sets.values(), rid])
            if obj.history_object:
                changes = []
                for f in obj.tracked_fields:
                    if f.name in values and not _same(old[f.name], values[f.name], f):
                        changes.extend(self._history_entries(conn, f, old[f.name], values[f.name]))
                if changes:
                    self._history(conn, obj, rid, changes, user_id, now)

    def delete_record(self, obj: SObject, record_id: str, user_id: str) -> None:
        """Soft-delete into the Recycle Bin: IsDeleted, visible through queryAll, and in getDeleted with
        the SystemModstamp written here as its deletedDate; an Account's Opportunities go with it."""
        if not obj.deletable or not obj.has_is_deleted:
            raise StoreError("INVALID_TYPE", f"sObject type '{obj.name}' is not supported for delete", 400)
        rid = self._record_id(obj, record_id)
        with self.pool.connection() as conn, conn.transaction():
            old = self._lock_row(conn, obj, rid)
            now = max(self._now(conn), old["SystemModstamp"] + dt.timedelta(milliseconds=1))
            conn.execute(sql.SQL('UPDATE {} SET "IsDeleted" = true, "SystemModstamp" = %s, "LastModifiedDate" = %s, '
                                 '"LastModifiedById" = %s WHERE "Id" = %s').format(sql.Identifier(obj.name)),
                         (now, now, user_id, rid))
            if obj.name == "Account":
                conn.execute('UPDATE "Opportunity" SET "IsDeleted" = true, "SystemModstamp" = %s, '
                             '"LastModifiedDate" = %s, "LastModifiedById" = %s '
                             'WHERE "AccountId" = %s AND NOT "IsDeleted"', (now, now, user_id, rid))

    # -- DML helpers ------------------------------------------------------------------------------

    @staticmethod
    def _now(conn: psycopg.Connection[Any]) -> dt.datetime:
        """The org's clock at the start of the open transaction (see ORG_NOW)."""
        row = conn.execute(sql.SQL("SELECT " + ORG_NOW)).fetchone()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]

    def _record_id(self, obj: SObject, record_id: str) -> str:
        rid = soql.normalize_id(record_id)
        if rid is None or not rid.startswith(obj.key_prefix):
            raise StoreError("NOT_FOUND", f"Provided external ID field does not exist or is not accessible: "
                                          f"{record_id}", 404)
        return rid

    def _lock_row(self, conn: psycopg.Connection[Any], obj: SObject, rid: str) -> dict[str, Any]:
        cur = conn.execute(sql.SQL("SELECT * FROM {} WHERE {} = %s FOR UPDATE").format(
            sql.Identifier(obj.name), sql.Identifier("Id")), (rid,))
        row = cur.fetchone()
        if row is None:
            raise StoreError("NOT_FOUND", "The requested resource does not exist", 404)
        rec = {d.name: v for d, v in zip(cur.description or [], row, strict=True)}
        if rec.get("IsDeleted"):
            raise StoreError("ENTITY_IS_DELETED", "entity is deleted", 404)
        return rec

    def _coerce(self, obj: SObject, data: dict[str, Any], *, creating: bool) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise StoreError("JSON_PARSER_ERROR", "Can not deserialize SObject out of non-object JSON", 400)
        out: dict[str, Any] = {}
        bad: list[str] = []
        for key, value in data.items():
            if key == "attributes":
                continue
            f = obj.field(key)
            if f is None:
                raise StoreError("INVALID_FIELD", f"No such column '{key}' on sobject of type {obj.name}", 400)
            if not (f.createable if creating else f.updateable):
                bad.append(f.name)
                continue
            out[f.name] = _coerce_value(f, value)
        if bad:
            raise StoreError("INVALID_FIELD_FOR_INSERT_UPDATE",
                             f"Unable to create/update fields: {', '.join(bad)}. Please check the security settings "
                             "of this field and verify that it is read/write for your profile or permission set.",
                             400, bad)
        return out

    def _check_references(self, conn: psycopg.Connection[Any], obj: SObject, values: dict[str, Any]) -> None:
        for name, value in values.items():
            f = obj.field(name)
            if f is None or f.type != "reference" or value is None or not f.reference_to:
                continue
            target = schema.SOBJECTS.get(f.reference_to[0])
            if target is None:  # pragma: no cover - schema is static
                continue
            ok = conn.execute(sql.SQL("SELECT 1 FROM {} WHERE {} = %s").format(
                sql.Identifier(target.name), sql.Identifier("Id")), (value,)).fetchone()
            if not ok:
                raise StoreError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", 400, [f.name])

    def _history_entries(self, conn: psycopg.Connection[Any], f: FieldDef, old: Any,
                         new: Any) -> list[tuple[str, str, str | None, str | None]]:
        field_name = f.history_field or f.name
        if f.type == "reference" and f.reference_to == ("User",):
            # an owner change writes two rows, like Salesforce: names (Text) and ids (EntityId)
            names = dict(conn.execute('SELECT "Id", "Name" FROM "User" WHERE "Id" = ANY(%s)',
                                      ([x for x in (old, new) if x],)).fetchall())
            return [(field_name, "Text", names.get(old), names.get(new)),
                    (field_name, "EntityId", old, new)]
        return [(field_name, f.history_type, _history_text(old), _history_text(new))]

    def _history(self, conn: psycopg.Connection[Any], obj: SObject, rid: str,
                 changes: list[tuple[str, str, str | None, str | None]], user_id: str, now: dt.datetime) -> None:
        hobj = schema.SOBJECTS[obj.history_object or ""]
        ids = _ids(conn, hobj, len(changes))
        parent = hobj.history_parent_field or "ParentId"
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL('INSERT INTO {} ("Id", {}, "CreatedById", "CreatedDate", "Field", "DataType", "OldValue", '
                        '"NewValue") VALUES (%s, %s, %s, %s, %s, %s, %s, %s)').format(
                    sql.Identifier(hobj.name), sql.Identifier(parent)),
                [(hid, rid, user_id, now, fld, dtype, old, new) for hid, (fld, dtype, old, new) in
                 zip(ids, changes, strict=True)])


def _history_text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dt.datetime):
        return v.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{v.microsecond // 1000:03d}Z"
    if isinstance(v, Decimal):
        return format(v, "f")
    return str(v)


def _same(old: Any, new: Any, f: FieldDef) -> bool:
    if old is None or new is None:
        return old is new
    return bool(old == new)


def _coerce_value(f: FieldDef, value: Any) -> Any:
    """A JSON value converted to the field's Python type, or StoreError as Salesforce reports it."""
    if value is None or value == "" and f.type not in schema.TEXT_TYPES:
        if not f.nillable and f.type != "boolean":
            raise StoreError("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{f.name}]", 400, [f.name])
        return False if f.type == "boolean" else None
    t = f.type

    def bad() -> StoreError:
        return StoreError("JSON_PARSER_ERROR", f"Cannot deserialize instance of {t} from {type(value).__name__} "
                                               f"value {str(value)[:40]} for field {f.name}", 400, [f.name])

    if t in schema.TEXT_TYPES:
        if not isinstance(value, str):
            raise bad()
        if not value and not f.nillable:  # Salesforce stores no empty strings: "" is null
            raise StoreError("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{f.name}]", 400, [f.name])
        if f.length and len(value) > f.length:
            raise StoreError("STRING_TOO_LONG", f"{f.label}: data value too large: {value[:40]}... "
                                                f"(max length={f.length})", 400, [f.name])
        return value or None
    if t in schema.ID_TYPES:
        if not isinstance(value, str):
            raise bad()
        norm = soql.normalize_id(value)
        if norm is None:
            raise StoreError("MALFORMED_ID", f"{f.label}: id value of incorrect type: {value}", 400, [f.name])
        return norm
    if t in schema.NUMERIC_TYPES or t in schema.INT_TYPES:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise bad()
        try:
            d = Decimal(str(value))
        except InvalidOperation:
            raise bad() from None
        if not d.is_finite():
            raise bad()
        if t in schema.INT_TYPES:
            if d != d.to_integral_value():
                raise bad()
            return int(d)
        d = d.quantize(Decimal(1).scaleb(-f.scale)) if f.scale else d.quantize(Decimal(1))
        if d.adjusted() >= f.precision - f.scale:
            raise StoreError("NUMBER_OUTSIDE_VALID_RANGE", f"{f.label}: value outside of valid range on numeric "
                                                           f"field: {value}", 400, [f.name])
        return d
    if t == "boolean":
        if not isinstance(value, bool):
            raise bad()
        return value
    if t == "date":
        try:
            return dt.date.fromisoformat(str(value)[:10])
        except ValueError:
            raise bad() from None
    if t == "datetime":
        try:
            return parse_datetime(str(value))
        except ValueError:
            raise bad() from None
    raise bad()


def _minute(t: dt.datetime) -> dt.datetime:
    """Truncated to the minute: the granularity of getUpdated/getDeleted."""
    return t.replace(second=0, microsecond=0)


def _iso(t: dt.datetime) -> str:
    """`2026-01-02T03:04:05.000+0000`, the REST API's datetime format."""
    t = t.astimezone(dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}+0000"


def parse_datetime(text: str) -> dt.datetime:
    """Salesforce accepts `2026-01-02T03:04:05.000+0000`, `…Z`, `…+00:00`; naive means UTC."""
    s = text.strip().replace("Z", "+00:00").replace("z", "+00:00")
    s = re.sub(r"([+-]\d{2})(\d{2})$", r"\1:\2", s)
    v = dt.datetime.fromisoformat(s)
    if v.tzinfo is None:
        v = v.replace(tzinfo=dt.UTC)
    return v.astimezone(dt.UTC)


# -- locators -------------------------------------------------------------------------------------

def encode_locator(offset: int) -> str:
    """Bulk result locators are opaque tokens; Salesforce's look like base64 of a row offset, as do ours."""
    return base64.b64encode(str(offset).encode()).decode().rstrip("=")


def decode_locator(token: str) -> int | None:
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return int(raw) if raw.isdigit() else None
