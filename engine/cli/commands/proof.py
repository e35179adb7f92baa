"""Proof commands: `recon keygen`, `recon ledger init|verify|checkpoint`, `recon manifest verify`.

Exit codes follow the contract: 0 verified, 4 verification failed (the reason on one line), 2 usage
(missing file, bad key, no DSN), 5 database unreachable. Heavy modules load inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from engine.cli._shared import naming_options
from engine.cli.options import JsonFlag

DsnOpt = Annotated[str | None, typer.Option(
    "--dsn", envvar="RECON_LEDGER_DSN", show_envvar=True,
    help="Ledger database (libpq URI; password from PGPASSWORD/PGPASSFILE, never needed in the URI).")]
ConfigOpt = Annotated[Path | None, typer.Option("-C", "--config", help="recon.toml (its ledger dsn).")]


def _ledger(dsn: str | None, config: Path | None) -> tuple[str, Path | None]:
    """The ledger's DSN (--dsn, RECON_LEDGER_DSN or the config's) and the password file of its
    connection (the config's [postgres] passfile unless the environment names one)."""
    from engine import config as config_mod
    from engine.app.evidence import resolve_ledger_dsn
    from engine.core.errors import UsageError

    cfg = config_mod.load(config) if config else None
    found = resolve_ledger_dsn(dsn, cfg)
    if not found:
        raise UsageError("no ledger database: pass --dsn DSN, set RECON_LEDGER_DSN or put dsn in [ledger] of recon.toml")
    return found, cfg.pg_passfile() if cfg is not None else None


def _say(line: str) -> None:
    """One unwrapped line on stdout, no markup (paths and DSNs may contain brackets)."""
    from engine.cli._shared import out

    out.print(line, soft_wrap=True, markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    ledger_app = typer.Typer(no_args_is_help=True, help="The append-only, hash-chained recon_audit ledger.")
    manifest_app = typer.Typer(no_args_is_help=True, help="Signed lineage manifests (in-toto / DSSE).")
    app.add_typer(ledger_app, name="ledger")
    app.add_typer(manifest_app, name="manifest")

    @app.command("keygen")
    def keygen_cmd(
        out: Annotated[Path, typer.Option("--out", help="Directory for recon.key (mode 0600) and recon.pub.")],
        force: Annotated[bool, typer.Option("--force", help="Replace an existing key pair.")] = False,
        as_json: JsonFlag = False,
    ) -> None:
        """Create an Ed25519 signing key pair for manifests and ledger checkpoints."""
        from engine.app import proof
        from engine.cli._shared import emit_json

        with naming_options(out="--out"):
            info = proof.keygen(out, force=force)
        priv, pub = info["private_key"], info["public_key"]
        if as_json:
            emit_json(info)
        else:
            _say(f"signing key  {priv} (keep it secret; mode 0600)")
            _say(f"public key   {pub} (give it to whoever verifies)")
            _say(f"key id       {info['keyid']}")

    @ledger_app.command("init")
    def ledger_init(
        dsn: DsnOpt = None,
        writer: Annotated[str | None, typer.Option(
            "--writer", help="Login role that will append: not the connecting administrator, no SUPERUSER or "
            "CREATEROLE, no membership leading to the owner. Needed on a new ledger; an existing one keeps its "
            "writers.")] = None,
        config: ConfigOpt = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Create the recon_audit schema, its roles, append-only triggers, the SQL guard and the genesis row, as
        an administrator (CREATEROLE); rerun to upgrade an existing ledger (idempotent)."""
        from engine.app import proof
        from engine.cli._shared import emit_json

        where, passfile = _ledger(dsn, config)
        with naming_options(writer="--writer"):
            info = proof.ledger_init(where, writer=writer, passfile=passfile)
        if as_json:
            emit_json(info)
        else:
            verb = "created" if info["created"] else "already initialised; grants refreshed"
            _say(f"ledger {info['origin']} {verb}")
            _say(f"owner {info['owner']} (NOLOGIN); {', '.join(info['writers'])} may append via "
                 f"{info['writer_role']}; {info['admin']} may read via {info['reader_role']}")
            for role in info["revoked"]:
                _say(f"{role} no longer writes: the role that runs init must not be the writer")

    @ledger_app.command("verify")
    def ledger_verify(
        dsn: DsnOpt = None,
        checkpoint: Annotated[Path | None, typer.Option(
            "--checkpoint", help="An exported checkpoint note or a signed manifest: also detects a dropped tail or "
            "a rewrite.")] = None,
        key: Annotated[Path | None, typer.Option("--key", help="Public key that signed the checkpoint (recon.pub).")] = None,
        config: ConfigOpt = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Recompute the hash chain and every checkpoint; exit 4 naming the first broken row."""
        from engine.app import proof
        from engine.cli._shared import emit_json
        from engine.core.errors import VerificationError

        try:
            where, passfile = _ledger(dsn, config)
            with naming_options(key="--key PUBFILE"):
                report = proof.ledger_verify(where, checkpoint=checkpoint, key=key, passfile=passfile)
        except VerificationError as exc:
            if as_json:
                emit_json({"ok": False, "reason": str(exc)})
            raise
        if as_json:
            emit_json(report.to_dict())
        elif report.ok:
            tables = ", ".join(f"{t} {n}" for t, n in sorted(report.tables.items()))
            _say(f"ledger OK: {report.rows} rows ({tables}); {report.checkpoints_checked} stored "
                 f"checkpoint(s) match; head {report.head}")
            if report.external_checkpoint:
                ext = report.external_checkpoint
                signed = "signature verified" if ext["signature_verified"] else "signature NOT checked"
                _say(f"checkpoint {ext['file']} (size {ext['size']}) matches; {signed}")
            for n in report.notes:
                _say(f"note: {n}")
        if not report.ok:
            raise VerificationError(f"ledger verification failed: {report.reason}")

    @ledger_app.command("checkpoint")
    def ledger_checkpoint(
        out: Annotated[Path, typer.Option("--out", help="Where to write the signed checkpoint note.")],
        signing_key: Annotated[Path, typer.Option("--signing-key", help="recon.key from `recon keygen`.")],
        dsn: DsnOpt = None,
        config: ConfigOpt = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Take a checkpoint and export it as a signed C2SP checkpoint note, to keep outside the database."""
        from engine.app import proof
        from engine.cli._shared import emit_json

        where, passfile = _ledger(dsn, config)
        cp = proof.ledger_checkpoint(where, out, signing_key, passfile=passfile)
        info = {**cp.to_dict(), "file": str(out)}
        if as_json:
            emit_json(info)
        else:
            _say(f"checkpoint of {cp.size} rows written to {out}: root {cp.root.hex()}")

    @manifest_app.command("verify")
    def manifest_verify(
        path: Annotated[Path, typer.Argument(help="The manifest (DSSE envelope) to check.")],
        key: Annotated[Path, typer.Option("--key", help="The signer's public key (recon.pub).")],
        data: Annotated[Path | None, typer.Option(
            "--data", help="Directory with the outputs and snapshots: also recompute the Merkle roots.")] = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Check the signature, every subject's digest and (with --data) both Merkle roots; exit 4 on failure."""
        from engine.app import proof
        from engine.cli._shared import emit_json
        from engine.core.errors import VerificationError

        try:
            report = proof.manifest_verify(path, key, data)
        except VerificationError as exc:
            if as_json:
                emit_json({"ok": False, "reason": str(exc)})
            raise
        if as_json:
            emit_json(report.to_dict())
            return
        _say(f"manifest OK: signature by key id {report.keyid[:16]}…; {len(report.subjects)} subject(s) match")
        for side, root in report.roots.items():
            _say(f"{side} Merkle root recomputed from its snapshot: {root}")
        for n in report.notes:
            _say(f"note: {n}")
