"""Re-reading exact records from Salesforce: what repair asks before it corrects the warehouse, so
each correction carries the value Salesforce holds now and the Bulk job that read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.config import Config
from engine.connectors.base import SalesforceRef


@dataclass
class Extraction:
    values: dict[str, dict[str, Any]] = field(default_factory=dict)  # Id → {value, system_modstamp, bulk_job_id}
    metas: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0


def reextract(sobject: str, column: str, ids: list[str], config: Config, modstamp: str = "SystemModstamp"
              ) -> Extraction:
    """Exactly these records' ``column`` and ``modstamp`` (the mapping's modstamp role), one Bulk API
    2.0 job per :func:`~engine.connectors.salesforce.source.id_chunk` Ids (500 by default), so each
    record's job id is known. Every id is checked before the first job, so a bad one stops the
    re-extraction before any of it ran; a job that fails raises, and nothing is returned, so the
    caller writes nothing from a partial read."""
    import polars as pl

    from engine.connectors.salesforce import source as sf_extract
    from engine.connectors.salesforce.soql import check_ids

    out = Extraction()
    ref = SalesforceRef(sobject)
    ordered = check_ids(ids)
    per_job = sf_extract.id_chunk(config)
    for i in range(0, len(ordered), per_job):
        chunk = ordered[i: i + per_job]
        ex = sf_extract.extract(ref, config, list(dict.fromkeys(["Id", column, modstamp])), None, ids=chunk)
        meta = ex.meta
        out.metas.append(meta)
        job = (meta.get("bulk_job_ids") or [None])[0]
        f = ex.frame
        names = {c.lower(): c for c in f.columns}
        vcol, mcol = names[column.lower()], names[modstamp.lower()]
        f = f.select(pl.col(names["id"]).alias("Id"), pl.col(vcol).cast(pl.Utf8).alias("v"),
                     pl.col(mcol).cast(pl.Utf8).alias("m"))
        out.records += f.height
        for rid, v, m in f.iter_rows():
            out.values[str(rid)] = {"value": v, "system_modstamp": m, "bulk_job_id": job,
                                    "api_version": meta.get("api_version"), "org_id": meta.get("org_id"),
                                    "extracted_at": meta.get("extracted_at")}
    return out
