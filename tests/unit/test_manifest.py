"""Signed manifests: DSSE PAE, Ed25519 keys, every tamper case failing with its own reason, roots
recomputed from snapshots, RFC 6962 tree heads, OpenLineage events round-tripping the client's
model classes. No services: the diff runs on two Parquet files."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from engine.app.evidence import record_diff_evidence
from engine.app.reconcile import DiffRequest, run_diff, write_outputs
from engine.config import load
from engine.core.errors import UsageError, VerificationError
from engine.evidence import lineage as ol
from engine.evidence import manifest as mf
from engine.store import ledger as lg

# -- DSSE ------------------------------------------------------------------------------------------


def test_pae_matches_the_dsse_spec_test_vector() -> None:
    assert mf.pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def test_pae_counts_bytes_not_characters() -> None:
    assert mf.pae("t", "é".encode()) == b"DSSEv1 1 t 2 " + "é".encode()
    assert mf.pae("", b"") == b"DSSEv1 0  0 "


def test_base64_standard_and_url_safe_with_or_without_padding() -> None:
    raw = bytes(range(256))
    for text in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode(),
                 base64.urlsafe_b64encode(raw).decode().rstrip("=")):
        assert mf.b64decode_any(text) == raw
    with pytest.raises(ValueError):
        mf.b64decode_any("not base64!")


# -- RFC 6962 --------------------------------------------------------------------------------------
RFC6962_LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
RFC6962_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


@pytest.mark.parametrize("size", range(9))
def test_checkpoint_roots_match_the_rfc6962_reference_vectors(size: int) -> None:
    entries = [bytes.fromhex(x) for x in RFC6962_LEAVES[:size]]
    assert lg.merkle_root(entries).hex() == RFC6962_ROOTS[size]


def _mth(entries: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, literally: split at the largest power of two below n."""
    n = len(entries)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + entries[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + _mth(entries[:k]) + _mth(entries[k:])).digest()


def test_incremental_accumulator_equals_the_recursive_definition() -> None:
    entries = [i.to_bytes(4, "big") for i in range(70)]
    acc = lg.MerkleAccumulator()
    for n in range(71):
        assert acc.root() == _mth(entries[:n]), n
        if n < 70:
            acc.append(entries[n])


def test_leaf_and_node_prefixes_separate_domains() -> None:
    a, b = b"a" * 32, b"b" * 32
    assert lg.merkle_root([a, b]) != lg.merkle_root([lg.rfc6962_leaf(a) + lg.rfc6962_leaf(b)])


def test_signed_checkpoint_note_round_trips_and_rejects_edits(tmp_path: Path) -> None:
    priv, pub = mf.keygen(tmp_path / "k")
    _, other = mf.keygen(tmp_path / "other")
    cp = lg.Checkpoint("recon.dev/ledger/test", 7, hashlib.sha256(b"x").digest())
    note = tmp_path / "cp.note"
    note.write_text(lg.sign_note(cp, priv))
    text = note.read_text()
    assert text.startswith(f"recon.dev/ledger/test\n7\n{base64.b64encode(cp.root).decode()}\n\n\u2014 ")
    got, signed = lg.read_note(note, pub)
    assert signed and got.size == 7 and got.root == cp.root and got.origin == cp.origin
    with pytest.raises(VerificationError, match="not signed by"):
        lg.read_note(note, other)
    note.write_text(text.replace("\n7\n", "\n8\n", 1))
    with pytest.raises(VerificationError, match="altered after signing"):
        lg.read_note(note, pub)


# -- keys ------------------------------------------------------------------------------------------
def test_keygen_writes_a_private_key_readable_only_by_its_owner(tmp_path: Path) -> None:
    priv, pub = mf.keygen(tmp_path / "keys")
    assert (priv.name, pub.name) == ("recon.key", "recon.pub")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in priv.read_bytes() and b"PUBLIC KEY" in pub.read_bytes()
    assert b"PRIVATE" not in pub.read_bytes()
    with pytest.raises(UsageError, match="already exists"):
        mf.keygen(tmp_path / "keys")
    priv.chmod(0o644)
    with pytest.raises(UsageError, match="readable by other users"):
        mf.load_private_key(priv)


