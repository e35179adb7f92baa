"""The report's Proof section over a signed run directory, without services: each check is listed
with what the verifiers found (the key's fingerprint, the Merkle roots recomputed from the
snapshots), a check not made says so, and a tampered manifest or snapshot shows in red and exits 4.

The ledger rows are covered against a real PostgreSQL in tests/integration/test_report_proof_ledger.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import polars as pl
from typer.testing import CliRunner

from engine.evidence import manifest as mf
from tests.unit.test_report_html import write_fixture_dir

ROW = re.compile(r'<tr class="(\w+)" data-subject="([^"]*)" data-check="([^"]*)" data-status="([^"]*)">'
                 r"(?:<td[^>]*>.*?</td>){3}<td>(.*?)</td></tr>")
NO_ENV = {"RECON_LEDGER_DSN": ""}  # the proof must not find a ledger the caller did not name


def recon(*args: str) -> Any:
    from engine.cli.main import app

    return CliRunner().invoke(app, list(args), env=NO_ENV)


def exit_code(r: Any) -> int:
    """The code `recon` exits with: a ReconError's own (the CLI's entry point maps it), else typer's."""
    from engine.core.errors import ReconError

    return int(r.exception.exit_code) if isinstance(r.exception, ReconError) else int(r.exit_code)


def signed_run_dir(root: Path, ledger: str | None = None) -> dict[str, Path]:
    """A run directory as a signed pipeline leaves it: a real `recon diff` of two Parquet files with
    its manifest and snapshots (recorded in ``ledger`` when given), the fixture explain, diff-after
    and cost.json each signed by a manifest of its command (no snapshots), and repair/ signed by nothing."""
    keys, run = root / "keys", write_fixture_dir(root / "recon-out")
    r = recon("keygen", "--out", str(keys))
    assert r.exit_code == 0, r.output
    pl.DataFrame({"id": ["a", "b", "c", "d"], "amount": ["10.00", "20.00", "30.00", "40.00"]}).write_parquet(root / "src.parquet")
    pl.DataFrame({"id": ["a", "b", "c", "e"], "amount": ["10.00", "25.00", "30.00", "50.00"]}).write_parquet(root / "tgt.parquet")
    for f in (run / "diff").iterdir():
        f.unlink()
    r = recon("diff", f"parquet:{root / 'src.parquet'}", f"parquet:{root / 'tgt.parquet'}", "-k", "id", "-c", "amount",
              "--out", str(run / "diff"), "--manifest", str(run / "diff" / "manifest.json"),
              "--signing-key", str(keys / "recon.key"), *(("--ledger", ledger) if ledger else ()))
    assert r.exit_code == 1, r.output  # differences found
    for where, files, command in ((run / "explain", ["explain.json", "findings.parquet"], "explain"),
                                  (run / "diff-after", ["summary.json"], "diff"), (run, ["cost.json"], "cost")):
        mf.write_manifest(where / "manifest.json", [where / f for f in files],
                          {"command": command, "run_id": f"fixture-{command}"}, keys / "recon.key")
    return {"run": run, "pub": keys / "recon.pub", "key": keys / "recon.key"}


def proof_rows(page: str) -> dict[tuple[str, str], dict[str, str]]:
    """(subject, check) → the row's class, status and detail, as the page shows them."""
    section = page[page.index('<section id="proof"'):]
    section = section[:section.index("</section>")]
    return {(m[2], m[3]): {"class": m[1], "status": m[4], "detail": m[5]} for m in ROW.finditer(section)}


def proof_status(page: str) -> str:
    found = re.search(r'<section id="proof" class="[^"]*" data-status="(\w+)"', page)
    assert found, "no Proof section"
    return found[1]


def fingerprint(pub: Path) -> str:
    """The key's SHA-256, computed here from the PEM, not by recon."""
    der = base64.b64decode("".join(line for line in pub.read_text().splitlines() if "-----" not in line))
    return hashlib.sha256(der[-32:]).hexdigest()  # an Ed25519 SubjectPublicKeyInfo ends with the raw 32-byte key


def test_every_check_is_listed_with_the_key_fingerprint_and_the_recomputed_roots(tmp_path: Path) -> None:
    s = signed_run_dir(tmp_path)
    r = recon("report", "--from", str(s["run"]), "--key", str(s["pub"]))
    assert exit_code(r) == 0, r.output
    page = (s["run"] / "report.html").read_text()
    rows = proof_rows(page)
    assert proof_status(page) == "passed"
    assert f"<code>{fingerprint(s['pub'])}</code>" in page
    for m in ("diff/manifest.json", "explain/manifest.json", "diff-after/manifest.json", "manifest.json"):
        assert rows[(m, "signature")]["status"] == "ok", (m, rows)
        assert rows[(m, "subject digests")]["status"] == "ok", (m, rows)
    merkle = json.loads((s["run"] / "diff" / "summary.json").read_text())["merkle"]
    roots = rows[("diff/manifest.json", "Merkle roots")]
    assert roots["status"] == "ok"
    assert f"source {merkle['source_root']}" in roots["detail"] and f"target {merkle['target_root']}" in roots["detail"]
    # no snapshot was written with the other runs: their roots are not claimed
    for m in ("explain/manifest.json", "diff-after/manifest.json", "manifest.json"):
        assert rows[(m, "Merkle roots")]["status"] == "not checked", (m, rows)
        assert "no snapshot" in rows[(m, "Merkle roots")]["detail"]
    # repair/ holds no manifest, and no ledger was given: not checked, and said why
    for c in ("signature", "subject digests", "Merkle roots"):
        assert rows[("repair/manifest.json", c)]["status"] == "not checked"
    for c in ("hash chain", "checkpoint"):
        assert rows[("ledger", c)]["status"] == "not checked" and "--ledger" in rows[("ledger", c)]["detail"]
    assert {v["class"] for v in rows.values()} == {"ok", "skip"}


