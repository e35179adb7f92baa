"""Signed lineage manifests: an in-toto Statement v1 in a DSSE envelope signed with Ed25519.

Finance hands these to auditors, who must be able to check, with nothing but the public key and the
files, that a number came from where recon says it did and that nothing changed afterwards. So:

* the **subjects** are the output files, each with its SHA-256 digest (names relative to the
  manifest, so the bundle can be moved and checked anywhere);
* the **predicate** (``https://recon.dev/reconciliation/v1``) records the inputs without
  credentials (Salesforce org, instance, API version, user, SOQL, Bulk job ids, extraction time, row
  count, Merkle root and boundaries digest; PostgreSQL host, database, table, snapshot id, server
  time, row count, Merkle root; Kafka topic and offset ranges), the config digest, the recon version,
  a digest of the transformation code, the results, the latest ledger checkpoint and the digests of
  the OpenLineage events it covers (OpenLineage has no integrity facet of its own);
* the envelope is DSSE v1: the signature is over ``PAE(payloadType, payload)``, so the type cannot
  be swapped; after verification only the verified bytes are used; ``keyid`` is a hint, never a
  security decision; standard and URL-safe base64 are both accepted.
* ``payloadSha256`` next to the DSSE fields is an *unsigned* diagnostic hint: when the signature
  fails it tells "the payload was changed" apart from "the signature was changed". It is never
  trusted for anything else.

With ``--data DIR`` the verifier also recomputes each side's Merkle root from the canonical
snapshots (:func:`write_snapshots`) with ``engine.core.merkle``, the same code the diff used.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.connectors.files.connector import file_digest  # noqa: F401  (used by callers as manifest.file_digest)
from engine.core.errors import UsageError, VerificationError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    from engine.app.reconcile import DiffRun

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://recon.dev/reconciliation/v1"
PRIVATE_KEY_NAME = "recon.key"
PUBLIC_KEY_NAME = "recon.pub"
TRANSFORMATION_MODULES = ("core/normalize.py", "core/ids.py", "core/merkle.py", "core/diff.py")
SNAPSHOT_SIDECAR = "snapshots.json"
NO_SNAPSHOTS = "the manifest records no snapshots: Merkle roots not recomputed"


# -- DSSE ------------------------------------------------------------------------------------------
def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 Pre-Authentication Encoding: ``DSSEv1 SP LEN(type) SP type SP LEN(body) SP body``."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def b64decode_any(text: str) -> bytes:
    """Standard or URL-safe base64, padded or not (DSSE allows either)."""
    if not isinstance(text, str):
        raise ValueError("not a base64 string")
    s = text.strip().replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    return base64.b64decode(s, validate=True)


# -- keys ------------------------------------------------------------------------------------------
def keygen(out_dir: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Write ``recon.key`` (PKCS#8 PEM, created with mode 0600: never readable by others, not even
    for an instant) and ``recon.pub`` (SubjectPublicKeyInfo PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out / PRIVATE_KEY_NAME, out / PUBLIC_KEY_NAME
    if not force and (priv_path.exists() or pub_path.exists()):
        raise UsageError(f"{priv_path} or {pub_path} already exists: choose another directory or remove them first",
                         field="out")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if force else os.O_EXCL)
    if force:
        priv_path.unlink(missing_ok=True)
    fd = os.open(priv_path, flags, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(priv_path, 0o600)
    pub_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv_path, pub_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    p = Path(path)
    try:
        mode = p.stat().st_mode
        data = p.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"signing key {p} not found: create one with `recon keygen --out DIR`") from None
    except OSError as exc:
        raise UsageError(f"signing key {p} is unreadable: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"signing key {p} is readable by other users: chmod 600 {p}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise UsageError(f"signing key {p} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"signing key {p} is not an Ed25519 key: create one with `recon keygen --out DIR`")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"public key {p} not found") from None
    except OSError as exc:
        raise UsageError(f"public key {p} is unreadable: {exc.strerror}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise UsageError(f"public key {p} is not a PEM public key (use the recon.pub from `recon keygen`)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"public key {p} is not an Ed25519 key")
    return key


def key_id(pub: Ed25519PublicKey) -> str:
    """SHA-256 of the raw public key, hex: a hint to pick a key, never proof of anything."""
    from cryptography.hazmat.primitives import serialization

    return hashlib.sha256(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).hexdigest()


# -- envelopes -------------------------------------------------------------------------------------
def sign_envelope(payload: bytes, key: Ed25519PrivateKey, payload_type: str = PAYLOAD_TYPE) -> dict[str, Any]:
    sig = key.sign(pae(payload_type, payload))
    return {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": payload_type,
        "signatures": [{"keyid": key_id(key.public_key()), "sig": base64.b64encode(sig).decode()}],
        "payloadSha256": hashlib.sha256(payload).hexdigest(),
    }


def open_envelope(envelope: Any, pub: Ed25519PublicKey, *, where: str = "manifest") -> tuple[bytes, str]:
    """Verify a DSSE envelope; return (the verified payload bytes, payloadType).

    Raises VerificationError naming the reason: wrong key, payload tampered, bad signature.
    """
    from cryptography.exceptions import InvalidSignature

    if not isinstance(envelope, dict) or not {"payload", "payloadType", "signatures"} <= set(envelope):
        raise VerificationError(f"{where} is not a DSSE envelope (payload, payloadType, signatures)")
    ptype = envelope["payloadType"]
    sigs = envelope["signatures"]
    if not isinstance(ptype, str) or not isinstance(sigs, list) or not sigs:
        raise VerificationError(f"{where} is not a DSSE envelope: no signatures")
    try:
        payload = b64decode_any(envelope["payload"])
    except (ValueError, binascii.Error):
        raise VerificationError(f"{where}: payload tampered: it is not valid base64") from None
    message = pae(ptype, payload)
    malformed = 0
    for s in sigs:
        try:
            sig = b64decode_any(s.get("sig", "")) if isinstance(s, dict) else b""
        except (ValueError, binascii.Error):
            sig = b""
        if len(sig) != 64:
            malformed += 1
            continue
        try:
            pub.verify(sig, message)
            return payload, ptype
        except InvalidSignature:
            continue
    mine = key_id(pub)
    hints = [s.get("keyid") for s in sigs if isinstance(s, dict)]
    if hints and all(isinstance(h, str) and h for h in hints) and mine not in hints:
        raise VerificationError(f"{where}: wrong public key: it was signed by key id {hints[0][:16]}…, "
                                f"the given key has id {mine[:16]}…")
    hint = envelope.get("payloadSha256")
    if isinstance(hint, str) and hint != hashlib.sha256(payload).hexdigest():
        raise VerificationError(f"{where}: payload tampered: it changed after it was signed")
    if malformed == len(sigs):
        raise VerificationError(f"{where}: bad signature: the signature value is malformed")
    raise VerificationError(f"{where}: bad signature: it does not verify for this payload and key "
                            "(the signature or the payload was altered)")


# -- digests ---------------------------------------------------------------------------------------
def transformation_digest() -> dict[str, Any]:
    """SHA-256 over the source of the modules that turn rows into canonical bytes, ids, hashes and
    differences: a changed normalization changes this digest, so a result can be tied to the exact
    code that produced it. Each file contributes ``name NUL length NUL bytes``."""
    base = Path(__file__).resolve().parents[1]  # engine/
    h = hashlib.sha256(b"recon-transformation-v1\n")
    files = {}
    for name in TRANSFORMATION_MODULES:
        data = (base / name).read_bytes()
        files[f"engine/{name}"] = hashlib.sha256(data).hexdigest()
        h.update(f"engine/{name}".encode() + b"\x00" + str(len(data)).encode() + b"\x00" + data)
    return {"sha256": h.hexdigest(), "files": files}


# -- inputs (no credentials) -----------------------------------------------------------------------


def describe_input(side: str, meta: dict[str, Any], *, merkle_root: str | None = None,
                   boundaries_digest: str | None = None, encoding_version: int | None = None) -> dict[str, Any]:
    """One input for the manifest and the ledger, from a source's extraction metadata.

    Allow-listed by the system's connector (:meth:`engine.connectors.base.Connector.provenance`), so a
    field a source adds later (which might hold a secret) never reaches the evidence unnoticed;
    PostgreSQL DSNs become host/port/database/user. A system no connector knows keeps only its
    object and row count.
    """
    from engine.connectors.registry import connector_class

    system = str(meta.get("system") or "unknown")
    out: dict[str, Any] = {"side": side, "system": system}
    conn = connector_class(system)
    if conn is not None:
        out.update(conn.provenance(meta))
    else:
        out.update({k: meta[k] for k in ("object", "rows") if meta.get(k) is not None})
    if merkle_root is not None:
        out["merkle_root"] = merkle_root
    if boundaries_digest is not None:
        out["boundaries_digest"] = boundaries_digest
    if encoding_version is not None:
        out["encoding_version"] = encoding_version
    return out


def inputs_from_run(run: DiffRun) -> list[dict[str, Any]]:
    """The two inputs of a diff, with the Merkle root each side hashed to."""
    m = run.result.summary()["merkle"]
    return [
        describe_input("source", run.source_meta, merkle_root=m["source_root"],
                       boundaries_digest=m["boundaries_digest"], encoding_version=m["encoding_version"]),
        describe_input("target", run.target_meta, merkle_root=m["target_root"],
                       boundaries_digest=m["boundaries_digest"], encoding_version=m["encoding_version"]),
    ]


# -- canonical snapshots ---------------------------------------------------------------------------
def write_snapshots(run: DiffRun, out_dir: Path) -> list[Path]:
    """Each side's canonical frame as Parquet (typed canonical columns and ``__key``) and a
    JSON sidecar with the boundaries and field types, so anyone can recompute both Merkle roots."""
    from engine.core.normalize import ENCODING_VERSION, decimal_view

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seg = run.result.segmentation
    m = run.result.summary()["merkle"]
    sides: dict[str, Any] = {}
    paths = []
    for side, canon, root in (("source", run.source_canonical, m["source_root"]),
                              ("target", run.target_canonical, m["target_root"])):
        p = out / f"snapshot-{side}.parquet"
        if canon is not None:
            decimal_view(canon.frame, canon.fields).write_parquet(p)  # decimals as values, whatever their form
            fields, rows = canon.fields, canon.frame.height
        else:  # a key-range run: its parts, concatenated in key order by the run (see concat_snapshot_parts)
            part = run.snapshot_parts[side]
            shutil.move(str(part), p)
            with contextlib.suppress(OSError):
                part.parent.rmdir()
            fields, rows = run.fields if side == "source" else _target_fields(run), run.profile(side)[0]
        paths.append(p)
        sides[side] = {
            "file": p.name, "rows": rows, "merkle_root": root,
            "fields": [{"name": f.name, "column": f.column, "kind": f.ctype.kind, "scale": f.ctype.scale,
                        "precision": f.ctype.precision, "key": f.is_key} for f in fields],
        }
    sidecar = out / SNAPSHOT_SIDECAR
    sidecar.write_text(json.dumps({
        "encoding_version": ENCODING_VERSION, "boundaries": list(seg.boundaries),
        "boundaries_digest": seg.digest, "sides": sides}, indent=2, sort_keys=True) + "\n")
    paths.append(sidecar)
    return paths


def _target_fields(run: DiffRun) -> tuple[Any, ...]:
    """The target's field specs: the source's, with the target's column names (as the diff built them)."""
    from dataclasses import replace

    pairs = {a.lower(): b for a, b in (*run.request.keys, *run.request.columns)}
    return tuple(replace(f, column=pairs.get(f.column.lower(), f.column)) for f in run.fields)


