"""The PostgreSQL readers on the same key ranges: today's parallel `psql` COPY children against the
ADBC PostgreSQL driver, both through the connector (``RECON_PG_READER`` forces the reader).

Usage (from the repository root, opt-in):

    python bench/bench_pg_ranges.py --rows 10000000 [--range-rows 1548666] [--workers 1,2] [--repeat 3]
                                    [--reuse] [--keep]

The table is ``bench_scale_N_src`` of bench/bench_scale.py (built in the server by generate_series;
``--reuse`` keeps one already built with the same rows). Its keys are cut into ranges of
``--range-rows`` rows (default: what ``--memory-limit 3G`` gives two workers, see
``engine.core.plan.range_rows_for``) by an index-only scan of the key, in canonical (byte) order,
which is the table's own order here (``char(18) COLLATE "C"``). One exported REPEATABLE READ
snapshot is held for the whole bench, as the coordinator holds it for a run, and every range read
gets its token.

Each range is read through ``PostgresSource.read(ReadRequest(..., key_range=…, snapshot=…))`` when
the connector reads key ranges, else (before the range path) through the same connector with the
range as a row condition, which is said in the output (``via``). For every reader and every
``--workers`` value (ranges read that many at a time, as ``--executor local --workers N`` runs
tasks), the wall time of reading all ranges, alternating the readers round by round, median of
``--repeat``; rows per second per task, CPU-s of this process and its children, of the server
(its backends sampled every ~100 ms), and the CPU share others took meanwhile. The first range is also read by both readers and compared frame to frame.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import ROOT, TreeSampler, build_tables, drop_tables, tables_for  # noqa: E402

COLUMNS = ["id", "name", "owner_id", "annual_revenue", "clv", "event_count", "last_modified"]


def cpu_s() -> float:
    ru, rc = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime + rc.ru_utime + rc.ru_stime


def cut(dsn: str, src: str, range_rows: int) -> tuple[list[str], int]:
    """Boundaries every ``range_rows``-th key (index-only scan), and the table's row count."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        rows = c.execute(f"SELECT count(*) FROM {src}").fetchone()[0]  # type: ignore[index]  # noqa: S608
        keys = [r[0] for r in c.execute(
            f"SELECT id FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM {src}) k "  # noqa: S608
            "WHERE n %% %s = 1 AND n > 1 ORDER BY id", (range_rows,)).fetchall()]
    return [k.rstrip(" ") for k in keys], int(rows)


class Reads:
    """The connector, its key spec, the run's snapshot held open, and one read per range."""

    def __init__(self, dsn: str, src: str) -> None:
        import psycopg

        from engine.config import load
        from engine.connectors.base import parse_reference
        from engine.connectors.postgres.connector import PostgresSource

        self.ref = parse_reference(f"{dsn}#public.{src}")
        self.source = PostgresSource(self.ref, load(None))  # type: ignore[arg-type]
        self.conn = psycopg.connect(dsn)
        self.conn.read_only = True
        self.conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self.snapshot = self.conn.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
        self.native = "key_range" in inspect.getsource(type(self.source).read)
        from engine.core.normalize import ColumnType, FieldSpec

        self.key_fields = (FieldSpec("id", "id", ColumnType(kind="text"), is_key=True),)

    @property
    def via(self) -> str:
        return "connector key_range" if self.native else "connector row condition (no range path yet)"

    def read(self, lo: str | None, hi: str | None) -> Any:
        from engine.connectors.base import ReadRequest
        from engine.core.plan import KeyRange

        if self.native:
            req = ReadRequest(columns=COLUMNS, key_columns=["id"], key_range=KeyRange(lo, hi),
                              key_fields=self.key_fields, snapshot=self.snapshot)
        else:
            conds = ([f"id >= '{lo}'"] if lo is not None else []) + ([f"id < '{hi}'"] if hi is not None else [])
            req = ReadRequest(columns=COLUMNS, where=" AND ".join(conds) or None, key_columns=["id"])
        return self.source.read(req)

    def close(self) -> None:
        self.conn.rollback()
        self.conn.close()


