"""Circuit-breaker logic without a database: thresholds, the strictly-above rule, exact comparison,
malformed input, the exclusion policy's recomputation and its refusals, overrides, stale diffs."""

from __future__ import annotations

import json
import tomllib
from fractions import Fraction
from pathlib import Path

import polars as pl
import pytest

from engine.app import gate
from engine.app.reconcile import DiffRequest
from engine.config import Config, load
from engine.core.errors import Exit, UsageError, VerificationError

COL = "Customer_Lifetime_Value__c"
MAPPING = f"""
[mapping.clv]
source = "salesforce:Account"
target = "postgresql://u@h:1/db#w.t"
key = ["Id=account_id"]
columns = ["{COL}=clv"]
tolerance = {{ {COL} = "0.00" }}
"""


def _config(tmp_path: Path, text: str) -> Config:
    """``text`` with the mapping ``clv`` (the fake diffs below are diffs of it)."""
    p = tmp_path / "recon.toml"
    p.write_text(text + MAPPING)
    return load(p)


def _request(**changes: object) -> dict:
    """The ``request`` block a diff of ``clv`` as configured records (written out: it is the
    format), with ``changes``."""
    return {"source": "salesforce:Account", "target": "postgresql://u@h:1/db#w.t", "key": [["Id", "account_id"]],
            "columns": [[COL, "clv"]], "tolerance": {COL: "0"}, "types": {}, "source_where": None,
            "target_where": None, "target_updated_at": None, "as_of": None, **changes}


def test_the_request_block_is_the_mappings_identity() -> None:
    cfg = Config(None, tomllib.loads(MAPPING), "unused")
    assert DiffRequest.from_mapping(cfg.mapping("clv")).identity() == _request()


def test_defaults_are_half_a_percent_each(tmp_path: Path) -> None:
    th = gate.thresholds_for(_config(tmp_path, ""), "clv")
    assert (th.variance_ratio, th.amount_variance_ratio, th.column) == (0.005, 0.005, None)


def test_per_mapping_overrides_section_defaults(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "[gate]\nvariance_ratio = 0.02\nclv = { amount_variance_ratio = 0.001, column = \"X\" }\n")
    th = gate.thresholds_for(cfg, "clv")
    assert (th.variance_ratio, th.amount_variance_ratio, th.column) == (0.02, 0.001, "X")
    other = gate.thresholds_for(cfg, "other")
    assert (other.variance_ratio, other.amount_variance_ratio) == (0.02, 0.005)


@pytest.mark.parametrize("body", [
    "clv = { variance_ratio = -0.1 }", "clv = { variance_ratio = \"lots\" }", "clv = { variance_ratio = true }",
    "clv = { variance_ratio = nan }", "clv = { variance_ratio = inf }", "clv = { thresold = 0.1 }", "clv = 3",
    "clv = { column = 5 }",
])
def test_malformed_thresholds_are_usage_errors_naming_the_key(tmp_path: Path, body: str) -> None:
    with pytest.raises(UsageError) as ei:
        gate.thresholds_for(_config(tmp_path, f"[gate]\n{body}\n"), "clv")
    assert "[gate]" in str(ei.value) and "\n" not in str(ei.value)


TH = gate.Thresholds(0.005, 0.005)


@pytest.mark.parametrize(("var", "amount", "state", "tripped"), [
    (0.0, 0.0, "closed", []),
    (0.005, 0.005, "closed", []),  # equal is not above
    (Fraction(3, 600), 0.005, "closed", []),  # exact: 3/600 is 0.005, not "0.005 plus rounding"
    (0.3 / 60, 0.005, "closed", []),  # 0.005000000000000001 in binary; 0.005 as a person reads it
    (0.00500001, 0.0, "open", ["variance_ratio"]),
    (0.0, 0.0051, "open", ["amount_variance_ratio"]),
    (0.2, 0.03, "open", ["variance_ratio", "amount_variance_ratio"]),
    (0.0, None, "closed", []),  # no amount: only the record ratio applies
    (0.01, None, "open", ["variance_ratio"]),
    (0.0, float("inf"), "open", ["amount_variance_ratio"]),  # Σ|source| = 0 with a variance
    (0.0, float("nan"), "open", ["amount_variance_ratio"]),  # undefined fails closed
    (Fraction(1, 3), 0.0, "open", ["variance_ratio"]),
])
def test_either_ratio_strictly_above_its_threshold_opens(var, amount, state, tripped) -> None:  # noqa: ANN001
    assert gate.evaluate(var, amount, TH) == (state, tripped)


