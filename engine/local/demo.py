"""`recon demo`: the incident on the embedded stack, step by step, each step with a one-line
explanation and its timing, leaving every artefact in ``recon-out/``.

Each step calls the same functions the individual commands call, so the demo proves the commands,
not a special path. The exit code is 0 only when the incident was found, fixed and proven.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from engine.core.errors import Exit
from engine.local.state import StackPaths


class Steps:
    """Prints `[n] what and why` and `done in …s` per step."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.n = 0
        self.t0 = time.perf_counter()
        self.timings: list[tuple[str, float]] = []

    def run(self, title: str, fn: Callable[[], Any]) -> Any:
        self.n += 1
        self.console.print(f"[bold][{self.n}][/bold] {title}")
        t = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t
        self.timings.append((title, dt))
        self.console.print(f"    [dim]done in {dt:.1f}s[/dim]")
        return result

    def say(self, text: str) -> None:
        self.console.print(f"    {text}")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


@dataclass
class Outcome:
    found: bool = False
    fixed: bool = False
    proven: bool = False
    notes: list[str] = field(default_factory=list)


def system_counts(paths: StackPaths, config_file: Path, topic: str) -> dict[str, int]:
    """Count what each system holds, asking the systems themselves (not the generator)."""
    import psycopg

    from engine import config as config_mod
    from engine.connectors.kafka.count import count_messages
    from engine.connectors.salesforce import source as sf_extract
    from engine.local.stack import postgres_info

    cfg = config_mod.load(config_file)
    conn = sf_extract.connection(cfg)
    sf_accounts = int(conn.sf.query("SELECT COUNT() FROM Account")["totalSize"])
    with psycopg.connect(postgres_info(paths).socket_dsn) as pg:
        wh_events = pg.execute("SELECT count(*) FROM warehouse.clv_events").fetchone()[0]  # type: ignore[index]
        wh_accounts = pg.execute("SELECT count(*) FROM warehouse.customer_clv").fetchone()[0]  # type: ignore[index]
    return {
        "salesforce Account records": sf_accounts,
        f"kafka {topic} messages": count_messages(cfg.section("kafka")["bootstrap"], topic),
        "warehouse.clv_events rows": int(wh_events),
        "warehouse.customer_clv rows": int(wh_accounts),
    }


def diff_step(config_file: Path, out: Path, key: Path | None = None) -> Any:
    from engine import config as config_mod
    from engine.app import evidence, reconcile

    cfg = config_mod.load(config_file)
    run = reconcile.run_diff(reconcile.DiffRequest.from_mapping(cfg.mapping("clv")), cfg)
    outputs = reconcile.write_outputs(run, out)
    ev = evidence.record_diff_evidence(run, config=cfg, outputs=outputs, manifest_path=out / "manifest.json" if key else None,
                                       signing_key=key, lineage_dir=out.parent / "openlineage")
    return run, ev


def audit_step(config_file: Path, out: Path) -> Any:
    from engine import config as config_mod
    from engine.connectors.kafka import scan as ks
    from engine.connectors.salesforce import source as sf_extract
    from engine.core import forensics

    cfg = config_mod.load(config_file)
    k = cfg.section("kafka")
    a = forensics.audit(ks.scan(k["bootstrap"], k["topic"]), org_id=sf_extract.connection(cfg).org_id)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kafka-audit.json").write_text(json.dumps(a.summary(), indent=2, sort_keys=True, default=str) + "\n")
    return a


def _trust(cfg: Any) -> Any:
    """The demo verifies every artefact a step reads against the ledger its steps record in."""
    from engine.app.trust import TrustOptions

    return TrustOptions(cfg.section("ledger")["dsn"], None, cfg.pg_passfile())


def explain_step(config_file: Path, diff_dir: Path, out: Path, key: Path) -> Any:
    from engine import config as config_mod
    from engine.app import explain
    from engine.app.evidence import EvidenceOptions

    cfg = config_mod.load(config_file)
    ev = EvidenceOptions(ledger=cfg.section("ledger")["dsn"], manifest=out / "manifest.json", signing_key=key)
    res = explain.run(explain.ExplainRequest(diff_dir=diff_dir, out_dir=out, evidence=ev), cfg)
    return res.explanation


