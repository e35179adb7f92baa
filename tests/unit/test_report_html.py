"""The HTML report from fixture dicts: every chart present and non-empty, nothing external, data
escaped, deterministic; plus loading a recon output directory and the `recon report` command."""

from __future__ import annotations

import html
import json
import re
from decimal import Decimal as D
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import polars as pl
from typer.testing import CliRunner

from engine.app import report as app_report
from engine.core import classes, cost
from engine.report import html as rh

EVIL = "<script>alert('x')</script>"


def diff_summary(mismatched: int = 6, missing: int = 1, abs_variance: str = "1500.00") -> dict[str, Any]:
    return {
        "mapping": "clv", "mismatched": mismatched, "missing_in_target": missing, "missing_in_source": 0,
        "unchanged": 93, "variance_ratio": (mismatched + missing) / 100, "duplicate_keys": {"source": 0, "target": 0},
        "columns": {"clv": {"mismatched": mismatched, "abs_variance": abs_variance, "net_variance": abs_variance}},
        "source": {"rows": 100, "extract": {"system": "salesforce", "object": "Account"}},
        "target": {"rows": 99, "extract": {"system": "postgresql", "object": "warehouse.customer_clv"}},
    }


def explain_doc() -> dict[str, Any]:
    return {
        "column": "clv", "records": 7,
        "classes": {"duplicate_inflation": 4, "missing_events": 1, "stale_salesforce": 1, "warehouse_only_drift": 0,
                    "missing_in_warehouse": 1, "unexplained": 0},
        "exposure": {"total": "90.00", "underpayment_total": "2.00",
                     "by_owner": {"005A": "50.00", EVIL: "30.00", "005C": "10.00"}, "underpayments": []},
        "sec_critical": {"records": 2, "overpayment": "40.00"},
        "kafka": {"topic": "clv-events", "duplicates": 5, "duplicate_records": 4,
                  "partitions": {"0": {"first_offset": 0, "last_offset": 999, "end_offset": 1000},
                                 "1": {"first_offset": 0, "last_offset": 799, "end_offset": 800}},
                  "windows": [{"partition": 0, "first_offset": 500, "last_offset": 520, "events": 3,
                               "first_ts": "2026-09-03T23:17:14.947Z", "last_ts": "2026-09-03T23:17:15.040Z"},
                              {"partition": 1, "first_offset": 100, "last_offset": 110, "events": 2,
                               "first_ts": "2026-09-03T23:17:14.950Z", "last_ts": "2026-09-03T23:17:15.000Z"}]},
    }


def findings() -> list[dict[str, Any]]:
    return [
        # 110 − 100 = 10, both copies in window p0
        {"Id": "a", "class": "duplicate_inflation", "owner_id": "005A", "salesforce_value": "100.00",
         "warehouse_value": "110.00", "copy_offsets": '["0:501","0:502"]', "overpayment": "0.50"},
        # 30, split: 15 to p0's window, 15 to p1's window
        {"Id": "b", "class": "duplicate_inflation", "owner_id": EVIL, "salesforce_value": "200.00",
         "warehouse_value": "230.00", "copy_offsets": '["0:510","1:105"]', "overpayment": "1.50"},
        # 8, its copy sits outside every window
        {"Id": "c", "class": "duplicate_inflation", "owner_id": "005C", "salesforce_value": "50.00",
         "warehouse_value": "58.00", "copy_offsets": ["1:700"], "overpayment": "0.40"},
        # 5 without any re-delivered copy
        {"Id": "d", "class": "missing_events", "owner_id": "005C", "salesforce_value": "20.00",
         "warehouse_value": "15.00", "copy_offsets": "[]", "overpayment": "0"},
        # missing in the warehouse: no variance to attribute
        {"Id": "e", "class": "missing_in_warehouse", "owner_id": "005C", "salesforce_value": "20.00",
         "warehouse_value": None, "copy_offsets": "[]", "overpayment": "0"},
    ]


def repair_doc() -> dict[str, Any]:
    return {"applied": True, "corrections_by_class": {"duplicate_inflation": 4, "missing_events": 1,
                                                      "missing_in_warehouse": 1}, "action_items": {"stale_salesforce": 1}}


def cost_doc() -> dict[str, Any]:
    i = cost.CostInputs(commission_overpayment=D("100000"), clv_abs_variance=D("2000000"))
    return cost.to_json(i, cost.model(i))


def full_inputs() -> rh.ReportInputs:
    return rh.ReportInputs(source_dir="recon-out", diff=diff_summary(), diff_after=diff_summary(1, 0, "10.00"),
                           explain=explain_doc(), findings=findings(), repair=repair_doc(),
                           repair_path="repair/summary.json", cost=cost_doc(),
                           artefacts=[("diff/summary.json", 1234), (f"odd/{EVIL}.json", 5)], version="test")


