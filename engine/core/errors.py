"""User-facing errors and the exit codes of the contract.

Every error a user can cause or fix carries a one-line message naming the problem and the fix; the
CLI prints it without a traceback and exits with the code below. Messages must never contain
secrets: build them from names and endpoints, never from DSNs with passwords or tokens.

Library code (connectors, store, evidence, core) words its messages about the data — a table name,
a deadline, a column — never about a command-line option: it is also called without the CLI. When
the data came from a setting a front end knows by another name, the error says which setting
(``field``, e.g. ``"table"`` or ``"deadline_s"``) and the front end may add its own name for it
(the CLI appends ``(--table)``).
"""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    FINDINGS = 1
    USAGE = 2
    BREAKER_OPEN = 3
    VERIFY_FAILED = 4
    UNREACHABLE = 5
    INTERNAL = 70  # a bug: the traceback is printed so it can be reported
    INTERRUPTED = 130  # SIGINT / Ctrl-C, as a shell reports it


class ReconError(Exception):
    """Base class: a one-line message and the exit code it maps to.

    ``field``: the setting the error is about (a request or settings field name such as ``"table"``),
    so that a front end can name its own option for it; None when the message says it all."""

    exit_code: Exit = Exit.USAGE

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message.replace("\n", " ").strip())
        self.field = field


class UsageError(ReconError):
    """Bad option, reference, config, credential or input (exit 2)."""

    exit_code = Exit.USAGE


class QueryRejected(UsageError):
    """A system rejected a query recon built from the user's input: an unknown column the server
    saw first, a condition that does not parse, a missing privilege (exit 2). Its own class because
    a caller holding a guess (the early PostgreSQL read) may retry with what the user asked for."""


class VerificationError(ReconError):
    """A ledger chain or a manifest failed verification (exit 4)."""

    exit_code = Exit.VERIFY_FAILED


class ServiceUnreachable(ReconError):
    """A service stayed unreachable past its deadline (exit 5)."""

    exit_code = Exit.UNREACHABLE


def kafka_config_error(exc: Exception, option: str = "--kafka-config") -> UsageError:
    """librdkafka's refusal of a client property, as a UsageError that names the property and never
    its value (the value may be a SASL password, and librdkafka's text can quote it)."""
    import re

    text = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
    m = re.search(r'property:? "?([A-Za-z0-9._-]+)', text)
    what = ("unknown" if "No such" in text else "invalid value for") if m else ""
    prop = f": {what} property {m.group(1)!r}" if m else ""
    return UsageError(f"invalid Kafka configuration{prop}: check {option}")
