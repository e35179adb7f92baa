"""Dataset references of the contract (``salesforce:``, ``postgresql://…#schema.table``,
``parquet:``, ``csv:``), parsed without importing any data library: the CLI reads them before the
heavy imports, so a PostgreSQL read can start while Polars and Arrow are still loading."""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.core.errors import UsageError


@dataclass(frozen=True)
class SalesforceRef:
    sobject: str

    def __str__(self) -> str:
        return f"salesforce:{self.sobject}"


@dataclass(frozen=True)
class PostgresRef:
    dsn: str
    schema: str
    table: str

    def __str__(self) -> str:
        return f"{redact_dsn(self.dsn)}#{self.schema}.{self.table}"


@dataclass(frozen=True)
class FileRef:
    format: str  # "parquet" | "csv"
    path: str

    def __str__(self) -> str:
        return f"{self.format}:{self.path}"


Reference = SalesforceRef | PostgresRef | FileRef
_SOBJECT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_IDENT = re.compile(r'^(?:"[^"]+"|[^."\s]+)$')


def parse_reference(text: str) -> Reference:
    """Parse a dataset reference of the contract (salesforce:, postgresql://…#schema.table, parquet:, csv:)."""
    if text.startswith("salesforce:"):
        name = text.split(":", 1)[1]
        if not _SOBJECT.match(name):
            raise UsageError(f"malformed reference {text!r}: expected salesforce:<sObject>, e.g. salesforce:Account")
        return SalesforceRef(name)
    if text.startswith(("postgresql://", "postgres://")):
        if "#" not in text:
            raise UsageError(f"malformed reference {redact_dsn(text)!r}: add the table as a fragment, "
                             "e.g. postgresql://user@host:5432/db#schema.table")
        dsn, frag = text.rsplit("#", 1)
        parts = _split_ident(frag)
        if parts is None:
            raise UsageError(f"malformed table {frag!r} in reference: expected schema.table or table")
        schema, table = parts if len(parts) == 2 else ("public", parts[0])
        return PostgresRef(dsn, schema, table)
    for fmt in ("parquet", "csv"):
        if text.startswith(fmt + ":"):
            path = text.split(":", 1)[1]
            if not path:
                raise UsageError(f"malformed reference {text!r}: expected {fmt}:PATH")
            return FileRef(fmt, path)
    raise UsageError(f"malformed reference {redact_dsn(text)!r}: use salesforce:OBJECT, "
                     "postgresql://user@host:port/db#schema.table, parquet:PATH or csv:PATH")


def _split_ident(frag: str) -> list[str] | None:
    parts = re.findall(r'"[^"]+"|[^.]+', frag)
    if not parts or len(parts) > 2 or ".".join(parts) != frag or not all(_IDENT.match(p) for p in parts):
        return None
    return [p[1:-1] if p.startswith('"') else p for p in parts]


def redact_dsn(dsn: str) -> str:
    """A DSN without its password (URI `user:pw@` or keyword `password=`), safe for messages and manifests."""
    out = re.sub(r"(://[^:/@]+):[^@/]*@", r"\1@", dsn)
    return re.sub(r"(password\s*=\s*)(\S+)", r"\1***", out, flags=re.IGNORECASE)
