"""The proof commands' use cases: `recon keygen`, `recon ledger init|verify|checkpoint` and
`recon manifest verify`. Each is one call into the ledger store or the manifest module; they sit
here so that the CLI reaches the ledger and the keys only through app, like every other command.
:func:`report_proof` makes the same checks for `recon report`, whose Proof section renders them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine import workspace
from engine.core.errors import UsageError
from engine.evidence import manifest as mf
from engine.store import ledger as lg


def keygen(out: Path, *, force: bool = False) -> dict[str, Any]:
    """Write ``recon.key`` (0600) and ``recon.pub``; returns their paths and the key id."""
    priv, pub = mf.keygen(out, force=force)
    return {"private_key": str(priv), "public_key": str(pub), "keyid": mf.key_id(mf.load_public_key(pub))}


def ledger_init(dsn: str, *, writer: str | None = None, passfile: Path | None = None) -> dict[str, Any]:
    """Create (or refresh the grants of) the ``recon_audit`` ledger. ``passfile`` (here and below):
    the libpq password file of the connection (``Config.pg_passfile``)."""
    with lg.Ledger(dsn, passfile=passfile) as ledger:
        return ledger.init(writer=writer)


def ledger_verify(dsn: str, *, checkpoint: Path | None = None, key: Path | None = None,
                  passfile: Path | None = None) -> lg.VerifyReport:
    """Recompute the chain and the checkpoints (and an exported checkpoint or manifest)."""
    return lg.verify(dsn, checkpoint_file=checkpoint, pubkey=key, passfile=passfile)


def ledger_checkpoint(dsn: str, out: Path, signing_key: Path, *, passfile: Path | None = None) -> lg.Checkpoint:
    """Take a checkpoint and export it as a signed note at ``out``."""
    with lg.Ledger(dsn, passfile=passfile) as ledger:
        return ledger.export_checkpoint(out, signing_key)


def manifest_verify(path: Path, key: Path, data: Path | None = None) -> mf.ManifestReport:
    """Signature, subjects' digests and (with ``data``) both Merkle roots of a manifest."""
    return mf.verify_manifest(path, key, data)


# -- the report's Proof section ------------------------------------------------------------------
#: The checks the Proof section lists for each manifest, in the order verify_manifest makes them.
MANIFEST_CHECKS = {"signature": "signature", "subjects": "subject digests", "roots": "Merkle roots"}
NO_KEY = "not checked: no --key PUB given"
NO_LEDGER = "not checked: no --ledger DSN given (nor RECON_LEDGER_DSN, nor [ledger] dsn)"


def report_proof(run_dir: Path, *, pubkey: Path | None, ledger_dsn: str | None, checkpoint: Path | None = None,
                 passfile: str | Path | None = None) -> dict[str, Any]:
    """What `recon report` proves about a run directory, as plain data for its Proof section.

    Every check is one the proof commands make (``manifest_verify`` with the snapshots' directory,
    ``ledger_verify`` with the checkpoint): the report renders their outcome and verifies nothing
    itself. A check that could not be made is listed as ``not checked`` with the reason, never as
    passed; one that failed carries the verifier's message. Raises UsageError for ``--checkpoint``
    without a ledger, and whatever the ledger raises when it cannot be read (exit 2 or 5)."""
    run_dir = Path(run_dir)
    if checkpoint is not None and not ledger_dsn:
        raise UsageError("--checkpoint FILE is checked against the ledger's chain: also give --ledger DSN "
                         "(or set RECON_LEDGER_DSN, or [ledger] dsn in recon.toml)")
    key = None
    if pubkey is not None:
        key = {"file": str(pubkey), "fingerprint": mf.key_id(mf.load_public_key(pubkey))}
    checks: list[dict[str, str]] = []
    for manifest in _manifests(run_dir):
        checks += _manifest_checks(run_dir, manifest, pubkey)
    checks += _ledger_checks(ledger_dsn, checkpoint, pubkey, passfile)
    statuses = {c["status"] for c in checks}
    status = "failed" if "failed" in statuses else "passed" if "ok" in statuses else "none"
    return {"status": status, "key": key, "checks": checks}


