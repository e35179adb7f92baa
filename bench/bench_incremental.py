"""Incremental `recon diff --state` at scale (issue 19): 10M rows PostgreSQL↔PostgreSQL, 0.1% changed
since the last run, as a whole process, next to the I/O floor measured in the same run.

Usage (from the repository root, opt-in, not part of the test suite):

    python bench/bench_incremental.py --rows 10000000 [--runs 3] [--index no|yes|both] [--reuse] [--keep]

What it does, in order:
  tables   ``bench_inc_N_src`` / ``bench_inc_N_dst``, built in the server like bench/bench_scale.py's
           (same row function, ``--mismatch`` of the target's rows different, 0.1% missing, 0.1%
           extra; UNLOGGED, ``id char(18) COLLATE "C"`` primary key) plus ``updated_at timestamptz``
           set to 2026-01-01 (well before any run: a first run's overlap does not reach it),
           ``DEFAULT now()`` and a ``BEFORE UPDATE`` trigger that sets it to ``now()``. ``--reuse``
           keeps tables built with the same parameters (recorded in a table comment; earlier
           changes stay in them, which is harmless: every series starts with a full run).
  floor    ``../shared/bench/floor_pg_pg.py DSN src dst --json`` (both tables read whole into
           Arrow, the fastest method), as a sampled subprocess.
  full     ``recon diff -C recon.toml --mapping inc --state DIR --full --json``, sampled.
  changes  before each incremental run, a fresh change of ``--change`` of the rows (default 0.1%),
           in one transaction per side: 80% of it updates of existing rows (half of those on the
           same keys on both sides, so that some differences are resolved or moved and some made),
           10% inserts (new keys, on both sides, 1 in 10 only on the source), 10% deletes (random
           existing keys, each side its own); then a pause of ``PAUSE_S`` (1.5 s) so that the
           next run's overlap (1 s before this run's horizon) does not read this change again.
  incr     ``recon diff -C recon.toml --mapping inc --state DIR --json``, sampled, ``--runs`` times;
           the run's own ``incremental`` block (touched segments, rows re-read, deletions) is kept.
           ``--index both`` runs the series without an index on ``updated_at``, then creates one
           (``CREATE INDEX … (updated_at)`` on both tables) and runs the series again.
  deletions  how deletions nobody listed are found, timed apart before the first incremental run:
           an ordered key-only read of the side (recon's way when no index serves the key), and
           recon's range counts through the key's index (see :func:`deletions`).

Every process is sampled by bench/bench_scale.py's sampler (whole-process wall, peak RSS of the
tree, CPU of the tree, of the server and of the others on this shared machine).

Prints one JSON object (and writes it to ``--out``); ``--markdown`` adds table rows for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import ROOT, SHARED, _changed, _row_sql, run_sampled  # noqa: E402

LOADED_AT = "2026-01-01 00:00:00+00"
COLUMNS = ("name", "owner_id", "annual_revenue", "clv", "event_count", "last_modified")
#: after each change, before its run: longer than the changes' read overlap (1 s, DEFAULT_OVERLAP)
PAUSE_S = 1.5


def tables_for(rows: int) -> tuple[str, str]:
    return f"bench_inc_{rows}_src", f"bench_inc_{rows}_dst"


def build_sql(rows: int, mismatch: float) -> dict[str, list[str]]:
    changed = _changed(mismatch)
    ts = f", timestamptz '{LOADED_AT}' AS updated_at"
    src = f"{_row_sql('0015g', 'false')}{ts} FROM generate_series(1::bigint, {rows}::bigint) g"
    dst = (f"{_row_sql('0015g', changed)}{ts} FROM generate_series(1::bigint, {rows}::bigint) g WHERE g % 1000 <> 1 "
           f"UNION ALL {_row_sql('0015h', 'false')}{ts} FROM generate_series(1::bigint, {rows}::bigint) g "
           "WHERE g % 1000 = 2")
    out = {}
    for name, select in zip(tables_for(rows), (src, dst), strict=True):
        out[name] = [f"DROP TABLE IF EXISTS {name}",
                     f"CREATE UNLOGGED TABLE {name} AS {select}",
                     f"ALTER TABLE {name} ADD PRIMARY KEY (id)",
                     f"ALTER TABLE {name} ALTER COLUMN updated_at SET NOT NULL, "
                     "ALTER COLUMN updated_at SET DEFAULT now()",
                     f"CREATE TRIGGER touch BEFORE UPDATE ON {name} FOR EACH ROW EXECUTE FUNCTION bench_inc_touch()",
                     f"VACUUM (ANALYZE) {name}"]
    return out


def build_tables(dsn: str, rows: int, mismatch: float, reuse: bool) -> dict[str, Any]:
    import threading

    import psycopg

    want = json.dumps({"rows": rows, "mismatch": mismatch, "v": 1})
    with psycopg.connect(dsn, autocommit=True) as c:
        have = [c.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", (t,)).fetchone()[0]  # type: ignore[index]
                for t in tables_for(rows)]
        if reuse and have == [want, want]:
            return {"built": False, "reused": want}
        c.execute("CREATE OR REPLACE FUNCTION bench_inc_touch() RETURNS trigger LANGUAGE plpgsql AS "
                  "$$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$")
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


def set_index(dsn: str, names: tuple[str, str], on: bool) -> float:
    import psycopg

    t0 = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as c:
        for t in names:
            if on:
                c.execute(f"CREATE INDEX IF NOT EXISTS {t}_updated_at ON {t} (updated_at)")  # type: ignore[arg-type]
                c.execute(f"ANALYZE {t}")  # type: ignore[arg-type]
            else:
                c.execute(f"DROP INDEX IF EXISTS {t}_updated_at")  # type: ignore[arg-type]
    return round(time.perf_counter() - t0, 1)


def write_config(work: Path, dsn: str, names: tuple[str, str]) -> Path:
    cfg = work / "recon.toml"
    cols = ", ".join(f'"{c}"' for c in COLUMNS)
    cfg.write_text(f"""[mapping.inc]
