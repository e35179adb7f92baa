"""Ways to read the whole warehouse table into Arrow, timed side by side in one run.

Usage (from the repository root, with the venv that runs the tests):

    python bench/bench_pg_readers.py --rows 1000000 --repeat 5 [--reuse] [--readers recon,adbc,…]

Starts (or reuses) the embedded PostgreSQL in ./.recon-bench and loads ../shared/bench/make_accounts.py's
tables exactly as bench/diff_vs_peers.py does (same data directory and `loaded.json` marker, so either
script reuses what the other loaded), then reads `public.wh_account` in these ways:

  recon          engine.connectors.postgres.source.extract(): the diff's reader (psql COPY CSV children)
  recon-psycopg  the same with RECON_PG_READER=psycopg: the in-process fallback (no psql)
  adbc           ADBC (binary COPY into Arrow), one connection, joined to a snapshot a psycopg session exported
  adbc-text      the same, NUMERIC formatted by the server (``::text``): the driver's own NUMERIC
                 conversion turned out to be the slow part
  adbc-key2      ADBC, the table split at the median key (pg_stats) into 2 ranges read by 2 threads/connections
  adbc-ctid2     ADBC, 2 page (ctid) ranges as recon's psql children split it, NUMERIC as in adbc-text

Each figure is wall time from connecting to holding the result, median of --repeat runs; the runs go
round-robin over the readers so that load from other processes spreads over all of them. The recon
readers end with a Polars frame in recon's column types; every ADBC reader is timed twice over: to its
raw Arrow table (``arrow_s``) and on to a frame in recon's types (``frame_s``: NUMERIC as decimal128(38, s),
then Polars). Then:

  types    the Arrow types ADBC gives for numeric, text, char(n), bigint, timestamp, timestamptz, boolean
  exact    every NUMERIC value of the table as ADBC gives it, against PostgreSQL's own text output
           (psycopg, ``::text``), and ADBC's converted frame against recon's frame
  session  whether the ADBC transaction can be READ ONLY and can carry a statement_timeout

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RECON_SHARED", ROOT.parent / "shared")) / "bench"
TABLE = ("public", "wh_account")


def setup(rows: int, mismatch: float, reuse: bool, state_dir: str) -> tuple[str, str]:
    """The server's DSN (the password in PGPASSFILE, which this process exports) and what was loaded."""
    from engine.local.postgres import EmbeddedPostgres
    from engine.local.state import StackPaths

    paths = StackPaths.at(state_dir)
    pg = EmbeddedPostgres(paths).start()
    os.environ["PGPASSFILE"] = str(paths.pgpass_file)  # psycopg, the psql children and ADBC's libpq all read it
    dsn = pg.dsn
    data = ROOT / "bench-data" / f"{rows}-{mismatch}"
    data.mkdir(parents=True, exist_ok=True)
    marker = data / "loaded.json"
    want = {"rows": rows, "mismatch": mismatch, "dsn": dsn}
    if reuse and marker.is_file() and json.loads(marker.read_text()) == want:
        return dsn, f"reused {data} (already loaded into {dsn})"
    marker.unlink(missing_ok=True)
    gen = subprocess.run([sys.executable, str(SHARED / "make_accounts.py"), "--rows", str(rows), "--mismatch",
                          str(mismatch), "--dsn", dsn, "--out", str(data)], capture_output=True, text=True,
                         check=True)
    for other in (ROOT / "bench-data").glob("*/loaded.json"):  # the tables now hold this data set only
        other.unlink()
    marker.write_text(json.dumps(want))
    return dsn, gen.stdout.strip()


# -- the readers under test ------------------------------------------------------------------------


def recon_reader(dsn: str) -> Any:
    from engine.connectors.postgres.source import extract
    from engine.connectors.refs import parse_reference

    ex = extract(parse_reference(f"{dsn}#{TABLE[0]}.{TABLE[1]}"))
    recon_reader.last_reader = ex.meta["reader"]  # type: ignore[attr-defined]
    return ex.frame


