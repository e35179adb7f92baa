"""Issue 20 in the default suite: the ``mixed`` cause (a rewind, a redelivery, an aborted
transaction and a replay, one per partition) made for real on the session's Apache broker by
``engine.local.causes``, then explain's Kafka half (:func:`engine.app.explain.stream_causes`: the
scan, the group's ``__consumer_offsets`` history, the isolation reads, the record batches, the
attribution) gives every copy of the ground truth its cause, with the evidence the scenario left.

The whole CLI path (``scenario load`` → ``diff`` → ``explain``, Salesforce and the warehouse
included) needs a stack of its own per cause: ``test_causes_e2e.py``, slow.
"""

from __future__ import annotations

from typing import Any

import pytest

from engine.app.explain import stream_causes
from engine.core.events import EventFields, Window
from engine.local import causes
from engine.local.kafka import create_topic
from engine.local.salesforce import ORG_ID
from tests.causes_checks import check_causes
from tests.integration.test_scenario_causes import Loaded


@pytest.fixture(scope="module")
def mixed(apache_kafka: Any) -> Loaded:
    topic = "t-causes-explain-mixed"
    create_topic(apache_kafka.bootstrap, topic, partitions=4)
    return Loaded(apache_kafka.bootstrap, topic, "mixed")


def test_explain_gives_every_copy_of_the_mixed_scenario_its_cause(mixed: Loaded) -> None:
    ld = mixed
    rc = stream_causes(ld.bootstrap, ld.topic, causes.group_name(ld.topic), Window(), EventFields(), {},
                       org_id=ORG_ID)
    assert rc.isolation == "read_uncommitted"
    exp = {"kafka": {"windows": rc.attribution.windows, "redelivery_windows": rc.attribution.redelivery_windows,
                     "causes": rc.attribution.totals}}
    check_causes(ld.truth, exp)
    # the group's history and the isolation reads hold what the scenario did, and nothing else
    part = {cause: p for p, cause in ld.causes.items()}
    copies = ld.truth["copies"]

    def offsets(cause: str) -> list[int]:
        return sorted(c["offset"] for c in copies if c["cause"] == causes.CAUSE_NAMES[cause])

    rw, rd, ab = offsets("rewind"), offsets("redelivery"), offsets("aborted")
    assert [(r["partition"], r["from_offset"], r["to_offset"]) for r in rc.raw["rewinds"]] == [
        (part["rewind"], rw[-1] + 1, rw[0])]
    ranges = [(u["partition"], u["from_offset"], u["to_offset"]) for b in rc.raw["rebalances"]
              for u in b["uncommitted"]]
    assert ranges == [(part["redelivery"], rd[0], rd[-1] + 1)]
    assert rc.raw["aborted"] == [{"partition": part["aborted"], "from_offset": ab[0], "to_offset": ab[-1],
                                  "events": len(ab)}]
    assert rc.raw["open_transaction"] == []
    assert {r.get("source", "record_batch") for r in rc.raw["producers"]} == {"record_batch"}
    assert set(rc.raw["history_coverage"]) == {str(p) for p in range(4)}


def test_without_a_group_explain_reads_committed_and_cannot_tell_the_group_causes(mixed: Loaded) -> None:
    """Without a group explain scans read_committed, as before issue 20's evidence: the aborted
    copies are invisible, no rewind or rebalance is read, and only the replay partition's copies
    get a cause, from the producer-id headers."""
    ld = mixed
    rc = stream_causes(ld.bootstrap, ld.topic, None, Window(), EventFields(), {}, org_id=ORG_ID)
    assert rc.isolation == "read_committed" and rc.raw["history_coverage"] is None
    assert rc.attribution.totals == {"producer_replay": ld.planned_copies(causes.MIXED.index("replay"))}
    assert {e["source"] for w in rc.attribution.windows for c in w["causes"] for e in c["evidence"]} == {"header"}
