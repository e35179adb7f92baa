"""`recon diff` from two checkouts, back to back on the same data and the same server: is the
default path of one no slower than the other's?

Usage (from the repository root, opt-in):

    python bench/bench_before_after.py --before ../h18b-base --after . --rows 1000000 \\
        [--pair parquet-pg|pg-pg] [--repeat 7] [--reuse] [--keep]

``--before``/``--after`` are checkouts (git worktrees) of the code to compare; each run is the
whole ``python -m engine.cli.main diff … --json`` process of one checkout (``PYTHONPATH`` = that
checkout, the same interpreter), runs alternating before/after/before/… so load from the other
users of the machine falls on both alike, after one warm-up run each. Their bytecode is compiled
first (this sandbox sets ``PYTHONDONTWRITEBYTECODE``).

``--pair parquet-pg``: bench/diff_vs_peers.py's data set (``../shared/bench/make_accounts.py``:
``bench-data/N-M/sf.parquet`` against ``public.wh_account``; its ``loaded.json`` marker is shared
with that script); ``--pair pg-pg``: bench/bench_scale.py's two tables built in the server.
Both checkouts must find the same differences. Each run's whole process tree is sampled for its
peak RSS and for the CPU others took meanwhile (bench/bench_scale.py's sampler).

Prints one JSON object; ``--markdown`` adds a table row for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import ROOT, SHARED, build_tables, drop_tables, run_sampled, tables_for  # noqa: E402


def parquet_data(dsn: str, env: dict[str, str], rows: int, mismatch: float, reuse: bool) -> Path:
    """diff_vs_peers.py's data set, generated and loaded unless already there (same marker)."""
    data = ROOT / "bench-data" / f"{rows}-{mismatch}"
    data.mkdir(parents=True, exist_ok=True)
    marker = data / "loaded.json"
    want = {"rows": rows, "mismatch": mismatch, "dsn": dsn}
    if reuse and marker.is_file() and json.loads(marker.read_text()) == want:
        return data
    marker.unlink(missing_ok=True)
    subprocess.run([sys.executable, str(SHARED / "make_accounts.py"), "--rows", str(rows), "--mismatch",
                    str(mismatch), "--dsn", dsn, "--out", str(data)], capture_output=True, text=True, env=env,
                   check=True)
    for other in (ROOT / "bench-data").glob("*/loaded.json"):
        other.unlink()
    marker.write_text(json.dumps(want))
    return data


def commit_of(tree: Path) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True,
                          check=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, type=Path)
    ap.add_argument("--after", required=True, type=Path)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--mismatch", type=float, default=0.15)
    ap.add_argument("--pair", choices=["parquet-pg", "pg-pg"], default="parquet-pg")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--extra", default="", help="more `recon diff` arguments for both, space-separated")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--keep", action="store_true", help="pg-pg: keep the tables")
    ap.add_argument("--state-dir", default=str(ROOT / ".recon-bench"))
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()

    from engine.local.postgres import EmbeddedPostgres
    from engine.local.state import StackPaths

    paths = StackPaths.at(a.state_dir)
    info = EmbeddedPostgres(paths).start()
    os.environ["PGPASSFILE"] = str(paths.pgpass_file)
    dsn = info.dsn
    trees = {"before": a.before.resolve(), "after": a.after.resolve()}
    for t in trees.values():
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", str(t / "engine")], check=False,
                       capture_output=True)
    out: dict[str, Any] = {"rows": a.rows, "mismatch": a.mismatch, "pair": a.pair, "cores": os.cpu_count(),
                           "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "commits": {k: commit_of(t) for k, t in trees.items()}}
    base_env = {**os.environ, "PGPASSFILE": str(paths.pgpass_file)}
    if a.pair == "parquet-pg":
        data = parquet_data(dsn, base_env, a.rows, a.mismatch, a.reuse)
        args = [f"parquet:{data / 'sf.parquet'}", f"{dsn}#public.wh_account"]
    else:
        out["tables"] = build_tables(dsn, a.rows, a.mismatch, a.reuse)
        src, dst = tables_for(a.rows)
        args = [f"{dsn}#public.{src}", f"{dsn}#public.{dst}"]
    cmd = [sys.executable, "-m", "engine.cli.main", "diff", *args, "-k", "id", "--json", *a.extra.split()]
    out["command"] = "recon " + " ".join(cmd[3:])
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in trees}
    found: dict[str, set[str]] = {k: set() for k in trees}
    try:
        for i in range(a.repeat + 1):  # the first round warms the page cache and both checkouts' imports
            for k, t in trees.items():
                res, sample = run_sampled(cmd, {**base_env, "PYTHONPATH": str(t)}, info.pid)
                if res.returncode not in (0, 1):
                    raise SystemExit(f"{k}: recon diff exited {res.returncode}: {res.stderr.strip()[-600:]}")
                s = json.loads(res.stdout)
                found[k].add(json.dumps({f: s.get(f) for f in ("mismatched", "missing_in_target",
                                                                "missing_in_source", "unchanged")}))
                if i:
                    runs[k].append(sample.as_json())
    finally:
        if a.pair == "pg-pg" and not a.keep:
            drop_tables(dsn, tables_for(a.rows))
    res_out: dict[str, Any] = {}
    for k, rs in runs.items():
        res_out[k] = {"median_s": round(statistics.median(r["wall_s"] for r in rs), 3),
                      "runs_s": [r["wall_s"] for r in rs],
                      # CPU-s of the recon process tree (and of the server for it): on a shared
                      # machine, wall time measures the neighbours as much as the code; CPU less so
                      "cpu_median_s": round(statistics.median(r["tree_cpu_s"] for r in rs), 2),
                      "cpu_runs_s": [r["tree_cpu_s"] for r in rs],
                      "server_cpu_median_s": round(statistics.median(r["server_cpu_s"] for r in rs), 2),
                      "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                      "others_cpu_share": [r["others_cpu_share"] for r in rs],
                      "found": sorted(found[k])}
    out["results"] = res_out
    out["same_differences"] = found["before"] == found["after"] and len(found["after"]) == 1
    out["after_over_before"] = round(res_out["after"]["median_s"] / res_out["before"]["median_s"], 3)
    out["cpu_after_over_before"] = round(res_out["after"]["cpu_median_s"] / res_out["before"]["cpu_median_s"], 3)
    out["loadavg_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))
    if a.markdown:
        b, f = res_out["before"], res_out["after"]
        share = statistics.median(b["others_cpu_share"] + f["others_cpu_share"])
        print(f"| {a.rows:,} | {a.pair} | {out['commits']['before']} {b['median_s']} s ({min(b['runs_s'])}–"
              f"{max(b['runs_s'])}), {b['peak_rss_mb']} MB | {out['commits']['after']} {f['median_s']} s "
              f"({min(f['runs_s'])}–{max(f['runs_s'])}), {f['peak_rss_mb']} MB | **{out['after_over_before']}** | "
              f"{b['cpu_median_s']} / {f['cpu_median_s']} s, **{out['cpu_after_over_before']}** | "
              f"{share} | {'yes' if out['same_differences'] else 'NO'} |")


if __name__ == "__main__":
    main()
