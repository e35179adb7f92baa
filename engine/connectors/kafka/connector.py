"""A Kafka topic as a connector: not a side of a diff, but an input of `kafka-audit` and `explain`
whose provenance and lineage name it like every other system's."""

from __future__ import annotations

from typing import Any, ClassVar

from engine.core.causes import RANGE_FIELDS

_PROVENANCE = ("topic", "partitions", "bootstrap", "from", "to", "events", "group")


class KafkaTopic:
    system: ClassVar[str] = "kafka"
    #: SASL/SSL secrets come from --kafka-config files, never from the environment
    secret_env: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def provenance(cls, meta: dict[str, Any]) -> dict[str, Any]:
        """The allow-listed facts, and where explain's root-cause evidence lies (``root_cause``: kind,
        topic, partition and offset range of each item; never the events, times or producer ids)."""
        out = {k: meta[k] for k in _PROVENANCE if meta.get(k) is not None}
        places = meta.get("root_cause")
        if isinstance(places, list) and places:
            out["root_cause"] = [{k: p[k] for k in RANGE_FIELDS if k in p} for p in places if isinstance(p, dict)]
        return out

    @classmethod
    def lineage_dataset(cls, inp: dict[str, Any]) -> tuple[str, str]:
        return f"kafka://{inp.get('bootstrap', 'localhost')}", str(inp.get("topic", ""))
