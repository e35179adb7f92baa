"""Salesforce as a connector: an sObject read through REST or Bulk API 2.0 (see
:mod:`engine.connectors.salesforce.source`)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar
from urllib.parse import urlparse

from engine.connectors.base import Extract, NoSnapshot, ReadRequest, SalesforceRef, SideChanges, SourceColumn
from engine.core.normalize import SALESFORCE_SIDE

_PROVENANCE = ("object", "org_id", "instance_url", "api_version", "user_id", "username", "profile", "soql",
               "bulk_job_ids", "extracted_at", "rows", "where", "as_of")


class SalesforceSource:
    system: ClassVar[str] = "salesforce"
    secret_env: ClassVar[tuple[str, ...]] = ("SF_PASSWORD", "SF_SECURITY_TOKEN", "SF_CONSUMER_SECRET", "SF_SESSION_ID")
    #: Salesforce stores datetimes to the millisecond
    timestamp_precision = "ms"
    #: Salesforce and its Bulk CSV cannot tell an empty string from NULL
    side = SALESFORCE_SIDE

    def __init__(self, ref: SalesforceRef, config: Any) -> None:
        self.ref = ref
        self.config = config

    def describe(self) -> dict[str, SourceColumn]:
        from engine.connectors.salesforce import source

        return source.describe_columns(self.ref, self.config)

    def quick_columns(self) -> list[str] | None:
        return None  # describe is an API call: not worth spending before the diff needs it

    def missing_column_hint(self) -> str:
        from engine.connectors.salesforce import source

        return source.fls_hint(source.connection(self.config))

    def read(self, req: ReadRequest) -> Extract:
        from engine.connectors.salesforce import source

        bounds = _id_range(req)
        out = source.extract(self.ref, self.config, req.columns, req.where, as_of=req.as_of,
                             key_columns=req.key_columns, id_range=bounds)
        if bounds is None and req.key_range is not None and not req.key_range.whole:
            out.meta.update(key_pushdown=False, key_predicate="no predicate: the key is not the record Id")
        return out

    def changes(self, req: ReadRequest, since: dict[str, Any] | None, *,
                overlap: timedelta | None = None) -> SideChanges:
        """What changed since the watermark ``since``: getUpdated/getDeleted, then a re-read of the
        changed records (see :mod:`engine.connectors.salesforce.incremental` for the choices)."""
        from engine.connectors.salesforce import incremental

        return incremental.side_changes(self, req, since, overlap=overlap)

    def open_snapshot(self) -> NoSnapshot:
        """Salesforce has no snapshot a query can share: each range task reads the org as it is
        (``--as-of`` and the in-flight keys say which records changed meanwhile)."""
        return NoSnapshot()

    @classmethod
    def provenance(cls, meta: dict[str, Any]) -> dict[str, Any]:
        return {k: meta[k] for k in _PROVENANCE if meta.get(k) is not None}

    @classmethod
    def lineage_dataset(cls, inp: dict[str, Any]) -> tuple[str, str]:
        host = urlparse(str(inp.get("instance_url") or "")).hostname or "salesforce"
        return f"salesforce://{host}", str(inp.get("object", ""))


def _id_range(req: ReadRequest) -> tuple[str | None, str | None] | None:
    """A range task's bounds when its key is the record Id alone (ids compare in canonical order
    in SOQL); None otherwise: any other key is read whole and filtered by the task."""
    rng = req.key_range
    if rng is None or rng.whole:
        return None
    keys = [f for f in req.key_fields if f.is_key] or list(req.key_fields)
    if len(keys) != 1 or keys[0].column.lower() != "id" or keys[0].ctype.kind not in ("id", "text"):
        return None
    return rng.lo, rng.hi
