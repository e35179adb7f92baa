"""What every source hands to the diff: a Polars frame (Arrow-backed), the logical type of each
column as the source declares it, and extraction metadata for the manifest and the ledger."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from engine.connectors.refs import (  # noqa: F401  (re-exported: the references live in a light module)
    FileRef,
    PostgresRef,
    Reference,
    SalesforceRef,
    parse_reference,
    redact_dsn,
)
from engine.core.normalize import ColumnType


@dataclass(frozen=True)
class SourceColumn:
    """A column as its source declares it (``kind`` as in ``engine.core.normalize.KINDS``)."""

    name: str
    kind: str
    scale: int | None = None
    native_type: str = ""


@dataclass
class Extract:
    """One side after extraction.

    frame: the rows (column names as in the source).
    columns: declared types by column name.
    meta: facts for provenance (system, object, query, snapshot id, row count, times, job ids).
    in_flight: keys changed after ``--as-of`` (source column values of the key, as text).
    """

    frame: pl.DataFrame
    columns: dict[str, SourceColumn]
    meta: dict[str, Any] = field(default_factory=dict)
    in_flight: pl.DataFrame | None = None


def column_type(kind: str, scale: int | None = None, precision: str = "us") -> ColumnType:
    return ColumnType(kind=kind, scale=scale, precision=precision)  # type: ignore[arg-type]
