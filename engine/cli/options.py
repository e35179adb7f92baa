"""Options that several commands share, defined once: the same flag means the same thing (and is
spelled the same way, aliases included) in every command that takes it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOpt = Annotated[Path | None, typer.Option("-C", "--config", help="recon.toml")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
LedgerOpt = Annotated[str | None, typer.Option(
    "--ledger", help="Record the run in this recon_audit ledger (or RECON_LEDGER_DSN, or the ledger dsn in recon.toml).")]
LedgerInOpt = Annotated[str | None, typer.Option(
    "--ledger", help="Verify the input directories against the runs this recon_audit ledger recorded, and record "
    "this run in it (or RECON_LEDGER_DSN, or the ledger dsn in recon.toml).")]
LedgerVerifyOpt = Annotated[str | None, typer.Option(
    "--ledger", help="Verify the input directories against the runs this recon_audit ledger recorded (or "
    "RECON_LEDGER_DSN, or the ledger dsn in recon.toml).")]
PubKeyOpt = Annotated[Path | None, typer.Option(
    "--key", help="Public key (recon.pub): verify each input directory by the manifest.json signed in it "
    "(instead of the ledger).")]
ManifestOpt = Annotated[Path | None, typer.Option(
    "--manifest", help="Write a signed DSSE/in-toto manifest here (outputs go next to it unless --out).")]
SigningKeyOpt = Annotated[Path | None, typer.Option("--signing-key", help="Ed25519 key from `recon keygen` (with --manifest).")]
KafkaConfigOpt = Annotated[Path | None, typer.Option(
    "--kafka-config", help="librdkafka properties file (key=value), e.g. SASL/SSL settings.")]

# the event's JSON field names (producers differ); the short forms are kept as aliases
_FIELDS = "Event fields"
RecordIdField = Annotated[str, typer.Option("--record-id-field", "--record-field", rich_help_panel=_FIELDS,
                                            help="JSON field with the record id.")]
EventTypeField = Annotated[str, typer.Option("--event-type-field", "--type-field", rich_help_panel=_FIELDS,
                                             help="JSON field with the event type.")]
EventTimeField = Annotated[str, typer.Option("--event-time-field", "--time-field", rich_help_panel=_FIELDS,
                                             help="JSON field with the event time (ISO-8601).")]
AmountField = Annotated[str, typer.Option("--amount-field", rich_help_panel=_FIELDS,
                                          help="JSON field with the signed amount (decimal).")]
OrgIdField = Annotated[str, typer.Option("--org-id-field", "--org-field", rich_help_panel=_FIELDS,
                                         help="JSON field with the Salesforce org id.")]
