# ruff: noqa: S608 - SQL built from the test's own constant table names
"""`--as-of T` on the warehouse side: the mapping's `target_updated_at` column says when a row last
changed, and a key changed after T counts as `in_flight`, not as a difference (README, "--as-of";
engine/app/diff.py merges the mapping's column into the request).

Every class is checked by key against a table written here, at the edges the contract names:
changed exactly at T (not after), a millisecond after T, a warehouse-only row inserted after T, an
equal row touched after T. Naive `timestamp` columns hold UTC (README, "Normalization"), whatever
the session's TimeZone; a `timestamptz` column is an instant.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pytest

from engine.core.errors import UsageError

T = datetime(2026, 9, 30, 12, 0, tzinfo=UTC)
#: key → (warehouse value or None for no row, updated_at as UTC wall time, Salesforce value or None)
ROWS: dict[str, tuple[str | None, str, str | None]] = {
    "a": ("1.00", "2026-09-30 10:00:00", "9.00"),       # differs, changed before T: mismatched
    "b": ("2.00", "2026-09-30 12:00:00", "9.00"),       # differs, changed exactly at T: mismatched
    "c": ("3.00", "2026-09-30 12:00:00.001", "9.00"),   # differs, changed a millisecond after T: in flight
    "d": ("4.00", "2026-09-30 13:00:00", None),          # only in the warehouse, inserted after T: in flight
    "e": ("5.00", "2026-09-30 11:00:00", None),          # only in the warehouse, before T: missing_in_source
    "f": ("6.00", "2026-10-01 00:00:00", "6.00"),        # equal, touched after T: in flight
    "g": ("7.00", "2026-09-29 00:00:00", "7.00"),        # equal, before T: unchanged
    "h": (None, "", "8.00"),                             # only in Salesforce: missing_in_target
}
EXPECTED = {"mismatched": ["a", "b"], "missing_in_source": ["e"], "missing_in_target": ["h"]}


def _table(embedded_pg: Any, name: str, column_type: str) -> str:
    with psycopg.connect(embedded_pg.info.dsn, autocommit=True) as c:
        c.execute("SET TimeZone = 'UTC'")  # the literals below are UTC wall times
        c.execute(f"DROP TABLE IF EXISTS {name}")
        c.execute(f"CREATE TABLE {name} (id text PRIMARY KEY, v numeric(12,2), updated_at {column_type})")
        for k, (v, ts, _) in ROWS.items():
            if v is not None:
                c.execute(f"INSERT INTO {name} VALUES (%s, %s, %s::{column_type})", (k, v, ts))
    return f"{embedded_pg.info.dsn}#public.{name}"


def _source(tmp_path: Path) -> str:
    src = tmp_path / "sf.parquet"
    keys = [k for k, (_, _, s) in ROWS.items() if s is not None]
    pl.DataFrame({"id": keys, "v": [Decimal(ROWS[k][2]) for k in keys]}).write_parquet(src)  # type: ignore[arg-type]
    return f"parquet:{src}"


def _config(tmp_path: Path, source: str, target: str, updated_at: str = "updated_at") -> Path:
    p = tmp_path / "recon.toml"
    p.write_text(f'[mapping.m]\nsource = "{source}"\ntarget = "{target}"\nkey = ["id"]\ncolumns = ["v"]\n'
                 f'target_updated_at = "{updated_at}"\n')
    return p


def _diff(cfg: Path, as_of: datetime | None = T) -> tuple[dict[str, Any], dict[str, list[str]]]:
    from engine.app.diff import DiffOptions, run
    from engine.config import load

    out = run(DiffOptions(mapping="m", as_of=as_of), load(cfg))
    by_kind: dict[str, list[str]] = {}
    for kind, key in out.run.result.differences.select("kind", "key").unique().iter_rows():
        by_kind.setdefault(kind, []).append(key)
    return out.summary, {k: sorted(v) for k, v in by_kind.items()}


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Tokyo"])
@pytest.mark.parametrize("column_type", ["timestamp", "timestamptz"])
def test_warehouse_rows_changed_after_as_of_are_in_flight(embedded_pg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          zone: str, column_type: str) -> None:
    """Through a mapping, as a scheduler runs it: only the rows changed strictly after T leave the
    differences, a warehouse-only row inserted after T included; the session's TimeZone (PGTZ here,
    or a role's or database's setting) changes nothing."""
    monkeypatch.setenv("PGPASSFILE", str(embedded_pg.paths.pgpass_file))
    target = _table(embedded_pg, f"wh_asof_{column_type}", column_type)
    cfg = _config(tmp_path, _source(tmp_path), target)
    monkeypatch.setenv("PGTZ", zone)
    summary, kinds = _diff(cfg)
    assert kinds == EXPECTED
    assert (summary["in_flight"], summary["unchanged"], summary["mismatched"]) == (3, 1, 2)  # c, d, f | g | a, b
    assert (summary["missing_in_source"], summary["missing_in_target"]) == (1, 1)
    summary, kinds = _diff(cfg, as_of=None)  # without --as-of, c and d are differences again
    assert kinds == {"mismatched": ["a", "b", "c"], "missing_in_source": ["d", "e"], "missing_in_target": ["h"]}
    assert (summary["in_flight"], summary["unchanged"]) == (0, 2)


def test_an_updated_at_column_that_is_not_a_time_is_refused(embedded_pg, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A `target_updated_at` naming a text column cannot be compared with T: exit 2 naming the column,
    not a server error."""
    monkeypatch.setenv("PGPASSFILE", str(embedded_pg.paths.pgpass_file))
    target = _table(embedded_pg, "wh_asof_text", "text")
    cfg = _config(tmp_path, _source(tmp_path), target)
    with pytest.raises(UsageError, match=r"updated_at.*text.*timestamp"):
        _diff(cfg)
