"""Salesforce as a connector: an sObject read through REST or Bulk API 2.0 (see
:mod:`engine.connectors.salesforce.source`)."""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import urlparse

from engine.connectors.base import Extract, ReadRequest, SalesforceRef, SourceColumn
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

        return source.extract(self.ref, self.config, req.columns, req.where, as_of=req.as_of,
                              key_columns=req.key_columns)

    @classmethod
    def provenance(cls, meta: dict[str, Any]) -> dict[str, Any]:
        return {k: meta[k] for k in _PROVENANCE if meta.get(k) is not None}

    @classmethod
    def lineage_dataset(cls, inp: dict[str, Any]) -> tuple[str, str]:
        host = urlparse(str(inp.get("instance_url") or "")).hostname or "salesforce"
        return f"salesforce://{host}", str(inp.get("object", ""))
