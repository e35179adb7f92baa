"""The report's sections for a finance reader (issue 21): the header a controller signs under, the
finding classes in words, the SEC-critical reconciliation and the per-currency amounts.

Kept apart from :mod:`engine.report.html` (the page and its charts) so that each section is a pure
function of :class:`~engine.report.html.ReportInputs` and can be tested and changed on its own.
Every value from an artefact goes through :func:`esc`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from engine.core import causes, classes, currency
from engine.report.charts import CORRECTED_STATUSES, dec, esc, fmt_int, fmt_money

if TYPE_CHECKING:
    from engine.report.html import ReportInputs


# -- text helpers ------------------------------------------------------------------------------------
def breakable(s: Any) -> str:
    """Escaped text that may wrap only after an underscore (API names such as
    ``Customer_Lifetime_Value__c``), never inside a word: the CSS keeps ``overflow-wrap: normal``."""
    return esc(s).replace("_", "_<wbr>")


def money(inp: ReportInputs, x: Any) -> str:
    """An amount in the report currency, grouped: ``USD 1,234.56`` (plain text: escape it in HTML)."""
    return f"{inp.currency} {fmt_money(x)}"


def owner(inp: ReportInputs, owner_id: Any) -> str:
    """An owner's name from explain.json's ``owners`` (fetched from Salesforce by explain), else the Id."""
    return str(inp.owners.get(str(owner_id)) or owner_id)


def class_label(name: str) -> str:
    """The class's label from the one class list; a name that is no class stays as it is."""
    return classes.label(name) or name


# -- header ----------------------------------------------------------------------------------------
def _run_ids(inp: ReportInputs) -> list[tuple[str, str]]:
    parts = (inp.verification or {}).get("parts") or {}
    return [(k, str(p.get("run_id"))) for k, p in parts.items() if p.get("run_id")]


def when(ts: Any) -> str:
    """An ISO 8601 time as ``2026-09-03 23:17:14 UTC`` (to the second); text that is no time as it is."""
    from datetime import UTC, datetime

    try:
        t = datetime.fromisoformat(str(ts))
    except ValueError:
        return str(ts)
    if t.tzinfo is None:
        return t.strftime("%Y-%m-%d %H:%M:%S")
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def header(inp: ReportInputs) -> str:
    """Mapping, run ids, as-of and each side's extraction time, when the report was made, recon's
    version: what a reader needs to know which reconciliation this page is about."""
    d = inp.diff or {}
    e = inp.explain or {}
    src = ((d.get("source") or {}).get("extract") or {})
    tgt = ((d.get("target") or {}).get("extract") or {})
    as_of = (d.get("request") or {}).get("as_of") or d.get("as_of")
    runs = _run_ids(inp)
    src_at = src.get("extracted_at")
    tgt_at = tgt.get("extracted_at") or tgt.get("server_time")
    rows = [
        ("mapping", breakable(d.get("mapping") or e.get("mapping") or "not recorded")),
        ("run ids", "<br>".join(f"{esc(k)}: <code>{esc(v)}</code>" for k, v in runs) if runs
         else "none verified: no recorded run was checked"),
        ("as of", esc(when(as_of)) if as_of else "not given: each side as read at its extraction time"),
        (f"{src.get('system', 'source')} extracted at", esc(when(src_at)) if src_at else "not recorded"),
        (f"{tgt.get('system', 'target')} extracted at", esc(when(tgt_at)) if tgt_at else "not recorded"),
        ("report made at", esc(when(inp.generated_at)) if inp.generated_at else "not recorded"),
        ("recon version", esc(inp.version or "unknown")),
        ("currency", esc(inp.currency)),
    ]
    body = "".join(f'<tr><th scope="row">{esc(k)}</th><td data-field="{esc(k)}">{v}</td></tr>' for k, v in rows)
    return f'<section id="header"><table class="head">{body}</table></section>'


