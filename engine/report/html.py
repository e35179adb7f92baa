"""`recon report`: one self-contained HTML file with the incident's charts.

Why server-side SVG, by hand: the report is evidence that gets mailed, archived next to a signed
manifest and opened years later, possibly offline. So it carries no script, loads nothing (a
Content-Security-Policy forbids it), and is deterministic: the same artefacts give the same bytes,
which makes it diffable and hashable. A few bar and line charts don't justify a charting library;
they are drawn in :mod:`engine.report.charts`, and this module assembles the page around them.

Every piece of data that reaches the page goes through :func:`esc` (html.escape): owner ids, class
names and paths come from systems we don't control.

Inputs (all optional except that at least one of the diff or explain outputs must be there):
``diff/summary.json``, ``explain/explain.json`` + ``explain/findings.parquet``, ``diff-after/summary.json``
(the diff after repair), ``repair/*.json`` (any JSON holding per-class counts of corrections) and
``cost.json`` (``recon cost --json``; without it the cost is computed from the measurements with
the configured or example defaults, and the report says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.report import sections
from engine.report.charts import (
    _gated_column,
    _table,
    chart_before_after,
    chart_break_even,
    chart_classes,
    chart_owners,
    chart_variance_by_window,
    dec,
    esc,
    fmt_int,
)

# re-exported: part of this module's interface (``html.repair_counts``, …)
from engine.report.charts import repair_counts as repair_counts
from engine.report.charts import repair_phases as repair_phases
from engine.report.charts import variance_by_window as variance_by_window

#: The charts every complete report has (the browser test checks each is present and non-empty).
CHARTS = ("variance-by-window", "mismatches-by-class", "exposure-by-owner", "before-after-repair", "cost-break-even")


@dataclass
class ReportInputs:
    """Everything the page shows, already loaded (the builder does no I/O, so tests feed dicts)."""

    source_dir: str
    diff: dict[str, Any] | None = None
    diff_after: dict[str, Any] | None = None
    explain: dict[str, Any] | None = None
    findings: list[dict[str, Any]] = field(default_factory=list)
    repair: dict[str, Any] | None = None
    repair_path: str | None = None
    cost: dict[str, Any] | None = None
    cost_note: str | None = None
    artefacts: list[tuple[str, int]] = field(default_factory=list)
    top_owners: int = 15
    version: str = ""
    #: how the artefacts were checked (``engine.app.trust.overall``); None: not checked at all
    verification: dict[str, Any] | None = None
    #: the Proof section's checks (``engine.app.proof.report_proof``); None: no section
    proof: dict[str, Any] | None = None
    #: ``[report] currency`` (ISO 4217), the unit of every amount on the page
    currency: str = "USD"
    #: owner Id → name, from explain.json (explain fetched them from Salesforce)
    owners: dict[str, str] = field(default_factory=dict)
    #: when the report was made (ISO 8601, UTC); given, so that the same inputs give the same page
    generated_at: str = ""
    #: repair/action_list.json's records (the owners' action list)
    action_list: list[dict[str, Any]] = field(default_factory=list)
    #: per record currency, for an org with ``CurrencyIsoCode`` (None: every amount is in ``currency``)
    currencies: list[sections.CurrencyRow] | None = None


# -- page ----------------------------------------------------------------------------------------
CSS = """
:root{--fg:#111827;--mut:#6b7280;--bd:#e5e7eb;--bg:#f9fafb}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1000px;margin:0 auto;padding:24px}
h1{font-size:1.6rem;margin:0 0 4px} h2{font-size:1.15rem;margin:0 0 6px}
.sub{color:var(--mut);margin:4px 0 12px}
section,figure.chart{background:#fff;border:1px solid var(--bd);border-radius:8px;padding:16px 18px;margin:16px 0}
figure.chart{margin-left:0;margin-right:0}
figcaption{color:var(--mut);margin:0 0 8px}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:10px;margin:16px 0}
.kpi{background:#fff;border:1px solid var(--bd);border-radius:8px;padding:10px 12px}
.kpi b{display:block;font-size:1.25rem} .kpi span{color:var(--mut);font-size:.85rem;overflow-wrap:normal;word-break:normal;hyphens:manual}
svg.chart-svg{display:block;max-width:100%;height:auto}
svg text{font-family:inherit;fill:#111827;font-size:12px} svg text.axis{fill:#6b7280;font-size:11px}
svg text.val{font-size:11px;font-weight:600} svg text.colhead{fill:#374151;font-size:12px;font-weight:600} svg text.empty{fill:#6b7280;font-style:italic}
svg .grid{stroke:#eef0f3} svg .axisline{stroke:#9ca3af} svg .be{stroke:#111827;stroke-dasharray:4 3}
details{margin-top:8px} summary{cursor:pointer;color:var(--mut)}
table.data{border-collapse:collapse;margin-top:6px;font-size:.85rem}
table.data th,table.data td{border-bottom:1px solid var(--bd);padding:3px 10px 3px 0;text-align:left;vertical-align:top}
ul.art{columns:2;font-size:.85rem} code{font-size:.85em}
.note{background:#fffbeb;border:1px solid #fde68a;border-radius:6px;padding:8px 10px}
footer{color:var(--mut);font-size:.8rem;margin:24px 0}
.verify{border-radius:8px;padding:10px 14px;margin:12px 0;font-weight:600}
.verify.bad{background:#fef2f2;border:2px solid #dc2626;color:#b91c1c}
.verify.ok{background:#f0fdf4;border:1px solid #16a34a;color:#166534}
"""

#: The Proof section: a failed check in red, one not made in grey, never styled as passed.
PROOF_CSS = """
section.proof.failed{border:2px solid #dc2626}
table.proof td{overflow-wrap:anywhere} table.proof td:first-child,table.proof td.res{white-space:nowrap}
table.proof td.res{font-weight:600}
table.proof tr.ok td.res{color:#166534} table.proof tr.skip td{color:var(--mut)}
table.proof tr.failed td{color:#b91c1c;font-weight:600;background:#fef2f2}
p.figmark{color:var(--mut);font-size:.75rem;margin:0 0 4px} p.figmark.end{margin:6px 0 0}
"""

#: Print to PDF: white A4/Letter pages (the paper is the reader's choice), colours kept (red stays
#: red), no chart or table row split across pages, no useless disclosure toggles. The end marker of
#: a figure must not avoid a break after it: that would forbid the break between two figures and
#: leave the browser only breaks inside one.
PRINT_CSS = """
@media print{
@page{margin:14mm 12mm}
*{-webkit-print-color-adjust:exact;print-color-adjust:exact}
body{background:#fff;font-size:10.5pt}
main{max-width:none;padding:0}
figure.chart,.kpi,.verify,table.data tr{break-inside:avoid;page-break-inside:avoid}
h1,h2,p.figmark:not(.end){break-after:avoid;page-break-after:avoid}
details>summary{display:none}
section,figure.chart{border-color:#d1d5db}
}
"""

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def headline(inp: ReportInputs) -> list[tuple[str, str]]:
    """The report's headline numbers as (value, label), plain text: the cards at the top of the page
    and the demo's terminal summary show the same figures."""
    d, e = inp.diff or {}, inp.explain or {}
    items: list[tuple[str, str]] = []
    if d:
        items.append((f"{d.get('variance_ratio', 0):.2%}" if isinstance(d.get("variance_ratio"), (int, float)) else "–",
                      "of accounts differ"))
        col = _gated_column(d)
        if col:
            items.append((sections.money(inp, d["columns"][col].get("abs_variance")), f"abs {col} variance"))
    if e:
        items.append((sections.money(inp, _exposure_total(inp)), "commission overpayment at risk"))
        items.append((fmt_int((e.get("kafka") or {}).get("duplicates", 0)), "re-delivered Kafka copies"))
        items.append((fmt_int((e.get("sec_critical") or {}).get("records", 0)), "SEC-critical accounts affected"))
    if inp.diff_after is not None:
        a = inp.diff_after
        left = int(a.get("mismatched") or 0) + int(a.get("missing_in_target") or 0) + int(a.get("missing_in_source") or 0)
        items.append((fmt_int(left), "differences left after repair"))
    if inp.cost:
        r = inp.cost.get("results") or {}
        be = r.get("break_even_days")
        items.append(("never" if be == "never" else f"{be} days", "to break even"))
        roi = r.get("roi_12_months")
        items.append((f"{dec(roi) * 100:.0f}%" if roi is not None else "n/a", "12-month risk-adjusted ROI"))
    return items


def _kpis(inp: ReportInputs) -> str:
    items = headline(inp)
    return '<div class="kpis">' + "".join(f'<div class="kpi"><b>{esc(v)}</b>'
                                          f"<span>{sections.breakable(k)}</span></div>" for v, k in items) + "</div>"


def _exposure_total(inp: ReportInputs) -> Any:
    """The commission overpayment in the report currency: explain's total, or, for a multi-currency
    org, the sum of the per-currency amounts converted at the configured rates."""
    if inp.currencies is not None:
        return sum((r.converted for r in inp.currencies), dec(0))
    return ((inp.explain or {}).get("exposure") or {}).get("total")


def _summary(inp: ReportInputs) -> str:
    d, e = inp.diff or {}, inp.explain or {}
    lines: list[str] = []
    if d:
        src = ((d.get("source") or {}).get("extract") or {})
        tgt = ((d.get("target") or {}).get("extract") or {})
        col = _gated_column(d)
        lines.append(
            f"Compared {esc(src.get('system', 'source'))} {esc(src.get('object', ''))} "
            f"({fmt_int((d.get('source') or {}).get('rows', 0))} rows) with {esc(tgt.get('system', 'target'))} "
            f"{esc(tgt.get('object', ''))} ({fmt_int((d.get('target') or {}).get('rows', 0))} rows): "
            f"{fmt_int(d.get('mismatched', 0))} mismatched, {fmt_int(d.get('missing_in_target', 0))} missing in the target, "
            f"{fmt_int(d.get('missing_in_source', 0))} missing in the source"
            + (f"; {esc(col)} off by {esc(sections.money(inp, d['columns'][col].get('abs_variance')))} in absolute terms."
               if col else "."))
    if e:
        k = e.get("kafka") or {}
        cls = ", ".join(f"{fmt_int(v)} {esc(sections.class_label(c))}" for c, v in (e.get("classes") or {}).items() if v)
        lines.append(f"The Kafka topic {esc(k.get('topic', ''))} holds {fmt_int(k.get('duplicates', 0))} re-delivered copies "
                     f"of {fmt_int(k.get('duplicate_records', 0))} accounts' events in {len(k.get('windows') or [])} "
                     f"window(s). Explanations of the differences: {cls or 'none'}.")
        x = e.get("exposure") or {}
        sec = e.get("sec_critical") or {}
        lines.append(f"Commission overpaid on inflated values: {esc(sections.money(inp, _exposure_total(inp)))} across "
                     f"{len(x.get('by_owner') or {}):,} account owners (underpaid: "
                     f"{esc(sections.money(inp, x.get('underpayment_total')))}); {fmt_int(sec.get('records', 0))} SEC-critical "
                     f"accounts carry {esc(sections.money(inp, sec.get('overpayment')))}.")
    if inp.diff_after is not None:
        a = inp.diff_after
        lines.append(f"After repair: {fmt_int(a.get('mismatched', 0))} mismatched, {fmt_int(a.get('missing_in_target', 0))} "
                     f"missing in the target, {fmt_int(a.get('missing_in_source', 0))} missing in the source remain.")
    if inp.cost:
        r = inp.cost.get("results") or {}
        be = r.get("break_even_days")
        roi = r.get("roi_12_months")
        def m(x: Any) -> str:
            return esc(sections.money(inp, x))

        lines.append(f"Cost model: {m(r.get('cost_per_incident'))} per incident, expected loss "
                     f"{m(r.get('expected_monthly_loss'))} per month; preventing it costs "
                     f"{m(r.get('one_time_prevention'))} once plus running cost, "
                     + ("and never breaks even with these inputs" if be == "never" else f"and breaks even after {esc(be)} days")
                     + (f"; 12-month risk-adjusted ROI {dec(roi) * 100:.1f}%." if roi is not None else "."))
    body = "".join(f"<li>{x}</li>" for x in lines) or "<li>No recon outputs found.</li>"
    why = "".join(sections.cause_paragraphs(inp))  # each root cause of the re-deliveries, one paragraph
    return f"<section><h2>What happened</h2><ul>{body}</ul>{why}</section>"


def _cost_section(inp: ReportInputs) -> str:
    if not inp.cost:
        return ""
    rows = [(k, v.get("value", ""), str(v.get("unit", "")).replace("money", inp.currency), v.get("source", ""),
             v.get("meaning", ""))
            for k, v in (inp.cost.get("inputs") or {}).items() if isinstance(v, dict)]
    note = f'<p class="note">{esc(inp.cost_note)}</p>' if inp.cost_note else ""
    formulas = "".join(f"<li><b>{esc(k)}</b> = {esc(v)}</li>" for k, v in (inp.cost.get("formulas") or {}).items())
    return ("<section><h2>Cost model inputs</h2>"
            '<p class="sub">Measured values come from recon; the defaults are examples — set yours in <code>[cost]</code> '
            "of recon.toml or with <code>recon cost --set key=value</code>.</p>" + note
            + _table(("input", "value", "unit", "source", "meaning"), rows, "the inputs").replace("<details>", "<details open>")
            + f'<details><summary>formulas</summary><ul>{formulas}</ul></details></section>')


def _artefacts(inp: ReportInputs) -> str:
    if not inp.artefacts:
        return ""
    items = "".join(f"<li><code>{esc(p)}</code> <span class=\"sub\">{n:,} bytes</span></li>" for p, n in inp.artefacts)
    return f'<section><h2>Artefacts</h2><p class="sub">in <code>{esc(inp.source_dir)}</code></p><ul class="art">{items}</ul></section>'


_CAPTIONS = {
    "variance-by-window": "Where the damage came from: each row is a run of re-delivered copies on one partition "
                          "(red: its position among the partition's offsets), with the CLV variance of the records "
                          "whose duplicated events it holds.",
    "mismatches-by-class": "Why each record differs, from triangulating Salesforce, the warehouse and the Kafka stream.",
    "exposure-by-owner": "Who was overpaid: commission on inflated CLV per account owner.",
    "before-after-repair": "What the repair fixed: the diff before and after. Records where Salesforce itself is "
                           "stale are left for their owners, by policy.",
    "cost-break-even": "When prevention pays: the cumulative risk-weighted loss it avoids against its one-time and "
                       "running cost; they cross at the break-even day.",
}


def _figmark(i: int, n: int, *, end: bool = False) -> str:
    """A figure's number above it and its end below it: in print, both on one page show the chart
    was not split (the PDF test reads them back with pdftotext)."""
    return (f'<p class="figmark end" data-mark="end">End of figure {i} of {n}</p>' if end else
            f'<p class="figmark" data-mark="start">Figure {i} of {n}</p>')


def _verification(inp: ReportInputs) -> str:
    """A banner: red when any artefact is unverified (the figures below may have been edited),
    green with how each was verified otherwise."""
    v = inp.verification or {"status": "unverified", "parts": {}}
    parts = v.get("parts") or {}
    listed = ", ".join(f"{esc(k)}: {esc(p.get('status'))}" for k, p in parts.items())
    if v.get("status") == "unverified":
        bad = [k for k, p in parts.items() if p.get("status") == "unverified"] or ["every artefact"]
        return (f'<p class="verify bad" id="verification" data-status="unverified">unverified: '
                f'{esc(", ".join(bad))} not checked against a ledger or a signed manifest (give --ledger DSN or '
                f'--key PUB); the figures below may have been edited. {listed}</p>')
    return (f'<p class="verify ok" id="verification" data-status="{esc(v.get("status"))}">verified '
            f'({esc(v.get("status"))}): {listed}</p>')


_PROOF_MARK = {"ok": ("ok", "✔ passed"), "failed": ("failed", "✘ FAILED"), "not checked": ("skip", "– not checked")}
_PROOF_HEAD = {
    "failed": "Verification FAILED: the checks in red did not pass. Do not rely on this report until they do.",
    "passed": "Every check that was made passed.",
    "none": "Nothing was checked: give --key PUB (signatures, subject digests, Merkle roots) and --ledger DSN "
            "--checkpoint FILE (the ledger chain).",
}


def _proof(inp: ReportInputs) -> str:
    """The Proof section: each check `recon report` made (or could not make, and why), as the app
    layer's verifiers reported it. Nothing here decides anything: a row says what it was told."""
    p = inp.proof
    if p is None:
        return ""
    status = str(p.get("status"))
    checks = p.get("checks") or []
    skipped = sum(1 for c in checks if c.get("status") == "not checked")
    head = _PROOF_HEAD.get(status, _PROOF_HEAD["failed"])
    if skipped and status != "none":
        head += f" {skipped} check(s) were not made: they are marked so, with the reason."
    key = p.get("key")
    key_line = (f'<p id="proof-key">Public key fingerprint (SHA-256 of the Ed25519 key): <code>{esc(key.get("fingerprint"))}'
                f'</code> from <code>{esc(key.get("file"))}</code></p>' if key else
                '<p id="proof-key">No public key given: no signature was checked.</p>')
    rows = []
    for c in checks:
        cls, mark = _PROOF_MARK.get(str(c.get("status")), ("failed", "✘ " + str(c.get("status"))))
        rows.append(f'<tr class="{cls}" data-subject="{esc(c.get("subject"))}" data-check="{esc(c.get("check"))}" '
                    f'data-status="{esc(c.get("status"))}"><td><code>{esc(c.get("subject"))}</code></td>'
                    f'<td>{esc(c.get("check"))}</td><td class="res">{esc(mark)}</td><td>{esc(c.get("detail"))}</td></tr>')
    table = ('<table class="data proof"><thead><tr><th>what</th><th>check</th><th>result</th><th>detail</th></tr>'
             f'</thead><tbody>{"".join(rows)}</tbody></table>')
    cls = "failed" if status == "failed" else ""
    return (f'<section id="proof" class="proof {cls}" data-status="{esc(status)}"><h2>Proof</h2>'
            f'<p class="{"verify bad" if status == "failed" else "sub"}">{esc(head)}</p>{key_line}{table}</section>')


def _proof_alert(inp: ReportInputs) -> str:
    """At the top, so a reader sees it before any figure: a failed proof, in red."""
    p = inp.proof or {}
    if p.get("status") != "failed":
        return ""
    bad = [c for c in p.get("checks") or [] if c.get("status") == "failed"]
    what = "; ".join(f"{c.get('subject')} {c.get('check')}" for c in bad)
    return (f'<p class="verify bad" id="proof-failed">verification failed: {esc(what)} (see Proof below); '
            "the figures below may not be the ones that were signed.</p>")


def _head(css: str) -> str:
    """Every page's head: the policy that forbids scripts and network access, and its one style block."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="data:,">'
            f"<title>recon incident report</title><style>{css}</style></head><body><main>")


def build_refused_html(source_dir: str, reason: str, proof: dict[str, Any] | None, version: str) -> str:
    """The page `recon report` writes when an artefact it would show does not verify (it exits 4):
    the reason and the Proof section in red, and none of the figures, which may have been edited."""
    inp = ReportInputs(source_dir=source_dir, proof=proof, version=version)
    return (
        _head(f"{CSS}{PROOF_CSS}{PRINT_CSS}")
        + "<h1>recon incident report</h1>"
        f'<p class="sub">from <code>{esc(source_dir)}</code></p>'
        f'<p class="verify bad" id="verification" data-status="failed">verification failed: {esc(reason)}. '
        "No figures are shown: they would come from artefacts that did not verify.</p>"
        + _proof(inp)
        + f"<footer>Generated by recon {esc(version)}. Self-contained: no scripts, no network access.</footer>"
          "</main></body></html>\n"
    )


def build_html(inp: ReportInputs) -> str:
    """The whole page as one string: inline CSS and SVG, no script, no external reference."""
    charts = {
        "variance-by-window": chart_variance_by_window(inp),
        "mismatches-by-class": chart_classes(inp),
        "exposure-by-owner": chart_owners(inp),
        "before-after-repair": chart_before_after(inp),
        "cost-break-even": chart_break_even(inp),
    }
    titles = {
        "variance-by-window": "Variance by partition and offset window",
        "mismatches-by-class": "Mismatches by class",
        "exposure-by-owner": "Commission exposure by account owner",
        "before-after-repair": "Before and after repair",
        "cost-break-even": "Cost break-even",
    }
    figs = "".join(
        f'<figure class="chart" id="{esc(k)}" data-chart="{esc(k)}">{_figmark(i, len(charts))}<h2>{esc(titles[k])}</h2>'
        f"<figcaption>{esc(_CAPTIONS[k])}</figcaption>{svg}{table}{_figmark(i, len(charts), end=True)}</figure>"
        for i, (k, (svg, table)) in enumerate(charts.items(), 1))
    sub = ""
    if inp.diff:
        m = inp.diff.get("mapping")
        sub = f"mapping <code>{esc(m)}</code> · " if m else ""
    return (
        _head(f"{CSS}{sections.CSS}{PROOF_CSS}{PRINT_CSS}")
        + "<h1>recon incident report</h1>"
        f'<p class="sub">{sub}from <code>{esc(inp.source_dir)}</code></p>'
        + sections.header(inp) + _verification(inp) + _proof_alert(inp) + _kpis(inp) + _summary(inp)
        + sections.classes_legend(inp) + sections.sec_section(inp) + sections.currency_section(inp) + figs
        + _cost_section(inp) + _proof(inp) + _artefacts(inp)
        + f"<footer>Generated by recon {esc(inp.version)}. Self-contained: no scripts, no network access; "
          "charts are inline SVG.</footer></main></body></html>\n"
    )
