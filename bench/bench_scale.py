"""A PostgreSQL↔PostgreSQL `recon diff` at scale (default 30M rows, 15% mismatched) next to its
I/O floor from the same run, with the peak memory of the whole process tree.

Usage (from the repository root, opt-in, not part of the test suite):

    python bench/bench_scale.py --rows 30000000 [--runs local,dask] [--reuse] [--keep] [--out FILE]

What it does, in order:
  tables  two tables built inside the server with generate_series (no client round trip, a few
          minutes at 30M): ``bench_scale_N_src`` of N rows and ``bench_scale_N_dst`` with ``--mismatch``
          of the rows' CLV and event count changed, 0.1% of rows missing and 0.1% extra; both
          UNLOGGED (no WAL to write, nothing else changes for a reader) with ``id char(18) COLLATE
          "C"`` as primary key, as ``../shared/bench/make_accounts.py`` lays them out. Resources
          (``free``/``df``) are checked first. ``--reuse`` keeps tables built with the same
          parameters (recorded in a table comment); they are dropped at the end unless ``--keep``.
  floor   ``../shared/bench/floor_pg_pg.py DSN src dst --json`` as a subprocess: both tables read
          whole into Arrow at once (COPY CSV + pyarrow, and ADBC), the fastest method is the floor.
          ``--floor skip`` leaves it out (its memory is the tables' CSV and Arrow, ≈12 GB at 30M).
  recon   ``recon diff DSN#public.bench_scale_N_src DSN#public.bench_scale_N_dst -k id --json`` as a
          subprocess, once per run in ``--runs``: ``local`` adds ``--executor local --memory-limit
          3G``, ``dask`` adds ``--executor dask --workers 2 --memory-limit 3G``, ``plain`` adds
          nothing (the default path); ``--progress json`` is added to both range runs.

Every process is sampled every ~100 ms with psutil: the peak of the summed RSS of the process and
all its descendants (recon, its psql children, Dask's nanny and worker processes; a child caught
between fork and exec, whose RSS is its parent's own pages, is left out), the CPU seconds
of that tree, of the PostgreSQL server (postmaster and backends), and of the whole machine, so the
CPU the other users of this shared machine took during the run is recorded next to the figures
(``others_cpu_share``: busy CPU-s not ours nor the server's, per second of wall, out of the cores).

Prints one JSON object (and writes it to ``--out``); ``--markdown`` adds table rows for RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RECON_SHARED", ROOT.parent / "shared")) / "bench"


def tables_for(rows: int) -> tuple[str, str]:
    """The source and target tables of a size: sizes coexist, so one built stays reusable."""
    return f"bench_scale_{rows}_src", f"bench_scale_{rows}_dst"

GIB = 2**30

RUN_ARGS: dict[str, list[str]] = {
    "plain": [],
    "local": ["--executor", "local", "--memory-limit", "3G", "--progress", "json"],
    "dask": ["--executor", "dask", "--workers", "2", "--memory-limit", "3G", "--progress", "json"],
}

# -- the process-tree sampler ------------------------------------------------------------------------


@dataclass
class TreeSample:
    """What a sampled run used: peak summed RSS of the tree, CPU-s of the tree, of the server, and
    of the whole machine (busy, all cores) over the wall time."""

    wall_s: float = 0.0
    peak_rss: int = 0
    peak_at_s: float = 0.0
    peak_parts: dict[str, int] = field(default_factory=dict)  # process name -> RSS at the peak
    peak_procs: int = 0
    max_procs: int = 0  # the most processes of the tree seen at once (psql children, Dask workers)
    forks_skipped: int = 0  # samples of a child not yet exec'd, left out of the sum (see _sample)
    tree_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    machine_busy_cpu_s: float = 0.0
    samples: int = 0
    load1: tuple[float, float] = (0.0, 0.0)
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (seconds, summed RSS) per sample

    def peak_between(self, a: float, b: float) -> float:
        """Peak summed RSS (MB) of the samples taken between ``a`` and ``b`` seconds."""
        return round(max((r for t, r in self.timeline if a <= t <= b), default=0) / 2**20, 1)

    def as_json(self) -> dict[str, Any]:
        cores = os.cpu_count() or 1
        others = max(0.0, self.machine_busy_cpu_s - self.tree_cpu_s - self.server_cpu_s)
        return {
            "wall_s": round(self.wall_s, 3),
            "peak_rss_mb": round(self.peak_rss / 2**20, 1),
            "peak_at_s": round(self.peak_at_s, 1),
            "peak_procs": self.peak_procs,
            "max_procs": self.max_procs,
            "forks_skipped": self.forks_skipped,
            "peak_parts_mb": {k: round(v / 2**20, 1) for k, v in sorted(self.peak_parts.items(), key=lambda kv: -kv[1])},
            "tree_cpu_s": round(self.tree_cpu_s, 2),
            "server_cpu_s": round(self.server_cpu_s, 2),
            "others_cpu_s": round(others, 2),
            "others_cpu_share": round(others / max(self.wall_s, 1e-9) / cores, 3),
            "load1_before_after": [round(x, 2) for x in self.load1],
            "samples": self.samples,
        }


class TreeSampler:
    """Samples a process tree (``root`` and every descendant, recursively) and, for the CPU
    account, the PostgreSQL server's tree, until stopped.

    The CPU of a process that exits between two samples is the last value seen for it (a psql
    child lives for the whole read, a Dask worker for the whole run, so little is lost).
    """

    def __init__(self, root: int, server_pid: int | None, interval: float = 0.1) -> None:
        import psutil

        self._psutil = psutil
        self.root = psutil.Process(root)
        self.server = psutil.Process(server_pid) if server_pid else None
        self.interval = interval
        self.result = TreeSample()
        self._tree_cpu: dict[int, float] = {}
        self._tree_cpu0: dict[int, float] = {}
        self._server_cpu: dict[int, float] = {}
        self._server_cpu0: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-sampler", daemon=True)

    def _procs(self, top: Any) -> list[Any]:
        try:
            return [top, *top.children(recursive=True)]
        except self._psutil.Error:
            return []

    def _server_snapshot(self) -> dict[int, float]:
        return self._cpu_of(self.server)

    def _cpu_of(self, top: Any) -> dict[int, float]:
        out: dict[int, float] = {}
        if top is None:
            return out
        for p in self._procs(top):
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except self._psutil.Error:
                pass
        return out

    def start(self) -> TreeSampler:
        self._t0 = time.perf_counter()
        self._machine0 = self._busy()
        self._server_cpu0 = self._server_snapshot()
        self._tree_cpu0 = self._cpu_of(self.root)  # a root already running (this process) has spent some
        self.result.load1 = (os.getloadavg()[0], 0.0)
        self._thread.start()
        return self

    def _busy(self) -> float:
        t = self._psutil.cpu_times()
        return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)

    def _sample(self) -> None:
        rss, parts, n = 0, {}, 0
        procs = self._procs(self.root)
        cmd: dict[int, list[str]] = {}
        for p in procs:
            with contextlib.suppress(self._psutil.Error):
                cmd[p.pid] = p.cmdline()
        for p in procs:
            try:
                with p.oneshot():
                    r = p.memory_info().rss
                    t = p.cpu_times()
                    name = p.name()
                    parent = p.ppid()
            except self._psutil.Error:
                continue
            if parent in cmd and cmd.get(p.pid) == cmd[parent]:
                # a child between fork and exec (subprocess starting psql): it maps its parent's
                # pages (vfork: the very same memory), so its RSS would count them twice
                self.result.forks_skipped += 1
                continue
            n += 1
            rss += r
            parts[f"{name}[{p.pid}]"] = r
            self._tree_cpu[p.pid] = t.user + t.system  # children_* would count reaped children twice
        self.result.max_procs = max(self.result.max_procs, n)
        self.result.timeline.append((time.perf_counter() - self._t0, rss))
        if rss > self.result.peak_rss:
            self.result.peak_rss, self.result.peak_parts, self.result.peak_procs = rss, parts, n
            self.result.peak_at_s = time.perf_counter() - self._t0
        for pid, c in self._server_snapshot().items():
            self._server_cpu[pid] = c
        self.result.samples += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def stop(self) -> TreeSample:
        """Stop sampling (call once the root has exited, or just before, to catch its last state)."""
        self._stop.set()
        self._thread.join()
        r = self.result
        r.wall_s = time.perf_counter() - self._t0
        r.machine_busy_cpu_s = self._busy() - self._machine0
        r.tree_cpu_s = sum(c - self._tree_cpu0.get(pid, 0.0) for pid, c in self._tree_cpu.items())
        r.server_cpu_s = sum(c - self._server_cpu0.get(pid, 0.0) for pid, c in self._server_cpu.items())
        r.load1 = (r.load1[0], os.getloadavg()[0])
        return r


def run_sampled(cmd: list[str], env: dict[str, str], server_pid: int | None,
                stderr_lines: list[str] | None = None) -> tuple[subprocess.CompletedProcess[str], TreeSample]:
    """Run ``cmd`` to its end while sampling its process tree. Its stderr is kept line by line
    (``--progress json`` objects arrive there) with the wall time each line arrived."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    sampler = TreeSampler(proc.pid, server_pid).start()
    t0 = time.perf_counter()
    err: list[str] = [] if stderr_lines is None else stderr_lines

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err.append(f"{time.perf_counter() - t0:.3f}\t{line.rstrip()}")

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    assert proc.stdout is not None
    out = proc.stdout.read()
    rc = proc.wait()
    pumper.join()
    sample = sampler.stop()
    return subprocess.CompletedProcess(cmd, rc, out, "\n".join(line.split("\t", 1)[1] for line in err)), sample


