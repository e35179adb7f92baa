"""The report's Proof section and its printed form, in headless Chromium over the DevTools protocol.

* The Proof section of a signed run directory is laid out, each row coloured by its outcome; after a
  manifest is tampered with, `recon report` exits 4 and the page it leaves shows the failure in red.
* "Print to PDF" (``Page.printToPDF``) on A4 and Letter: ``pdftotext -bbox`` finds the marker above
  and the marker below every chart on the same page, so no chart is split across pages.

Screenshots and PDFs are kept in ``test-output/browser/`` (git-ignored) to look at. Skips, saying
why, where Chromium, websocket-client or pdftotext is missing (`scripts/ensure_chromium` installs
Chromium and poppler-utils).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.report.html import CHARTS
from tests.unit.test_report_html import write_fixture_dir
from tests.unit.test_report_proof import exit_code, recon, signed_run_dir

pytest.importorskip("websocket", reason="websocket-client is not installed (pip install -e '.[dev]')")
from tests.e2e.test_report_browser import CHROMIUM, Page, chromium, console_errors, open_page  # noqa: E402

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed: run scripts/ensure_chromium (Debian package 'chromium') "
                             "to run the report browser tests")
OUT = Path(__file__).resolve().parents[2] / "test-output" / "browser"  # git-ignored, for a person to look at
RED, GREEN, GREY = "rgb(185, 28, 28)", "rgb(22, 101, 52)", "rgb(107, 114, 128)"

PROOF_JS = """
(() => {
  const s = document.querySelector('section#proof');
  if (!s) return JSON.stringify(null);
  const r = s.getBoundingClientRect();
  const rows = [...s.querySelectorAll('tbody tr')].map(tr => ({
    subject: tr.dataset.subject, check: tr.dataset.check, status: tr.dataset.status,
    color: getComputedStyle(tr.querySelector('td.res')).color, h: tr.getBoundingClientRect().height}));
  const v = document.querySelector('#verification');
  return JSON.stringify({w: r.width, h: r.height, status: s.dataset.status, rows,
    banner: v ? {text: v.textContent, color: getComputedStyle(v).color, h: v.getBoundingClientRect().height} : null,
    charts: document.querySelectorAll('figure[data-chart]').length});
})()
"""


def report(run: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli.main", "report", "--from", str(run), *extra],
                          capture_output=True, text=True, timeout=120, env={**_env(), "RECON_LEDGER_DSN": ""})


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def keep(name: str, data: bytes) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / name).write_bytes(data)
    return OUT / name


def load(page: Page, url: str) -> None:
    """Navigate the shared page afresh: events of an earlier page must not answer for this one."""
    page.events.clear()
    open_page(page, url)


def proof_state(page: Page, url: str, shot: str) -> dict[str, Any]:
    load(page, url)
    state = json.loads(page.send("Runtime.evaluate", expression=PROOF_JS, returnByValue=True)["result"]["value"])
    keep(shot, base64.b64decode(page.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]))
    return state


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """One Chromium for this module's tests: starting it is most of their time."""
    with chromium(tmp_path_factory.mktemp("chromium")) as page:
        yield page


def test_proof_section_in_chromium_and_a_tampered_manifest_in_red(tmp_path: Path, browser: Page) -> None:
    s = signed_run_dir(tmp_path)
    r = recon("report", "--from", str(s["run"]), "--key", str(s["pub"]))  # in process: the subprocess is below
    assert exit_code(r) == 0, r.output
    url = (s["run"] / "report.html").resolve().as_uri()
    state = proof_state(browser, url, "proof.png")
    assert state is not None and state["w"] > 0 and state["h"] > 0, state
    assert state["status"] == "passed" and state["charts"] == len(CHARTS)
    colors = {(row["subject"], row["check"]): (row["status"], row["color"]) for row in state["rows"]}
    assert colors[("diff/manifest.json", "Merkle roots")] == ("ok", GREEN)
    assert colors[("ledger", "hash chain")] == ("not checked", GREY)
    assert all(row["h"] > 0 for row in state["rows"])
    assert RED not in {c for _, c in colors.values()}
    assert console_errors(browser) == []

    m = s["run"] / "diff" / "manifest.json"
    env = json.loads(m.read_text())
    statement = json.loads(base64.b64decode(env["payload"]))
    statement["subject"][0]["digest"]["sha256"] = "0" * 64  # claims another summary, signature kept
    env["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    m.write_text(json.dumps(env))
    r = report(s["run"], "--key", str(s["pub"]))
    assert r.returncode == 4, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "payload tampered" in r.stderr, r.stderr
    state = proof_state(browser, url, "proof-tampered.png")
    assert state["status"] == "failed" and state["charts"] == 0, state
    rows = {(row["subject"], row["check"]): row for row in state["rows"]}
    failed = rows[("diff/manifest.json", "signature")]
    assert (failed["status"], failed["color"]) == ("failed", RED)
    assert rows[("diff/manifest.json", "subject digests")]["status"] == "not checked"
    assert state["banner"]["color"] == RED and state["banner"]["h"] > 0
    assert "payload tampered" in state["banner"]["text"]


# -- print ---------------------------------------------------------------------------------------
PDFTOTEXT = shutil.which("pdftotext")
PAPERS = {"A4": (8.27, 11.69), "Letter": (8.5, 11.0)}  # inches
WORD = re.compile(r"<word [^>]*>([^<]*)</word>")


def pages_words(pdf: Path) -> list[list[str]]:
    """Each page's words in reading order, from ``pdftotext -bbox``."""
    out = subprocess.run([str(PDFTOTEXT), "-bbox", str(pdf), "-"], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    return [WORD.findall(p) for p in out.split("<page ")[1:]]


def pages_of(pages: list[list[str]], phrase: str) -> list[int]:
    """Every page on which the words of ``phrase`` occur in a row (once per occurrence)."""
    want = phrase.split()
    return [i for i, words in enumerate(pages) for j in range(len(words) - len(want) + 1)
            if words[j:j + len(want)] == want]


@pytest.mark.skipif(PDFTOTEXT is None, reason="pdftotext not installed: run scripts/ensure_chromium "
                                              "(Debian package poppler-utils) to run the PDF test")
def test_print_to_pdf_keeps_every_chart_on_one_page(tmp_path: Path, browser: Page) -> None:
    run = write_fixture_dir(tmp_path / "recon-out")
    r = recon("report", "--from", str(run))
    assert exit_code(r) == 0, r.output
    url = (run / "report.html").resolve().as_uri()
    n = len(CHARTS)
    load(browser, url)
    for paper, (w, h) in PAPERS.items():
        res = browser.send("Page.printToPDF", paperWidth=w, paperHeight=h, printBackground=True)
        pdf = keep(f"report-{paper}.pdf", base64.b64decode(res["data"]))
        pages = pages_words(pdf)
        assert len(pages) > 1, f"{paper}: the report printed on {len(pages)} page(s): nothing to split"
        for i in range(1, n + 1):
            start, end = pages_of(pages, f"Figure {i} of {n}"), pages_of(pages, f"End of figure {i} of {n}")
            assert len(start) == 1 and len(end) == 1, (paper, i, start, end)
            assert start == end, f"{paper}: figure {i} starts on page {start[0] + 1} and ends on page {end[0] + 1}"
        assert pages_of(pages, "Proof"), f"{paper}: no Proof section in the PDF"
