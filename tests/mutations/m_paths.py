"""Issue 22, "Paths that never run", items 5–7: each breakage below flips one behaviour the new or
repaired tests pin, and those tests must fail with it."""

from __future__ import annotations

from tests.mutations import Mutation

SRC = "engine/connectors/files/source.py"
UNIT = "tests/unit/test_csv_source.py"
E2E = "tests/e2e/test_csv_files.py"
V1 = "tests/e2e/test_manifest_v1.py"
UNEXPLAINED = "tests/integration/test_unexplained.py::test_a_difference_no_rule_explains_is_unexplained_with_exact_counts"

MUTATIONS = [
    # -- item 5: csv:PATH files ---------------------------------------------------------------------
    Mutation("csv-16mib-blocks", SRC,
             "block_size=max(1, min(path.stat().st_size + 1, CSV_MAX_BLOCK_BYTES))", "block_size=1 << 24",
             (f"{UNIT}::test_a_quoted_line_end_where_arrow_used_to_cut_its_blocks",),
             "CSV parsed in 16 MiB Arrow blocks again (a quoted CR LF at a boundary loses its LF)"),
    Mutation("csv-open-quote-accepted", SRC, "    if n % 2:\n", "    if n % 2 and False:\n",
             (f"{E2E}::test_a_file_recon_cannot_read_exactly_is_exit_2_in_one_line",),
             "a quote left open (a file cut short) is read to the end of the file as one value"),
    Mutation("csv-header-without-line-end", SRC, 'if "Empty CSV file" in first:',
             'if "Empty CSV file" in first and False:',
             (f"{E2E}::test_a_header_only_file_is_a_snapshot_of_no_rows",),
             "a header-only file without a line end is an error again"),
    Mutation("csv-bom-in-first-name", SRC, 'encoding="utf-8-sig"', 'encoding="utf-8"',
             (f"{E2E}::test_bulk_and_spreadsheet_files_of_the_same_records_agree",),
             "the byte-order mark becomes part of the first header name"),
    Mutation("csv-quoted-empty-not-null", SRC, "quoted_strings_can_be_null=True),",
             "quoted_strings_can_be_null=False),",
             (f"{E2E}::test_bulk_and_spreadsheet_files_of_the_same_records_agree",),
             'a quoted empty value ("") is an empty text, not NULL like an unquoted one'),
    Mutation("csv-directory-is-a-bug", SRC, "    except OSError as exc:  # a directory",
             "    except ZeroDivisionError as exc:  # a directory",
             (f"{E2E}::test_a_directory_named_as_a_csv_is_exit_2_not_a_bug",),
             "a directory named as a CSV is exit 70 with a traceback again"),
    Mutation("csv-unnamed-column-accepted", SRC, "        if not name:  # a trailing comma",
             "        if False:  # a trailing comma",
             (f"{UNIT}::test_a_file_that_cannot_be_read_is_one_line_naming_it",),
             "a header column without a name is accepted"),
    Mutation("csv-blank-first-line-called-empty", SRC, "    if header is None:\n", "    if not header:\n",
             (f"{UNIT}::test_a_file_that_cannot_be_read_is_one_line_naming_it",),
             "a blank first line is reported as an empty file"),
    # -- item 6: manifest verify --data on version-1 manifests --------------------------------------
    Mutation("v1-hashed-as-v2", "engine/evidence/manifest.py", "        if version == 1:\n",
             "        if version == 0:\n", (f"{V1}::test_a_version_1_manifest_verifies_with_its_data",),
             "a version-1 snapshot is hashed with the version-2 encoding"),
    Mutation("v1-not-supported", "engine/core/normalize.py", "SUPPORTED_ENCODINGS = (1, 2)",
             "SUPPORTED_ENCODINGS = (2,)", (f"{V1}::test_a_version_1_manifest_verifies_with_its_data",),
             "the verifier no longer accepts version-1 snapshots"),
    Mutation("v1-row-text-unchecked", "engine/evidence/manifest.py",
             'if "__row" in frame.columns and not rows.equals(frame["__row"]):', "if False:",
             (f"{V1}::test_a_value_changed_under_its_version_1_row_text_is_named",),
             "a version-1 snapshot's row texts are no longer held against its values"),
    # -- item 7: unexplained, divergent_ranges, exit 70 ----------------------------------------------
    Mutation("missing-events-any-gap", "engine/core/forensics.py", '"missing_events": (w == d) & (w < s),',
             '"missing_events": (w == d) & (w != s),', (UNEXPLAINED,),
             "a stream and warehouse above Salesforce count as missing events (A is no longer unexplained)"),
    Mutation("inflation-ignores-salesforce", "engine/core/forensics.py",
             '"duplicate_inflation": (w == r) & (r != d) & (d == s),',
             '"duplicate_inflation": (w == r) & (r != d),', (UNEXPLAINED,),
             "a copy that explains only part of a gap counts as duplicate inflation (B)"),
    Mutation("duplicated-key-classified", "engine/core/forensics.py",
             'expr = pl.when(pl.col("kind") == "duplicate_key").then(pl.lit(last.name))',
             'expr = pl.when(pl.col("kind") == "duplicate_key").then(pl.lit("warehouse_only_drift"))',
             (UNEXPLAINED,), "a duplicated key gets a class a rule names (C)"),
    Mutation("divergent-ranges-sides-swapped", "engine/core/diff.py", '"source_rows": self.source_tree.rows[i]',
             '"source_rows": self.target_tree.rows[i]',
             ("tests/e2e/test_divergent_ranges.py::test_divergent_ranges_are_exactly_the_segments_that_differ",),
             "divergent_ranges reports the target's row count as the source's"),
    Mutation("secret-refusal-not-70", "engine/app/evidence.py", "    exit_code = Exit.INTERNAL",
             "    exit_code = Exit.USAGE",
             ("tests/e2e/test_internal_error.py::test_evidence_that_would_hold_a_secret_is_exit_70_in_one_line_through_main",),
             "evidence refused for a secret exits 2 instead of 70"),
    Mutation("recon-error-traceback", "engine/cli/main.py", "    except ReconError as exc:\n",
             "    except ReconError as exc:\n        traceback.print_exc()\n",
             ("tests/e2e/test_internal_error.py::test_evidence_that_would_hold_a_secret_is_exit_70_in_one_line_through_main",),
             "a refused recording prints a traceback before its one line"),
    Mutation("internal-error-not-70", "engine/cli/main.py", "        sys.exit(int(Exit.INTERNAL))",
             "        sys.exit(1)",
             ("tests/e2e/test_internal_error.py::test_an_unexpected_exception_exits_70_with_its_traceback_and_one_closing_line",
              "tests/e2e/test_internal_error.py::test_recon_debug_0_keeps_the_closing_line_without_the_traceback"),
             "an unexpected exception exits 1, like 'differences found'"),
]