def test_without_a_key_nothing_is_claimed(tmp_path: Path) -> None:
    s = signed_run_dir(tmp_path)
    r = recon("report", "--from", str(s["run"]))
    assert exit_code(r) == 0, r.output
    page = (s["run"] / "report.html").read_text()
    rows = proof_rows(page)
    assert proof_status(page) == "none"
    assert len(rows) == 5 * 3 + 2  # five manifests' three checks, the ledger's two
    assert {v["status"] for v in rows.values()} == {"not checked"}
    assert "No public key given: no signature was checked." in page


def test_a_tampered_manifest_exits_4_and_the_page_shows_the_failure_without_figures(tmp_path: Path) -> None:
    s = signed_run_dir(tmp_path)
    m = s["run"] / "diff" / "manifest.json"
    env = json.loads(m.read_text())
    statement = json.loads(base64.b64decode(env["payload"]))
    statement["predicate"]["results"] = {"mismatched": 0}  # a nicer story, signature kept
    env["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    m.write_text(json.dumps(env))
    r = recon("report", "--from", str(s["run"]), "--key", str(s["pub"]))
    assert exit_code(r) == 4
    assert "payload tampered" in str(r.exception) and str(s["run"] / "report.html") in str(r.exception)
    page = (s["run"] / "report.html").read_text()
    rows = proof_rows(page)
    assert proof_status(page) == "failed"
    sig = rows[("diff/manifest.json", "signature")]
    assert (sig["class"], sig["status"]) == ("failed", "failed") and "payload tampered" in sig["detail"]
    for c in ("subject digests", "Merkle roots"):  # never made: not claimed either way
        assert rows[("diff/manifest.json", c)]["status"] == "not checked"
        assert "the signature check failed first" in rows[("diff/manifest.json", c)]["detail"]
    assert rows[("explain/manifest.json", "signature")]["status"] == "ok"
    assert 'id="verification" data-status="failed"' in page
    assert "data-chart" not in page and "<svg" not in page  # no figure from artefacts that did not verify


def test_an_edited_snapshot_re_signed_fails_the_root_check_in_the_full_report(tmp_path: Path) -> None:
    """Signature and digests hold (the manifest was re-signed over the edited snapshot), the files the
    report shows are untouched, so the page has its figures; only the recomputed root betrays it."""
    s = signed_run_dir(tmp_path)
    d = s["run"] / "diff"
    snap = pl.read_parquet(d / "snapshot-source.parquet")
    snap.with_columns(pl.when(pl.col("id") == "b").then(pl.lit("25.00")).otherwise(pl.col("amount")).alias("amount")
                      ).write_parquet(d / "snapshot-source.parquet")
    statement = json.loads(base64.b64decode(json.loads((d / "manifest.json").read_text())["payload"]))
    mf.write_manifest(d / "manifest.json", [d / x["name"] for x in statement["subject"]], statement["predicate"], s["key"])
    r = recon("report", "--from", str(s["run"]), "--key", str(s["pub"]))
    assert exit_code(r) == 4
    assert "diff/manifest.json Merkle roots: root mismatch for the source side" in str(r.exception)
    page = (s["run"] / "report.html").read_text()
    rows = proof_rows(page)
    assert [k for k, v in rows.items() if v["status"] == "failed"] == [("diff/manifest.json", "Merkle roots")]
    assert rows[("diff/manifest.json", "Merkle roots")]["class"] == "failed"
    assert rows[("diff/manifest.json", "signature")]["status"] == "ok"
    assert 'id="proof-failed"' in page and "data-chart" in page


def test_checkpoint_without_a_ledger_is_a_usage_error(tmp_path: Path) -> None:
    s = signed_run_dir(tmp_path)
    r = recon("report", "--from", str(s["run"]), "--key", str(s["pub"]), "--checkpoint", str(tmp_path / "cp.txt"))
    assert exit_code(r) == 2 and "--checkpoint FILE is checked against the ledger" in str(r.exception)


def test_an_edited_output_fails_its_subject_digest_after_a_valid_signature(tmp_path: Path) -> None:
    s = signed_run_dir(tmp_path)
    after = s["run"] / "diff-after" / "summary.json"
    after.write_text(after.read_text().replace('"mismatched": 1', '"mismatched": 0'))
    r = recon("report", "--from", str(s["run"]), "--key", str(s["pub"]))
    assert exit_code(r) == 4 and "summary.json" in str(r.exception)
    rows = proof_rows((s["run"] / "report.html").read_text())
    assert rows[("diff-after/manifest.json", "signature")]["status"] == "ok"
    digests = rows[("diff-after/manifest.json", "subject digests")]
    assert digests["status"] == "failed" and "subject digest mismatch: summary.json" in digests["detail"]
    assert rows[("diff-after/manifest.json", "Merkle roots")]["status"] == "not checked"
