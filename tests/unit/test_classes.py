"""The finding classes are listed once (engine.core.classes) and every consumer covers that list:
forensics' classifier, the gate's exclusion policy, repair's policy, the report's labels and order,
the scenario's planted classes and the demo's summary. A class added to the list reaches the report
and the gate's and repair's policies with no other change (forensics needs its rule: a class
without one is refused loudly, never silently not found)."""

from __future__ import annotations

import html
import json
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from engine import config as config_mod
from engine.app import gate as app_gate
from engine.app import repair
from engine.core import classes, forensics, gate
from engine.core.classes import FindingClass, Repair
from engine.core.errors import UsageError
from engine.core.sfid import to18
from engine.report import charts
from engine.report import html as rh

# -- the list itself --------------------------------------------------------------------------------


def test_every_class_once_and_fully_described() -> None:
    names = classes.names()
    assert len(names) == len(set(names)) and len(names) >= 6
    ranks = [c.rank for c in classes.CLASSES]
    assert len(ranks) == len(set(ranks))
    for c in classes.CLASSES:
        assert c.label and c.description and c.rule, c.name
        assert c.description.endswith(".") and c.description.count(". ") == 0, f"{c.name}: one sentence"
    fb = classes.fallback()
    assert fb.name == "unexplained" and fb.repair is Repair.LEAVE and fb.at_fault is None
    assert set(classes.explained()) == set(names) - {fb.name}


def test_entries_that_contradict_the_policy_are_refused() -> None:
    base = classes.get("stale_salesforce")
    assert base is not None
    with pytest.raises(ValueError, match="corrected, not waived"):
        replace(base, repair=Repair.CORRECT)
    with pytest.raises(ValueError, match="not excludable"):
        replace(base, excludable=False)
    with pytest.raises(ValueError, match="at_fault"):
        replace(base, at_fault="the moon")


# -- forensics --------------------------------------------------------------------------------------
def _triangulated() -> forensics.Explanation:
    """One record per rule (A–E), a duplicated key (F) and one no rule explains (G)."""
    ids = ["A", "B", "C", "D", "E", "F", "G"]
    diffs = pl.DataFrame({
        "key": ids,
        "kind": ["mismatched"] * 4 + ["missing_in_target", "duplicate_key", "mismatched"],
        "column": ["clv"] * 4 + [None, None, "clv"],
        "source_value": ["100.00", "100.00", "150.00", "100.00", None, None, "100.00"],
        "target_value": ["150.00", "120.00", "100.00", "130.00", None, None, "120.00"],
    })
    stream = pl.DataFrame({
        "record_id": ids,
        "raw": [Decimal(x) for x in ("150", "120", "100", "100", "80", "50", "120")],
        "dedup": [Decimal(x) for x in ("100", "120", "100", "100", "80", "50", "110")],
        "delivered": [3, 2, 2, 2, 1, 1, 3], "duplicate_copies": [1, 0, 0, 0, 0, 0, 1],
        "last_event_time": ["2026-08-02T00:00:00.000Z"] * 7,
        "copy_offsets": [["0:5"], None, None, None, None, None, ["1:2"]],
        "duplicated_event_ids": [["x"], None, None, None, None, None, ["y"]],
    }, schema_overrides={"raw": pl.Decimal(38, 6), "dedup": pl.Decimal(38, 6)})
    attrs = pl.DataFrame({
        "Id": ids, "owner": ["o1", "o2", "o1", "o3", "o2", "o1", "o3"], "commission_rate": ["0.05"] * 7,
        "rank_by": ["1000"] * 7,
        "amount": ["100.00", "100.00", "150.00", "100.00", "80.00", "50.00", "100.00"],
        # only B's Salesforce value predates its last event
        "modstamp": ["2026-08-03T00:00:00.000Z", "2026-08-01T00:00:00.000Z"] + ["2026-08-03T00:00:00.000Z"] * 5,
    })
    return forensics.triangulate(diffs, "clv", stream, attrs, sec_ids=set(), default_rate=Decimal("0.05"))


def test_forensics_has_a_rule_for_every_class_but_the_fallback() -> None:
    assert set(forensics.class_rules(pl.lit(False))) == set(classes.explained())


def test_forensics_finds_every_class_and_reports_them_in_list_order() -> None:
    exp = _triangulated()
    got = dict(zip(exp.findings["Id"].to_list(), exp.findings["class"].to_list(), strict=True))
    assert got == {"A": "duplicate_inflation", "B": "stale_salesforce", "C": "missing_events",
                   "D": "warehouse_only_drift", "E": "missing_in_warehouse", "F": "unexplained", "G": "unexplained"}
    assert set(got.values()) == set(classes.names())
    assert list(exp.summary["classes"]) == list(classes.names())
    # the true value is the stream's where Salesforce is at fault, else Salesforce's
    true = dict(zip(exp.findings["Id"].to_list(), exp.findings["true_value"].cast(pl.Utf8).to_list(), strict=True))
    assert true["B"] == "120.00" and true["A"] == "100.00"


