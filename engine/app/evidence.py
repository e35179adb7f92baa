"""Evidence for a finished run: the ledger rows, the OpenLineage events and the signed manifest.

Result-producing commands (`diff`, `explain`, `repair`, `gate`) call :func:`record_evidence` once
they finish (`recon diff` through :func:`record_diff_evidence`). The order matters:

1. OpenLineage START and COMPLETE/FAIL events are written (their digests are needed next);
2. the run, its inputs and the event digests are appended to the ledger in one transaction, and a
   checkpoint is taken, so the manifest can name a tree head that covers this run;
3. the manifest is signed over the outputs and the event files, with that checkpoint in it;
4. the manifest's own digest is appended to the ledger, linking the two in both directions.

Credentials never reach any of them: inputs are allow-listed (``engine.evidence.manifest.describe_input``)
and every string is additionally scrubbed of the secrets this process knows about (environment
passwords and tokens, passwords in the libpq password file and in DSNs, values of the
credentials file the config names) before anything is serialised.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.core.errors import UsageError

if TYPE_CHECKING:
    from engine.app.reconcile import DiffRun
    from engine.config import Config
    from engine.evidence.lineage import HttpSettings, LineageSpec

#: recon's own secret settings; each connector names its own (``Connector.secret_env``)
OWN_SECRET_ENV = ("OPENLINEAGE_API_KEY", "RECON_LEDGER_PASSWORD")
_SECRET_KEY_WORDS = ("password", "token", "secret", "session", "api_key", "apikey")
REDACTED = "***"
MIN_SECRET_LEN = 4


# -- configuration ---------------------------------------------------------------------------------
def _version() -> str:
    from engine import __version__  # on first use: the package metadata lookup costs ~50 ms

    return __version__


def resolve_ledger_dsn(option: str | None, config: Config | None = None) -> str | None:
    """``--ledger DSN``, else ``RECON_LEDGER_DSN``, else ``[ledger] dsn`` in the config."""
    if option:
        return option
    env = os.environ.get("RECON_LEDGER_DSN")
    if env:
        return env
    if config is not None:
        v = config.section("ledger").get("dsn")
        if v:
            return str(v)
    return None


def check_manifest_options(manifest_path: Path | None, signing_key: Path | None) -> None:
    """`--manifest` and `--signing-key` go together; fail (exit 2) before any work is done."""
    if manifest_path is not None and signing_key is None:
        raise UsageError("--manifest needs --signing-key KEYFILE (create one with `recon keygen --out DIR`)")
    if signing_key is not None and manifest_path is None:
        raise UsageError("--signing-key is only used with --manifest PATH")
    if signing_key is not None:
        from engine.evidence.manifest import load_private_key

        load_private_key(signing_key)


@dataclass(frozen=True)
class EvidenceOptions:
    """Where a use case records its run, as the command line gave it: ``--ledger`` (else
    ``RECON_LEDGER_DSN``, else the config's), ``--manifest`` with ``--signing-key``."""

    ledger: str | None = None
    manifest: Path | None = None
    signing_key: Path | None = None

    def check(self) -> None:
        """Exit 2 before any work when the manifest options do not go together."""
        check_manifest_options(self.manifest, self.signing_key)

    def ledger_dsn(self, config: Config | None) -> str | None:
        return resolve_ledger_dsn(self.ledger, config)


# -- secrets ---------------------------------------------------------------------------------------
def known_secrets(dsns: Iterable[str | None] = (), extra: Iterable[str] = (), config: Config | None = None,
                  passfiles: Iterable[str | Path | None] = ()) -> set[str]:
    """Every secret value this process can know of, to keep it out of the evidence: the connectors'
    secret variables, the passwords in libpq's password file (PGPASSFILE or ~/.pgpass), in the one
    ``[postgres] passfile`` of ``config`` names and in ``passfiles``, in the DSNs, and in the
    Salesforce credentials file of the config."""
    found: set[str] = set(extra)
    from engine.connectors.registry import secret_env

    for name in (*secret_env(), *OWN_SECRET_ENV):
        if os.environ.get(name):
            found.add(os.environ[name])
    files = [Path(os.environ.get("PGPASSFILE") or Path.home() / ".pgpass"), *(Path(p) for p in passfiles if p)]
    if config is not None:
        named = config.path_value("postgres", "passfile")
        if named:
            files.append(named)
    for passfile in dict.fromkeys(files):
        found |= _pgpass_passwords(passfile)
    for dsn in dsns:
        if dsn:
            found |= _dsn_passwords(dsn)
    if config is not None:
        cf = config.path_value("salesforce", "credentials_file")
        if cf:
            try:
                data = json.loads(Path(cf).read_text())
                found |= {str(v) for k, v in data.items() if any(w in k.lower() for w in _SECRET_KEY_WORDS) and v}
            except (OSError, ValueError, AttributeError):
                pass
    return {s for s in found if isinstance(s, str) and len(s) >= MIN_SECRET_LEN}


def _pgpass_passwords(passfile: Path) -> set[str]:
    """The passwords of a libpq password file (none when it cannot be read)."""
    found: set[str] = set()
    try:
        for line in passfile.read_text().splitlines():
            if line and not line.startswith("#"):
                parts = _split_pgpass(line)
                if len(parts) == 5 and parts[4]:
                    found.add(parts[4])
    except OSError:
        pass
    return found


def _split_pgpass(line: str) -> list[str]:
    parts, cur, esc = [], [], False
    for ch in line:
        if esc:
            cur.append(ch)
            esc = False
        elif ch == "\\":
            esc = True
        elif ch == ":":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _dsn_passwords(dsn: str) -> set[str]:
    from urllib.parse import unquote, urlparse

    out = set()
    try:
        u = urlparse(dsn.split("#", 1)[0])
        if u.password:
            out |= {u.password, unquote(u.password)}
    except ValueError:
        pass
    try:
        from psycopg.conninfo import conninfo_to_dict

        pw = conninfo_to_dict(dsn.split("#", 1)[0]).get("password")
        if pw:
            out.add(str(pw))
    except Exception:  # noqa: BLE001 - not a DSN: nothing to collect
        pass
    return out


def scrub(obj: Any, secrets: set[str]) -> Any:
    """A copy with every secret replaced by ``***`` in every string, keys included."""
    if not secrets:
        return obj
    ordered = sorted(secrets, key=len, reverse=True)

    def clean(s: str) -> str:
        for sec in ordered:
            if sec in s:
                s = s.replace(sec, REDACTED)
        return s

    def walk(o: Any) -> Any:
        if isinstance(o, str):
            return clean(o)
        if isinstance(o, dict):
            return {(clean(k) if isinstance(k, str) else k): walk(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [walk(v) for v in o]
        return o

    return walk(obj)


# -- recording -------------------------------------------------------------------------------------
def record_evidence(
    command: str,
    summary: dict[str, Any],
    inputs_meta: list[dict[str, Any]],
    outputs: list[Path],
    *,
    ledger_dsn: str | None,
    manifest_path: Path | None,
    signing_key: Path | None,
    config_digest: str,
    lineage_dir: Path | None = None,
    lineage_http: HttpSettings | None = None,
    lineage_spec: LineageSpec | None = None,
    lineage_namespace: str = "recon",
    run_id: str | None = None,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
    status: str = "COMPLETE",
    error: str | None = None,
    snapshots_sidecar: Path | None = None,
    secrets: set[str] | None = None,
    passfile: str | Path | None = None,
) -> dict[str, Any]:
    """Record one finished run: OpenLineage events, ledger rows and checkpoint, signed manifest.

    inputs_meta: inputs as ``engine.evidence.manifest.describe_input`` returns them (no credentials).
    outputs: the result files; they become the manifest's subjects (with the event files).
    lineage_dir: where event files go (default ``<manifest or first output dir>/openlineage``).
    status: COMPLETE, or FAIL with ``error`` (a one-line message).
    passfile: the libpq password file of the ledger connection (``Config.pg_passfile``).
    Returns what was recorded, for ``--json`` output: run id, ledger entries and checkpoint,
    event digests, manifest path and digest.
    """
    from engine.evidence import lineage as ol
    from engine.evidence import manifest as mf

    check_manifest_options(manifest_path, signing_key)
    secrets = known_secrets([ledger_dsn], passfiles=[passfile]) if secrets is None else secrets
    summary = scrub(summary, secrets)
    inputs = scrub([dict(i) for i in inputs_meta], secrets)
    error = scrub(error, secrets) if error else None
    run_id = run_id or ol.new_run_id()
    finished_at = finished_at or datetime.now(UTC)
    started_at = started_at or finished_at
    outputs = [Path(o) for o in outputs]

    if lineage_dir is None:
        anchor = manifest_path.parent if manifest_path else (outputs[0].parent if outputs else None)
        lineage_dir = anchor / "openlineage" if anchor is not None else None
    events: list[ol.EmittedEvent] = []
    if lineage_dir is not None or lineage_http is not None:
        spec = lineage_spec or ol.spec_from_inputs(command, inputs, outputs, namespace=lineage_namespace)
        events = ol.emit(ol.run_events(spec, run_id, started_at, finished_at, status=status, error=error),
                         directory=lineage_dir, http=lineage_http)

    transformation = mf.transformation_digest()
    out_digests = [{"name": o.name, "sha256": mf.file_digest(o)} for o in outputs if o.is_file()]
    result: dict[str, Any] = {"run_id": run_id, "ledger": None, "manifest": None,
                              "openlineage": [e.to_dict() for e in events]}

    ledger = None
    checkpoint = None
    if ledger_dsn:
        from engine.store.ledger import Ledger

        ledger = Ledger(ledger_dsn, passfile=passfile)
        body = {"command": command, "status": status, "started_at": started_at, "finished_at": finished_at,
                "recon_version": _version(), "config_digest": config_digest,
                "transformation_digest": transformation["sha256"], "summary": summary,
                "outputs": out_digests, "error": error}
        lineage_rows = [{"kind": "openlineage_event", "event_type": e.event_type, "sha256": e.sha256,
                         "file": e.path.name if e.path else None} for e in events]
        entries = ledger.record_run(run_id, scrub(body, secrets), inputs, lineage_rows)
        checkpoint = ledger.checkpoint()
        result["ledger"] = {"ledger": ledger.where, "run_seq": entries[0].seq, "run_row_hash": entries[0].row_hash,
                            "rows": [e.to_dict() for e in entries], "checkpoint": checkpoint.to_dict()}

    try:
        if manifest_path is not None and signing_key is not None:
            base = Path(manifest_path).resolve().parent
            event_files = [e.path for e in events if e.path is not None]
            predicate = {
                "run_id": run_id, "command": command, "status": status,
                "started_at": _iso(started_at), "finished_at": _iso(finished_at),
                "recon_version": _version(),
                "config_digest": {"sha256": config_digest},
                "transformation": transformation,
                "inputs": inputs,
                "results": summary,
                "error": error,
                "ledger": ({**checkpoint.to_dict(), "run_seq": result["ledger"]["run_seq"],
                            "run_row_hash": result["ledger"]["run_row_hash"]} if checkpoint else None),
                "openlineage": {"events": [
                    {"name": mf.subject_name(e.path, base) if e.path else None, "eventType": e.event_type,
                     "runId": e.run_id, "sha256": e.sha256} for e in events]},
                "snapshots": ({"sidecar": mf.subject_name(snapshots_sidecar, base)} if snapshots_sidecar else None),
            }
            from engine.store.ledger import jsonable

            info = mf.write_manifest(Path(manifest_path), outputs + event_files,
                                     scrub(jsonable(predicate), secrets), signing_key)
            result["manifest"] = {"path": info["path"], "sha256": info["sha256"], "keyid": info["keyid"],
                                  "subjects": len(info["subjects"])}
            if ledger is not None:
                (entry,) = ledger.append_many([("lineage", {
                    "kind": "manifest", "run_id": run_id, "file": Path(manifest_path).name,
                    "sha256": info["sha256"], "keyid": info["keyid"], "subjects": info["subjects"]})])
                result["ledger"]["manifest_seq"] = entry.seq
    finally:
        if ledger is not None:
            ledger.close()
    return scrub(result, secrets)


def _iso(t: datetime) -> str:
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).astimezone(UTC).isoformat(timespec="microseconds")


def record_diff_evidence(
    run: DiffRun,
    *,
    config: Config,
    outputs: dict[str, Path] | None = None,
    ledger_dsn: str | None = None,
    manifest_path: Path | None = None,
    signing_key: Path | None = None,
    lineage_dir: Path | None = None,
    snapshots: bool = True,
) -> dict[str, Any]:
    """Evidence for `recon diff`: writes the outputs next to the manifest when ``--out`` was not
    given (a manifest needs files to sign), the canonical snapshots when a manifest is asked for
    (so `recon manifest verify --data` can recompute both roots), then :func:`record_evidence`."""
    from engine.app.reconcile import write_outputs
    from engine.evidence import lineage as ol
    from engine.evidence import manifest as mf

    check_manifest_options(manifest_path, signing_key)
    ledger_dsn = resolve_ledger_dsn(ledger_dsn, config)
    if outputs is None and manifest_path is not None:
        outputs = write_outputs(run, Path(manifest_path).parent)
    files = list((outputs or {}).values())
    sidecar = None
    if manifest_path is not None and snapshots:
        snap = mf.write_snapshots(run, files[0].parent if files else Path(manifest_path).parent)
        files += snap
        sidecar = snap[-1]
    secrets = known_secrets([ledger_dsn, run.request.source, run.request.target], config=config)
    inputs = mf.inputs_from_run(run)
    ol_sect = config.section("openlineage")
    namespace = str(ol_sect.get("namespace") or ol.DEFAULT_NAMESPACE)
    spec = ol.spec_from_diff(run, scrub(inputs, secrets), files, namespace=namespace)
    finished = datetime.now(UTC)
    summary = run.summary()
    return record_evidence(
        "diff", summary, inputs, files, ledger_dsn=ledger_dsn, manifest_path=manifest_path,
        signing_key=signing_key, config_digest=config.digest, lineage_dir=lineage_dir,
        lineage_http=ol.http_settings(ol_sect), lineage_spec=spec, lineage_namespace=namespace,
        started_at=finished - timedelta(seconds=run.result.elapsed_s), finished_at=finished,
        snapshots_sidecar=sidecar, secrets=secrets, passfile=config.pg_passfile())
