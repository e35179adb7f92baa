"""`recon diff parquet:… postgresql://…#…` next to its I/O floor and the peer tools, in one run.

Usage (from the repository root, after ./scripts/test or ./scripts/bench has set up .venv):

    python bench/diff_vs_peers.py --rows 1000000 --mismatch 0.15 [--peers] [--repeat 3]

Starts (or reuses) an embedded PostgreSQL in ./.recon-bench, generates the shared benchmark tables
with ../shared/bench/make_accounts.py, then times:
  floor   ../shared/bench/floor_parquet_pg.py (read the Parquet file + COPY the table into Arrow)
  recon   the whole `recon diff` process (wall time and peak RSS)
  peers   ../shared/bench/peers.sh (reladiff hashdiff, joindiff, datacompy) with --peers
Prints one JSON object; `--markdown` also prints a table row for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RECON_SHARED", ROOT.parent / "shared")) / "bench"


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int, subprocess.CompletedProcess[str]]:
    """Wall seconds and peak RSS (KB) of a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    rss = int(res.stderr.strip().splitlines()[-1]) if res.stderr.strip() else before
    return wall, rss, res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--mismatch", type=float, default=0.15)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--peers", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--reuse", action="store_true",
                    help="skip generating and loading when bench-data holds this data set and the tables were loaded from it")
    ap.add_argument("--state-dir", default=str(ROOT / ".recon-bench"))
    ap.add_argument("--recon-python", default=sys.executable,
                    help="the Python whose `engine` runs the diff, e.g. a venv with a bare `pip install .` "
                         "(without recon[local]) to measure the reader a bare install gets")
    a = ap.parse_args()

    from engine.local.postgres import EmbeddedPostgres
    from engine.local.state import StackPaths

    paths = StackPaths.at(a.state_dir)
    pg = EmbeddedPostgres(paths).start()
    env = {**os.environ, "PGPASSFILE": str(paths.pgpass_file)}
    dsn = pg.dsn
    data = ROOT / "bench-data" / f"{a.rows}-{a.mismatch}"
    data.mkdir(parents=True, exist_ok=True)
    marker = data / "loaded.json"
    want = {"rows": a.rows, "mismatch": a.mismatch, "dsn": dsn}
    if a.reuse and marker.is_file() and json.loads(marker.read_text()) == want:
        generated = f"reused {data} (already loaded into {dsn})"
    else:
        marker.unlink(missing_ok=True)
        gen = subprocess.run([sys.executable, str(SHARED / "make_accounts.py"), "--rows", str(a.rows), "--mismatch",
                              str(a.mismatch), "--dsn", dsn, "--out", str(data)], capture_output=True, text=True,
                             env=env, check=True)
        generated = gen.stdout.strip()
        for other in (ROOT / "bench-data").glob("*/loaded.json"):  # the tables now hold this data set only
            other.unlink()
        marker.write_text(json.dumps(want))
    out: dict = {"rows": a.rows, "mismatch": a.mismatch, "generated": generated, "cores": os.cpu_count(),
                 "recon_python": a.recon_python}
    floor, floor_process = [], []
    for _ in range(a.repeat):  # the floor's own figure (read + COPY), and its whole process for reference
        t = time.perf_counter()
        res_f = subprocess.run([sys.executable, str(SHARED / "floor_parquet_pg.py"), str(data / "sf.parquet"), dsn,
                                "wh_account"], capture_output=True, text=True, env=env, check=True)
        floor_process.append(time.perf_counter() - t)
        floor.append(float(res_f.stdout))
    recon_cmd = [a.recon_python, "-m", "engine.cli.main", "diff", f"parquet:{data / 'sf.parquet'}", f"{dsn}#public.wh_account",
                 "-k", "id", "--json"]
    walls, rsss, summary = [], [], {}
    for _ in range(a.repeat):
        wall, rss, res = timed(recon_cmd, env)
        if res.returncode not in (0, 1):
            raise SystemExit(f"recon diff failed: {res.stderr}")
        summary = json.loads(res.stdout)
        walls.append(wall)
        rsss.append(rss)
    out["floor_s"] = round(statistics.median(floor), 3)
    out["recon_s"] = round(statistics.median(walls), 3)
    out["recon_vs_floor"] = round(out["recon_s"] / out["floor_s"], 2)
    out["floor_process_s"] = round(statistics.median(floor_process), 3)
    out["recon_vs_floor_process"] = round(out["recon_s"] / out["floor_process_s"], 2)
    out["floor_runs_s"] = [round(x, 3) for x in floor]
    out["recon_runs_s"] = [round(x, 3) for x in walls]
    out["recon_peak_rss_mb"] = round(max(rsss) / 1024, 1)
    import pyarrow.parquet as pq

    arrow_mb = pq.read_table(data / "sf.parquet").nbytes / 2**20 + pq.read_table(data / "wh.parquet").nbytes / 2**20
    out["arrow_size_both_mb"] = round(arrow_mb, 1)
    out["rss_vs_arrow"] = round(out["recon_peak_rss_mb"] / arrow_mb, 2)
    out["found"] = {k: summary[k] for k in ("mismatched", "missing_in_target", "missing_in_source", "unchanged")}
    if a.peers:
        res = subprocess.run(["bash", str(SHARED / "peers.sh"), dsn], capture_output=True, text=True, env=env,
                             cwd=ROOT)
        out["peers_raw"] = res.stdout + res.stderr
        peers = {}
        for alg in ("hashdiff", "joindiff"):
            m = re.search(rf"== reladiff {alg}.*?([\d.]+) s wall, (\d+) KB peak", res.stdout + res.stderr, re.S)
            if m:
                peers[f"reladiff_{alg}_s"] = float(m.group(1))
        m = re.search(r"== datacompy.*?([\d.]+) s wall, (\d+) KB peak", res.stdout + res.stderr, re.S)
        if m:
            peers["datacompy_s"] = float(m.group(1))
        out["peers"] = peers
        if "reladiff_hashdiff_s" in peers:
            out["speedup_vs_hashdiff"] = round(peers["reladiff_hashdiff_s"] / out["recon_s"], 1)
    print(json.dumps(out, indent=2))
    if a.markdown:
        p = out.get("peers", {})
        print(f"| {a.rows:,} | {a.mismatch:.1%} | {out['floor_s']} ({out['floor_process_s']}) | {out['recon_s']} | "
              f"{out['recon_vs_floor']}x ({out['recon_vs_floor_process']}x) | "
              f"{p.get('reladiff_hashdiff_s', '–')} | {p.get('reladiff_joindiff_s', '–')} | {p.get('datacompy_s', '–')} | "
              f"{out['recon_peak_rss_mb']} MB ({out['rss_vs_arrow']}x Arrow) |")


if __name__ == "__main__":
    main()