# -- finding classes ---------------------------------------------------------------------------------
def classes_legend(inp: ReportInputs) -> str:
    """Each class in this report with its label, one-sentence description and count, from
    :data:`engine.core.classes.CLASSES`."""
    counts = (inp.explain or {}).get("classes") or {}
    if not counts:
        return ""
    items = []
    for name in classes.ordered(counts):
        c = classes.get(name)
        desc = c.description if c is not None else "not a class this recon knows"
        items.append(f'<dt data-class="{esc(name)}">{esc(class_label(name))} '
                     f'<span class="sub">({fmt_int(counts[name])} records; <code>{breakable(name)}</code>)</span></dt>'
                     f"<dd>{esc(desc)}</dd>")
    return f'<section id="classes"><h2>What each class means</h2><dl class="classes">{"".join(items)}</dl></section>'


# -- root causes ------------------------------------------------------------------------------------
#: windows named per cause in its paragraph before "and N more"
CAUSE_WINDOWS_SHOWN = 5


def _offsets(a: Any, b: Any) -> str:
    return f"offset {a}" if a == b else f"offsets {a}–{b}"


def _cause_evidence(name: str, items: list[dict[str, Any]]) -> list[str]:
    """Each evidence item of a cause in words (plain text), duplicates dropped."""
    out: list[str] = []
    for e in items:
        p = e.get("partition")
        if name == "offset_rewind":
            t = (f"the group's commit on partition {p} went from offset {e.get('from_offset')} back to "
                 f"{e.get('to_offset')}" + (f" at {when(e['committed_at'])}" if e.get("committed_at") else ""))
        elif name == "redelivery_before_commit":
            t = (f"generation {e.get('generation')}" + (f" at {when(e['time'])}" if e.get("time") else "")
                 + f" left partition {p} {_offsets(e.get('from_offset'), e.get('to_offset'))} uncommitted")
        elif name == "aborted_read_uncommitted":
            t = (f"partition {p} {_offsets(e.get('from_offset'), e.get('to_offset'))} were aborted "
                 f"({e.get('events')} events)")
        elif name == "producer_replay":
            o = e.get("original") or {}
            t = (f"producer id {e.get('producer_id')} wrote partition {p} "
                 f"{_offsets(e.get('from_offset'), e.get('to_offset'))}, copies of partition {o.get('partition')} "
                 f"{_offsets(o.get('from_offset'), o.get('to_offset'))} written by producer id {o.get('producer_id')}"
                 + (" (as far as can be read: a producer id of -1 means idempotence was off)"
                    if e.get("as_far_as_can_be_read") else "")
                 + (" (ids from the events' producer-id headers, not from the record batches)"
                    if e.get("source") == "header" else ""))
        else:
            t = str(e)
        if t not in out:
            out.append(t)
    return out


def _listed(items: list[str]) -> str:
    more = len(items) - CAUSE_WINDOWS_SHOWN
    return "; ".join(items[:CAUSE_WINDOWS_SHOWN]) + (f"; and {more} more" if more > 0 else "")


def cause_paragraphs(inp: ReportInputs) -> list[str]:
    """One paragraph (HTML) per cause present in explain.json's windows: the cause's description
    from :data:`engine.core.causes.CAUSES`, its deliveries, the windows (partition, offsets, times)
    and the evidence Kafka holds for it."""
    k = (inp.explain or {}).get("kafka") or {}
    windows = [*(k.get("windows") or []), *(k.get("redelivery_windows") or [])]
    per: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for w in windows:
        for c in w.get("causes") or []:
            per.setdefault(str(c.get("cause")), []).append((w, c))
    out = []
    for name in [n for n in causes.names() if n in per] + sorted(n for n in per if causes.get(n) is None):
        rows = per[name]
        cause = causes.get(name)
        n = sum(int(dec(c.get("events"))) for _, c in rows)
        places = [f"partition {w.get('partition')} {_offsets(w.get('first_offset'), w.get('last_offset'))} "
                  f"({when(w.get('first_ts'))} to {when(w.get('last_ts'))})" for w, _ in rows]
        evidence = _cause_evidence(name, [e for _, c in rows for e in c.get("evidence") or []])
        reasons = list(dict.fromkeys(str(c["reason"]) for _, c in rows if c.get("reason")))
        parts = [cause.description if cause is not None else "Not a cause this recon knows.",
                 f"{fmt_int(n)} deliver{'y' if n == 1 else 'ies'} in {fmt_int(len(rows))} window(s): {_listed(places)}."]
        if evidence:
            parts.append(f"Evidence: {_listed(evidence)}.")
        if reasons:
            parts.append(f"Why unknown: {'; '.join(reasons)}.")
        text = " ".join(parts)
        out.append(f'<p class="cause" data-cause="{esc(name)}" data-events="{n}"><b>{esc(causes.label(name) or name)}'
                   f"</b> (<code>{breakable(name)}</code>). {esc(text)}</p>")
    return out


