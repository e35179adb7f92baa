"""Helpers shared by command modules: JSON on stdout, one-line progress on stderr."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

#: The width output is laid out at when its stream is not a terminal: wide enough that no line of
#: recon's (a command printed for copying, a table row with a long value) is ever folded, so a log
#: file or a pipe keeps each number on its label's line and each command on one line.
PIPE_WIDTH = 10_000


def is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class LazyConsole:
    """A rich ``Console`` made on first use: importing rich costs ~20 ms at every start, and a
    run that prints only JSON (schedulers, CI) never needs it.

    When its stream is not a terminal, nothing wraps: rich would otherwise fold every line at 80
    columns, splitting a printed command across two lines and a table value from its label."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._console: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            kwargs = dict(self._kwargs)
            if not is_tty(sys.stderr if kwargs.get("stderr") else sys.stdout):
                kwargs.setdefault("width", PIPE_WIDTH)
                kwargs.setdefault("soft_wrap", True)
            self._console = Console(**kwargs)
        return getattr(self._console, name)


err = LazyConsole(stderr=True, highlight=False)
out = LazyConsole(highlight=False)


def emit_json(obj: Any) -> None:
    """One JSON object on stdout (sorted keys, decimals and times as strings), indented by two.

    Why not ``json.dumps(..., indent=2)``: with an indent the json module encodes in pure Python,
    0.34 s for the 8 MB (divergent ranges, mostly) a 10M-row diff prints. Its C encoder writes the
    text compact and msgspec's formatter indents it: the same bytes (tests/unit/test_emit_json.py)
    in a sixth of the time."""
    import msgspec

    text = json.dumps(obj, sort_keys=True, default=str)
    try:
        out = msgspec.json.format(text.encode(), indent=2).decode()
    except msgspec.DecodeError:  # NaN or Infinity, which the json module writes and JSON has not
        out = json.dumps(obj, indent=2, sort_keys=True, default=str)
    sys.stdout.write(out + "\n")
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


def retry_progress(notice: Any) -> None:
    """The CLI's reporter of :mod:`engine.core.notices`: one line on stderr per retry (what, why,
    how long is left), above a live status line on a terminal, whole in a log. The option
    ``--progress json`` the issue mentions does not exist yet: the line is plain text."""
    err.print(f"recon: waiting: {notice.line()}", markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def naming_options(**options: str) -> Iterator[None]:
    """Add the command's option to a library error about one of its settings.

    Library code words its errors about the data ("table name 'a.b.c' is not schema.table") and
    says which setting it was (``ReconError.field``, e.g. ``table``); inside this block such an
    error gets the option that set it appended (``(--table)``), so the user knows what to change.
    ``options``: setting name → option text, e.g. ``naming_options(table="--table")``.
    """
    from engine.core.errors import ReconError

    try:
        yield
    except ReconError as exc:
        option = options.get(exc.field or "")
        if option and option not in str(exc):
            exc.args = (f"{exc} ({option})",)
        raise