def read_all(reads: Reads, ranges: list[tuple[str | None, str | None]], reader: str, workers: int,
             server_pid: int | None = None) -> dict[str, Any]:
    os.environ["RECON_PG_READER"] = reader
    per_task: list[float] = []
    rows = 0
    used: set[str] = set()

    def one(r: tuple[str | None, str | None]) -> tuple[int, float, str]:
        t = time.perf_counter()
        ex = reads.read(*r)
        return ex.frame.height, time.perf_counter() - t, str(ex.meta.get("reader"))

    sampler = TreeSampler(os.getpid(), server_pid).start()  # the server's CPU, psql children included
    c0, t0 = cpu_s(), time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for n, s, rd in pool.map(one, ranges):
            rows += n
            per_task.append(s)
            used.add(rd)
    wall = time.perf_counter() - t0
    sample = sampler.stop().as_json()
    return {"wall_s": wall, "cpu_s": cpu_s() - c0, "server_cpu_s": sample["server_cpu_s"],
            "others_cpu_share": sample["others_cpu_share"], "rows": rows, "task_s": per_task, "readers": sorted(used),
            "load1": os.getloadavg()[0]}


def main() -> None:
    from engine.core.plan import range_rows_for

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--range-rows", type=int, default=range_rows_for(3 * 2**30, workers=2))
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--readers", default="psql,adbc")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--state-dir", default=str(ROOT / ".recon-bench"))
    a = ap.parse_args()

    from engine.local.postgres import EmbeddedPostgres
    from engine.local.state import StackPaths

    paths = StackPaths.at(a.state_dir)
    info = EmbeddedPostgres(paths).start()
    os.environ["PGPASSFILE"] = str(paths.pgpass_file)
    dsn = info.dsn
    out: dict[str, Any] = {"rows": a.rows, "range_rows": a.range_rows, "cores": os.cpu_count(),
                           "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "loadavg_before": os.getloadavg()}
    readers = [r.strip() for r in a.readers.split(",") if r.strip()]
    workers = [int(w) for w in a.workers.split(",")]
    try:
        out["tables"] = build_tables(dsn, a.rows, 0.15, a.reuse)
        bounds, rows = cut(dsn, tables_for(a.rows)[0], a.range_rows)
        ranges = list(zip([None, *bounds], [*bounds, None], strict=True))
        out["ranges"] = len(ranges)
        reads = Reads(dsn, tables_for(a.rows)[0])
        out["via"] = reads.via
        try:
            first = {r: read_all(reads, ranges[:1], r, 1) for r in readers}  # warm-up (imports, buffers)
            frames = {}
            for r in readers:
                os.environ["RECON_PG_READER"] = r
                frames[r] = reads.read(*ranges[0]).frame
            base = frames[readers[0]]
            out["first_range_frames_equal"] = {r: bool(f.equals(base, null_equal=True)) for r, f in frames.items()}
            del frames, base, first
            runs: dict[str, dict[int, list[dict[str, Any]]]] = {r: {w: [] for w in workers} for r in readers}
            for _ in range(a.repeat):
                for w in workers:
                    for r in readers:  # alternating, so others' load falls on every reader alike
                        runs[r][w].append(read_all(reads, ranges, r, w, info.pid))
        finally:
            reads.close()
        res: dict[str, Any] = {}
        for r in readers:
            for w in workers:
                rs = runs[r][w]
                assert all(x["rows"] == rows for x in rs), (r, w, [x["rows"] for x in rs], rows)
                med = statistics.median(x["wall_s"] for x in rs)
                tasks = [s for x in rs for s in x["task_s"]]
                res[f"{r} workers={w}"] = {
                    "reader": rs[0]["readers"], "wall_s": round(med, 3), "wall_runs_s": [round(x["wall_s"], 3) for x in rs],
                    "cpu_s": round(statistics.median(x["cpu_s"] for x in rs), 2),
                    "server_cpu_s": round(statistics.median(x["server_cpu_s"] for x in rs), 2),
                    "others_cpu_share": [x["others_cpu_share"] for x in rs],
                    "rows_per_s": round(rows / med), "task_s_median": round(statistics.median(tasks), 3),
                    "rows_per_s_per_task": round(rows / len(ranges) / statistics.median(tasks)),
                    "load1_runs": [round(x["load1"], 2) for x in rs]}
        out["results"] = res
        if len(readers) == 2:
            for w in workers:
                a_, b_ = (res[f"{r} workers={w}"]["wall_s"] for r in readers)
                out[f"{readers[1]}_over_{readers[0]}_workers={w}"] = round(b_ / a_, 2)
        out["loadavg_after"] = os.getloadavg()
    finally:
        if not a.keep:
            drop_tables(dsn, tables_for(a.rows))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
