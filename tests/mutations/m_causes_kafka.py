"""Issue 20, part B: the isolation check (aborted ranges, open transactions), the producer runs of
record batches, and the scenario's causes. Each mutation breaks one rule; its tests must fail."""

from __future__ import annotations

from tests.mutations import Mutation

_CAUSES = "tests/integration/test_scenario_causes.py"
_UNIT = "tests/unit/test_isolation.py"

MUTATIONS = [
    Mutation("aborted-run-not-broken-by-committed", "engine/core/isolation.py",
             "            if o in committed:\n                close(run)\n                run = []",
             "            if o in committed:\n                pass",
             (f"{_UNIT}::test_aborted_offsets_form_runs_that_markers_do_not_break_and_committed_offsets_do",),
             "a committed offset between aborted ones no longer ends the run"),
    Mutation("open-transaction-guessed-as-aborted", "engine/core/isolation.py",
             "            if stable is not None and o >= stable:",
             "            if False:",
             (f"{_UNIT}::test_offsets_above_the_last_stable_offset_are_undecided_not_aborted",
              f"{_CAUSES}::test_an_open_transaction_is_reported_not_guessed"),
             "offsets of a still-open transaction are reported as aborted"),
    Mutation("producer-run-ignores-sequence", "engine/core/isolation.py",
             "and (b.producer_id < 0 or b.base_sequence == next_seq))",
             "and True)",
             (f"{_UNIT}::test_producer_runs_break_on_a_new_producer_or_epoch_and_on_a_sequence_that_does_not_continue",),
             "a sequence regression under one producer session no longer starts a new run"),
    Mutation("isolation-reads-both-committed", "engine/connectors/kafka/isolation.py",
             '{**extra, "isolation.level": isolation}', "dict(extra)",
             (f"{_CAUSES}::test_isolation_check_finds_the_aborted_ranges_and_the_producers",),
             "both reads use librdkafka's default isolation (read_committed): nothing looks aborted"),
    Mutation("producers-from-one-session", "engine/local/scenario.py",
             "        producer = Producer(conf)\n        for i, (acc",
             "        producer = producer if session else Producer(conf)\n        for i, (acc",
             (f"{_CAUSES}::test_the_default_replay_keeps_its_offsets_and_sends_the_copies_from_a_second_producer",),
             "the replayed copies come from the first producer session (the replay leaves no producer evidence)"),
    Mutation("rewind-not-reset", "engine/local/causes.py",
             "        if rewind:\n            say(",
             "        if False:\n            say(",
             (f"{_CAUSES}::test_each_cause_makes_the_copies_the_ground_truth_lists[rewind]",),
             "the group's offsets are not reset backwards: no window event is re-delivered"),
    Mutation("redelivery-committed-before-leaving", "engine/local/causes.py",
             "            wh.commit(seg.partitions(\"aborted\"))\n        wh.close()",
             "            wh.commit(seg.partitions(\"aborted\"))\n        wh.commit()\n        wh.close()",
             (f"{_CAUSES}::test_each_cause_makes_the_copies_the_ground_truth_lists[redelivery]",),
             "the member commits what it applied before leaving: nothing is re-delivered"),
    Mutation("aborted-transaction-committed", "engine/local/causes.py",
             "            tx.abort_transaction(DEADLINE_S)",
             "            tx.commit_transaction(DEADLINE_S)",
             (f"{_CAUSES}::test_each_cause_makes_the_copies_the_ground_truth_lists[aborted]",),
             "the first transaction commits instead of aborting: its copies are real messages"),
    Mutation("warehouse-delivery-dropped", "engine/local/scenario.py",
             'pl.col("delivery") if "delivery" in delivered.columns else pl.lit(1).alias("delivery"))',
             'pl.lit(1).alias("delivery"))',
             (f"{_CAUSES}::test_the_warehouse_holds_one_row_per_delivery",),
             "every warehouse row is delivery 1: a re-delivered offset collides with its first row"),
    Mutation("tansu-accepts-every-cause", "engine/local/scenario.py",
             '    if cause != "replay" and backend != "apache":',
             "    if False:",
             (f"{_CAUSES}::test_a_cause_other_than_replay_needs_the_apache_broker",),
             "a cause that needs the Apache broker is attempted on Tansu"),
]
