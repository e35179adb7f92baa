"""The `recon_audit` ledger: an append-only, hash-chained audit trail in PostgreSQL, and its verifier.

Why this shape:

* **One chain across every ledger table.** Runs, inputs, findings, corrections, gate decisions,
  lineage and checkpoints share one gapless sequence number ``seq`` and one hash chain, so a row can
  be neither removed nor moved from one table to another without breaking it, and "the first broken
  row" is well defined across tables.
* **Row hash** = BLAKE3(prev_hash || record), where ``prev_hash`` is the previous row's hash (32 zero
  bytes for the first row) and ``record`` is the canonical JSON (sorted keys, no whitespace, UTF-8)
  of ``{"body", "recorded_at", "seq", "table", "v"}``. The exact canonical text of ``body`` is what
  is stored (column ``canonical``); the ``body`` JSONB column is *generated* from it, so the bytes
  that were hashed are the bytes kept, whatever JSONB does to numbers and key order.
* **Append-only** three ways: the writer role only holds SELECT and INSERT; BEFORE UPDATE/DELETE row
  triggers and a statement-level BEFORE TRUNCATE trigger (row triggers do not see TRUNCATE) raise,
  and they are ``ENABLE ALWAYS`` so ``session_replication_role = replica`` does not skip them; the
  tables belong to ``recon_audit_owner``, a NOLOGIN role the writer does not hold. Owners and
  superusers can still disable triggers, which is what the chain and the checkpoints are for.
* **The writer cannot become the owner.** Since PostgreSQL 16 the CREATEROLE role that creates
  ``recon_audit_owner`` holds ADMIN OPTION on it, so it could grant itself the owner, disable the
  triggers and rewrite the chain with every stored checkpoint. ``init`` therefore refuses to make
  the role that runs it a writer, and refuses any writer that is a superuser, has CREATEROLE or is a
  member (by any path) of such a role, of the administrator or of the owner: an administrator
  initialises, a separate plain login role appends.
* **Serialized, chained writers.** Every append takes ``pg_advisory_xact_lock`` before reading the
  head, so two concurrent writers can never link to the same predecessor (no fork) and ``seq`` has
  no gaps (a sequence would leave gaps on rollback and hide deletions). A BEFORE INSERT trigger
  takes the same lock and rejects a row whose ``seq`` is not the head's + 1 or whose ``prev_hash``
  is not the head's ``row_hash``, so a writer talking SQL directly cannot plant a row out of the
  chain (e.g. a decision at seq 1000000 that outranks every later one). The row hash itself stays
  computed by the client (BLAKE3 is not in PostgreSQL): a wrong one is named by ``verify``.
* **Checkpoints** are RFC 6962 Merkle tree heads (SHA-256, leaf = H(0x00 || row_hash), node =
  H(0x01 || left || right)) over the row hashes in ``seq`` order: standard tooling can recompute
  them. Each is stored as a chained row of ``checkpoints`` and can be exported as a signed C2SP
  tlog-checkpoint note to keep *outside* the database: that is what detects a dropped tail or a
  wholesale, internally consistent rewrite of the chain. A checkpoint is only taken of a chain that
  verifies (same pass as :func:`verify`): signing a broken chain would vouch for the tampering. Tree heads, checkpoints and notes, which
  need no database, are :mod:`engine.store.ledger_checkpoints`.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path, PurePath
from typing import Any

import blake3
import psycopg
from psycopg import sql

from engine.connectors.base import redact_dsn
from engine.core.errors import UsageError, VerificationError
from engine.store.ledger_checkpoints import (
    EMPTY_ROOT,
    Checkpoint,
    MerkleAccumulator,
    read_checkpoint,
    sign_note,
)

# re-exported: part of this module's interface (``ledger.merkle_root``, ``ledger.read_note``, …)
from engine.store.ledger_checkpoints import merkle_root as merkle_root
from engine.store.ledger_checkpoints import read_note as read_note
from engine.store.ledger_checkpoints import rfc6962_leaf as rfc6962_leaf

SCHEMA = "recon_audit"
OWNER_ROLE = "recon_audit_owner"
WRITER_ROLE = "recon_audit_writer"
READER_ROLE = "recon_audit_reader"
TABLES: tuple[str, ...] = ("runs", "inputs", "findings", "corrections", "gate_decisions", "lineage", "checkpoints")
RECORD_VERSION = 1
GENESIS_PREV = bytes(32)
# one lock for the whole chain; an arbitrary but fixed 64-bit key derived from a name
LOCK_KEY = int.from_bytes(hashlib.sha256(b"recon_audit.chain").digest()[:8], "big", signed=True)
ORIGIN_PREFIX = "recon.dev/ledger/"
MAX_PROBLEMS = 50
# role membership with INHERIT/SET options, and ADMIN OPTION granted to a CREATEROLE creator
MIN_SERVER_VERSION = 160000

# generated columns per table, for querying; all derived from the hashed canonical text
_EXTRA_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "runs": (("run_id", "text"), ("command", "text")),
    "inputs": (("run_id", "text"), ("side", "text")),
    "findings": (("run_id", "text"),),
    "corrections": (("run_id", "text"),),
    "gate_decisions": (("run_id", "text"), ("mapping", "text")),
    "lineage": (("run_id", "text"), ("kind", "text")),
    "checkpoints": (("kind", "text"),),
}


# -- canonical JSON --------------------------------------------------------------------------------
def jsonable(obj: Any) -> Any:
    """Plain JSON values only: Decimals, times, paths and UUIDs as strings, non-finite floats as
    strings, NUL characters as U+2400 (PostgreSQL text and JSONB cannot hold NUL)."""
    if isinstance(obj, dict):
        return {jsonable(str(k)) if not isinstance(k, str) else k.replace("\x00", "\u2400"): jsonable(v)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((jsonable(v) for v in obj), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(obj, str):
        return obj.replace("\x00", "\u2400")
    if isinstance(obj, bool) or obj is None or isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, datetime):
        return _utc_text(obj) if obj.tzinfo else obj.isoformat()
    if isinstance(obj, (date, Decimal, uuid.UUID, PurePath)):
        return str(obj)
    if isinstance(obj, bytes):
        return obj.hex()
    return str(obj)


def canonical_json(obj: Any) -> str:
    """Sorted keys, no insignificant whitespace, UTF-8 text: one spelling per value."""
    return json.dumps(jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _utc_text(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_text(table: str, seq: int, recorded_at: str, canonical_body: str) -> str:
    """The hashed record of one row; equal to canonical_json of the same dict when the body is canonical."""
    return (f'{{"body":{canonical_body},"recorded_at":{json.dumps(recorded_at)},"seq":{seq},'
            f'"table":{json.dumps(table)},"v":{RECORD_VERSION}}}')


def row_hash(prev: bytes, table: str, seq: int, recorded_at: str, canonical_body: str) -> bytes:
    return blake3.blake3(prev + record_text(table, seq, recorded_at, canonical_body).encode()).digest()


# -- the ledger ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One appended row."""

    table: str
    seq: int
    row_hash: str
    prev_hash: str
    recorded_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _connect(dsn: str, passfile: str | Path | None = None) -> psycopg.Connection:
    from engine.connectors.postgres.connection import connect

    return connect(dsn, passfile=passfile, autocommit=True)  # transactions are explicit: conn.transaction()


