"""The run's snapshot: one exported REPEATABLE READ snapshot that every range task of a run imports,
so a diff spread over many tasks (and machines) reads one state of the table.

PostgreSQL lets a transaction import an exported snapshot only while the exporting transaction is
still open, so the coordinator holds this session, idle in its transaction, until the last task
has finished. That has a cost the operator must know about: an open snapshot holds back the
database's xmin horizon, so VACUUM cannot remove row versions that died after the run started
(on this table and every other one of the database) until :meth:`PgRunSnapshot.close`. The
session keeps it as small as it can: READ ONLY, no locks beyond the snapshot, no statement but
the export, ``idle_in_transaction_session_timeout = 0`` for this session only (a server-wide
timeout would otherwise end it between tasks), and it is closed as soon as the run ends, whatever
the outcome. A session lost anyway (terminated by an administrator, a failover, a timeout set
for the user or database) is found by :meth:`PgRunSnapshot.check` and ends the run with exit 5:
tasks that started later could not read the same state.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from engine.connectors.postgres.connection import connect, first_line
from engine.connectors.refs import PostgresRef, redact_dsn
from engine.core.errors import ServiceUnreachable

if TYPE_CHECKING:
    import psycopg


class PgRunSnapshot:
    """An exported snapshot held open for a run (a :class:`engine.connectors.base.RunSnapshot`).

    ``token``: the snapshot id tasks pass in :attr:`engine.connectors.base.ReadRequest.snapshot`
    (not a secret: it names a state, and only a session that can log in can import it);
    ``server_time``: the exporting transaction's start, the time the run's state is of.
    """

    def __init__(self, ref: PostgresRef, *, passfile: str | Path | None = None) -> None:
        import psycopg

        self.ref = ref
        self._where = f"{redact_dsn(ref.dsn)} ({ref.schema}.{ref.table})"
        self._lock = threading.Lock()  # one connection, possibly checked from several threads
        self._conn: psycopg.Connection | None = connect(ref.dsn, passfile=passfile)
        try:
            self._conn.autocommit = True
            self._conn.execute("SET idle_in_transaction_session_timeout = 0")
            self._conn.autocommit = False
            self._conn.read_only = True
            self._conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            row = self._conn.execute("SELECT pg_export_snapshot(), now(), pg_backend_pid()").fetchone()
            assert row is not None
            self.token: str | None = str(row[0])
            self.server_time = row[1]
            self.backend_pid = int(row[2])
        except BaseException:
            self.close()
            raise

    def check(self) -> None:
        """Raise :class:`ServiceUnreachable` when the exporting session is gone: a snapshot cannot
        outlive its transaction, so the tasks still to run could not import it."""
        import psycopg

        with self._lock:
            conn = self._conn
            if conn is None:
                raise ServiceUnreachable(f"the run's PostgreSQL snapshot on {self._where} was already closed")
            try:
                conn.execute("SELECT 1").fetchone()
            except psycopg.Error as exc:
                raise ServiceUnreachable(
                    f"the run's PostgreSQL snapshot on {self._where} was lost (its session ended: "
                    f"{first_line(str(exc)) or type(exc).__name__}): run the diff again; an administrator's "
                    "pg_terminate_backend or an idle_in_transaction_session_timeout set for the user or "
                    "database ends it") from None

    def close(self) -> None:
        """End the exporting transaction (read only: nothing to keep) and its session: from here on
        VACUUM may clean up behind the run again."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            conn.rollback()
        with contextlib.suppress(Exception):
            conn.close()

    def __enter__(self) -> PgRunSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
