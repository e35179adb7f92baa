"""The proof commands' use cases: `recon keygen`, `recon ledger init|verify|checkpoint` and
`recon manifest verify`. Each is one call into the ledger store or the manifest module; they sit
here so that the CLI reaches the ledger and the keys only through app, like every other command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
