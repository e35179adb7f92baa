"""recon's one retry policy: how long to wait for a system that is down, and how to tell a user
error (exit 2 at once) from an outage (retried until the deadline, then exit 5).

Why one policy: a command talks to PostgreSQL, Salesforce and Kafka, often several at once, and a
scheduler reading its exit code must be able to rely on the same rule for all of them: a problem
the user must fix fails at once, with one line naming it; anything a wait can cure is waited out
until the deadline and then reported once. Hand-rolled loops drifted apart on both counts (two
PostgreSQL connect loops disagreed on what a user error is).

The policy (:class:`RetryPolicy`): exponential backoff from 0.2 s, doubling, capped (5 s; 20 s for
Salesforce, whose calls are counted), with jitter so parallel workers do not retry in step; a
server's ``Retry-After`` is honoured (at most 60 s); the last sleep is cut to end at the deadline,
so one last attempt is made then. The deadline counts from the first failure ("unreachable for N
s"), or from ``since`` when an outage began earlier. Deadlines and their knobs:

=============  ==========================================  =========================================
system         deadline                                    where classified
=============  ==========================================  =========================================
PostgreSQL     ``RECON_CONNECT_DEADLINE`` (20 s), or the   :func:`engine.connectors.postgres.connection.classify`
               consumer's ``deadline_s`` (``--deadline``)
Salesforce     ``RECON_SF_RETRY_DEADLINE`` (60 s per       :func:`engine.connectors.salesforce.client.classify`
               call; a login 120 s unless it is set)       and :func:`~engine.connectors.salesforce.client.response_outage`
Kafka          metadata: 15 s, or the consumer's           :func:`engine.connectors.kafka.errors.classify`
               ``deadline_s`` (``--deadline``)
=============  ==========================================  =========================================

Each retry is said before its wait (what, how long is left, why: :class:`engine.core.notices.RetryNotice`;
the CLI prints it on stderr). A refused connection is retried like any outage, although it is
refused at once: in production it is mostly a server restarting or failing over, which the wait
cures, and a scheduler must get the same exit code for it whatever the timing; a user who mistyped
the port sees the refusal on the first line, 0.2 s in, and the time left, and can stop there
(``RECON_CONNECT_DEADLINE=0`` for one attempt).

The classification, one function per system (each returns :class:`Outage` to retry, a
:class:`~engine.core.errors.ReconError` to raise at once, or None for "not a system failure": the
original exception propagates):

=============  ====================================================  ===============================================
system         user error: exit 2 at once                            outage: retried, then exit 5
=============  ====================================================  ===============================================
PostgreSQL     wrong or missing password; unknown database or        refused, timed out, no route, starting up or
               role; a pg_hba.conf rule; no CONNECT/LOGIN privilege;  shutting down, too many connections, connection
               bad connection options or sslmode; TLS not trusted     lost (08xxx), admin shutdown (57P0x),
               or not offered                                         serialization failure (40001), deadlock (40P01)
Salesforce     rejected login or session (INVALID_SESSION_ID);       connection refused or failed, timeouts, HTTP 429,
               TLS not trusted, malformed URL; a refused request     502, 503, 504, any 5xx from the API,
               (INVALID_FIELD, INVALID_TYPE, MALFORMED_QUERY, …)      REQUEST_LIMIT_EXCEEDED, SERVER_UNAVAILABLE,
                                                                     QUERY_TIMEOUT
Kafka          SASL authentication failed; topic or group            no broker answers (all brokers down, transport,
               authorization failed; a fatal client error            timeouts, name resolution)
=============  ====================================================  ===============================================
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type

from engine.core.errors import ReconError, ServiceUnreachable, UsageError
from engine.core.notices import RetryNotice, report_retry

T = TypeVar("T")

FIRST_DELAY_S = 0.2
MAX_DELAY_S = 5.0
MAX_RETRY_AFTER_S = 60.0


class Outage(Exception):
    """A failure worth waiting out: the system is down, starting, overloaded or throttling (or, for
    a writer, a conflict a retry resolves). ``detail``: one line for the final message, no secret;
    ``retry_after``: seconds the server asked to wait."""

    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


#: A system's classification of a failure: Outage (retry), ReconError (raise now) or None (re-raise as is)
Classifier = Callable[[BaseException], "Outage | ReconError | None"]


class _Interrupted(Exception):
    """The caller's sleep reported a stop request (the consumer's SIGTERM): give up waiting now."""


def deadline_from_env(name: str, default: float) -> float:
    """Seconds from the environment variable ``name`` (read at each call, so tests and embedding
    programs can change it), else ``default``; a value that is not a number >= 0 is a usage error."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also rejects NaN
        raise UsageError(f"{name}={raw!r} is not a number of seconds (e.g. {name}={default:g})")
    return value


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often to retry one system.

    ``knob``: what sets the deadline, named in the exit-5 message when it is an environment
    variable; ``field``: the settings field it came from (e.g. ``"deadline_s"``), carried by the
    error so a front end can name its own option for it."""

    deadline_s: float
    knob: str = ""
    field: str | None = None
    first_delay_s: float = FIRST_DELAY_S
    max_delay_s: float = MAX_DELAY_S

    def delay(self, attempt: int, outage: Outage | None = None) -> float:
        """The wait after failed attempt number ``attempt`` (1-based), before the deadline cut."""
        if outage is not None and outage.retry_after is not None:
            return float(min(max(outage.retry_after, 0.0), MAX_RETRY_AFTER_S))
        base = min(self.max_delay_s, self.first_delay_s * 2 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)

    def run(self, fn: Callable[[], T], classify: Classifier, *, service: str, hint: str = "", doing: str = "",
            since: float | None = None, sleep: Callable[[float], object] = time.sleep,
            notice: Callable[[str], None] | None = None,
            unreachable: type[ReconError] = ServiceUnreachable) -> T:
        """``fn()``, retried while ``classify`` calls its failure an :class:`Outage`.

        ``service`` names the system and where it is ("PostgreSQL at host:5432/db"), ``doing`` what
        was being done, with its preposition ("while writing a batch", "during the SOAP login"),
        ``hint`` the fix; they make the one-line messages.
        ``sleep`` may return False to give up at once (a stop request); ``notice`` receives a line
        per retry (without it, the front end's reporter of :mod:`engine.core.notices` gets a
        :class:`~engine.core.notices.RetryNotice`: what, why, and how long is left); ``unreachable``
        is the error raised past the deadline (a subclass of
        ServiceUnreachable for a system with its own, e.g. Salesforce's).
        """
        start = since
        attempts = 0
        last: list[Outage] = []

        def attempt() -> T:
            nonlocal attempts, start
            attempts += 1
            try:
                return fn()
            except Exception as exc:
                if start is None:
                    start = time.monotonic()  # the clock starts at the first failure
                if isinstance(exc, (Outage, ReconError)):
                    raise
                verdict = classify(exc)
                if verdict is None:
                    raise
                raise verdict from None

        def elapsed() -> float:
            return 0.0 if start is None else time.monotonic() - start

        def stop(state: RetryCallState) -> bool:
            return elapsed() >= self.deadline_s

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            outage = exc if isinstance(exc, Outage) else None
            return max(0.0, min(self.delay(state.attempt_number, outage), self.deadline_s - elapsed()))

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, Outage):
                last[:] = [exc]
                pause = state.next_action.sleep if state.next_action else 0.0
                said = RetryNotice(service=service, doing=doing, reason=exc.detail, attempt=state.attempt_number + 1,
                                   retry_in_s=pause, left_s=max(0.0, self.deadline_s - elapsed()))
                if notice is not None:
                    notice(said.line())
                else:
                    report_retry(said)

        def do_sleep(seconds: float) -> None:
            if sleep(seconds) is False:
                raise _Interrupted

        retrying = Retrying(retry=retry_if_exception_type(Outage), stop=stop, wait=wait, sleep=do_sleep,
                            before_sleep=before_sleep, reraise=True)
        try:
            return retrying(attempt)
        except Outage as exc:
            raise unreachable(self._gave_up(service, exc.detail, attempts, hint, doing), field=self.field) from None
        except _Interrupted:
            detail = f": {last[0].detail}" if last else ""
            while_ = f" ({doing})" if doing else ""
            raise unreachable(f"stopped while {service} was unreachable{while_}{detail}"
                              f"{'; ' + hint if hint else ''}", field=self.field) from None

    def _gave_up(self, service: str, detail: str, attempts: int, hint: str, doing: str) -> str:
        knob = f" ({self.knob})" if self.knob else ""
        during = f" {doing}" if doing else ""
        tries = f" ({attempts} attempt{'s' if attempts != 1 else ''})"
        return f"{service} unreachable for {self.deadline_s:g} s{knob}{during}: {detail}{tries}{'; ' + hint if hint else ''}"