def prove_step(config_file: Path, out: Path, key: Path, pub: Path, manifests: list[Path]) -> dict[str, Any]:
    """Export a signed ledger checkpoint, then verify the ledger against it and every manifest with
    only the public key and the files — what an auditor would run."""
    from engine import config as config_mod
    from engine.core.errors import VerificationError
    from engine.evidence import manifest as mf
    from engine.store import ledger as ledger_mod

    cfg = config_mod.load(config_file)
    dsn = cfg.section("ledger")["dsn"]
    checkpoint = out / "ledger-checkpoint.txt"
    with ledger_mod.Ledger(dsn, passfile=cfg.pg_passfile()) as lg:
        cp = lg.export_checkpoint(checkpoint, key)
    report = ledger_mod.verify(dsn, checkpoint_file=checkpoint, pubkey=pub, passfile=cfg.pg_passfile())
    if not report.ok:  # exit 4, like `recon ledger verify`
        raise VerificationError(f"ledger verification failed: {report.reason}")
    for m in manifests:
        mf.verify_manifest(m, pub, data_dir=m.parent)
    return {"ledger_rows": report.rows, "checkpoint_size": cp.size, "checkpoint": str(checkpoint)}


def gate_step(config_file: Path, diff_dir: Path, out: Path, exclude_from: Path | None = None) -> dict[str, Any]:
    """Decide, record the decision in the ledger, and ask the SQL guard what an aggregation would hear."""
    import psycopg

    from engine import config as config_mod
    from engine.app import gate
    from engine.app.evidence import EvidenceOptions

    cfg = config_mod.load(config_file)
    dsn = cfg.section("ledger")["dsn"]
    res = gate.run_gate(gate.GateRequest(diff=diff_dir, exclude_from=exclude_from, out_dir=out,
                                         evidence=EvidenceOptions(ledger=dsn)), cfg,
                        record_evidence=False)
    assert res.decision is not None
    decision, guard_state = res.decision, res.document["sql_guard"]
    passfile = cfg.pg_passfile()
    with psycopg.connect(dsn, **({"passfile": str(passfile)} if passfile else {})) as conn:
        try:
            conn.execute("SELECT recon_audit.assert_circuit_closed(%s)", (decision.mapping,))
            guard, passes = "assert_circuit_closed('clv') passes: aggregations may run", True
        except psycopg.Error as exc:
            guard = f"assert_circuit_closed('clv') raises {exc.sqlstate}: aggregations halt"
            passes = False
    return {"state": decision.state, "reason": decision.reason, "guard": guard, "guard_passes": passes,
            "guard_installed": guard_state}


def repair_step(config_file: Path, explain_dir: Path, out: Path, key: Path) -> dict[str, Any]:
    from engine import config as config_mod
    from engine.app import evidence, repair
    from engine.evidence.lineage import new_run_id

    cfg = config_mod.load(config_file)
    dsn = cfg.section("ledger")["dsn"]
    run_id = new_run_id()
    repair.verify_inputs(explain_dir, None, _trust(cfg), apply=True)
    plan = repair.load_plan(explain_dir, cfg)
    rep = repair.run_repair(plan, cfg, apply=True, run_id=run_id, ledger_dsn=dsn)
    files = repair.write_outputs(rep, out)
    evidence.record_evidence("repair", rep.summary(), repair.inputs_meta(rep), files, ledger_dsn=dsn,
                             manifest_path=out / "manifest.json", signing_key=key, config_digest=cfg.digest,
                             run_id=run_id, passfile=cfg.pg_passfile())
    return rep.summary()


def left_by_rebuild() -> tuple[str, ...]:
    """The classes a warehouse rebuilt from the deduplicated stream still differs in: those where the
    stream itself or Salesforce holds the wrong value."""
    from engine.core import classes

    return classes.at_fault("stream", "salesforce")


def classes_line(counts: dict[str, int]) -> str:
    """The explain step's summary: each class with records, in the order explain reports them."""
    return ", ".join(f"{v:,} {k}" for k, v in counts.items() if v)


