"""`recon kafka-audit` and `recon explain` (thin: parse, call, render)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from engine.cli._shared import emit_json, out, progress
from engine.cli.options import (
    AmountField,
    EventTimeField,
    EventTypeField,
    ManifestOpt,
    OrgIdField,
    PubKeyOpt,
    RecordIdField,
)
from engine.cli.options import ConfigOpt as Cfg
from engine.cli.options import KafkaConfigOpt as KafkaCfg
from engine.cli.options import LedgerInOpt as LedgerOpt
from engine.cli.options import SigningKeyOpt as KeyOpt
from engine.core.errors import Exit

RecordField, TypeField, TimeField, OrgField = RecordIdField, EventTypeField, EventTimeField, OrgIdField


def _time(text: str | None, opt: str) -> datetime | None:
    from engine.cli._shared import parse_time

    return parse_time(text, opt)


def register(app: typer.Typer) -> None:
    @app.command("kafka-audit")
    def kafka_audit(
        bootstrap: Annotated[str | None, typer.Option("--bootstrap", help="Kafka bootstrap servers.")] = None,
        topic: Annotated[str | None, typer.Option("--topic", help="Topic to audit.")] = None,
        start: Annotated[str | None, typer.Option("--from", help="Window start (ISO-8601).")] = None,
        end: Annotated[str | None, typer.Option("--to", help="Window end (ISO-8601).")] = None,
        offsets: Annotated[str | None, typer.Option("--offsets", help="Window as P:FIRST-LAST[,…].")] = None,
        lookback: Annotated[float, typer.Option("--lookback", help="Also read this many seconds before --from to recognise earlier originals.")] = 0.0,
        org_id: Annotated[str | None, typer.Option("--org-id", help="Count events of other orgs as foreign_org.")] = None,
        record_field: RecordField = "account_id", type_field: TypeField = "event_type", time_field: TimeField = "event_ts",
        amount_field: AmountField = "amount", org_field: OrgField = "org_id",
        kafka_config: KafkaCfg = None,
        config: Cfg = None,
        isolation_check: Annotated[bool, typer.Option(
            "--isolation-check", help="Also read the window read_uncommitted vs read_committed and its record-batch "
                                      "headers: aborted[], open_transaction[], producers[].")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
        group: Annotated[str | None, typer.Option("--group", help="Also read this consumer group's commits and "
                                                  "generations from __consumer_offsets (read-only; default [kafka] "
                                                  "group): rewinds, rebalances, history coverage.")] = None,
    ) -> None:
        """Find re-delivered events, conflicts and the windows they came from (exit 1 when duplicates)."""
        from engine import config as config_mod
        from engine.app import audit as use_case
        from engine.core.events import EventFields

        req = use_case.AuditRequest(
            bootstrap=bootstrap, topic=topic, start=_time(start, "--from"), end=_time(end, "--to"), offsets=offsets,
            lookback_s=lookback, org_id=org_id, kafka_config_file=kafka_config, isolation_check=isolation_check,
            fields=EventFields(record_field, type_field, time_field, amount_field, org_field), group=group)
        cfg = config_mod.load(config)
        g = use_case.run_group_audit(req, cfg)  # first: a broker without __consumer_offsets fails fast
        a = use_case.run_audit(req, cfg, progress=None if as_json else (lambda n: progress(f"{n:,} messages read")))
        s = a.summary()
        if g is not None:
            s.update(g.summary())
        if as_json:
            emit_json(s)
        else:
            from engine.report.terminal import render_audit, render_group_audit

            render_audit(out, s)
            if g is not None:
                render_group_audit(out, g.summary())
        raise typer.Exit(int(Exit.FINDINGS if a.duplicates or a.conflicts else Exit.OK))

    @app.command("explain")
    def explain(
        diff: Annotated[Path, typer.Option("--diff", help="Output directory of `recon diff --out`.")],
        bootstrap: Annotated[str | None, typer.Option("--bootstrap")] = None,
        topic: Annotated[str | None, typer.Option("--topic")] = None,
        column: Annotated[str | None, typer.Option("--column", help="Amount column to explain (source name).")] = None,
        record_field: RecordField = "account_id", type_field: TypeField = "event_type", time_field: TimeField = "event_ts",
        amount_field: AmountField = "amount", org_field: OrgField = "org_id",
        kafka_config: KafkaCfg = None,
        config: Cfg = None,
        out_dir: Annotated[Path | None, typer.Option("--out", help="Write explain.json and findings.parquet here.")] = None,
        ledger: LedgerOpt = None,
        pubkey: PubKeyOpt = None,
        manifest: ManifestOpt = None,
        signing_key: KeyOpt = None,
        as_json: Annotated[bool, typer.Option("--json")] = False,
        group: Annotated[str | None, typer.Option(
            "--group", help="The warehouse's consumer group, whose commits give each window's causes "
                            "(default [kafka] group).")] = None,
    ) -> None:
        """Explain each difference from the Kafka stream and price commission exposure (exit 1 with findings).

        The diff is verified first (--ledger or --key PUB; exit 4 when it does not match); without either
        the outputs are marked unverified."""
        from engine import config as config_mod
        from engine.app import explain as explain_mod
        from engine.app.evidence import EvidenceOptions
        from engine.core.events import EventFields

        req = explain_mod.ExplainRequest(
            diff_dir=diff, bootstrap=bootstrap, topic=topic, column=column, kafka_config_file=kafka_config,
            fields=EventFields(record_field, type_field, time_field, amount_field, org_field), out_dir=out_dir,
            evidence=EvidenceOptions(ledger, manifest, signing_key), pubkey=pubkey, group=group)
        req.check()
        res = explain_mod.run(req, config_mod.load(config), progress=None if as_json else progress)
        if (res.document.get("verification") or {}).get("status") == "unverified":
            from engine.cli._shared import err

            err.print(f"recon: warning: unverified: {diff} was not checked against a ledger or a signed manifest "
                      "(give --ledger DSN or --key PUB); explain.json says so", markup=False, highlight=False,
                      soft_wrap=True)
        if as_json:
            emit_json(res.document)
        else:
            from engine.report.terminal import render_explain

            render_explain(out, res.explanation.summary, res.out_dir)
        raise typer.Exit(res.exit_code)
