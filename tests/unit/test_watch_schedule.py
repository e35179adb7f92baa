"""`recon watch`'s pure parts: the ``--every`` period, the next-start rule (no overlap, no pile-up)
and which differences are new since the previous completed cycle."""

from __future__ import annotations

import polars as pl
import pytest

from engine.core.errors import UsageError
from engine.core.watch import DIFFERENCE_COLUMNS, new_differences, new_keys, next_start, parse_every


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("1s", 1), ("168h", 604800),
                                               ("90m", 5400)])
def test_every_parses_whole_periods(text: str, seconds: int) -> None:
    assert parse_every(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "0s", "0m", "-5m", "+5m", "1.5m", "5 m", " 5m", "5m ", "1e3s", "5M", "5d",
                                  "nan", "inf", "5mm", "169h", "604801s", "99999999s", "٥m", "5m\n"])
def test_hostile_every_is_a_usage_error_naming_the_fix(text: str) -> None:
    with pytest.raises(UsageError, match=r"--every .*e\.g\. --every 5m"):
        parse_every(text)


def test_a_cycle_within_its_period_waits_for_the_period() -> None:
    assert next_start(100.0, 130.0, 60) == 160.0


def test_an_overrun_cycle_is_followed_right_away_and_only_once() -> None:
    # started at 100, ran 250 s with a 60 s period: the next starts at its end, not at 160 (overlap)
    # and with no burst of the four missed cycles after it
    assert next_start(100.0, 350.0, 60) == 350.0
    starts, t = [], 0.0
    for duration in (10, 200, 10, 10):
        starts.append(t)
        t = next_start(t, t + duration, 60)
    assert starts == [0.0, 60.0, 260.0, 320.0]


def _d(rows: list[tuple[str, str, str | None, str | None, str | None]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=dict.fromkeys(DIFFERENCE_COLUMNS, pl.Utf8), orient="row")


def test_new_differences_are_those_the_previous_cycle_did_not_have() -> None:
    prev = _d([("a", "mismatched", "v", "1", "2"), ("b", "missing_in_target", None, None, None)])
    cur = _d([("a", "mismatched", "v", "1", "2"), ("b", "missing_in_target", None, None, None),
              ("c", "mismatched", "v", "3", "4"), ("d", "missing_in_source", None, None, None)])
    assert new_keys(prev, cur) == ["c", "d"]
    assert new_keys(None, cur) == ["a", "b", "c", "d"]
    assert new_keys(cur, cur) == []


def test_a_mismatch_whose_values_moved_is_new() -> None:
    prev = _d([("a", "mismatched", "v", "1", "2")])
    assert new_keys(prev, _d([("a", "mismatched", "v", "1", "3")])) == ["a"]
    assert new_keys(prev, _d([("a", "mismatched", "n", "1", "2")])) == ["a"]
    assert new_differences(prev, _d([])).height == 0
