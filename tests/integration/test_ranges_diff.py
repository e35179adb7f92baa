"""A diff run as key ranges gives the one-pass answer against real systems: PostgreSQL↔PostgreSQL
(a non-C-collation text key, an integer key, duplicates, keys on range edges), Parquet↔PostgreSQL
and Salesforce↔PostgreSQL (the scenario's mapping), for several range sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pytest
from psycopg import sql

from engine.app.diff import DiffOptions, run
from engine.app.scale import ScaleOptions
from engine.config import load

VOLATILE = {"elapsed_s", "plan", "retries", "evidence"}


def comparable(s: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in s.items() if k not in VOLATILE}
    for side in ("source", "target"):
        out[side] = {k: v for k, v in s[side].items() if k != "extract"}
    return out


def diff(opts: DiffOptions, cfg: Any, out: Path, scale: ScaleOptions | None = None) -> tuple[dict[str, Any], pl.DataFrame]:
    from dataclasses import replace

    res = run(replace(opts, out_dir=out, scale=scale or ScaleOptions()), cfg)
    d = pl.read_parquet(out / "differences.parquet")
    assert not (out / ".recon-ranges").exists()  # the tasks' parts are merged and gone
    return res.summary, d.sort(d.columns)


KEYS = ["a", "B", "_x", "a-b", "ab", "Ab", "b", "10", "9", "z", "é", "e"]


@pytest.fixture(scope="module")
def pg_pair(embedded_pg: Any, linguistic: str) -> dict[str, Any]:
    """Two text-keyed tables in a linguistic collation (not byte order) and two integer-keyed ones."""
    with psycopg.connect(embedded_pg.info.dsn, autocommit=True, passfile=str(embedded_pg.paths.pgpass_file)) as c:
        coll = linguistic
        c.execute("DROP SCHEMA IF EXISTS ranges CASCADE")
        c.execute("CREATE SCHEMA ranges")
        ck = f"COLLATE {coll}"
        for name in ("ts", "tt"):
            c.execute(f"CREATE TABLE ranges.{name} (k text {ck} NOT NULL, v numeric(14,2), n int)")
        for name in ("is_", "it"):
            c.execute(f"CREATE TABLE ranges.{name} (k bigint NOT NULL, v numeric(14,2), n int)")
        # 2,000 keys, each of the awkward spellings, a few duplicated; the target drops, adds and changes some
        c.execute("INSERT INTO ranges.ts SELECT k || i, (i * 7 %% 1000) / 4.0, i %% 13 FROM generate_series(1, 2000) i, "
                  "unnest(%s::text[]) k WHERE i %% 5 = length(k) %% 5", (KEYS,))
        c.execute("INSERT INTO ranges.ts SELECT k, v + 1, n FROM ranges.ts WHERE n = 3 AND v < 20")  # duplicates
        c.execute("INSERT INTO ranges.tt SELECT k, CASE WHEN n = 5 THEN v + 0.01 ELSE v END, n FROM ranges.ts "
                  "WHERE n <> 7 OR v > 100")
        c.execute("INSERT INTO ranges.tt VALUES ('', 1, 1), ('~~~', 2, 2), ('a', 3, 3)")
        c.execute("INSERT INTO ranges.is_ SELECT (i - 900) * (CASE WHEN i % 3 = 0 THEN 1000 ELSE 1 END), i / 8.0, i % 9 "
                  "FROM generate_series(1, 3000) i")
        c.execute("INSERT INTO ranges.is_ SELECT k, v, n FROM ranges.is_ WHERE n = 4 AND k < 0")  # duplicates
        c.execute("INSERT INTO ranges.it SELECT k, CASE WHEN n = 2 THEN v * 2 ELSE v END, n FROM ranges.is_ "
                  "WHERE n <> 8")
        c.execute("INSERT INTO ranges.it VALUES (-9223372036854775808, 1, 1), (9223372036854775807, 2, 2)")
        c.execute("ANALYZE ranges.ts; ANALYZE ranges.tt; ANALYZE ranges.is_; ANALYZE ranges.it")
    dsn = embedded_pg.info.dsn
    return {"collation": coll, "text": (f"{dsn}#ranges.ts", f"{dsn}#ranges.tt"),
            "int": (f"{dsn}#ranges.is_", f"{dsn}#ranges.it"), "pgpass": str(embedded_pg.paths.pgpass_file)}


@pytest.mark.parametrize("kind", ["text", "int"])
def test_pg_pg_every_range_size_gives_the_one_pass_answer(pg_pair: dict[str, Any], kind: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSFILE", pg_pair["pgpass"])
    s, t = pg_pair[kind]
    opts = DiffOptions(source=s, target=t, keys=(("k", "k"),), segment_rows=64)
    cfg = load(None)
    one, d_one = diff(opts, cfg, tmp_path / "one")
    assert "plan" not in one
    assert one["duplicate_keys"]["source"] > 0 and one["mismatched"] > 0
    assert one["missing_in_source"] >= 2 and one["missing_in_target"] > 0
    for rows in (1, 700):
        got, d = diff(opts, cfg, tmp_path / f"r{rows}", ScaleOptions(range_rows=rows, workers=2))
        assert got["plan"]["ranges"] > 1
        assert got["plan"]["cut"] == "stream"  # the server sorted the keys: no key held in memory
        assert comparable(got) == comparable(one), rows
        assert d.equals(d_one), rows
        assert got["source"]["extract"]["rows"] == one["source"]["rows"]


@pytest.mark.parametrize("kind", ["text", "int"])
def test_streamed_cut_equals_the_in_memory_cut_over_many_batches(pg_pair: dict[str, Any], kind: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The server-sorted keys, parsed in batches of a few hundred bytes (batch edges inside runs of
    duplicates), give the boundaries and counts the in-memory cut gives."""
    import engine.connectors.postgres.keystream as ks
    from engine.app import ranges
    from engine.connectors.postgres.connector import PostgresSource
    from engine.core.normalize import ColumnType, FieldSpec

    monkeypatch.setenv("PGPASSFILE", pg_pair["pgpass"])
    real = ks._csv_options

    def small(names: list[str], types: dict[str, Any], *, threads: bool = True) -> tuple[Any, Any]:
        ro, co = real(names, types, threads=threads)
        ro.block_size = 256
        return ro, co

    monkeypatch.setattr(ks, "_csv_options", small)
    fields = (FieldSpec("k", "k", ColumnType(kind), is_key=True),)
    spec = ranges.SideSpec(pg_pair[kind][0], fields)
    cfg = load(None)
    b, n, meta = ranges.cut(spec, cfg, 7, None)
    assert meta["cut"] == "stream"
    batches = 0
    with PostgresSource.sorted_keys(ranges.source_for(ranges.parse_reference(spec.ref), cfg),
                                    spec.request(None, None, keys_only=True)) as stream:
        batches = sum(1 for _ in stream)
    assert batches > 10
    monkeypatch.delattr(PostgresSource, "sorted_keys")
    mb, mn, mmeta = ranges.cut(spec, cfg, 7, None)
    assert mmeta["cut"] == "memory"
    assert len(b) > 100 and b == mb and n.tolist() == mn.tolist()