# -- the tables ----------------------------------------------------------------------------------------

# One row of the source from its number g (bigint): deterministic pseudo-random values from
# PostgreSQL's own hash of g, so both tables are built without any data leaving the server.
_H = "(hashint8({x})::bigint + 2147483648)"  # in [0, 2^32)


def _row_sql(id_prefix: str, changed: str) -> str:
    h = {k: _H.format(x=f"g * {m}") for k, m in (("own", 3), ("rev", 5), ("clv", 7), ("ev", 11), ("ts", 13),
                                                  ("bump", 17))}
    clv = f"(({h['clv']} % 10000000)::numeric / 100)"
    bump = f"(10 + ({h['bump']} % 499000)::numeric / 100)"
    return f"""SELECT ('{id_prefix}' || lpad(g::text, 13, '0'))::char(18) COLLATE "C" AS id,
       'Account ' || g AS name,
       ('005' || lpad(({h['own']} % 400)::text, 15, '0'))::char(18) AS owner_id,
       (({h['rev']} % 10000000000)::numeric / 100)::numeric(18, 2) AS annual_revenue,
       (CASE WHEN {changed} THEN {clv} + {bump} ELSE {clv} END)::numeric(18, 2) AS clv,
       (1 + {h['ev']} % 199 + CASE WHEN {changed} THEN 1 ELSE 0 END)::bigint AS event_count,
       timestamp '2026-08-01' + make_interval(secs => ({h['ts']} % 7776000)::double precision) AS last_modified"""


