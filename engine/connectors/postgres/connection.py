"""Connecting to PostgreSQL, and the one place that tells a PostgreSQL failure the user must fix
(exit 2 at once) from one worth waiting out (retried by :mod:`engine.connectors.retry`, exit 5).

Every PostgreSQL connection recon opens (the reader, the ledger, the breaker, repair, the Kafka
consumer's sink) goes through :func:`connect`. The password comes from the DSN, ``PGPASSWORD``,
the ``passfile`` given here (``[postgres] passfile`` of recon.toml, see
:meth:`engine.config.Config.pg_passfile`), ``PGPASSFILE`` or ``~/.pgpass``: libpq's own order,
with the config's file passed as a connection parameter, never through ``os.environ``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from engine.connectors.refs import redact_dsn
from engine.connectors.retry import Outage, RetryPolicy, deadline_from_env
from engine.core.errors import ReconError, UsageError

if TYPE_CHECKING:
    import psycopg

CONNECT_DEADLINE_ENV: Final[str] = "RECON_CONNECT_DEADLINE"
CONNECT_DEADLINE_S: Final[float] = 20.0
CONNECT_HINT: Final[str] = "check that the server runs and the host/port are right"

#: libpq connection failures the user must fix (credentials, names, rules, TLS setup). libpq gives a
#: failed connection no SQLSTATE, so its text is all there is to go by.
_USER_CONNECT_ERRORS: Final[tuple[str, ...]] = (
    "password authentication failed", "no password supplied", "does not exist", "invalid connection option",
    "invalid integer value", "invalid sslmode", "pg_hba.conf", "permission denied", "is not permitted to log in",
    "certificate verify failed", "server does not support SSL",
)
#: SQLSTATEs of a session worth retrying: serialization failure, deadlock, admin shutdown, crash
#: shutdown, cannot connect now (and every connection exception, class 08)
_TRANSIENT_STATES: Final[tuple[str, ...]] = ("40001", "40P01", "57P01", "57P02", "57P03")


def first_line(msg: str) -> str:
    """The first line of a server or libpq message, whitespace collapsed."""
    return " ".join(msg.strip().splitlines()[0].split()) if msg.strip() else msg


def classify(exc: BaseException, where: str) -> Outage | ReconError | None:
    """PostgreSQL's verdict on a failure: a UsageError naming ``where`` and the fix, an Outage, or
    None when it is not a connection or availability problem (a query error: the caller's)."""
    import psycopg

    if isinstance(exc, psycopg.OperationalError):
        msg = str(exc)
        if any(h in msg for h in _USER_CONNECT_ERRORS):
            return UsageError(user_message(msg, where))
        return Outage(re.sub(r"^connection failed: ", "", first_line(msg)))
    if isinstance(exc, psycopg.InterfaceError):  # e.g. the connection was closed under us
        return Outage(first_line(str(exc)) or type(exc).__name__)
    state = getattr(exc, "sqlstate", None) or ""
    if state in _TRANSIENT_STATES or state.startswith("08"):
        return Outage(first_line(str(exc)))
    return None


def user_message(msg: str, where: str) -> str:
    """The one line for a connection failure the user must fix (never the password: libpq does not
    quote it)."""
    low = msg.lower()
    if "no password supplied" in low:
        return (f"PostgreSQL at {where} asks for a password and none was given: set PGPASSWORD or PGPASSFILE, "
                "[postgres] passfile in recon.toml, or ~/.pgpass")
    if "password authentication failed" in low:
        return (f"PostgreSQL at {where} refused the password: check PGPASSWORD, PGPASSFILE, [postgres] passfile "
                "or ~/.pgpass, and the user")
    if "does not exist" in msg:
        line = next((ln for ln in msg.splitlines() if "does not exist" in ln), msg)
        return f"PostgreSQL at {where}: {line.split('FATAL:')[-1].strip()}"
    return f"cannot connect to PostgreSQL at {where}: {re.sub(r'^connection failed: ', '', first_line(msg))}"


def connect_policy(deadline_s: float | None = None, *, field: str | None = None) -> RetryPolicy:
    """The connect retry policy: ``deadline_s``, else ``RECON_CONNECT_DEADLINE`` (20 s)."""
    if deadline_s is not None:
        return RetryPolicy(deadline_s, field=field)
    return RetryPolicy(deadline_from_env(CONNECT_DEADLINE_ENV, CONNECT_DEADLINE_S), knob=CONNECT_DEADLINE_ENV)


def connect(dsn: str, *, passfile: str | Path | None = None, deadline_s: float | None = None,
            where: str | None = None, field: str | None = None, since: float | None = None,
            sleep: Callable[[float], object] | None = None, notice: Callable[[str], None] | None = None,
            connect_timeout: int = 5, **kwargs: Any) -> psycopg.Connection:
    """Connect, waiting out an unreachable server until the deadline (exit 5); a user error fails at
    once (exit 2).

    ``passfile``: the password file for this connection (libpq's ``passfile`` parameter);
    ``deadline_s``: else ``RECON_CONNECT_DEADLINE``; ``where``: how messages name the server
    (default: the DSN without its password); ``field``: the settings field the deadline came from;
    ``since``/``sleep``/``notice``: see :meth:`RetryPolicy.run`; ``kwargs`` go to psycopg.
    """
    import time

    import psycopg

    place = where or redact_dsn(dsn)
    if passfile is not None:
        kwargs["passfile"] = str(passfile)
    return connect_policy(deadline_s, field=field).run(
        lambda: psycopg.connect(dsn, connect_timeout=connect_timeout, **kwargs),
        lambda exc: classify(exc, place), service=f"PostgreSQL at {place}", hint=CONNECT_HINT,
        since=since, sleep=sleep or time.sleep, notice=notice)


#: the default ``statement_timeout`` of a read (30 minutes): a runaway condition or a blocked COPY
#: ends with an error instead of holding a snapshot open for ever. ``[postgres] statement_timeout``
#: (seconds, 0 for none) changes it; see :meth:`engine.config.Config.pg_statement_timeout_ms`.
DEFAULT_STATEMENT_TIMEOUT_MS: Final[int] = 30 * 60 * 1000


def statement_timeout_ms(config: Any) -> int:
    """The read timeout ``config`` asks for (``[postgres] statement_timeout``), else the default."""
    v = config.pg_statement_timeout_ms() if config is not None else None
    return DEFAULT_STATEMENT_TIMEOUT_MS if v is None else v


def session_settings(statement_timeout_ms: int) -> Any:
    """The SET statements every read session starts with: transactions read only by default (a
    statement outside recon's own READ ONLY transaction still cannot write) and the timeout."""
    from psycopg import sql

    return sql.SQL("SET default_transaction_read_only = on; SET statement_timeout = {}").format(
        sql.Literal(int(statement_timeout_ms)))


def server_check(conn: psycopg.Connection, query: Any, where: str) -> None:
    """Let the server parse and plan exactly ``query`` without running it: an unnamed prepared
    statement through the extended protocol, which refuses more than one statement. A rejection
    raises :class:`~engine.core.errors.QueryRejected` with the server's line."""
    from psycopg import pq

    from engine.core.errors import QueryRejected

    text = query.as_string(conn) if hasattr(query, "as_string") else str(query)
    res = conn.pgconn.prepare(b"", text.encode(conn.info.encoding))
    if res.status != pq.ExecStatus.COMMAND_OK:
        msg = (res.error_message or b"").decode("utf-8", "replace")
        line = first_line(msg).split("ERROR:", 1)[-1].strip() or "rejected"
        raise QueryRejected(f"PostgreSQL rejected the query on {where}: {line}")