# -- SEC-critical reconciliation ---------------------------------------------------------------------
#: the categories, in the equation's order, each with what it means
SEC_PARTS = (
    ("corrected", "corrected", "the warehouse now holds the corrected value (repair applied and verified it)"),
    ("action_list", "on the action list", "the warehouse is right and Salesforce is behind: the owner is asked to "
                                          "correct Salesforce, nothing is changed"),
    ("unexplained", "unexplained", "no rule explains the difference: left for a person to investigate"),
    ("other", "other", "planned for correction but not corrected (the repair's status says why), or no repair ran"),
)


@dataclass(frozen=True)
class SecRecord:
    id: str
    cls: str
    owner_id: str
    part: str
    why: str


@dataclass(frozen=True)
class SecReconciliation:
    affected: int  # explain.json's count of SEC-critical records
    records: list[SecRecord]

    def count(self, part: str) -> int:
        return sum(1 for r in self.records if r.part == part)

    @property
    def adds_up(self) -> bool:
        return self.affected == len(self.records)


def sec_reconciliation(inp: ReportInputs) -> SecReconciliation | None:
    """Every SEC-critical finding in exactly one part: corrected (a repair record with a corrected
    status), on the action list (action_list.json), unexplained (the fallback class), or other
    (with its repair status, or "no repair"). ``affected`` is explain.json's own count, so a finding
    missing from the parts shows as an equation that does not add up."""
    sec = (inp.explain or {}).get("sec_critical")
    if not isinstance(sec, dict):
        return None
    statuses: dict[str, str] = {}
    for key in ("records", "corrections"):
        for r in (inp.repair or {}).get(key) or []:
            if isinstance(r, dict) and r.get("Id") is not None:
                statuses.setdefault(str(r["Id"]), str(r.get("status")))
    on_list = {str(r.get("Id")) for r in inp.action_list if isinstance(r, dict)}
    fallback = classes.fallback().name
    out = []
    for f in inp.findings:
        if not f.get("sec_critical"):
            continue
        rid, cls = str(f.get("Id")), str(f.get("class"))
        status = statuses.get(rid)
        if status in CORRECTED_STATUSES:
            part, why = "corrected", f"repair status {status}"
        elif rid in on_list:
            part, why = "action_list", "in repair/action_list.json"
        elif cls == fallback:
            part, why = "unexplained", "no rule explains it"
        else:
            part, why = "other", f"repair status {status}" if status else "no repair record"
        out.append(SecRecord(rid, cls, str(f.get("owner_id") or ""), part, why))
    return SecReconciliation(int(dec(sec.get("records"))), out)


