"""Which connector serves which system: the one table to extend for a new system.

Each entry names a class implementing :class:`engine.connectors.base.Connector` (and, for systems a
diff can read, :class:`engine.connectors.base.Source`), imported only when that system is used, so a
command that never touches Salesforce never imports its client.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING, Any

from engine.connectors.refs import FileRef, PostgresRef, Reference, SalesforceRef

if TYPE_CHECKING:
    from engine.connectors.base import Connector, Source

#: system (the reference scheme, and the ``system`` of extraction metadata) -> "module:Class"
CONNECTORS: dict[str, str] = {
    "postgresql": "engine.connectors.postgres.connector:PostgresSource",
    "salesforce": "engine.connectors.salesforce.connector:SalesforceSource",
    "parquet": "engine.connectors.files.connector:ParquetSource",
    "csv": "engine.connectors.files.connector:CsvSource",
    "kafka": "engine.connectors.kafka.connector:KafkaTopic",
}


@cache
def connector_class(system: str) -> type[Connector] | None:
    """The connector of a system, or None for a system recon does not know."""
    target = CONNECTORS.get(system)
    if target is None:
        return None
    module, _, name = target.partition(":")
    cls: type[Connector] = getattr(importlib.import_module(module), name)
    return cls


def system_of(ref: Reference) -> str:
    """The system a parsed reference points at."""
    if isinstance(ref, PostgresRef):
        return "postgresql"
    if isinstance(ref, SalesforceRef):
        return "salesforce"
    if isinstance(ref, FileRef):
        return ref.format
    raise TypeError(f"not a dataset reference: {ref!r}")


def source_for(ref: Reference, config: Any) -> Source:
    """The side of a diff that reads ``ref`` (``config``: the loaded recon.toml)."""
    cls: Any = connector_class(system_of(ref))
    return cls(ref, config)  # type: ignore[no-any-return]


def secret_env() -> tuple[str, ...]:
    """Every connector's secret environment variables, for scrubbing artefacts."""
    out: list[str] = []
    for system in CONNECTORS:
        cls = connector_class(system)
        if cls is not None:
            out += [n for n in cls.secret_env if n not in out]
    return tuple(out)


def check_condition(reference: str, where: str, origin: str) -> str:
    """``where`` checked in the language of ``reference``'s system before anything is read (and
    before the PostgreSQL reads that start early): exactly one SQL expression for PostgreSQL.
    ``origin`` names where the text came from (``--target-where``, ``[mapping.m] target_where``),
    so the one-line error says what to fix. Systems without a check here check in their read."""
    from engine.connectors.refs import parse_reference

    ref = parse_reference(reference)
    if isinstance(ref, PostgresRef):
        from engine.connectors.postgres.condition import check_condition as check_sql

        return check_sql(where, origin)
    return where