def test_zero_thresholds_tolerate_nothing_but_zero() -> None:
    zero = gate.Thresholds(0.0, 0.0)
    assert gate.evaluate(0.0, 0.0, zero) == ("closed", [])
    assert gate.evaluate(Fraction(1, 10**9), 0.0, zero)[0] == "open"


def test_negative_ratio_is_malformed_input() -> None:
    with pytest.raises(UsageError):
        gate.evaluate(-0.1, 0.0, TH)


def test_exact_reads_floats_as_written() -> None:
    assert gate.exact(0.005) == Fraction(1, 200)
    assert gate.exact(Fraction(3, 600)) == Fraction(1, 200)


def test_accept_classes_policy() -> None:
    assert gate.parse_accept_classes(None) == ("stale_salesforce",)
    assert gate.parse_accept_classes("stale_salesforce, unexplained") == ("stale_salesforce", "unexplained")
    for repaired in gate.REPAIRED_CLASSES:
        with pytest.raises(UsageError, match="corrected by `recon repair`"):
            gate.parse_accept_classes(repaired)
    with pytest.raises(UsageError, match="unknown class"):
        gate.parse_accept_classes("nonsense")
    with pytest.raises(UsageError):
        gate.parse_accept_classes(" , ")


def test_override_needs_reason_and_operator() -> None:
    with pytest.raises(UsageError, match="--reason"):
        gate.override("clv", "closed", reason="  ", operator="jane", run_id="r")
    with pytest.raises(UsageError, match="--operator"):
        gate.override("clv", "closed", reason="fixed by hand", operator=None, run_id="r")
    d = gate.override("clv", "closed", reason="fixed by hand", operator="jane", run_id="r")
    assert (d.state, d.kind, d.operator, d.is_open) == ("closed", "override", "jane", False)
    assert d.body()["operator"] == "jane" and d.body()["mapping"] == "clv"


# -- decisions from diff directories ----------------------------------------------------------------
def _diff_dir(tmp_path: Path, rows: list[tuple], *, keys: int = 1000, abs_var: str = "0.00",
              amount: float = 0.0, mapping: str | None = "clv", extracted: str = "2026-01-02T00:00:00+00:00",
              name: str = "diff", source_abs_total: str | None = None, request: dict | None = None) -> Path:
    d = tmp_path / name
    d.mkdir()
    mism = sum(1 for r in rows if r[1] == "mismatched" and r[2] == COL)
    summary = {
        "mapping": mapping, "source": {"keys": keys, "rows": keys, "ref": "salesforce:Account",
                                       "extract": {"extracted_at": extracted}},
        "target": {"rows": keys, "ref": "postgresql://u@h:1/db#w.t", "extract": {"server_time": extracted}},
        "mismatched": len({r[0] for r in rows if r[1] in ("mismatched", "duplicate_key")}),
        "missing_in_target": sum(1 for r in rows if r[1] == "missing_in_target"),
        "missing_in_source": sum(1 for r in rows if r[1] == "missing_in_source"),
        "columns": {COL: {"mismatched": mism, "abs_variance": abs_var, "net_variance": abs_var,
                          **({"source_abs_total": source_abs_total} if source_abs_total else {})}},
        "compared_columns": {COL: "decimal(2)"},
        "amount_variance_ratio": {COL: amount},
        "request": _request() if request is None else request,
    }
    summary["variance_ratio"] = (summary["mismatched"] + summary["missing_in_target"]
                                 + summary["missing_in_source"]) / keys
    (d / "summary.json").write_text(json.dumps(summary))
    pl.DataFrame([dict(zip(("key", "kind", "column", "source_value", "target_value"), r, strict=True)) for r in rows],
                 schema={"key": pl.Utf8, "kind": pl.Utf8, "column": pl.Utf8, "source_value": pl.Utf8,
                         "target_value": pl.Utf8}).write_parquet(d / "differences.parquet")
    return d


