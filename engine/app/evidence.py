"""Evidence for a finished run: the ledger rows, the OpenLineage events and the signed manifest.

Result-producing commands (`diff`, `explain`, `repair`, `gate`) call :func:`record_evidence` once
they finish (`recon diff` through :func:`record_diff_evidence`). The order matters:

1. OpenLineage START and COMPLETE/FAIL events are written (their digests are needed next);
2. the run, its inputs and the event digests are appended to the ledger in one transaction, and a
   checkpoint is taken, so the manifest can name a tree head that covers this run;
3. the manifest is signed over the outputs and the event files, with that checkpoint in it;
4. the manifest's own digest is appended to the ledger, linking the two in both directions.

Credentials never reach any of them: inputs are allow-listed (``engine.evidence.manifest.describe_input``);
the fields known to carry credentials are then cleaned (DSNs redacted from libpq's parse, fields
named like a credential dropped, the free-text error message scrubbed of every secret), and the
results are left exactly as computed. Before anything is written, everything is checked against
the secrets this process knows about (environment passwords and tokens, passwords in the libpq
password file and in DSNs, values of the credentials file the config names): a field whose whole
value is one, or any text holding a long one, stops the recording (exit 70, nothing written).
Replacing secrets as substrings of the results is what this avoids: a short password such as
``1.00`` would have rewritten every amount that contains it in the signed summary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.core.errors import Exit, ReconError, UsageError

if TYPE_CHECKING:
    from engine.app.reconcile import DiffRun
    from engine.config import Config
    from engine.evidence.lineage import HttpSettings, LineageSpec

#: recon's own secret settings; each connector names its own (``Connector.secret_env``)
OWN_SECRET_ENV = ("OPENLINEAGE_API_KEY", "RECON_LEDGER_PASSWORD")
_SECRET_KEY_WORDS = ("password", "token", "secret", "session", "api_key", "apikey")
REDACTED = "***"
#: free text (an error message) is scrubbed of secrets this long and longer; shorter ones would
#: rewrite ordinary words and numbers, and are caught by the whole-value check instead
MIN_SECRET_LEN = 4
#: a secret this long found inside any text of the evidence cannot be a coincidence: recording stops
MIN_EMBEDDED_SECRET_LEN = 12
#: field names whose value is a credential wherever recon's metadata might carry one (normalised:
#: lower case, ``-``/``.`` as ``_``); dropped from the evidence
_CREDENTIAL_FIELDS = frozenset({
    "password", "passwd", "pwd", "sslpassword", "secret", "client_secret", "consumer_secret",
    "oauth_client_secret", "security_token", "token", "access_token", "refresh_token", "id_token",
    "session_id", "sessionid", "api_key", "apikey", "authorization", "sasl_password",
    "ssl_key_password", "ssl_keystore_password", "ssl_key_pem", "ssl_key", "private_key",
})
#: maps whose keys are the user's column names (data, not metadata): a column named ``password``
#: is compared like any other and stays in the results
#: where a server is located (host, port, database, user: what ``dsn_location`` keeps of a DSN)
_LOCATION_KEYS = frozenset({"host", "port", "database", "dbname", "user", "username"})
_COLUMN_MAPS = frozenset({"columns", "compared_columns", "tolerance", "types", "amount_variance_ratio"})


class SecretInEvidence(ReconError):
    """A known secret would have been recorded in the evidence (exit 70): nothing was written.
    A value that merely equals a secret (a short password that is also an amount) cannot be told
    from a leak, so the run's evidence is refused rather than signed with it."""

    exit_code = Exit.INTERNAL


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
    return {s for s in found if isinstance(s, str) and s}


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


def scrub(obj: Any) -> Any:
    """A copy without credentials in the fields known to carry them: keys named like a credential
    are dropped, DSNs (a ``dsn``/``*_dsn`` field, or any value written as a ``postgres[ql]://`` URI)
    are redacted from libpq's own parse. Everything else is returned as it was."""
    from engine.connectors.refs import redact_dsn

    def walk(o: Any, key: str | None = None, column_map: bool = False) -> Any:
        if isinstance(o, str):
            is_dsn = key is not None and (key == "dsn" or key.endswith("_dsn"))
            return redact_dsn(o) if is_dsn or o.startswith(("postgresql://", "postgres://")) else o
        if isinstance(o, dict):
            return {k: walk(v, str(k), str(k) in _COLUMN_MAPS) for k, v in o.items()
                    if column_map or not _is_credential_field(k)}
        if isinstance(o, (list, tuple)):
            return [walk(v, key) for v in o]
        return o

    return walk(obj)


def scrub_text(text: str, secrets: set[str]) -> str:
    """Free text (an error message, which may quote a driver's message) with every secret of
    :data:`MIN_SECRET_LEN` characters or more replaced by ``***``."""
    for sec in sorted((x for x in secrets if len(x) >= MIN_SECRET_LEN), key=len, reverse=True):
        text = text.replace(sec, REDACTED)
    return text


def _is_credential_field(key: Any) -> bool:
    return isinstance(key, str) and key.lower().replace("-", "_").replace(".", "_") in _CREDENTIAL_FIELDS