def _manifests(run_dir: Path) -> list[Path]:
    """The signed manifest of the run directory itself (where `recon cost` signs cost.json), of each
    step's directory, even one that has none (to say it was not checked), and of any other directory
    that holds one."""
    run = workspace.RunDirectory(run_dir)
    steps = [run.diff.dir, run.explain.dir, run.repair_dir, run.diff_after.dir]
    found = [workspace.manifest_path(run_dir)] if workspace.manifest_path(run_dir).is_file() else []
    found += [workspace.manifest_path(d) for d in steps if d.is_dir()]
    found += [workspace.manifest_path(d) for d in sorted(run_dir.iterdir())
              if d.is_dir() and d not in steps and workspace.manifest_path(d).is_file()]
    return found


def _manifest_checks(run_dir: Path, manifest: Path, pubkey: Path | None) -> list[dict[str, str]]:
    name = manifest.relative_to(run_dir).as_posix()
    rows = {c: {"subject": name, "check": label, "status": "not checked", "detail": NO_KEY}
            for c, label in MANIFEST_CHECKS.items()}
    if not manifest.is_file():
        for r in rows.values():
            r["detail"] = "not checked: its run signed no manifest here"
        return list(rows.values())
    if pubkey is None:
        return list(rows.values())
    try:
        rep = manifest_verify(manifest, pubkey, manifest.parent)
    except mf.ManifestCheckFailed as exc:
        failed = list(MANIFEST_CHECKS).index(exc.check)
        for i, c in enumerate(MANIFEST_CHECKS):
            if i < failed:
                rows[c].update(status="ok", detail="passed")
            elif i == failed:
                rows[c].update(status="failed", detail=str(exc))
            else:
                rows[c]["detail"] = f"not checked: the {MANIFEST_CHECKS[exc.check]} check failed first"
        return list(rows.values())
    rows["signature"].update(status="ok", detail=f"Ed25519 signature valid for key {rep.keyid[:16]}…")
    files = ", ".join(s["name"] for s in rep.subjects)
    rows["subjects"].update(status="ok", detail=f"{len(rep.subjects)} file(s) have the SHA-256 it signed: {files}")
    if rep.roots:
        rows["roots"].update(status="ok", detail="recomputed from the snapshots, equal to the signed roots: "
                             + "; ".join(f"{side} {root}" for side, root in sorted(rep.roots.items())))
    else:
        rows["roots"]["detail"] = "not checked: no snapshot was written with this run"
    return list(rows.values())


def _ledger_checks(dsn: str | None, checkpoint: Path | None, pubkey: Path | None,
                   passfile: str | Path | None) -> list[dict[str, str]]:
    from engine.core.errors import VerificationError

    chain = {"subject": "ledger", "check": "hash chain", "status": "not checked", "detail": NO_LEDGER}
    cp = {"subject": "ledger", "check": "checkpoint", "status": "not checked",
          "detail": "not checked: no --checkpoint FILE given, so a dropped tail or a consistent rewrite would not show"}
    if not dsn:
        cp["detail"] = NO_LEDGER
        return [chain, cp]
    try:
        rep = ledger_verify(dsn, checkpoint=checkpoint, key=pubkey, passfile=passfile)
    except VerificationError as exc:  # the checkpoint file itself (its signature): the chain is still worth checking
        cp.update(status="failed", detail=str(exc))
        rep = ledger_verify(dsn, key=pubkey, passfile=passfile)
        checkpoint = None
    where = f"{rep.ledger}: " if rep.ledger else ""
    if rep.ok:
        tables = ", ".join(f"{t} {n}" for t, n in sorted(rep.tables.items()))
        chain.update(status="ok", detail=f"{where}{rep.rows} rows recomputed ({tables}), {rep.checkpoints_checked} "
                                         f"stored checkpoint(s) match; head {rep.head}")
    else:
        chain.update(status="failed", detail=f"{where}" + "; ".join(rep.problems))
    ext = rep.external_checkpoint
    if checkpoint is not None and ext is not None:
        signed = ("its signature verified with the key above" if ext["signature_verified"]
                  else "its signature NOT checked (no --key PUB)")
        if rep.ok:
            cp.update(status="ok", detail=f"{ext['file']}: the first {ext['size']} rows have its root "
                                          f"{ext['root']}; {signed}")
        else:
            cp.update(status="failed", detail=f"{ext['file']} (size {ext['size']}, root {ext['root']}): the ledger "
                                              f"does not verify up to it: {rep.reason}")
    return [chain, cp]
