"""The data-debt model: a worked example per formula, figures computed by hand (in the comments),
never by the function under test; the "never" break-even; input validation and provenance."""

from __future__ import annotations

import json
from decimal import Decimal as D
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from engine.app import cost as app_cost
from engine.core import cost
from engine.core.errors import UsageError

# -- one worked example per formula ----------------------------------------------------------------


def test_exposure_is_overpayment_plus_restated_variance() -> None:
    # 15,454.06 + 273,944.97 × 0.05 = 15,454.06 + 13,697.2485 = 29,151.3085
    assert cost.exposure(D("15454.06"), D("273944.97"), D("0.05")) == D("29151.3085")
    # no variance, or a zero rate: exposure is the overpayment alone
    assert cost.exposure(D("400000"), D("0"), D("0.05")) == D("400000")
    assert cost.exposure(D("400000"), D("50000000"), D("0")) == D("400000")


def test_cost_per_incident_adds_detection_days() -> None:
    # 29,151.3085 + 30 days × 5,000/day = 29,151.3085 + 150,000 = 179,151.3085
    assert cost.cost_per_incident(D("29151.3085"), D("30"), D("5000")) == D("179151.3085")
    # half a day at 1,200/day on top of 1,000: 1,000 + 600 = 1,600
    assert cost.cost_per_incident(D("1000"), D("0.5"), D("1200")) == D("1600")


def test_expected_monthly_loss_weights_incident_and_penalty() -> None:
    # 0.02 × (179,151.3085 + 0.5 × 2,000,000) = 0.02 × 1,179,151.3085 = 23,583.02617
    assert cost.expected_monthly_loss(D("0.02"), D("179151.3085"), D("0.5"), D("2000000")) == D("23583.02617")
    # no penalty risk: 0.1 × 350,000 = 35,000
    assert cost.expected_monthly_loss(D("0.1"), D("350000"), D("0"), D("2000000")) == D("35000")


def test_one_time_prevention_is_hours_times_rate() -> None:
    assert cost.one_time_prevention(D("80"), D("150")) == D("12000")  # the story's 80 h at 150/h
    assert cost.one_time_prevention(D("12.5"), D("200")) == D("2500")


def test_break_even_days() -> None:
    # 12,000 ÷ ((27,000 − 15,000) ÷ 30) = 12,000 ÷ 400 = 30 days
    assert cost.break_even_days(D("12000"), D("27000"), D("15000")) == D("30")
    # 12,000 ÷ ((23,583.02617 − 15,000) ÷ 30) = 360,000 ÷ 8,583.02617 = 41.943… days
    d = cost.break_even_days(D("12000"), D("23583.02617"), D("15000"))
    assert d is not None and d.quantize(D("0.01")) == D("41.94")
    # nothing to repay: day 0
    assert cost.break_even_days(D("0"), D("27000"), D("15000")) == D("0")


def test_break_even_never_when_running_cost_eats_the_saving() -> None:
    # denominator (15,000 − 15,000) ÷ 30 = 0: never
    assert cost.break_even_days(D("12000"), D("15000"), D("15000")) is None
    # denominator (11,000 − 15,000) ÷ 30 < 0: never
    assert cost.break_even_days(D("12000"), D("11000"), D("15000")) is None
    assert cost.days_text(None) == "never"


def test_roi_12_months() -> None:
    # (12 × 27,000 − 12,000 − 12 × 15,000) ÷ (12,000 + 12 × 15,000) = 132,000 ÷ 192,000 = 0.6875
    assert cost.roi_12_months(D("27000"), D("12000"), D("15000")) == D("0.6875")
    # a "never" case still has an ROI, negative: (180,000 − 12,000 − 180,000) ÷ 192,000 = −0.0625
    assert cost.roi_12_months(D("15000"), D("12000"), D("15000")) == D("-0.0625")
    # no infra: (12 × 1,000 − 4,000) ÷ 4,000 = 2
    assert cost.roi_12_months(D("1000"), D("4000"), D("0")) == D("2")
    # nothing invested: undefined, not infinite
    assert cost.roi_12_months(D("1000"), D("0"), D("0")) is None


