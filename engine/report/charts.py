"""The report's charts: the pure data shaping behind each one, the five charts drawn as SVG by hand
(primitives, horizontal bars, the break-even lines) with the data table under each, and the
number formatting and escaping that the page shares.

Apart from :mod:`engine.report.html`, which assembles the page around them (its inputs, text
sections, CSS and Content-Security-Policy): a chart only reads a :class:`ReportInputs` and returns
its SVG and table, so drawing can change without touching the page and the reverse.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from engine.core import classes
from engine.core.errors import UsageError

if TYPE_CHECKING:
    from engine.report.html import ReportInputs

# derived from engine.core.classes, for callers (the charts read that list when they draw)
CLASS_ORDER = classes.names()
CLASS_MEANING = {c.name: c.label for c in classes.CLASSES}

W = 760  # SVG viewBox width; the SVG scales to the page width
ROW = 24

C_BAR = "#2563eb"
C_WINDOW = "#dc2626"
C_TRACK = "#e5e7eb"
C_EXPOSURE = "#b45309"
C_BEFORE = "#94a3b8"
C_AFTER = "#0f766e"
C_LOSS = "#dc2626"
C_PREVENT = "#2563eb"
C_AXIS = "#6b7280"


def esc(x: Any) -> str:
    """Escape for HTML text and attribute values (quotes too)."""
    return html.escape(str(x), quote=True)


# -- numbers -------------------------------------------------------------------------------------
def dec(x: Any) -> Decimal:
    """A number from JSON/Parquet text; junk and nulls count as zero (a chart must not crash on them)."""
    if x is None or isinstance(x, bool):
        return Decimal(0)
    try:
        d = Decimal(str(x))
    except InvalidOperation:
        return Decimal(0)
    return d if d.is_finite() else Decimal(0)


def fmt_money(x: Any) -> str:
    return f"{dec(x).quantize(Decimal('0.01')):,}"


def fmt_int(x: Any) -> str:
    """Digits and commas only, so the result is safe in HTML even when the input was junk."""
    return f"{int(dec(x)):,}"


def compact(v: float) -> str:
    """Axis labels: 1.2M, 15k, 300."""
    a = abs(v)
    for div, suf in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            s = f"{v / div:.1f}".rstrip("0").rstrip(".")
            return f"{s}{suf}"
    return f"{v:.0f}" if a >= 10 or v == int(v) else f"{v:.1f}"


def nice_ticks(top: float, n: int = 5) -> list[float]:
    """0 … ≥top in round steps (1, 2, 2.5, 5 × 10^k)."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    k = math.ceil(top / step - 1e-9)
    return [i * step for i in range(k + 1)]


# -- SVG primitives ------------------------------------------------------------------------------
def _svg(chart: str, title: str, height: int, body: str) -> str:
    return (f'<svg class="chart-svg" data-chart-svg="{esc(chart)}" viewBox="0 0 {W} {height}" '
            f'width="100%" role="img" aria-label="{esc(title)}">'
            f"<title>{esc(title)}</title>{body}</svg>")


