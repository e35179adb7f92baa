"""Trust in an artefact directory: checked before gate, repair, explain, cost or report use it.

A directory written by an earlier step is only as good as the run that wrote it. Its files are
believed when their digests are the ones that run recorded: in the ledger (``--ledger``: a
``runs`` row of the right command lists every file with its SHA-256) or in the DSSE manifest
signed next to them (``--key PUB``: ``DIR/manifest.json``, its signature, subjects and the
command it was signed for). An explicit ``--key`` is the authority when both are available: the
caller chose it. A copied, edited or unrelated directory is refused with exit 4 naming the file.

With nothing to verify against, the status is ``unverified``: commands whose decision changes
state (gate, ``repair --apply``) refuse that up front (exit 2), the others run and say so in their
outputs. Reading the ledger is :mod:`engine.store.ledger`; comparing files with digests is
:mod:`engine.workspace`; this module only decides which expected digests apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine import workspace
from engine.core.errors import UsageError, VerificationError

Status = Literal["ledger", "manifest", "unverified"]
GIVE = "give --ledger DSN or --key PUB"


@dataclass(frozen=True)
class TrustOptions:
    """What an artefact can be verified against: the ledger's DSN (``--ledger``, else
    ``RECON_LEDGER_DSN``, else the config's) and ``--key PUB``; ``passfile`` for the ledger."""

    ledger_dsn: str | None = None
    pubkey: Path | None = None
    passfile: str | Path | None = None

    @property
    def available(self) -> bool:
        return bool(self.ledger_dsn or self.pubkey)

    def require(self, what: str) -> None:
        """Exit 2 before any work when ``what`` must rest on verified artefacts and cannot."""
        if not self.available:
            raise UsageError(f"{what} acts only on verified artefacts and nothing is there to verify them "
                             f"against: {GIVE} (the public key that signed DIR/{workspace.MANIFEST})")


@dataclass(frozen=True)
class Verified:
    """How one directory was verified; ``to_dict`` is what outputs carry under ``verification``."""

    status: Status
    dir: Path
    files: tuple[str, ...]
    run_id: str | None = None
    ledger_seq: int | None = None
    manifest: Path | None = None

    @property
    def ok(self) -> bool:
        return self.status != "unverified"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "dir": str(self.dir), "files": list(self.files), "run_id": self.run_id,
                "ledger_seq": self.ledger_seq, "manifest": str(self.manifest) if self.manifest else None}


def verify(directory: Path, files: Sequence[Path], *, command: str, trust: TrustOptions) -> Verified:
    """Check ``files`` (of ``directory``, written by a ``recon <command>`` run) against the
    manifest (with ``--key``) or the ledger; ``unverified`` when there is neither. Raises
    VerificationError (exit 4) naming the first file that does not match."""
    directory, files = Path(directory), [Path(f) for f in files]
    if not trust.available:
        return Verified("unverified", directory, tuple(f.name for f in files if f.is_file()))
    for f in files:
        if not f.is_file():  # not this kind of directory at all: a usage error, like reading it would be
            raise UsageError(f"{f} does not exist: {directory} is not a complete `recon {command}` output")
    names = tuple(f.name for f in files)
    if trust.pubkey is not None:
        return _by_manifest(directory, files, names, command, trust.pubkey)
    return _by_ledger(directory, files, names, command, trust)


def _by_manifest(directory: Path, files: list[Path], names: tuple[str, ...], command: str,
                 pubkey: Path) -> Verified:
    from engine.evidence.manifest import verify_manifest

    mpath = workspace.manifest_path(directory)
    if not mpath.is_file():
        raise VerificationError(f"{mpath} does not exist: --key verifies a directory by the manifest its run signed "
                                f"there (`recon {command} … --manifest {mpath} --signing-key KEY`); or give --ledger DSN")
    report = verify_manifest(mpath, pubkey)  # the signature and every subject's digest
    predicate = report.statement.get("predicate") or {}
    signed_for = predicate.get("command") if isinstance(predicate, dict) else None
    if signed_for != command:
        raise VerificationError(f"{mpath} was signed for a `recon {signed_for}` run, not `recon {command}`: "
                                f"{directory} is not a {command} output")
    expected = {str(s["name"]): str(s["sha256"]) for s in report.subjects}
    workspace.check_digests(files, expected, against=f"the manifest {mpath}")
    return Verified("manifest", directory, names, run_id=predicate.get("run_id"), manifest=mpath)


def _by_ledger(directory: Path, files: list[Path], names: tuple[str, ...], command: str,
               trust: TrustOptions) -> Verified:
    from engine.store.ledger import find_run_with_outputs

    assert trust.ledger_dsn
    got = workspace.digests(files)
    run = find_run_with_outputs(trust.ledger_dsn, got, command=command, passfile=trust.passfile)
    if run is None:
        for f in files:
            if find_run_with_outputs(trust.ledger_dsn, {f.name: got[f.name]}, command=command,
                                     passfile=trust.passfile) is None:
                raise VerificationError(
                    f"{f} (sha256 {got[f.name][:16]}…) was not recorded by any `recon {command}` run in the ledger: "
                    f"it was changed since, or its run was not recorded in this ledger (run without --ledger, "
                    f"or with another one); rerun `recon {command}` with --ledger")
        raise VerificationError(f"{files[0]} and {', '.join(f.name for f in files[1:])} were not recorded by one "
                                f"`recon {command}` run: use a directory exactly as one run wrote it")
    workspace.check_digests(files, run["outputs"], against=f"ledger run {run['run_id']} (seq {run['seq']})")
    return Verified("ledger", directory, names, run_id=run["run_id"], ledger_seq=run["seq"])


def overall(parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One ``verification`` block over several directories: ``unverified`` when any is (or when
    there are none), else how they were verified; each part as :meth:`Verified.to_dict` gave it."""
    statuses = {p["status"] for p in parts.values()}
    status = "unverified" if not parts or "unverified" in statuses else "+".join(sorted(statuses))
    return {"status": status, "parts": parts}
