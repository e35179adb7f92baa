"""`recon watch`'s pure parts: the ``--every`` period, the next-start rule (no overlap, no pile-up)
and which differences are new since the previous completed cycle."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

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


# -- the loop of engine.app.watch, with a fake cycle and clock ---------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _loop(tmp_path: Path, durations: list[float], *, every: str = "1m", signals: dict[int, int] | None = None,
          cycles: int | None = None) -> tuple[Any, list[float], list[dict[str, Any]]]:
    """Run the watch loop over fake cycles lasting ``durations``; ``signals``: cycle → SIGTERMs sent in it."""
    from engine.app import watch
    from engine.config import load

    cfg = tmp_path / "recon.toml"
    cfg.write_text('[ledger]\ndsn = "postgresql://app@localhost/ledger"\n\n[mapping.m]\nsource = "csv:a.csv"\n'
                   'target = "csv:b.csv"\nkey = ["k"]\nstate = "state"\n')
    clock, starts, emitted = _Clock(), [], []
    stopper = watch.Stopper()

    def wait(seconds: float) -> bool:
        clock.t += max(0.0, seconds)
        return stopper.requested

    stopper.wait = wait  # type: ignore[method-assign]

    def cycle(_ctx: Any, n: int) -> dict[str, Any]:
        starts.append(clock.t)
        for _ in range((signals or {}).get(n, 0)):
            os.kill(os.getpid(), signal.SIGTERM)
        clock.t += durations[n - 1]
        return {"cycle": n, "exit_code": 3}

    req = watch.WatchRequest(mapping="m", every=every, cycles=cycles or len(durations))
    res = watch.run(req, load(cfg), emit=emitted.append, stopper=stopper, clock=clock, cycle=cycle)
    return res, starts, emitted


def test_the_loop_never_overlaps_nor_piles_up_after_an_overrun(tmp_path: Path) -> None:
    res, starts, emitted = _loop(tmp_path, [10, 200, 10, 10])
    assert starts == [0.0, 60.0, 260.0, 320.0]
    assert [d["next_start_in_s"] for d in emitted] == [50.0, 0.0, 50.0, None]
    assert res.stopped_by == "cycles" and res.exit_code == 3  # the last gate's code
    assert (tmp_path / "watch" / "m" / "watch.lock").is_file()  # the default --out: next to the config


def test_sigterm_lets_the_cycle_finish_and_a_second_abandons_it(tmp_path: Path) -> None:
    res, starts, emitted = _loop(tmp_path, [5, 5, 5, 5], signals={2: 1})
    assert len(starts) == 2 and [d["cycle"] for d in emitted] == [1, 2] and emitted[-1]["next_start_in_s"] is None
    assert res.stopped_by == "signal" and res.exit_code == 0
    res, starts, emitted = _loop(tmp_path, [5, 5, 5, 5], signals={2: 2})
    assert len(starts) == 2 and [d["cycle"] for d in emitted] == [1]
    assert res.stopped_by == "signal" and res.exit_code == 0


def test_a_cycle_counts_only_once_renamed_after_its_cycle_json(tmp_path: Path) -> None:
    from engine.workspace import WatchDirectory

    wd = WatchDirectory(tmp_path / "w")
    for n in (1, 2, 3):
        wd.complete(wd.begin(n), n, {"cycle": n})
    killed = wd.begin(4)  # a cycle killed before its commit
    (killed / "diff").mkdir()
    (wd.cycles_dir / "000005").mkdir()  # a numbered directory without cycle.json is not a cycle
    assert wd.completed() == [1, 2, 3] and wd.last_completed() == 3
    assert wd.remove_partials() == 1 and not killed.exists()
    assert wd.prune(2) == 1 and wd.completed() == [2, 3]
    assert wd.load_cycle(3) == {"cycle": 3}
