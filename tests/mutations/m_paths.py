"""Issue 22, "Paths that never run", items 5–7: each breakage below flips one behaviour the new or
repaired tests pin, and those tests must fail with it."""

from __future__ import annotations

from tests.mutations import Mutation

SRC = "engine/connectors/files/source.py"
UNIT = "tests/unit/test_csv_source.py"
E2E = "tests/e2e/test_csv_files.py"

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
]
