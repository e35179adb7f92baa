"""Issue 21, the report a controller can sign: header, currency, owner names, class descriptions and
the SEC-critical reconciliation, from fixture dicts and a fixture directory (no stack)."""

from __future__ import annotations

import html
import io
import json
import re
import subprocess
import sys
from dataclasses import replace
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from rich.console import Console

from engine import config as config_mod
from engine.app import report as app_report
from engine.core import classes
from engine.core.errors import UsageError
from engine.report import html as rh
from engine.report import sections
from engine.report.terminal import render_headline
from tests.unit.test_report_html import full_inputs, write_fixture_dir

RUN = "01a23c59-3d26-7e99-a6e3-d35a6fec9ed9"


def sec_findings() -> list[dict[str, Any]]:
    """Six SEC-critical findings, one per outcome (plus one "other" for a conflict and one with no
    repair record), and a non-critical one that must stay out of the equation."""
    def f(i: str, cls: str) -> dict[str, Any]:
        return {"Id": i, "class": cls, "owner_id": "005A", "sec_critical": True, "salesforce_value": "1",
                "warehouse_value": "2", "copy_offsets": "[]", "overpayment": "0"}
    return [f("s1", "duplicate_inflation"), f("s2", "missing_in_warehouse"), f("s3", "stale_salesforce"),
            f("s4", "unexplained"), f("s5", "duplicate_inflation"), f("s6", "missing_events"),
            {**f("n1", "duplicate_inflation"), "sec_critical": False}]


def sec_inputs(affected: int = 6) -> rh.ReportInputs:
    ex = {**full_inputs().explain, "sec_critical": {"records": affected, "overpayment": "1.00"}}  # type: ignore[dict-item]
    repair = {"records": [{"Id": "s1", "class": "duplicate_inflation", "status": "applied"},
                          {"Id": "s2", "class": "missing_in_warehouse", "status": "in_sync"},
                          {"Id": "s5", "class": "duplicate_inflation", "status": "conflict"},
                          {"Id": "n1", "class": "duplicate_inflation", "status": "applied"}]}
    return replace(full_inputs(), explain=ex, findings=sec_findings(), repair=repair,
                   action_list=[{"Id": "s3", "sec_critical": True}], owners={"005A": "Ada Lovelace"})


# -- the header --------------------------------------------------------------------------------------
def test_header_names_mapping_runs_times_and_version() -> None:
    d = {**full_inputs().diff, "request": {"as_of": "2026-09-03T23:00:00+00:00"}}  # type: ignore[dict-item]
    d["source"] = {"rows": 100, "extract": {"system": "salesforce", "extracted_at": "2026-09-04T01:02:03.5+00:00"}}
    d["target"] = {"rows": 99, "extract": {"system": "postgresql", "server_time": "2026-09-04T01:02:04+00:00"}}
    inp = replace(full_inputs(), diff=d, generated_at="2026-09-05T08:00:00+00:00", version="1.2.3",
                  verification={"status": "ledger", "parts": {"diff": {"status": "ledger", "run_id": RUN}}})
    page = rh.build_html(inp)
    head = dict(re.findall(r'<td data-field="([^"]+)">(.*?)</td>', page))
    assert head["mapping"] == "clv"
    assert head["run ids"] == f"diff: <code>{RUN}</code>"
    assert head["as of"] == "2026-09-03 23:00:00 UTC"
    assert head["salesforce extracted at"] == "2026-09-04 01:02:03 UTC"
    assert head["postgresql extracted at"] == "2026-09-04 01:02:04 UTC"
    assert head["report made at"] == "2026-09-05 08:00:00 UTC"
    assert head["recon version"] == "1.2.3"
    # nothing verified: no run id is claimed
    assert "none verified" in sections.header(replace(inp, verification=None))


def test_collect_stamps_the_time_the_report_was_made(tmp_path: Path) -> None:
    inp = app_report.collect(write_fixture_dir(tmp_path / "out"))
    from datetime import UTC, datetime

    made = datetime.fromisoformat(inp.generated_at)
    assert made.tzinfo is not None and abs((datetime.now(UTC) - made).total_seconds()) < 3600


# -- currency ----------------------------------------------------------------------------------------
def _cfg(tmp_path: Path, body: str) -> config_mod.Config:
    p = tmp_path / "recon.toml"
    p.write_text(body)
    return config_mod.load(p)


def test_report_currency_from_config_validated(tmp_path: Path) -> None:
    assert config_mod.load(None).report() == config_mod.ReportSettings("USD", {})
    s = _cfg(tmp_path, '[report]\ncurrency = "EUR"\n[report.rates]\nGBP = "1.17"\n').report()
    assert s == config_mod.ReportSettings("EUR", {"GBP": D("1.17")})
    for body, key in (('[report]\ncurrency = "UDS"\n', "[report] currency"),
                      ('[report]\ncurrency = "usd"\n', "[report] currency"),
                      ('[report.rates]\nEUR = 1.08\n', "[report] rates.EUR"),  # a float: refused
                      ('[report.rates]\nEUR = "-1"\n', "[report] rates.EUR"),
                      ('[report.rates]\nEURO = "1"\n', "[report] rates.EURO"),
                      ('[report]\ncolour = "red"\n', "[report] unknown key")):
        with pytest.raises(UsageError, match=re.escape(key)):
            _cfg(tmp_path, body).report()


