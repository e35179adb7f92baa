"""The one place that tells a Kafka client failure the user must fix (exit 2 at once) from an
unreachable broker (waited out by :mod:`engine.connectors.retry`, exit 5).

librdkafka reports most trouble twice: as the error of the call that failed (a metadata request
timing out) and through the client's error callback (why: a refused SASL login, all brokers down).
Both go through :func:`verdict`; the scan and the consumer ask the same question the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine.connectors.retry import Outage
from engine.core.errors import ReconError, UsageError


def verdict(err: Any, bootstrap: str) -> ReconError | Outage:
    """One librdkafka ``KafkaError``: refused credentials, denied authorization or a fatal client
    error are the user's to fix; anything else (all brokers down, transport, timeouts, name
    resolution) is an outage. librdkafka's text is not shown for a refused login: it names the user."""
    from confluent_kafka import KafkaError

    code = err.code()
    if code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
        return UsageError(f"Kafka at {bootstrap} refused the credentials (SASL authentication failed): "
                          "check sasl.username, sasl.password and sasl.mechanism in --kafka-config")
    if code in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED):
        return UsageError(f"Kafka at {bootstrap} denied access: {err.str()} (check --kafka-config and ACLs)")
    if err.fatal():
        return UsageError(f"Kafka at {bootstrap} refused the client: {err.str()} (check --kafka-config)")
    return Outage(err.str())


def classify(exc: BaseException, bootstrap: str, reported: Iterable[Any] = ()) -> ReconError | Outage | None:
    """A failed request (``KafkaException``) together with what the error callback ``reported``
    meanwhile: the first user error among them, else an outage ("did not answer"); None for any
    other exception."""
    from confluent_kafka import KafkaException

    if not isinstance(exc, KafkaException):
        return None
    own = exc.args[0] if exc.args and hasattr(exc.args[0], "code") else None
    for err in (*reported, *([own] if own is not None else [])):
        v = verdict(err, bootstrap)
        if isinstance(v, ReconError):
            return v
    return Outage(f"did not answer ({own.name() if own is not None else type(exc).__name__})")