def test_keys_not_in_nfc_fall_back_to_the_in_memory_cut(embedded_pg: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key stored decomposed ("e" + U+0301) sorts on the server where its NFC form ("é") does not:
    the order check fails and the cut is made in memory, with the same boundaries it always had."""
    from engine.app import ranges
    from engine.core import merkle
    from engine.core.normalize import ColumnType, FieldSpec

    monkeypatch.setenv("PGPASSFILE", str(embedded_pg.paths.pgpass_file))
    with psycopg.connect(embedded_pg.info.dsn, autocommit=True, passfile=str(embedded_pg.paths.pgpass_file)) as c:
        c.execute("DROP TABLE IF EXISTS public.nfc_s")
        c.execute("CREATE TABLE public.nfc_s (k text NOT NULL, v int)")
        c.execute("INSERT INTO public.nfc_s SELECT 'k' || i, i FROM generate_series(1, 300) i")
        c.execute("INSERT INTO public.nfc_s VALUES (%s, 1), ('f', 2), ('z', 3)", ("e\u0301x",))
        keys = sorted(r[0] for r in c.execute("SELECT normalize(k, NFC) FROM public.nfc_s"))
    spec = ranges.SideSpec(f"{embedded_pg.info.dsn}#public.nfc_s", (FieldSpec("k", "k", ColumnType("text"), is_key=True),))
    b, n, meta = ranges.cut(spec, load(None), 16, None)
    assert meta["cut"] == "memory"
    sk = pl.Series(keys)
    assert keys[-1] == "\u00e9x" and b == merkle.choose_boundaries(sk, 16)
    assert n.tolist() == merkle.segment_counts(sk, merkle.Segmentation(tuple(b))).tolist()


def test_keys_not_in_nfc_are_never_lost_by_a_range_run(embedded_pg: Any, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A key stored decomposed on both sides: the server would hand it to the range of its stored
    spelling while its canonical (NFC) form belongs to another, so the range read of such a side is
    not pushed down (each task filters it whole) and the run equals one pass. Before the guard the
    range run counted one source row fewer and reported the key missing from the target."""
    monkeypatch.setenv("PGPASSFILE", str(embedded_pg.paths.pgpass_file))
    with psycopg.connect(embedded_pg.info.dsn, autocommit=True, passfile=str(embedded_pg.paths.pgpass_file)) as c:
        for name in ("nfc_a", "nfc_b"):
            c.execute(f"DROP TABLE IF EXISTS public.{name}")
            c.execute(f"CREATE TABLE public.{name} (k text NOT NULL, v int)")
            t = sql.Identifier("public", name)
            c.execute(sql.SQL("INSERT INTO {} SELECT 'k' || i, i FROM generate_series(1, 300) i").format(t))
            c.execute(sql.SQL("INSERT INTO {} VALUES (%s, 1), ('f', 2), ('z', 3)").format(t), ("e\u0301x",))
        c.execute("UPDATE public.nfc_b SET v = v + 1 WHERE k IN ('k7', 'z')")
    dsn = embedded_pg.info.dsn
    opts = DiffOptions(source=f"{dsn}#public.nfc_a", target=f"{dsn}#public.nfc_b", keys=(("k", "k"),), segment_rows=16)
    cfg = load(None)
    one, d_one = diff(opts, cfg, tmp_path / "one")
    got, d = diff(opts, cfg, tmp_path / "r", ScaleOptions(range_rows=40))
    assert got["plan"]["ranges"] > 3
    assert one["source"]["rows"] == 303 and one["mismatched"] == 2 and one["missing_in_target"] == 0
    assert comparable(got) == comparable(one) and d.equals(d_one)
    assert got["source"]["extract"]["rows_read"] > got["source"]["rows"]  # read whole by each task


def test_salesforce_pg_and_parquet_pg_give_the_one_pass_answer(scenario_stack: Any, tmp_path: Path) -> None:
    """The scenario's mapping (Salesforce Account ↔ warehouse.customer_clv), then a Parquet snapshot
    of the Salesforce side against the same warehouse table."""
    import os

    env = scenario_stack.env
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        cfg = load(scenario_stack.config)
        opts = DiffOptions(mapping="clv", segment_rows=100)
        one, d_one = diff(opts, cfg, tmp_path / "one")
        got, d = diff(opts, cfg, tmp_path / "r", ScaleOptions(range_rows=450))
        assert got["plan"]["ranges"] >= 4
        assert comparable(got) == comparable(one) and d.equals(d_one)
        assert one["mismatched"] > 0
        # the same ranges on a 2-process LocalCluster: each worker runs its own Bulk API jobs with the
        # Salesforce settings of its own environment
        dgot, dd = diff(opts, cfg, tmp_path / "rd", ScaleOptions(executor="dask", workers=2, range_rows=450))
        assert dgot["plan"]["executor"] == "dask" and dgot["plan"]["ranges"] == got["plan"]["ranges"]
        assert comparable(dgot) == comparable(one) and dd.equals(d_one)

        snap = scenario_stack.run("snapshot", "salesforce:Account", "--out", str(tmp_path / "sf.parquet"),
                                  "-k", "Id", "-C", str(scenario_stack.config))
        assert snap.returncode == 0, snap.stderr
        m = cfg.mapping("clv")
        popts = DiffOptions(source=f"parquet:{tmp_path / 'sf.parquet'}", target=m.target, keys=m.key,
                            columns=m.columns, segment_rows=100)
        pone, pd_one = diff(popts, cfg, tmp_path / "pone")
        pgot, pd = diff(popts, cfg, tmp_path / "pr", ScaleOptions(range_rows=300))
        assert pgot["plan"]["ranges"] >= 6
        assert comparable(pgot) == comparable(pone) and pd.equals(pd_one)
        pdg, pdd = diff(popts, cfg, tmp_path / "prd", ScaleOptions(executor="dask", workers=2, range_rows=300))
        assert comparable(pdg) == comparable(pone) and pdd.equals(pd_one)
        assert pone["merkle"]["target_root"] == one["merkle"]["target_root"]
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_a_range_run_manifest_verifies_from_the_data(pg_pair: dict[str, Any], tmp_path: Path) -> None:
    """The manifest records the plan (executor, ranges, each range's roots); `manifest verify
    --data` recomputes both roots from the snapshot files the ranges wrote, and a changed value in
    them is caught (exit 4)."""
    import json
    import os

    from tests.stack_fixtures import recon

    env = {**os.environ, "PGPASSFILE": pg_pair["pgpass"]}
    s, t = pg_pair["text"]
    assert recon("keygen", "--out", str(tmp_path / "keys"), env=env).returncode == 0
    out = tmp_path / "out"
    r = recon("diff", s, t, "-k", "k", "--segment-rows", "64", "--range-rows", "700", "--out", str(out),
              "--manifest", str(out / "manifest.json"), "--signing-key", str(tmp_path / "keys" / "recon.key"),
              "--json", env=env)
    assert r.returncode == 1, r.stderr
    summary = json.loads(r.stdout)
    plan = summary["plan"]
    assert plan["executor"] == "local" and plan["ranges"] == len(plan["ranges_detail"]) > 1
    import base64

    statement = json.loads(base64.b64decode(json.loads((out / "manifest.json").read_text())["payload"]))
    signed_plan = statement["predicate"]["results"]["plan"]
    assert signed_plan["ranges_detail"] == plan["ranges_detail"]
    assert all(len(r["source_root"]) == 64 and r["rows_read"]["source"] >= r["source_rows"]
               for r in signed_plan["ranges_detail"])
    v = recon("manifest", "verify", str(out / "manifest.json"), "--key", str(tmp_path / "keys" / "recon.pub"),
              "--data", str(out), "--json", env=env)
    assert v.returncode == 0, v.stdout + v.stderr
    snap = out / "snapshot-target.parquet"
    frame = pl.read_parquet(snap)
    frame.with_columns(pl.when(pl.int_range(pl.len()) == frame.height // 2).then(pl.col("n") + 1)
                       .otherwise(pl.col("n")).alias("n")).write_parquet(snap)
    v = recon("manifest", "verify", str(out / "manifest.json"), "--key", str(tmp_path / "keys" / "recon.pub"),
              "--data", str(out), env=env)
    assert v.returncode == 4, v.stdout + v.stderr


def test_every_range_reads_the_state_at_the_start(pg_pair: dict[str, Any], embedded_pg: Any, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows updated, inserted and deleted (committed) after the first range finished are seen by no
    later range: the coordinator's exported snapshot is what every task reads."""
    monkeypatch.setenv("PGPASSFILE", pg_pair["pgpass"])
    dsn = embedded_pg.info.dsn
    with psycopg.connect(dsn, autocommit=True, passfile=pg_pair["pgpass"]) as c:
        c.execute("DROP TABLE IF EXISTS ranges.live")
        c.execute("CREATE TABLE ranges.live AS SELECT * FROM ranges.tt")
    s, _ = pg_pair["text"]
    t = f"{dsn}#ranges.live"
    opts = DiffOptions(source=s, target=t, keys=(("k", "k"),), segment_rows=64)
    cfg = load(None)
    before, d_before = diff(opts, cfg, tmp_path / "before")
    changed: list[int] = []

    def on_progress(p: dict[str, Any]) -> None:
        if p["ranges_done"] == 1 and not changed:
            with psycopg.connect(dsn, autocommit=True, passfile=pg_pair["pgpass"]) as c:
                n = c.execute("UPDATE ranges.live SET v = v + 5 WHERE n IN (1, 2)").rowcount
                n += c.execute("DELETE FROM ranges.live WHERE n = 4").rowcount
                n += c.execute("INSERT INTO ranges.live VALUES ('zz-new', 1, 1), ('A-new', 2, 2)").rowcount
            changed.append(n)

    from dataclasses import replace

    res = run(replace(opts, out_dir=tmp_path / "during", scale=ScaleOptions(range_rows=300, workers=1)), cfg,
              on_progress=on_progress)
    assert changed and changed[0] > 100  # the rows really changed while later ranges were still to run
    assert res.summary["plan"]["ranges"] > 3
    d = pl.read_parquet(tmp_path / "during" / "differences.parquet")
    assert comparable(res.summary) == comparable(before)
    assert d.sort(d.columns).equals(d_before)
    after, _ = diff(opts, cfg, tmp_path / "after")  # a new run sees the changes
    assert after["merkle"]["target_root"] != before["merkle"]["target_root"]
