"""Progress of a wait, from the library to whichever front end shows it.

Why here: a retry loop lives in a connector (PostgreSQL, Salesforce, Kafka), but only the front end
knows where a person reads progress (the CLI: one line on stderr). The connector reports a
:class:`RetryNotice` through :func:`report_retry`; the front end installs the reporter with
:func:`set_retry_reporter`. Without one (library use, the embedded demo's own calls) nothing is
said, as before. This module holds no I/O and imports nothing heavy, so the CLI installs its
reporter at start without paying for the retry machinery.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RetryNotice:
    """One failed attempt and the next one, said before the wait.

    ``service`` names the system and where it is, never with a secret (a DSN without its password);
    ``doing`` what was being done ("during the SOAP login"); ``reason`` the outage's one-line
    detail; ``attempt`` the number of the attempt about to be made (2 for the first retry);
    ``retry_in_s`` the wait before it; ``left_s`` the time until recon gives up (exit 5)."""

    service: str
    doing: str
    reason: str
    attempt: int
    retry_in_s: float
    left_s: float

    def line(self) -> str:
        """What, how long is left, and why, in one line (it begins as the notices always did)."""
        during = f" {self.doing}" if self.doing else ""
        return (f"{self.service} unreachable{during}, retrying in {self.retry_in_s:.1f} s (attempt {self.attempt}, "
                f"giving up in {self.left_s:.1f} s): {self.reason}")

    def as_dict(self) -> dict[str, Any]:
        return {"event": "retry", "service": self.service, "doing": self.doing, "reason": self.reason,
                "attempt": self.attempt, "retry_in_s": round(self.retry_in_s, 3), "left_s": round(self.left_s, 3)}


RetryReporter = Callable[[RetryNotice], None]

_reporter: RetryReporter | None = None


def set_retry_reporter(reporter: RetryReporter | None) -> RetryReporter | None:
    """Install the front end's reporter (None: silence); returns the previous one, to restore."""
    global _reporter
    previous, _reporter = _reporter, reporter
    return previous


def report_retry(notice: RetryNotice) -> None:
    if _reporter is not None:
        _reporter(notice)