def _repair_dir(tmp_path: Path, stale: list[dict], unexplained: list[dict] | None = None) -> Path:
    d = tmp_path / "repair"
    d.mkdir()
    (d / "plan.json").write_text(json.dumps({"mapping": "clv", "column": COL, "action_list": stale,
                                             "unexplained": unexplained or []}))
    return d


def _stale(key: str, sf: str, wh: str) -> dict:
    return {"Id": key, "kind": "mismatched", "salesforce_value": sf, "warehouse_value": wh, "owner_id": "005x",
            "stream_value": wh}


def test_decision_from_a_failing_diff_opens_and_records_what_it_saw(tmp_path: Path) -> None:
    rows = [(f"k{i}", "mismatched", COL, "10.00", "20.00") for i in range(6)]
    d = _diff_dir(tmp_path, rows, keys=1000, abs_var="60.00", amount=0.006)
    dec = gate.decide(d, _config(tmp_path, ""), run_id="r1")
    assert dec.state == "open" and dec.tripped == ["variance_ratio", "amount_variance_ratio"]
    body = dec.body()
    assert body["ratios"]["variance_ratio"] == 0.006 and body["thresholds"]["variance_ratio"] == 0.005
    assert body["diff"]["summary_sha256"] and body["diff"]["mismatched"] == 6 and body["mapping"] == "clv"
    assert body["exclusion"] is None and "above threshold" in body["reason"]


def test_mapping_comes_from_the_diff_and_must_agree(tmp_path: Path) -> None:
    d2 = _diff_dir(tmp_path, [], mapping="clv", name="d2")
    assert gate.decide(d2, _config(tmp_path, ""), run_id="r").mapping == "clv"
    with pytest.raises(VerificationError, match="not 'other'"):
        gate.decide(d2, _config(tmp_path, ""), run_id="r", mapping="other")


def test_a_summary_without_a_mapping_never_decides_a_breaker(tmp_path: Path) -> None:
    # on main, `--mapping clv` let a mapping-less diff (e.g. of an unrelated file against itself) close clv
    d = _diff_dir(tmp_path, [], mapping=None)
    for m in (None, "clv"):
        with pytest.raises(VerificationError, match="summary.json is a diff run without a mapping") as e:
            gate.decide(d, _config(tmp_path, ""), run_id="r", mapping=m)
        assert e.value.exit_code == Exit.VERIFY_FAILED


@pytest.mark.parametrize(("change", "field"), [
    ({"target_where": "clv < 100"}, "target_where"),
    ({"source_where": "Id != '001'"}, "source_where"),
    ({"tolerance": {COL: "1000"}}, "tolerance"),
    ({"columns": []}, "columns"),
    ({"target": "postgresql://u@h:1/db#w.other"}, "target"),
    ({"as_of": "2026-01-01T00:00:00+00:00"}, "as_of"),
])
def test_a_narrowed_or_loosened_diff_cannot_decide(tmp_path: Path, change: dict, field: str) -> None:
    # on main these closed the breaker: only the counts were read
    d = _diff_dir(tmp_path, [], request=_request(**change))
    with pytest.raises(VerificationError, match=f"summary.json is not a diff of \\[mapping.clv\\].*{field}"):
        gate.decide(d, _config(tmp_path, ""), run_id="r")


def test_a_summary_without_its_request_cannot_decide(tmp_path: Path) -> None:
    d = _diff_dir(tmp_path, [])
    s = json.loads((d / "summary.json").read_text())
    s.pop("request")
    (d / "summary.json").write_text(json.dumps(s))
    with pytest.raises(VerificationError, match="no request"):
        gate.decide(d, _config(tmp_path, ""), run_id="r")


def test_not_a_diff_dir_and_unknown_gated_column_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a diff output"):
        gate.decide(tmp_path, _config(tmp_path, ""), run_id="r")
    d = _diff_dir(tmp_path, [])
    with pytest.raises(UsageError, match="was not compared"):
        gate.decide(d, _config(tmp_path, "[gate]\nclv = { column = \"Nope\" }\n"), run_id="r")