def concat_snapshot_parts(parts_dir: Path, out: Path) -> Path:
    """One snapshot file from a key-range run's parts (``part-NNNNN.parquet``, in key order),
    streamed row group by row group: the whole side is never in memory."""
    import pyarrow.parquet as pq

    parts = sorted(Path(parts_dir).glob("part-*.parquet"))
    if not parts:
        raise RuntimeError(f"no snapshot parts in {parts_dir}")
    writer = None
    try:
        for p in parts:
            f = pq.ParquetFile(p)
            for i in range(f.num_row_groups):
                t = f.read_row_group(i)
                if writer is None:
                    writer = pq.ParquetWriter(out, t.schema)
                writer.write_table(t.cast(writer.schema))
            if f.num_row_groups == 0 and writer is None:
                writer = pq.ParquetWriter(out, f.schema_arrow)
    finally:
        if writer is not None:
            writer.close()
    return out


def _recompute_roots(sidecar_path: Path, base: Path, inputs: list[dict[str, Any]]) -> dict[str, str]:
    import polars as pl

    from engine.core import merkle
    from engine.core.normalize import (
        SUPPORTED_ENCODINGS,
        ColumnType,
        FieldSpec,
        SideOptions,
        key_expr,
        row_text,
        typed,
    )

    try:
        meta = json.loads(sidecar_path.read_text())
        boundaries = tuple(meta["boundaries"])
        sides = meta["sides"]
    except (OSError, ValueError, KeyError, TypeError):
        raise VerificationError(f"snapshot sidecar {sidecar_path.name} is unreadable") from None
    seg = merkle.Segmentation(boundaries)
    by_side = {i.get("side"): i for i in inputs}
    roots = {}
    for side, info in sorted(sides.items()):
        claimed = by_side.get(side, {})
        if claimed.get("boundaries_digest") and claimed["boundaries_digest"] != seg.digest:
            raise VerificationError(f"root mismatch for the {side} side: the snapshot's boundaries digest "
                                    f"{seg.digest[:16]}… differs from the manifest's")
        path = base / info["file"]
        try:
            frame = pl.read_parquet(path)
        except (OSError, pl.exceptions.PolarsError):
            raise VerificationError(f"snapshot {info['file']} is missing or unreadable in {base}") from None
        version = meta.get("encoding_version")
        if version not in SUPPORTED_ENCODINGS:
            raise VerificationError(f"snapshot sidecar {sidecar_path.name} uses canonical encoding {version!r}; "
                                    f"this recon verifies versions {', '.join(map(str, SUPPORTED_ENCODINGS))}")
        try:
            fields = tuple(FieldSpec(f["name"], f["name"], ColumnType(f["kind"], f.get("scale"),
                                                                      f.get("precision") or "us"), None, bool(f["key"]))
                           for f in info["fields"])
            # re-type from the stored values: the root then proves the values, whatever the file's dtypes
            frame = frame.with_columns(typed(frame[f.name], f.ctype, SideOptions()).alias(f.name) for f in fields)
        except (KeyError, TypeError, ValueError, pl.exceptions.PolarsError):
            raise VerificationError(f"snapshot {info['file']} does not hold the fields its sidecar names") from None
        again = frame.select(key_expr(fields).alias("k"))["k"]
        if not again.equals(frame["__key"]):
            raise VerificationError(f"root mismatch for the {side} side: snapshot {info['file']} was edited "
                                    "(its keys do not match its values)")
        if version == 1:
            rows = frame.select(row_text(fields).alias("r"))["r"]
            if "__row" in frame.columns and not rows.equals(frame["__row"]):
                raise VerificationError(f"root mismatch for the {side} side: snapshot {info['file']} was edited "
                                        "(its canonical rows do not match its values)")
            digests, counts = merkle.hash_rows_v1(rows, merkle.segment_counts(frame["__key"], seg))
            tree = merkle.build_tree(digests, counts)
        else:
            tree, _ = merkle.side_tree(frame, fields, seg)
        want = claimed.get("merkle_root") or info.get("merkle_root")
        if tree.root_hex != want:
            raise VerificationError(f"root mismatch for the {side} side: snapshot {info['file']} hashes to "
                                    f"{tree.root_hex[:16]}…, the manifest says {str(want)[:16]}…")
        if claimed.get("rows") is not None and int(claimed["rows"]) != frame.height:
            raise VerificationError(f"root mismatch for the {side} side: snapshot {info['file']} holds "
                                    f"{frame.height} rows, the manifest says {claimed['rows']}")
        roots[side] = tree.root_hex
    return roots


