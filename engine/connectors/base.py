"""The connector interface: what every system recon reads must say about itself (:class:`Connector`)
and what a side of a diff must do (:class:`Source`), and what a source hands to the diff: a
Polars frame (Arrow-backed), the logical type of each column as the source declares it, and
extraction metadata for the manifest and the ledger. A new system is one module implementing
these and one line in :mod:`engine.connectors.registry`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import polars as pl

from engine.connectors.refs import (  # noqa: F401  (re-exported: the references live in a light module)
    FileRef,
    PostgresRef,
    Reference,
    SalesforceRef,
    parse_reference,
    redact_dsn,
)
from engine.core.normalize import ColumnType, FieldSpec, SideOptions
from engine.core.plan import KeyRange


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


# -- the connector interface -----------------------------------------------------------------------
@dataclass(frozen=True)
class ReadRequest:
    """What the diff asks of one side: these columns, under this condition (validated by the
    connector: SQL for PostgreSQL, SOQL for Salesforce, none for files), as of a time, with the key
    columns named so the side can report keys changed after ``as_of``."""

    columns: list[str]
    where: str | None = None
    as_of: Any = None  # datetime | None
    updated_at: str | None = None
    key_columns: list[str] = field(default_factory=list)
    #: only the rows whose canonical key lies in this range are needed (a range task): a connector
    #: turns it into a native predicate where its order allows, and may return a superset (the task
    #: filters exactly); ``key_fields`` types the key columns so the predicate can be built
    key_range: KeyRange | None = None
    key_fields: tuple[FieldSpec, ...] = ()
    #: the run's snapshot token from :meth:`Source.open_snapshot` (PostgreSQL: an exported
    #: snapshot id), so every task of a run reads the same state
    snapshot: str | None = None
    #: only the rows changed at or after this time (by ``updated_at``): an incremental run's changed
    #: rows (PostgreSQL; see :class:`SideChanges`)
    changed_since: Any = None  # datetime | None
    #: the rows in canonical key order when the side can give it cheaply (PostgreSQL: a single text
    #: or int key, sorted by the server, through its index when one serves it); a hint, not a
    #: promise: the caller checks the order and sorts when it does not hold
    key_order: bool = False
    #: with ``changed_since``: canonical key ranges ``[lo, hi)`` (None: open) whose rows the side
    #: counts in the same snapshot instead of ``count(*)`` where it can do so exactly through an index
    #: (PostgreSQL: see :mod:`engine.connectors.postgres.rangecount`); ``key_fields`` types the key
    count_ranges: tuple[tuple[str | None, str | None], ...] = ()


@dataclass
class SideChanges:
    """What one side says changed since its watermark, for an incremental run
    (:mod:`engine.app.incremental`); returned by a source's optional ``changes(req, since)``.

    mode: ``changes`` (``frame`` holds the rows created or changed since the watermark, possibly
    more: an overlap re-reads some) or ``whole`` (``frame`` holds every row: a first run, a window
    the system cannot list, a changed file; ``reason`` says why, for the run's output).
    deleted: the key columns of rows known to be gone (Salesforce's getDeleted); None when the system
    cannot list deletions.
    rows_now: how many rows the side holds now, counted by the system in the same state as ``frame``
    (None when it cannot say): the engine compares it with the state's count to notice deletions
    nobody listed, and then reads the side's keys.
    watermark: JSON-able; passed back as ``since`` on the next run.
    meta: extraction facts for the summary (rows read, API calls, the query's lower bound, ...).

    The source method is ``changes(req: ReadRequest, since: dict | None, *, overlap: timedelta |
    None = None) -> SideChanges``: ``req`` as for :meth:`Source.read` (``req.updated_at`` names the
    column that says when a row last changed, where the system needs one), ``since`` the previous
    run's ``watermark`` (None: first run, so ``whole``).
    """

    mode: str
    frame: pl.DataFrame
    columns: dict[str, SourceColumn]
    watermark: dict[str, Any]
    deleted: pl.DataFrame | None = None
    rows_now: int | None = None
    reason: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: rows per ``ReadRequest.count_ranges`` range in the same state as ``rows_now`` (their sum), or None
    range_counts: list[int] | None = None


def take_frame(holder: Extract | SideChanges) -> pl.DataFrame:
    """The read's frame, leaving an empty one behind: handed straight to ``canonicalize``, it is
    the only reference, so the raw columns are freed as their canonical copies are made."""
    frame = holder.frame
    holder.frame = frame.clear()
    return frame


class RunSnapshot(Protocol):
    """The state a whole run reads, held open by the coordinator until every task has finished."""

    #: what a task passes back in :attr:`ReadRequest.snapshot` (None: the system has no snapshots)
    token: str | None

    def check(self) -> None:
        """Raise :class:`~engine.core.errors.ServiceUnreachable` when the snapshot was lost (its
        session ended): the run's tasks could no longer read one state."""
        ...

    def close(self) -> None: ...


class NoSnapshot:
    """Systems without a shareable snapshot (files are checked by digest, Salesforce has none)."""

    token: str | None = None

    def check(self) -> None:
        return None

    def close(self) -> None:
        return None


class Connector(Protocol):
    """What recon knows about one kind of system, whether or not it can be diffed: how its
    extraction metadata becomes provenance (allow-listed: a field added later never reaches the
    evidence unnoticed), its OpenLineage namespace, and which settings are secret."""

    #: the ``system`` value of its extraction metadata (and the reference scheme where it has one)
    system: ClassVar[str]
    #: environment variables whose values are secrets (kept out of every artefact)
    secret_env: ClassVar[tuple[str, ...]]

    @classmethod
    def provenance(cls, meta: dict[str, Any]) -> dict[str, Any]:
        """The allow-listed facts of an extraction for the manifest and the ledger."""
        ...

    @classmethod
    def lineage_dataset(cls, inp: dict[str, Any]) -> tuple[str, str]:
        """(namespace, name) of an input described by :meth:`provenance`, per OpenLineage's naming."""
        ...


class Source(Connector, Protocol):
    """One side of a diff. Built by :func:`engine.connectors.registry.source_for` from a reference.

    ``side`` says how the system spells values (Salesforce: an empty string is NULL) and
    ``timestamp_precision`` what its times can hold; both shape normalization, so two systems with
    the same spelling compare the same way whatever their names."""

    ref: Reference
    side: SideOptions
    timestamp_precision: str

    def describe(self) -> dict[str, SourceColumn]:
        """The columns as the system declares them (an API call or a catalog query, no data)."""
        ...

    def quick_columns(self) -> list[str] | None:
        """Column names if they can be had without an API call or a scan (a Parquet footer, a
        catalog), else None: lets another side start reading before this one is described."""
        ...

    def missing_column_hint(self) -> str:
        """Why a column :meth:`describe` does not list may exist all the same, for the error that
        names it ('' when the listing is the whole truth): Salesforce's describe omits the fields
        the integration user may not read, which otherwise reads like a typo."""
        ...

    def read(self, req: ReadRequest) -> Extract:
        """The rows (as Arrow-backed Polars), their declared types and the extraction metadata."""
        ...
