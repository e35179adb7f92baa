"""Helpers shared by command modules: JSON on stdout, one-line progress on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any


class LazyConsole:
    """A rich ``Console`` made on first use: importing rich costs ~20 ms at every start, and a
    run that prints only JSON (schedulers, CI) never needs it."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._console: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._kwargs)
        return getattr(self._console, name)


err = LazyConsole(stderr=True, highlight=False)
out = LazyConsole(highlight=False)


def emit_json(obj: Any) -> None:
    """One JSON object on stdout (sorted keys, decimals and times as strings)."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def parse_time(text: str | None, opt: str) -> Any:
    """An option's ISO-8601 time (naive = UTC), or a one-line usage error naming the option."""
    if not text:
        return None
    from datetime import UTC, datetime

    from engine.core.errors import UsageError

    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{opt} {text!r} is not an ISO-8601 time, e.g. 2026-09-30T23:59:59Z") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def progress(msg: str) -> None:
    err.print(f"[dim]·[/dim] {msg}")
