"""Issue 18's coordinator: key-range runs must give the one-pass answer and read one snapshot; each
mutation breaks one of the rules the range tests assert."""

from __future__ import annotations

from tests.mutations import Mutation

_UNIT = "tests/unit/test_ranges.py::test_every_range_size_gives_the_one_pass_answer"
_PG = "tests/integration/test_ranges_diff.py"

MUTATIONS = [
    Mutation("no-run-snapshot", "engine/app/reconcile.py",
             'opener = getattr(src, "open_snapshot", None)', "opener = None",
             (f"{_PG}::test_every_range_reads_the_state_at_the_start",),
             "each task reads its own snapshot: rows changed during the run leak into later ranges"),
    Mutation("no-exact-range-filter", "engine/app/ranges.py",
             "c = Canonical(frame=c.frame.filter(key_range.expr()), fields=c.fields, unique_keys=c.unique_keys)",
             "c = c",
             (f"{_UNIT}[text-key]",),
             "a task keeps rows outside its range (a file side is read whole): rows counted in several ranges"),
    Mutation("range-upper-bound-inclusive", "engine/core/plan.py",
             "e = e & (c < pl.lit(self.hi, dtype=pl.Utf8))", "e = e & (c <= pl.lit(self.hi, dtype=pl.Utf8))",
             ("tests/unit/test_ranges.py::test_key_range_is_byte_order_with_open_ends", f"{_UNIT}[int-key]"),
             "a key equal to the next range's first key is counted twice"),
    Mutation("task-boundaries-off-by-one", "engine/core/plan.py",
             "boundaries=b[i:j - 1], source_rows=rows", "boundaries=b[i + 1:j - 1], source_rows=rows",
             ("tests/unit/test_ranges.py::test_plan_groups_whole_segments_and_covers_every_key", f"{_UNIT}[text-key]"),
             "a task hashes one segment fewer than planned: roots differ from one pass"),
    Mutation("column-stats-not-summed", "engine/app/ranges.py",
             "a = ra if a is None else (a if ra is None else a + ra)", "a = ra if a is None else a",
             (f"{_UNIT}[text-key]",),
             "abs_variance keeps only the first range's share"),
    Mutation("plan-not-in-manifest", "engine/app/reconcile.py",
             's["plan"] = dict(self.plan)', 's["plan"] = {k: v for k, v in self.plan.items() if k != "ranges_detail"}',
             (f"{_PG}::test_a_range_run_manifest_verifies_from_the_data",),
             "the signed manifest loses each range's roots"),
]

MUTATIONS += [
    Mutation("nfc-guard-off", "engine/connectors/postgres/connector.py",
             "return not (row and row[0])", "return True",
             (f"{_PG}::test_keys_not_in_nfc_are_never_lost_by_a_range_run",),
             "a key stored decomposed is pushed down as stored: the range run loses it"),
]

MUTATIONS += [
    Mutation("parquet-nfc-guard-off", "engine/connectors/files/connector.py",
             'return bool((col.str.normalize("NFC") == col).fill_null(True).all())', "return True",
             ("tests/unit/test_ranges.py::test_a_parquet_key_not_in_nfc_is_never_lost",),
             "row groups are pruned by the stored spelling of a decomposed key: the range run loses it"),
]
