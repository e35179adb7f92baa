"""Issue 19, incremental diffs: each mutation breaks one rule of `recon diff --state`, and the named
tests must fail."""

from __future__ import annotations

from tests.mutations import Mutation

_T = "tests/integration/test_incremental.py"
_PROP = f"{_T}::test_incremental_runs_equal_a_full_read_with_the_same_boundaries"
_LATE = f"{_T}::test_a_transaction_committing_after_the_watermark_is_not_lost"
_TAMPER = f"{_T}::test_a_tampered_segment_file_is_refused_and_full_rebuilds"
_LOCK = f"{_T}::test_two_runs_on_one_state_and_bad_options"
_CLI = f"{_T}::test_cli_state_run_is_signed_with_its_watermarks_and_verifies"
_DRIFT = f"{_T}::test_a_change_the_watermark_cannot_see_is_state_drift_and_the_state_is_rebuilt"
_EVERY = f"{_T}::test_full_every_n_runs_checks_the_state"
_UNIT = "tests/unit/test_incremental_deleted.py"
_SF = "tests/integration/test_incremental_sf.py::test_sf_pg_incremental_runs_equal_a_full_read_with_the_same_boundaries"

MUTATIONS = [
    Mutation("watermark-ignores-open-transactions", "engine/connectors/postgres/changes.py",
             "lower = min(clock, oldest) if oldest is not None else clock",
             "lower = clock",
             (_LATE,),
             "the next lower bound is the snapshot's clock: a transaction open across the run is lost"),
    Mutation("totals-keep-the-old-share", "engine/app/incremental.py",
             "counts[k] += int(getattr(after, k)) - int(getattr(before, k))",
             "counts[k] += int(getattr(after, k))",
             (_PROP,),
             "the touched segments' previous share is not subtracted from the totals"),
    Mutation("deletions-not-counted", "engine/app/incremental.py",
             'if p["rows_now"] != predicted:',
             "if False:",
             (_PROP,),
             "a row deleted in PostgreSQL (which lists no deletions) stays in the state"),
    Mutation("segment-digest-not-checked", "engine/app/incremental.py",
             "            if d.hex() != e[\"digest\"]:",
             "            if False:",
             (_TAMPER,),
             "a segment whose stored rows changed after they were written is trusted"),
    Mutation("no-lock", "engine/workspace.py",
             'open(self.dir / STATE_LOCK, "a+")  # noqa: SIM115  (held for the run)\n        try:\n'
             "            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)",
             'open(self.dir / STATE_LOCK, "a+")  # noqa: SIM115  (held for the run)\n        try:\n'
             "            pass",
             (_LOCK,),
             "two runs can share one state"),
    Mutation("never-split", "engine/app/incremental.py",
             "if counts[j] > 2 * req.segment_rows:",
             "if counts[j] > 2000 * req.segment_rows:",
             (_PROP,),
             "a segment that grew past twice the segment size is not split"),
    Mutation("changed-rows-by-the-previous-clock", "engine/connectors/postgres/changes.py",
             'text = since.get("lower_next") if isinstance(since, dict) else None',
             'text = since.get("at") if isinstance(since, dict) else None',
             (_LATE,),
             "the watermark's clock is used, not the floor the open transactions set"),
    Mutation("state-digest-not-recorded", "engine/app/incremental.py",
             'info: dict[str, Any] = {"state": str(state.dir), "state_before": before, "run": runs + 1}',
             'info: dict[str, Any] = {"state": str(state.dir), "state_before": None, "run": runs + 1}',
             (_CLI,),
             "the manifest does not say which state the run started from"),
    Mutation("getdeleted-ignored", "engine/app/incremental.py",
             "deleted = _canon_keys(side, g.deleted)",
             "deleted = _canon_keys(side, None)",
             (_SF,),
             "the deletions Salesforce lists are dropped (only the count would find them, with a key read)"),
    Mutation("sf-totals-keep-the-old-share", "engine/app/incremental.py",
             "a.mismatched - b.mismatched,",
             "a.mismatched,",
             (_SF,),
             "a column's mismatch count keeps the touched segments' previous share"),
    Mutation("drift-not-reported", "engine/app/incremental.py",
             '                    status = "state_drift"',
             '                    status = "ok"',
             (_DRIFT,),
             "a full check that finds other roots reports the run as ok"),
    Mutation("full-every-off-by-one", "engine/app/incremental.py",
             "since_full + 1 >= opts.full_every",
             "since_full >= opts.full_every",
             (_EVERY,),
             "the full check runs one run late"),
    Mutation("narrowed-deletions-never-exact", "engine/app/incremental.py",
             '        if len(gone) == expect:\n            return gone, {"by": "key read"',
             '        if True:\n            return gone, {"by": "key read"',
             (f"{_UNIT}::test_a_deletion_hidden_behind_an_unlisted_insert_falls_back_to_every_segment",),
             "a deletion the per-segment counts cannot see is missed (every segment is never compared)"),
    Mutation("range-counts-trusted-blindly", "engine/app/incremental.py",
             "            if gone is not None and len(gone) == expect:",
             "            if gone is not None:",
             (f"{_T}::test_counts_that_do_not_add_up_fall_back_to_reading_every_key",),
             "the range counts' answer is taken even when it does not account for every deleted row"),
    Mutation("range-counts-off", "engine/app/incremental.py",
             '        opener = getattr(side.src, "key_ranges", None)',
             "        opener = None",
             (_PROP,),
             "deletions are always found by reading every key (the range counts are never used)"),
    Mutation("all-segments-compared", "engine/app/incremental.py",
             "        spans = [sp for sp, g, w in zip(spans, got.tolist(), want.tolist(), strict=True) if g != w]",
             "        spans = [sp for sp, g, w in zip(spans, got.tolist(), want.tolist(), strict=True)]",
             (f"{_T}::test_the_range_counts_narrow_to_the_moved_segments",),
             "the range counts narrow nothing: every segment's keys are read"),
]