def require_server_version(num: int, where: str) -> None:
    """Refuse PostgreSQL before 16: ``init`` relies on its role-membership model (grants WITH
    INHERIT/SET, a creator's ADMIN OPTION) to keep the writer away from the owner."""
    if num < MIN_SERVER_VERSION:
        major, minor = (num // 10000, num % 10000) if num >= 100000 else (num // 100, num % 100)
        raise UsageError(f"the ledger needs PostgreSQL 16 or later; {where} runs PostgreSQL {major}.{minor} "
                         "(upgrade the server, or put the ledger in a PostgreSQL 16+ database)")


def _takeover_path(conn: psycopg.Connection, writer: str, admin: str) -> str | None:
    """Why ``writer`` could make itself the owner (and so rewrite the ledger), or None.

    Every role the writer can reach through memberships (any path, whatever INHERIT/SET say, since
    an ADMIN OPTION or a SET can be used later) is checked: a superuser, a CREATEROLE role (it may
    hold ADMIN OPTION on the ledger's roles), the administrator running init, or the owner."""
    rows = conn.execute(
        "SELECT r.rolname, r.rolsuper, r.rolcreaterole, pg_has_role(r.oid, %s, 'MEMBER') FROM pg_roles r "
        "WHERE pg_has_role(%s, r.oid, 'MEMBER') ORDER BY r.rolname <> %s, r.rolname",
        (OWNER_ROLE, writer, writer)).fetchall()
    for name, is_super, createrole, owner_member in rows:
        via = "" if name == writer else f" through its membership in {name}"
        if name == admin:
            return f"it is a member of {admin}, the role that runs init"
        if is_super:
            return "it is a superuser" if not via else f"it can act as superuser{via}"
        if createrole:
            return f"it has CREATEROLE{via}"
        if owner_member:
            return f"it is a member of {OWNER_ROLE}{via}"
    return None


def _writer_members(conn: psycopg.Connection) -> list[str]:
    """Roles granted ``recon_audit_writer`` directly with its use (INHERIT or SET); not the creator's
    own ADMIN-only membership that PostgreSQL 16+ records. The ledger's roles are shared by the cluster."""
    return [r[0] for r in conn.execute(
        "SELECT DISTINCT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
        "JOIN pg_roles g ON g.oid = m.roleid WHERE g.rolname = %s AND (m.inherit_option OR m.set_option) "
        "ORDER BY 1", (WRITER_ROLE,)).fetchall()]


def _db_error(exc: psycopg.Error, dsn: str, doing: str) -> UsageError:
    first = (str(exc).splitlines() or [type(exc).__name__])[0]
    where = redact_dsn(dsn)
    if isinstance(exc, (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName)):
        return UsageError(f"no ledger at {where}: run `recon ledger init --dsn …` first ({first})")
    if isinstance(exc, psycopg.errors.InsufficientPrivilege) and doing == "initialise":
        return UsageError(f"cannot initialise the ledger at {where}: {first} (connect as a role with "
                          "CREATEROLE and CREATE on the database, or as a superuser)")
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return UsageError(f"cannot {doing} the ledger at {where}: {first} (grant the role with "
                          "`recon ledger init --dsn … --writer ROLE`)")
    return UsageError(f"cannot {doing} the ledger at {where}: {first}")


class Ledger:
    """A connection to one `recon_audit` ledger. Not thread-safe: one instance per thread.

    ``passfile``: the libpq password file of the connection (``[postgres] passfile``), if any."""

    def __init__(self, dsn: str, *, passfile: str | Path | None = None) -> None:
        self.dsn = dsn
        self.passfile = passfile
        self._conn: psycopg.Connection | None = None

    # -- connection ------------------------------------------------------------------------------
    @property
    def conn(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = _connect(self.dsn, self.passfile)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def where(self) -> str:
        return redact_dsn(self.dsn)

    # -- init ------------------------------------------------------------------------------------
    def init(self, writer: str | None = None) -> dict[str, Any]:
        """Create roles, schema, tables, triggers, grants, the SQL guard and the genesis row; on an
        existing ledger, upgrade its triggers and guard and refresh the grants. Idempotent.

        Run by an administrator: a role with CREATEROLE (or a superuser) and CREATE on the database.
        It creates the objects *as* ``recon_audit_owner`` (a NOLOGIN role) through a membership it
        grants itself for this transaction only, and grants ``recon_audit_writer`` to ``writer``, a
        separate login role that can never become the owner (see :func:`_takeover_path`). Without
        ``writer`` an existing ledger keeps its writers (each checked again); a new one needs it.
        The administrator keeps read access (``recon_audit_reader``) but loses any writer grant an
        older recon gave it."""
        from engine.store.breaker import guard_sql

        conn = self.conn
        try:
            with conn.transaction():
                require_server_version(int(conn.execute("SHOW server_version_num").fetchone()[0]),  # type: ignore[index]
                                       self.where)
                me, is_super, can_create = conn.execute(
                    "SELECT current_user, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user"
                ).fetchone()  # type: ignore[misc]
                if not (is_super or can_create):
                    raise UsageError(f"cannot initialise the ledger at {self.where}: role {me} has no CREATEROLE "
                                     "(connect as an administrator with CREATEROLE and CREATE on the database, or "
                                     "as a superuser; name the role that will append with --writer)")
                exists = conn.execute("SELECT to_regclass('recon_audit.checkpoints')").fetchone()[0] is not None  # type: ignore[index]
                for role in (OWNER_ROLE, WRITER_ROLE, READER_ROLE):  # rolled back if a check below fails
                    conn.execute(sql.SQL(
                        "DO $$ BEGIN CREATE ROLE {} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
                    ).format(sql.Identifier(role)))
                writers = self._check_writers(conn, writer, me, exists)
                if not is_super:
                    conn.execute(sql.SQL("GRANT {} TO {} WITH INHERIT FALSE, SET TRUE").format(
                        sql.Identifier(OWNER_ROLE), sql.Identifier(me)))
                # the schema needs CREATE on the database, which the connecting role has and the owner not
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
                    sql.Identifier(SCHEMA), sql.Identifier(OWNER_ROLE)))
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(OWNER_ROLE)))
                for stmt in _schema_sql():
                    conn.execute(stmt)
                genesis = None
                first = conn.execute("SELECT canonical FROM recon_audit.checkpoints WHERE seq = 1").fetchone()
                origin = str(json.loads(first[0]).get("origin")) if first else None
                if first is None and not conn.execute("SELECT 1 FROM recon_audit.chain LIMIT 1").fetchone():
                    ledger_id = str(uuid.uuid4())
                    genesis = self._append_locked(conn, [("checkpoints", {
                        "kind": "genesis", "ledger_id": ledger_id, "origin": ORIGIN_PREFIX + ledger_id,
                        "size": 0, "root": EMPTY_ROOT.hex(), "hash": "sha256-rfc6962",
                        "record_version": RECORD_VERSION})])[0]
                    origin = ORIGIN_PREFIX + ledger_id
                for stmt in guard_sql():  # the writer cannot install it: the owner's DDL
                    conn.execute(stmt)
                conn.execute("RESET ROLE")
                if not is_super:
                    conn.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(OWNER_ROLE), sql.Identifier(me)))
                if writer is not None:
                    conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(WRITER_ROLE), sql.Identifier(writer)))
                revoked = self._revoke_admin_writer(conn, me, is_super)
                # the administrator may read (and so verify) but not write
                conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(READER_ROLE), sql.Identifier(me)))
        except psycopg.Error as exc:
            raise _db_error(exc, self.dsn, "initialise") from None
        return {"ledger": self.where, "schema": SCHEMA, "owner": OWNER_ROLE, "writer_role": WRITER_ROLE,
                "writer": writers[0], "writers": writers, "reader_role": READER_ROLE, "admin": me,
                "origin": origin, "created": genesis is not None, "revoked": revoked}

    def _check_writers(self, conn: psycopg.Connection, writer: str | None, me: str, exists: bool) -> list[str]:
        """The writers the ledger will have, each checked to have no path to the owner."""
        fix = ("name a separate login role with NOSUPERUSER NOCREATEROLE, e.g. CREATE ROLE recon_writer LOGIN "
               "NOCREATEROLE PASSWORD '…', then `recon ledger init --writer recon_writer`")
        if writer in (OWNER_ROLE, WRITER_ROLE, READER_ROLE):
            raise UsageError(f"writer role {writer} is not allowed: name the login role that will append "
                             "(e.g. the application's role), not one of the ledger's own roles", field="writer")
        if writer == me:
            raise UsageError(f"the writer must not be the role that runs init ({me}): that administrator can grant "
                             f"itself {OWNER_ROLE} and rewrite the ledger; {fix}", field="writer")
        if writer is not None and not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (writer,)).fetchone():
            raise UsageError(f"writer role {writer!r} does not exist: create it first (CREATE ROLE {writer} LOGIN "
                             "NOCREATEROLE PASSWORD '…')", field="writer")
        existing = [w for w in _writer_members(conn) if w != me] if exists else []
        writers = [writer] if writer is not None else []
        writers += [w for w in existing if w not in writers]
        if not writers:
            raise UsageError(f"no writer for the ledger at {self.where}: the writer must not be the role that runs "
                             f"init ({me}); {fix}", field="writer")
        for w in writers:
            why = _takeover_path(conn, w, me)
            if why:
                raise UsageError(f"writer role {w} could take over the ledger: {why} ({fix}"
                                 + (f"; or REVOKE {WRITER_ROLE} FROM {w})" if w != writer else ")"), field="writer")
        return writers

    @staticmethod
    def _revoke_admin_writer(conn: psycopg.Connection, me: str, is_super: bool) -> list[str]:
        """Take ``recon_audit_writer`` away from the administrator (an older recon made it the
        default writer). Only its own grants can be revoked; one by another role is a usage error."""
        grantors = [r[0] for r in conn.execute(
            "SELECT gr.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
            "JOIN pg_roles r ON r.oid = m.member JOIN pg_roles gr ON gr.oid = m.grantor "
            "WHERE g.rolname = %s AND r.rolname = %s AND (m.inherit_option OR m.set_option)",
            (WRITER_ROLE, me)).fetchall()]
        if not grantors:
            return []
        for grantor in grantors:
            if grantor != me and not is_super:
                raise UsageError(f"role {me} holds {WRITER_ROLE} (granted by {grantor}), but the role that runs init "
                                 f"must not write: as {grantor}, REVOKE {WRITER_ROLE} FROM {me}, then rerun")
            conn.execute(sql.SQL("REVOKE {} FROM {} GRANTED BY {}").format(
                sql.Identifier(WRITER_ROLE), sql.Identifier(me), sql.Identifier(grantor)))
        return [me]

    # -- appending -------------------------------------------------------------------------------
    def append(self, table: str, body: dict[str, Any]) -> Entry:
        """Append one row (its own transaction)."""
        return self.append_many([(table, body)])[0]

    def append_many(self, items: Sequence[tuple[str, dict[str, Any]]]) -> list[Entry]:
        """Append rows atomically and contiguously: all or none, in this order."""
        _check_items(items)
        try:
            with self.conn.transaction():
                return self._append_locked(self.conn, items)
        except psycopg.Error as exc:
            raise _db_error(exc, self.dsn, "append to") from None

    @staticmethod
    def _append_locked(conn: psycopg.Connection, items: Sequence[tuple[str, dict[str, Any]]]) -> list[Entry]:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        head = conn.execute("SELECT seq, row_hash FROM recon_audit.chain ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (int(head[0]), bytes.fromhex(head[1])) if head else (0, GENESIS_PREV)
        now: datetime = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        now = now.astimezone(UTC)
        ts = _utc_text(now)
        out = []
        for table, body in items:
            seq += 1
            text = canonical_json(body)
            h = row_hash(prev, table, seq, ts, text)
            conn.execute(
                sql.SQL("INSERT INTO {} (seq, recorded_at, prev_hash, row_hash, canonical) "
                        "VALUES (%s, %s, %s, %s, %s)").format(sql.Identifier(SCHEMA, table)),
                (seq, now, prev.hex(), h.hex(), text))
            out.append(Entry(table, seq, h.hex(), prev.hex(), ts))
            prev = h
        return out

    def record_run(self, run_id: str, body: dict[str, Any], inputs: Sequence[dict[str, Any]] = (),
                   lineage: Sequence[dict[str, Any]] = ()) -> list[Entry]:
        """A run, its inputs and its lineage records, atomically (``run_id`` is added to each body)."""
        return self.append_many(_run_items(run_id, body, inputs, lineage))

    def record_run_checkpointed(self, run_id: str, body: dict[str, Any], inputs: Sequence[dict[str, Any]] = (),
                                lineage: Sequence[dict[str, Any]] = ()) -> tuple[list[Entry], Checkpoint]:
        """:meth:`record_run` and :meth:`checkpoint` in one transaction: on a broken chain neither
        the run nor the checkpoint is recorded (a manifest then has no checkpoint to embed)."""
        return self._checkpoint(_run_items(run_id, body, inputs, lineage))

    # -- checkpoints -----------------------------------------------------------------------------
    def origin(self) -> str:
        """The ledger's name in checkpoints (from its genesis row)."""
        try:
            row = self.conn.execute("SELECT canonical FROM recon_audit.checkpoints WHERE seq = 1").fetchone()
        except psycopg.Error as exc:
            raise _db_error(exc, self.dsn, "read") from None
        if row is None:
            return ORIGIN_PREFIX + "unknown"
        return str(json.loads(row[0]).get("origin") or ORIGIN_PREFIX + "unknown")

    def checkpoint(self) -> Checkpoint:
        """Record a checkpoint of every row so far, and return the tree head that also covers the
        checkpoint row itself (size = its seq), so an exported copy protects the whole chain.

        The chain is verified first, in the same pass and under the appenders' lock: a broken chain
        raises VerificationError naming its first broken row, and nothing is recorded."""
        return self._checkpoint(())[1]

    def _checkpoint(self, items: Sequence[tuple[str, dict[str, Any]]]) -> tuple[list[Entry], Checkpoint]:
        """Verify the chain, append ``items``, then the checkpoint row covering them; one transaction."""
        _check_items(items)
        try:
            with self.conn.transaction():
                conn = self.conn
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                report = VerifyReport(ledger=self.where)
                walk = _ChainWalk(report)
                for row in self._scan(conn, "recon_ledger_checkpoint"):
                    walk.add(*row)
                walk.finish()
                if not report.ok:
                    raise VerificationError(f"ledger verification failed: {report.reason}; no checkpoint taken "
                                            "(`recon ledger verify` lists every problem)")
                origin = report.origin or ORIGIN_PREFIX + "unknown"
                acc = walk.acc
                entries = self._append_locked(conn, items) if items else []
                for e in entries:
                    acc.append(bytes.fromhex(e.row_hash))
                (entry,) = self._append_locked(conn, [("checkpoints", {
                    "kind": "checkpoint", "origin": origin, "size": acc.size, "root": acc.root().hex(),
                    "hash": "sha256-rfc6962"})])
                acc.append(bytes.fromhex(entry.row_hash))
                return entries, Checkpoint(origin, acc.size, acc.root(), entry.seq, entry.recorded_at)
        except psycopg.Error as exc:
            raise _db_error(exc, self.dsn, "checkpoint") from None

    def export_checkpoint(self, path: Path, signing_key: Path) -> Checkpoint:
        """Take a checkpoint and write it as a signed note to keep outside the database."""
        from engine.evidence.manifest import load_private_key

        load_private_key(signing_key)  # fail before writing to the ledger
        cp = self.checkpoint()
        note = sign_note(cp, signing_key)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(note, encoding="utf-8")
        tmp.replace(path)
        return cp

    def rows(self) -> Iterator[tuple[str, int, datetime, str, str, str]]:
        """Every row of the chain in seq order: (table, seq, recorded_at, prev_hash, row_hash, canonical)."""
        with self.conn.transaction():
            yield from self._scan(self.conn, "recon_ledger_rows")

    @staticmethod
    def _scan(conn: psycopg.Connection, name: str) -> Iterator[tuple[str, int, datetime, str, str, str]]:
        """The chain in seq order through a server-side cursor (inside the caller's transaction)."""
        with conn.cursor(name=name) as cur:
            cur.itersize = 10_000
            cur.execute("SELECT table_name, seq, recorded_at, prev_hash, row_hash, canonical "
                        "FROM recon_audit.chain ORDER BY seq, table_name")
            yield from cur


def find_run_with_outputs(dsn: str, outputs: dict[str, str], *, command: str | None = None,
                          passfile: str | Path | None = None) -> dict[str, Any] | None:
    """The latest recorded run (of ``command``, when given) whose outputs include every
    ``name → sha256`` pair: what lets a later step trust an artefact directory. Returns
    ``{seq, run_id, command, status, outputs}`` (outputs as ``{name: sha256}``), or None."""
    pairs = [{"name": n, "sha256": h} for n, h in sorted(outputs.items())]
    # chained rows only, as the SQL guard and `gate --status` read decisions: a row planted outside
    # the chain (possible in a ledger from before the insert trigger) vouches for nothing
    query = ("SELECT g.seq, g.canonical FROM recon_audit.runs g WHERE g.body -> 'outputs' @> %s::jsonb "
             "AND (%s::text IS NULL OR g.command = %s) AND EXISTS (SELECT 1 FROM recon_audit.chain p "
             "WHERE p.seq = g.seq - 1 AND p.row_hash = g.prev_hash) ORDER BY g.seq DESC LIMIT 1")
    params = (json.dumps(pairs), command, command)
    with Ledger(dsn, passfile=passfile) as led:
        try:
            row = led.conn.execute(query, params).fetchone()
        except psycopg.Error as exc:
            raise _db_error(exc, dsn, "read") from None
    if row is None:
        return None
    body = json.loads(row[1])
    recorded = {str(o.get("name")): str(o.get("sha256")) for o in body.get("outputs") or [] if isinstance(o, dict)}
    return {"seq": int(row[0]), "run_id": body.get("run_id"), "command": body.get("command"),
            "status": body.get("status"), "outputs": recorded}


def _check_items(items: Sequence[tuple[str, dict[str, Any]]]) -> None:
    for table, body in items:
        if table not in TABLES:
            raise ValueError(f"unknown ledger table {table!r} (tables: {', '.join(TABLES)})")
        if not isinstance(body, dict):
            raise TypeError("a ledger body is a dict")


def _run_items(run_id: str, body: dict[str, Any], inputs: Sequence[dict[str, Any]],
               lineage: Sequence[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    items: list[tuple[str, dict[str, Any]]] = [("runs", {**body, "run_id": run_id})]
    items += [("inputs", {**i, "run_id": run_id}) for i in inputs]
    items += [("lineage", {**x, "run_id": run_id}) for x in lineage]
    return items


def _schema_sql() -> list[sql.Composable]:
    """DDL run as the owner role; every statement is idempotent."""
    s = sql.Identifier(SCHEMA)
    writer, reader = sql.Identifier(WRITER_ROLE), sql.Identifier(READER_ROLE)
    out: list[sql.Composable] = [
        sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(s),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}, {}").format(s, writer, reader),
        sql.SQL("""CREATE OR REPLACE FUNCTION {}.reject_change() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  RAISE EXCEPTION 'recon_audit.% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
    USING ERRCODE = 'insufficient_privilege', HINT = 'append a correction instead';
END $f$""").format(s),
        # runs as the inserting role (which may read the chain), under the appenders' lock
        sql.SQL("""CREATE OR REPLACE FUNCTION {}.check_append() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
  head_seq bigint := 0;
  head_hash text := repeat('0', 64);
BEGIN
  PERFORM pg_advisory_xact_lock({});
  SELECT c.seq, c.row_hash INTO head_seq, head_hash FROM recon_audit.chain c ORDER BY c.seq DESC LIMIT 1;
  IF NOT FOUND THEN
    head_seq := 0;
    head_hash := repeat('0', 64);
  END IF;
  IF NEW.seq IS DISTINCT FROM head_seq + 1 OR NEW.prev_hash IS DISTINCT FROM head_hash THEN
    RAISE EXCEPTION 'recon_audit.%: a row with seq % and prev_hash % does not extend the chain (head: seq %, row_hash %)',
        TG_TABLE_NAME, NEW.seq, left(NEW.prev_hash, 16), head_seq, left(head_hash, 16)
      USING ERRCODE = 'integrity_constraint_violation',
            HINT = 'append through recon: seq is the head''s + 1 and prev_hash the head''s row_hash';
  END IF;
  RETURN NEW;
END $f$""").format(s, sql.Literal(LOCK_KEY)),
    ]
    for t in TABLES:
        tid = sql.Identifier(SCHEMA, t)
        extra = sql.SQL("").join(
            sql.SQL(", {} {} GENERATED ALWAYS AS ((canonical::jsonb ->> {})) STORED").format(
                sql.Identifier(c), sql.SQL(typ), sql.Literal(c))
            for c, typ in _EXTRA_COLUMNS[t])
        out += [
            sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
  seq bigint PRIMARY KEY CHECK (seq > 0),
  recorded_at timestamptz NOT NULL,
  prev_hash text NOT NULL CHECK (prev_hash ~ '^[0-9a-f]{{64}}$'),
  row_hash text NOT NULL CHECK (row_hash ~ '^[0-9a-f]{{64}}$'),
  canonical text NOT NULL,
  body jsonb GENERATED ALWAYS AS (canonical::jsonb) STORED{})""").format(tid, extra),
            sql.SQL("CREATE OR REPLACE TRIGGER append_only_row BEFORE UPDATE OR DELETE ON {} "
                    "FOR EACH ROW EXECUTE FUNCTION {}.reject_change()").format(tid, s),
            sql.SQL("CREATE OR REPLACE TRIGGER append_only_truncate BEFORE TRUNCATE ON {} "
                    "FOR EACH STATEMENT EXECUTE FUNCTION {}.reject_change()").format(tid, s),
            sql.SQL("CREATE OR REPLACE TRIGGER append_only_chain BEFORE INSERT ON {} "
                    "FOR EACH ROW EXECUTE FUNCTION {}.check_append()").format(tid, s),
            sql.SQL("ALTER TABLE {} ENABLE ALWAYS TRIGGER append_only_chain").format(tid),
            sql.SQL("ALTER TABLE {} ENABLE ALWAYS TRIGGER append_only_row").format(tid),
            sql.SQL("ALTER TABLE {} ENABLE ALWAYS TRIGGER append_only_truncate").format(tid),
            sql.SQL("REVOKE ALL ON {} FROM PUBLIC").format(tid),
            sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(tid, writer),
            sql.SQL("GRANT SELECT ON {} TO {}").format(tid, reader),
        ]
        if any(c == "run_id" for c, _ in _EXTRA_COLUMNS[t]):
            out.append(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (run_id)").format(
                sql.Identifier(f"{t}_run_id"), tid))
    union = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {} AS table_name, seq, recorded_at, prev_hash, row_hash, canonical FROM {}").format(
            sql.Literal(t), sql.Identifier(SCHEMA, t)) for t in TABLES)
    out += [
        sql.SQL("CREATE OR REPLACE VIEW {}.chain AS {}").format(s, union),
        sql.SQL("GRANT SELECT ON {}.chain TO {}, {}").format(s, writer, reader),
    ]
    return out


# -- verification ----------------------------------------------------------------------------------
@dataclass
class VerifyReport:
    """What `recon ledger verify` found. ``problems[0]`` is the reason when ``ok`` is False."""

    ledger: str
    ok: bool = True
    rows: int = 0
    tables: dict[str, int] = field(default_factory=dict)
    head: str | None = None
    origin: str | None = None
    checkpoints_checked: int = 0
    external_checkpoint: dict[str, Any] | None = None
    first_broken: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return self.problems[0] if self.problems else ""

    def fail(self, msg: str, table: str | None = None, seq: int | None = None) -> None:
        self.ok = False
        if self.first_broken is None and (table is not None or seq is not None):
            self.first_broken = {"table": table, "seq": seq}
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(msg)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reason"] = self.reason
        return d


def _prefix_root(leaves: bytearray, size: int) -> bytes:
    acc = MerkleAccumulator()
    for i in range(size):
        acc.append(bytes(leaves[32 * i: 32 * i + 32]))
    return acc.root()


def verify(dsn: str, checkpoint_file: Path | None = None, pubkey: Path | None = None, *,
           passfile: str | Path | None = None) -> VerifyReport:
    """Recompute the chain and every stored checkpoint; with an exported checkpoint, also check that
    the first ``size`` rows still have its root (a dropped tail or a consistent rewrite fails).
    ``passfile``: the libpq password file of the connection.

    Never raises for a broken ledger: the report says what is broken (``ok``, ``reason``,
    ``first_broken``). A checkpoint file whose signature fails raises VerificationError.
    """
    report = VerifyReport(ledger=redact_dsn(dsn))
    external: Checkpoint | None = None
    if checkpoint_file is not None:
        external, signed = read_checkpoint(Path(checkpoint_file), pubkey)
        report.external_checkpoint = {"file": str(checkpoint_file), "origin": external.origin,
                                      "size": external.size, "root": external.root.hex(),
                                      "signature_verified": signed}
        if not signed:
            report.notes.append("checkpoint signature not checked: pass --key PUBFILE")
    walk = _ChainWalk(report)
    ledger = Ledger(dsn, passfile=passfile)
    try:
        for row in ledger.rows():
            walk.add(*row)
    except psycopg.Error as exc:
        raise _db_error(exc, dsn, "read") from None
    finally:
        ledger.close()
    walk.finish()
    leaves, acc = walk.leaves, walk.acc
    if external is not None:
        label = f"checkpoint {checkpoint_file}"
        if report.origin and external.origin != report.origin:
            report.fail(f"{label} is for ledger {external.origin}, not this one ({report.origin})")
        elif external.size > report.rows:
            report.fail(f"{label} covers {external.size} rows but the ledger holds {report.rows}: "
                        f"rows seq {report.rows + 1}..{external.size} were removed (tail dropped)",
                        None, report.rows + 1)
        elif (_prefix_root(leaves, external.size) if external.size != acc.size else acc.root()) != external.root:
            report.fail(f"{label}: the first {external.size} rows no longer have its root: "
                        "the ledger was rewritten")
    else:
        report.notes.append("a dropped tail or a consistent rewrite is only detected with --checkpoint FILE")
    return report


class _ChainWalk:
    """One pass over the chain in seq order, shared by :func:`verify` and ``Ledger.checkpoint``:
    seq continuity, links, row hashes and stored checkpoints, collecting the Merkle leaves."""

    def __init__(self, report: VerifyReport) -> None:
        self.report = report
        self.leaves = bytearray()
        self.acc = MerkleAccumulator()
        self.prev = GENESIS_PREV
        self.expected = 1
        self.last: tuple[str, int] | None = None

    def add(self, table: str, seq: int, recorded_at: datetime, prev_hex: str, stored_hex: str, text: str) -> None:
        report = self.report
        report.rows += 1
        report.tables[table] = report.tables.get(table, 0) + 1
        where = f"row {table} seq {seq}"
        if seq < self.expected:
            other = f"{self.last[0]}" if self.last else "another table"
            report.fail(f"{where}: seq {seq} occurs twice (also in {other}): rows were copied or reordered",
                        table, seq)
            return
        if seq > self.expected:
            gap = f"seq {self.expected}" if seq == self.expected + 1 else f"seqs {self.expected}..{seq - 1}"
            report.fail(f"{where}: {gap} missing before it: rows were deleted", table, seq)
        ts = _utc_text(recorded_at)
        if seq == 1 and table == "checkpoints":
            try:
                report.origin = json.loads(text).get("origin")
            except ValueError:
                pass
        if prev_hex != self.prev.hex() and seq == self.expected:
            report.fail(f"{where}: prev_hash does not link to the row before it: the chain was broken here",
                        table, seq)
        try:
            stored = bytes.fromhex(stored_hex)
        except ValueError:
            stored = b""
        link = bytes.fromhex(prev_hex) if len(prev_hex) == 64 else self.prev
        if row_hash(link, table, seq, ts, text) != stored:
            report.fail(f"{where}: contents changed after it was written (row hash mismatch)", table, seq)
        if table == "checkpoints":
            _check_stored_checkpoint(report, self.leaves, self.acc, table, seq, text)
            report.checkpoints_checked += 1
        if len(stored) != 32:
            stored = bytes(32)
        self.leaves += stored
        self.acc.append(stored)
        self.prev = stored
        self.expected = seq + 1
        self.last = (table, seq)

    def finish(self) -> None:
        self.report.head = self.prev.hex() if self.report.rows else None
        if self.report.rows == 0:
            self.report.fail("the ledger is empty: even the genesis row is gone")


def _check_stored_checkpoint(report: VerifyReport, leaves: bytearray, acc: MerkleAccumulator,
                             table: str, seq: int, text: str) -> None:
    where = f"checkpoint {table} seq {seq}"
    try:
        body = json.loads(text)
        size, root = int(body["size"]), str(body["root"])
    except (ValueError, KeyError, TypeError):
        report.fail(f"{where}: unreadable body", table, seq)
        return
    if size > acc.size or size < 0:
        report.fail(f"{where}: claims {size} rows but only {acc.size} precede it", table, seq)
        return
    actual = acc.root() if size == acc.size else _prefix_root(leaves, size)
    if actual.hex() != root:
        report.fail(f"{where}: its root does not match the first {size} rows: rows before it were rewritten",
                    table, seq)
