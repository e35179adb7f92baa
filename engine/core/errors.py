"""User-facing errors and the exit codes of the contract.

Every error a user can cause or fix carries a one-line message naming the problem and the fix; the
CLI prints it without a traceback and exits with the code below. Messages must never contain
secrets: build them from names and endpoints, never from DSNs with passwords or tokens.
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


class ReconError(Exception):
    """Base class: a one-line message and the exit code it maps to."""

    exit_code: Exit = Exit.USAGE

    def __init__(self, message: str) -> None:
        super().__init__(message.replace("\n", " ").strip())


class UsageError(ReconError):
    """Bad option, reference, config, credential or input (exit 2)."""

    exit_code = Exit.USAGE


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
