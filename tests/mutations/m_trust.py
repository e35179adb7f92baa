"""Issue 17's should-fix on partition ids: remove the metadata bound, and both the unit test and the
adversarial row (a hostile broker announcing partition INT32_MAX) must fail."""

from __future__ import annotations

from tests.mutations import Mutation

MUTATIONS = [
    Mutation("partition-id-unbounded", "engine/connectors/kafka/client.py",
             "not 0 <= p <= MAX_PARTITION_ID]", "p < 0]",
             ("tests/unit/test_kafka_client.py::test_a_hostile_partition_id_in_metadata_is_refused",),
             "a broker's partition ids are no longer bounded by MAX_PARTITION_ID"),
]
