"""Issue 20, part C (explain's ``causes[]``, the report's "What happened", the manifest): break each
rule of the attribution, the redelivery that explains an amount, the report paragraph and the
manifest's record of the evidence, and the tests that assert them must fail."""

from __future__ import annotations

from tests.mutations import Mutation

U = "tests/unit/test_causes.py::"
C = "engine/core/causes.py"
SCENARIO = ("tests/integration/test_forensics.py::"
            "test_every_duplicate_window_is_a_producer_replay_named_by_the_scenarios_producer_ids")
MANIFEST = "tests/integration/test_forensics.py::test_explain_records_its_run_in_the_ledger_and_a_manifest_that_verifies"

MUTATIONS = [
    # -- the attribution rules
    Mutation("replay-same-producer", C,
             '(pl.col("c_producer_id") != pl.col("o_producer_id"))', '(pl.col("c_producer_id") == pl.col("o_producer_id"))',
             (U + "test_producer_replay_alone_names_both_producer_ids_and_offsets",),
             "a copy under the same producer id counts as a replay, one under another does not"),
    Mutation("replay-minus-one-ignored", C,
             '''| (pl.col("c_producer_id") == -1)
                      | (pl.col("o_producer_id") == -1))''', ")",
             (U + "test_producer_id_minus_one_is_a_replay_as_far_as_can_be_read",),
             "producer id -1 (idempotence off) on both copies is no longer reported as a replay"),
    Mutation("run-end-exclusive", C,
             'hit = pl.col("_o") <= pl.col("to_offset")', 'hit = pl.col("_o") < pl.col("to_offset")',
             (U + "test_aborted_original_is_aborted_read_uncommitted",),
             "an aborted (or producer) range's last offset is outside it"),
    Mutation("aborted-on-the-copy", C,
             'ab = _lookup(copies.select("d", pl.col("o_partition").alias("partition"), pl.col("o_offset").alias("offset")),',
             'ab = _lookup(copies.select("d", "partition", "offset"),',
             (U + "test_aborted_original_is_aborted_read_uncommitted",),
             "the aborted range is looked up for the copy instead of its original"),
    Mutation("rewind-inclusive", C,
             'lo, hi = int(r["to_offset"]), int(r["from_offset"])', 'lo, hi = int(r["to_offset"]), int(r["from_offset"]) + 1',
             (U + "test_offset_rewind_alone_is_a_redelivery_window_with_the_commit_records",),
             "a rewind re-reads its higher committed offset too (committed = next to read)"),
    Mutation("rebalance-ignored", C,
             "        for b in self.rebalances:\n", "        for b in []:\n",
             (U + "test_rebalance_alone_is_redelivery_before_commit_with_its_generation",),
             "rebalances' uncommitted ranges are not redeliveries"),
    Mutation("share-over-copies-only", C,
             "    total = len(c) + len(r)\n", "    total = max(len(c), 1)\n",
             (U + "test_overlapping_causes_are_each_listed_with_their_share",),
             "shares ignore the redeliveries inside a window"),
    Mutation("unknown-dropped", C,
             "    n_unknown = len(c) - len(explained)\n", "    n_unknown = 0\n",
             (U + "test_partly_explained_window_gives_the_rest_to_unknown",),
             "copies no evidence explains are not listed as unknown"),
    Mutation("coverage-overlap-not-cover", C,
             "    if a <= lo and b >= hi:", "    if a <= hi and b >= lo:",
             (U + "test_coverage_gap_gives_unknown_with_the_reason_and_covered_windows_say_no_evidence_matches",),
             "a commit history that only overlaps the window counts as covering it"),
    # -- a redelivery explains an amount
    Mutation("recompute-ignores-redeliveries", "engine/core/forensics.py",
             "        v = pl.concat([v, extra])\n", "",
             (U + "test_a_redelivery_explains_a_mismatch_amount_exactly",),
             "re-read events do not count in the raw stream sum, so they explain no mismatch"),
    # -- explain
    Mutation("explain-windows-without-causes", "engine/app/explain.py",
             '"windows": attribution.windows,', '"windows": audit.windows,',
             (SCENARIO,), "explain.json's windows carry no causes"),
    Mutation("header-ids-unmarked", C,
             '"source": "header"} for r in agg.iter_rows(named=True)]', '} for r in agg.iter_rows(named=True)]',
             (U + "test_header_producer_ids_are_evidence_marked_as_headers",),
             "producer ids read from headers are passed off as record-batch ids"),
    # -- the report
    Mutation("report-no-cause-paragraphs", "engine/report/html.py",
             'why = "".join(sections.cause_paragraphs(inp))', 'why = ""',
             (U + "test_what_happened_states_each_cause_in_one_paragraph_with_counts_offsets_and_times",),
             "What happened no longer states the causes"),
    Mutation("report-cause-windows-not-counted", "engine/report/sections.py",
             'n = sum(int(dec(c.get("events"))) for _, c in rows)', "n = len(rows)",
             (U + "test_what_happened_states_each_cause_in_one_paragraph_with_counts_offsets_and_times",),
             "a cause's paragraph counts windows instead of deliveries"),
    Mutation("report-cause-unescaped", "engine/report/sections.py",
             '</b> (<code>{breakable(name)}</code>). {esc(text)}</p>")', '</b> (<code>{breakable(name)}</code>). {text}</p>")',
             (U + "test_what_happened_has_no_cause_paragraph_without_causes_and_escapes_what_it_shows",),
             "a reason from an artefact reaches the page unescaped"),
    # -- the manifest
    Mutation("manifest-evidence-not-allow-listed", "engine/connectors/kafka/connector.py",
             "[{k: p[k] for k in RANGE_FIELDS if k in p} for p in places if isinstance(p, dict)]",
             "[dict(p) for p in places if isinstance(p, dict)]",
             (U + "test_the_manifest_input_records_where_the_evidence_lies_and_nothing_else",),
             "the evidence's payload-side fields (events, producer ids, anything added later) reach the manifest"),
    Mutation("manifest-evidence-not-recorded", "engine/app/explain.py",
             '"root_cause": attribution.ranges}', '"root_cause": []}',
             (MANIFEST,), "the explain manifest does not record where the evidence lies"),
]

MUTATIONS.append(
    Mutation("terminal-causes-hidden", "engine/report/terminal.py",
             '+ (f"; causes: {why}" if why else "")', "",
             (U + "test_explain_in_the_terminal_names_each_windows_causes",),
             "explain's terminal output no longer names each window's causes"))
