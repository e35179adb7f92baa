"""Artefacts are verified before a decision rests on them (issue 17.1), without a database: the
signed-manifest path (``--key PUB``), and what happens with nothing to verify against. The ledger
path runs against a real ledger in tests/integration/attacks_gate.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine import workspace
from engine.app import gate
from engine.app import report as report_app
from engine.app.evidence import record_evidence
from engine.app.trust import TrustOptions, verify
from engine.core.errors import Exit, UsageError, VerificationError
from engine.evidence.manifest import keygen
from engine.report import html
from tests.unit.test_gate import COL, _config, _diff_dir


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return keygen(tmp_path / "keys")


def _sign(directory: Path, files: list[Path], key: Path, command: str = "diff") -> None:
    record_evidence(command, {}, [], files, ledger_dsn=None, manifest_path=directory / "manifest.json",
                    signing_key=key, config_digest="test")


def _open_diff(tmp_path: Path, name: str = "diff") -> Path:
    rows = [(f"k{i}", "mismatched", COL, "10.00", "20.00") for i in range(6)]
    return _diff_dir(tmp_path, rows, keys=100, abs_var="60.00", amount=0.06, name=name)


def test_gate_without_a_ledger_or_a_key_refuses_with_exit_2(tmp_path: Path) -> None:
    # on main: decided from whatever directory it was given (here: closed, exit 0)
    d = _diff_dir(tmp_path, [])
    with pytest.raises(UsageError, match="give --ledger DSN or --key PUB") as e:
        gate.run_gate(gate.GateRequest(diff=d), _config(tmp_path, ""))
    assert e.value.exit_code == Exit.USAGE


def test_a_signed_diff_decides_and_says_how_it_was_verified(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    key, pub = keys
    d = _open_diff(tmp_path)
    _sign(d, workspace.DiffOutput(d).files(), key)
    res = gate.run_gate(gate.GateRequest(diff=d, pubkey=pub), _config(tmp_path, ""))
    assert res.exit_code == Exit.BREAKER_OPEN
    v = res.document["decision"]["diff"]["verification"]
    assert v["status"] == "manifest" and v["files"] == ["summary.json", "differences.parquet"]


def test_a_zeroed_copy_of_an_open_diff_is_refused_naming_summary_json(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    key, pub = keys
    d = _open_diff(tmp_path)
    _sign(d, workspace.DiffOutput(d).files(), key)
    copy = tmp_path / "copy"
    shutil.copytree(d, copy)
    s = json.loads((copy / "summary.json").read_text())
    s.update(mismatched=0, variance_ratio=0.0, amount_variance_ratio={COL: 0.0})
    (copy / "summary.json").write_text(json.dumps(s))
    with pytest.raises(VerificationError, match="summary.json") as e:
        gate.run_gate(gate.GateRequest(diff=copy, pubkey=pub), _config(tmp_path, ""))
    assert e.value.exit_code == Exit.VERIFY_FAILED
    (copy / "manifest.json").unlink()  # without the manifest: nothing vouches for it either
    with pytest.raises(VerificationError, match="manifest.json does not exist"):
        gate.run_gate(gate.GateRequest(diff=copy, pubkey=pub), _config(tmp_path, ""))


def test_a_manifest_of_another_command_or_another_key_does_not_vouch(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    key, pub = keys
    d = _open_diff(tmp_path)
    _sign(d, workspace.DiffOutput(d).files(), key, command="explain")
    with pytest.raises(VerificationError, match="signed for a `recon explain` run"):
        verify(d, workspace.DiffOutput(d).files(), command="diff", trust=TrustOptions(pubkey=pub))
    _, other_pub = keygen(tmp_path / "other")
    _sign(d, workspace.DiffOutput(d).files(), key)
    with pytest.raises(VerificationError):
        verify(d, workspace.DiffOutput(d).files(), command="diff", trust=TrustOptions(pubkey=other_pub))


def test_an_unsigned_exclusion_source_is_refused(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    key, pub = keys
    d = _open_diff(tmp_path)
    _sign(d, workspace.DiffOutput(d).files(), key)
    r = tmp_path / "repair"
    r.mkdir()
    for name in ("plan.json", "action_list.json"):
        (r / name).write_text(json.dumps({"mapping": "clv", "column": COL, "action_list": []}))
    (r / "action_list.csv").write_text("Id\n")
    with pytest.raises(VerificationError, match="repair/manifest.json does not exist"):
        gate.run_gate(gate.GateRequest(diff=d, pubkey=pub, exclude_from=r), _config(tmp_path, ""))


def test_repair_apply_without_a_ledger_or_a_key_refuses(tmp_path: Path) -> None:
    from engine.app import repair

    with pytest.raises(UsageError, match="give --ledger DSN or --key PUB"):
        repair.verify_inputs(tmp_path, None, TrustOptions(), apply=True)


def test_report_and_cost_run_unverified_and_say_so_in_red(tmp_path: Path) -> None:
    from engine.app import cost

    run = tmp_path / "run"
    run.mkdir()
    d = _diff_dir(run, [])
    assert d == run / "diff"
    from decimal import Decimal

    doc, _ = cost.document(None, d, sets={"commission_overpayment": Decimal(0)})
    assert doc["verification"]["status"] == "unverified"
    inp = report_app.collect(run)
    assert inp.verification is not None and inp.verification["status"] == "unverified"
    page = html.build_html(inp)
    assert 'class="verify bad"' in page and "unverified" in page


def test_report_with_a_key_verifies_each_artefact(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    key, pub = keys
    run = tmp_path / "run"
    run.mkdir()
    d = _diff_dir(run, [])
    _sign(d, workspace.DiffOutput(d).files(), key)
    inp = report_app.collect(run, trust=TrustOptions(pubkey=pub))
    assert inp.verification is not None and inp.verification["status"] == "manifest"
    assert 'class="verify ok"' in html.build_html(inp)
    (d / "differences.parquet").write_bytes(b"edited")
    with pytest.raises(VerificationError, match="differences.parquet"):
        report_app.collect(run, trust=TrustOptions(pubkey=pub))


def test_a_cost_json_no_run_recorded_is_left_out_not_a_dead_end(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """`recon cost --json > cost.json` records no run, so a verified report cannot trace that
    file: it leaves it out (and says so) instead of refusing the whole report with exit 4."""
    key, pub = keys
    run = tmp_path / "run"
    run.mkdir()
    d = _diff_dir(run, [])
    _sign(d, workspace.DiffOutput(d).files(), key)
    (run / "cost.json").write_text('{"results": {"exposure": "999999999.00"}}')
    inp = report_app.collect(run, trust=TrustOptions(pubkey=pub))
    assert inp.verification is not None and inp.verification["status"] == "manifest"
    assert "cost" not in inp.verification["parts"]
    assert inp.cost is None or "999999999.00" not in str(inp.cost)
    assert inp.cost_note is not None
    assert "999999999" not in html.build_html(inp)


def test_a_verified_report_reads_no_json_it_did_not_verify(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """A JSON planted under repair/ (not the repair output's own files) used to be shown under a
    "verified" banner; a verified report now reads only what it verified."""
    import json

    from tests.unit.test_report_html import repair_doc

    key, pub = keys
    run = tmp_path / "run"
    run.mkdir()
    d = _diff_dir(run, [])
    _sign(d, workspace.DiffOutput(d).files(), key)
    planted = run / "repair" / "a"
    planted.mkdir(parents=True)
    (planted / "repair.json").write_text(json.dumps(repair_doc()))
    inp = report_app.collect(run, trust=TrustOptions(pubkey=pub))
    assert inp.verification is not None and inp.verification["status"] == "manifest"
    assert inp.repair is None and inp.repair_path is None
    unverified = report_app.collect(run)  # marked unverified in red: any repair JSON is shown, as before
    assert unverified.repair_path == "repair/a/repair.json"
