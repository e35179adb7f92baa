"""A Kafka topic as a connector: not a side of a diff, but an input of `kafka-audit` and `explain`
whose provenance and lineage name it like every other system's."""

from __future__ import annotations

from typing import Any, ClassVar

_PROVENANCE = ("topic", "partitions", "bootstrap", "from", "to", "events")


class KafkaTopic:
    system: ClassVar[str] = "kafka"
    #: SASL/SSL secrets come from --kafka-config files, never from the environment
    secret_env: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def provenance(cls, meta: dict[str, Any]) -> dict[str, Any]:
        return {k: meta[k] for k in _PROVENANCE if meta.get(k) is not None}

    @classmethod
    def lineage_dataset(cls, inp: dict[str, Any]) -> tuple[str, str]:
        return f"kafka://{inp.get('bootstrap', 'localhost')}", str(inp.get("topic", ""))