def sec_section(inp: ReportInputs) -> str:
    rec = sec_reconciliation(inp)
    if rec is None:
        return ""
    terms = " + ".join(f'<span data-part="{p}" data-count="{rec.count(p)}">{fmt_int(rec.count(p))} {esc(lbl)}</span>'
                       for p, lbl, _ in SEC_PARTS)
    ok = rec.adds_up
    eq = (f'<p class="equation {"ok" if ok else "bad"}" id="sec-equation" data-adds-up="{str(ok).lower()}" '
          f'data-affected="{rec.affected}"><span data-part="affected">{fmt_int(rec.affected)} SEC-critical accounts '
          f"affected</span> = {terms}"
          + ("" if ok else f" — does not add up: the findings list {fmt_int(len(rec.records))} SEC-critical records")
          + "</p>")
    meaning = "".join(f"<li><b>{esc(lbl)}</b>: {esc(m)}</li>" for _, lbl, m in SEC_PARTS)
    rows = "".join(f'<tr data-part="{esc(r.part)}"><td><code>{esc(r.id)}</code></td><td>{esc(class_label(r.cls))}</td>'
                   f"<td>{esc(owner(inp, r.owner_id))}</td><td>{esc(dict((p, lbl) for p, lbl, _ in SEC_PARTS)[r.part])}"
                   f"</td><td>{esc(r.why)}</td></tr>" for r in rec.records)
    table = (f'<details><summary>the {fmt_int(len(rec.records))} SEC-critical records</summary><table class="data">'
             "<thead><tr><th>account</th><th>class</th><th>owner</th><th>outcome</th><th>why</th></tr></thead>"
             f"<tbody>{rows}</tbody></table></details>")
    return (f'<section id="sec-critical"><h2>SEC-critical accounts</h2><p class="sub">The top accounts by the '
            f"mapping's rank_by field (the SEC-critical subset), and what became of each.</p>{eq}"
            f'<ul class="sub">{meaning}</ul>{table}</section>')


# -- currencies --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CurrencyRow:
    code: str
    records: int
    overpayment: Decimal  # in ``code``
    rate: Decimal | None  # units of the report currency per unit of ``code``; None: the report currency
    converted: Decimal  # in the report currency


def currency_rows(findings: list[dict[str, Any]], report: str, rates: dict[str, Decimal]) -> list[CurrencyRow]:
    """Overpayment per record currency (findings' ``currency``), converted into ``report``. Every
    currency used must have a rate (:func:`engine.core.currency.missing_rates` first)."""
    n: Counter[str] = Counter()
    over: dict[str, Decimal] = {}
    for f in findings:
        code = str(f.get("currency") or report)
        n[code] += 1
        over[code] = over.get(code, Decimal(0)) + dec(f.get("overpayment"))
    return [CurrencyRow(c, n[c], over[c], None if c == report else rates[c],
                        currency.convert(over[c], c, report, rates)) for c in sorted(n)]


def currency_section(inp: ReportInputs) -> str:
    """Per-currency amounts when the org records a currency per record (explain found
    ``CurrencyIsoCode``); nothing otherwise (every amount is in the report currency)."""
    if inp.currencies is None:
        return ""
    rows = "".join(
        f'<tr data-currency="{esc(r.code)}"><td>{esc(r.code)}</td><td>{fmt_int(r.records)}</td>'
        f"<td>{esc(r.code)} {fmt_money(r.overpayment)}</td><td>{'—' if r.rate is None else esc(r.rate)}</td>"
        f"<td>{esc(money(inp, r.converted))}</td></tr>" for r in inp.currencies)
    total = sum((r.converted for r in inp.currencies), Decimal(0))
    return (f'<section id="currencies"><h2>Amounts by currency</h2><p class="sub">The org records each account in '
            f"its own currency; amounts are converted into {esc(inp.currency)} with the rates of "
            f"<code>[report] rates</code>.</p><table class=\"data\"><thead><tr><th>currency</th><th>records</th>"
            f"<th>commission overpayment</th><th>rate</th><th>in {esc(inp.currency)}</th></tr></thead>"
            f"<tbody>{rows}</tbody><tfoot><tr><th>total</th><td></td><td></td><td></td>"
            f'<td id="currency-total">{esc(money(inp, total))}</td></tr></tfoot></table></section>')


CSS = """
table.head{border-collapse:collapse;font-size:.9rem}
table.head th{text-align:left;color:var(--mut);font-weight:500;padding:2px 14px 2px 0;vertical-align:top;white-space:nowrap}
table.head td{padding:2px 0}
dl.classes dt{font-weight:600;margin-top:6px} dl.classes dd{margin:0 0 4px 0}
.equation{font-weight:600;border-radius:6px;padding:8px 10px}
.equation.ok{background:#f0fdf4;border:1px solid #16a34a} .equation.bad{background:#fef2f2;border:2px solid #dc2626;color:#b91c1c}
"""
