"""Issue 20 part A (`kafka-audit --group`): the __consumer_offsets decoder, the rewind/rebalance analysis,
the reader's refusal of a broker without the topic, and the CLI/config wiring."""

from __future__ import annotations

from tests.mutations import Mutation

_U = "tests/unit/test_offsets_log.py::"
_I = "tests/integration/test_offsets_audit.py::"
_VEC = _U + "test_each_vector_decodes_as_kafka_decodes_it"

MUTATIONS = [
    Mutation("commit-v3-no-leader-epoch", "engine/core/offsets_log.py",
             "epoch = r.int32() if v >= 3 else -1", "epoch = r.int32() if v >= 4 else -1",
             (_VEC + "[commit_v3]",), "OffsetCommitValue v3's leaderEpoch (before metadata) is not read"),
    Mutation("commit-v2-reads-expire", "engine/core/offsets_log.py",
             "expire = r.int64() if v == 1 else -1", "expire = r.int64() if v >= 1 else -1",
             (_VEC + "[commit_v2]",), "v2 is read with v1's expireTimestamp"),
    Mutation("group-v4-member-tags-ignored", "engine/core/offsets_log.py",
             "        if flex:\n            r.tagged_fields()\n        assert member_id",
             "        assert member_id",
             (_VEC + "[group_v4]",), "a flexible member's tagged-field section is not skipped"),
    Mutation("columnwise-commit-ts-shifted", "engine/core/offsets_log.py",
             'ts[sel] = _be(data, ts_pos[sel], 8, ">i8")', 'ts[sel] = _be(data, ts_pos[sel] + 1, 8, ">i8")',
             (_U + "test_columnwise_and_fallback_rows_agree_with_the_scalar_decoder",),
             "the column-wise path reads the commit timestamp one byte late"),
    Mutation("bad-values-not-counted", "engine/core/offsets_log.py",
             "        out.unparsable += int((~ok).sum())\n", "",
             (_U + "test_truncated_and_garbage_records_are_counted_never_raised",),
             "commit values that do not decode are dropped without being counted as unparsable"),
    Mutation("newer-types-unparsable", "engine/core/offsets_log.py",
             "    if t < 0:\n", "    if t < 0 or t >= FIRST_SKIPPED_TYPE:\n",
             (_U + "test_batch_decode_of_the_vectors_matches_the_scalar_decoders",),
             "KIP-848 / share / streams records count as unparsable instead of skipped"),
    Mutation("coordinator-partition-no-abs", "engine/core/offsets_log.py",
             "(0 if signed == -(1 << 31) else abs(signed))", "(0 if signed == -(1 << 31) else signed)",
             (_U + "test_coordinator_partition_is_kafkas",),
             "a negative String hash is not made positive (Kafka's Utils.abs)"),
    Mutation("rewind-not-detected", "engine/core/group_audit.py",
             "c.offset[1:] < c.offset[:-1]) + 1", "c.offset[1:] < c.offset[:-1] - 1000) + 1",
             (_U + "test_rewinds_name_partition_offsets_and_time", _I + "test_a_rewind_made_with_the_admin_client_is_reported"),
             "a lower commit is not reported as a rewind"),
    Mutation("rebalance-range-repeated", "engine/core/group_audit.py",
             "            if mark in attributed:\n                continue\n", "",
             (_U + "test_rebalances_give_the_range_re_read_after_the_generation_change",),
             "a partition's re-read range is listed under every later generation change"),
    Mutation("rebalance-from-empty-group", "engine/core/group_audit.py",
             "and gm.generation != prev_gen and prev_members > 0:", "and gm.generation != prev_gen:",
             (_I + "test_a_rebalance_of_two_classic_consumers_and_the_audit_is_read_only",),
             "the first join of an empty group counts as a rebalance"),
    Mutation("no-offsets-topic-not-refused", "engine/connectors/kafka/offsets_topic.py",
             "        if t is None or not t.partitions:\n            raise _missing(bootstrap)\n", "",
             (_I + "test_tansu_has_no_group_log_exit_2_one_line",),
             "a broker without __consumer_offsets gives a traceback instead of exit 2 and one line"),
    Mutation("group-fields-not-in-json", "engine/cli/commands/forensics.py",
             "            s.update(g.summary())\n", "            pass\n",
             (_I + "test_a_rewind_made_with_the_admin_client_is_reported",),
             "kafka-audit --json leaves out group, rewinds, rebalances, history_coverage, offsets_records"),
    Mutation("config-group-passed-to-librdkafka", "engine/app/audit.py",
             '_OWN_KEYS = ("bootstrap", "topic", "group")', '_OWN_KEYS = ("bootstrap", "topic")',
             (_I + "test_a_kip848_group_is_skipped_not_unparsable_and_its_commits_decode",),
             "[kafka] group reaches librdkafka as an unknown property"),
]
