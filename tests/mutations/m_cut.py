"""Issue 18 (h18d): the streaming cut of a PostgreSQL key. Each breakage below changes a run's
boundaries or counts, or hides a key order the cut must refuse; its tests must fail."""

from __future__ import annotations

from tests.mutations import Mutation

_U = "tests/unit/test_streaming_cut.py::"
_I = "tests/integration/test_ranges_diff.py::"

MUTATIONS = [
    Mutation("cut-run-start-not-carried", "engine/core/merkle.py",
             "self._starts.append(self._last_start if i == 0 and v == self._last else self.rows + i)",
             "self._starts.append(self.rows + i)",
             (_U + "test_batch_edges_on_duplicates",),
             "a boundary whose key's run began in an earlier batch starts its segment at the batch edge"),
    Mutation("cut-first-key-kept", "engine/core/merkle.py",
             "if v == self._first or (self.boundaries", "if (self.boundaries",
             (_U + "test_first_key_repeated_is_no_boundary",),
             "a pick equal to the first key becomes a boundary (an empty first segment)"),
    Mutation("cut-batch-order-unchecked", "engine/core/merkle.py",
             "(m > 1 and (keys.slice(1) < keys.slice(0, m - 1)).any())", "False",
             (_U + "test_order_breaks_are_refused",),
             "a batch that is not sorted is taken"),
    Mutation("cut-edge-order-unchecked", "engine/core/merkle.py",
             "if self._last is not None and first < self._last:", "if False:",
             (_U + "test_order_breaks_are_refused",),
             "a batch that does not continue from the previous one is taken"),
    Mutation("cut-no-fallback", "engine/app/ranges.py",
             "            if not picker.feed(k):\n                return None", "            picker.feed(k)",
             (_I + "test_keys_not_in_nfc_fall_back_to_the_in_memory_cut",),
             "a failed order check no longer falls back to the in-memory cut"),
    Mutation("cut-int-numeric-order", "engine/connectors/postgres/keystream.py",
             "sql.SQL('({})::text COLLATE \"C\"').format(ident)", "ident",
             (_I + "test_streamed_cut_equals_the_in_memory_cut_over_many_batches[int]",),
             "integers are sorted numerically, not as decimal text: the stream is never used"),
    Mutation("cut-text-column-collation", "engine/connectors/postgres/keystream.py",
             "sql.SQL('{} COLLATE \"C\"').format(ident)", "ident",
             (_I + "test_streamed_cut_equals_the_in_memory_cut_over_many_batches[text]",),
             "text keys are sorted in the column's linguistic collation: the stream is never used"),
]