def write_fixture_dir(root: Path) -> Path:
    """A recon output directory like the demo leaves (used by the browser test too)."""
    (root / "diff").mkdir(parents=True)
    (root / "diff" / "summary.json").write_text(json.dumps(diff_summary()))
    (root / "diff-after").mkdir()
    (root / "diff-after" / "summary.json").write_text(json.dumps(diff_summary(1, 0, "10.00")))
    (root / "explain").mkdir()
    (root / "explain" / "explain.json").write_text(json.dumps(explain_doc()))
    fs = [{**f, "copy_offsets": f["copy_offsets"] if isinstance(f["copy_offsets"], str) else json.dumps(f["copy_offsets"])}
          for f in findings()]
    pl.DataFrame(fs).write_parquet(root / "explain" / "findings.parquet")
    (root / "repair").mkdir()
    (root / "repair" / "repair-summary.json").write_text(json.dumps(repair_doc()))
    (root / "cost.json").write_text(json.dumps(cost_doc()))
    return root


class _Marks(HTMLParser):
    """Per figure[data-chart]: its mark elements (class contains "mark") and their attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, list[dict[str, str]]] = {}
        self.stack: list[str | None] = []
        self.refs: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        for k in ("src", "href", "xlink:href", "action", "data"):
            if k in a:
                self.refs.append(a[k])
        if tag == "figure" and "data-chart" in a:
            self.charts[a["data-chart"]] = []
            self.stack.append(a["data-chart"])
        elif tag == "figure":
            self.stack.append(None)
        cur = next((c for c in reversed(self.stack) if c), None)
        if cur and "mark" in a.get("class", "").split():
            self.charts[cur].append({"tag": tag, **a})

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure" and self.stack:
            self.stack.pop()


def parse(page: str) -> _Marks:
    p = _Marks()
    p.feed(page)
    return p


def _visible(m: dict[str, str]) -> bool:
    if m["tag"] == "rect":
        return float(m["width"]) > 0 and float(m["height"]) > 0
    if m["tag"] == "polyline":
        pts = [tuple(map(float, xy.split(","))) for xy in m["points"].split()]
        return len(pts) >= 2 and pts[0] != pts[-1]
    if m["tag"] == "circle":
        return float(m["r"]) > 0
    return False


def test_every_chart_present_and_non_empty() -> None:
    page = rh.build_html(full_inputs())
    p = parse(page)
    assert set(rh.CHARTS) <= set(p.charts)
    for name in rh.CHARTS:
        marks = p.charts[name]
        assert any(_visible(m) for m in marks), f"chart {name} has no visible mark"
    # the repair summary adds its own panel inside before/after
    assert "repair-corrections" in page
    # windows are drawn where they sit in their partitions
    assert sum(1 for m in p.charts["variance-by-window"] if "window" in m["class"]) == 2
    # before/after: two bars per metric with diff-after present (the fixtures: 6 → 1 mismatched,
    # 1 → 0 missing in target, 0 → 0 missing in source), then one bar per class the repair corrected
    fig = page[page.index('data-chart="before-after-repair"'):]
    fig = fig[:fig.index("</figure>")]
    assert re.findall(r'<rect class="mark[^"]*"[^>]*><title>([^<]*)</title>', fig) == [
        "mismatched before repair: 6", "mismatched after repair: 1",
        "missing in target before repair: 1", "missing in target after repair: 0",
        "missing in source before repair: 0", "missing in source after repair: 0",
        f"{classes.label('duplicate_inflation')}: 4", f"{classes.label('missing_events')}: 1",
        f"{classes.label('missing_in_warehouse')}: 1"]
    assert sum(1 for m in p.charts["before-after-repair"] if m["tag"] == "rect") == 9


def test_self_contained_no_external_references() -> None:
    page = rh.build_html(full_inputs())
    p = parse(page)
    assert "script" not in p.tags
    for ref in p.refs:
        assert not re.match(r"\s*(https?:)?//", ref, re.I), ref
        assert ref.startswith("data:") or not re.match(r"\s*[a-z][a-z0-9+.-]*:", ref, re.I), ref
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*https?://""", page, re.I)
    assert "url(" not in page and "@import" not in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in html.unescape(page)


def test_data_is_escaped() -> None:
    page = rh.build_html(full_inputs())
    assert EVIL not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<script" not in page.lower()


def test_deterministic() -> None:
    assert rh.build_html(full_inputs()) == rh.build_html(full_inputs())


def test_variance_attribution_by_window() -> None:
    per, outside, no_copy = rh.variance_by_window(findings(), explain_doc()["kafka"]["windows"])
    # p0 window: 10 (a) + 15 (half of b); p1 window: 15 (other half of b); c's copy at 1:700 is outside
    assert per == [D("25"), D("15")]
    assert outside == D("8") and no_copy == D("5")


def test_repair_counts_found_under_any_key() -> None:
    assert rh.repair_counts(repair_doc()) == ("corrections_by_class", {"duplicate_inflation": 4, "missing_events": 1,
                                                                        "missing_in_warehouse": 1})
    nested = {"run": {"classes": {"duplicate_inflation": {"corrected": 7}, "stale_salesforce": {"records": 2}}}}
    assert rh.repair_counts(nested) == ("run.classes", {"duplicate_inflation": 7, "stale_salesforce": 2})
    assert rh.repair_counts({"nothing": 1}) is None and rh.repair_counts(None) is None


