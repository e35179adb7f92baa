"""Start the PostgreSQL side of a `recon diff` before the data libraries have loaded.

Why: importing Polars, Arrow and NumPy costs a `recon diff` process about 0.2 s before any work
begins, and the PostgreSQL COPY is the longest step after it. The CLI calls :func:`start_for_diff`
first thing; a background thread opens the snapshot and starts the COPY children
(:class:`engine.connectors.postgres.source.PgRead`, which needs psycopg only) while the main thread is still
importing, and :func:`engine.connectors.postgres.source.extract` later takes the read that is already under
way. Nothing here changes what is read or reported: a read is only taken when it is for the same
table and condition and holds every column the diff resolved, otherwise it is stopped and the
regular read runs. Errors surface through the regular read path, with the regular messages.

``RECON_PG_EARLY=0`` turns this off.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from engine.connectors.refs import PostgresRef, Reference, parse_reference
from engine.core.errors import QueryRejected, ServiceUnreachable, UsageError

if TYPE_CHECKING:
    from engine.config import Config
    from engine.connectors.postgres.source import PgRead

START_WAIT_S = 2.0  # at most this long; a server that does not answer is the regular read's business
_lock = threading.Lock()
_reads: dict[tuple[PostgresRef, str | None], Future[PgRead]] = {}


def start_for_diff(source: str | None, target: str | None, *, keys: tuple[tuple[str, str], ...],
                   columns: tuple[tuple[str, str], ...], source_where: str | None, target_where: str | None,
                   config: Config) -> None:
    """Start the read of each PostgreSQL side whose columns can be told now: from ``columns``
    when given, else from the other side's schema (a Parquet footer or a PostgreSQL catalog).
    Returns once the COPYs run (after START_WAIT_S at the latest); never raises (a malformed
    reference or an unreachable server is reported by the diff itself)."""
    if os.environ.get("RECON_PG_EARLY", "1") == "0" or not source or not target:
        return
    try:
        sref, tref = parse_reference(source), parse_reference(target)
    except UsageError:
        return
    sides = [(sref, tref, [a for a, _ in keys], [a for a, _ in columns], source_where),
             (tref, sref, [b for _, b in keys], [b for _, b in columns], target_where)]
    started = []
    for this, other, key_names, col_names, where in sides:
        if not isinstance(this, PostgresRef):
            continue
        fut: Future[PgRead] = Future()
        with _lock:
            if (this, where) in _reads:
                continue
            _reads[(this, where)] = fut
        args = (fut, this, other, key_names, col_names, where, config)
        threading.Thread(target=_begin, args=args, name="recon-pg-early", daemon=True).start()
        started.append(fut)
    # wait (GIL released) until the COPYs run: importing the data libraries in this thread at the
    # same time would only halve the early thread's speed, and the COPY is what takes longest
    # (measured at 1M rows: 0.07 s less than not waiting, 0.14 s less than no early start)
    for fut in started:
        with contextlib.suppress(Exception):
            fut.exception(timeout=START_WAIT_S)


def _begin(fut: Future[PgRead], this: PostgresRef, other: Reference, key_names: list[str],
           col_names: list[str], where: str | None, config: Config) -> None:
    try:
        from engine.connectors.postgres import source as postgres
        from engine.connectors.postgres.connection import statement_timeout_ms

        if col_names:
            guess: list[str] | None = key_names + col_names
        else:
            guess = _other_columns(other, config)
            if guess is None:
                raise LookupError("the other side's columns are not known before extraction")
            guess = key_names + guess
        fut.set_result(postgres.PgRead(this, guess, where, lenient=True, passfile=config.pg_passfile(),
                                              statement_timeout_ms=statement_timeout_ms(config)))
    except BaseException as exc:  # kept for take(): the regular read reports it
        fut.set_exception(exc)


def _other_columns(other: Reference, config: Config) -> list[str] | None:
    """The other side's column names if its connector can tell them without an API call or a scan."""
    from engine.connectors.registry import source_for

    return source_for(other, config).quick_columns()


def take(ref: PostgresRef, where: str | None, columns: list[str] | None) -> PgRead | None:
    """The read started early for ``ref`` and ``where`` if it covers ``columns``, else None (and
    the early read, if any, is stopped). Credential and connection errors it met are raised here,
    so the server is not asked twice."""
    with _lock:
        fut = _reads.pop((ref, where), None)
    read = _outcome(fut) if fut is not None else None
    if read is None:
        return None
    if not read.covers(columns):
        read.close()
        return None
    read.early = True
    return read


def columns(ref: PostgresRef) -> list[Any] | None:
    """The table's columns as an early read for ``ref`` described them (any condition), or None:
    the diff's schema step then needs no connection of its own."""
    with _lock:
        futs = [f for (r, _), f in _reads.items() if r == ref]
    for fut in futs:
        read = _outcome(fut)
        if read is not None:
            return list(read.available)
    return None


def _outcome(fut: Future[PgRead]) -> PgRead | None:
    """The early read, or None when the regular read should run instead. Credentials, a missing
    table or an unreachable server are raised here, so the user gets the regular message once and
    the server is not asked twice; a query the server rejected (e.g. a column of the guess) and
    anything else leave it to the regular read, which says what is wrong."""
    try:
        return fut.result()
    except QueryRejected:  # perhaps only the guess was wrong: the regular read asks what the user asked
        return None
    except (UsageError, ServiceUnreachable):
        raise
    except Exception:  # noqa: BLE001 - the regular path reports it
        return None


def discard() -> None:
    """Stop every early read nobody took (a diff that failed before reading, or tests)."""
    with _lock:
        futs = list(_reads.values())
        _reads.clear()
    for fut in futs:
        fut.add_done_callback(_close_result)


def _close_result(fut: Future[Any]) -> None:
    if fut.exception() is None:
        fut.result().close()