# -- a real diff to sign ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def diff_run(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    d = tmp_path_factory.mktemp("pq")
    pl.DataFrame({"id": [f"k{i:03d}" for i in range(60)], "amount": [f"{i}.25" for i in range(60)],
                  "name": [f"n{i}" for i in range(60)]}).write_parquet(d / "a.parquet")
    pl.DataFrame({"id": [f"k{i:03d}" for i in range(1, 62)],
                  "amount": [f"{i}.25" if i != 7 else "8.00" for i in range(1, 62)],
                  "name": [f"n{i}" for i in range(1, 62)]}).write_parquet(d / "b.parquet")
    req = DiffRequest(source=f"parquet:{d}/a.parquet", target=f"parquet:{d}/b.parquet", keys=(("id", "id"),),
                      types={"amount": "decimal:2"}, segment_rows=8)
    return run_diff(req, load(None))


@pytest.fixture()
def signed(diff_run, tmp_path: Path) -> dict[str, Path]:  # noqa: ANN001
    keys = tmp_path / "keys"
    priv, pub = mf.keygen(keys)
    out = tmp_path / "out"
    outputs = write_outputs(diff_run, out)
    info = record_diff_evidence(diff_run, config=load(None), outputs=outputs, manifest_path=out / "manifest.json",
                                signing_key=priv)
    assert info["manifest"] and info["ledger"] is None
    return {"dir": out, "manifest": out / "manifest.json", "pub": pub, "priv": priv}


def _envelope(p: Path) -> dict:
    return json.loads(p.read_text())


def _write(p: Path, env: dict) -> None:
    p.write_text(json.dumps(env))


def test_valid_manifest_verifies_in_a_fresh_directory_with_only_the_public_key_and_files(signed, tmp_path) -> None:  # noqa: ANN001
    fresh = tmp_path / "auditor"
    shutil.copytree(signed["dir"], fresh / "bundle")
    shutil.copy(signed["pub"], fresh / "recon.pub")
    assert not list(fresh.rglob("recon.key"))
    rep = mf.verify_manifest(fresh / "bundle" / "manifest.json", fresh / "recon.pub", fresh / "bundle")
    names = {s["name"] for s in rep.subjects}
    assert {"summary.json", "differences.parquet", "snapshot-source.parquet", "snapshot-target.parquet",
            "snapshots.json"} <= names
    assert sum(n.startswith("openlineage/") for n in names) == 2
    stmt = rep.statement
    assert stmt["_type"] == "https://in-toto.io/Statement/v1"
    assert stmt["predicateType"] == mf.PREDICATE_TYPE
    pred = stmt["predicate"]
    assert pred["transformation"] == mf.transformation_digest()
    assert set(pred["transformation"]["files"]) == {f"engine/{m}" for m in mf.TRANSFORMATION_MODULES}
    assert [i["side"] for i in pred["inputs"]] == ["source", "target"]
    assert rep.roots == {"source": pred["inputs"][0]["merkle_root"], "target": pred["inputs"][1]["merkle_root"]}
    assert pred["results"]["mismatched"] == 1
    assert {e["eventType"] for e in pred["openlineage"]["events"]} == {"START", "COMPLETE"}
    env = _envelope(signed["manifest"])
    assert env["payloadType"] == "application/vnd.in-toto+json"
    # without --data, only the signature and the digests are checked
    assert mf.verify_manifest(fresh / "bundle" / "manifest.json", fresh / "recon.pub").roots == {}


