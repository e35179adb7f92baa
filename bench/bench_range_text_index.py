"""Range reads of a text key in a linguistic collation, with and without an index in byte order.

Usage (from the repository root, with the venv that runs the tests):

    python bench/bench_range_text_index.py --rows 1000000 --ranges 8 --repeat 3 [--state-dir /tmp/recon-bench-ranges]

Canonical key order is byte order, so a range task asks PostgreSQL for
``k COLLATE "C" >= lo AND k COLLATE "C" < hi`` (engine/connectors/postgres/keyrange.py). On a column
whose collation is linguistic (here libc's en_US.UTF-8; the embedded server has no ICU, and the
locale is compiled with localedef when the machine lacks it) the column's ordinary index cannot
serve that, so every task scans the whole table. This script loads ``--rows`` rows (a random-looking
text key, a numeric and a text column; an ordinary index on the key), cuts ``--ranges`` ranges in
byte order and reads each through :class:`engine.connectors.postgres.connector.PostgresSource`
(the range task's read, psql children, one exported snapshot for the run), first with no index in
byte order, then after ``CREATE INDEX … (k COLLATE "C")``, then with the heap clustered on that
index (so a range's rows share pages). It also times one whole-table read for scale, and records
the planner's top node for one range. Each figure is the median of --repeat runs. Prints one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _locale() -> None:
    have = subprocess.run(["locale", "-a"], capture_output=True, text=True, check=False).stdout.split()
    if "en_US.utf8" not in have:
        tool = shutil.which("localedef")
        if tool is None:
            sys.exit("no en_US.UTF-8 locale and no localedef to make one (install the locales package)")
        subprocess.run([tool, "-i", "en_US", "-f", "UTF-8", "en_US.UTF-8"], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--ranges", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--state-dir", default="/tmp/recon-bench-ranges")
    args = ap.parse_args()
    _locale()

    import psycopg

    from engine.connectors.base import ReadRequest, parse_reference
    from engine.connectors.postgres.connector import PostgresSource
    from engine.core.normalize import ColumnType, FieldSpec
    from engine.core.plan import KeyRange
    from engine.local.postgres import EmbeddedPostgres
    from engine.local.state import StackPaths

    paths = StackPaths.at(args.state_dir)
    server = EmbeddedPostgres(paths)
    info = server.start()
    os.environ["PGPASSFILE"] = str(paths.pgpass_file)
    os.environ["RECON_PG_EARLY"] = "0"
    su, dsn = info.superuser_socket_dsn(), info.dsn
    out: dict[str, Any] = {"rows": args.rows, "ranges": args.ranges, "repeat": args.repeat}
    with psycopg.connect(su, autocommit=True) as c:
        c.execute("CREATE COLLATION IF NOT EXISTS public.recon_en (provider = libc, locale = 'en_US.utf8')")
        have = c.execute("SELECT count(*) FROM pg_class WHERE relname = 'rr_bench'").fetchone()
        rows = c.execute("SELECT count(*) FROM rr_bench").fetchone()[0] if have and have[0] else -1  # type: ignore[index]
        if rows != args.rows:
            t = time.perf_counter()
            c.execute("DROP TABLE IF EXISTS rr_bench")
            c.execute("CREATE TABLE rr_bench (k text COLLATE public.recon_en NOT NULL, amount numeric(18,2), "
                      "label text)")
            c.execute("INSERT INTO rr_bench SELECT substr(md5(g::text), 1, 6) || '-' || g, mod(g, 100000) / 100.0, "
                      "'Account ' || g FROM generate_series(1, %s) g", (args.rows,))
            c.execute("CREATE INDEX rr_bench_k ON rr_bench (k)")
            c.execute("GRANT SELECT ON rr_bench TO PUBLIC")
            c.execute("VACUUM ANALYZE rr_bench")
            out["load_s"] = round(time.perf_counter() - t, 2)
        c.execute("DROP INDEX IF EXISTS rr_bench_c")
        c.execute("CLUSTER rr_bench USING rr_bench_k")  # a rerun starts from the heap in linguistic order
        step = args.rows // args.ranges
        bounds = [r[0] for r in c.execute(
            'SELECT k FROM (SELECT k, row_number() OVER (ORDER BY k COLLATE "C") AS n FROM rr_bench) x '
            "WHERE n %% %s = 1 AND n > 1 ORDER BY k COLLATE \"C\"", (step,)).fetchall()][: args.ranges - 1]
    ranges = [KeyRange(lo, hi) for lo, hi in zip([None, *bounds], [*bounds, None], strict=True)]
    fields = (FieldSpec("k", "k", ColumnType("text"), is_key=True),)
    src = PostgresSource(parse_reference(f"{dsn}#public.rr_bench"), None)
    cols = ["k", "amount", "label"]

    def run_ranges() -> tuple[float, list[dict[str, Any]]]:
        snap = src.open_snapshot()
        try:
            t = time.perf_counter()
            metas = [src.read(ReadRequest(columns=cols, key_range=r, key_fields=fields, snapshot=snap.token)).meta
                     for r in ranges]
            return time.perf_counter() - t, metas
        finally:
            snap.close()

    def whole() -> float:
        t = time.perf_counter()
        src.read(ReadRequest(columns=cols))
        return time.perf_counter() - t

    whole_s = [whole() for _ in range(args.repeat)]
    out["whole_table_read_s"] = round(statistics.median(whole_s), 3)
    from engine.connectors.postgres.keyrange import key_predicate

    def plan_of(rng: KeyRange) -> str:
        """The top plan node of one range's query (the planner may still prefer a scan)."""
        cond = key_predicate(fields, {"k": "text"}, rng).condition
        assert cond is not None
        with psycopg.connect(su) as c:
            row = c.execute(psycopg.sql.SQL("EXPLAIN (FORMAT JSON) SELECT * FROM rr_bench WHERE {}").format(cond)
                            ).fetchone()
        return str(row[0][0]["Plan"]["Node Type"]) if row else "?"

    for label in ("without_c_index", "with_c_index", "with_c_index_clustered"):
        if label == "with_c_index":
            with psycopg.connect(su, autocommit=True) as c:
                t = time.perf_counter()
                c.execute('CREATE INDEX rr_bench_c ON rr_bench (k COLLATE "C")')
                out["c_index_build_s"] = round(time.perf_counter() - t, 2)
                c.execute("ANALYZE rr_bench")
        if label == "with_c_index_clustered":  # the heap in key order: a range's rows share pages
            with psycopg.connect(su, autocommit=True) as c:
                t = time.perf_counter()
                c.execute("CLUSTER rr_bench USING rr_bench_c")
                c.execute("ANALYZE rr_bench")
                out["cluster_s"] = round(time.perf_counter() - t, 2)
        times, metas = [], []
        for _ in range(args.repeat):
            s, metas = run_ranges()
            times.append(s)
        out[label] = {"ranges_total_s": round(statistics.median(times), 3),
                      "per_range_s": round(statistics.median(times) / len(ranges), 3),
                      "runs_s": [round(x, 3) for x in times],
                      "rows_per_range": [m["rows"] for m in metas],
                      "key_index": sorted({m.get("key_index") for m in metas}, key=str),
                      "readers": sorted({m["reader"] for m in metas}),
                      "plan": plan_of(ranges[3]),
                      "hint": next((m["hint"] for m in metas if "hint" in m), None)}
    w = out["without_c_index"]["ranges_total_s"]
    out["speedup_with_index"] = round(w / out["with_c_index"]["ranges_total_s"], 2)
    out["speedup_with_index_clustered"] = round(w / out["with_c_index_clustered"]["ranges_total_s"], 2)
    print(json.dumps(out, indent=2))
    server.stop()


if __name__ == "__main__":
    main()