def test_model_chains_the_formulas() -> None:
    i = cost.CostInputs(
        commission_overpayment=D("100000"), clv_abs_variance=D("2000000"), restatement_cost_rate=D("0.05"),
        mttd_days=D("30"), ops_cost_per_day=D("5000"), infra_cost_per_month=D("15000"),
        engineering_hours=D("80"), hourly_rate=D("150"), failure_probability_per_month=D("0.02"),
        penalty=D("2000000"), penalty_probability_given_failure=D("0.5"))
    r = cost.model(i)
    assert r.exposure == D("200000")  # 100,000 + 2,000,000 × 0.05
    assert r.cost_per_incident == D("350000")  # 200,000 + 30 × 5,000
    assert r.expected_monthly_loss == D("27000")  # 0.02 × (350,000 + 0.5 × 2,000,000)
    assert r.one_time_prevention == D("12000")  # 80 × 150
    assert r.break_even_days == D("30")  # 12,000 ÷ ((27,000 − 15,000) ÷ 30)
    assert r.roi_12_months == D("0.6875")  # 132,000 ÷ 192,000
    j = cost.to_json(i, r)
    assert j["results"] == {"exposure": "200000.00", "cost_per_incident": "350000.00",
                            "expected_monthly_loss": "27000.00", "one_time_prevention": "12000.00",
                            "break_even_days": "30.0", "roi_12_months": "0.6875"}
    assert j["defaults_are_examples"] is True
    assert cost.inputs_from_json(json.loads(json.dumps(j))) == i


def test_model_never_in_json() -> None:
    # EML = 0.01 × (10,000 + 0) = 100 < 15,000 infra: never; ROI = (1,200 − 12,000 − 180,000) ÷ 192,000
    i = cost.CostInputs(commission_overpayment=D("10000"), clv_abs_variance=D("0"), mttd_days=D("0"),
                        failure_probability_per_month=D("0.01"), penalty_probability_given_failure=D("0"))
    j = cost.to_json(i, cost.model(i))
    assert j["results"]["break_even_days"] == "never"
    assert j["results"]["roi_12_months"] == "-0.9938"  # −190,800 ÷ 192,000 = −0.99375 → half up


def test_defaults_are_the_documented_examples() -> None:
    assert cost.DEFAULTS["infra_cost_per_month"] == D("15000")
    assert cost.DEFAULTS["engineering_hours"] == D("80")
    assert cost.DEFAULTS["hourly_rate"] == D("150")
    assert cost.DEFAULTS["failure_probability_per_month"] == D("0.02")
    assert cost.DEFAULTS["penalty"] == D("2000000")
    assert "examples" in (cost.__doc__ or "")


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "words"), [
    ("mttd_days", D("-1"), "must not be negative"),
    ("penalty_probability_given_failure", D("1.5"), "between 0 and 1"),
    ("failure_probability_per_month", D("2"), "between 0 and 1"),
    ("hourly_rate", D("NaN"), "finite"),
    ("penalty", 5, "finite decimal"),
])
def test_inputs_validated_with_key_and_fix(key: str, value: object, words: str) -> None:
    with pytest.raises(UsageError) as e:
        cost.CostInputs(commission_overpayment=D("1"), clv_abs_variance=D("1"), **{key: value})  # type: ignore[arg-type]
    msg = str(e.value)
    assert key in msg and words in msg and "\n" not in msg


def test_parse_value_and_sets() -> None:
    assert cost.parse_value("penalty", "2_000_000", "x") == D("2000000")
    assert cost.parse_value("mttd_days", 7, "x") == D("7")
    with pytest.raises(UsageError, match=r"unknown cost key 'mttd'.*known keys: .*mttd_days"):
        cost.parse_value("mttd", 1, "recon.toml: [cost]")
    with pytest.raises(UsageError, match="must be a number"):
        cost.parse_value("mttd_days", True, "recon.toml: [cost]")
    with pytest.raises(UsageError, match="not a number"):
        cost.parse_value("mttd_days", "soon", "--set")
    assert cost.parse_sets(["mttd_days=7", "penalty = 1e6", "mttd_days=3"]) == {"mttd_days": D("3"), "penalty": D("1E+6")}
    with pytest.raises(UsageError, match="use KEY=VALUE"):
        cost.parse_sets(["mttd_days"])


def test_build_inputs_precedence_and_sources() -> None:
    m = cost.Measured(commission_overpayment=D("10"), clv_abs_variance=D("20"), variance_from="d/summary.json x")
    i, src = cost.build_inputs({"mttd_days": 7, "penalty": "1000"}, {"penalty": D("5")}, m, "recon.toml")
    assert (i.mttd_days, i.penalty, i.hourly_rate, i.commission_overpayment) == (D("7"), D("5"), D("150"), D("10"))
    assert src["mttd_days"] == "config [cost]" and src["penalty"] == "--set"
    assert src["hourly_rate"] == "example default" and src["commission_overpayment"] == "explain"
    assert src["clv_abs_variance"] == "diff"
    assert list(src) == list(cost.KEYS)
    # a what-if overrides a measurement
    i2, src2 = cost.build_inputs({}, {"commission_overpayment": D("1")}, m)
    assert i2.commission_overpayment == D("1") and src2["commission_overpayment"] == "--set"


