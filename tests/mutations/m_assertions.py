"""Issue 22, "assertions that cannot fail or check too little": one breakage per repaired assertion.

Each mutation flips a behaviour that the assertion as it was (``or len(digests) == 1``, a window's
times copied from recon's output, the digest compared with itself, ``found: yes``, ``in (0, 1)``,
``!= 0`` through CliRunner, a count of dead letters, ``>= 10``) let through, and that the repaired
assertion catches. Test lists name the one test that holds the assertion.
"""

from __future__ import annotations

from tests.mutations import Mutation

_DIFF = "tests/unit/test_diff.py::test_scaled_and_wide_decimals_compare_alike"
_WINDOWS = "tests/integration/test_forensics.py::test_windows_equal_the_injected_blocks"
_HOSTILE = "tests/integration/test_forensics.py::test_hostile_topic_is_counted_not_fatal"
_MANIFEST = "tests/unit/test_manifest.py::test_the_transformation_digest_follows_the_bytes_of_the_listed_modules"
_CONSUMER_DIGEST = "tests/unit/test_consumer_parse.py::test_the_transform_digest_follows_the_bytes_of_the_code_it_names"
_DEMO = "tests/e2e/test_demo.py::test_demo_finds_fixes_proves_and_its_artefacts_verify"
_GATE_REPAIR = "tests/integration/test_gate_repair.py::"

