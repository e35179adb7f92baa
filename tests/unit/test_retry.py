"""recon's one retry policy and the three classifications (user error: exit 2 at once; outage:
retried until the deadline, then exit 5), without services: a closed local port is an outage, and
the exceptions of the client libraries are built by hand."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from engine.connectors.retry import Outage, RetryPolicy, deadline_from_env
from engine.core.errors import Exit, ReconError, ServiceUnreachable, UsageError


def free_port() -> int:
    """A local port nothing listens on (bound, read, released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Flaky:
    """A call that fails ``failures`` times with ``exc``, then returns "ok"."""

    def __init__(self, exc: BaseException, failures: int = 10**9) -> None:
        self.exc, self.failures, self.calls = exc, failures, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return "ok"


def outage(exc: BaseException) -> Outage | ReconError | None:
    if isinstance(exc, ConnectionRefusedError):
        return Outage("connection refused")
    if isinstance(exc, PermissionError):
        return UsageError("the password was refused")
    return None


# -- the policy ------------------------------------------------------------------------------------

def test_an_outage_is_retried_until_it_passes() -> None:
    fn = Flaky(ConnectionRefusedError(), failures=3)
    assert RetryPolicy(5.0, first_delay_s=0.01).run(fn, outage, service="X at h:1") == "ok"
    assert fn.calls == 4


def test_an_outage_past_the_deadline_is_exit_5_with_one_line_naming_the_service() -> None:
    fn = Flaky(ConnectionRefusedError())
    t = time.monotonic()
    with pytest.raises(ServiceUnreachable) as exc:
        RetryPolicy(0.5, knob="RECON_X_DEADLINE", first_delay_s=0.01).run(
            fn, outage, service="X at h:1", doing="while reading", hint="check it runs")
    took = time.monotonic() - t
    assert 0.5 <= took < 1.5  # one last attempt at the deadline, not one sleep beyond it
    msg = str(exc.value)
    assert exc.value.exit_code == Exit.UNREACHABLE and "\n" not in msg
    assert msg.startswith("X at h:1 unreachable for 0.5 s (RECON_X_DEADLINE) while reading: connection refused (")
    assert msg.endswith("attempts); check it runs") and fn.calls >= 3


def test_a_user_error_fails_at_once_and_anything_else_passes_through() -> None:
    fn = Flaky(PermissionError())
    with pytest.raises(UsageError, match="the password was refused"):
        RetryPolicy(30.0).run(fn, outage, service="X")
    assert fn.calls == 1
    fn = Flaky(KeyError("a bug"))
    with pytest.raises(KeyError):
        RetryPolicy(30.0).run(fn, outage, service="X")
    assert fn.calls == 1
    fn = Flaky(UsageError("already classified"))
    with pytest.raises(UsageError, match="already classified"):
        RetryPolicy(30.0).run(fn, outage, service="X")
    assert fn.calls == 1


def test_the_deadline_counts_from_the_first_failure_or_from_since() -> None:
    slow_then_down = iter([0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])

    def fn() -> str:
        time.sleep(next(slow_then_down, 0.0))  # a long first call that then fails
        raise ConnectionRefusedError

    t = time.monotonic()
    with pytest.raises(ServiceUnreachable):
        RetryPolicy(0.3, first_delay_s=0.01).run(fn, outage, service="X")
    assert time.monotonic() - t >= 0.6  # 0.3 s of work + 0.3 s of outage
    t = time.monotonic()
    with pytest.raises(ServiceUnreachable):  # an outage that began a second ago: one attempt, no wait
        RetryPolicy(0.3).run(Flaky(ConnectionRefusedError()), outage, service="X", since=time.monotonic() - 1)
    assert time.monotonic() - t < 0.2


def test_retry_after_is_honoured_and_notices_say_how_long() -> None:
    fn = Flaky(Outage("HTTP 429", retry_after=0.2), failures=1)
    lines: list[str] = []
    slept: list[float] = []
    RetryPolicy(10.0).run(fn, outage, service="X at h", sleep=slept.append, notice=lines.append)
    assert slept == [0.2] and lines == ["X at h unreachable, retrying in 0.2 s (attempt 2, giving up in 10.0 s): HTTP 429"]


def test_a_stop_request_while_waiting_gives_up_at_once() -> None:
    with pytest.raises(ServiceUnreachable, match=r"stopped while X was unreachable \(while writing\): connection "
                                                 r"refused; nothing lost") as exc:
        RetryPolicy(60.0, field="deadline_s").run(Flaky(ConnectionRefusedError()), outage, service="X",
                                                  doing="while writing", hint="nothing lost", sleep=lambda _s: False)
    assert exc.value.field == "deadline_s"


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    p = RetryPolicy(60.0, first_delay_s=0.2, max_delay_s=5.0)
    for attempt, base in ((1, 0.2), (2, 0.4), (3, 0.8), (6, 5.0), (20, 5.0)):
        d = p.delay(attempt)
        assert base / 2 <= d <= base
    assert p.delay(1, Outage("x", retry_after=600)) == 60.0


def test_deadline_knobs_are_read_at_each_call_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECON_X_DEADLINE", raising=False)
    assert deadline_from_env("RECON_X_DEADLINE", 20) == 20
    monkeypatch.setenv("RECON_X_DEADLINE", "0.5")
    assert deadline_from_env("RECON_X_DEADLINE", 20) == 0.5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("RECON_X_DEADLINE", bad)
        with pytest.raises(UsageError, match="RECON_X_DEADLINE"):
            deadline_from_env("RECON_X_DEADLINE", 20)


# -- PostgreSQL ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("message", "kind", "needle"), [
    ('connection to server at "h", port 5432 failed: FATAL:  password authentication failed for user "u"',
     UsageError, "refused the password"),
    ("connection to server at \"h\", port 5432 failed: fe_sendauth: no password supplied", UsageError,
     "none was given"),
    ('connection to server at "h", port 5432 failed: FATAL:  database "nope" does not exist', UsageError,
     'database "nope" does not exist'),
    ('connection to server at "h", port 5432 failed: FATAL:  role "nobody" does not exist', UsageError,
     'role "nobody" does not exist'),
    ('connection to server at "h", port 5432 failed: FATAL:  no pg_hba.conf entry for host "10.0.0.1"', UsageError,
     "pg_hba.conf"),
    ('connection to server at "h", port 5432 failed: FATAL:  permission denied for database "db"', UsageError,
     "permission denied"),
    ("invalid sslmode value: \"sometimes\"", UsageError, "invalid sslmode"),
    ('connection to server at "h", port 5432 failed: Connection refused', Outage, "Connection refused"),
    ('connection to server at "h", port 5432 failed: FATAL:  the database system is starting up', Outage,
     "starting up"),
    ('connection to server at "h", port 5432 failed: FATAL:  sorry, too many clients already', Outage,
     "too many clients"),
    ("connection to server at \"h\", port 5432 failed: timeout expired", Outage, "timeout expired"),
])
def test_postgres_connect_failures_are_classified_in_one_place(message: str, kind: type, needle: str) -> None:
    from engine.connectors.postgres.connection import classify

    got = classify(psycopg.OperationalError(message), "h:5432/db")
    assert isinstance(got, kind) and needle in str(got)
    if isinstance(got, UsageError):
        assert "h:5432/db" in str(got) and got.exit_code == Exit.USAGE