# -- writing ---------------------------------------------------------------------------------------
def subject_name(path: Path, base: Path) -> str:
    """A subject's name: its path relative to the manifest's directory, with forward slashes."""
    return Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix()


def build_statement(subjects: list[dict[str, Any]], predicate: dict[str, Any]) -> dict[str, Any]:
    return {"_type": STATEMENT_TYPE, "subject": subjects, "predicateType": PREDICATE_TYPE, "predicate": predicate}


def write_manifest(path: Path, outputs: list[Path], predicate: dict[str, Any], signing_key: Path) -> dict[str, Any]:
    """Sign a Statement over ``outputs`` and write the DSSE envelope to ``path`` (atomically)."""
    key = load_private_key(signing_key)
    path = Path(path)
    base = path.resolve().parent
    base.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    subjects = []
    for o in outputs:
        name = subject_name(o, base)
        if name in seen or Path(o).resolve() == path.resolve():
            continue
        seen.add(name)
        subjects.append({"name": name, "digest": {"sha256": file_digest(Path(o))}})
    statement = build_statement(subjects, predicate)
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    envelope = sign_envelope(payload, key)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(envelope, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return {"path": str(path), "sha256": file_digest(path), "keyid": envelope["signatures"][0]["keyid"],
            "subjects": subjects}


# -- verifying -------------------------------------------------------------------------------------
#: The checks of :func:`verify_manifest`, in the order it makes them; a failure names the one that failed.
CHECKS = ("signature", "subjects", "roots")


class ManifestCheckFailed(VerificationError):
    """A manifest failed one of :data:`CHECKS` (``check``). A VerificationError like any other (exit 4);
    the name lets a reader such as the report's Proof section say which check failed, and that the
    later ones were never made, without parsing the message."""

    def __init__(self, message: str, check: str) -> None:
        super().__init__(message)
        self.check = check


@contextmanager
def _check(name: str) -> Iterator[None]:
    try:
        yield
    except ManifestCheckFailed:
        raise
    except VerificationError as exc:
        raise ManifestCheckFailed(str(exc), name) from None


@dataclass
class ManifestReport:
    """What `recon manifest verify` checked (only produced when everything passed)."""

    manifest: str
    keyid: str
    predicate_type: str
    subjects: list[dict[str, Any]] = field(default_factory=list)
    roots: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    statement: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return True

    def to_dict(self, *, with_statement: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = True
        if not with_statement:
            d.pop("statement")
            pred = self.statement.get("predicate", {})
            d["run"] = {k: pred.get(k) for k in ("run_id", "command", "recon_version", "config_digest")}
        return d


def verify_manifest(path: Path, pubkey_path: Path, data_dir: Path | None = None) -> ManifestReport:
    """Check the signature, then every subject's digest against the files next to the manifest (or in
    ``data_dir``), and with ``data_dir`` recompute the Merkle roots from the snapshots in it.

    Raises ManifestCheckFailed (a VerificationError) with the specific reason and the check that
    failed on any failure.
    """
    path = Path(path)
    pub = load_public_key(pubkey_path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"manifest {path} not found") from None
    with _check("signature"):
        statement = _signed_statement(path, raw, pub)
    report = ManifestReport(manifest=str(path), keyid=key_id(pub), predicate_type=PREDICATE_TYPE,
                            statement=statement)
    bases = [Path(data_dir)] if data_dir else []
    bases.append(path.resolve().parent)
    with _check("subjects"):
        _check_subjects(path, statement, bases, report)
    pred = statement.get("predicate") or {}
    if data_dir is not None:
        with _check("roots"):
            _check_roots(pred, bases, data_dir, report)
    return report


def _signed_statement(path: Path, raw: bytes, pub: Ed25519PublicKey) -> dict[str, Any]:
    """The signature check: the envelope's signature, then the verified payload's form."""
    try:
        envelope = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise VerificationError(f"manifest {path.name} is not a DSSE envelope (not JSON)") from None
    payload, ptype = open_envelope(envelope, pub, where=f"manifest {path.name}")
    if ptype != PAYLOAD_TYPE:
        raise VerificationError(f"manifest {path.name}: unexpected payloadType {ptype!r} (want {PAYLOAD_TYPE})")
    try:
        statement = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise VerificationError(f"manifest {path.name}: the signed payload is not JSON") from None
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise VerificationError(f"manifest {path.name}: the payload is not an in-toto Statement v1")
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise VerificationError(f"manifest {path.name}: unknown predicateType {statement.get('predicateType')!r}")
    return statement


def _check_subjects(path: Path, statement: dict[str, Any], bases: list[Path], report: ManifestReport) -> None:
    for s in statement.get("subject") or []:
        name = s.get("name") if isinstance(s, dict) else None
        want = (s.get("digest") or {}).get("sha256") if isinstance(s, dict) else None
        if not isinstance(name, str) or not isinstance(want, str):
            raise VerificationError(f"manifest {path.name}: malformed subject {s!r}")
        found = next((b / name for b in bases if (b / name).is_file()), None)
        if found is None:
            raise VerificationError(f"subject {name} not found in {' or '.join(str(b) for b in bases)}")
        got = file_digest(found)
        if got != want:
            raise VerificationError(f"subject digest mismatch: {name} has sha256 {got[:16]}…, "
                                    f"the manifest says {want[:16]}…")
        report.subjects.append({"name": name, "sha256": got, "file": str(found)})


def _check_roots(pred: dict[str, Any], bases: list[Path], data_dir: Path, report: ManifestReport) -> None:
    snaps = pred.get("snapshots") or {}
    sidecar_name = snaps.get("sidecar") if isinstance(snaps, dict) else None
    if not sidecar_name:
        report.notes.append(NO_SNAPSHOTS)
        return
    sidecar = next((b / sidecar_name for b in bases if (b / sidecar_name).is_file()), None)
    if sidecar is None:
        raise VerificationError(f"snapshot sidecar {sidecar_name} not found in {data_dir}")
    if not any(x["name"] == sidecar_name for x in report.subjects):
        raise VerificationError(f"snapshot sidecar {sidecar_name} is not a subject of the manifest")
    report.roots = _recompute_roots(sidecar, sidecar.parent, list(pred.get("inputs") or []))