def test_a_class_without_a_rule_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    new = FindingClass("brand_new", "a new kind of difference", "Something new happened.", "w is odd",
                       rank=3, at_fault="warehouse", repair=Repair.CORRECT)
    monkeypatch.setattr(classes, "CLASSES", (*classes.CLASSES, new))
    with pytest.raises(ValueError, match="no triangulation rule for class.*brand_new"):
        _triangulated()


# -- the gate ---------------------------------------------------------------------------------------
def test_gate_policy_covers_every_class() -> None:
    assert set(gate.EXCLUDABLE_CLASSES) | set(gate.REPAIRED_CLASSES) == set(classes.names())
    assert not set(gate.EXCLUDABLE_CLASSES) & set(gate.REPAIRED_CLASSES)
    assert set(gate.DEFAULT_ACCEPTED) <= set(gate.EXCLUDABLE_CLASSES)
    for name in classes.names():
        try:
            assert gate.parse_accept_classes(name) == (name,)
            assert classes.get(name).excludable  # type: ignore[union-attr]
        except UsageError as exc:
            assert "corrected by `recon repair`" in str(exc), name


# -- repair -----------------------------------------------------------------------------------------
def test_repair_policy_lists_every_class_once() -> None:
    pol = repair.policy()
    listed = [c for names in pol.values() for c in names]
    assert sorted(listed) == sorted(classes.names())
    assert pol == {"corrected": list(repair.REPAIRED_CLASSES), "action_list": [repair.ACTION_CLASS],
                   "left_alone": [repair.LEFT_CLASS]}


def _explain_dir(tmp_path: Path, names: list[str]) -> tuple[Path, config_mod.Config]:
    """An explain output with one finding per class name (and the diff and config it belongs to)."""
    diff = tmp_path / "diff"
    diff.mkdir()
    (diff / "summary.json").write_text(json.dumps({"mapping": "clv"}))
    pl.DataFrame({"key": ["x"]}).write_parquet(diff / "differences.parquet")
    ex = tmp_path / "explain"
    ex.mkdir()
    (ex / "explain.json").write_text(json.dumps({"diff": str(diff), "column": "clv"}))
    rows: list[dict[str, Any]] = [
        {"Id": to18(f"001{i:012d}"), "class": n, "kind": "missing_in_target" if n == "missing_in_warehouse" else "mismatched",
         "sec_critical": False, "owner_id": "005", "salesforce_value": "10.00",
         "warehouse_value": None if n == "missing_in_warehouse" else "12.00", "dedup_stream_value": "12.00"}
        for i, n in enumerate(names)]
    pl.DataFrame(rows).write_parquet(ex / "findings.parquet")
    cfg = tmp_path / "recon.toml"
    cfg.write_text('[mapping.clv]\nsource = "salesforce:Account"\n'
                   'target = "postgresql://u@localhost/db#warehouse.customer_clv"\n'
                   'key = ["Id=account_id"]\ncolumns = ["clv=clv"]\n')
    return ex, config_mod.load(cfg)


def _routes(plan: repair.Plan) -> dict[str, str]:
    """Class → where the plan put its record."""
    ids = {c.record_id: c.cls for c in plan.corrections}
    out = {cls: "corrected" for cls in ids.values()}
    out |= {str(r["class"]): "left_alone" for r in plan.unexplained}
    if plan.action_list:
        (only,) = classes.with_repair(Repair.ACTION_LIST)
        out[only] = "action_list"
    return out


def test_repair_routes_every_class_by_the_list(tmp_path: Path) -> None:
    ex, cfg = _explain_dir(tmp_path, [*classes.names(), "not_a_class"])
    plan = repair.load_plan(ex, cfg)
    routes = _routes(plan)
    assert routes == {**{n: a for a, names in repair.policy().items() for n in names}, "not_a_class": "left_alone"}
    no_row = [c for c in plan.corrections if not classes.has_warehouse_row(c.cls)]
    assert no_row and all(c.old_value is None for c in no_row)
    assert all(c.old_value == "12.00" for c in plan.corrections if classes.has_warehouse_row(c.cls))