def test_postgres_session_failures_are_outages_and_query_errors_are_the_callers() -> None:
    from engine.connectors.postgres.connection import classify

    for exc in (psycopg.errors.SerializationFailure("x"), psycopg.errors.DeadlockDetected("x"),
                psycopg.errors.AdminShutdown("x"), psycopg.InterfaceError("the connection is closed")):
        assert isinstance(classify(exc, "h"), Outage), exc
    for exc in (psycopg.errors.UndefinedTable("x"), psycopg.errors.InsufficientPrivilege("x"), ValueError("x")):
        assert classify(exc, "h") is None


def test_a_closed_port_is_an_outage_that_gives_up_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.connectors.postgres.connection import connect

    monkeypatch.setenv("RECON_CONNECT_DEADLINE", "0.7")
    port = free_port()
    t = time.monotonic()
    with pytest.raises(ServiceUnreachable) as exc:
        connect(f"postgresql://recon@127.0.0.1:{port}/recon")
    assert 0.7 <= time.monotonic() - t < 4
    msg = str(exc.value)
    assert f"127.0.0.1:{port}/recon unreachable for 0.7 s (RECON_CONNECT_DEADLINE)" in msg and "\n" not in msg


def test_a_closed_port_via_the_cli_is_exit_5_at_the_deadline(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(RECON_CONNECT_DEADLINE="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    t = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "engine.cli.main", "diff", f"postgresql://recon@127.0.0.1:{port}/recon"
                          "#public.accounts", f"parquet:{tmp_path / 'x.parquet'}", "-k", "id"],
                         capture_output=True, text=True, env=env, timeout=60)
    took = time.monotonic() - t
    assert res.returncode == 5, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("recon: waiting: ")]
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert f"127.0.0.1:{port}/recon unreachable for 1 s" in lines[0]
    assert took < 10  # the early read and the regular read share one outage: no double wait beyond it


