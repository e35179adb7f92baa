"""`recon watch` without I/O: the ``--every`` period, when the next cycle starts, and which of a
cycle's differences are new since the previous completed cycle.

The schedule rule lives here, apart from clocks and sleeps, so that it is tested with numbers
alone: a cycle starts ``every`` seconds after the previous one started, or right after it ended
when it overran; never two at once, and never a burst of cycles to "catch up" after a slow one.
"""

from __future__ import annotations

import re

import polars as pl

from engine.core.errors import UsageError

#: the shortest and longest periods: below a second the cycles are a busy loop, above a week a
#: cron entry with ``--once`` says it better
MIN_EVERY_S = 1
MAX_EVERY_S = 7 * 24 * 3600

_UNITS = {"s": 1, "m": 60, "h": 3600}
_EVERY = re.compile(r"([0-9]{1,7})([smh])", re.ASCII)


def parse_every(text: str) -> int:
    """``--every`` as whole seconds: a whole number and a unit, ``30s``, ``5m`` or ``1h``.

    Anything else (no unit, a sign, a fraction, spaces, an exponent, zero, more than a week) is a
    usage error that names the form to use: a typo must not become a busy loop or a year's sleep."""
    fix = "give a whole number with s, m or h, from 1s to 168h, e.g. --every 5m (or --once for cron)"
    m = _EVERY.fullmatch(text or "")
    if m is None:
        raise UsageError(f"--every {text!r} is not a period: {fix}")
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if not MIN_EVERY_S <= seconds <= MAX_EVERY_S:
        raise UsageError(f"--every {text!r} is out of range: {fix}")
    return seconds


def next_start(started: float, ended: float, every: float) -> float:
    """When the next cycle starts: ``every`` after this one started, or at its end when it overran
    the period (no overlap: never before ``ended``; no pile-up: one cycle, not the missed ones)."""
    return max(started + every, ended)


#: the columns of a differences table that identify one difference (``differences.parquet``)
DIFFERENCE_COLUMNS = ("key", "kind", "column", "source_value", "target_value")


def new_differences(previous: pl.DataFrame | None, current: pl.DataFrame) -> pl.DataFrame:
    """The rows of ``current`` that ``previous`` does not hold (all of it without a previous cycle).

    A difference is the same when its key, kind, column and both values are: a mismatch whose
    values moved is new (there is something new to explain), one that stayed as it was is not."""
    if previous is None:
        return current
    on = [c for c in DIFFERENCE_COLUMNS if c in current.columns and c in previous.columns]
    if not on:
        return current
    prev = previous.select(on)
    cast = {c: current.schema[c] for c in on if prev.schema[c] != current.schema[c]}
    if cast:
        prev = prev.with_columns(*(pl.col(c).cast(t) for c, t in cast.items()))
    return current.join(prev.unique(), on=on, how="anti", nulls_equal=True)


def new_keys(previous: pl.DataFrame | None, current: pl.DataFrame) -> list[str]:
    """The distinct keys with at least one new difference, sorted: what explain looks at."""
    fresh = new_differences(previous, current)
    if fresh.height == 0:
        return []
    return fresh["key"].cast(pl.Utf8).unique().sort().to_list()
