"""Which rows of a PostgreSQL table changed since the last incremental run, by its ``updated_at``.

The trap: a column filled by ``now()`` holds its transaction's *start* time. A transaction that
started before a run's snapshot and commits after it is invisible to that run, yet its rows carry a
time older than the snapshot: a next run asking for ``updated_at > snapshot time`` would never see
them. So before each run takes its snapshot, it records the clock and the start of the oldest
transaction still open (``pg_stat_activity.xact_start``, client sessions other than its own); the
next run's lower bound is the smaller of the two, less an overlap (:data:`DEFAULT_OVERLAP`). Any
transaction the snapshot misses was open at that moment (so it started no earlier than the oldest
open one) or started later: either way its rows are at or after the bound.

``pg_stat_activity`` shows another role's ``xact_start`` only to a superuser or a member of
``pg_read_all_stats``. When sessions are hidden, the watermark says so (``horizon: "partial"``) and
the run's summary carries the fix; the periodic full check is then the only guard against a long
transaction of another role.

Deletions leave no row behind: the read also counts the rows under the condition in the same
snapshot (``rows_now``), and the engine compares that with what its state predicts.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from engine.connectors.base import ReadRequest, SideChanges
from engine.core.errors import UsageError

if TYPE_CHECKING:
    from engine.connectors.postgres.connector import PostgresSource

#: subtracted from the watermark: the horizon is exact, so this only covers equal timestamps and
#: the microsecond rounding of ``timestamp`` columns
DEFAULT_OVERLAP = timedelta(seconds=1)

_HORIZON = """
SELECT clock_timestamp(),
       min(xact_start) FILTER (WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'),
       count(*) FILTER (WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'
                        AND xact_start IS NULL AND state IS NULL)
FROM pg_stat_activity
"""


def horizon(src: PostgresSource) -> dict[str, Any]:
    """The clock and the oldest open transaction's start, taken *before* the run's snapshot."""
    from engine.connectors.postgres.connection import connect

    with connect(src.ref.dsn, passfile=src.passfile) as conn:
        conn.autocommit = True
        conn.read_only = True
        row = conn.execute(_HORIZON).fetchone()
    assert row is not None
    clock, oldest, hidden = row[0], row[1], int(row[2] or 0)
    lower = min(clock, oldest) if oldest is not None else clock
    out: dict[str, Any] = {"at": clock.astimezone(UTC).isoformat(), "lower_next": lower.astimezone(UTC).isoformat(),
                           "oldest_open_xact": oldest.astimezone(UTC).isoformat() if oldest is not None else None,
                           "horizon": "partial" if hidden else "complete"}
    if hidden:
        out["hidden_sessions"] = hidden
    return out


def parse_watermark(since: dict[str, Any], where: str) -> datetime:
    """The previous run's lower bound for this run, checked (the state is an input like any other)."""
    text = since.get("lower_next") if isinstance(since, dict) else None
    try:
        t = datetime.fromisoformat(str(text))
    except ValueError:
        t = None
    if t is None or t.tzinfo is None:
        raise UsageError(f"the incremental state's watermark for {where} is not a time ({text!r}): "
                         "rebuild the state with --full")
    return t


def changes(src: PostgresSource, req: ReadRequest, since: dict[str, Any] | None, *,
            overlap: timedelta | None = None) -> SideChanges:
    """The rows changed since ``since`` (``mode="changes"``), or every row on a first run
    (``mode="whole"``), with ``rows_now`` and the next watermark."""
    from dataclasses import replace

    where = f"{src.ref.schema}.{src.ref.table}"
    if since is not None and not req.updated_at:
        since = None
        reason = (f"{where} has no updated_at column in the mapping (source_updated_at / target_updated_at): "
                  "every run reads it whole")
    else:
        reason = "first run" if since is None else None
    lower = None
    if since is not None:
        lower = parse_watermark(since, where) - (overlap or DEFAULT_OVERLAP)
    mark = horizon(src)  # before the read's snapshot (see the module's docstring)
    e = src.read(replace(req, changed_since=lower)) if lower is not None else src.read(req)
    # the row count in the read's own snapshot
    rows_now = e.meta.get("rows_now")
    range_counts = e.meta.pop("range_counts", None)
    if rows_now is None and lower is not None:  # pragma: no cover - extract counts when asked
        raise RuntimeError("the changed rows were read without a count")
    meta = {**e.meta, "rows_read": e.frame.height, "horizon": mark["horizon"]}
    if lower is not None:
        meta["lower_bound"] = lower.isoformat()
    if mark["horizon"] == "partial":
        meta["hint"] = (f"{mark['hidden_sessions']} session(s) of other roles hide their transaction start: "
                        "GRANT pg_read_all_stats TO the reading role, so a long transaction of theirs cannot slip "
                        "past the watermark")
    return SideChanges(mode="changes" if lower is not None else "whole", frame=e.frame, columns=e.columns,
                       watermark=mark, rows_now=rows_now if lower is not None else e.frame.height,
                       reason=reason, meta=meta, range_counts=range_counts)