def test_every_flipped_payload_byte_fails_as_payload_tampered(signed) -> None:  # noqa: ANN001
    m = signed["manifest"]
    env = _envelope(m)
    payload = base64.b64decode(env["payload"])
    for i in range(0, len(payload), max(1, len(payload) // 300)):
        bad = bytearray(payload)
        bad[i] ^= 0x01
        _write(m, {**env, "payload": base64.b64encode(bytes(bad)).decode()})
        with pytest.raises(VerificationError, match="payload tampered"):
            mf.verify_manifest(m, signed["pub"])


def test_payload_changed_and_hint_stripped_still_fails_as_bad_signature(signed) -> None:  # noqa: ANN001
    m = signed["manifest"]
    env = _envelope(m)
    stmt = json.loads(base64.b64decode(env["payload"]))
    stmt["predicate"]["results"]["mismatched"] = 0
    forged = json.dumps(stmt).encode()
    _write(m, {**env, "payload": base64.b64encode(forged).decode(),
               "payloadSha256": hashlib.sha256(forged).hexdigest()})
    with pytest.raises(VerificationError, match="bad signature"):
        mf.verify_manifest(m, signed["pub"])


def test_every_flipped_signature_byte_fails_as_bad_signature(signed) -> None:  # noqa: ANN001
    m = signed["manifest"]
    env = _envelope(m)
    sig = base64.b64decode(env["signatures"][0]["sig"])
    for i in range(len(sig)):
        bad = bytearray(sig)
        bad[i] ^= 0x80
        _write(m, {**env, "signatures": [{**env["signatures"][0], "sig": base64.b64encode(bytes(bad)).decode()}]})
        with pytest.raises(VerificationError, match="bad signature"):
            mf.verify_manifest(m, signed["pub"])
    _write(m, {**env, "signatures": [{"keyid": env["signatures"][0]["keyid"], "sig": "AAAA"}]})
    with pytest.raises(VerificationError, match="malformed"):
        mf.verify_manifest(m, signed["pub"])


def test_flipped_characters_of_the_envelope_text_fail(signed) -> None:  # noqa: ANN001
    m = signed["manifest"]
    env = _envelope(m)
    text = env["payload"]
    for i in range(0, len(text), max(1, len(text) // 50)):
        c = text[i]
        swapped = "A" if c != "A" else "B"
        _write(m, {**env, "payload": text[:i] + swapped + text[i + 1:]})
        with pytest.raises(VerificationError):
            mf.verify_manifest(m, signed["pub"])


def test_payload_type_is_covered_by_the_signature(signed) -> None:  # noqa: ANN001
    m = signed["manifest"]
    env = _envelope(m)
    _write(m, {**env, "payloadType": "application/json"})
    with pytest.raises(VerificationError, match="bad signature"):
        mf.verify_manifest(m, signed["pub"])


def test_wrong_public_key_is_named(signed, tmp_path) -> None:  # noqa: ANN001
    _, other = mf.keygen(tmp_path / "other")
    with pytest.raises(VerificationError, match="wrong public key"):
        mf.verify_manifest(signed["manifest"], other)


def test_keyid_is_only_a_hint(signed) -> None:  # noqa: ANN001
    m = signed["manifest"]
    env = _envelope(m)
    _write(m, {**env, "signatures": [{**env["signatures"][0], "keyid": "someone-else"}]})
    mf.verify_manifest(m, signed["pub"])  # a valid signature passes whatever the hint says
    _write(m, {**env, "signatures": [{"sig": env["signatures"][0]["sig"]}]})
    mf.verify_manifest(m, signed["pub"])


def test_url_safe_base64_envelope_verifies(signed) -> None:  # noqa: ANN001
    m = signed["manifest"]
    env = _envelope(m)
    payload = base64.b64decode(env["payload"])
    sig = base64.b64decode(env["signatures"][0]["sig"])
    _write(m, {**env, "payload": base64.urlsafe_b64encode(payload).decode().rstrip("="),
               "signatures": [{"sig": base64.urlsafe_b64encode(sig).decode()}]})
    mf.verify_manifest(m, signed["pub"])


@pytest.mark.parametrize("name", ["summary.json", "differences.parquet", "snapshots.json"])
def test_a_changed_subject_file_is_named(signed, name: str) -> None:  # noqa: ANN001
    p = signed["dir"] / name
    p.write_bytes(p.read_bytes() + b" ")
    with pytest.raises(VerificationError, match=f"subject digest mismatch: {name}"):
        mf.verify_manifest(signed["manifest"], signed["pub"])


def test_a_changed_openlineage_event_is_named(signed) -> None:  # noqa: ANN001
    ev = next((signed["dir"] / "openlineage").glob("*-COMPLETE.json"))
    ev.write_text(ev.read_text().replace('"COMPLETE"', '"FAIL"'))
    with pytest.raises(VerificationError, match=f"subject digest mismatch: openlineage/{ev.name}"):
        mf.verify_manifest(signed["manifest"], signed["pub"])


def test_a_missing_subject_file_is_named(signed) -> None:  # noqa: ANN001
    (signed["dir"] / "summary.json").unlink()
    with pytest.raises(VerificationError, match="subject summary.json not found"):
        mf.verify_manifest(signed["manifest"], signed["pub"])


def test_snapshot_edited_with_its_digest_dropped_fails_root_recompute(signed, tmp_path) -> None:  # noqa: ANN001
    """A snapshot whose values were edited is caught by the root check, even in a --data directory
    that differs from the manifest's (digests are checked there first, so tamper a copy that
    carries a re-signed manifest: the root must still fail)."""
    d = signed["dir"]
    snap = d / "snapshot-target.parquet"
    frame = pl.read_parquet(snap)
    edited = frame.with_columns(pl.when(pl.col("id") == "k010").then(pl.lit("x")).otherwise(pl.col("name"))
                                .alias("name"))
    edited.write_parquet(snap)
    # re-sign with the same key so only the root check stands between the edit and acceptance
    env = _envelope(signed["manifest"])
    stmt = json.loads(base64.b64decode(env["payload"]))
    for s in stmt["subject"]:
        s["digest"]["sha256"] = mf.file_digest(d / s["name"])
    payload = json.dumps(stmt).encode()
    _write(signed["manifest"], mf.sign_envelope(payload, mf.load_private_key(signed["priv"])))
    mf.verify_manifest(signed["manifest"], signed["pub"])  # digests and signature alone pass
    with pytest.raises(VerificationError, match="root mismatch for the target side: snapshot snapshot-target.parquet hashes to"):
        mf.verify_manifest(signed["manifest"], signed["pub"], d)
    # a key text that no longer matches the key's value is named as an edit
    again = frame.with_columns(pl.when(pl.col("id") == "k010").then(pl.lit("k010x")).otherwise(pl.col("__key"))
                               .alias("__key"))
    again.write_parquet(snap)
    for s in stmt["subject"]:
        s["digest"]["sha256"] = mf.file_digest(d / s["name"])
    _write(signed["manifest"], mf.sign_envelope(json.dumps(stmt).encode(), mf.load_private_key(signed["priv"])))
    with pytest.raises(VerificationError, match="root mismatch for the target side: .*was edited"):
        mf.verify_manifest(signed["manifest"], signed["pub"], d)
    # the untouched snapshot, re-signed the same way, verifies: the failures above are the edits
    frame.write_parquet(snap)
    for s in stmt["subject"]:
        s["digest"]["sha256"] = mf.file_digest(d / s["name"])
    _write(signed["manifest"], mf.sign_envelope(json.dumps(stmt).encode(), mf.load_private_key(signed["priv"])))
    mf.verify_manifest(signed["manifest"], signed["pub"], d)


def test_not_an_envelope_and_missing_files_have_their_own_reasons(signed, tmp_path) -> None:  # noqa: ANN001
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(VerificationError, match="not a DSSE envelope"):
        mf.verify_manifest(bad, signed["pub"])
    bad.write_text('{"payload": "eA=="}')
    with pytest.raises(VerificationError, match="not a DSSE envelope"):
        mf.verify_manifest(bad, signed["pub"])
    with pytest.raises(UsageError, match="not found"):
        mf.verify_manifest(tmp_path / "nope.json", signed["pub"])
    with pytest.raises(UsageError, match="public key"):
        mf.verify_manifest(signed["manifest"], tmp_path / "nope.pub")


def test_manifest_needs_a_signing_key(diff_run, tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(UsageError, match="--signing-key"):
        record_diff_evidence(diff_run, config=load(None), manifest_path=tmp_path / "m.json")


# -- CLI -------------------------------------------------------------------------------------------
def _recon(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli.main", *args], capture_output=True, text=True, timeout=120)


def test_cli_manifest_verify_exit_codes_and_one_line_reason(signed, tmp_path) -> None:  # noqa: ANN001
    ok = _recon("manifest", "verify", str(signed["manifest"]), "--key", str(signed["pub"]),
                "--data", str(signed["dir"]), "--json")
    assert ok.returncode == 0, ok.stderr
    rep = json.loads(ok.stdout)
    assert rep["ok"] is True and set(rep["roots"]) == {"source", "target"}
    (signed["dir"] / "summary.json").write_text("{}")
    bad = _recon("manifest", "verify", str(signed["manifest"]), "--key", str(signed["pub"]))
    assert bad.returncode == 4
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert lines == [lines[0]] and lines[0].startswith("recon: error: subject digest mismatch: summary.json")
    gen = _recon("keygen", "--out", str(tmp_path / "k2"), "--json")
    assert gen.returncode == 0 and json.loads(gen.stdout)["keyid"]
    again = _recon("keygen", "--out", str(tmp_path / "k2"))
    assert again.returncode == 2 and "already exists" in again.stderr


# -- OpenLineage -----------------------------------------------------------------------------------
def test_openlineage_events_round_trip_through_the_client_model_classes(signed) -> None:  # noqa: ANN001
    from openlineage.client.event_v2 import RunEvent
    from openlineage.client.serde import Serde

    files = sorted((signed["dir"] / "openlineage").glob("*.json"))
    assert [f.name.rsplit("-", 1)[1] for f in files] == ["COMPLETE.json", "START.json"]
    run_ids = set()
    for f in files:
        text = f.read_text()
        data = json.loads(text)
        for k in ("eventTime", "producer", "schemaURL", "eventType", "run", "job"):
            assert data[k], k
        assert data["run"]["runId"] and data["job"]["namespace"] and data["job"]["name"] == "diff"
        run_ids.add(data["run"]["runId"])
        ev = ol.event_from_dict(data)
        assert isinstance(ev, RunEvent)
        assert Serde.to_json(ev) == text  # nothing lost, nothing added
        assert ev == ol.event_from_dict(json.loads(Serde.to_json(ev)))
    assert len(run_ids) == 1
    complete = json.loads(next(f for f in files if f.name.endswith("COMPLETE.json")).read_text())
    tgt = complete["inputs"][1]
    assert tgt["inputFacets"]["dataQualityMetrics"]["rowCount"] == 61
    assertions = {(a["assertion"], a.get("column")): a["success"]
                  for a in tgt["inputFacets"]["dataQualityAssertions"]["assertions"]}
    assert assertions[("no_mismatched_rows", None)] is False
    assert assertions[("column_matches_source", "amount")] is False
    assert assertions[("column_matches_source", "name")] is True
    assert {f["name"] for f in tgt["facets"]["schema"]["fields"]} == {"id", "amount", "name"}
    diffs = next(o for o in complete["outputs"] if o["name"].endswith("differences.parquet"))
    lineage = diffs["facets"]["columnLineage"]["fields"]
    assert {x["field"] for x in lineage["source_value"]["inputFields"]} == {"amount", "name"}
    assert "errorMessage" not in complete["run"]["facets"]


def test_failed_run_emits_a_fail_event_with_the_error_scrubbed(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from engine.app.evidence import record_evidence

    monkeypatch.setenv("SF_PASSWORD", "hunter2-secret-pw")
    inp = mf.describe_input("source", {"system": "postgresql", "dsn": "postgresql://u:hunter2-secret-pw@db.example:5433/w",
                                       "object": "s.t", "rows": 3, "snapshot_id": "0000-1", "extra": "dropped"})
    assert inp == {"side": "source", "system": "postgresql", "host": "db.example", "port": "5433", "database": "w",
                   "user": "u", "object": "s.t", "rows": 3, "snapshot_id": "0000-1"}
    info = record_evidence("diff", {"mismatched": 0}, [inp], [], ledger_dsn=None, manifest_path=None,
                           signing_key=None, config_digest="0" * 64, lineage_dir=tmp_path / "ol", status="FAIL",
                           error="Salesforce refused hunter2-secret-pw")
    assert [e["eventType"] for e in info["openlineage"]] == ["START", "FAIL"]
    fail = json.loads(Path(info["openlineage"][1]["path"]).read_text())
    assert fail["run"]["facets"]["errorMessage"]["message"] == "Salesforce refused ***"
    assert fail["inputs"][0]["namespace"] == "postgres://db.example:5433"
    assert "hunter2" not in json.dumps(info) + "".join(p.read_text() for p in (tmp_path / "ol").iterdir())


def _digest_of_copy(tmp_path: Path, edit: str | None, extra_file: str | None = None) -> dict:
    """transformation_digest() of a copy of the package, with one byte of ``edit`` changed."""
    import json
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    tree = tmp_path / "pkg"
    shutil.copytree(root / "engine", tree / "engine", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    if edit is not None:
        p = tree / "engine" / edit
        data = bytearray(p.read_bytes())
        assert data[:3] == b'"""'  # every module opens with its docstring: flip one letter of it
        data[3] = ord(chr(data[3]).swapcase()) if chr(data[3]).isalpha() else ord("x")
        p.write_bytes(bytes(data))
    if extra_file is not None:
        (tree / "engine" / extra_file).write_text("# not a transformation module\n")
    code = ("import json; from engine.evidence import manifest as mf; "
            "print(json.dumps(mf.transformation_digest()))")
    import os

    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(tree)},
                         capture_output=True, text=True, cwd=tree)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_transformation_digest_follows_the_bytes_of_the_listed_modules(tmp_path: Path) -> None:
    """Independent of the product's own function: one changed byte in a listed module changes the
    digest (and its file entry); a file that is not listed does not."""
    base = _digest_of_copy(tmp_path / "a", None)
    assert base == mf.transformation_digest()  # the copy is the package as it is
    for module in mf.TRANSFORMATION_MODULES:
        changed = _digest_of_copy(tmp_path / module.replace("/", "_"), module)
        assert changed["sha256"] != base["sha256"], module
        assert changed["files"][f"engine/{module}"] != base["files"][f"engine/{module}"]
        assert {k: v for k, v in changed["files"].items() if k != f"engine/{module}"} == \
               {k: v for k, v in base["files"].items() if k != f"engine/{module}"}
    unlisted = _digest_of_copy(tmp_path / "u", "core/errors.py", extra_file="core/unlisted_helper.py")
    assert unlisted == base