def recon_psycopg_reader(dsn: str) -> Any:
    before = os.environ.get("RECON_PG_READER")
    os.environ["RECON_PG_READER"] = "psycopg"  # what source._psql_binary() reads to force the fallback
    try:
        return recon_reader(dsn)
    finally:
        if before is None:
            os.environ.pop("RECON_PG_READER", None)
        else:
            os.environ["RECON_PG_READER"] = before


class Snapshot:
    """A psycopg session holding an exported REPEATABLE READ snapshot open, as recon's PgRead does."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.conn = psycopg.connect(dsn)
        self.conn.read_only = True
        self.conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self.id = self.conn.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
        # recon reads the column list (and its types) in the snapshot: so does every ADBC reader
        self.columns = self.conn.execute(
            """SELECT a.attname, COALESCE(bt.typname, t.typname),
                      CASE WHEN a.atttypmod > 0 THEN (a.atttypmod - 4) & 65535 END
                 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                 LEFT JOIN pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
                WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""",
            (f"{TABLE[0]}.{TABLE[1]}",)).fetchall()

    def close(self) -> None:
        self.conn.rollback()
        self.conn.close()


def adbc_read(dsn: str, snapshot: str, query: str) -> Any:
    """One ADBC connection joined to the snapshot, the query's result as an Arrow table."""
    import adbc_driver_postgresql.dbapi as dbapi

    with dbapi.connect(dsn) as conn, conn.cursor() as cur:  # dbapi: autocommit off, a transaction is open
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        cur.execute(query)
        table = cur.fetch_arrow_table()
        conn.rollback()
        return table


def in_threads(fn: Callable[[str], Any], queries: list[str]) -> list[Any]:
    out: list[Any] = [None] * len(queries)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            out[i] = fn(queries[i])
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _select(snap: Snapshot, *, numeric_as_text: bool = False) -> str:
    cols = ", ".join(f"{_ident(n)}::text AS {_ident(n)}" if numeric_as_text and base == "numeric" else _ident(n)
                     for n, base, _ in snap.columns)
    return f"SELECT {cols} FROM {_ident(TABLE[0])}.{_ident(TABLE[1])}"  # noqa: S608


def adbc_reader(dsn: str) -> Any:
    snap = Snapshot(dsn)
    try:
        return adbc_read(dsn, snap.id, _select(snap)), snap.columns
    finally:
        snap.close()


def adbc_text_reader(dsn: str) -> Any:
    snap = Snapshot(dsn)
    try:
        return adbc_read(dsn, snap.id, _select(snap, numeric_as_text=True)), snap.columns
    finally:
        snap.close()