MUTATIONS = [
    # 1. wide-vs-scaled decimal hashing: the same value hashes alike in both forms
    Mutation("wide-decimal-bytes-big-endian", "engine/core/normalize.py",
             "return ColumnBytes(valid, fixed=raw.reshape(-1, 16))",
             "return ColumnBytes(valid, fixed=np.ascontiguousarray(raw.reshape(-1, 16)[:, ::-1]))",
             (_DIFF,),
             "a wide Decimal(38, s) column is hashed big-endian, so its segments differ from the scaled form's"),
    # 2. kafka-audit windows: their times are the produced copies' timestamps
    Mutation("audit-window-last-ts-is-first", "engine/core/forensics.py",
             'pl.col("ts_ms").max().alias("last_ts_ms"),', 'pl.col("ts_ms").min().alias("last_ts_ms"),',
             (_WINDOWS,), "a window's last_ts is its first copy's timestamp"),
    Mutation("audit-window-ts-whole-seconds", "engine/core/forensics.py",
             '"first_ts": iso_ms(r["first_ts_ms"]), "last_ts": iso_ms(r["last_ts_ms"])',
             '"first_ts": iso_ms(r["first_ts_ms"] // 1000 * 1000), "last_ts": iso_ms(r["last_ts_ms"] // 1000 * 1000)',
             (_HOSTILE,), "a window's times lose their milliseconds"),
    # 3. transformation digests: they follow the bytes of the code they name, and only that code
    Mutation("manifest-digest-ignores-contents", "engine/evidence/manifest.py",
             'h.update(f"engine/{name}".encode() + b"\\x00" + str(len(data)).encode() + b"\\x00" + data)',
             'h.update(f"engine/{name}".encode() + b"\\x00" + str(len(data)).encode() + b"\\x00")',
             (_MANIFEST,), "the manifest's transformation digest covers names and lengths, not the bytes"),
    Mutation("manifest-digest-hashes-all-of-core", "engine/evidence/manifest.py",
             "    for name in TRANSFORMATION_MODULES:",
             "    for name in sorted({*TRANSFORMATION_MODULES,\n"
             "                        *(p.relative_to(base).as_posix() for p in (base / 'core').glob('*.py'))}):",
             (_MANIFEST,), "the manifest's transformation digest covers every core module, listed or not"),
    Mutation("consumer-digest-misses-events", "engine/connectors/kafka/consumer/transformation.py",
             "parts = [inspect.getsource(ids), inspect.getsource(sfid), inspect.getsource(events)]",
             "parts = [inspect.getsource(ids), inspect.getsource(sfid)]",
             (_CONSUMER_DIGEST,), "the consumer's transform digest forgets engine/core/events.py"),
    Mutation("consumer-digest-hashes-errors", "engine/connectors/kafka/consumer/transformation.py",
             "parts = [inspect.getsource(ids), inspect.getsource(sfid), inspect.getsource(events)]",
             "from engine.core import errors\n"
             "    parts = [inspect.getsource(ids), inspect.getsource(sfid), inspect.getsource(events), "
             "inspect.getsource(errors)]",
             (_CONSUMER_DIGEST,), "the consumer's transform digest also covers errors.py, which it does not name"),
    # 4. the demo against the ground truth, class by class
    Mutation("explain-swaps-duplicate-and-missing-events", "engine/core/forensics.py",
             '        "duplicate_inflation": (w == r) & (r != d) & (d == s),\n'
             '        "stale_salesforce": (w == d) & (d != s) & stale,\n'
             '        "missing_events": (w == d) & (w < s),',
             '        "missing_events": (w == r) & (r != d) & (d == s),\n'
             '        "stale_salesforce": (w == d) & (d != s) & stale,\n'
             '        "duplicate_inflation": (w == d) & (w < s),',
             (_DEMO,), "explain names duplicate inflation missing events and the reverse (both are repaired: "
                       "the demo still says found, fixed, proven)"),
    # 5. exact exit codes
    Mutation("cli-error-exits-1", "engine/cli/main.py",
             "sys.exit(int(exc.exit_code))", "sys.exit(1)",
             ("tests/unit/test_cost.py::test_cli_cost_unknown_key_is_exit_2_in_one_line",),
             "every recon error exits 1 from the console entry point (CliRunner never sees main())"),
    Mutation("diff-exit-ignores-mismatches", "engine/core/diff.py",
             "return bool(self.mismatched or self.missing_in_target or self.missing_in_source)",
             "return bool(self.missing_in_target or self.missing_in_source)",
             (_GATE_REPAIR + "test_after_repair_only_the_stale_remainder_differs",),
             "a diff whose differences are only mismatched values exits 0"),
    Mutation("diff-exit-always-1", "engine/app/diff.py",
             "return Exit.FINDINGS if self.run.result.has_differences else Exit.OK", "return Exit.FINDINGS",
             ("tests/e2e/test_csv_values.py::test_snapshot_writes_the_sidecar_the_diff_reads",),
             "a diff of two equal sides exits 1"),
    Mutation("audit-exit-ignores-conflicts", "engine/cli/commands/forensics.py",
             "Exit.FINDINGS if a.duplicates or a.conflicts else Exit.OK", "Exit.FINDINGS if a.duplicates else Exit.OK",
             ("tests/integration/test_adversarial.py::test_attack[16.5-unquoted-amounts-exact]",),
             "kafka-audit exits 0 when it found conflicts but no duplicates"),
    # 6. the consumer's dead letters: (partition, offset, reason)
    Mutation("consumer-record-id-reason-mislabelled", "engine/connectors/kafka/consumer/transformation.py",
             'reason, detail = "invalid_record_id", _detail(', 'reason, detail = "invalid_org_id", _detail(',
             ("tests/integration/test_consumer.py::test_reset_offsets_replay_changes_nothing",),
             "a bad record id is dead-lettered as invalid_org_id (same count of dead letters)"),
    # 7. exact values instead of >=
    Mutation("report-drops-zero-after-bars", "engine/report/charts.py",
             "        if a is not None:\n            wa = _bar_width(a, vmax, span)",
             "        if a:\n            wa = _bar_width(a, vmax, span)",
             ("tests/unit/test_report_html.py::test_every_chart_present_and_non_empty",),
             "the before/after chart leaves out an 'after' bar whose value is 0"),
    Mutation("event-type-limit-256", "engine/core/events.py",
             "MAX_EVENT_TYPE_LEN: Final[int] = 255", "MAX_EVENT_TYPE_LEN: Final[int] = 256",
             ("tests/unit/test_consumer_parse.py::test_both_paths_give_the_same_batch",),
             "an event type of 256 characters is valid on both consumer paths (they still agree)"),
    Mutation("dry-run-lists-one-more", "engine/cli/commands/gate_repair.py",
             "    for c in plan.corrections[:limit]:", "    for c in plan.corrections[:limit + 1]:",
             (_GATE_REPAIR + "test_dry_run_prints_the_plan_and_writes_nothing",),
             "the dry run prints 61 corrections and then says 'and n - 60 more'"),
    Mutation("sec-top-fraction-halved", "engine/connectors/salesforce/source.py",
             "k = max(1, int(-(-total * fraction // 1))) if total else 0",
             "k = max(1, int(-(-total * fraction // 2))) if total else 0",
             (_GATE_REPAIR + "test_sec_subset_applied_and_verified_first",),
             "the SEC-critical subset is the top 2.5% by revenue, not 5%"),
]
