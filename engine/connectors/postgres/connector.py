"""PostgreSQL as a connector: a table, view or materialized view read in one exported REPEATABLE
READ snapshot (see :mod:`engine.connectors.postgres.source`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from engine.connectors.base import Extract, PostgresRef, ReadRequest, SideChanges, SourceColumn
from engine.connectors.postgres.connection import statement_timeout_ms
from engine.core.normalize import SideOptions

if TYPE_CHECKING:
    from engine.connectors.postgres.keystream import SortedKeys
    from engine.connectors.postgres.snapshot import PgRunSnapshot

_PROVENANCE = ("object", "snapshot_id", "server_time", "rows", "where")


class PostgresSource:
    system: ClassVar[str] = "postgresql"
    secret_env: ClassVar[tuple[str, ...]] = ("PGPASSWORD",)
    timestamp_precision = "us"
    side = SideOptions()

    def __init__(self, ref: PostgresRef, config: Any) -> None:
        self.ref = ref
        self.config = config
        #: the libpq password file every connection of this source is given ([postgres] passfile)
        self.passfile = config.pg_passfile() if config is not None else None
        self.statement_timeout_ms = statement_timeout_ms(config)

    def describe(self) -> dict[str, SourceColumn]:
        from engine.connectors.postgres import early, source

        out = {}
        for c in early.columns(self.ref) or source.list_columns(self.ref, passfile=self.passfile):
            kind, scale = source._kind(c)
            out[c.name] = SourceColumn(c.name, kind, scale, c.type_name)
        return out

    def quick_columns(self) -> list[str] | None:
        from engine.connectors.postgres import source

        return [c.name for c in source.list_columns(self.ref, passfile=self.passfile)]

    def missing_column_hint(self) -> str:
        return ""

    def estimate(self) -> tuple[int, int] | None:
        """(rows, bytes per row on disk) from the catalog, without a scan: the planner's row
        estimate, or the table's size over a narrow row when it was never analysed. None for views
        (their size is unknown until read)."""
        from psycopg import sql

        from engine.connectors.postgres.connection import connect

        # one attempt, quietly: the estimate only chooses the plan, the read that follows waits out
        # an unreachable server and reports it (exit 5)
        with connect(self.ref.dsn, passfile=self.passfile, deadline_s=0, notice=lambda _m: None) as conn:
            conn.read_only = True
            name = sql.Identifier(self.ref.schema, self.ref.table).as_string(conn)
            row = conn.execute(
                "SELECT c.relkind, c.reltuples::bigint, pg_relation_size(c.oid) FROM pg_class c "
                "WHERE c.oid = to_regclass(%s)", (name,)).fetchone()
        if row is None or row[0] not in ("r", "m", "p"):
            return None
        size = int(row[2] or 0)
        rows = int(row[1]) if row[1] is not None and int(row[1]) >= 0 else size // 64
        return rows, (size // rows if rows else 0)

    def read(self, req: ReadRequest) -> Extract:
        """Takes the read :mod:`engine.connectors.postgres.early` started for this table and
        condition when it covers the wanted columns, else reads now. A range task (``key_range``)
        or a read in the run's snapshot never takes it: an early read is the whole table in a
        snapshot of its own."""
        from engine.connectors.postgres import early, source

        ranged = req.key_range is not None and not req.key_range.whole
        started = early.take(self.ref, req.where, req.columns)
        if started is not None and (ranged or req.snapshot is not None or req.changed_since is not None
                                    or req.key_order):
            started.close()
            started = None
        return source.extract(self.ref, req.columns, req.where, updated_at=req.updated_at, as_of=req.as_of,
                              key_columns=req.key_columns, started=started, passfile=self.passfile,
                              statement_timeout_ms=self.statement_timeout_ms, snapshot=req.snapshot,
                              key_range=req.key_range if ranged else None, key_fields=req.key_fields,
                              changed_since=req.changed_since, key_order=req.key_order,
                              count_ranges=req.count_ranges)

    def changes(self, req: ReadRequest, since: dict[str, Any] | None, *,
                overlap: Any = None) -> SideChanges:
        """What changed since ``since`` (see :mod:`engine.connectors.postgres.changes`)."""
        from engine.connectors.postgres.changes import changes

        return changes(self, req, since, overlap=overlap)

    def sorted_keys(self, req: ReadRequest) -> SortedKeys:
        """The request's single key column in canonical order, streamed by the server (see
        :mod:`engine.connectors.postgres.keystream`; ``supported`` is False when it cannot be)."""
        from engine.connectors.postgres.keystream import SortedKeys

        (key,) = req.key_fields
        return SortedKeys(self.ref, key, req.where, snapshot=req.snapshot, passfile=self.passfile,
                          statement_timeout_ms=self.statement_timeout_ms)

    def key_ranges(self, req: ReadRequest) -> Any:
        """Rows and keys per canonical key range, counted in the server (a context manager giving
        None when that would not be exact: see :mod:`engine.connectors.postgres.rangecount`)."""
        from engine.connectors.postgres.rangecount import open_ranges

        return open_ranges(self.ref, req.key_fields, req.where, passfile=self.passfile,
                           statement_timeout_ms=self.statement_timeout_ms)

    def keys_as_canonical(self, key_fields: tuple[Any, ...], snapshot: str | None) -> bool:
        """Whether a key range can be pushed down as a comparison of the stored text: false when a
        text key holds a value not in Unicode NFC (its canonical form sorts elsewhere, so the range
        that holds it canonically would never be sent it by the server). One scan of the key
        column, in the run's snapshot, once per run; other keys compare as stored."""
        import psycopg
        from psycopg import sql

        from engine.connectors.postgres.connection import connect, session_settings
        from engine.connectors.postgres.keyrange import STRING_TYPES
        from engine.connectors.postgres.source import describe

        keys = [f for f in key_fields if f.is_key]
        if not keys or keys[0].ctype.kind not in ("text", "id"):
            return True
        with connect(self.ref.dsn, passfile=self.passfile) as conn:
            conn.autocommit = True
            conn.execute(session_settings(self.statement_timeout_ms))
            conn.autocommit = False
            conn.read_only = True
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            if snapshot is not None:
                conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            cols = {c.name.lower(): c for c in describe(conn, self.ref)}
            col = cols.get(keys[0].column.lower())
            if col is None or col.base not in STRING_TYPES:
                return True
            row = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {} IS NOT NFC NORMALIZED)").format(
                sql.Identifier(self.ref.schema, self.ref.table), sql.Identifier(col.name))).fetchone()
            conn.rollback()
        return not (row and row[0])

    def open_snapshot(self) -> PgRunSnapshot:
        """The run's snapshot, exported by a session of its own that the coordinator holds open
        until every task has finished (see :mod:`engine.connectors.postgres.snapshot`: it holds
        back VACUUM's horizon for the run's duration)."""
        from engine.connectors.postgres.snapshot import PgRunSnapshot

        return PgRunSnapshot(self.ref, passfile=self.passfile)

    @classmethod
    def provenance(cls, meta: dict[str, Any]) -> dict[str, Any]:
        """The DSN becomes host/port/database/user (never a password)."""
        out = dsn_location(str(meta.get("dsn") or ""))
        out.update({k: meta[k] for k in _PROVENANCE if meta.get(k) is not None})
        return out

    @classmethod
    def lineage_dataset(cls, inp: dict[str, Any]) -> tuple[str, str]:
        return (f"postgres://{inp.get('host', 'localhost')}:{inp.get('port', '5432')}",
                f"{inp.get('database', '')}.{inp.get('object', '')}")


def dsn_location(dsn: str) -> dict[str, Any]:
    """host, port, database and user of a libpq DSN (never its password)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        d = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - a malformed DSN simply yields no location
        return {}
    out: dict[str, Any] = {}
    for src, dst in (("host", "host"), ("port", "port"), ("dbname", "database"), ("user", "user")):
        if d.get(src):
            out[dst] = str(d[src])
    return out