def test_amounts_carry_the_currency_and_are_grouped() -> None:
    page = rh.build_html(replace(full_inputs(), currency="EUR"))
    kpis = re.findall(r'<div class="kpi"><b>(.*?)</b>', page)
    assert "EUR 1,500.00" in kpis and "EUR 90.00" in kpis
    assert "Commission overpaid on inflated values: EUR 90.00" in page
    # the cost model's unit column says the currency, never "money"
    assert "<td>EUR</td>" in page and "<td>money</td>" not in page


def _multi_currency_dir(tmp_path: Path) -> Path:
    d = write_fixture_dir(tmp_path / "out")
    ex = json.loads((d / "explain" / "explain.json").read_text())
    (d / "explain" / "explain.json").write_text(json.dumps({**ex, "currency_field": "CurrencyIsoCode"}))
    f = pl.read_parquet(d / "explain" / "findings.parquet")
    f = f.with_columns(pl.Series("currency", ["EUR", "USD", "EUR", "GBP", "USD"]))
    f.with_columns(pl.Series("overpayment", ["10.00", "1.00", "5.00", "2.00", "0"])).write_parquet(
        d / "explain" / "findings.parquet")
    return d


def test_multi_currency_org_without_rates_is_refused_naming_the_key(tmp_path: Path) -> None:
    d = _multi_currency_dir(tmp_path)
    cfg = _cfg(tmp_path, '[report]\ncurrency = "USD"\n[report.rates]\nEUR = "1.10"\n')
    with pytest.raises(UsageError, match=r"\[report\] rates.*GBP") as e:
        app_report.collect(d, cfg)
    assert "EUR" not in str(e.value).split("for ")[-1]  # EUR has a rate: only GBP is missing
    r = subprocess.run([sys.executable, "-m", "engine.cli.main", "report", "--from", str(d), "-C",
                        str(tmp_path / "recon.toml")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "[report] rates" in r.stderr and "GBP" in r.stderr
    assert not (d / "report.html").exists()


def test_multi_currency_org_reports_per_currency(tmp_path: Path) -> None:
    d = _multi_currency_dir(tmp_path)
    cfg = _cfg(tmp_path, '[report]\ncurrency = "USD"\n[report.rates]\nEUR = "1.10"\nGBP = "1.25"\n')
    inp = app_report.collect(d, cfg)
    assert [(r.code, r.records, r.overpayment, r.converted) for r in inp.currencies or []] == [
        ("EUR", 2, D("15.00"), D("16.50")), ("GBP", 1, D("2.00"), D("2.50")), ("USD", 2, D("1.00"), D("1.00"))]
    page = rh.build_html(inp)
    assert re.search(r'id="currency-total">USD 20\.00<', page)
    # the headline converts too: never a sum of euros and pounds
    assert re.search(r'<div class="kpi"><b>USD 20\.00</b><span>commission', page)


# -- owners, classes ----------------------------------------------------------------------------------
def test_owner_names_with_the_id_as_fallback() -> None:
    page = rh.build_html(replace(full_inputs(), owners={"005A": "Ada Lovelace"}))
    fig = page[page.index('id="exposure-by-owner"'):page.index('id="before-after-repair"')]
    assert ">Ada Lovelace</text>" in fig and ">005C</text>" in fig  # 005C has no name: its Id
    assert "<td>Ada Lovelace</td><td>005A</td>" in fig


def test_every_class_has_its_label_and_description() -> None:
    page = rh.build_html(full_inputs())
    legend = page[page.index('<section id="classes">'):]
    legend = legend[:legend.index("</section>")]
    for c in classes.CLASSES:
        assert f'<dt data-class="{c.name}">{html.escape(c.label)} ' in legend
        assert f"<dd>{html.escape(c.description)}</dd>" in legend


# -- the SEC-critical reconciliation --------------------------------------------------------------------
def test_sec_reconciliation_puts_every_record_in_one_named_part() -> None:
    rec = sections.sec_reconciliation(sec_inputs())
    assert rec is not None and rec.adds_up
    got = {r.id: (r.part, r.why) for r in rec.records}
    assert got == {"s1": ("corrected", "repair status applied"), "s2": ("corrected", "repair status in_sync"),
                   "s3": ("action_list", "in repair/action_list.json"), "s4": ("unexplained", "no rule explains it"),
                   "s5": ("other", "repair status conflict"), "s6": ("other", "no repair record")}
    page = rh.build_html(sec_inputs())
    eq = re.search(r'<p class="equation ok" id="sec-equation" data-adds-up="true" data-affected="6">(.*?)</p>', page)
    assert eq is not None
    counts = dict(re.findall(r'data-part="(\w+)" data-count="(\d+)"', eq.group(1)))
    assert counts == {"corrected": "2", "action_list": "1", "unexplained": "1", "other": "2"}
    assert "6 SEC-critical accounts affected</span> = " in eq.group(1)
    # the records are listed, with the owner's name
    rows = re.findall(r'<tr data-part="(\w+)"><td><code>(\w+)</code></td>', page)
    assert sorted(i for _, i in rows) == ["s1", "s2", "s3", "s4", "s5", "s6"]
    assert "<td>Ada Lovelace</td>" in page


def test_sec_reconciliation_that_does_not_add_up_says_so() -> None:
    page = rh.build_html(sec_inputs(affected=7))
    assert 'class="equation bad" id="sec-equation" data-adds-up="false"' in page
    assert "does not add up: the findings list 6 SEC-critical records" in page


# -- wording and layout ---------------------------------------------------------------------------------
def test_no_developer_wording_and_distinct_toggles() -> None:
    from tests.unit.test_report_html import repair_json

    page = rh.build_html(replace(full_inputs(), repair=repair_json(), repair_path="repair/repair.json"))
    assert "records[]" not in page and "repair/repair.json" not in page and "with status" not in page
    for fig in re.findall(r"<figure.*?</figure>", page, re.S):
        toggles = re.findall(r"<summary>(.*?)</summary>", fig)
        assert len(toggles) == len(set(toggles)), toggles
        assert "data" not in toggles


def test_card_labels_break_at_underscores_only() -> None:
    page = rh.build_html(full_inputs())
    kpi_css = [rule for rule in re.findall(r"[^{}]*\{[^}]*\}", page) if ".kpi" in rule]
    assert kpi_css and not [r for r in kpi_css if "overflow-wrap:anywhere" in r or "word-break:break-all" in r]
    assert any(".kpi span{" in r and "overflow-wrap:normal" in r for r in kpi_css), kpi_css
    d = {**full_inputs().diff, "columns": {"Customer_Lifetime_Value__c": {"abs_variance": "1"}}}  # type: ignore[dict-item]
    page = rh.build_html(replace(full_inputs(), diff=d))
    assert "<span>abs Customer_<wbr>Lifetime_<wbr>Value_<wbr>_<wbr>c variance</span>" in page


def test_headline_table_is_not_wrapped_when_piped() -> None:
    buf = io.StringIO()
    console = Console(file=buf, width=40)  # not a terminal, and narrower than the table
    rows = rh.headline(full_inputs())
    render_headline(console, rows)
    lines = buf.getvalue().splitlines()
    for value, label in rows:
        assert any(label in line and value in line for line in lines), (label, value, buf.getvalue())


# -- explain's side: the record currency and the owner names it stores ------------------------------------
def test_explain_keeps_each_record_currency_in_the_findings() -> None:
    from engine.app.explain import with_currency
    from engine.core import forensics
    from tests.unit.test_classes import _triangulated

    exp = _triangulated()
    ids = exp.findings["Id"].to_list()
    attrs = pl.DataFrame({"Id": ids, "currency": ["EUR"] * (len(ids) - 1) + ["GBP"]})
    out = forensics.findings_for_parquet(with_currency(exp, attrs).findings)
    got = dict(zip(out["Id"].to_list(), out["currency"].to_list(), strict=True))
    assert got == dict(zip(ids, ["EUR"] * (len(ids) - 1) + ["GBP"], strict=True))
    assert "currency" not in forensics.findings_for_parquet(exp.findings).columns  # single-currency: no column


def test_owner_names_are_one_query_of_valid_user_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only User ids reach the SOQL (a queue's 00G id, junk and nulls never do), in one query."""
    from engine.connectors.salesforce import source
    from engine.core.sfid import make_ids

    users = make_ids("005", 1, 3)
    queries: list[str] = []

    class Sf:
        def query_all(self, soql: str) -> dict[str, Any]:
            queries.append(soql)
            return {"records": [{"Id": users[0], "Name": "Ada Lovelace"}, {"Id": users[1], "Name": "Alan Turing"}]}

    class Conn:
        sf = Sf()
        instance_url = "https://example.my.salesforce.com"

    monkeypatch.setattr(source, "connection", lambda _cfg: Conn())
    got = source.user_names(config_mod.load(None), [*users, users[0], make_ids("00G", 1, 1)[0], "005' OR Id != '",
                                                    None])  # type: ignore[list-item]
    assert got == {users[0]: "Ada Lovelace", users[1]: "Alan Turing"}  # users[2]: not visible, left out
    want = f"SELECT Id, Name FROM User WHERE Id IN ({', '.join(repr(u) for u in sorted(users))})"  # noqa: S608
    assert queries == [want]
    assert source.user_names(config_mod.load(None), ["not an id"]) == {} and len(queries) == 1


def test_position_in_partition_is_readable() -> None:
    """Each window's tick is at least 4 px wide (a 20-offset window in a 1,000-offset partition would
    be 2.5 px) and the column says what it shows, at full contrast."""
    from tests.unit.test_report_html import parse

    page = rh.build_html(full_inputs())
    ticks = [m for m in parse(page).charts["variance-by-window"] if "window" in m["class"]]
    assert len(ticks) == 2 and all(float(m["width"]) >= 4 for m in ticks), ticks
    assert 'class="colhead">position in partition</text>' in page