def adbc_key2_reader(dsn: str) -> Any:
    import pyarrow as pa

    snap = Snapshot(dsn)
    try:
        key = "id"
        # the median key from ANALYZE's histogram: free, no scan (an ORDER BY … OFFSET when there is none)
        row = snap.conn.execute(
            "SELECT histogram_bounds::text::text[] FROM pg_stats WHERE schemaname = %s AND tablename = %s "
            "AND attname = %s", (*TABLE, key)).fetchone()
        if row and row[0]:
            mid = row[0][len(row[0]) // 2]
        else:
            mid = snap.conn.execute(f"SELECT {key} FROM {TABLE[0]}.{TABLE[1]} ORDER BY {key} OFFSET "  # noqa: S608
                                    f"(SELECT count(*) / 2 FROM {TABLE[0]}.{TABLE[1]}) LIMIT 1").fetchone()[0]
        lit = "'" + str(mid).replace("'", "''") + "'"
        base = _select(snap)
        parts = in_threads(lambda q: adbc_read(dsn, snap.id, q),
                           [f"{base} WHERE {key} < {lit}", f"{base} WHERE {key} >= {lit}"])
        return pa.concat_tables(parts), snap.columns
    finally:
        snap.close()


def adbc_ctid2_reader(dsn: str) -> Any:
    import pyarrow as pa

    snap = Snapshot(dsn)
    try:
        pages = snap.conn.execute("SELECT pg_relation_size(%s::regclass) / current_setting('block_size')::int",
                                  (f"{TABLE[0]}.{TABLE[1]}",)).fetchone()[0]  # type: ignore[index]
        mid = int(pages) // 2
        base = _select(snap, numeric_as_text=True)
        parts = in_threads(lambda q: adbc_read(dsn, snap.id, q),
                           [f"{base} WHERE ctid < '({mid},0)'::tid", f"{base} WHERE ctid >= '({mid},0)'::tid"])
        return pa.concat_tables(parts), snap.columns
    finally:
        snap.close()


def to_recon_frame(table: Any, columns: list[tuple[str, str, int | None]]) -> Any:
    """An ADBC result in recon's column types: NUMERIC (an opaque string extension type, or text) as
    decimal128(38, scale), char(n) without its padding blanks; then Polars."""
    import polars as pl
    import pyarrow as pa

    from engine.connectors.postgres.source import _strip_padding

    arrays, names = [], []
    for (name, base, scale), field, col in zip(columns, table.schema, table.columns, strict=True):
        if base == "numeric" and scale is not None:
            if isinstance(field.type, pa.ExtensionType):
                col = pa.chunked_array([c.storage for c in col.chunks], type=field.type.storage_type)
            col = col.cast(pa.decimal128(38, scale))
        arrays.append(col)
        names.append(name)
    frame = pl.from_arrow(pa.table(arrays, names=names))
    return _strip_padding(frame, [n for n, base, _ in columns if base == "bpchar"])


READERS: dict[str, Callable[[str], Any]] = {
    "recon": recon_reader,
    "recon-psycopg": recon_psycopg_reader,
    "adbc": adbc_reader,
    "adbc-text": adbc_text_reader,
    "adbc-key2": adbc_key2_reader,
    "adbc-ctid2": adbc_ctid2_reader,
}


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    rc = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime + rc.ru_utime + rc.ru_stime


def time_one(name: str, dsn: str) -> dict[str, Any]:
    gc.collect()
    c0, t0 = cpu_s(), time.perf_counter()
    res = READERS[name](dsn)
    t1 = time.perf_counter()
    out: dict[str, Any] = {}
    if name.startswith("adbc"):
        table, columns = res
        out["arrow_s"] = t1 - t0
        rows = table.num_rows
        to_recon_frame(table, columns)
        out["frame_s"] = time.perf_counter() - t0
    else:
        rows = res.height
        out["frame_s"] = t1 - t0
        out["reader"] = recon_reader.last_reader  # type: ignore[attr-defined]
    out["cpu_s"] = cpu_s() - c0  # this process and its children (psql); the server's CPU is not in it
    out["rows"] = rows
    out["load1"] = os.getloadavg()[0]
    del res
    return out


# -- fidelity and session checks ---------------------------------------------------------------------


def types_report(dsn: str) -> dict[str, Any]:
    import adbc_driver_postgresql.dbapi as dbapi

    probe = f"""SELECT id, name, owner_id, annual_revenue, clv, clv::numeric AS clv_unconstrained, event_count,
                       last_modified, last_modified AT TIME ZONE 'UTC' AS last_modified_tz,
                       event_count > 100 AS many_events, id::varchar AS id_varchar, 'ab'::char(5) AS char5
                  FROM {TABLE[0]}.{TABLE[1]} ORDER BY id LIMIT 1"""  # noqa: S608
    specials = ["123456789012345678901234567890.123456789", "NaN", "Infinity", "-Infinity", "-0.01",
                "0.000000000000000000001", "1e30", "-0.00", "9999999999999999.99"]
    values = ", ".join(f"('{s}')" for s in specials)
    special_sql = f"SELECT x::numeric AS n FROM (VALUES {values}) v(x)"  # noqa: S608
    with dbapi.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(probe)
        t = cur.fetch_arrow_table()
        first = t.to_pylist()[0]
        types = {f.name: {"pg": (f.metadata or {}).get(b"POSTGRESQL:type", b"").decode(), "arrow": str(f.type),
                          "sample": repr(first[f.name])} for f in t.schema}
        cur.execute(special_sql)
        got = [str(v) for v in cur.fetch_arrow_table().column(0).to_pylist()]
        # every scale of numeric(16, s) (an old driver garbled some), up to the type's largest value
        scales_sql = " UNION ALL ".join(
            f"SELECT {sc} AS s, '{v}'::numeric(16, {sc}) AS n" for sc in range(16)
            for v in ("1.0123456789012345", "-1.01", "0.000000000000001", "9" * (16 - sc) + "." + "9" * sc))
        cur.execute(scales_sql)
        scaled = cur.fetch_arrow_table()
        scaled_got = [str(v) for v in scaled.column(1).to_pylist()]
    import psycopg

    with psycopg.connect(dsn) as pc:
        ref = [r[0] for r in pc.execute(special_sql.replace("x::numeric AS n", "x::numeric::text")).fetchall()]
        scaled_ref = [r[0] for r in pc.execute(f"SELECT n::text FROM ({scales_sql}) q").fetchall()]  # noqa: S608
    return {"columns": types,
            "numeric_scales": {"values_compared": len(scaled_ref),
                               "differ": [(r, g) for r, g in zip(scaled_ref, scaled_got, strict=True) if r != g]},
            "numeric_specials": [{"postgres_text": r, "adbc": g, "same": r == g} for r, g in zip(ref, got, strict=True)]}


def exactness(dsn: str) -> dict[str, Any]:
    """Every NUMERIC value as ADBC gives it against PostgreSQL's text output of the same value, and
    ADBC's frame in recon's types against recon's own frame."""
    import polars as pl
    import psycopg

    table, columns = adbc_reader(dsn)
    num = [n for n, base, _ in columns if base == "numeric"]
    adbc = pl.DataFrame({"id": table.column("id").to_pylist(),
                         **{n: [None if v is None else str(v) for v in _storage(table.column(n)).to_pylist()]
                            for n in num}})
    with psycopg.connect(dsn) as pc:
        rows = pc.execute(f"SELECT id, {', '.join(f'{n}::text' for n in num)} "  # noqa: S608
                          f"FROM {TABLE[0]}.{TABLE[1]}").fetchall()
    ref = pl.DataFrame(rows, schema=["id", *num], orient="row")
    joined = adbc.join(ref, on="id", how="full", suffix="_pg", coalesce=True)
    out: dict[str, Any] = {"rows_compared": joined.height}
    for n in num:
        out[f"{n}_differ"] = joined.filter(pl.col(n).ne_missing(pl.col(f"{n}_pg"))).height
    ours = to_recon_frame(table, columns).sort("id")
    theirs = recon_reader(dsn).sort("id")
    out["adbc_frame_equals_recon_frame"] = ours.equals(theirs)
    out["schemas"] = {"adbc_frame": {k: str(v) for k, v in ours.schema.items()},
                      "recon_frame": {k: str(v) for k, v in theirs.schema.items()}}
    ctid_table, _ = adbc_ctid2_reader(dsn)
    out["adbc_ctid2_frame_equals_recon_frame"] = to_recon_frame(ctid_table, columns).sort("id").equals(theirs)
    return out


def _storage(col: Any) -> Any:
    import pyarrow as pa

    if isinstance(col.type, pa.ExtensionType):
        return pa.chunked_array([c.storage for c in col.chunks], type=col.type.storage_type)
    return col


def session_checks(dsn: str) -> dict[str, Any]:
    """READ ONLY and statement_timeout in an ADBC transaction joined to an exported snapshot."""
    import adbc_driver_postgresql.dbapi as dbapi

    out: dict[str, Any] = {}
    snap = Snapshot(dsn)
    try:
        with dbapi.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur.execute(f"SET TRANSACTION SNAPSHOT '{snap.id}'")
            cur.execute("SET LOCAL statement_timeout = '500ms'")
            cur.execute("SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only'), "
                        "current_setting('statement_timeout')")
            iso, ro, st = cur.fetchone()
            out.update(isolation=iso, read_only=ro, statement_timeout=st)
            try:
                cur.execute("CREATE TEMP TABLE recon_probe(a int)")
                out["write_in_transaction"] = "accepted"
            except Exception as exc:
                out["write_in_transaction"] = "refused: " + str(exc).split("ERROR:", 1)[-1].strip().splitlines()[0]
            conn.rollback()
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur.execute("SET LOCAL statement_timeout = '500ms'")
            t = time.perf_counter()
            try:
                cur.execute("SELECT pg_sleep(3)")
                cur.fetchall()
                out["timeout_cancels"] = False
            except Exception as exc:
                out["timeout_cancels"] = f"{type(exc).__name__} after {time.perf_counter() - t:.2f}s: " + \
                    str(exc).split("ERROR:", 1)[-1].strip().splitlines()[0]
            conn.rollback()
            conn.adbc_connection.set_options(**{  # the driver's own isolation option, instead of SET TRANSACTION
                "adbc.connection.transaction.isolation_level": "adbc.connection.transaction.isolation.repeatable_read"})
            cur.execute("SELECT current_setting('transaction_isolation')")
            out["isolation_via_adbc_option"] = cur.fetchone()[0]
            cur.execute("SELECT pg_export_snapshot()")  # an ADBC session can export the snapshot itself
            out["adbc_exports_snapshot"] = bool(cur.fetchone()[0])
            conn.rollback()
            for opt in ("adbc.connection.readonly",):
                try:
                    conn.adbc_connection.set_options(**{opt: "true"})
                    out[opt] = "accepted"
                except Exception as exc:
                    out[opt] = str(exc).splitlines()[0]
        with dbapi.connect(dsn + ("&" if "?" in dsn else "?") + "options=-c%20statement_timeout%3D1234") as conn, \
                conn.cursor() as cur:
            cur.execute("SELECT current_setting('statement_timeout')")
            out["statement_timeout_via_uri_options"] = cur.fetchone()[0]
    finally:
        snap.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--mismatch", type=float, default=0.15)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--readers", default=",".join(READERS), help=f"comma-separated, of: {', '.join(READERS)}")
    ap.add_argument("--no-checks", action="store_true", help="skip the type, exactness and session checks")
    ap.add_argument("--reuse", action="store_true",
                    help="skip generating and loading when bench-data holds this data set and the tables were loaded from it")
    ap.add_argument("--state-dir", default=str(ROOT / ".recon-bench"))
    a = ap.parse_args()
    names = [n.strip() for n in a.readers.split(",") if n.strip()]
    unknown = [n for n in names if n not in READERS]
    if unknown:
        raise SystemExit(f"unknown readers {unknown}: choose from {list(READERS)}")

    dsn, generated = setup(a.rows, a.mismatch, a.reuse, a.state_dir)
    out: dict[str, Any] = {"rows": a.rows, "generated": generated, "cores": os.cpu_count(),
                           "loadavg_before": os.getloadavg()}
    import adbc_driver_postgresql

    out["adbc_driver_postgresql"] = adbc_driver_postgresql.__version__
    for n in names:  # warm-up: the table in shared buffers, the libraries imported
        time_one(n, dsn)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for _ in range(a.repeat):  # round-robin, so other processes' load falls on every reader alike
        for n in names:
            runs[n].append(time_one(n, dsn))
    out["loadavg_after"] = os.getloadavg()
    res: dict[str, Any] = {}
    for n, rs in runs.items():
        r: dict[str, Any] = {"rows": rs[0]["rows"]}
        for k in ("arrow_s", "frame_s", "cpu_s"):
            if k in rs[0]:
                r[k] = round(statistics.median(x[k] for x in rs), 3)
                r[f"{k}_runs"] = [round(x[k], 3) for x in rs]
        main_s = r.get("arrow_s", r["frame_s"])
        r["rows_per_s"] = round(r["rows"] / main_s)
        if "reader" in rs[0]:
            r["reader"] = rs[0]["reader"]
        r["load1_runs"] = [round(x["load1"], 2) for x in rs]
        res[n] = r
    out["readers"] = res
    if not a.no_checks:
        out["types"] = types_report(dsn)
        out["exact"] = exactness(dsn)
        out["session"] = session_checks(dsn)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