# -- Salesforce ------------------------------------------------------------------------------------

def _api_error(cls_name: str, status: int, code: str, message: str = "m") -> Exception:
    from simple_salesforce import exceptions as sx

    return getattr(sx, cls_name)("https://x/services/data/v59.0/query", status, "query",
                                 [{"errorCode": code, "message": message}])


def test_salesforce_failures_are_classified_in_one_place() -> None:
    from engine.connectors.salesforce.client import (
        SalesforceAuthError,
        SalesforceConfigError,
        SalesforceRefused,
        classify,
    )

    cases: list[tuple[BaseException, type, str]] = [
        (requests.exceptions.ConnectionError("Connection refused"), Outage, "connection refused"),
        (requests.exceptions.ConnectTimeout("slow"), Outage, "timed out"),
        (requests.exceptions.SSLError("certificate verify failed"), SalesforceConfigError, "SF_CA_BUNDLE"),
        (requests.exceptions.MissingSchema("no scheme"), SalesforceConfigError, "invalid Salesforce URL"),
        (_api_error("SalesforceGeneralError", 503, "SERVER_UNAVAILABLE"), Outage, "SERVER_UNAVAILABLE"),
        (_api_error("SalesforceRefusedRequest", 403, "REQUEST_LIMIT_EXCEEDED"), Outage, "REQUEST_LIMIT_EXCEEDED"),
        (_api_error("SalesforceGeneralError", 429, ""), Outage, "HTTP 429"),
        (_api_error("SalesforceMalformedRequest", 400, "INVALID_FIELD", "No such column 'Nope'"), SalesforceRefused,
         "INVALID_FIELD No such column 'Nope'"),
        (_api_error("SalesforceMalformedRequest", 400, "MALFORMED_QUERY"), SalesforceRefused, "MALFORMED_QUERY"),
        (_api_error("SalesforceExpiredSession", 401, "INVALID_SESSION_ID"), SalesforceAuthError, "log in again"),
    ]
    for exc, kind, needle in cases:
        got = classify(exc, "org.example:443")
        assert isinstance(got, kind) and needle in str(got), (exc, got)
    assert classify(ValueError("x"), "h") is None
    assert SalesforceRefused("x").exit_code == SalesforceAuthError("x").exit_code == Exit.USAGE