def test_exclusion_removes_exactly_the_classified_stale_records(tmp_path: Path) -> None:
    # 4 stale records (Salesforce behind), 1 record whose warehouse value moved since classification,
    # 1 record that now also differs in another column, 1 stale record already resolved
    rows = [("s1", "mismatched", COL, "100.00", "110.00"), ("s2", "mismatched", COL, "50.00", "45.00"),
            ("s3", "mismatched", COL, "1.00", "2.00"), ("s4", "mismatched", COL, "7.00", "9.00"),
            ("moved", "mismatched", COL, "10.00", "30.00"),
            ("wide", "mismatched", COL, "5.00", "6.00"), ("wide", "mismatched", "Name", "a", "b")]
    abs_var = str(10 + 5 + 1 + 2 + 20 + 1) + ".00"
    total = 10_000.0
    d = _diff_dir(tmp_path, rows, keys=100, abs_var=abs_var, amount=float(abs_var) / total)
    stale = [_stale("s1", "100.00", "110.00"), _stale("s2", "50", "45.0"), _stale("s3", "1.00", "2.00"),
             _stale("s4", "7.00", "9.00"), _stale("moved", "10.00", "20.00"), _stale("wide", "5.00", "6.00"),
             _stale("gone", "1.00", "3.00")]
    cfg = _config(tmp_path, "[gate]\nclv = { variance_ratio = 0.03, amount_variance_ratio = 0.002 }\n")
    raw = gate.decide(d, cfg, run_id="r")
    assert raw.state == "open"  # 6/100 records
    dec = gate.decide(d, cfg, run_id="r", exclude_from=_repair_dir(tmp_path, stale))
    ex = dec.exclusion
    assert ex is not None and ex["policy_version"] == gate.POLICY_VERSION
    assert {e["key"] for e in ex["excluded"]} == {"s1", "s2", "s3", "s4"}
    assert {r["key"]: r["reason"].split(" ")[0] for r in ex["refused"]} == {"moved": "values", "wide": "now"}
    assert ex["resolved_since_classification"] == 1 and ex["source"]["kind"] == "repair"
    assert ex["source"]["action_list_issued"] is True and len(ex["source"]["sha256"]) == 64
    # population without the 4 excluded: 2 of 96 records, (20 + 1) / (10,000 − 158) of the amount
    assert dec.ratios["variance_ratio"] == pytest.approx(2 / 96)
    assert dec.ratios["amount_variance_ratio"] == pytest.approx(21 / (total - 158))
    assert dec.state == "open" and dec.tripped == ["amount_variance_ratio"]
    assert dec.raw_ratios["variance_ratio"] == pytest.approx(0.06)


def test_exclusion_closes_when_only_the_accepted_remainder_is_left(tmp_path: Path) -> None:
    rows = [("s1", "mismatched", COL, "100.00", "110.00"), ("u1", "mismatched", COL, "3.00", "4.00")]
    d = _diff_dir(tmp_path, rows, keys=10, abs_var="11.00", amount=11 / 1000)
    cfg = _config(tmp_path, "[gate]\nclv = { variance_ratio = 0.0, amount_variance_ratio = 0.0 }\n")
    rdir = _repair_dir(tmp_path, [_stale("s1", "100.00", "110.00")],
                       [{"Id": "u1", "kind": "mismatched", "salesforce_value": "3.00", "warehouse_value": "4.00"}])
    only_stale = gate.decide(d, cfg, run_id="r", exclude_from=rdir)
    assert only_stale.state == "open"  # unexplained is not accepted by default
    both = gate.decide(d, cfg, run_id="r", exclude_from=rdir, accept_classes=("stale_salesforce", "unexplained"))
    assert both.state == "closed" and both.ratios == {"variance_ratio": 0.0, "amount_variance_ratio": 0.0}
    assert {e["key"]: e["class"] for e in both.exclusion["excluded"]} == {"s1": "stale_salesforce", "u1": "unexplained"}