# -- the report -------------------------------------------------------------------------------------
def _report_rows(counts: dict[str, int]) -> list[tuple[str, str]]:
    """(class, label) per row of the report's class table, checking that each row's description is
    the class's (the report's words come from the one class list)."""
    inp = rh.ReportInputs(source_dir="x", explain={"classes": counts})
    _, table = charts.chart_classes(inp)
    import re

    cells = re.findall(r"<tr><td>(.*?)</td><td[^>]*>.*?</td><td>(.*?)</td><td>(.*?)</td></tr>", table)
    for _label, desc, name in cells:
        c = classes.get(name)
        assert desc == html.escape(c.description if c is not None else "", quote=True), (name, desc)
    return [(name, label) for label, _, name in cells]


def test_report_labels_and_orders_every_class() -> None:
    rows = _report_rows({n: 1 for n in reversed(classes.names())})
    assert [c for c, _ in rows] == list(classes.names())
    assert all(m == html.escape(classes.get(c).label) and m for c, m in rows)  # type: ignore[union-attr]
    assert charts.class_counts({"x": {n: 2 for n in classes.names()}}) == [("x", {n: 2 for n in classes.names()})]
    assert charts.CLASS_ORDER == classes.names()
    assert charts.CLASS_MEANING == {c.name: c.label for c in classes.CLASSES}


# -- the scenario and the demo ----------------------------------------------------------------------
def test_scenario_plants_every_class_a_rule_recognises() -> None:
    from engine.local import scenario

    assert scenario.CLASSES == classes.explained()
    sc = scenario.generate(scenario.ScenarioSpec(accounts=300, seed=5), "00D000000000001AAA")
    planted = set(sc.accounts["class"].unique().to_list()) - {""}
    assert planted == set(scenario.CLASSES)
    truth = scenario.ground_truth(sc, sc.messages.with_columns(pl.col("position").alias("offset")))
    assert list(truth["classes"]) == list(classes.explained())
    assert all(truth["classes"].values())


def test_demo_summary_names_every_class() -> None:
    from engine.local import demo

    line = demo.classes_line({n: i + 1 for i, n in enumerate(classes.names())})
    assert all(f"{i + 1:,} {n}" in line for i, n in enumerate(classes.names()))
    assert set(demo.left_by_rebuild()) == {c.name for c in classes.CLASSES if c.at_fault in ("stream", "salesforce")}
    assert set(demo.left_by_rebuild()) == {"missing_events", "stale_salesforce"}


# -- adding a class is enough -----------------------------------------------------------------------
def test_a_class_added_to_the_list_reaches_the_report_gate_and_repair(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    waived = FindingClass("brand_new_waivable", "a new waivable difference", "Something new and harmless.",
                          "w is odd", rank=7, at_fault=None, repair=Repair.LEAVE, excludable=True)
    fixed = FindingClass("brand_new_fixable", "a new fixable difference", "Something new and wrong.",
                         "w is odder", rank=8, at_fault="warehouse", repair=Repair.CORRECT)
    monkeypatch.setattr(classes, "CLASSES", (waived, *classes.CLASSES, fixed))
    from engine.cli.commands import gate_repair as cli_gate

    # the report: both labelled, in the list's order (an unknown name would be unlabelled and last)
    rows = _report_rows({"brand_new_fixable": 1, "duplicate_inflation": 2, "brand_new_waivable": 3})
    assert rows == [("brand_new_waivable", "a new waivable difference"),
                    ("duplicate_inflation", "warehouse counted re-delivered events twice"),
                    ("brand_new_fixable", "a new fixable difference")]
    assert charts.class_counts({"brand_new_fixable": 4}) == [("(top level)", {"brand_new_fixable": 4})]
    # the gate: the waivable one may be accepted, the fixable one never
    assert gate.parse_accept_classes("brand_new_waivable") == ("brand_new_waivable",)
    with pytest.raises(UsageError, match="corrected by `recon repair`"):
        gate.parse_accept_classes("brand_new_fixable")
    with pytest.raises(UsageError, match="name brand_new_waivable and/or stale_salesforce and/or unexplained"):
        gate.parse_accept_classes(",")
    assert "brand_new_waivable" in cli_gate._accept_help()
    assert app_gate._left_alone_class("brand_new_waivable") == "brand_new_waivable"
    # repair: in its policy, and its records routed by it
    pol = repair.policy()
    assert pol["left_alone"] == ["brand_new_waivable", "unexplained"] and pol["corrected"][-1] == "brand_new_fixable"
    ex, cfg = _explain_dir(tmp_path, ["brand_new_waivable", "brand_new_fixable", "stale_salesforce"])
    routes = _routes(repair.load_plan(ex, cfg))
    assert routes == {"brand_new_waivable": "left_alone", "brand_new_fixable": "corrected",
                      "stale_salesforce": "action_list"}
