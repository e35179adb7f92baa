# ruff: noqa: S608 - the tamper statement is built from constants, run as the test superuser
"""The report's Proof section against a real ledger (the session's embedded PostgreSQL): the hash
chain recomputed up to an exported, signed checkpoint, shown with its size and root; a row edited
with the triggers disabled shows both ledger checks in red, and the report exits 4."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

from engine.store import ledger as lg
from tests.integration.test_ledger import _dsn, _superuser, tamper
from tests.unit.test_report_proof import exit_code, proof_rows, proof_status, recon, signed_run_dir


def test_the_ledger_chain_is_checked_up_to_the_checkpoint_and_an_edit_shows_in_red(embedded_pg, tmp_path: Path) -> None:  # noqa: ANN001
    name = f"report_proof_{uuid.uuid4().hex[:8]}"
    with _superuser(embedded_pg) as c:
        c.execute(f"CREATE DATABASE {name} OWNER recon")
    try:
        writer = _dsn(embedded_pg, "recon_app", name)
        with lg.Ledger(_dsn(embedded_pg, "recon", name)) as admin:
            admin.init(writer="recon_app")
        s = signed_run_dir(tmp_path, ledger=writer)
        cp = tmp_path / "checkpoint.txt"
        r = recon("ledger", "checkpoint", "--dsn", writer, "--out", str(cp), "--signing-key", str(s["key"]))
        assert exit_code(r) == 0, r.output
        _origin, size, root_b64 = cp.read_text().splitlines()[:3]
        root = base64.b64decode(root_b64).hex()
        args = ("report", "--from", str(s["run"]), "--key", str(s["pub"]), "--ledger", writer, "--checkpoint", str(cp))
        r = recon(*args)
        assert exit_code(r) == 0, r.output
        page = (s["run"] / "report.html").read_text()
        rows = proof_rows(page)
        assert proof_status(page) == "passed"
        chain, check = rows[("ledger", "hash chain")], rows[("ledger", "checkpoint")]
        assert chain["status"] == "ok" and f"{size} rows recomputed" in chain["detail"], chain
        assert check["status"] == "ok", check
        assert f"the first {size} rows have its root {root}; its signature verified" in check["detail"]
        assert "recon_app" in chain["detail"] and "password" not in page

        tamper(embedded_pg, name, "UPDATE recon_audit.runs SET canonical = "
               "jsonb_set(canonical::jsonb, '{note}', '\"edited\"')::text WHERE seq = (SELECT min(seq) FROM recon_audit.runs)")
        r = recon(*args)
        assert exit_code(r) == 4 and "ledger hash chain" in str(r.exception)
        page = (s["run"] / "report.html").read_text()
        rows = proof_rows(page)
        assert proof_status(page) == "failed"
        chain, check = rows[("ledger", "hash chain")], rows[("ledger", "checkpoint")]
        assert (chain["class"], chain["status"]) == ("failed", "failed")
        assert "contents changed after it was written" in chain["detail"]
        assert check["status"] == "failed" and "does not verify up to it" in check["detail"]
        assert rows[("diff/manifest.json", "signature")]["status"] == "ok"  # the rest still says what held
    finally:
        with _superuser(embedded_pg) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
