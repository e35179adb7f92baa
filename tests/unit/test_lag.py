"""The lag reason's pure parts: `[gate]` lag settings, the exact comparison, the in-flight summary,
and what a decision says it decides."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from engine import config as config_mod
from engine.app import gate
from engine.core.errors import UsageError
from engine.core.gate import LagThresholds, evaluate_lag
from engine.core.lag import in_flight


def _cfg(tmp_path: Path, gate_line: str) -> config_mod.Config:
    p = tmp_path / "recon.toml"
    p.write_text(f"[gate]\n{gate_line}\n\n[mapping.m]\nsource = \"salesforce:Account\"\n"
                 "target = \"postgresql://u@h/d#s.t\"\nkey = [\"Id=id\"]\n")
    return config_mod.load(p)


def test_lag_settings_are_read_exactly(tmp_path: Path) -> None:
    lim = _cfg(tmp_path, 'm = { lag_amount = "100.10", lag_seconds = 90, lag_offsets = "postgres", '
                         'lag_table = "w.events" }').lag("m")
    assert lim == LagThresholds(Decimal("100.10"), 90.0, "postgres", "w.events")
    assert _cfg(tmp_path, 'lag_amount = "5"').lag("m").amount == Decimal(5)  # a [gate] default applies to every mapping
    assert gate.thresholds_for(_cfg(tmp_path, 'm = { lag_amount = "5", lag_offsets = "kafka" }'), "m").column is None


@pytest.mark.parametrize(("line", "key"), [
    ("m = { lag_amount = 100.10 }", "lag_amount"),  # a float: binary, not exact
    ("m = { lag_amount = 100 }", "lag_amount"),
    ('m = { lag_amount = "1e" }', "lag_amount"),
    ('m = { lag_amount = "-1" }', "lag_amount"),
    ('m = { lag_amount = "NaN" }', "lag_amount"),
    ("m = { lag_seconds = true }", "lag_seconds"),
    ('m = { lag_seconds = "300" }', "lag_seconds"),
    ("m = { lag_seconds = -1 }", "lag_seconds"),
    ('m = { lag_offsets = "zookeeper" }', "lag_offsets"),
    ('m = { lag_offsets = "postgres" }', "lag_table"),
    ("m = { lag_table = 3 }", "lag_table"),
])
def test_a_bad_lag_setting_is_one_line_naming_the_key_and_the_fix(tmp_path: Path, line: str, key: str) -> None:
    with pytest.raises(UsageError) as exc:
        _cfg(tmp_path, line).lag("m")
    msg = str(exc.value)
    assert "\n" not in msg and "[gate] m" in msg and key in msg and ("must" in msg or "needs" in msg), msg


def test_strictly_above_and_exact() -> None:
    lim = LagThresholds(amount=Decimal("100.00"), seconds=60)
    assert evaluate_lag(Decimal("100.000000"), 60.0, lim) == ("closed", [])
    assert evaluate_lag(Decimal("100.01"), 60.0, lim) == ("open", ["lag_amount"])
    assert evaluate_lag(Decimal(0), 60.001, lim) == ("open", ["lag_seconds"])
    assert evaluate_lag(Decimal(0), None, lim) == ("closed", [])  # nothing in flight has no age
    assert evaluate_lag(Decimal("1E+9"), 1e9, LagThresholds()) == ("closed", [])  # no limit set: never trips


def test_in_flight_sums_amounts_by_size_and_measures_the_oldest_message() -> None:
    frame = pl.DataFrame({
        "partition": [0, 0, 1, 1], "offset": [5, 6, 2, 3],
        "ts_ms": [10_000, 11_000, 9_500, 12_000],
        "status": ["ok", "ok", "unparsable", "ok"],
        "amount": ["60.00", "-30.00", None, "0.000001"]})
    s = in_flight(frame, {0: 5, 1: 2, 2: 7}, now_ms=20_000)
    assert (s["amount"], s["events"], s["unparsable"], s["lag_seconds"]) == ("90.000001", 3, 1, 10.5)
    assert s["oldest_ts"] == "1970-01-01T00:00:09.500Z"
    assert s["partitions"]["0"] == {"committed": 5, "messages": 2, "events": 2, "last_offset": 6, "amount": "90"}
    assert s["partitions"]["2"]["messages"] == 0 and s["partitions"]["2"]["committed"] == 7


def test_nothing_in_flight() -> None:
    empty = pl.DataFrame(schema={"partition": pl.Int32, "offset": pl.Int64, "ts_ms": pl.Int64, "status": pl.Utf8,
                                 "amount": pl.Utf8})
    s = in_flight(empty, {0: 3}, now_ms=1)
    assert (s["amount"], s["events"], s["lag_seconds"], s["oldest_ts"]) == ("0", 0, None, None)


def test_each_decision_says_which_reasons_it_decides() -> None:
    assert gate.override("m", "closed", reason="r", operator="o", run_id="x").reasons == {"variance": "closed",
                                                                                         "lag": "closed"}
    assert gate.override("m", "open", reason="r", operator="o", run_id="x").reasons == {"variance": "open"}
    assert gate.breaker_state({"variance": "closed", "lag": "open"}) == "open"
    assert gate.breaker_state({"variance": "closed", "lag": "closed"}) == "closed"


def test_lag_needs_a_mapping_and_is_a_mode_of_its_own() -> None:
    with pytest.raises(UsageError, match="--lag needs --mapping"):
        gate.GateRequest(lag=True).check()
    with pytest.raises(UsageError, match="exactly one of"):
        gate.GateRequest(lag=True, mapping="m", status=True).check()
