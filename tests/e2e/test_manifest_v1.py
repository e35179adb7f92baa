"""`recon manifest verify --data` on a version-1 manifest (issue 22, item 6). Version 1 hashed each
segment over the rows' texts, kept in the snapshots as ``__row``; version 2 hashes the typed columns,
and the verifier keeps a version-1 path so that evidence signed before the change still verifies.
Until now no test ran it on anything version-1 code wrote: ``data/manifest_v1`` is a bundle the
version-1 code itself signed (see its HOW.md), so its roots are that code's, not today's.

Passing: the bundle as signed (exit 0, both roots recomputed equal the signed ones). Tampered:
a snapshot edited in place (exit 4, its digest), and, for the version-1 path itself, a snapshot
edited and its manifest re-signed, as a signer whose snapshots are not what it diffed would: a value
changed under its old row text (exit 4, "canonical rows do not match"), and a value changed together
with its row text (exit 4, the recomputed root is not the signed one)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = Path(__file__).parent / "data" / "manifest_v1"


def verify(manifest: Path, key: Path, data: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "SF_", "RECON_"))}
    return subprocess.run([sys.executable, "-m", "engine.cli.main", "manifest", "verify", str(manifest), "--key",
                           str(key), "--data", str(data), "--json"], capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(ROOT)}, timeout=120)


def one_line_4(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert res.returncode == 4, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def statement(manifest: Path) -> dict:
    return json.loads(base64.b64decode(json.loads(manifest.read_text())["payload"]))


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    shutil.copytree(BUNDLE, tmp_path / "b")
    return tmp_path / "b"


def test_the_bundle_is_version_1() -> None:
    """The fixture is what it claims: version-1 snapshots, with the row texts only version 1 wrote."""
    assert json.loads((BUNDLE / "snapshots.json").read_text())["encoding_version"] == 1
    assert "__row" in pl.read_parquet(BUNDLE / "snapshot-source.parquet").columns


def test_a_version_1_manifest_verifies_with_its_data(bundle: Path) -> None:
    res = verify(bundle / "diff.manifest.json", bundle / "recon.pub", bundle)
    assert res.returncode == 0, res.stderr
    signed = {i["side"]: i["merkle_root"] for i in statement(bundle / "diff.manifest.json")["predicate"]["inputs"]}
    assert json.loads(res.stdout)["roots"] == signed and len(signed) == 2


def test_a_snapshot_edited_after_signing_fails_its_digest(bundle: Path) -> None:
    snap = bundle / "snapshot-target.parquet"
    pl.read_parquet(snap).with_columns(pl.col("qty") + 1).write_parquet(snap)
    one_line_4(verify(bundle / "diff.manifest.json", bundle / "recon.pub", bundle),
               "subject digest mismatch: snapshot-target.parquet")


def _resign(bundle: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The bundle's own statement with its subjects' digests brought up to date, signed with a fresh key."""
    from engine.evidence import manifest as mf

    priv, pub = mf.keygen(tmp_path / "keys")
    stmt = statement(bundle / "diff.manifest.json")
    for s in stmt["subject"]:
        s["digest"]["sha256"] = mf.file_digest(bundle / s["name"])
    out = bundle / "resigned.manifest.json"
    out.write_text(json.dumps(mf.sign_envelope(json.dumps(stmt).encode(), mf.load_private_key(priv))))
    return out, pub


def _edit_note(bundle: Path, *, row_text_too: bool) -> None:
    """a03's note "note, 3\\n\\"x\\"" becomes "NOTE, 3\\n\\"x\\"" (same length, so the row text's framing holds)."""
    snap = bundle / "snapshot-target.parquet"
    f = pl.read_parquet(snap)
    at = pl.col("id") == "a03"
    edits = [pl.when(at).then(pl.col("note").str.replace("note", "NOTE", literal=True)).otherwise(pl.col("note"))]
    if row_text_too:
        edits.append(pl.when(at).then(pl.col("__row").str.replace("note, 3", "NOTE, 3", literal=True))
                     .otherwise(pl.col("__row")))
    g = f.with_columns(edits)
    assert (g["note"] != f["note"]).sum() == 1 and (g["__row"] != f["__row"]).sum() == int(row_text_too)
    g.write_parquet(snap)


def test_a_resigned_version_1_bundle_verifies_when_untouched(bundle: Path, tmp_path: Path) -> None:
    """The control for the two below: re-signing alone changes nothing the verifier objects to."""
    manifest, pub = _resign(bundle, tmp_path)
    assert verify(manifest, pub, bundle).returncode == 0


def test_a_value_changed_under_its_version_1_row_text_is_named(bundle: Path, tmp_path: Path) -> None:
    _edit_note(bundle, row_text_too=False)
    manifest, pub = _resign(bundle, tmp_path)
    one_line_4(verify(manifest, pub, bundle), "root mismatch for the target side",
               "snapshot-target.parquet was edited (its canonical rows do not match its values)")


def test_a_value_and_its_version_1_row_text_changed_together_miss_the_signed_root(bundle: Path,
                                                                                  tmp_path: Path) -> None:
    _edit_note(bundle, row_text_too=True)
    manifest, pub = _resign(bundle, tmp_path)
    signed = {i["side"]: i["merkle_root"] for i in statement(manifest)["predicate"]["inputs"]}
    one_line_4(verify(manifest, pub, bundle), "root mismatch for the target side: snapshot snapshot-target.parquet "
               "hashes to", f"the manifest says {signed['target'][:16]}…")
