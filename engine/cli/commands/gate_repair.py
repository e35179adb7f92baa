"""`recon gate` (the circuit breaker) and `recon repair` (surgical, versioned corrections).

Thin: parse, call `engine.app.gate` / `engine.app.repair`, record evidence, render. Exit codes: gate 0
closed, 3 open, 2 usage; repair 0 nothing left to do (or applied cleanly), 1 a plan with pending
corrections or records that need a person, 4 a correction that does not verify.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    pass

from engine.cli.options import ConfigOpt as Cfg
from engine.cli.options import JsonFlag, ManifestOpt, PubKeyOpt
from engine.cli.options import LedgerInOpt as LedgerOpt
from engine.cli.options import SigningKeyOpt as KeyOpt


def _accept_help() -> str:
    """Help for ``--accept-classes``, from the class list: the excludable classes, the default marked."""
    from engine.core import classes

    default = classes.accepted_by_default()
    named = ", ".join(f"{c} (default)" if c in default else c for c in classes.excludable())
    return f"Classes --exclude-from may exclude: {named}."


_ACCEPT_HELP = _accept_help()  # module level: typer reads the (string) annotations in this module's namespace


def _say(line: str) -> None:
    from engine.cli._shared import out

    out.print(line, soft_wrap=True, markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("gate")
    def gate_cmd(
        diff: Annotated[Path | None, typer.Option("--diff", help="Output directory of `recon diff --out`.")] = None,
        mapping: Annotated[str | None, typer.Option("--mapping", help="Mapping the breaker is kept for "
                                                    "(default: the diff's).")] = None,
        exclude_from: Annotated[Path | None, typer.Option(
            "--exclude-from", help="Repair (or explain) output: exclude the records it classified in an accepted "
            "class, by the documented policy.")] = None,
        accept_classes: Annotated[str | None, typer.Option(
            "--accept-classes", help=_ACCEPT_HELP)] = None,
        override: Annotated[str | None, typer.Option(
            "--override", help="Manual decision: close or open (needs --reason and --operator).")] = None,
        reason: Annotated[str | None, typer.Option("--reason", help="Why (with --override).")] = None,
        operator: Annotated[str | None, typer.Option("--operator", help="Who (with --override).")] = None,
        status: Annotated[bool, typer.Option("--status", help="Show the breaker's state (latest decision).")] = False,
        install_guard: Annotated[bool, typer.Option(
            "--install-guard", help="Install recon_audit.assert_circuit_closed in the ledger database.")] = False,
        guard_role: Annotated[list[str] | None, typer.Option(
            "--guard-role", help="With --install-guard: a role that will call the guard (gets recon_audit_reader, "
            "i.e. USAGE on the schema); repeatable.")] = None,
        lag: Annotated[bool, typer.Option("--lag", help="Decide the breaker's lag reason: the amount and age of "
                                          "the events the warehouse's consumer has not applied yet, against [gate] "
                                          "NAME.lag_amount / lag_seconds (needs --mapping).")] = False,
        out_dir: Annotated[Path | None, typer.Option("--out", help="Write gate_decision.json here.")] = None,
        config: Cfg = None,
        ledger: LedgerOpt = None,
        pubkey: PubKeyOpt = None,
        manifest: ManifestOpt = None,
        signing_key: KeyOpt = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Open or close the circuit breaker from a verified diff (exit 0 closed, 3 open, 4 not verified).

        The breaker keeps a state per reason (variance: diffs and overrides; lag: --lag) and is open
        while any reason is.

        The diff (and --exclude-from) must be a run's output exactly as recorded in the ledger (--ledger)
        or signed in DIR/manifest.json (--key PUB), and a diff of the mapping as configured."""
        from engine import config as config_mod
        from engine.app import gate as gate_mod
        from engine.app.evidence import EvidenceOptions
        from engine.cli._shared import emit_json

        req = gate_mod.GateRequest(
            diff=diff, mapping=mapping, exclude_from=exclude_from, accept_classes=accept_classes, override=override,
            reason=reason, operator=operator, status=status, install_guard=install_guard,
            guard_roles=tuple(guard_role or ()), out_dir=out_dir,
            evidence=EvidenceOptions(ledger, manifest, signing_key), pubkey=pubkey, lag=lag)
        req.check()
        res = gate_mod.run_gate(req, config_mod.load(config))
        if res.warning:
            from engine.cli._shared import err

            err.print(f"recon: warning: {res.warning}", markup=False, highlight=False, soft_wrap=True)
        if as_json:
            emit_json(res.document)
        elif res.mode == "install_guard":
            info = res.document
            _say(f"installed {info['function']} (SECURITY DEFINER, owner {info['owner']}; raises SQLSTATE "
                 f"{info['sqlstate']} while the breaker is open)")
        elif res.mode == "status":
            latest, state = res.document["latest"], res.document["state"]
            when = f" since {latest['recorded_at']} (decision seq {latest['seq']}): {latest['body'].get('reason')}" \
                if latest else ""
            _say(f"circuit breaker for {mapping}: {state}{when}{_open_reasons(res.document)}")
        else:
            _render_gate(res.decision, res.entry)
            _say(f"circuit breaker for {res.document['mapping']}: {res.document['state']}"
                 f"{_open_reasons(res.document)}")
        raise typer.Exit(int(res.exit_code))

    @app.command("repair")
    def repair_cmd(
        from_explain: Annotated[Path, typer.Option("--from-explain", help="Output directory of `recon explain --out`.")],
        apply: Annotated[bool, typer.Option("--apply", help="Write the corrections (default: print the plan only).")] = False,
        mapping: Annotated[str | None, typer.Option("--mapping", help="Mapping (default: the explained diff's).")] = None,
        diff: Annotated[Path | None, typer.Option("--diff", help="The diff directory the explain used "
                                                  "(default: as recorded in explain.json).")] = None,
        target: Annotated[str | None, typer.Option("--target", help="Warehouse table to correct "
                                                   "(postgresql://…#schema.table; default: the mapping's target).")] = None,
        chunk_rows: Annotated[int | None, typer.Option("--chunk-rows", min=1, help="Corrections per transaction "
                                                       "(default RECON_REPAIR_CHUNK_ROWS or 200).")] = None,
        out_dir: Annotated[Path | None, typer.Option("--out", help="Write plan.json, action_list.csv/.json and "
                                                     "repair.json here (--apply default: FROM_EXPLAIN/repair).")] = None,
        config: Cfg = None,
        ledger: LedgerOpt = None,
        pubkey: PubKeyOpt = None,
        manifest: ManifestOpt = None,
        signing_key: KeyOpt = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Correct the divergent records surgically as new versions; dry run unless --apply.

        The explain (and diff) directories are verified first (--ledger or --key PUB); --apply refuses
        without either (exit 2), and a file no run recorded is refused (exit 4)."""
        from engine import config as config_mod
        from engine.app import repair as repair_mod
        from engine.app.evidence import EvidenceOptions
        from engine.cli._shared import emit_json, progress

        req = repair_mod.RepairRequest(from_explain=from_explain, apply=apply, mapping=mapping, diff=diff,
                                       target=target, chunk_rows=chunk_rows, out_dir=out_dir,
                                       evidence=EvidenceOptions(ledger, manifest, signing_key), pubkey=pubkey)
        req.check()
        res = repair_mod.run(req, config_mod.load(config), progress=None if as_json else progress)
        if any(v.get("status") == "unverified" for v in res.summary.get("verification", {}).values()):
            from engine.cli._shared import err

            err.print(f"recon: warning: unverified: {from_explain} was not checked against a ledger or a signed "
                      "manifest (give --ledger DSN or --key PUB)", markup=False, highlight=False, soft_wrap=True)
        rep, plan = res.report, res.report.plan
        if as_json:
            emit_json({**res.summary, "records": [c.to_dict() for c in plan.corrections],
                       "action_list_records": plan.action_list, "unexplained_records": plan.unexplained})
        else:
            _render_repair(rep, res.files)
        raise typer.Exit(int(rep.exit_code))


# -- rendering -------------------------------------------------------------------------------------
def _open_reasons(doc: dict[str, Any]) -> str:
    names = doc.get("open_reasons") or []
    return f" (open reasons: {', '.join(names)})" if names else ""


def _render_gate(decision: Any, entry: dict[str, Any] | None) -> None:
    word = "OPEN" if decision.is_open else "closed"
    _say(f"{', '.join(decision.reasons)} for {decision.mapping}: {word} ({decision.kind})")
    _say(f"reason: {decision.reason}")
    if decision.operator:
        _say(f"operator: {decision.operator}")
    ex = decision.exclusion
    if ex:
        raw = decision.raw_ratios
        _say(f"excluded {ex['excluded_count']} record(s) ({', '.join(ex['accepted_classes'])}) from "
             f"{ex['source']['kind']} output {ex['source']['dir']}; refused {ex['refused_count']}; raw ratios "
             f"variance {raw.get('variance_ratio')}, amount {raw.get('amount_variance_ratio')}")
        for r in ex["refused"][:10]:
            _say(f"  refused {r['key']} ({r['class']}): {r['reason']}")
    if entry:
        _say(f"recorded in recon_audit.gate_decisions seq {entry['seq']}")
    else:
        _say("not recorded: no ledger (pass --ledger DSN); the SQL guard does not see this decision")


def _render_repair(rep: Any, files: list[Path]) -> None:
    plan = rep.plan
    verb = "applied" if rep.mode == "apply" else "plan (dry run: nothing written; --apply to write)"
    _say(f"recon repair {verb}: {plan.target.where()} column {plan.target.value} from Salesforce "
         f"{plan.target.sobject}.{plan.column}")
    _say("classes: " + ", ".join(f"{v:,} {k}" for k, v in sorted(plan.classes.items())))
    limit = 60
    _say("corrections, SEC-critical first (Id, class, SEC, warehouse value → Salesforce value, status, evidence):")
    for c in plan.corrections[:limit]:
        d = c.to_dict()
        offs = c.copy_offsets
        ev = (f"{len(offs)} re-delivered cop{'y' if len(offs) == 1 else 'ies'} at P:O {','.join(offs[:3])}"
              f"{'…' if len(offs) > 3 else ''}") if offs else (c.detail or "")
        old = c.old_value if c.old_value is not None else "(no row)"
        _say(f"  {c.record_id}  {c.cls:<20} {'SEC' if c.sec_critical else '   '}  {old:>12} → {d['new_value']!s:<12} "
             f"{c.status:<15} {ev}")
    if len(plan.corrections) > limit:
        _say(f"… and {len(plan.corrections) - limit:,} more (every record is in plan.json and in --json)")
    s = rep.summary()
    for name, ph in (("SEC-critical", s["sec_critical"]), ("rest", s["rest"])):
        _say(f"{name}: {ph['planned']:,} planned, {ph['applied']:,} applied, {ph['already_applied']:,} already applied, "
             f"{ph['in_sync']:,} in sync, {ph['conflicts']:,} conflicts, {ph['not_in_salesforce']:,} not in Salesforce, "
             f"{ph['verified']:,} verified, {ph['pending']:,} pending")
    if rep.mode == "apply":
        sf = s["salesforce"]
        _say(f"Salesforce: {sf['records_reextracted']:,} record(s) re-extracted in {len(sf['bulk_job_ids'])} Bulk API "
             f"2.0 job(s) (API {sf['api_version']})")
        if rep.migration:
            m = rep.migration
            _say(f"versioned: {m['view']} is now a view of the current versions in {m['versions_table']} "
                 f"({m['original_versions']:,} original versions)")
        led = s["ledger"]
        if led.get("note"):
            _say(led["note"])
        else:
            _say(f"ledger: {led.get('appended', 0):,} correction(s) appended, {led.get('backfilled', 0):,} backfilled")
    if plan.action_list:
        from engine.core.classes import Repair, with_repair

        _say(f"action list for Salesforce owners: {len(plan.action_list):,} "
             f"{'/'.join(with_repair(Repair.ACTION_LIST))} record(s) (not changed in the warehouse)")
    if plan.unexplained:
        _say(f"unexplained: {len(plan.unexplained):,} record(s) left alone for investigation")
    if files:
        _say("written: " + ", ".join(str(f) for f in files))
