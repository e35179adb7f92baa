"""How the range counts of an incremental run's deletion search depend on the table's visibility map
(issue 19; README "Deletions in PostgreSQL"). Opt-in, not part of the suite:

    python bench/bench_visibility.py DSN TABLE STATE_DIR/state.json

Prints, for TABLE: the heap fetches of an index-only ``count(*)`` over the key (the rows on pages
changed since the last VACUUM, which the counts check in the heap) and three timings of the first
step of the counts exactly as a run makes it (``engine.connectors.postgres.rangecount``, ranges of
``NARROW_STEPS[0]`` segments of the state's boundaries). Run it before and after ``VACUUM TABLE``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_incremental import heap_fetches  # noqa: E402

from engine.app.incremental import NARROW_STEPS, _key_range, _spans  # noqa: E402
from engine.connectors.postgres.rangecount import open_ranges  # noqa: E402
from engine.connectors.refs import parse_reference  # noqa: E402
from engine.core.normalize import ColumnType, FieldSpec  # noqa: E402


def main() -> None:
    dsn, table, index_path = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    bounds = json.loads(index_path.read_text())["boundaries"]
    key = (FieldSpec("id", "id", ColumnType("text"), is_key=True),)
    ref = parse_reference(f"{dsn}#public.{table}")
    spans = _spans(0, len(bounds) + 1, NARROW_STEPS[0])
    times = []
    for _ in range(3):
        with open_ranges(ref, key, None, passfile=None, statement_timeout_ms=0) as kr:
            assert kr is not None, "the key needs an index in byte order"
            t0 = time.perf_counter()
            kr.counts([_key_range(bounds, a, b) for a, b in spans])
            times.append(round(time.perf_counter() - t0, 3))
    print(json.dumps({"table": table, "heap_fetches": heap_fetches(dsn, table), "ranges": len(spans),
                      "first_step_s": times}))


if __name__ == "__main__":
    main()