source = "{dsn}#public.{names[0]}"
target = "{dsn}#public.{names[1]}"
key = ["id"]
columns = [{cols}]
source_updated_at = "updated_at"
target_updated_at = "updated_at"
""")
    return cfg


def change(dsn: str, names: tuple[str, str], rows: int, share: float, rng: random.Random, step: int
           ) -> dict[str, int]:
    """A fresh ``share`` of the rows changed: 80% updates (half on the same keys on both sides),
    10% inserts (9 in 10 on both sides), 10% deletes (each side its own keys)."""
    import psycopg

    n = max(10, int(rows * share))
    n_upd, n_ins, n_del = n * 8 // 10, n // 10, n // 10
    ids = lambda gs: [f"0015g{g:013d}" for g in gs]  # noqa: E731
    common = ids(rng.sample(range(1, rows + 1), n_upd // 2))
    out: dict[str, Any] = {"updates_per_side": n_upd, "inserts_source": n_ins,
                           "inserts_target": n_ins - n_ins // 10, "deletes_per_side": n_del, "_inserted": []}
    # new keys unique to this series and step: `--reuse` keeps the tables of earlier runs, whose
    # inserted keys would otherwise conflict (ON CONFLICT DO NOTHING: no insert at all)
    new = [f"0015i{rng.randrange(10**4):04d}{step:04d}{i:05d}" for i in range(n_ins)]
    with psycopg.connect(dsn, autocommit=False) as c:
        for side, t in enumerate(names):
            own = ids(rng.sample(range(1, rows + 1), n_upd - n_upd // 2))
            # the same change on both sides for the common keys (a difference stays as it was), a
            # one-sided change for the others (a difference made, or resolved)
            c.execute(f"UPDATE {t} SET clv = clv + 1.25 WHERE id = ANY(%s)", (common,))  # type: ignore[arg-type]  # noqa: S608
            c.execute(f"UPDATE {t} SET event_count = event_count + 1 WHERE id = ANY(%s)", (own,))  # type: ignore[arg-type]  # noqa: S608
            c.execute(f"DELETE FROM {t} WHERE id = ANY(%s)",  # type: ignore[arg-type]  # noqa: S608
                      (ids(rng.sample(range(1, rows + 1), n_del)),))
            keys = new if side == 0 else new[: n_ins - n_ins // 10]
            out["_inserted"].append(keys)
            c.execute(f"INSERT INTO {t} (id, name, owner_id, annual_revenue, clv, event_count, last_modified) "  # type: ignore[arg-type]  # noqa: S608
                      "SELECT k, 'Account ' || k, '005000000000000001', 1000.00, 12.34, 1, timestamp '2026-11-01' "
                      "FROM unnest(%s::text[]) k ON CONFLICT (id) DO NOTHING", (keys,))
            c.commit()
    return out


def deletions(dsn: str, names: tuple[str, str], state_dir: Path, inserted: list[list[str]]) -> dict[str, Any]:
    """The ways of finding deleted rows, on each side, against the state of the last run after a
    fresh change: a segment's expected count is its stored count plus the rows inserted into it (what
    an incremental run knows from the changed rows it read).

    ``count+keys``: a ``count(*)``, then every key read in key order (ADBC, the index's order);
    ``range counts``: what recon does (engine.connectors.postgres.rangecount): rows per range of
    NARROW_STEPS[0] segments counted through the key's index, the moved ranges cut into single
    segments and counted again, then the keys of the moved segments read."""
    import bisect

    import numpy as np

    from engine.app.incremental import NARROW_STEPS, _key_range, _spans
    from engine.connectors.base import ReadRequest
    from engine.connectors.postgres.connector import PostgresSource
    from engine.connectors.postgres.rangecount import open_ranges
    from engine.connectors.refs import parse_reference
    from engine.core.normalize import ColumnType, FieldSpec

    index = json.loads((state_dir / "state.json").read_text())
    bounds: list[str] = index["boundaries"]
    n_seg = len(bounds) + 1
    key = (FieldSpec("id", "id", ColumnType("text"), is_key=True),)
    out: dict[str, Any] = {"segments": n_seg}
    for side, t, ins in zip(("source", "target"), names, inserted, strict=True):
        held = np.asarray(index["sides"][side]["segments"]["rows"], dtype=np.int64)
        for k in ins:
            held[bisect.bisect_right(bounds, k)] += 1
        cum = np.concatenate([[0], np.cumsum(held)])
        src = PostgresSource(parse_reference(f"{dsn}#public.{t}"), None)  # type: ignore[arg-type]
        r: dict[str, Any] = {"heap_fetches": heap_fetches(dsn, t)}
        t0 = time.perf_counter()
        e = src.read(ReadRequest(["id"], key_columns=["id"], key_fields=key, key_order=True))
        r["ordered_key_read_s"] = round(time.perf_counter() - t0, 3)
        r["keys"] = e.frame.height
        t0 = time.perf_counter()
        with open_ranges(src.ref, key, None, passfile=None, statement_timeout_ms=0) as kr:
            assert kr is not None, "the bench's key is a char(18) COLLATE \"C\" primary key"
            spans = _spans(0, n_seg, NARROW_STEPS[0])
            got = kr.counts([_key_range(bounds, a, b) for a, b in spans])
            r["first_step_s"] = round(time.perf_counter() - t0, 3)
            r["first_step_ranges"] = len(spans)
            moved = [sp for sp, g in zip(spans, got, strict=True) if g != cum[sp[1]] - cum[sp[0]]]
            fine = [sp for a, b in moved for sp in _spans(a, b, 1)]
            got = kr.counts([_key_range(bounds, a, b) for a, b in fine])
            segs = [a for (a, b), g in zip(fine, got, strict=True) if g != cum[b] - cum[a]]
            r["second_step_ranges"] = len(fine)
            r["moved_segments"] = len(segs)
            r["moved_keys"] = len(kr.keys([_key_range(bounds, a, a + 1) for a in segs]))
        r["range_counts_s"] = round(time.perf_counter() - t0, 3)
        out[side] = r
    return out


def heap_fetches(dsn: str, table: str) -> int:
    """How many rows an index-only scan of the whole key must still check in the heap: those on
    pages changed since the last VACUUM (the visibility map). The range counts pay that on every
    run (bench/RESULTS.md, "The visibility map and the range counts")."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SET enable_seqscan = off")
        c.execute("SET max_parallel_workers_per_gather = 0")
        plan = [r[0] for r in c.execute(sql.SQL("EXPLAIN (ANALYZE, TIMING OFF) SELECT count(*) FROM {}").format(
            sql.Identifier(table)))]
    return sum(int(line.split(":")[1]) for line in plan if "Heap Fetches:" in line)