def prevent_step(config_file: Path, out: Path) -> dict[str, Any]:
    """The permanent fix, shown on the incident's own topic: duplicates cannot change the result."""
    from engine import config as config_mod
    from engine.app import reconcile
    from engine.connectors.kafka import consumer
    from engine.connectors.salesforce import source as sf_extract

    cfg = config_mod.load(config_file)
    dsn = cfg.section("postgres")["dsn"]
    k = cfg.section("kafka")
    settings = consumer.ConsumerSettings(
        bootstrap=k["bootstrap"], topic=k["topic"], group="recon-demo-idempotent", dsn=dsn,
        table=consumer.parse_table("warehouse.clv_events_idempotent"), org_id=sf_extract.connection(cfg).org_id,
        until_caught_up=True, reset_offsets=True, metrics_interval_s=0,
        passfile=str(cfg.pg_passfile()) if cfg.pg_passfile() else None)
    res = consumer.run(settings).as_dict()
    run = reconcile.run_diff(reconcile.DiffRequest(
        source="salesforce:Account", target=f"{dsn}#warehouse.clv_events_idempotent_aggregates",
        keys=(("Id", "record_id"),), columns=(("Customer_Lifetime_Value__c", "clv"),)), cfg)
    reconcile.write_outputs(run, out)
    import polars as pl

    findings = pl.read_parquet(out.parent / "explain" / "findings.parquet")
    expected = set(findings.filter(pl.col("class").is_in(list(left_by_rebuild())))["Id"].to_list())
    got = set(run.result.differences["key"].to_list())
    out.joinpath("consume.json").write_text(json.dumps(res, indent=2, sort_keys=True, default=str) + "\n")
    return {**res["run"], "events_per_s": res["events_per_s"], "differences": len(got), "expected": len(expected),
            "as_expected": got == expected}


def cost_step(config_file: Path, out_dir: Path, key: Path) -> dict[str, Any]:
    from engine import config as config_mod
    from engine.app import cost, evidence

    cfg = config_mod.load(config_file)
    doc, _ = cost.document(out_dir / "explain", out_dir / "diff", cfg.section("cost"), None, cfg.where,
                           trust=_trust(cfg))
    path = out_dir / "cost.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    # recorded like every step's output, so `recon report` can verify it too
    evidence.record_evidence("cost", doc, [], [path], ledger_dsn=cfg.section("ledger")["dsn"],
                             manifest_path=out_dir / "manifest.json", signing_key=key, config_digest=cfg.digest,
                             passfile=cfg.pg_passfile())
    return doc


def _cost_line(r: dict[str, Any]) -> str:
    def g(*names: str) -> Any:
        for n in names:
            if n in r:
                v = r[n]
                return v.get("value", v) if isinstance(v, dict) else v
        return "?"

    return (f"cost per incident {g('cost_per_incident')}, expected monthly loss {g('expected_monthly_loss')}, "
            f"break-even {g('break_even_days')} days, 12-month risk-adjusted ROI {g('roi_12_months', 'roi_12_month')}")


def _report(config_file: Path, out_dir: Path) -> tuple[Path, list[tuple[str, str]]]:
    """The report, and its headline numbers for the terminal."""
    from engine import config as config_mod
    from engine.app.report import make_report
    from engine.report.html import headline

    cfg = config_mod.load(config_file)
    # the report a controller signs: artefacts verified by their signed manifests, and a Proof section
    # that also walks the ledger chain up to the checkpoint the previous step exported
    trust = replace(_trust(cfg), pubkey=out_dir / "recon.pub")
    path, inputs = make_report(out_dir, config=cfg, trust=trust, checkpoint=out_dir / "ledger-checkpoint.txt")
    return path, headline(inputs)


