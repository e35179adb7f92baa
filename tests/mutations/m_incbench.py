"""Issue 19's incremental benchmark found a run with nothing changed crashing: with the guard gone,
the test of that run must fail."""

from __future__ import annotations

from tests.mutations import Mutation

_T = "tests/integration/test_incremental.py::"

MUTATIONS = [
    Mutation("no-touched-segment-crash", "engine/app/incremental.py",
             "    if sizes:\n        out.append((j0, len(sizes)))", "    if True:\n        out.append((j0, len(sizes)))",
             (_T + "test_a_run_with_nothing_changed_touches_no_segment",),
             "a run in which nothing changed works on an empty batch of segments and fails"),
]