def test_excluding_a_missing_key_leaves_source_abs_total_alone(tmp_path: Path) -> None:
    """source_abs_total counts the keys unique on both sides only (the contract): excluding a key
    missing from the target takes nothing out of it. A summary without it (older) derived its Σ from
    every source row, so there the missing key's value leaves the Σ."""
    rows = [("s1", "mismatched", COL, "100.00", "110.00"), ("m1", "missing_in_target", None, None, None)]
    missing = {"Id": "m1", "kind": "missing_in_target", "salesforce_value": "400.00"}
    cfg = _config(tmp_path, "[gate]\nclv = { variance_ratio = 1.0, amount_variance_ratio = 1.0 }\n")
    accept = ("stale_salesforce", "unexplained")
    new = _diff_dir(tmp_path, rows, keys=10, abs_var="10.00", amount=10 / 1000, source_abs_total="1000.00")
    dec = gate.decide(new, cfg, run_id="r", exclude_from=_repair_dir(tmp_path, [], [missing]), accept_classes=accept)
    assert [e["key"] for e in dec.exclusion["excluded"]] == ["m1"]
    assert dec.ratios["amount_variance_ratio"] == pytest.approx(10 / 1000)
    old = _diff_dir(tmp_path, rows, keys=10, abs_var="10.00", amount=10 / 1400, name="old")
    (tmp_path / "old_repair").mkdir()
    rdir = _repair_dir(tmp_path / "old_repair", [], [missing])
    dec = gate.decide(old, cfg, run_id="r", exclude_from=rdir, accept_classes=accept)
    assert dec.ratios["amount_variance_ratio"] == pytest.approx(10 / 1000)


def test_exclusion_source_must_match_mapping_and_column(tmp_path: Path) -> None:
    d = _diff_dir(tmp_path, [])
    r = tmp_path / "r"
    r.mkdir()
    (r / "plan.json").write_text(json.dumps({"mapping": "other", "column": COL, "action_list": []}))
    with pytest.raises(VerificationError, match="classified mapping"):
        gate.decide(d, _config(tmp_path, ""), run_id="x", exclude_from=r)
    with pytest.raises(UsageError, match="neither a repair output"):
        gate.decide(d, _config(tmp_path, ""), run_id="x", exclude_from=tmp_path / "nothing")
    with pytest.raises(UsageError, match="needs --exclude-from"):
        gate.decide(d, _config(tmp_path, ""), run_id="x", accept_classes=("unexplained",))


def test_an_older_diff_cannot_close_a_breaker_a_newer_one_opened(tmp_path: Path) -> None:
    old = _diff_dir(tmp_path, [], extracted="2026-01-01T00:00:00+00:00", name="old")
    same = _diff_dir(tmp_path, [], extracted="2026-01-02T00:00:00+00:00", name="same")
    cfg = _config(tmp_path, "")
    latest = {"seq": 9, "state": "open", "recorded_at": "x",
              "body": {"diff": {"extracted_at": "2026-01-02T00:00:00+00:00"}}}
    with pytest.raises(UsageError, match="before the diff that opened"):
        gate.check_not_stale(gate.decide(old, cfg, run_id="r"), latest)
    gate.check_not_stale(gate.decide(same, cfg, run_id="r"), latest)  # the same data, e.g. with exclusions
    gate.check_not_stale(gate.decide(old, cfg, run_id="r"), {**latest, "state": "closed"})
    gate.check_not_stale(gate.decide(old, cfg, run_id="r"), None)


def test_a_diff_without_both_extraction_times_cannot_close_an_open_breaker(tmp_path: Path) -> None:
    """Fail closed (issue 17.5): an unknown extraction time counts as stale."""
    d = _diff_dir(tmp_path, [], extracted="2026-01-03T00:00:00+00:00", name="no-source-time")
    summary = json.loads((d / "summary.json").read_text())
    del summary["source"]["extract"]["extracted_at"]
    (d / "summary.json").write_text(json.dumps(summary))
    cfg = _config(tmp_path, "")
    latest = {"seq": 9, "state": "open", "recorded_at": "2026-01-02T00:00:00+00:00",
              "body": {"diff": {"extracted_at": "2026-01-02T00:00:00+00:00"}}}
    decision = gate.decide(d, cfg, run_id="r")
    assert decision.state == "closed"
    with pytest.raises(UsageError, match="does not say when both sides were read"):
        gate.check_not_stale(decision, latest)
    # an override opened it: the override's own time is what the diff must be newer than
    by_override = {"seq": 9, "state": "open", "recorded_at": "2026-01-04T00:00:00+00:00", "body": {"kind": "override"}}
    newer = _diff_dir(tmp_path, [], extracted="2026-01-03T00:00:00+00:00", name="newer")
    with pytest.raises(UsageError, match="before the diff that opened"):
        gate.check_not_stale(gate.decide(newer, cfg, run_id="r"), by_override)
    gate.check_not_stale(gate.decide(newer, cfg, run_id="r"), {**by_override, "recorded_at": "2026-01-02T00:00:00+00:00"})
