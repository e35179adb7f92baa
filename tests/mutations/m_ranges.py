"""Issue 18's range reads: the breakages the range-read tests must catch (a predicate that loses or
misorders rows, a read outside the run's snapshot, a snapshot session that can die unnoticed,
pruning that skips nothing, an index that is never found)."""

from __future__ import annotations

from tests.mutations import Mutation

_IT = "tests/integration/test_range_reads.py"
_UT = "tests/unit/test_key_ranges.py"

MUTATIONS = [
    Mutation("int-text-prefix-off-by-one", "engine/core/keyorder.py",
             "        below = min(below + 1, size)", "        below = below",
             (f"{_UT}::test_int_intervals_hold_exactly_the_ints_whose_text_is_in_range",
              f"{_IT}::test_integer_predicate_selects_exactly_the_texts_in_range_in_postgresql"),
             "an integer whose text is a proper prefix of the bound's is put on the wrong side of it"),
    Mutation("text-key-in-column-collation", "engine/connectors/postgres/keyrange.py",
             """        col = sql.SQL('{} COLLATE "C"').format(ident)""", "        col = ident",
             (f"{_IT}::test_text_key_of_a_non_c_collation_reads_each_range[no-index]",),
             "a text key is compared in the column's linguistic collation instead of byte order"),
    Mutation("id-lower-bound-not-cut", "engine/connectors/postgres/keyrange.py",
             """        lo = rng.lo[:15] if kind == "id" and rng.lo is not None else rng.lo""",
             "        lo = rng.lo",
             (f"{_UT}::test_id_key_lower_bound_is_its_15_character_prefix",),
             "a 15-character id whose 18-character form is the range's lower bound is left out"),
    Mutation("compound-first-field-exclusive", "engine/connectors/postgres/keyrange.py",
             "hi_inclusive=True)", "hi_inclusive=False)",
             (f"{_IT}::test_date_and_compound_keys_read_each_range",),
             "a compound key whose first field equals the upper bound's first part is left out"),
    Mutation("date-upper-bound-inclusive", "engine/connectors/postgres/keyrange.py",
             """op = "<" if len(hi) == 10 else "<=\"""", """op = "<=\"""",
             (f"{_IT}::test_date_and_compound_keys_read_each_range",),
             "a date range also returns the rows of its upper bound's date"),
    Mutation("snapshot-not-imported", "engine/connectors/postgres/source.py",
             """                self.conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
""", "",
             (f"{_IT}::test_range_reads_see_the_run_snapshot[psycopg]",),
             "the in-process read no longer imports the run's snapshot (it reads the current state)"),
    Mutation("snapshot-token-ignored", "engine/connectors/postgres/connector.py",
             "snapshot=req.snapshot,", "snapshot=None,",
             (f"{_IT}::test_range_reads_see_the_run_snapshot[psql]",),
             "a range read exports a snapshot of its own instead of the run's"),
    Mutation("idle-timeout-kept", "engine/connectors/postgres/snapshot.py",
             """            self._conn.execute("SET idle_in_transaction_session_timeout = 0")
""", "",
             (f"{_IT}::test_the_snapshot_session_turns_the_idle_timeout_off",),
             "the exporting session keeps the server's idle-in-transaction timeout"),
    Mutation("snapshot-loss-unnoticed", "engine/connectors/postgres/snapshot.py",
             """                conn.execute("SELECT 1").fetchone()""", "                pass",
             (f"{_IT}::test_range_reads_see_the_run_snapshot[psql]",),
             "check() passes after the exporting session was terminated"),
    Mutation("c-index-never-found", "engine/connectors/postgres/keyrange.py",
             """        return TextKeyFacts("collate", True)""", """        return TextKeyFacts("collate", False)""",
             (f"{_IT}::test_text_key_of_a_non_c_collation_reads_each_range[c-index]",),
             "an index on (col COLLATE \"C\") is not reported as serving the range"),
    Mutation("parquet-prunes-nothing", "engine/connectors/files/source.py",
             "            outside = (blo is not None and bmx < blo) or (bhi is not None and bmn >= bhi)",
             "            outside = False",
             (f"{_IT}::test_parquet_skips_row_groups_of_a_sorted_file_only",),
             "every row group of a sorted Parquet file is read for every range"),
    Mutation("salesforce-range-not-sent", "engine/connectors/salesforce/source.py",
             "    range_conds = id_range_conditions(*id_range) if id_range is not None else []",
             "    range_conds = []",
             (f"{_IT}::test_salesforce_reads_each_id_range[bulk]",),
             "a Salesforce range task reads the whole object"),
]
