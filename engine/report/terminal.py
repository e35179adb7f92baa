"""Terminal rendering (rich). Reads the same summary dict the JSON output prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def render_diff(console: Console, s: dict[str, Any], out_dir: Path | None) -> None:
    t = Table(title="recon diff", show_header=True, header_style="bold")
    t.add_column("")
    t.add_column("count", justify="right")
    t.add_row("source rows", f"{s['source']['rows']:,}")
    t.add_row("target rows", f"{s['target']['rows']:,}")
    t.add_row("missing in target", f"{s['missing_in_target']:,}")
    t.add_row("missing in source", f"{s['missing_in_source']:,}")
    t.add_row("mismatched", f"{s['mismatched']:,}")
    t.add_row("unchanged", f"{s['unchanged']:,}")
    if s.get("in_flight"):
        t.add_row("in flight (changed after --as-of)", f"{s['in_flight']:,}")
    t.add_row("duplicate keys (source / target)", f"{s['duplicate_keys']['source']:,} / {s['duplicate_keys']['target']:,}")
    t.add_row("variance ratio", f"{s['variance_ratio']:.4%}")
    console.print(t)
    if s["columns"]:
        c = Table(show_header=True, header_style="bold")
        for h in ("column", "mismatched", "abs variance", "net variance", "amount variance"):
            c.add_column(h, justify="right" if h != "column" else "left")
        for name, v in s["columns"].items():
            ratio = s["amount_variance_ratio"].get(name)
            c.add_row(name, f"{v['mismatched']:,}", v["abs_variance"] or "", v["net_variance"] or "",
                      "" if ratio is None else f"{ratio:.4%}")
        console.print(c)
    m = s["merkle"]
    console.print(f"Merkle: {m['divergent_segments']:,} of {m['segments']:,} segments diverge "
                  f"(encoding v{m['encoding_version']}, source root {m['source_root'][:16]}…, "
                  f"target root {m['target_root'][:16]}…) in {s['elapsed_s']:.2f}s")
    inc = s.get("incremental")
    if inc:
        if inc.get("mode") == "incremental":
            rr = inc.get("sides", {})
            console.print(f"incremental: {inc['touched_segments']:,} of {inc['segments']:,} segments touched; rows "
                          f"re-read: source {rr.get('source', {}).get('rows_reread', 0):,}, target "
                          f"{rr.get('target', {}).get('rows_reread', 0):,}")
        else:
            console.print(f"full run ({inc.get('reason')}); the state is rebuilt")
        check = inc.get("full_check")
        if check:
            console.print(f"full check ({check['why']}): " + ("the state's roots hold" if check["equal"] else
                          "[bold red]state drift[/]: the state's roots were wrong; rebuilt from the full read"))
    if out_dir:
        console.print(f"written: {out_dir / 'summary.json'}, {out_dir / 'differences.parquet'}")


def render_audit(console: Console, s: dict[str, Any]) -> None:
    t = Table(title=f"kafka-audit {s['topic']}", header_style="bold")
    t.add_column("")
    t.add_column("count", justify="right")
    for k in ("events", "duplicates", "duplicate_records", "conflicts", "unparsable", "tombstones", "foreign_org", "invalid"):
        t.add_row(k.replace("_", " "), f"{s[k]:,}")
    console.print(t)
    if s["windows"]:
        w = Table(title="re-delivery windows", header_style="bold")
        for h in ("partition", "first offset", "last offset", "first ts", "last ts", "copies"):
            w.add_column(h, justify="right")
        for r in s["windows"][:50]:
            w.add_row(str(r["partition"]), f"{r['first_offset']:,}", f"{r['last_offset']:,}", r["first_ts"] or "",
                      r["last_ts"] or "", f"{r['events']:,}")
        console.print(w)
    seq = s["sequence"]
    if seq["regressions"] or seq["gaps"]:
        console.print(f"producer sequences: {seq['regressions']:,} regression(s), {seq['gaps']:,} gap(s)")
    if "aborted" in s:  # --isolation-check
        for r in s["aborted"][:50]:
            console.print(f"aborted: partition {r['partition']} offsets {r['from_offset']:,}-{r['to_offset']:,} "
                          f"({r['events']:,} records)")
        for r in s["open_transaction"]:
            console.print(f"open transaction: partition {r['partition']} from offset {r['last_stable_offset']:,} "
                          f"({r['undecided']:,} records undecided)")
        console.print(f"producer runs: {len(s['producers']):,} (--json lists them)")


def render_group_audit(console: Console, g: dict[str, Any]) -> None:
    """The --group part of kafka-audit: one line per rewind and per rebalance, then the coverage."""
    r = g["offsets_records"]
    console.print(f"group {g['group']}: {r['read']:,} __consumer_offsets records read, {r['unparsable']:,} unparsable, "
                  f"{r['skipped_types']:,} of newer types skipped")
    for w in g["rewinds"]:
        console.print(f"rewind: partition {w['partition']} {w['from_offset']:,} -> {w['to_offset']:,} at "
                      f"{w['committed_at']} ({w['events_redelivered']:,} events delivered again)")
    for b in g["rebalances"]:
        spans = ", ".join(f"p{u['partition']} {u['from_offset'] if u['from_offset'] is not None else 'reset'}"
                          f"-{u['to_offset']}" for u in b["uncommitted"]) or "no re-read range"
        console.print(f"rebalance: generation {b['previous_generation']} -> {b['generation']} at {b['time']}: {spans}")
    for p, c in g["history_coverage"].items():
        console.print(f"history: partition {p} commits {c['first_commit']} .. {c['last_commit']} ({c['commits']:,})")


def render_explain(console: Console, s: dict[str, Any], out_dir: Path | None) -> None:
    t = Table(title="recon explain", header_style="bold")
    t.add_column("class")
    t.add_column("records", justify="right")
    for k, v in s["classes"].items():
        t.add_row(k, f"{v:,}")
    console.print(t)
    e = s["exposure"]
    console.print(f"commission overpayment exposure: {e['total']} (underpayments {e['underpayment_total']}); "
                  f"SEC-critical records: {s['sec_critical']['records']:,} ({s['sec_critical']['overpayment']})")
    top = list(e["by_owner"].items())[:10]
    if top:
        o = Table(title="top owners by overpayment", header_style="bold")
        o.add_column("owner")
        o.add_column("overpayment", justify="right")
        names = s.get("owners") or {}
        for k, v in top:
            o.add_row(f"{names[k]} ({k})" if names.get(k) else k, v)
        console.print(o)
    for kind, key in (("re-delivered", "windows"), ("re-read by the warehouse", "redelivery_windows")):
        for w in (s["kafka"].get(key) or [])[:10]:
            why = ", ".join(f"{c['cause']} {c['events']:,}" for c in w.get("causes") or [])
            console.print(f"{kind}: partition {w['partition']} offsets {w['first_offset']:,}–{w['last_offset']:,} "
                          f"({w['events']:,} copies, {w['first_ts']} … {w['last_ts']})" + (f"; causes: {why}" if why else ""),
                          markup=False, highlight=False)
    if out_dir:
        console.print(f"written: {out_dir / 'explain.json'}, {out_dir / 'findings.parquet'}")


def render_headline(console: Console, rows: list[tuple[str, str]], title: str = "the report's headline") -> None:
    """The report's headline numbers (:func:`engine.report.html.headline`) as a table. Never wrapped
    or cut: where the output is no terminal (a pipe, a log file) the table is printed at its natural
    width, whatever width rich assumes for such a file."""
    from rich.measure import Measurement

    t = Table(title=title, header_style="bold")
    t.add_column("", no_wrap=True)
    t.add_column("value", justify="right", no_wrap=True)
    for value, label in rows:
        t.add_row(label, value)
    if not console.is_terminal:  # rich never prints wider than its console: one as wide as the table
        width = Measurement.get(console, console.options.update(width=10_000), t).maximum
        console = Console(file=console.file, width=max(console.width, width), highlight=False,
                          no_color=console.no_color, force_terminal=False)
    console.print(t, crop=False)
