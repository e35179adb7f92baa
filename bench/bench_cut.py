"""Peak RSS and wall time of the coordinator's key cut (``engine.app.ranges.cut``): the server-sorted
streaming cut against the in-memory cut, on a text key and an integer key.

Usage (from the repository root, opt-in):

    python bench/bench_cut.py --rows 3000000 [--repeat 1] [--keep]

Builds ``bench_cut_N_text`` (``k text``, the database's default collation, md5 keys) and
``bench_cut_N_int`` (``k bigint``, spread over signs and digit counts) in the embedded server with
``generate_series``. Each cut runs in a fresh interpreter (so its peak is its own): the peak RSS
(``ru_maxrss``) of that process, its RSS after the imports (the baseline), the cut's wall time, and
which cut ran; the ``memory`` runs remove ``PostgresSource.sorted_keys`` so the old path runs. Both
cuts' boundaries and counts are compared. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import hashlib, json, resource, sys, time
from engine.app import ranges
from engine.config import load
from engine.connectors.postgres.connector import PostgresSource
from engine.core.normalize import ColumnType, FieldSpec
ref, kind, mode = sys.argv[1:4]
if mode == "memory":
    del PostgresSource.sorted_keys
spec = ranges.SideSpec(ref, (FieldSpec("k", "k", ColumnType(kind), is_key=True),))
cfg = load(None)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
b, n, meta = ranges.cut(spec, cfg, 16384, None)
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
h = hashlib.sha256(json.dumps([b, n.tolist()]).encode()).hexdigest()[:16]
print(json.dumps({"cut": meta["cut"], "wall_s": round(wall, 2), "peak_rss_mb": round(peak / 1024),
                  "baseline_rss_mb": round(base / 1024), "boundaries": len(b), "rows": int(n.sum()),
                  "result_sha": h}))
"""


def build(dsn: str, rows: int) -> tuple[str, str]:
    import psycopg

    text, integer = f"bench_cut_{rows}_text", f"bench_cut_{rows}_int"
    with psycopg.connect(dsn, autocommit=True) as c:
        if c.execute("SELECT to_regclass(%s)", (integer,)).fetchone()[0] is None:  # type: ignore[index]
            c.execute(f"DROP TABLE IF EXISTS {text}")  # left by an older version of this script
            c.execute("BEGIN")  # one transaction: a failed insert leaves neither table
            c.execute(f"CREATE UNLOGGED TABLE {text} (k text NOT NULL)")
            c.execute(f"INSERT INTO {text} SELECT md5(i::text) FROM generate_series(1, {rows}) i")  # noqa: S608
            c.execute(f"CREATE UNLOGGED TABLE {integer} (k bigint NOT NULL)")
            c.execute(f"INSERT INTO {integer} SELECT (i - {rows // 2}) * (1 + i % 1000) FROM generate_series(1::bigint, {rows}) i")  # noqa: S608
            c.execute("COMMIT")
            c.execute(f"ANALYZE {text}; ANALYZE {integer}")
    return text, integer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=3_000_000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="do not drop the tables at the end")
    ap.add_argument("--state-dir", default=str(ROOT / ".recon-bench"))
    a = ap.parse_args()

    from engine.local.postgres import EmbeddedPostgres
    from engine.local.state import StackPaths

    paths = StackPaths.at(a.state_dir)
    info = EmbeddedPostgres(paths).start()
    env = {**os.environ, "PGPASSFILE": str(paths.pgpass_file), "PYTHONPATH": str(ROOT)}
    os.environ["PGPASSFILE"] = env["PGPASSFILE"]
    t0 = time.perf_counter()
    tables = build(info.dsn, a.rows)
    out: dict[str, Any] = {"rows": a.rows, "build_s": round(time.perf_counter() - t0, 1), "runs": []}
    for table, kind in zip(tables, ("text", "int"), strict=True):
        for _ in range(a.repeat):
            for mode in ("memory", "stream"):
                r = subprocess.run([sys.executable, "-c", CHILD, f"{info.dsn}#public.{table}", kind, mode],
                                   env=env, cwd=ROOT, capture_output=True, text=True, check=True)
                out["runs"].append({"key": kind, "mode": mode, **json.loads(r.stdout.strip().splitlines()[-1])})
    for kind in ("text", "int"):
        shas = {r["result_sha"] for r in out["runs"] if r["key"] == kind}
        out[f"{kind}_same_cut"] = len(shas) == 1
    if not a.keep:
        import psycopg

        with psycopg.connect(info.dsn, autocommit=True) as c:
            for t in tables:
                c.execute(f"DROP TABLE IF EXISTS {t}")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