def run(cmd_tail: list[str], env: dict[str, str], server: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "engine.cli.main", "diff", *cmd_tail]
    res, sample = run_sampled(cmd, env, server)
    out: dict[str, Any] = {"command": " ".join(["recon", *cmd[3:]]), "exit": res.returncode, **sample.as_json()}
    if res.returncode not in (0, 1):
        raise SystemExit(f"recon diff exited {res.returncode}: {res.stderr.strip()[-1500:]}")
    s = json.loads(res.stdout)
    out["found"] = {k: s.get(k) for k in ("mismatched", "missing_in_target", "missing_in_source", "unchanged")}
    inc = s.get("incremental") or {}
    out["incremental"] = {k: inc.get(k) for k in ("mode", "reason", "segments", "touched_segments", "sides",
                                                  "compacted")}
    out["status"] = s.get("status")
    return out


def on_disk(state: Path) -> dict[str, Any]:
    """The state's packs after a run: how many, and their bytes (what compaction bounds)."""
    packs = list((state / "segments").rglob("*.arrow"))
    return {"packs": len(packs), "mb": round(sum(p.stat().st_size for p in packs) / 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--mismatch", type=float, default=0.001)
    ap.add_argument("--change", type=float, default=0.001, help="share of rows changed before each incremental run")
    ap.add_argument("--runs", type=int, default=3, help="incremental runs per series")
    ap.add_argument("--index", choices=["no", "yes", "both"], default="no", help="an index on updated_at")
    ap.add_argument("--floor-repeat", type=int, default=1)
    ap.add_argument("--no-deletions", action="store_true", help="leave the deletion-detection comparison out")
    ap.add_argument("--verify", action="store_true", help="end each series with --verify-full (must be equal)")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--seed", type=int, default=None,
                    help="the changes' random seed (default: from the clock, recorded in the output; a fixed seed "
                         "with --reuse deletes keys an earlier run deleted already, i.e. nothing)")
    ap.add_argument("--state-dir", default=str(ROOT / ".recon-bench"))
    ap.add_argument("--out")
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()

    from engine.local.postgres import EmbeddedPostgres
    from engine.local.state import StackPaths

    paths = StackPaths.at(a.state_dir)
    info = EmbeddedPostgres(paths).start()
    env = {**os.environ, "PGPASSFILE": str(paths.pgpass_file), "PYTHONPATH": str(ROOT)}
    os.environ["PGPASSFILE"] = env["PGPASSFILE"]
    dsn = info.dsn
    names = tables_for(a.rows)
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", str(ROOT / "engine")], check=False,
                   capture_output=True)
    seed = a.seed if a.seed is not None else time.time_ns() % 2**32
    rng = random.Random(seed)
    out: dict[str, Any] = {"rows": a.rows, "seed": seed, "mismatch": a.mismatch, "change": a.change, "cores": os.cpu_count(),
                           "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                    capture_output=True, text=True).stdout.strip()}
    work = Path(tempfile.mkdtemp(prefix="bench-inc-", dir=ROOT / ".recon-bench" if (ROOT / ".recon-bench").is_dir()
                                 else None))
    try:
        out["tables"] = build_tables(dsn, a.rows, a.mismatch, a.reuse)
        print(json.dumps({"tables": out["tables"]}), file=sys.stderr)
        cfg = write_config(work, dsn, names)
        state = work / "state"
        base = ["-C", str(cfg), "--mapping", "inc", "--state", str(state), "--json"]
        fl = run_sampled([sys.executable, str(SHARED / "floor_pg_pg.py"), dsn, *names, "--repeat",
                          str(a.floor_repeat), "--json"], env, info.pid)
        out["floor"] = {**json.loads(fl[0].stdout), "process": fl[1].as_json()}
        floor = float(out["floor"]["floor"])
        print(json.dumps({"floor": floor}), file=sys.stderr)
        series = {"no": [False], "yes": [True], "both": [False, True]}[a.index]
        out["series"] = []
        for with_index in series:
            ser: dict[str, Any] = {"updated_at_index": with_index,
                                   "index_s": set_index(dsn, names, with_index)}
            ser["full"] = run([*base, "--full"], env, info.pid)
            ser["full"]["vs_floor"] = round(ser["full"]["wall_s"] / floor, 3)
            ser["full"]["state_on_disk"] = on_disk(state)
            print(json.dumps({"full": ser["full"]["wall_s"]}), file=sys.stderr)
            ser["incremental"] = []
            for i in range(a.runs):
                t0 = time.perf_counter()
                ch = change(dsn, names, a.rows, a.change, rng, len(out["series"]) * 1000 + i)
                inserted = ch.pop("_inserted")
                # a run's lower bound is its horizon less DEFAULT_OVERLAP: a change committed in the
                # second before a run is read again by the next one (right, and what a scheduler
                # sees only for the rows changed in that second); the pause keeps each run to the
                # change made for it, as changes spread over an hour would
                time.sleep(PAUSE_S)
                t0 += PAUSE_S
                if i == 0 and not a.no_deletions and not with_index:
                    t1 = time.perf_counter()
                    out["deletions"] = deletions(dsn, names, state, inserted)
                    t0 += time.perf_counter() - t1
                    print(json.dumps({"deletions": out["deletions"]}), file=sys.stderr)
                one = run(base, env, info.pid)
                one["state_on_disk"] = on_disk(state)
                one["change"] = {**ch, "change_s": round(time.perf_counter() - t0 - one["wall_s"], 1)}
                one["vs_floor"] = round(one["wall_s"] / floor, 3)
                ser["incremental"].append(one)
                print(json.dumps({"incremental": one["wall_s"], "vs_floor": one["vs_floor"],
                                  "mode": one["incremental"]["mode"], "others": one["others_cpu_share"],
                                  "state": one["state_on_disk"], "compacted": one["incremental"]["compacted"]}),
                      file=sys.stderr)
            if a.verify:
                ser["verify"] = run([*base, "--verify-full"], env, info.pid)
            walls = [r["wall_s"] for r in ser["incremental"]]
            ser["incremental_median_s"] = round(statistics.median(walls), 3)
            ser["incremental_median_vs_floor"] = round(statistics.median(walls) / floor, 3)
            out["series"].append(ser)
    finally:
        if a.index != "no":
            set_index(dsn, names, False)
        if not a.keep:
            import psycopg

            with psycopg.connect(dsn, autocommit=True) as c:
                for t in names:
                    c.execute(f"DROP TABLE IF EXISTS {t}")  # type: ignore[arg-type]
        shutil.rmtree(work, ignore_errors=True)
    out["loadavg_end"] = os.getloadavg()
    text = json.dumps(out, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    if a.markdown:
        for ser in out["series"]:
            idx = "yes" if ser["updated_at_index"] else "no"
            f = ser["full"]
            print(f"| {a.rows:,} | {idx} | {floor:.2f} | full {f['wall_s']} s ({f['vs_floor']}x), {f['peak_rss_mb']} MB | "
                  + ", ".join(f"{r['wall_s']} s" for r in ser["incremental"])
                  + f" | **{ser['incremental_median_vs_floor']}x** | "
                  + f"{max(r['peak_rss_mb'] for r in ser['incremental'])} MB | "
                  + ", ".join(str(r["others_cpu_share"]) for r in ser["incremental"]) + " |")


if __name__ == "__main__":
    main()