def _keys(key_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    from engine.evidence import manifest as mf

    key, pub = mf.keygen(key_dir, force=True)
    shutil.copy2(pub, out_dir / "recon.pub")
    return key, out_dir / "recon.pub"


#: Set by scripts/demo to the directory it was started from (it works in the checkout's root):
#: the commands the demo prints name paths as seen from there, so they work pasted into that shell.
CALLER_CWD_ENV = "RECON_DEMO_CALLER_CWD"


def _shown(path: Path | str) -> str:
    """A path as the user's shell sees it: relative to the directory the demo was started from
    when inside it (as given, e.g. ``recon-out/diff``), else absolute."""
    import os

    caller = Path(os.environ.get(CALLER_CWD_ENV) or Path.cwd()).resolve()
    full = Path(path).resolve()
    try:
        return str(full.relative_to(caller)) or "."
    except ValueError:
        return str(full)


def shell_line(*words: Path | str) -> str:
    """One shell command for copying: paths as the caller's shell sees them, every word quoted."""
    import shlex

    return " ".join(shlex.quote(_shown(w) if isinstance(w, Path) else w) for w in words)


def activation_line() -> str | None:
    """``source …/bin/activate`` for the virtualenv recon runs from (None outside one): the demo's
    commands need ``recon`` on PATH, and scripts/demo installs it into .venv only."""
    import shlex
    import sys

    script = Path(sys.prefix) / "bin" / "activate"
    if sys.prefix == sys.base_prefix or not script.is_file():
        return None
    return f"source {shlex.quote(_shown(script))}"


def run(*, accounts: int, seed: int, kafka: str | None, keep_services: bool, out_dir: Path, paths: StackPaths,
        console: Console) -> Exit:
    from engine.local import scenario, stack

    steps = Steps(console)
    outcome = Outcome()
    console.print("[bold]recon demo[/bold]: a month-end close finds warehouse CLV differing from Salesforce "
                  "for ~15% of accounts. Let's find, explain, fix and prove it.\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    config_file = Path("recon.toml")
    endpoints = steps.run("Start the embedded stack: PostgreSQL, Kafka and a local Salesforce API",
                          lambda: stack.up(paths, kafka=kafka))
    steps.say(f"Kafka backend: {endpoints['kafka_backend']}")
    try:
        steps.run(f"Load the incident: {accounts:,} accounts, events re-delivered during a maintenance window",
                        lambda: scenario.load(scenario.ScenarioSpec(accounts=accounts, seed=seed),
                                              state_dir=paths.root, config_out=config_file))
        counts = steps.run("Count what each system holds (asked from each system)",
                           lambda: system_counts(paths, config_file, scenario.TOPIC))
        for k, v in counts.items():
            steps.say(f"{k:32} {v:>10,}")
        key, pub = steps.run("Create a signing key for the evidence (Ed25519: the private key stays in the state "
                             "directory, the public key goes with the artefacts)",
                             lambda: _keys(paths.root / "keys", out_dir))
        run_, ev = steps.run("Diff Salesforce against the warehouse: both sides into Arrow, BLAKE3 Merkle segments, "
                             "record-level differences, signed manifest", lambda: diff_step(config_file, out_dir / "diff", key))
        s = run_.summary()
        outcome.found = bool(s["mismatched"] or s["missing_in_target"])
        steps.say(f"{s['mismatched']:,} mismatched, {s['missing_in_target']:,} missing in the warehouse, "
                  f"{s['unchanged']:,} unchanged; variance {s['variance_ratio']:.2%} of accounts, "
                  f"CLV off by {s['columns']['Customer_Lifetime_Value__c']['abs_variance']} in total")
        audit = steps.run("Audit the Kafka topic: re-delivered copies by deterministic event id, windows, "
                          "producer sequences", lambda: audit_step(config_file, out_dir / "kafka-audit"))
        steps.say(f"{audit.duplicates:,} re-delivered copies of {audit.duplicate_records:,} accounts' events, "
                  f"{audit.conflicts} conflicts, {audit.sequence['regressions']} sequence regressions")
        for w in audit.windows:
            steps.say(f"partition {w['partition']}: offsets {w['first_offset']:,}–{w['last_offset']:,} "
                      f"({w['events']:,} copies) at {w['first_ts']}")
        exp = steps.run("Explain every difference from the stream and price the commission exposure",
                        lambda: explain_step(config_file, out_dir / "diff", out_dir / "explain", key))
        steps.say(classes_line(exp.summary["classes"]))
        steps.say(f"commission overpayment at risk: {exp.summary['exposure']['total']} across "
                  f"{len(exp.summary['exposure']['by_owner']):,} account executives "
                  f"({exp.summary['sec_critical']['records']:,} SEC-critical accounts)")
        dec = steps.run("Gate: the circuit breaker compares the variance with its 0.5% thresholds",
                        lambda: gate_step(config_file, out_dir / "diff", out_dir / "gate-before"))
        steps.say(f"breaker {dec['state'].upper()}: {dec['reason']}")
        steps.say(f"SQL guard: {dec['guard']}")
        rep = steps.run("Repair surgically: re-extract exactly the divergent records from Salesforce (Bulk API 2.0), "
                        "write corrections as new versions, SEC-critical accounts first",
                        lambda: repair_step(config_file, out_dir / "explain", out_dir / "repair", key))
        c = rep["corrections"]
        steps.say(f"SEC-critical first: {rep['sec_critical'].get('applied', 0):,} applied and verified; then "
                  f"{rep['rest'].get('applied', 0):,} more; {rep['salesforce']['records_reextracted']:,} records "
                  f"re-extracted for {c['planned']:,} planned corrections")
        steps.say(f"{rep['action_list']:,} stale Salesforce values → action list for their owners "
                  f"({out_dir / 'repair' / 'action_list.csv'}); {rep['unexplained']:,} unexplained left alone")
        after, _ = steps.run("Diff again: what is left must be only the Salesforce-side action items",
                             lambda: diff_step(config_file, out_dir / "diff-after", key))
        sa = after.summary()
        left = sa["mismatched"] + sa["missing_in_target"] + sa["missing_in_source"]
        steps.say(f"{left:,} difference(s) left (action list: {rep['action_list']:,}, unexplained: {rep['unexplained']:,})")
        dec2 = steps.run("Gate again, excluding the action-list records by the documented policy",
                         lambda: gate_step(config_file, out_dir / "diff-after", out_dir / "gate-after",
                                           exclude_from=out_dir / "repair"))
        steps.say(f"breaker {dec2['state'].upper()}: {dec2['reason']}")
        steps.say(f"SQL guard: {dec2['guard']}")
        outcome.fixed = (dec["state"] == "open" and dec2["state"] == "closed"
                         and left == rep["action_list"] + rep["unexplained"] and dec2["guard_passes"])
        prev = steps.run("Prevent: replay the whole duplicated topic through the idempotent consumer "
                         "(deterministic event ids) into a fresh table, then diff it against Salesforce",
                         lambda: prevent_step(config_file, out_dir / "prevent"))
        steps.say(f"{prev['consumed']:,} events consumed, {prev['duplicates']:,} duplicates recognised and "
                  f"skipped, {prev['dead_letters']:,} dead letters ({prev['events_per_s']:,.0f} events/s)")
        steps.say(f"rebuilt CLV differs from Salesforce for {prev['differences']:,} account(s): "
                  + ("exactly" if prev["as_expected"] else "NOT exactly")
                  + f" the {prev['expected']:,} whose events never reached the topic or whose Salesforce value is stale")
        doc = steps.run("Price the data debt: exposure, detection cost, prevention cost, break-even and "
                        "risk-adjusted ROI", lambda: cost_step(config_file, out_dir, key))
        r = doc.get("results", doc)
        steps.say(_cost_line(r))
        manifests = [out_dir / d / "manifest.json" for d in ("diff", "explain", "repair", "diff-after", ".")]
        proof = steps.run("Prove it: export a signed ledger checkpoint, verify the hash chain and every manifest "
                          "with only the public key", lambda: prove_step(config_file, out_dir, key, pub, manifests))
        outcome.proven = True
        steps.say(f"ledger: {proof['ledger_rows']:,} rows verified against checkpoint size {proof['checkpoint_size']:,}; "
                  f"{len(manifests)} manifests: signatures, subjects and Merkle roots verified")
        report, numbers = steps.run("Write the HTML report (self-contained, charts inline)",
                                    lambda: _report(config_file, out_dir))
        steps.say(f"report: {report}")
        from engine.report.terminal import render_headline

        render_headline(console, numbers)
    finally:
        if not keep_services:
            steps.run("Stop the embedded stack (use --keep-services to keep it)", lambda: stack.down(paths))
    console.print(f"\n[bold]demo finished in {steps.elapsed:.1f}s[/bold]")
    console.print(f"found:  {'yes' if outcome.found else 'no'} — see {out_dir / 'diff'} and {out_dir / 'explain'}")
    console.print(f"fixed:  {'yes' if outcome.fixed else 'no'} — see {out_dir / 'repair'} and {out_dir / 'diff-after'}")
    verify = shell_line("recon", "manifest", "verify", out_dir / "diff" / "manifest.json", "--key",
                        out_dir / "recon.pub", "--data", out_dir / "diff")
    # commands are printed whole on one line (soft_wrap): copied from a narrow terminal or a log,
    # they paste as one command
    console.print(f"proven: {'yes' if outcome.proven else 'no'} — verify with `{verify}`", soft_wrap=True,
                  markup=False)
    console.print(f"artefacts: {out_dir.resolve()}", soft_wrap=True, markup=False)
    activate = activation_line()
    if activate:
        console.print(f"recon on your PATH, for the commands above: {activate}", soft_wrap=True, markup=False)
    return Exit.OK if outcome.found and outcome.fixed and outcome.proven else Exit.FINDINGS