def test_salesforce_responses_that_mean_wait() -> None:
    from engine.connectors.salesforce.client import response_outage

    def resp(status: int, body: str = "{}", retry_after: str | None = None) -> requests.Response:
        r = requests.Response()
        r.status_code, r._content = status, body.encode()
        if retry_after is not None:
            r.headers["Retry-After"] = retry_after
        return r

    got = response_outage(resp(503, retry_after="7"))
    assert isinstance(got, Outage) and got.retry_after == 7.0 and got.detail == "HTTP 503"
    assert isinstance(response_outage(resp(403, '[{"errorCode": "REQUEST_LIMIT_EXCEEDED"}]')), Outage)
    for status in (200, 400, 401, 403, 404):
        assert response_outage(resp(status)) is None


def test_salesforce_errors_are_recon_errors_with_their_exit_codes() -> None:
    from engine.connectors.salesforce import client

    assert client.SalesforceUnreachable("x").exit_code == Exit.UNREACHABLE
    assert isinstance(client.SalesforceUnreachable("x"), ServiceUnreachable)
    for cls in (client.SalesforceAuthError, client.SalesforceConfigError, client.SalesforceRefused):
        assert issubclass(cls, UsageError) and cls("x").exit_code == Exit.USAGE


# -- Kafka -----------------------------------------------------------------------------------------

def test_kafka_failures_are_classified_in_one_place() -> None:
    from confluent_kafka import KafkaError, KafkaException

    from engine.connectors.kafka.errors import classify

    silent = KafkaException(KafkaError(KafkaError._TRANSPORT))
    got = classify(silent, "b:9092")
    assert isinstance(got, Outage) and got.detail == "did not answer (_TRANSPORT)"
    got = classify(silent, "b:9092", [KafkaError(KafkaError._ALL_BROKERS_DOWN),
                                      KafkaError(KafkaError.SASL_AUTHENTICATION_FAILED, "user alice")])
    assert isinstance(got, UsageError) and "refused the credentials" in str(got) and "alice" not in str(got)
    got = classify(silent, "b:9092", [KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "denied")])
    assert isinstance(got, UsageError) and "denied access" in str(got)
    got = classify(KafkaException(KafkaError(KafkaError._FATAL, "fenced", fatal=True)), "b:9092")
    assert isinstance(got, UsageError)
    assert classify(ValueError("x"), "b:9092") is None


# -- the passfile is a connection parameter, not an environment change -----------------------------

def test_a_diff_with_a_config_passfile_leaves_os_environ_alone(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    """The config's passfile reaches psycopg as the ``passfile`` parameter; os.environ is untouched
    (the diff fails here: nothing listens on the port)."""
    from engine.app import diff as use_case
    from engine.config import load

    for name in ("PGPASSFILE", "PGPASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RECON_CONNECT_DEADLINE", "0.3")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text("*:*:*:*:not-a-real-password\n")
    pgpass.chmod(0o600)
    (tmp_path / "recon.toml").write_text('[postgres]\npassfile = "pgpass"\n')  # relative to the config
    seen: list[dict[str, Any]] = []
    real = psycopg.connect

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(psycopg, "connect", spy)
    import polars  # noqa: F401 - sets its allocator's variable (_RJEM_MALLOC_CONF) on import: not recon's doing

    before = dict(os.environ)
    opts = use_case.DiffOptions(source=f"postgresql://recon@127.0.0.1:{free_port()}/recon#public.a",
                                target=f"parquet:{tmp_path / 'b.parquet'}", keys=(("id", "id"),))
    with pytest.raises(ServiceUnreachable):
        use_case.run(opts, load(tmp_path / "recon.toml"))
    assert dict(os.environ) == before
    assert seen and all(kw.get("passfile") == str(pgpass) for kw in seen)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "other"))  # the environment wins: libpq reads it itself
    assert load(tmp_path / "recon.toml").pg_passfile() is None