def check_no_secret(obj: Any, secrets: set[str], what: str) -> None:
    """Fail closed (:class:`SecretInEvidence`) when a known secret is a whole string value
    anywhere in ``obj``, or a long one (:data:`MIN_EMBEDDED_SECRET_LEN`) sits inside any string or
    key. Numbers are never compared: a password ``200`` does not make 200 rows a leak."""
    if not secrets:
        return
    long_ones = [x for x in secrets if len(x) >= MIN_EMBEDDED_SECRET_LEN]

    def fail(path: str) -> None:
        raise SecretInEvidence(f"evidence not recorded: {what} at {path or 'top level'} holds a known secret "
                               "(a password or token from the environment, a DSN, a password file or the "
                               "credentials file); no ledger run, manifest or lineage event was written for it: "
                               "use a password that is not also a value of the results, and keep credentials "
                               "out of names and messages")

    def walk(o: Any, path: str) -> None:
        if isinstance(o, str):
            if o in secrets or any(x in o for x in long_ones):
                fail(path)
        elif isinstance(o, dict):
            for k, v in o.items():
                if isinstance(k, str) and any(x in k for x in long_ones):
                    fail(f"{path}.<key>")
                if k in _LOCATION_KEYS and isinstance(v, str):
                    continue  # a server's name, never a secret (dsn_location): a password equal to the user name must not block every run
                name = REDACTED if k in secrets else str(k)  # the message must not spell a short secret
                walk(v, f"{path}.{name}" if path else name)
        elif isinstance(o, (list, tuple)):
            for i, v in enumerate(o):
                walk(v, f"{path}[{i}]")

    walk(obj, "")


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
    summary = scrub(summary)
    inputs = scrub([dict(i) for i in inputs_meta])
    error = scrub_text(error, secrets) if error else None
    check_no_secret(summary, secrets, "the summary")
    check_no_secret(inputs, secrets, "the inputs")
    check_no_secret(error, secrets, "the error message")
    run_id = run_id or ol.new_run_id()
    finished_at = finished_at or datetime.now(UTC)
    started_at = started_at or finished_at
    outputs = [Path(o) for o in outputs]

    if lineage_dir is None:
        anchor = manifest_path.parent if manifest_path else (outputs[0].parent if outputs else None)
        lineage_dir = anchor / "openlineage" if anchor is not None else None
    events: list[ol.EmittedEvent] = []
    if lineage_dir is not None or lineage_http is not None:
        from openlineage.client.serde import Serde

        spec = lineage_spec or ol.spec_from_inputs(command, inputs, outputs, namespace=lineage_namespace)
        run_events = ol.run_events(spec, run_id, started_at, finished_at, status=status, error=error)
        check_no_secret([Serde.to_dict(e) for e in run_events], secrets, "the OpenLineage events")
        events = ol.emit(run_events, directory=lineage_dir, http=lineage_http)

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
        body = scrub(body)
        check_no_secret(body, secrets, "the ledger row")
        # one transaction: on a broken chain (exit 4) neither the run nor a checkpoint is recorded
        try:
            entries, checkpoint = ledger.record_run_checkpointed(run_id, body, inputs, lineage_rows)
        except BaseException:
            ledger.close()
            raise
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

            predicate = scrub(jsonable(predicate))
            check_no_secret(predicate, secrets, "the manifest")
            info = mf.write_manifest(Path(manifest_path), outputs + event_files, predicate, signing_key)
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
    result = scrub(result)
    check_no_secret(result, secrets, "the evidence summary")
    return result


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
    secrets = known_secrets([ledger_dsn, run.request.source, run.request.target], config=config)
    inputs = mf.inputs_from_run(run)
    summary = run.summary()
    # checked before the snapshots and outputs are written: a refused run leaves no evidence files
    check_no_secret(scrub(summary), secrets, "the summary")
    check_no_secret(scrub(inputs), secrets, "the inputs")
    if outputs is None and manifest_path is not None:
        outputs = write_outputs(run, Path(manifest_path).parent)
    files = list((outputs or {}).values())
    sidecar = None
    if manifest_path is not None and snapshots:
        snap = mf.write_snapshots(run, files[0].parent if files else Path(manifest_path).parent)
        files += snap
        sidecar = snap[-1]
    ol_sect = config.section("openlineage")
    namespace = str(ol_sect.get("namespace") or ol.DEFAULT_NAMESPACE)
    spec = ol.spec_from_diff(run, scrub(inputs), files, namespace=namespace)
    finished = datetime.now(UTC)
    return record_evidence(
        "diff", summary, inputs, files, ledger_dsn=ledger_dsn, manifest_path=manifest_path,
        signing_key=signing_key, config_digest=config.digest, lineage_dir=lineage_dir,
        lineage_http=ol.http_settings(ol_sect), lineage_spec=spec, lineage_namespace=namespace,
        started_at=finished - timedelta(seconds=run.result.elapsed_s), finished_at=finished,
        snapshots_sidecar=sidecar, secrets=secrets, passfile=config.pg_passfile())
