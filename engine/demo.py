"""`recon demo`: the incident on the embedded stack, step by step, each with a one-line explanation
and its timing. Steps are added here as the product grows; each step's failure stops the demo with
the step's name."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from engine.local.state import StackPaths


class Steps:
    """Prints `[n] what and why … seconds` per step."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.n = 0
        self.t0 = time.perf_counter()

    def run(self, title: str, fn: Callable[[], Any]) -> Any:
        self.n += 1
        self.console.print(f"[bold][{self.n}][/bold] {title}")
        t = time.perf_counter()
        result = fn()
        self.console.print(f"    [dim]done in {time.perf_counter() - t:.1f}s[/dim]")
        return result

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def system_counts(paths: StackPaths, endpoints: dict[str, Any], topic: str) -> dict[str, int]:
    """Count what each system holds, asking the systems themselves (not the generator)."""
    import psycopg

    from engine.local.stack import postgres_info
    from engine.local.state import load_credentials
    from engine.sources.kafka_count import count_messages
    from engine.sources.salesforce import SalesforceSettings, connect

    creds = load_credentials(paths)
    conn = connect(SalesforceSettings(
        login_url=endpoints["salesforce_login_url"], instance_url=endpoints["salesforce_instance_url"],
        ca_bundle=endpoints["salesforce_ca_bundle"], username=creds["salesforce_username"],
        password=creds["salesforce_password"], security_token=creds["salesforce_security_token"],
        consumer_key=creds["salesforce_consumer_key"], consumer_secret=creds["salesforce_consumer_secret"]))
    sf_accounts = int(conn.sf.query("SELECT COUNT() FROM Account")["totalSize"])
    with psycopg.connect(postgres_info(paths).socket_dsn) as pg:
        wh_events = pg.execute("SELECT count(*) FROM warehouse.clv_events").fetchone()[0]  # type: ignore[index]
        wh_accounts = pg.execute("SELECT count(*) FROM warehouse.customer_clv").fetchone()[0]  # type: ignore[index]
    return {
        "salesforce Account records": sf_accounts,
        f"kafka {topic} messages": count_messages(endpoints["kafka_bootstrap"], topic),
        "warehouse.clv_events rows": int(wh_events),
        "warehouse.customer_clv rows": int(wh_accounts),
    }


def diff_step(config_file: Path, out: Path) -> Any:
    from engine import config as config_mod
    from engine import reconcile

    cfg = config_mod.load(config_file)
    run = reconcile.run_diff(reconcile.DiffRequest.from_mapping(cfg.mapping("clv")), cfg)
    reconcile.write_outputs(run, out)
    return run


def audit_step(config_file: Path) -> Any:
    from engine import config as config_mod
    from engine import forensics
    from engine.sources import kafka as ks
    from engine.sources import sf_extract

    cfg = config_mod.load(config_file)
    k = cfg.section("kafka")
    return forensics.audit(ks.scan(k["bootstrap"], k["topic"]), org_id=sf_extract.connection(cfg).org_id)


def explain_step(config_file: Path, diff_dir: Path, out: Path) -> Any:
    from engine import config as config_mod
    from engine import explain

    cfg = config_mod.load(config_file)
    exp, _ = explain.run_explain(explain.ExplainRequest(diff_dir=diff_dir), cfg)
    explain.write_outputs(exp, out)
    return exp


def run(*, accounts: int, seed: int, kafka: str | None, keep_services: bool, out_dir: Path, paths: StackPaths,
        console: Console) -> int:
    from engine.local import scenario, stack

    steps = Steps(console)
    console.print("[bold]recon demo[/bold]: a month-end close finds warehouse CLV differing from Salesforce "
                  "for ~15% of accounts. Let's find, explain, fix and prove it.\n")
    endpoints = steps.run("Start the embedded stack: PostgreSQL, Kafka and a local Salesforce API",
                          lambda: stack.up(paths, kafka=kafka))
    console.print(f"    Kafka backend: {endpoints['kafka_backend']}")
    try:
        res = steps.run(f"Load the incident: {accounts:,} accounts, events re-delivered during a maintenance window",
                        lambda: scenario.load(scenario.ScenarioSpec(accounts=accounts, seed=seed),
                                              state_dir=paths.root, config_out=Path("recon.toml")))
        counts = steps.run("Count what each system holds (asked from each system)",
                           lambda: system_counts(paths, endpoints, scenario.TOPIC))
        for k, v in counts.items():
            console.print(f"    {k:32} {v:>10,}")
        console.print(f"    ground truth: {res.truth_file}")
        console.print(f"    config:       {res.config_file}")
        out_dir.mkdir(parents=True, exist_ok=True)
        run = steps.run("Diff Salesforce against the warehouse: both sides into Arrow, BLAKE3 Merkle segments, "
                        "record-level differences", lambda: diff_step(res.config_file, out_dir / "diff"))
        s = run.summary()
        console.print(f"    {s['mismatched']:,} mismatched, {s['missing_in_target']:,} missing in the warehouse, "
                      f"{s['unchanged']:,} unchanged; variance {s['variance_ratio']:.2%} of accounts, "
                      f"CLV off by {s['columns']['Customer_Lifetime_Value__c']['abs_variance']} in total")
        audit = steps.run("Audit the Kafka topic: re-delivered copies by deterministic event id, windows, "
                          "producer sequences", lambda: audit_step(res.config_file))
        console.print(f"    {audit.duplicates:,} re-delivered copies of {audit.duplicate_records:,} accounts' events, "
                      f"{audit.conflicts} conflicts, {audit.sequence['regressions']} sequence regressions")
        for w in audit.windows:
            console.print(f"    partition {w['partition']}: offsets {w['first_offset']:,}–{w['last_offset']:,} "
                          f"({w['events']:,} copies) at {w['first_ts']}")
        exp = steps.run("Explain every difference from the stream and price the commission exposure",
                        lambda: explain_step(res.config_file, out_dir / "diff", out_dir / "explain"))
        cls = ", ".join(f"{v:,} {k}" for k, v in exp.summary["classes"].items() if v)
        console.print(f"    {cls}")
        console.print(f"    commission overpayment at risk: {exp.summary['exposure']['total']} across "
                      f"{len(exp.summary['exposure']['by_owner']):,} account executives "
                      f"({exp.summary['sec_critical']['records']:,} SEC-critical accounts)")
    finally:
        if not keep_services:
            steps.run("Stop the embedded stack (use --keep-services to keep it)", lambda: stack.down(paths))
    console.print(f"\n[bold]demo finished in {steps.elapsed:.1f}s[/bold]. Next steps (diff, explain, gate, repair, "
                  "prove) arrive as recon grows; see README.md.")
    return 0