def repair_json() -> dict[str, Any]:
    """The shape `recon repair --apply` writes to repair.json (only what the report reads)."""
    return {
        "mode": "apply",
        "classes": {"duplicate_inflation": 4, "missing_events": 1, "stale_salesforce": 1, "missing_in_warehouse": 1},
        "sec_critical": {"planned": 2, "applied": 2, "already_applied": 0, "in_sync": 0, "verified": 2},
        "rest": {"planned": 4, "applied": 3, "already_applied": 0, "in_sync": 0, "conflicts": 1, "verified": 3},
        "records": [{"Id": "a", "class": "duplicate_inflation", "status": "applied"},
                    {"Id": "b", "class": "duplicate_inflation", "status": "already_applied"},
                    {"Id": "c", "class": "duplicate_inflation", "status": "conflict"},
                    {"Id": "d", "class": "missing_events", "status": "in_sync"},
                    {"Id": "e", "class": "missing_in_warehouse", "status": "applied"},
                    {"Id": "f", "class": "duplicate_inflation", "status": "applied"}],
    }


def test_repair_json_counts_corrected_records_and_phases(tmp_path: Path) -> None:
    path, counts = rh.repair_counts(repair_json())  # type: ignore[misc]
    # stale_salesforce is in `classes` but never corrected; the conflict isn't counted either
    assert counts == {"duplicate_inflation": 3, "missing_events": 1, "missing_in_warehouse": 1}
    assert path.startswith("records[]")
    assert rh.repair_phases(repair_json()) == ("SEC-critical subset first: 2 corrected (2 verified), "
                                               "then 3 other records (3 verified).")
    d = write_fixture_dir(tmp_path / "out")
    (d / "repair" / "plan.json").write_text(json.dumps({"corrections": [{"class": "missing_events", "status": "pending"}]}))
    (d / "repair" / "repair.json").write_text(json.dumps(repair_json()))
    inp = app_report.collect(d)
    assert inp.repair_path == "repair/repair.json"
    page = rh.build_html(inp)
    assert "SEC-critical subset first" in page


def test_partial_inputs_still_render_every_figure() -> None:
    page = rh.build_html(rh.ReportInputs(source_dir="x", diff=diff_summary()))
    p = parse(page)
    assert set(rh.CHARTS) <= set(p.charts)
    assert any(_visible(m) for m in p.charts["before-after-repair"])
    assert "no diff after repair yet" in page
    # the never-breaks-even case is said, not drawn as a crossing
    i = cost.CostInputs(commission_overpayment=D("1"), clv_abs_variance=D("0"), penalty_probability_given_failure=D("0"))
    page = rh.build_html(rh.ReportInputs(source_dir="x", explain=explain_doc(), cost=cost.to_json(i, cost.model(i))))
    assert "never breaks even" in page
    assert any(_visible(m) for m in parse(page).charts["cost-break-even"])


def test_collect_and_cli(tmp_path: Path) -> None:
    from engine.cli.main import app

    d = write_fixture_dir(tmp_path / "recon-out")
    inp = app_report.collect(d)
    assert inp.repair_path == "repair/repair-summary.json" and len(inp.findings) == 5
    assert inp.cost_note is None
    r = CliRunner().invoke(app, ["report", "--from", str(d)])
    assert r.exit_code == 0, r.output
    page = (d / "report.html").read_text()
    assert set(rh.CHARTS) <= set(parse(page).charts)
    assert "diff/summary.json" in page and "report.html</code>" not in page
    # without cost.json the cost is computed from the measurements with the example defaults, and said so
    (d / "cost.json").unlink()
    out = tmp_path / "elsewhere" / "r.html"
    r = CliRunner().invoke(app, ["report", "--from", str(d), "--out", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert "No cost.json in this directory" in page
    assert any(_visible(m) for m in parse(page).charts["cost-break-even"])


def test_cli_report_errors(tmp_path: Path) -> None:
    from engine.cli.main import app
    from engine.core.errors import UsageError

    r = CliRunner().invoke(app, ["report", "--from", str(tmp_path / "nope")])
    assert isinstance(r.exception, UsageError) and "no such directory" in str(r.exception)
    r = CliRunner().invoke(app, ["report", "--from", str(tmp_path)])
    assert isinstance(r.exception, UsageError) and "holds no recon outputs" in str(r.exception)


def test_report_without_measurable_cost_says_why(tmp_path: Path) -> None:
    d = tmp_path / "out"
    (d / "explain").mkdir(parents=True)
    (d / "explain" / "explain.json").write_text(json.dumps(explain_doc()))  # no diff, no findings: no CLV variance
    target = app_report.write_report(d, tmp_path)  # --out an existing directory: report.html inside it
    assert target == tmp_path / "report.html"
    page = target.read_text()
    assert "cost model not computed: no measured clv abs variance" in page
    assert set(rh.CHARTS) <= set(parse(page).charts)
