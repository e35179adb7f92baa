"""Open a generated report in headless Chromium (Debian's `chromium`) over the DevTools protocol and
check what a reader gets: every chart element present and non-empty as laid out by the browser, no
network request, no console error. A second test proves the harness would catch both.

Skips, saying why, where Chromium or websocket-client is missing (`scripts/ensure_chromium`
installs Chromium; websocket-client is a dev extra).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import websocket  # websocket-client, a dev dependency: its absence is a broken install, not a skip

from engine.report.html import CHARTS
from tests import prereqs
from tests.unit.test_report_html import write_fixture_dir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(autouse=True)
def _chromium_here() -> None:
    """A skip on a developer's machine without Chromium, a failure under CI=true (tests/prereqs.py)."""
    if CHROMIUM is None:
        prereqs.missing("chromium not installed: run scripts/ensure_chromium (Debian package 'chromium') "
                        "to run the report browser test")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--remote-debugging-port=0",
         "--remote-allow-origins=*"]
DEADLINE_S = 90.0  # a deadline, not a speed check: a loaded 2-core machine took over 30 s to start chromium


class Page:
    """A minimal CDP session on one page target: send commands, collect events."""

    def __init__(self, ws_url: str) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=DEADLINE_S, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        my = self.next_id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        end = time.monotonic() + DEADLINE_S
        while time.monotonic() < end:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my:
                if "error" in msg:
                    raise AssertionError(f"CDP {method} failed: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)
        raise TimeoutError(f"no answer to CDP {method}")

    def wait_event(self, method: str) -> dict[str, Any]:
        end = time.monotonic() + DEADLINE_S
        for e in self.events:
            if e["method"] == method:
                return e
        while time.monotonic() < end:
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return msg
        raise TimeoutError(f"no {method} event")

    def drain(self, seconds: float) -> None:
        """Collect late events (a lazy request or error after load) for a short while."""
        self.ws.settimeout(0.1)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                msg = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                continue
            if "method" in msg:
                self.events.append(msg)
        self.ws.settimeout(DEADLINE_S)

    def close(self) -> None:
        self.ws.close()


@contextmanager
def chromium(tmp: Path) -> Iterator[Page]:
    profile = tmp / "profile"
    profile.mkdir()
    proc = subprocess.Popen([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    page: Page | None = None
    try:
        port_file = profile / "DevToolsActivePort"
        end = time.monotonic() + DEADLINE_S
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None:
                pytest.fail(f"chromium exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            if time.monotonic() > end:
                pytest.fail("chromium did not open its DevTools port in time")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:  # loopback only
            targets = json.loads(r.read())
        target = next(t for t in targets if t.get("type") == "page")
        page = Page(target["webSocketDebuggerUrl"])
        yield page
    finally:
        if page is not None:
            page.close()
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the group this test started (chromium and its helpers)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


CHECK_JS = """
(() => {
  const out = {};
  for (const fig of document.querySelectorAll('figure[data-chart]')) {
    const r = fig.getBoundingClientRect();
    const marks = [...fig.querySelectorAll('svg .mark')].map(m => {
      const b = m.getBBox(); const c = m.getBoundingClientRect();
      return {tag: m.tagName, w: b.width, h: b.height, cw: c.width, ch: c.height};
    });
    out[fig.dataset.chart] = {w: r.width, h: r.height, svgs: fig.querySelectorAll('svg').length, marks};
  }
  return JSON.stringify({charts: out, title: document.title, scripts: document.scripts.length});
})()
"""


def open_page(page: Page, url: str) -> dict[str, Any]:
    for domain in ("Page", "Network", "Runtime", "Log"):
        page.send(f"{domain}.enable")
    page.send("Page.navigate", url=url)
    page.wait_event("Page.loadEventFired")
    page.drain(0.5)
    res = page.send("Runtime.evaluate", expression=CHECK_JS, returnByValue=True)
    return json.loads(res["result"]["value"])


def requests_other_than(page: Page, url: str) -> list[str]:
    urls = [e["params"]["request"]["url"] for e in page.events if e["method"] == "Network.requestWillBeSent"]
    return [u for u in urls if u != url and not u.startswith("data:")]


def console_errors(page: Page) -> list[str]:
    errs = []
    for e in page.events:
        p = e.get("params", {})
        if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errs.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif e["method"] == "Runtime.exceptionThrown":
            errs.append(str(p.get("exceptionDetails", {}).get("text")))
        elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            errs.append(str(p["entry"].get("text")))
    return errs


def test_report_in_headless_chromium(tmp_path: Path) -> None:
    d = write_fixture_dir(tmp_path / "recon-out")
    r = subprocess.run([sys.executable, "-m", "engine.cli.main", "report", "--from", str(d)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    report = d / "report.html"
    url = report.resolve().as_uri()
    with chromium(tmp_path) as page:
        state = open_page(page, url)
        assert state["title"] == "recon incident report"
        assert state["scripts"] == 0
        for name in CHARTS:
            c = state["charts"].get(name)
            assert c is not None, f"chart {name} missing"
            assert c["w"] > 0 and c["h"] > 0 and c["svgs"] >= 1, f"chart {name} not laid out: {c}"
            visible = [m for m in c["marks"] if m["cw"] > 0 and m["ch"] > 0 and (m["w"] > 0 or m["h"] > 0)]
            assert visible, f"chart {name} has no visible mark: {c['marks']}"
        assert requests_other_than(page, url) == [], "the report made network requests"
        assert console_errors(page) == []


def test_harness_catches_requests_and_console_errors(tmp_path: Path) -> None:
    """A page that fetches (from a closed loopback port) and logs an error must fail the checks above."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><title>bad</title></head><body>'
                   '<img src="http://127.0.0.1:9/pixel.png"><script>console.error("boom")</script></body></html>')
    url = bad.resolve().as_uri()
    with chromium(tmp_path) as page:
        open_page(page, url)
        assert "http://127.0.0.1:9/pixel.png" in requests_other_than(page, url)
        assert any("boom" in e for e in console_errors(page))


# -- issue 21: what a finance reader looks for first, as the browser lays it out ------------------------
CONTENT_JS = r"""
(() => {
  const text = s => [...document.querySelectorAll(s)].map(e => (e.innerText ?? e.textContent).trim());
  const head = {};
  for (const td of document.querySelectorAll('#header td[data-field]')) head[td.dataset.field] = td.innerText.trim();
  // a line break inside a word: two letters on different lines (a break after "_" or "-" or at a space is fine)
  const midWord = [], overflow = [];
  for (const span of document.querySelectorAll('.kpi span')) {
    const chars = [];
    const walk = document.createTreeWalker(span, NodeFilter.SHOW_TEXT);
    for (let n = walk.nextNode(); n; n = walk.nextNode()) {
      for (let i = 0; i < n.length; i++) {
        const r = document.createRange(); r.setStart(n, i); r.setEnd(n, i + 1);
        const b = r.getBoundingClientRect();
        chars.push([n.data[i], b.top, b.width > 0, b.right]);
      }
    }
    let lines = 1, prev = -1;
    for (let i = 0; i < chars.length; i++) {
      if (!chars[i][2]) continue;  // a space collapsed at a line end has no box
      if (prev >= 0 && chars[i][1] > chars[prev][1] + 2) {
        lines++;
        const between = chars.slice(prev, i).map(c => c[0]).join('');
        if (!/[_\s-]/.test(between)) midWord.push(span.innerText);
      }
      prev = i;
    }
    span.dataset.lines = lines;
    // a label must not run out of its card either (what a label with no break opportunity does)
    const card = span.parentElement.getBoundingClientRect();
    if (chars.some(c => c[2] && c[3] > card.right + 0.5)) overflow.push(span.innerText);
  }
  const eq = document.querySelector('#sec-equation');
  const eqBox = eq ? eq.getBoundingClientRect() : null;
  return JSON.stringify({
    head, kpis: text('.kpi'), owners: text('#exposure-by-owner svg text'), classes: text('#classes dd'),
    classTitles: text('#classes dt'), midWord, overflow,
    labelLines: Object.fromEntries([...document.querySelectorAll('.kpi span')].map(s => [s.innerText, +s.dataset.lines])),
    equation: eq ? {text: eq.innerText, affected: +eq.dataset.affected, addsUp: eq.dataset.addsUp,
                    parts: Object.fromEntries([...eq.querySelectorAll('[data-count]')].map(p => [p.dataset.part, +p.dataset.count])),
                    visible: eqBox.width > 0 && eqBox.height > 0} : null,
    secRows: [...document.querySelectorAll('#sec-critical tbody tr')].map(r => r.dataset.part),
  });
})()
"""


def write_content_fixture(root: Path) -> tuple[Path, Path]:
    """The fixture directory with what issue 21 adds: a long API name as the compared column, owner
    names in explain.json, SEC-critical findings of every outcome, an action list; and a config
    whose report currency is EUR."""
    import polars as pl

    from tests.unit.test_report_html import diff_summary

    d = write_fixture_dir(root)
    col = "Customer_Lifetime_Value__c"
    s = diff_summary()
    s["columns"] = {col: s["columns"]["clv"]}
    s["source"]["extract"]["extracted_at"] = "2026-09-04T01:02:03+00:00"
    s["target"]["extract"]["server_time"] = "2026-09-04T01:02:04+00:00"
    s["request"] = {"as_of": "2026-09-03T23:00:00+00:00"}
    (d / "diff" / "summary.json").write_text(json.dumps(s))
    ex = json.loads((d / "explain" / "explain.json").read_text())
    ex["owners"] = {"005A": "Ada Lovelace", "005C": "Grace Hopper"}
    ex["sec_critical"] = {"records": 3, "overpayment": "2.00"}
    (d / "explain" / "explain.json").write_text(json.dumps(ex))
    f = pl.read_parquet(d / "explain" / "findings.parquet")
    # a (duplicate_inflation, corrected), d (missing_events, no repair record: other), e (missing_in_warehouse, listed)
    f.with_columns(pl.col("Id").is_in(["a", "d", "e"]).alias("sec_critical")).write_parquet(d / "explain" / "findings.parquet")
    (d / "repair" / "repair.json").write_text(json.dumps({"records": [{"Id": "a", "class": "duplicate_inflation",
                                                                       "status": "applied"}]}))
    (d / "repair" / "action_list.json").write_text(json.dumps({"records": [{"Id": "e", "sec_critical": True}]}))
    cfg = root.parent / "recon.toml"
    cfg.write_text('[report]\ncurrency = "EUR"\n')
    return d, cfg


def test_report_content_for_a_controller_in_headless_chromium(tmp_path: Path) -> None:
    """Issue 21's acceptance, as rendered: the header, the currency, owner names, each class's
    description and the SEC-critical equation, on a narrow page where card labels must wrap."""
    from engine.core import classes

    d, cfg = write_content_fixture(tmp_path / "recon-out")
    r = subprocess.run([sys.executable, "-m", "engine.cli.main", "report", "--from", str(d), "-C", str(cfg)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    url = (d / "report.html").resolve().as_uri()
    with chromium(tmp_path) as page:
        page.send("Emulation.setDeviceMetricsOverride", width=420, height=900, deviceScaleFactor=1, mobile=False)
        open_page(page, url)
        res = page.send("Runtime.evaluate", expression=CONTENT_JS, returnByValue=True)
        assert "value" in res["result"], res
        got = json.loads(res["result"]["value"])
    head = got["head"]
    assert head["mapping"] == "clv" and head["as of"] == "2026-09-03 23:00:00 UTC"
    assert head["salesforce extracted at"] == "2026-09-04 01:02:03 UTC"
    assert head["postgresql extracted at"] == "2026-09-04 01:02:04 UTC"
    assert head["report made at"].endswith(" UTC") and head["recon version"] and head["currency"] == "EUR"
    assert head["run ids"].startswith("none verified")  # no ledger, no key: no run id is claimed
    assert any(k.startswith("EUR 1,500.00") for k in got["kpis"]), got["kpis"]
    assert "Ada Lovelace" in got["owners"] and "Grace Hopper" in got["owners"]
    assert got["classes"] == [c.description for c in classes.CLASSES]
    assert [t.split(" (")[0] for t in got["classTitles"]] == [c.label for c in classes.CLASSES]
    eq = got["equation"]
    assert eq["visible"] and eq["addsUp"] == "true" and eq["affected"] == 3
    assert eq["parts"] == {"corrected": 1, "action_list": 1, "unexplained": 0, "other": 1}
    assert eq["text"].startswith("3 SEC-critical accounts affected = 1 corrected + 1 on the action list + "
                                 "0 unexplained + 1 other")
    assert sorted(got["secRows"]) == ["action_list", "corrected", "other"]
    # the long API name wraps (the page is narrow), but only at its underscores
    label = "abs Customer_Lifetime_Value__c variance"
    assert got["labelLines"][label] > 1, got["labelLines"]
    assert got["midWord"] == [] and got["overflow"] == []
