# ruff: noqa: S608 - every identifier below goes through psycopg.sql.Identifier; values are parameters
"""`recon repair`: fix exactly the divergent records, as new versions, with their evidence.

Policy by class (from `recon explain`; which class gets which is ``repair`` in
:mod:`engine.core.classes`):

* corrected (``duplicate_inflation``, ``missing_events``, ``warehouse_only_drift``,
  ``missing_in_warehouse``): in the warehouse, from Salesforce's authoritative value,
  **re-extracted for exactly those records** (Bulk API 2.0, Id lists in chunks of 500, far below
  SOQL's length limit) at apply time — never from the explain-time copy, never the whole object;
* action list (``stale_salesforce``): the warehouse is right and Salesforce is behind the stream, so
  nothing is changed: the records become an action list for their owners (``action_list.csv`` and
  ``action_list.json``: Id, owner, Salesforce, stream and warehouse values, evidence);
* left alone (``unexplained``, and any class this version does not know): reported.

Dry run by default: the plan (records, old and new values, evidence) is printed and nothing is
written to the warehouse or to Salesforce's API budget. ``--apply`` writes.

Corrections are new versions of the target table, never silent updates: the version store
(``<table>_versions`` behind a view of the current versions) is :mod:`engine.store.versions`.

Idempotent and resumable: each correction has a deterministic id (SHA-256 over the target, the
explain output's digest, the record, its class and the value it corrects), unique in the version
store. Corrections are applied in chunks (``RECON_REPAIR_CHUNK_ROWS``, default 200), one
transaction each, under an advisory lock; a second ``--apply`` finds every id present and changes
nothing (and re-extracts nothing); a repair killed mid-way resumes with the chunks it did not
commit. Each correction is appended to the ledger's ``corrections`` table after its chunk commits;
a correction committed to the warehouse whose ledger row was lost to a crash is appended on the
next run from the evidence stored with the version (``ledger_backfilled``).

SEC subset first: corrections of ``sec_critical`` records are re-extracted, applied and verified
(re-read from the warehouse view and compared with the re-extracted Salesforce values) before the
rest is even re-extracted, and reported separately. A failed verification stops the repair (exit 4).

Test hook: ``RECON_REPAIR_TEST_KILL_AFTER_CHUNKS=N`` SIGKILLs the process right after the N-th
chunk's warehouse commit, before its ledger rows, to prove resumption.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from engine import workspace
from engine.app.evidence import EvidenceOptions
from engine.app.trust import TrustOptions
from engine.config import Config
from engine.connectors.base import PostgresRef, SalesforceRef, parse_reference
from engine.connectors.salesforce.records import reextract
from engine.connectors.salesforce.soql import check_ids
from engine.core import classes
from engine.core.classes import Repair
from engine.core.errors import Exit, UsageError, VerificationError
from engine.store.versions import (
    Correction,
    TableInfo,
    Target,
    _applied,
    _current_values,
    _precheck,
    _same,
    apply_chunk,
    correction_id,
    inspect,
    migrate,
)

# derived from engine.core.classes, for callers (the code here reads that list when it runs)
REPAIRED_CLASSES = classes.with_repair(Repair.CORRECT)
ACTION_CLASSES = classes.with_repair(Repair.ACTION_LIST)
LEFT_CLASSES = classes.with_repair(Repair.LEAVE)
ACTION_CLASS = ACTION_CLASSES[0]  # the names from before there could be several
LEFT_CLASS = LEFT_CLASSES[0]
DEFAULT_CHUNK_ROWS = 200
KILL_HOOK = "RECON_REPAIR_TEST_KILL_AFTER_CHUNKS"


def chunk_rows_default() -> int:
    try:
        n = int(os.environ.get("RECON_REPAIR_CHUNK_ROWS", DEFAULT_CHUNK_ROWS))
    except ValueError:
        raise UsageError("RECON_REPAIR_CHUNK_ROWS must be a whole number of rows per transaction") from None
    if n < 1:
        raise UsageError("RECON_REPAIR_CHUNK_ROWS must be at least 1")
    return n


def _sha256(path: Path) -> str:
    from engine.evidence.manifest import file_digest

    return file_digest(path)


def _json_list(text: Any) -> list[str]:
    if not text:
        return []
    try:
        v = json.loads(text)
    except (TypeError, ValueError):
        return []
    return [str(x) for x in v] if isinstance(v, list) else []


def policy() -> dict[str, list[str]]:
    """The policy by class, as ``plan.json`` and the summary state it."""
    return {"corrected": list(classes.with_repair(Repair.CORRECT)),
            "action_list": list(classes.with_repair(Repair.ACTION_LIST)),
            "left_alone": list(classes.with_repair(Repair.LEAVE))}


# -- the plan --------------------------------------------------------------------------------------
@dataclass
class Plan:
    explain_dir: Path
    findings_sha256: str
    explain: dict[str, Any]
    column: str
    target: Target
    corrections: list[Correction]
    action_list: list[dict[str, Any]]
    unexplained: list[dict[str, Any]]
    classes: dict[str, int]
    #: the Salesforce field re-extracted with each value (the mapping's modstamp role)
    modstamp: str = "SystemModstamp"

    @property
    def topic(self) -> str | None:
        return (self.explain.get("kafka") or {}).get("topic")


def _evidence_text(r: dict[str, Any]) -> str:
    return (f"Salesforce last modified {r.get('sf_modstamp') or 'unknown'}, before the record's last event in the "
            f"stream at {r.get('last_event_time') or 'unknown'}; Salesforce holds {r.get('salesforce_value')}, the "
            f"deduplicated stream sums to {r.get('dedup_stream_value')}, the warehouse holds {r.get('warehouse_value')}")


def load_plan(explain_dir: Path, config: Config, *, mapping: str | None = None, target: str | None = None,
              diff_dir: Path | None = None) -> Plan:
    """Read an explain output and the mapping it was made for; classify every finding by policy."""
    import polars as pl

    explain_dir = Path(explain_dir)
    out = workspace.ExplainOutput(explain_dir)
    out.require()
    fp = out.findings_path
    explain = out.load_summary()
    findings = pl.read_parquet(fp)
    missing = {"Id", "class", "kind", "sec_critical", "warehouse_value", "salesforce_value"} - set(findings.columns)
    if missing:
        raise UsageError(f"{fp} lacks column(s) {', '.join(sorted(missing))}: rerun `recon explain`")
    digest = _sha256(fp)
    ddir = out.diff_dir(explain.get("diff"), diff_dir)
    summary: dict[str, Any] = {}
    if ddir is not None:
        sp = workspace.DiffOutput(ddir).summary_path
        try:
            summary = json.loads(sp.read_text())
        except (OSError, ValueError):
            raise UsageError(f"cannot read {sp}: pass --diff DIR (the diff the explain used)") from None
    name = mapping or summary.get("mapping")
    if mapping and summary.get("mapping") and mapping != summary.get("mapping"):
        raise UsageError(f"the explained diff was run for mapping {summary.get('mapping')!r}, not {mapping!r}")
    if not name:
        raise UsageError("cannot tell which mapping the explain output is about: pass --mapping NAME "
                         "(and -C recon.toml), or --diff DIR with the diff it explained")
    m = config.mapping(name)
    if len(m.key) != 1:
        raise UsageError(f"[mapping.{name}] has a compound key: repair corrects single-key tables only")
    column = str(explain.get("column") or "")
    if not column:
        raise UsageError(f"{out.summary_path} names no column: rerun `recon explain`")
    pairs = {a.lower(): b for a, b in m.columns}
    value_col = pairs.get(column.lower(), column)
    ref = parse_reference(target or m.target)
    if not isinstance(ref, PostgresRef):
        raise UsageError(f"repair writes to PostgreSQL tables only; the target of [mapping.{name}] is {ref}")
    src = parse_reference(m.source)
    if not isinstance(src, SalesforceRef):
        raise UsageError(f"repair re-extracts from Salesforce; the source of [mapping.{name}] is {src}")
    rcfg = config.section("repair").get(name, {})
    count_col = rcfg.get("count_column", "event_count") if isinstance(rcfg, dict) else "event_count"
    tgt = Target(ref=ref, mapping=name, sobject=src.sobject, source_column=column, key=m.key[0][1],
                 value=value_col, updated_at=m.target_updated_at, count_column=count_col or None)
    corrections: list[Correction] = []
    action_list: list[dict[str, Any]] = []
    unexplained: list[dict[str, Any]] = []
    per_class: dict[str, int] = {}
    cols = set(findings.columns)
    for r in findings.iter_rows(named=True):
        cls = str(r["class"])
        per_class[cls] = per_class.get(cls, 0) + 1
        g = {k: r.get(k) for k in ("Id", "class", "kind", "sec_critical", "owner_id", "salesforce_value",
                                   "warehouse_value", "raw_stream_value", "dedup_stream_value", "true_value",
                                   "sf_modstamp", "last_event_time", "delivered", "duplicate_copies",
                                   "annual_revenue", "overpayment", "underpayment") if k in cols}
        action = classes.repair_of(cls)
        if action is Repair.CORRECT:
            old = r["warehouse_value"] if classes.has_warehouse_row(cls) else None
            delivered = int(r.get("delivered") or 0)
            copies = int(r.get("duplicate_copies") or 0)
            corrections.append(Correction(
                record_id=str(r["Id"]), cls=cls, sec_critical=bool(r["sec_critical"]), old_value=old,
                explain_sf_value=r["salesforce_value"], stream_events=max(0, delivered - copies),
                owner_id=r.get("owner_id"), copy_offsets=_json_list(r.get("copy_offsets")),
                duplicated_event_ids=_json_list(r.get("duplicated_event_ids")),
                correction_id=correction_id(tgt.identity, digest, str(r["Id"]), cls, old), finding=g))
        elif action is Repair.ACTION_LIST:
            action_list.append({
                "Id": r["Id"], "owner_id": r.get("owner_id"), "salesforce_value": r["salesforce_value"],
                "stream_value": r.get("dedup_stream_value"), "warehouse_value": r["warehouse_value"],
                "raw_stream_value": r.get("raw_stream_value"), "sf_modstamp": r.get("sf_modstamp"),
                "last_event_time": r.get("last_event_time"), "sec_critical": bool(r["sec_critical"]),
                "annual_revenue": r.get("annual_revenue"), "kind": r["kind"], "field": column,
                "requested_action": f"review {column} in Salesforce: it predates the record's latest events; "
                                    "set it to the stream's value once confirmed",
                "evidence": _evidence_text(r)})
        else:
            unexplained.append({"Id": r["Id"], "class": cls, "kind": r["kind"], "owner_id": r.get("owner_id"),
                                "salesforce_value": r["salesforce_value"], "warehouse_value": r["warehouse_value"],
                                "stream_value": r.get("dedup_stream_value"), "sec_critical": bool(r["sec_critical"])})
    # repair re-extracts each correction's record: a finding whose Id is no Salesforce id is refused
    # here, before the table is versioned or anything is written
    check_ids([c.record_id for c in corrections], fix=f"{fp} holds it as a record to correct: rerun `recon explain`")
    # SEC-critical first, then by Id: the order corrections are applied in
    corrections.sort(key=lambda c: (not c.sec_critical, c.record_id))
    return Plan(explain_dir=explain_dir, findings_sha256=digest, explain=explain, column=column, target=tgt,
                corrections=corrections, action_list=action_list, unexplained=unexplained, classes=per_class,
                modstamp=m.roles.modstamp)


# -- the target's database (the version store itself: engine.store.versions) ---------------------
def _connect(target: Target, config: Config) -> psycopg.Connection:
    from engine.connectors.postgres.connection import connect

    return connect(target.ref.dsn, passfile=config.pg_passfile(), autocommit=True)


# -- applying --------------------------------------------------------------------------------------
@dataclass
class PhaseReport:
    planned: int = 0
    applied: int = 0
    already_applied: int = 0
    in_sync: int = 0
    conflicts: int = 0
    not_in_salesforce: int = 0
    reextracted: int = 0
    verified: int = 0
    pending: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class RepairReport:
    mode: str
    run_id: str
    plan: Plan
    migration: dict[str, Any] | None = None
    sec: PhaseReport = field(default_factory=PhaseReport)
    rest: PhaseReport = field(default_factory=PhaseReport)
    bulk_job_ids: list[str] = field(default_factory=list)
    sf_metas: list[dict[str, Any]] = field(default_factory=list)
    ledger: dict[str, Any] = field(default_factory=dict)
    versioned: bool = False
    elapsed_s: float = 0.0

    @property
    def totals(self) -> PhaseReport:
        t = PhaseReport()
        for k in t.__dict__:
            setattr(t, k, getattr(self.sec, k) + getattr(self.rest, k))
        return t

    @property
    def exit_code(self) -> Exit:
        """0: nothing left for the warehouse (and nothing unexplained); 1: something to act on."""
        t = self.totals
        if t.pending or t.conflicts or t.not_in_salesforce or self.plan.unexplained:
            return Exit.FINDINGS
        return Exit.OK

    def summary(self) -> dict[str, Any]:
        p, t = self.plan, self.totals
        return {
            "mode": self.mode, "run_id": self.run_id, "mapping": p.target.mapping, "column": p.column,
            "target": p.target.where(), "target_identity": p.target.identity,
            "versions_table": f"{p.target.ref.schema}.{p.target.versions_table}", "versioned": self.versioned,
            "explain": {"dir": str(p.explain_dir), "findings_sha256": p.findings_sha256},
            "classes": p.classes,
            "policy": policy(),
            "corrections": {"planned": len(p.corrections), **t.to_dict()},
            "sec_critical": self.sec.to_dict(), "rest": self.rest.to_dict(),
            "action_list": len(p.action_list), "unexplained": len(p.unexplained),
            "salesforce": {"records_reextracted": t.reextracted, "bulk_job_ids": self.bulk_job_ids,
                           "api_version": next((m.get("api_version") for m in self.sf_metas), None)},
            "migration": self.migration, "ledger": self.ledger, "exit_code": int(self.exit_code),
            "elapsed_s": round(self.elapsed_s, 3),
        }


def _phase(rep: RepairReport, c: Correction) -> PhaseReport:
    return rep.sec if c.sec_critical else rep.rest


def _evidence(plan: Plan, c: Correction, run_id: str) -> dict[str, Any]:
    sf = c.salesforce or {}
    return {
        "kind": "correction", "correction_id": c.correction_id, "run_id": run_id, "mapping": plan.target.mapping,
        "target": plan.target.identity, "record_id": c.record_id, "class": c.cls, "sec_critical": c.sec_critical,
        "column": plan.target.value, "old_value": c.old_value, "new_value": c.new_value,
        "old_version_id": c.old_version_id,
        "finding": {"explain_findings_sha256": plan.findings_sha256, "explain_dir": str(plan.explain_dir),
                    **{k: v for k, v in c.finding.items() if v is not None}},
        "salesforce": {"object": plan.target.sobject, "field": plan.column, "value": sf.get("value"),
                       "system_modstamp": sf.get("system_modstamp"), "bulk_job_id": sf.get("bulk_job_id"),
                       "api_version": sf.get("api_version"), "org_id": sf.get("org_id"),
                       "extracted_at": sf.get("extracted_at"),
                       "changed_since_explain": not _same(sf.get("value"), c.explain_sf_value)},
        "kafka": {"topic": plan.topic, "copy_offsets": c.copy_offsets, "duplicated_event_ids": c.duplicated_event_ids},
    }


def _apply_chunk(conn: psycopg.Connection, plan: Plan, info: TableInfo, chunk: list[Correction], run_id: str
                 ) -> list[dict[str, Any]]:
    """One chunk as new versions (:func:`engine.store.versions.apply_chunk`), each recording the finding
    it corrects and its evidence. Returns ledger bodies."""
    return apply_chunk(conn, plan.target, info, chunk, run_id,
                       finding_ref=lambda c: f"explain:{plan.findings_sha256}#{c.record_id}/{c.cls}",
                       evidence=lambda c: _evidence(plan, c, run_id))


def _ledger_backfill(led: Any, plan: Plan, applied: dict[str, dict[str, Any]]) -> int:
    """Append the ledger rows of corrections the warehouse has but the ledger lost (a crash between
    the chunk's commit and its ledger append)."""
    from engine.store.ledger import _db_error

    if not applied:
        return 0
    try:
        have = {str(r[0]) for r in led.conn.execute(
            "SELECT body ->> 'correction_id' FROM recon_audit.corrections WHERE body ->> 'correction_id' = ANY(%s)",
            (list(applied),)).fetchall()}
    except psycopg.Error as exc:
        raise _db_error(exc, led.dsn, "read") from None
    order = {c.correction_id: i for i, c in enumerate(plan.corrections)}
    missing = sorted((cid for cid in applied if cid not in have), key=lambda x: order.get(x, 0))
    bodies = [{**applied[cid]["evidence"], "new_version_id": applied[cid]["version_id"],
               "valid_from": applied[cid]["valid_from"], "ledger_backfilled": True} for cid in missing]
    if bodies:
        led.append_many([("corrections", b) for b in bodies])
    return len(bodies)


def _kill_hook(chunks_done: int) -> None:
    n = os.environ.get(KILL_HOOK)
    if n and n.isdigit() and chunks_done == int(n):
        os.kill(os.getpid(), signal.SIGKILL)


def _verify(conn: psycopg.Connection, plan: Plan, group: list[Correction], phase: PhaseReport) -> None:
    """Re-read the current values through the view and compare them with Salesforce's: every
    correction applied now, and every earlier one whose version is still the current one (a later
    version written by the aggregation supersedes it legitimately)."""
    earlier = [c.correction_id for c in group if c.status == "already_applied"]
    still_current: set[str] = set()
    if earlier:
        still_current = {str(r[0]) for r in conn.execute(sql.SQL(
            "SELECT correction_id FROM {} WHERE correction_id = ANY(%s) AND valid_to IS NULL").format(
            plan.target.vident()), (earlier,)).fetchall()}
    want = {c.record_id: c.new_value for c in group
            if c.status == "applied" or (c.status == "already_applied" and c.correction_id in still_current)}
    got = _current_values(conn, plan.target, list(want), plan.target.ident())
    bad = [rid for rid, v in want.items() if not _same(got.get(rid), v)]
    if bad:
        raise VerificationError(f"after repair, {len(bad)} record(s) of {plan.target.where()} do not hold Salesforce's "
                                f"value (first: {bad[0]}: warehouse {got.get(bad[0])}, Salesforce {want[bad[0]]})")
    phase.verified += len(want)


def run_repair(plan: Plan, config: Config, *, apply: bool, run_id: str, ledger_dsn: str | None = None,
               chunk_rows: int | None = None, progress: Callable[[str], None] | None = None) -> RepairReport:
    """Dry run (statuses from the warehouse as it is) or apply (SEC subset first, then the rest)."""
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    chunk_rows = chunk_rows or chunk_rows_default()
    rep = RepairReport(mode="apply" if apply else "dry_run", run_id=run_id, plan=plan)
    for c in plan.corrections:
        _phase(rep, c).planned += 1
    from engine.store.ledger import Ledger

    ledger = Ledger(ledger_dsn, passfile=config.pg_passfile()) if (apply and ledger_dsn) else None
    try:
        _run(plan, config, rep, conn_ledger=ledger, apply=apply, run_id=run_id, chunk_rows=chunk_rows, say=say)
    finally:
        if ledger is not None:
            ledger.close()
    if not ledger_dsn and apply:
        rep.ledger["note"] = "no ledger: corrections are linked to their evidence in the version store only"
    rep.elapsed_s = time.perf_counter() - t0
    return rep


def _run(plan: Plan, config: Config, rep: RepairReport, *, conn_ledger: Any, apply: bool, run_id: str,
         chunk_rows: int, say: Callable[[str], None]) -> None:
    with _connect(plan.target, config) as conn:
        info = inspect(conn, plan.target)
        applied = _applied(conn, plan.target, [c.correction_id for c in plan.corrections]) \
            if info.kind == "versioned" else {}
        current = _current_values(conn, plan.target, [c.record_id for c in plan.corrections], plan.target.ident())
        for c in plan.corrections:
            if c.correction_id in applied:
                a = applied[c.correction_id]
                c.status, c.new_value, c.new_version_id = "already_applied", a["value"], a["version_id"]
                c.old_version_id = a["supersedes"]
                c.salesforce = (a["evidence"] or {}).get("salesforce")
            else:
                c.status = _precheck(c, current.get(c.record_id), c.record_id in current)
                if c.status == "conflict":
                    c.detail = (f"the warehouse holds {current.get(c.record_id, 'no row')}; the plan expected "
                                f"{c.old_value if c.old_value is not None else 'no row'}")
        if apply and info.kind == "table" and any(c.status == "pending" for c in plan.corrections):
            # versioned only when there is something to correct: a clean table stays as it is
            say(f"versioning {plan.target.ref.schema}.{plan.target.ref.table}: history in "
                f"{plan.target.versions_table}, current values through a view")
            rep.migration = migrate(conn, plan.target, info)
            info = inspect(conn, plan.target)
        rep.versioned = info.kind == "versioned"
        if conn_ledger is not None:
            n = _ledger_backfill(conn_ledger, plan, applied)
            rep.ledger["backfilled"] = n
            if n:
                say(f"ledger: appended {n} correction(s) a previous run committed but did not record")
        if apply:
            chunks_done = 0
            for sec in (True, False):
                group = [c for c in plan.corrections if c.sec_critical == sec]
                phase = rep.sec if sec else rep.rest
                todo = [c for c in group if c.status == "pending"]
                label = "SEC-critical" if sec else "remaining"
                if todo:
                    say(f"re-extracting {len(todo):,} {label} record(s) from Salesforce")
                    ex = reextract(plan.target.sobject, plan.column, [c.record_id for c in todo], config,
                                   modstamp=plan.modstamp)
                    phase.reextracted += ex.records
                    rep.sf_metas += ex.metas
                    rep.bulk_job_ids += [j for m in ex.metas for j in (m.get("bulk_job_ids") or [])]
                    ready = []
                    for c in todo:
                        got = ex.values.get(c.record_id)
                        if got is None or got.get("value") in (None, ""):
                            c.status = "not_in_salesforce"
                            c.detail = "Salesforce returned no such record" if got is None else "Salesforce value is empty"
                            continue
                        c.new_value, c.salesforce = str(got["value"]), got
                        ready.append(c)
                    for i in range(0, len(ready), chunk_rows):
                        chunk = ready[i: i + chunk_rows]
                        bodies = _apply_chunk(conn, plan, info, chunk, run_id)
                        chunks_done += 1
                        _kill_hook(chunks_done)
                        if conn_ledger is not None and bodies:
                            conn_ledger.append_many([("corrections", b) for b in bodies])
                            rep.ledger["appended"] = rep.ledger.get("appended", 0) + len(bodies)
                        say(f"{label}: chunk {i // chunk_rows + 1} committed ({len(bodies)} new version(s))")
                _verify(conn, plan, group, phase)
                say(f"{label}: {phase.verified:,} correction(s) verified against Salesforce")
        for c in plan.corrections:
            ph = _phase(rep, c)
            if c.status == "applied":
                ph.applied += 1
            elif c.status == "already_applied":
                ph.already_applied += 1
            elif c.status == "in_sync":
                ph.in_sync += 1
            elif c.status == "conflict":
                ph.conflicts += 1
            elif c.status == "not_in_salesforce":
                ph.not_in_salesforce += 1
            else:
                ph.pending += 1


# -- outputs ---------------------------------------------------------------------------------------
ACTION_FIELDS = ("Id", "owner_id", "field", "salesforce_value", "stream_value", "warehouse_value", "raw_stream_value",
                 "sf_modstamp", "last_event_time", "sec_critical", "annual_revenue", "requested_action", "evidence")


def write_outputs(rep: RepairReport, out: Path) -> list[Path]:
    """plan.json (every record with its status), action_list.csv/.json, and repair.json after --apply."""
    plan = rep.plan
    return workspace.RepairOutput(Path(out)).write(
        plan={
            "mode": rep.mode, "run_id": rep.run_id, "mapping": plan.target.mapping, "column": plan.column,
            "target": plan.target.where(),
            "explain": {"dir": str(plan.explain_dir), "findings_sha256": plan.findings_sha256},
            "policy": policy(),
            "corrections": [c.to_dict() for c in plan.corrections],
            "action_list": plan.action_list, "unexplained": plan.unexplained},
        action_list={"mapping": plan.target.mapping, "object": plan.target.sobject, "field": plan.column,
                     "explain_findings_sha256": plan.findings_sha256, "records": plan.action_list},
        action_rows=plan.action_list, action_fields=ACTION_FIELDS,
        report={**rep.summary(), "records": [c.to_dict() for c in plan.corrections]} if rep.mode == "apply" else None)


def inputs_meta(rep: RepairReport) -> list[dict[str, Any]]:
    """The run's inputs for the ledger and the manifest (allow-listed, no credentials)."""
    from engine.evidence.manifest import describe_input

    plan = rep.plan
    out = [describe_input("explain", {"system": "parquet", "path": str(workspace.ExplainOutput(plan.explain_dir).findings_path),
                                      "rows": len(plan.corrections) + len(plan.action_list) + len(plan.unexplained)})]
    if rep.sf_metas:
        merged = dict(rep.sf_metas[0])
        merged["bulk_job_ids"] = rep.bulk_job_ids
        merged["soql"] = [s for m in rep.sf_metas for s in (m.get("soql") or [])]
        merged["rows"] = sum(int(m.get("rows") or 0) for m in rep.sf_metas)
        out.append(describe_input("source", merged))
    out.append(describe_input("target", {"system": "postgresql", "dsn": plan.target.ref.dsn,
                                         "object": f"{plan.target.ref.schema}.{plan.target.ref.table}"}))
    return out


# -- the use case: `recon repair` -----------------------------------------------------------------
def verify_inputs(explain_dir: Path, diff_dir: Path | None, trust: TrustOptions, *, apply: bool
                  ) -> dict[str, Any]:
    """The explain output (and the diff it explained) checked against the runs that wrote them
    before a plan is made from them. Writing corrections rests on them, so ``apply`` without a
    ledger or a key is refused (exit 2); a dry run says "unverified"."""
    from engine.app.trust import verify

    if apply:
        trust.require("recon repair --apply")
    out = workspace.ExplainOutput(Path(explain_dir))
    out.require()
    found: dict[str, Any] = {"explain": verify(out.dir, out.files(), command="explain", trust=trust).to_dict()}
    ddir = out.diff_dir(override=diff_dir)
    if ddir is not None:
        found["diff"] = verify(ddir, workspace.DiffOutput(ddir).files(), command="diff", trust=trust).to_dict()
    return found


@dataclass(frozen=True)
class RepairRequest:
    """What `recon repair` was asked."""

    from_explain: Path
    apply: bool = False
    mapping: str | None = None
    diff: Path | None = None
    target: str | None = None
    chunk_rows: int | None = None
    out_dir: Path | None = None
    evidence: EvidenceOptions = EvidenceOptions()
    #: ``--key PUB``: verify the explain (and diff) directories by the manifests signed in them
    pubkey: Path | None = None

    def check(self) -> None:
        """Usage errors, before the config is read."""
        self.evidence.check()


@dataclass
class RepairOutcome:
    report: RepairReport
    files: list[Path]
    summary: dict[str, Any]


def run(req: RepairRequest, config: Config, *, progress: Any = None) -> RepairOutcome:
    """Plan (and with ``apply`` write) the corrections, write the outputs, record the evidence."""
    from engine.app import evidence as ev
    from engine.evidence.lineage import new_run_id

    req.check()
    ledger_dsn = req.evidence.ledger_dsn(config)
    manifest = req.evidence.manifest
    verified = verify_inputs(req.from_explain, req.diff, TrustOptions(ledger_dsn, req.pubkey, config.pg_passfile()),
                             apply=req.apply)
    plan = load_plan(req.from_explain, config, mapping=req.mapping, target=req.target, diff_dir=req.diff)
    run_id = new_run_id()
    rep = run_repair(plan, config, apply=req.apply, run_id=run_id, ledger_dsn=ledger_dsn,
                     chunk_rows=req.chunk_rows, progress=progress)
    where = req.out_dir or (workspace.RepairOutput.default_for(req.from_explain).dir if req.apply
                            else (manifest.parent if manifest is not None else None))
    files = write_outputs(rep, where) if where is not None else []
    summary = rep.summary()
    summary["outputs"] = [str(f) for f in files]
    summary["verification"] = verified
    if ledger_dsn or manifest:
        summary["evidence"] = ev.record_evidence(
            "repair", rep.summary(), inputs_meta(rep), files, ledger_dsn=ledger_dsn,
            manifest_path=manifest, signing_key=req.evidence.signing_key, config_digest=config.digest, run_id=run_id,
            passfile=config.pg_passfile())
    return RepairOutcome(rep, files, summary)
