"""`recon gate` (the circuit breaker) and `recon repair` (surgical, versioned corrections).

Thin: parse, call `engine.app.gate` / `engine.app.repair`, record evidence, render. Exit codes: gate 0
closed, 3 open, 2 usage; repair 0 nothing left to do (or applied cleanly), 1 a plan with pending
corrections or records that need a person, 4 a correction that does not verify.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    pass

Cfg = Annotated[Path | None, typer.Option("-C", "--config", help="recon.toml")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
LedgerOpt = Annotated[str | None, typer.Option(
    "--ledger", help="recon_audit ledger DSN (or RECON_LEDGER_DSN, or dsn in the ledger table of recon.toml).")]
ManifestOpt = Annotated[Path | None, typer.Option("--manifest", help="Write a signed DSSE/in-toto manifest here.")]
KeyOpt = Annotated[Path | None, typer.Option("--signing-key", help="Ed25519 key from `recon keygen` (with --manifest).")]


def _say(line: str) -> None:
    from engine.cli._shared import out

    out.print(line, soft_wrap=True, markup=False, highlight=False)


def _need_ledger(dsn: str | None, what: str) -> str:
    from engine.core.errors import UsageError

    if not dsn:
        raise UsageError(f"{what} needs the ledger: pass --ledger DSN, set RECON_LEDGER_DSN or [ledger] dsn in recon.toml")
    return dsn


def _dump(path: Path, obj: Any) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return path


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
            "--accept-classes", help="Classes --exclude-from may exclude: stale_salesforce (default), "
            "unexplained.")] = None,
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
        out_dir: Annotated[Path | None, typer.Option("--out", help="Write gate_decision.json here.")] = None,
        config: Cfg = None,
        ledger: LedgerOpt = None,
        manifest: ManifestOpt = None,
        signing_key: KeyOpt = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Open or close the circuit breaker from a diff (exit 0 closed, 3 open)."""
        from engine import config as config_mod
        from engine.app import evidence
        from engine.app import gate as gate_mod
        from engine.cli._shared import emit_json
        from engine.core.errors import UsageError
        from engine.evidence.lineage import new_run_id

        evidence.check_manifest_options(manifest, signing_key)
        modes = [m for m, on in (("--diff", diff is not None), ("--override", override is not None),
                                 ("--status", status), ("--install-guard", install_guard)) if on]
        if len(modes) != 1:
            raise UsageError("pass exactly one of --diff DIR, --override close|open, --status, --install-guard"
                             + (f" (got {', '.join(modes)})" if modes else ""))
        if (exclude_from or accept_classes) and diff is None:
            raise UsageError("--exclude-from and --accept-classes apply to --diff DIR")
        if guard_role and not install_guard:
            raise UsageError("--guard-role goes with --install-guard")
        if (reason or operator) and override is None:
            raise UsageError("--reason and --operator go with --override close|open")
        cfg = config_mod.load(config)
        cfg.use_passfile()
        ledger_dsn = evidence.resolve_ledger_dsn(ledger, cfg)

        if install_guard:
            info = gate_mod.install_guard(_need_ledger(ledger_dsn, "--install-guard"), tuple(guard_role or ()))
            if as_json:
                emit_json(info)
            else:
                _say(f"installed {info['function']} (SECURITY DEFINER, owner {info['owner']}; raises SQLSTATE "
                     f"{info['sqlstate']} while the breaker is open)")
            raise typer.Exit(0)

        if status:
            if not mapping:
                raise UsageError("--status needs --mapping NAME")
            latest = gate_mod.latest_decision(_need_ledger(ledger_dsn, "--status"), mapping)
            state = (latest or {}).get("state") or "no decision"
            is_open = latest is not None and state != "closed"
            if as_json:
                emit_json({"mapping": mapping, "state": state, "latest": latest})
            else:
                when = f" since {latest['recorded_at']} (decision seq {latest['seq']}): {latest['body'].get('reason')}" \
                    if latest else ""
                _say(f"circuit breaker for {mapping}: {state}{when}")
            raise typer.Exit(3 if is_open else 0)

        run_id = new_run_id()
        inputs: list[dict[str, Any]] = []
        if override is not None:
            if not mapping:
                raise UsageError("--override needs --mapping NAME")
            state_word = {"close": "closed", "closed": "closed", "open": "open"}.get(override.strip().lower())
            if state_word is None:
                raise UsageError(f"--override {override!r}: use close or open")
            decision = gate_mod.override(mapping, state_word, reason=reason, operator=operator, run_id=run_id)
            _need_ledger(ledger_dsn, "--override (it is written to the ledger)")
        else:
            assert diff is not None
            accepted = gate_mod.parse_accept_classes(accept_classes) if accept_classes else None
            decision = gate_mod.decide(diff, cfg, run_id=run_id, mapping=mapping, exclude_from=exclude_from,
                                       accept_classes=accepted)
            from engine.evidence.manifest import describe_input

            inputs.append(describe_input("diff", {"system": "parquet", "path": str(diff / "differences.parquet")}))
            src = (decision.exclusion or {}).get("source") or {}
            if src.get("kind") == "explain":  # a repair's plan.json is identified by its digest in the decision
                inputs.append(describe_input("exclusions", {"system": "parquet",
                                                            "path": str(Path(src["dir"]) / src["file"])}))
        entry = None
        guard: str | None = None
        if ledger_dsn:
            entry, guard, warning = gate_mod.commit(ledger_dsn, decision)
            if warning:
                from engine.cli._shared import err

                err.print(f"recon: warning: {warning}", markup=False, highlight=False, soft_wrap=True)
        body = decision.body()
        outputs: list[Path] = []
        target_dir = out_dir or (manifest.parent if manifest is not None else None)
        if target_dir is not None:
            outputs.append(_dump(Path(target_dir) / "gate_decision.json", {**body, "ledger_entry": entry}))
        result: dict[str, Any] = {"mapping": decision.mapping, "state": decision.state,
                                  "exit_code": 3 if decision.is_open else 0, "decision": body,
                                  "ledger_entry": entry, "recorded": entry is not None,
                                  "sql_guard": guard}
        if ledger_dsn or manifest:
            result["evidence"] = evidence.record_evidence(
                "gate", body, inputs, outputs, ledger_dsn=ledger_dsn, manifest_path=manifest,
                signing_key=signing_key, config_digest=cfg.digest, run_id=run_id)
        if as_json:
            emit_json(result)
        else:
            _render_gate(decision, entry)
        raise typer.Exit(3 if decision.is_open else 0)

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
        manifest: ManifestOpt = None,
        signing_key: KeyOpt = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Correct the divergent records surgically as new versions; dry run unless --apply."""
        from engine import config as config_mod
        from engine.app import evidence
        from engine.app import repair as repair_mod
        from engine.cli._shared import emit_json, progress
        from engine.evidence.lineage import new_run_id

        evidence.check_manifest_options(manifest, signing_key)
        cfg = config_mod.load(config)
        cfg.use_passfile()
        ledger_dsn = evidence.resolve_ledger_dsn(ledger, cfg)
        plan = repair_mod.load_plan(from_explain, cfg, mapping=mapping, target=target, diff_dir=diff)
        run_id = new_run_id()
        rep = repair_mod.run_repair(plan, cfg, apply=apply, run_id=run_id, ledger_dsn=ledger_dsn,
                                    chunk_rows=chunk_rows, progress=None if as_json else progress)
        where = out_dir or (from_explain / "repair" if apply else (manifest.parent if manifest is not None else None))
        files = repair_mod.write_outputs(rep, where) if where is not None else []
        summary = rep.summary()
        summary["outputs"] = [str(f) for f in files]
        if ledger_dsn or manifest:
            summary["evidence"] = evidence.record_evidence(
                "repair", rep.summary(), repair_mod.inputs_meta(rep), files, ledger_dsn=ledger_dsn,
                manifest_path=manifest, signing_key=signing_key, config_digest=cfg.digest, run_id=run_id)
        if as_json:
            emit_json({**summary, "records": [c.to_dict() for c in plan.corrections],
                       "action_list_records": plan.action_list, "unexplained_records": plan.unexplained})
        else:
            _render_repair(rep, files)
        raise typer.Exit(rep.exit_code)


# -- rendering -------------------------------------------------------------------------------------
def _render_gate(decision: Any, entry: dict[str, Any] | None) -> None:
    word = "OPEN" if decision.is_open else "closed"
    _say(f"circuit breaker for {decision.mapping}: {word} ({decision.kind})")
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
        _say(f"action list for Salesforce owners: {len(plan.action_list):,} stale_salesforce record(s) "
             "(not changed in the warehouse)")
    if plan.unexplained:
        _say(f"unexplained: {len(plan.unexplained):,} record(s) left alone for investigation")
    if files:
        _say("written: " + ", ".join(str(f) for f in files))