def _text(x: float, y: float, s: str, *, anchor: str = "start", cls: str = "lbl", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" class="{cls}"{extra}>{esc(s)}</text>'


def _rect(x: float, y: float, w: float, h: float, fill: str, tip: str, cls: str = "mark bar") -> str:
    return (f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{h:.1f}" '
            f'fill="{fill}"><title>{esc(tip)}</title></rect>')


def _bar_width(v: float, vmax: float, span: float) -> float:
    if vmax <= 0 or v <= 0:
        return 0.0
    return max(1.5, span * v / vmax)  # a non-zero value stays visible


@dataclass(frozen=True)
class Bar:
    label: str
    value: Decimal
    text: str
    tip: str = ""


def hbar_chart(chart: str, title: str, bars: Sequence[Bar], color: str, *, label_w: int = 250) -> str:
    """Horizontal bars with labels on the left and values at the bar ends."""
    x0, span = label_w + 10, W - label_w - 10 - 110
    vmax = float(max((b.value for b in bars), default=Decimal(0)))
    h = 12 + ROW * len(bars)
    parts = []
    for i, b in enumerate(bars):
        y = 8 + i * ROW
        w = _bar_width(float(b.value), vmax, span)
        parts.append(_text(label_w, y + 14, _clip(b.label, max(40, int(label_w / 6.4))), anchor="end"))
        parts.append(_rect(x0, y + 3, w, ROW - 8, color, b.tip or f"{b.label}: {b.text}"))
        parts.append(_text(x0 + w + 6, y + 14, b.text, cls="val"))
    return _svg(chart, title, h, "".join(parts))


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _placeholder(chart: str, title: str, why: str) -> str:
    return _svg(chart, title, 60, _text(W / 2, 34, why, anchor="middle", cls="empty"))


# -- data shaping (pure) -------------------------------------------------------------------------
def _offsets(v: Any) -> list[tuple[int, int]]:
    """copy_offsets as stored (JSON text of "partition:offset", or a list) → (partition, offset)."""
    if v is None:
        return []
    items = v
    if isinstance(v, str):
        try:
            items = json.loads(v)
        except json.JSONDecodeError:
            return []
    out = []
    for it in items if isinstance(items, list) else []:
        p, sep, o = str(it).partition(":")
        if sep:
            try:
                out.append((int(p), int(o)))
            except ValueError:
                continue
    return out


def variance_by_window(findings: Iterable[dict[str, Any]], windows: Sequence[dict[str, Any]]
                       ) -> tuple[list[Decimal], Decimal, Decimal]:
    """Attribute each finding's |warehouse − Salesforce| to the re-delivery windows holding its copies.

    A record's variance is shared between its duplicate copies equally (the findings don't carry
    per-copy amounts); copies outside every window, and records with no copy at all, are returned
    separately so the chart never hides variance the stream does not explain.
    Returns (per window, in copies outside any window, in records without a re-delivered copy).
    """
    per = [Decimal(0)] * len(windows)
    outside = no_copy = Decimal(0)
    for f in findings:
        if f.get("warehouse_value") is None or f.get("salesforce_value") is None:
            continue
        v = abs(dec(f.get("warehouse_value")) - dec(f.get("salesforce_value")))
        if not v:
            continue
        offs = _offsets(f.get("copy_offsets"))
        if not offs:
            no_copy += v
            continue
        share = v / len(offs)
        for p, o in offs:
            for i, w in enumerate(windows):
                if int(w.get("partition", -1)) == p and int(w.get("first_offset", 0)) <= o <= int(w.get("last_offset", -1)):
                    per[i] += share
                    break
            else:
                outside += share
    return per, outside, no_copy


def class_counts(doc: Any, _depth: int = 0, _path: str = "") -> list[tuple[str, dict[str, int]]]:
    """Every dict in `doc` (depth ≤ 4) that maps known finding classes to counts, with its JSON path.

    The repair summary's file and key names are not fixed; any dict whose keys are classes and whose
    values are counts (or objects with a records/count/corrected number) is recognised.
    """
    found: list[tuple[str, dict[str, int]]] = []
    if _depth > 4 or not isinstance(doc, dict):
        return found
    names = classes.names()
    known = {k: v for k, v in doc.items() if k in names}
    if known:
        counts: dict[str, int] = {}
        for k, v in known.items():
            if isinstance(v, dict):
                v = next((v[n] for n in ("corrected", "applied", "records", "count", "planned") if n in v), None)
            if isinstance(v, int) and not isinstance(v, bool):
                counts[k] = v
            elif isinstance(v, list):
                counts[k] = len(v)
        if counts:
            found.append((_path or "(top level)", counts))
    for k, v in doc.items():
        if isinstance(v, dict):
            found.extend(class_counts(v, _depth + 1, f"{_path}.{k}" if _path else str(k)))
    return found


#: Record statuses of `recon repair` that mean "the warehouse now holds the corrected value".
CORRECTED_STATUSES = ("applied", "already_applied", "in_sync")


def repair_counts(doc: dict[str, Any] | None) -> tuple[str, dict[str, int]] | None:
    """Corrections per class from a repair summary.

    `recon repair --apply` writes repair.json with `records[]` (class, status): count the records
    whose status says the warehouse now holds the corrected value. Failing that, any per-class
    count dict, preferring a path that says corrected/applied.
    """
    if not doc:
        return None
    for key in ("records", "corrections"):
        recs = doc.get(key)
        if isinstance(recs, list) and recs and all(isinstance(r, dict) and "class" in r for r in recs):
            counts: dict[str, int] = {}
            for r in recs:
                if r.get("status") in CORRECTED_STATUSES:
                    counts[str(r["class"])] = counts.get(str(r["class"]), 0) + 1
            if counts:
                return f"{key}[] with status {'/'.join(CORRECTED_STATUSES)}", counts
    cands = class_counts(doc)
    if not cands:
        return None
    for words in (("correct", "applied"), ("repair", "plan", "class")):
        for path, c in cands:
            if any(w in path.lower() for w in words):
                return path, c
    return cands[0]


def repair_phases(doc: dict[str, Any] | None) -> str | None:
    """The "SEC subset first" line, when the repair summary reports its two phases."""
    sec, rest = (doc or {}).get("sec_critical"), (doc or {}).get("rest")
    if not isinstance(sec, dict) or not isinstance(rest, dict) or "applied" not in sec:
        return None

    def done(p: dict[str, Any]) -> int:
        return sum(int(p.get(k) or 0) for k in CORRECTED_STATUSES)

    return (f"SEC-critical subset first: {done(sec):,} corrected ({int(sec.get('verified') or 0):,} verified), "
            f"then {done(rest):,} other records ({int(rest.get('verified') or 0):,} verified).")


# -- charts --------------------------------------------------------------------------------------
def chart_variance_by_window(inp: ReportInputs) -> tuple[str, str]:
    title = "CLV variance by Kafka partition and re-delivery window"
    chart = "variance-by-window"
    kafka = (inp.explain or {}).get("kafka") or {}
    windows = list(kafka.get("windows") or [])
    if not windows and not inp.findings:
        return _placeholder(chart, title, "no Kafka windows or findings in this directory"), ""
    per, outside, no_copy = variance_by_window(inp.findings, windows)
    have_variance = bool(inp.findings) and (any(per) or outside or no_copy)
    parts_info = kafka.get("partitions") or {}

    def extent(p: int) -> tuple[int, int]:
        e = parts_info.get(str(p)) or parts_info.get(p) or {}
        ws = [w for w in windows if int(w.get("partition", -1)) == p]
        lo = int(e.get("first_offset", min((int(w["first_offset"]) for w in ws), default=0)))
        hi = int(e.get("end_offset", e.get("last_offset", max((int(w["last_offset"]) for w in ws), default=1))))
        return lo, max(hi, lo + 1)

    label_w, sx0, sw = 215, 225, 120
    bx0 = sx0 + sw + 16
    span = W - bx0 - 110
    rows: list[tuple[str, dict[str, Any] | None, Decimal, str]] = []
    for w, v in zip(windows, per, strict=True):
        lbl = (f"p{fmt_int(w.get('partition'))} · {fmt_int(w.get('first_offset'))}–{fmt_int(w.get('last_offset'))}"
               f" · {fmt_int(w.get('events'))} copies")
        rows.append((lbl, w, v if have_variance else dec(w.get("events")),
                     f"{fmt_money(v)}" if have_variance else f"{fmt_int(w.get('events'))} copies"))
    if have_variance and outside:
        rows.append(("copies outside these windows", None, outside, fmt_money(outside)))
    if have_variance and no_copy:
        rows.append(("records with no re-delivered copy", None, no_copy, fmt_money(no_copy)))
    vmax = float(max((r[2] for r in rows), default=Decimal(0)))
    head = 34
    parts = [_text(sx0 + sw / 2, 13, "position in partition", anchor="middle", cls="colhead"),
             _text(sx0, 28, "first offset", cls="axis"), _text(sx0 + sw, 28, "end", anchor="end", cls="axis"),
             _text(bx0, 14, f"abs CLV variance ({inp.currency})" if have_variance else "re-delivered copies",
                   cls="colhead")]
    for i, (lbl, w, v, txt) in enumerate(rows):
        y = head + i * ROW
        parts.append(_text(label_w, y + 14, lbl, anchor="end"))
        if w is not None:
            lo, hi = extent(int(w.get("partition", 0)))
            parts.append(f'<rect class="track" x="{sx0}" y="{y + 6}" width="{sw}" height="10" fill="{C_TRACK}" '
                         f'stroke="{C_AXIS}" stroke-width="0.5"/>')
            a = sx0 + sw * (int(w.get("first_offset", lo)) - lo) / (hi - lo)
            b = sx0 + sw * (int(w.get("last_offset", lo)) + 1 - lo) / (hi - lo)
            a = min(a, sx0 + sw - 4.0)  # a window at the very end stays inside the track, and visible
            parts.append(_rect(a, y + 3, max(b - a, 4.0), 16, C_WINDOW,
                               f"partition {w.get('partition')}: offsets {w.get('first_offset')}–{w.get('last_offset')} "
                               f"of {lo}–{hi}, {w.get('events')} copies, {w.get('first_ts')} … {w.get('last_ts')}",
                               cls="mark window"))
        bw = _bar_width(float(v), vmax, span)
        parts.append(_rect(bx0, y + 3, bw, ROW - 8, C_BAR if w is not None else C_BEFORE, f"{lbl}: {txt}"))
        parts.append(_text(bx0 + bw + 6, y + 14, txt, cls="val"))
    svg = _svg(chart, title, head + ROW * len(rows) + 6, "".join(parts))
    table = _table(("window", "first ts", "last ts", "copies", f"abs CLV variance ({inp.currency})"),
                   [(f"partition {w.get('partition')}, offsets {w.get('first_offset')}–{w.get('last_offset')}",
                     w.get("first_ts") or "", w.get("last_ts") or "", fmt_int(w.get("events")),
                     fmt_money(v) if have_variance else "") for w, v in zip(windows, per, strict=True)]
                   + ([("copies outside these windows", "", "", "", fmt_money(outside))] if have_variance and outside else [])
                   + ([("records with no re-delivered copy", "", "", "", fmt_money(no_copy))] if have_variance and no_copy else []),
                   "variance by window")
    return svg, table


def chart_classes(inp: ReportInputs) -> tuple[str, str]:
    title = "Mismatched records by explanation class"
    counts = (inp.explain or {}).get("classes") or {}
    if not counts or not any(int(v or 0) for v in counts.values()):
        return _placeholder("mismatches-by-class", title, "no explained differences in this directory"), ""
    order = classes.ordered(counts)
    bars = [Bar(classes.label(c) or c, dec(counts[c]), fmt_int(counts[c]), f"{classes.label(c) or c}: {counts[c]} records")
            for c in order]
    svg = hbar_chart("mismatches-by-class", title, bars, C_BAR, label_w=300)
    table = _table(("class", "records", "what happened", "name in the outputs"),
                   [(classes.label(c) or c, fmt_int(counts[c]), _description(c), c) for c in order], "records by class")
    return svg, table


def _description(name: str) -> str:
    c = classes.get(name)
    return c.description if c is not None else ""


def chart_owners(inp: ReportInputs) -> tuple[str, str]:
    title = f"Commission overpayment by account owner (top {inp.top_owners})"
    by_owner = ((inp.explain or {}).get("exposure") or {}).get("by_owner") or {}
    ranked = sorted(((str(k), dec(v)) for k, v in by_owner.items()), key=lambda kv: (-kv[1], kv[0]))
    ranked = [kv for kv in ranked if kv[1] > 0]
    if not ranked:
        return _placeholder("exposure-by-owner", title, "no commission overpayment in this directory"), ""
    top = ranked[: inp.top_owners]
    def name(k: str) -> str:  # explain fetched the owners' names; an owner without one stays an Id
        return str(inp.owners.get(k) or k)

    bars = [Bar(name(k), v, fmt_money(v), f"{name(k)} ({k}): overpaid {inp.currency} {fmt_money(v)}") for k, v in top]
    rest = ranked[inp.top_owners:]
    total = sum((v for _, v in ranked), Decimal(0))
    svg = hbar_chart("exposure-by-owner", title, bars, C_EXPOSURE, label_w=200)
    shown = sum((v for _, v in top), Decimal(0))
    svg += (f'<p class="sub">{len(top):,} of {len(ranked):,} overpaid owners shown, {fmt_money(shown)} of '
            f"{fmt_money(total)} {esc(inp.currency)}" + (f"; the other {len(rest):,} owners account for {fmt_money(total - shown)}." if rest else ".")
            + "</p>")
    table = _table(("owner", "owner id", f"overpayment ({inp.currency})"),
                   [(name(k), k, fmt_money(v)) for k, v in ranked[:200]], "overpayment by owner")
    return svg, table


_BEFORE_AFTER = (("mismatched", "mismatched"), ("missing_in_target", "missing in target"),
                 ("missing_in_source", "missing in source"))


def chart_before_after(inp: ReportInputs) -> tuple[str, str]:
    title = "Differences before and after repair"
    chart = "before-after-repair"
    before, after = inp.diff, inp.diff_after
    if before is None:
        return _placeholder(chart, title, "no diff/summary.json in this directory"), ""
    metrics = [(k, lbl) for k, lbl in _BEFORE_AFTER if k in before or (after and k in after)]
    vals = [(lbl, int(before.get(k) or 0), None if after is None else int(after.get(k) or 0)) for k, lbl in metrics]
    vmax = max([v for _, b, a in vals for v in (b, a or 0)] or [0])
    label_w, x0 = 200, 210
    span = W - x0 - 110
    legend = (f'<rect x="{x0}" y="4" width="12" height="10" fill="{C_BEFORE}"/>' + _text(x0 + 16, 13, "before repair", cls="axis")
              + (f'<rect x="{x0 + 120}" y="4" width="12" height="10" fill="{C_AFTER}"/>'
                 + _text(x0 + 136, 13, "after repair", cls="axis") if after is not None else
                 _text(x0 + 120, 13, "(no diff after repair yet)", cls="axis")))
    parts = [legend]
    y = 24
    for lbl, b, a in vals:
        parts.append(_text(label_w, y + 17, lbl, anchor="end"))
        wb = _bar_width(b, vmax, span)
        parts.append(_rect(x0, y + 2, wb, 13, C_BEFORE, f"{lbl} before repair: {b:,}"))
        parts.append(_text(x0 + wb + 6, y + 13, f"{b:,}", cls="val"))
        if a is not None:
            wa = _bar_width(a, vmax, span)
            parts.append(_rect(x0, y + 17, wa, 13, C_AFTER, f"{lbl} after repair: {a:,}"))
            parts.append(_text(x0 + wa + 6, y + 28, f"{a:,}", cls="val"))
        y += 38
    svg = _svg(chart, title, y + 4, "".join(parts))
    rows = [(lbl, f"{b:,}", "" if a is None else f"{a:,}") for lbl, b, a in vals]
    col = _gated_column(before)
    if col:
        ab = ((before.get("columns") or {}).get(col) or {}).get("abs_variance")
        aa = ((after or {}).get("columns") or {}).get(col, {}).get("abs_variance") if after else None
        rows.append((f"abs variance of {col}", fmt_money(ab), "" if after is None else fmt_money(aa)))
    table = _table(("", "before repair", "after repair"), rows, "before and after")
    rc = repair_counts(inp.repair)
    if rc:
        _, counts = rc
        order = classes.ordered(counts)
        bars = [Bar(classes.label(c) or c, Decimal(counts[c]), fmt_int(counts[c])) for c in order]
        if any(counts.values()):
            svg += ('<p class="sub">Corrections by class (records the repair corrected):</p>'
                    + hbar_chart("repair-corrections", "Corrections by class", bars, C_AFTER, label_w=300))
        table += _table(("class", "corrections"), [(classes.label(c) or c, fmt_int(counts[c])) for c in order],
                        "corrections by class")
    phases = repair_phases(inp.repair)
    if phases:
        svg += f'<p class="sub">{esc(phases)}</p>'

    return svg, table


def _gated_column(s: dict[str, Any] | None) -> str | None:
    cols = list(((s or {}).get("columns") or {}).keys())
    return cols[0] if len(cols) == 1 else None


def chart_break_even(inp: ReportInputs) -> tuple[str, str]:
    from engine.core import cost as cost_mod

    title = "Prevention cost vs expected loss avoided (cumulative)"
    chart = "cost-break-even"
    if not inp.cost:
        return _placeholder(chart, title, inp.cost_note or "no cost model: run `recon cost --json > cost.json`"), ""
    try:
        ci = cost_mod.inputs_from_json(inp.cost)
    except UsageError as exc:
        return _placeholder(chart, title, f"cost.json unusable: {exc}"), ""
    r = cost_mod.model(ci)
    eml, otp, infra = float(r.expected_monthly_loss), float(r.one_time_prevention), float(ci.infra_cost_per_month)
    be = None if r.break_even_days is None else float(r.break_even_days)
    horizon = 365.0
    if be is not None and be > 0.8 * horizon:
        horizon = float(min(math.ceil(be * 1.25 / 30) * 30, 1825))

    def loss(d: float) -> float:
        return eml * d / 30

    def prevent(d: float) -> float:
        return otp + infra * d / 30

    top = max(loss(horizon), prevent(horizon), 1.0)
    ticks = nice_ticks(top)
    ymax = ticks[-1]
    L, R, T, B = 70, W - 20, 30, 250
    def X(d: float) -> float:
        return L + (R - L) * d / horizon

    def Y(v: float) -> float:
        return B - (B - T) * v / ymax

    parts = []
    for t in ticks:
        parts.append(f'<line x1="{L}" x2="{R}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" class="grid"/>')
        parts.append(_text(L - 6, Y(t) + 4, compact(t), anchor="end", cls="axis"))
    step = 30 if horizon <= 400 else 90 if horizon <= 1000 else 180
    d = 0
    while d <= horizon + 1e-9:
        parts.append(_text(X(d), B + 16, f"{d}", anchor="middle", cls="axis"))
        d += step
    parts.append(_text((L + R) / 2, B + 32, "days after the prevention goes live", anchor="middle", cls="axis"))
    parts.append(f'<line x1="{L}" x2="{L}" y1="{T}" y2="{B}" class="axisline"/>'
                 f'<line x1="{L}" x2="{R}" y1="{B}" y2="{B}" class="axisline"/>')
    for name, fn, color in (("expected loss avoided", loss, C_LOSS), ("prevention cost (one-time + running)", prevent, C_PREVENT)):
        pts = " ".join(f"{X(x):.1f},{Y(fn(x)):.1f}" for x in (0.0, horizon / 2, horizon))
        parts.append(f'<polyline class="mark line" points="{pts}" fill="none" stroke="{color}" stroke-width="2.5">'
                     f"<title>{esc(name)}: {esc(compact(fn(horizon)))} after {horizon:.0f} days</title></polyline>")
    parts.append(f'<rect x="{L + 8}" y="{T - 22}" width="12" height="4" fill="{C_LOSS}"/>'
                 + _text(L + 24, T - 16, "expected loss avoided", cls="axis")
                 + f'<rect x="{L + 190}" y="{T - 22}" width="12" height="4" fill="{C_PREVENT}"/>'
                 + _text(L + 206, T - 16, "prevention cost (one-time + running)", cls="axis"))
    if be is not None and be <= horizon:
        bx, by = X(be), Y(loss(be))
        parts.append(f'<line x1="{bx:.1f}" x2="{bx:.1f}" y1="{T}" y2="{B}" class="be"/>')
        parts.append(f'<circle class="mark point" cx="{bx:.1f}" cy="{by:.1f}" r="5" fill="#111827">'
                     f"<title>break-even after {esc(cost_mod.days_text(r.break_even_days))} days</title></circle>")
        parts.append(_text(bx + 8, T + 12, f"break-even: day {cost_mod.days_text(r.break_even_days)}", cls="val"))
    else:
        parts.append(_text((L + R) / 2, T + 12, "never breaks even: the running cost is at least the expected loss it "
                                                 "removes", anchor="middle", cls="val"))
    svg = _svg(chart, title, B + 40, "".join(parts))
    res = inp.cost.get("results") or {}
    rows = [(k, str(v)) for k, v in res.items()]
    table = _table(("result", "value"), rows, "the results")
    return svg, table


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], what: str = "the data") -> str:
    """The chart's data under a toggle named for what it holds (two toggles of one chart must not
    read the same)."""
    h = "".join(f"<th>{esc(x)}</th>" for x in head)
    b = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return (f'<details><summary>{esc(what)}, as a table</summary><table class="data"><thead><tr>{h}</tr></thead>'
            f"<tbody>{b}</tbody></table></details>")