def test_build_inputs_errors_name_the_key_and_fix() -> None:
    m = cost.Measured(commission_overpayment=D("10"), clv_abs_variance=D("20"))
    with pytest.raises(UsageError, match=r"recon.toml: \[cost\] commission_overpayment is measured.*--set"):
        cost.build_inputs({"commission_overpayment": 5}, {}, m, "recon.toml")
    with pytest.raises(UsageError, match=r"recon.toml: \[cost\]: failure_probability_per_month = 3 .*between 0 and 1"):
        cost.build_inputs({"failure_probability_per_month": 3}, {}, m, "recon.toml")
    with pytest.raises(UsageError, match=r"no measured commission overpayment: pass --explain DIR"):
        cost.build_inputs({}, {}, cost.Measured(clv_abs_variance=D("1")))
    with pytest.raises(UsageError, match=r"no measured clv abs variance"):
        cost.build_inputs({}, {}, cost.Measured(commission_overpayment=D("1")))


# -- measuring from recon outputs -------------------------------------------------------------------


def _write_outputs(root: Path, *, with_diff: bool = True) -> tuple[Path, Path]:
    ex, df = root / "explain", root / "diff"
    ex.mkdir(parents=True)
    (ex / "explain.json").write_text(json.dumps({
        "column": "clv", "diff": str(root / "elsewhere"), "exposure": {"total": "123.45", "by_owner": {}}}))
    pl.DataFrame({"salesforce_value": ["10.00", "5.00", None], "warehouse_value": ["12.50", "4.00", "9.00"]}) \
        .write_parquet(ex / "findings.parquet")
    if with_diff:
        df.mkdir()
        (df / "summary.json").write_text(json.dumps({"columns": {"clv": {"abs_variance": "999.99", "mismatched": 2}}}))
    return ex, df


def test_measure_prefers_the_diff_summary(tmp_path: Path) -> None:
    ex, df = _write_outputs(tmp_path)
    m = app_cost.measure(ex, None)  # explain.json's diff path doesn't exist: falls back to ../diff
    assert (m.commission_overpayment, m.clv_abs_variance, m.column) == (D("123.45"), D("999.99"), "clv")
    assert m.variance_from and "summary.json" in m.variance_from


def test_measure_falls_back_to_findings(tmp_path: Path) -> None:
    ex, _ = _write_outputs(tmp_path, with_diff=False)
    m = app_cost.measure(ex, None)
    # |12.50 − 10.00| + |4.00 − 5.00| = 2.5 + 1 = 3.5 (the row without a Salesforce value doesn't count)
    assert m.clv_abs_variance == D("3.5")
    assert m.variance_from and "findings.parquet" in m.variance_from


def test_measure_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="has no explain.json"):
        app_cost.measure(tmp_path, None)
    with pytest.raises(UsageError, match="has no summary.json"):
        app_cost.measure(None, tmp_path)
    (tmp_path / "explain.json").write_text("{not json")
    with pytest.raises(UsageError, match="not readable JSON"):
        app_cost.measure(tmp_path, None)


def test_cli_cost_json_and_table(tmp_path: Path) -> None:
    from engine.cli.main import app

    ex, _ = _write_outputs(tmp_path)
    cfg = tmp_path / "recon.toml"
    cfg.write_text("[cost]\nmttd_days = 10\n")
    r = CliRunner().invoke(app, ["cost", "--explain", str(ex), "-C", str(cfg), "--set", "ops_cost_per_day=100", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    # exposure = 123.45 + 999.99 × 0.05 = 173.4495 → 173.45; cost per incident = 173.4495 + 10 × 100 = 1,173.4495
    assert doc["results"]["exposure"] == "173.45"
    assert doc["results"]["cost_per_incident"] == "1173.45"
    assert doc["inputs"]["mttd_days"] == {"value": "10", "source": "config [cost]", "unit": "days",
                                          "meaning": cost.KEYS["mttd_days"][1]}
    t = CliRunner().invoke(app, ["cost", "--explain", str(ex)])
    assert t.exit_code == 0, t.output
    for word in ("commission_overpayment", "penalty_probability_given_failure", "break-even", "12-month risk-adjusted ROI",
                 "defaults are examples", "[cost]"):
        assert word in t.stdout


def test_cli_cost_unknown_key_is_exit_2_in_one_line(tmp_path: Path) -> None:
    """The contract is the exit code and one stderr line, which only ``main()`` gives (CliRunner
    bypasses its mapping of errors): so the CLI as a scheduler runs it, a subprocess."""
    import os
    import subprocess
    import sys

    ex, _ = _write_outputs(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "SF_", "RECON_"))}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    bad = subprocess.run([sys.executable, "-m", "engine.cli.main", "cost", "--explain", str(ex), "--set", "nope=1"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2, (bad.returncode, bad.stderr)
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("recon: error: ") and "unknown cost key 'nope'" in lines[0], lines
    assert bad.stdout == ""