def _changed(mismatch: float) -> str:
    return f"({_H.format(x='g * 19')} % 100000 < {int(round(mismatch * 100000))})"


def build_sql(rows: int, mismatch: float) -> dict[str, list[str]]:
    """The statements that build each table (run on two connections at once)."""
    changed = _changed(mismatch)
    src = f"{_row_sql('0015g', 'false')} FROM generate_series(1::bigint, {rows}::bigint) g"
    dst = (f"{_row_sql('0015g', changed)} FROM generate_series(1::bigint, {rows}::bigint) g WHERE g % 1000 <> 1 "
           f"UNION ALL {_row_sql('0015h', 'false')} FROM generate_series(1::bigint, {rows}::bigint) g "
           "WHERE g % 1000 = 2")
    out = {}
    for name, select in zip(tables_for(rows), (src, dst), strict=True):
        out[name] = [f"DROP TABLE IF EXISTS {name}",
                     f"CREATE UNLOGGED TABLE {name} AS {select}",
                     f"ALTER TABLE {name} ADD PRIMARY KEY (id)",
                     f"VACUUM (ANALYZE) {name}"]  # the visibility map: index-only key scans
    return out


def expected(dsn: str, rows: int, mismatch: float) -> dict[str, int]:
    """What the diff must find, counted by the server from the same definitions (no table read)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        changed = c.execute(f"SELECT count(*) FROM generate_series(1::bigint, {rows}::bigint) g "  # noqa: S608
                            f"WHERE g % 1000 <> 1 AND {_changed(mismatch)}").fetchone()[0]  # type: ignore[index]
    return {"mismatched": int(changed), "missing_in_target": len(range(1, rows + 1, 1000)),
            "missing_in_source": len(range(2, rows + 1, 1000))}


def build_tables(dsn: str, rows: int, mismatch: float, reuse: bool) -> dict[str, Any]:
    import psycopg

    want = json.dumps({"rows": rows, "mismatch": mismatch, "v": 1})
    with psycopg.connect(dsn, autocommit=True) as c:
        have = [c.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", (t,)).fetchone()[0]
                for t in tables_for(rows)]
    if reuse and have == [want, want]:
        return {"built": False, "reused": want}
    t0 = time.perf_counter()
    errors: list[BaseException] = []

    def one(name: str, stmts: list[str]) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute("SET maintenance_work_mem = '512MB'")
                for s in stmts:
                    c.execute(s)  # type: ignore[arg-type]
                c.execute(f"COMMENT ON TABLE {name} IS {psycopg.sql.quote(want)}")  # type: ignore[arg-type]
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=kv) for kv in build_sql(rows, mismatch).items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return {"built": True, "build_s": round(time.perf_counter() - t0, 1)}


def table_sizes(dsn: str, names: tuple[str, str]) -> dict[str, Any]:
    import psycopg

    out: dict[str, Any] = {}
    with psycopg.connect(dsn, autocommit=True) as c:
        for t in names:
            rows, heap, total = c.execute(
                "SELECT reltuples::bigint, pg_relation_size(oid), pg_total_relation_size(oid) FROM pg_class "
                "WHERE oid = to_regclass(%s)", (t,)).fetchone()  # type: ignore[misc]
            # the bytes one row costs as COPY CSV text (what the psql children stream), on a sample
            csv_row = c.execute(f"SELECT avg(octet_length(s::text)) FROM (SELECT * FROM {t} "  # noqa: S608
                                "TABLESAMPLE SYSTEM (0.1)) s").fetchone()[0]  # type: ignore[index]
            out[t] = {"rows": int(rows), "heap_mb": round(heap / 2**20, 1), "with_index_mb": round(total / 2**20, 1),
                      "csv_bytes_per_row": round(float(csv_row or 0), 1)}
    return out


def check_resources(rows: int, floor: bool) -> dict[str, Any]:
    """``free -g`` and ``df -h`` as numbers, and what this run is expected to need of them."""
    import psutil

    vm = psutil.virtual_memory()
    disk = shutil.disk_usage(ROOT)
    need_disk = rows * 2 * 190  # heap ≈ 130 B/row plus the key index ≈ 45 B/row, per table (measured at 1M)
    need_mem = rows * 2 * 210 if floor else 4 * GIB  # the floor holds both tables as CSV and as Arrow
    out = {"mem_available_gb": round(vm.available / GIB, 1), "mem_total_gb": round(vm.total / GIB, 1),
           "disk_free_gb": round(disk.free / GIB, 1), "need_disk_gb": round(need_disk / GIB, 1),
           "need_mem_gb": round(need_mem / GIB, 1)}
    if disk.free < need_disk * 1.5:
        raise SystemExit(f"not enough disk for {rows:,} rows per table: {out}")
    if vm.available < need_mem * 1.3:
        raise SystemExit(f"not enough free memory for this run (use --floor skip to leave the floor out): {out}")
    return out


def drop_tables(dsn: str, names: tuple[str, str]) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        for t in names:
            c.execute(f"DROP TABLE IF EXISTS {t}")  # type: ignore[arg-type]


# -- the runs ------------------------------------------------------------------------------------------


def run_floor(dsn: str, names: tuple[str, str], env: dict[str, str], server_pid: int | None, repeat: int) -> dict[str, Any]:
    cmd = [sys.executable, str(SHARED / "floor_pg_pg.py"), dsn, *names, "--repeat", str(repeat), "--json"]
    res, sample = run_sampled(cmd, env, server_pid)
    if res.returncode != 0:
        raise SystemExit(f"floor failed: {res.stderr.strip()[-500:]}")
    return {**json.loads(res.stdout), "process": sample.as_json(), "stderr": res.stderr.strip()[-500:]}


def progress_stats(lines: list[str]) -> dict[str, Any]:
    """From ``--progress json`` lines on stderr: how many there were, and the last one."""
    objs = []
    for ln in lines:
        ln = ln.split("\t", 1)[-1]
        if ln.startswith("{"):
            try:
                objs.append(json.loads(ln))
            except ValueError:
                pass
    out: dict[str, Any] = {"lines": len(objs), "last": objs[-1] if objs else None}
    done = [o for o in objs if o.get("ranges_done")]
    if len(done) >= 2:  # rows/s between the first and the last finished range: the steady state
        a, b = done[0], done[-1]
        dt = float(b["elapsed_s"]) - float(a["elapsed_s"])
        if dt > 0:
            out["steady_rows_per_s"] = round((int(b["rows_done"]) - int(a["rows_done"])) / dt)
        out["first_range_done_s"] = a["elapsed_s"]
    return out


def run_recon(dsn: str, names: tuple[str, str], env: dict[str, str], server_pid: int | None, extra: list[str],
              python: str = sys.executable) -> dict[str, Any]:
    cmd = [python, "-m", "engine.cli.main", "diff", f"{dsn}#public.{names[0]}", f"{dsn}#public.{names[1]}", "-k", "id",
           "--json", *extra]
    lines: list[str] = []
    res, sample = run_sampled(cmd, env, server_pid, lines)
    out: dict[str, Any] = {"command": " ".join(["recon", *cmd[3:]]), "exit": res.returncode, **sample.as_json()}
    if res.returncode not in (0, 1):
        out["error"] = res.stderr.strip()[-800:]
        return out
    summary = json.loads(res.stdout)
    out["found"] = {k: summary.get(k) for k in ("mismatched", "missing_in_target", "missing_in_source", "unchanged")}
    if "retries" in summary:
        out["retries"] = summary["retries"]
    plan = summary.get("plan")
    if isinstance(plan, dict):
        detail = plan.get("ranges_detail") or []
        out["plan"] = {k: v for k, v in plan.items() if k != "ranges_detail"}
        if detail:  # rows read per task: a task that reads only its range reads about its source rows
            rr = [r.get("rows_read", {}) for r in detail]
            out["plan"]["source_rows_per_range_max"] = max(r.get("source_rows", 0) for r in detail)
            for side in ("source", "target"):
                got = [int(x.get(side, 0)) for x in rr]
                out["plan"][f"rows_read_{side}_total"] = sum(got)
                out["plan"][f"rows_read_{side}_max"] = max(got)
    out["progress"] = progress_stats(lines)
    arrivals = [float(ln.split("\t", 1)[0]) for ln in lines if ln.split("\t", 1)[-1].startswith('{"')]
    if arrivals:  # which phase the memory peak belongs to: the key cut ends with the first progress
        # line (no range done yet), the tasks with the last; then merge, output and exit
        first, last = arrivals[0], arrivals[-1]
        out["peak_rss_mb_by_phase"] = {"cut": sample.peak_between(0, first), "tasks": sample.peak_between(first, last),
                                       "merge_and_output": sample.peak_between(last, sample.wall_s + 1)}
        out["phase_s"] = {"cut": round(first, 1), "tasks": round(last - first, 1),
                          "merge_and_output": round(sample.wall_s - last, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=30_000_000)
    ap.add_argument("--mismatch", type=float, default=0.15)
    ap.add_argument("--runs", default="local,dask", help=f"comma-separated, of: {', '.join(RUN_ARGS)}")
    ap.add_argument("--repeat", type=int, default=1, help="recon runs per kind (alternating kinds)")
    ap.add_argument("--floor", choices=["run", "skip"], default="run")
    ap.add_argument("--floor-repeat", type=int, default=1)
    ap.add_argument("--extra", default="", help="more `recon diff` arguments for every run, space-separated")
    ap.add_argument("--reuse", action="store_true", help="keep tables already built with the same --rows/--mismatch")
    ap.add_argument("--keep", action="store_true", help="do not drop the tables at the end")
    ap.add_argument("--drop-only", action="store_true", help="drop the tables and stop")
    ap.add_argument("--state-dir", default=str(ROOT / ".recon-bench"))
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    runs = [r.strip() for r in a.runs.split(",") if r.strip()]
    if unknown := [r for r in runs if r not in RUN_ARGS]:
        raise SystemExit(f"unknown runs {unknown}: choose from {list(RUN_ARGS)}")

    from engine.local.postgres import EmbeddedPostgres
    from engine.local.state import StackPaths

    paths = StackPaths.at(a.state_dir)
    pg = EmbeddedPostgres(paths)
    info = pg.start()
    env = {**os.environ, "PGPASSFILE": str(paths.pgpass_file), "PYTHONPATH": str(ROOT)}
    os.environ["PGPASSFILE"] = env["PGPASSFILE"]
    dsn = info.dsn
    names = tables_for(a.rows)
    if a.drop_only:
        drop_tables(dsn, names)
        return
    out: dict[str, Any] = {"rows": a.rows, "mismatch": a.mismatch, "cores": os.cpu_count(),
                           "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                    capture_output=True, text=True).stdout.strip()}
    out["resources"] = check_resources(a.rows, a.floor == "run")
    try:
        out["tables"] = build_tables(dsn, a.rows, a.mismatch, a.reuse)
        out["sizes"] = table_sizes(dsn, names)
        out["expected"] = expected(dsn, a.rows, a.mismatch)
        if a.floor == "run":
            out["floor"] = run_floor(dsn, names, env, info.pid, a.floor_repeat)
        extra = a.extra.split()
        res: dict[str, list[dict[str, Any]]] = {r: [] for r in runs}
        for _ in range(a.repeat):
            for r in runs:
                one = run_recon(dsn, names, env, info.pid, RUN_ARGS[r] + extra)
                res[r].append(one)
                print(json.dumps({r: {k: one.get(k) for k in ("exit", "wall_s", "peak_rss_mb", "others_cpu_share")}}),
                      file=sys.stderr)
        out["recon"] = res
        if "floor" in out:
            for rs in res.values():
                for one in rs:
                    one["vs_floor"] = round(one["wall_s"] / out["floor"]["floor"], 2)
    finally:
        if not a.keep:
            drop_tables(dsn, names)
    text = json.dumps(out, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    if a.markdown:
        fl = out.get("floor", {})
        for r, rs in out["recon"].items():
            for one in rs:
                print(f"| {a.rows:,} | {r} | {round(fl['floor'], 3) if fl else '–'} ({fl.get('method', '')}) | {one['wall_s']} | "
                      f"{one.get('vs_floor', '–')}x | {one['peak_rss_mb']} MB | {one['peak_procs']} | "
                      f"{one['others_cpu_share']} |")


if __name__ == "__main__":
    main()
