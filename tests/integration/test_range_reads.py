# ruff: noqa: S608 - the f-strings here are SQL and SOQL over names and values the tests chose
"""Range reads (issue 18): every connector reads one KeyRange of canonical keys, in the run's
snapshot. For each, reading every range of a plan and filtering exactly by ``KeyRange.expr()``
gives back the whole table, once; where a predicate serves the range (a PostgreSQL key predicate,
a Salesforce Id range, a sorted Parquet file's statistics) a read returns only its range's rows.
Expectations come from the canonical keys (``engine.core.normalize``) and Python's own byte
comparisons, never from the connectors' range arithmetic."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.connectors.base import FileRef, ReadRequest, SalesforceRef, parse_reference
from engine.connectors.files.connector import CsvSource, ParquetSource
from engine.connectors.postgres.connector import PostgresSource
from engine.connectors.postgres.keyrange import key_predicate
from engine.connectors.salesforce.connector import SalesforceSource
from engine.core.errors import ServiceUnreachable
from engine.core.normalize import ColumnType, FieldSpec, SideOptions, canonicalize
from engine.core.plan import KeyRange, Plan, plan_ranges
from engine.core.sfid import to18
from tests.salesforce_fixtures import SalesforceStack


def _fields(*keys: tuple[str, str]) -> tuple[FieldSpec, ...]:
    return tuple(FieldSpec(c, c, ColumnType(k), is_key=True) for c, k in keys)  # type: ignore[arg-type]


PG_SIDE = SideOptions()


def _keys(frame: pl.DataFrame, fields: tuple[FieldSpec, ...], opts: SideOptions = PG_SIDE) -> pl.Series:
    """The canonical keys of raw rows, in canonical order (the one definition: normalize)."""
    return canonicalize(frame.select(f.column for f in fields), fields, opts).frame["__key"]


def _plan(keys: pl.Series, every: int, range_rows: int) -> Plan:
    """Boundaries every ``every``-th distinct key (so a key sits on every edge), grouped into tasks."""
    distinct = keys.unique().sort().to_list()
    bounds = distinct[every::every]
    seg = keys.sort().search_sorted(pl.Series(bounds, dtype=pl.Utf8), side="left").to_list()
    counts = [b - a for a, b in zip([0, *seg], [*seg, len(keys)], strict=True)]
    return plan_ranges(bounds, counts, range_rows)


def _read_all(read: Any, plan: Plan, fields: tuple[FieldSpec, ...], keys: pl.Series,
              opts: SideOptions = PG_SIDE, *, exact: bool) -> list[dict[str, Any]]:
    """Read every task's range; the exact filter's rows, concatenated, are every key once; with
    ``exact`` each read returned only its range's rows (meta ``rows``)."""
    got, metas = [], []
    for task in plan.tasks:
        e = read(task.key_range)
        k = _keys(e.frame, fields, opts) if e.frame.height else pl.Series("__key", [], pl.Utf8)
        inside = k.to_frame().filter(task.key_range.expr())["__key"]
        want = keys.to_frame().filter(task.key_range.expr())["__key"]
        assert inside.sort().to_list() == want.sort().to_list(), task
        assert e.meta["rows"] == e.frame.height
        if exact:
            assert e.meta["rows"] == len(want), (task, e.meta)
        got.extend(inside.to_list())
        metas.append(e.meta)
    assert sorted(got) == sorted(keys.to_list())
    empty = read(KeyRange(*EMPTY[fields[0].ctype.kind]))  # a range no row lies in
    assert _keys(empty.frame, fields, opts).to_frame().filter(KeyRange(*EMPTY[fields[0].ctype.kind]).expr()).is_empty() \
        if empty.frame.height else True
    if exact:
        assert empty.meta["rows"] == 0
    return metas


#: per key kind, a range that holds none of the test's keys
EMPTY = {"text": ("k050a", "k050b"), "int": ("2500", "2501"), "date": ("2025-01-01", "2025-01-02"),
         "id": (to18("001CASE000zzz00"), to18("001CASE000zzz01"))}


# -- PostgreSQL -----------------------------------------------------------------------------------
@pytest.fixture()
def pg(embedded_pg, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("PGPASSFILE", str(embedded_pg.paths.pgpass_file))
    monkeypatch.setenv("RECON_PG_EARLY", "0")
    yield embedded_pg.info.dsn


def _sql(dsn: str, *stmts: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        for s in stmts:
            c.execute(s)


def _pg_reader(dsn: str, table: str, fields: tuple[FieldSpec, ...], columns: list[str], snapshot: str | None = None):  # noqa: ANN202
    src = PostgresSource(parse_reference(f"{dsn}#public.{table}"), None)
    return lambda rng: src.read(ReadRequest(columns=columns, key_range=rng, key_fields=fields, snapshot=snapshot))


def _pg_frame(dsn: str, table: str, columns: list[str]) -> pl.DataFrame:
    src = PostgresSource(parse_reference(f"{dsn}#public.{table}"), None)
    return src.read(ReadRequest(columns=columns)).frame


#: text keys whose byte order differs from a linguistic collation's: case, digits, punctuation,
#: prefixes, non-ASCII (all NFC)
TEXT_KEYS = ["a", "A", "ab", "aB", "Ab", "a b", "a-b", "a0", "b", "B", "Z", "z", "é", "É", "e", "f", "_x", "0", "9",
             "10", "zz", "ä", "ñ", "Ω", "~", "a\u00e9"] + [f"k{i:03d}" for i in range(0, 120)] + \
    [f"K{i}" for i in range(0, 60, 7)]


@pytest.mark.parametrize("c_index", [False, True], ids=["no-index", "c-index"])
def test_text_key_of_a_non_c_collation_reads_each_range(pg: str, linguistic: str, c_index: bool) -> None:
    """A key column in a linguistic collation (en_US: "a" < "B"): ranges in byte order, read
    through ``COLLATE "C"``.
    Without an index in that order, the meta says so and names the index; with it, the meta says
    an index serves it and the planner can use it (a Seq Scan is its only choice without)."""
    _sql(pg, "DROP TABLE IF EXISTS rr_text",
         f"CREATE TABLE rr_text (k text COLLATE {linguistic} NOT NULL, v int)", "CREATE INDEX ON rr_text (k)")
    with psycopg.connect(pg, autocommit=True) as c:
        c.cursor().executemany("INSERT INTO rr_text VALUES (%s, %s)", [(k, i) for i, k in enumerate(TEXT_KEYS)])
        if c_index:
            c.execute('CREATE INDEX rr_text_c ON rr_text (k COLLATE "C")')
    fields = _fields(("k", "text"))
    keys = _keys(_pg_frame(pg, "rr_text", ["k", "v"]), fields)
    plan = _plan(keys, 17, 20)
    metas = _read_all(_pg_reader(pg, "rr_text", fields, ["k", "v"]), plan, fields, keys, exact=True)
    inner = [m for m, t in zip(metas, plan.tasks, strict=True) if not t.key_range.whole]
    assert all(m["key_pushdown"] and m["key_predicate"] == 'k in byte order (COLLATE "C")' for m in inner)
    assert all(m["key_index"] is c_index for m in inner)
    if c_index:
        assert all("hint" not in m for m in inner)
    else:
        assert all(m["hint"].endswith('CREATE INDEX ON "public"."rr_text" ("k" COLLATE "C")') for m in inner)
    pred = key_predicate(fields, {"k": "text"}, plan.tasks[1].key_range)
    assert pred.condition is not None
    with psycopg.connect(pg) as c:
        c.execute("SET enable_seqscan = off")
        q = psycopg.sql.SQL("EXPLAIN (FORMAT JSON) SELECT * FROM rr_text WHERE {}").format(pred.condition)
        plan_json = str(c.execute(q).fetchone())
    # served: an index condition on the C-order index; else the whole table (a scan filtered row by row)
    assert ("rr_text_c" in plan_json) is c_index and ("Index Cond" in plan_json) is c_index


def test_text_key_in_a_c_collation_uses_its_own_index(pg: str) -> None:
    """The embedded database's default collation is C: the plain comparison is byte order and its
    ordinary index serves it (no COLLATE clause, which would not match that index)."""
    _sql(pg, "DROP TABLE IF EXISTS rr_ctext", "CREATE TABLE rr_ctext (k text PRIMARY KEY, v int)",
         "INSERT INTO rr_ctext SELECT 'k' || g, g FROM generate_series(1, 300) g")
    fields = _fields(("k", "text"))
    keys = _keys(_pg_frame(pg, "rr_ctext", ["k", "v"]), fields)
    metas = _read_all(_pg_reader(pg, "rr_ctext", fields, ["k", "v"]), _plan(keys, 40, 80), fields, keys, exact=True)
    assert {(m["key_predicate"], m["key_index"]) for m in metas if "key_index" in m} == \
        {("k in byte order (the column's collation)", True)}


def test_id_key_stored_with_15_characters_reads_each_range(pg: str) -> None:
    """Salesforce ids stored in their 15-character form: the canonical key appends the suffix, so
    a 15-character id sorts before its own 18-character form and the lower bound is cut to 15."""
    bodies = [f"001CASE000{c}{d}{e}00" for c in "0aA" for d in "9AZaz" for e in "bB"]
    raw = [b if i % 2 else to18(b) for i, b in enumerate(bodies)]  # half 15, half 18 characters
    _sql(pg, "DROP TABLE IF EXISTS rr_id", "CREATE TABLE rr_id (k varchar(18) PRIMARY KEY, v int)")
    with psycopg.connect(pg, autocommit=True) as c:
        c.cursor().executemany("INSERT INTO rr_id VALUES (%s, %s)", [(k, i) for i, k in enumerate(raw)])
    fields = _fields(("k", "id"))
    keys = _keys(_pg_frame(pg, "rr_id", ["k", "v"]), fields)
    plan = _plan(keys, 5, 6)
    assert any(b[:15] in bodies[1::2] for b in plan.boundaries)  # a bound whose record is stored with 15
    _read_all(_pg_reader(pg, "rr_id", fields, ["k", "v"]), plan, fields, keys, exact=False)


#: integers whose texts share prefixes across signs and lengths, with int8's ends
INT_KEYS = sorted({0, 1, -1, 2, 9, 10, 11, 19, 20, 99, 100, 101, 999, 1000, -9, -10, -11, -100, 12345,
                   2**63 - 1, -(2**63), 10**18, -(10**18), 9 * 10**17, *range(-40, 260, 3)})


def test_integer_key_reads_each_range(pg: str) -> None:
    _sql(pg, "DROP TABLE IF EXISTS rr_int", "CREATE TABLE rr_int (k int8 PRIMARY KEY, v text)")
    with psycopg.connect(pg, autocommit=True) as c:
        c.cursor().executemany("INSERT INTO rr_int VALUES (%s, %s)", [(k, str(k)) for k in INT_KEYS])
    fields = _fields(("k", "int"))
    keys = _keys(_pg_frame(pg, "rr_int", ["k", "v"]), fields)
    metas = _read_all(_pg_reader(pg, "rr_int", fields, ["k", "v"]), _plan(keys, 11, 25), fields, keys, exact=True)
    assert all(m["key_predicate"] == "k as integer intervals" and m["key_index"] for m in metas if "key_index" in m)


def test_integer_predicate_selects_exactly_the_texts_in_range_in_postgresql(pg: str) -> None:
    """Random integers (negatives, 0, 19 digits) and random bounds (texts of integers, and any
    text): the rows PostgreSQL returns for the predicate are exactly those whose decimal text lies
    in [lo, hi), for int8, int4 and int2 columns."""
    rnd = random.Random(18)
    values = sorted({rnd.choice([rnd.randint(-(2**63), 2**63 - 1), rnd.randint(-2000, 2000),
                                 rnd.randint(-(2**31), 2**31 - 1), rnd.randint(-(2**15), 2**15 - 1),
                                 rnd.choice([0, -(2**63), 2**63 - 1, 10**18, -(2**31), 2**15 - 1])])
                     for _ in range(1500)})
    _sql(pg, "DROP TABLE IF EXISTS rr_prop", "CREATE TABLE rr_prop (k8 int8, k4 int4, k2 int2)")
    small = [(v, v if -(2**31) <= v < 2**31 else None, v if -(2**15) <= v < 2**15 else None) for v in values]

    def bound() -> str | None:
        r = rnd.random()
        if r < 0.1:
            return None
        if r < 0.7:
            return str(rnd.choice(values))[: rnd.randint(1, 20)]
        return "".join(rnd.choice("-0123456789/:") for _ in range(rnd.randint(0, 6)))

    with psycopg.connect(pg, autocommit=True) as c:
        c.cursor().executemany("INSERT INTO rr_prop VALUES (%s, %s, %s)", small)
        for _ in range(120):
            rng = KeyRange(bound(), bound())
            for i, (col, base) in enumerate((("k8", "int8"), ("k4", "int4"), ("k2", "int2"))):
                pred = key_predicate(_fields((col, "int")), {col: base}, rng)
                assert (pred.condition is None) is rng.whole
                got = sorted(r[0] for r in c.execute(psycopg.sql.SQL("SELECT {0} FROM rr_prop WHERE {0} IS NOT NULL AND {1}").format(
                    psycopg.sql.Identifier(col), pred.condition or psycopg.sql.SQL("TRUE"))).fetchall())
                texts = [(row[i], str(row[i]).encode()) for row in small if row[i] is not None]
                want = sorted(n for n, t in texts if (rng.lo is None or t >= rng.lo.encode())
                              and (rng.hi is None or t < rng.hi.encode()))
                assert got == want, (col, rng)


def test_date_and_compound_keys_read_each_range(pg: str, linguistic: str) -> None:
    """A date key (a date range) and a (text, int) key (a superset on its first field)."""
    _sql(pg, "DROP TABLE IF EXISTS rr_date", f"CREATE TABLE rr_date (d date, a text COLLATE {linguistic}, n int4, v int)",
         "INSERT INTO rr_date SELECT DATE '2023-12-25' + (g % 97), 'p' || (g % 13), g, g FROM generate_series(1, 400) g")
    dfields = _fields(("d", "date"))
    keys = _keys(_pg_frame(pg, "rr_date", ["d", "v"]), dfields)
    metas = _read_all(_pg_reader(pg, "rr_date", dfields, ["d", "v"]), _plan(keys, 9, 40), dfields, keys, exact=True)
    assert {(m["key_predicate"], m["key_index"]) for m in metas if "key_index" in m} == {("d as a date range", False)}
    cfields = _fields(("a", "text"), ("n", "int"))
    keys = _keys(_pg_frame(pg, "rr_date", ["a", "n", "v"]), cfields)
    metas = _read_all(_pg_reader(pg, "rr_date", cfields, ["a", "n", "v"]), _plan(keys, 45, 60), cfields, keys,
                      exact=False)
    assert {m["key_predicate"] for m in metas if "key_predicate" in m} == \
        {'first key field a between the range\'s first parts (COLLATE "C")'}
    # a superset: each read holds its range and at most the first field's neighbours
    assert sum(m["rows"] for m in metas) < 2 * keys.len()


@pytest.mark.parametrize("reader", ["psql", "adbc", "psycopg"])
def test_range_reads_see_the_run_snapshot(pg: str, reader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row UPDATEd and committed after ``open_snapshot()`` is not seen by range reads in the
    run's snapshot, whichever reader runs (psql children, ADBC, psycopg); a read without it sees
    the new value. ``check()`` passes while the exporting session lives, and raises exit 5 once
    it was terminated."""
    monkeypatch.setenv("RECON_PG_READER", reader)
    _sql(pg, "DROP TABLE IF EXISTS rr_snap", "CREATE TABLE rr_snap (k int8 PRIMARY KEY, v text)",
         "INSERT INTO rr_snap SELECT g, 'old' FROM generate_series(1, 50) g")
    fields = _fields(("k", "int"))
    src = PostgresSource(parse_reference(f"{pg}#public.rr_snap"), None)
    snap = src.open_snapshot()
    try:
        assert snap.token
        _sql(pg, "UPDATE rr_snap SET v = 'new' WHERE k = 20", "INSERT INTO rr_snap VALUES (21000, 'new')")
        rng = KeyRange("2", "3")  # 2, 20..29, 200..299, 2000…
        e = src.read(ReadRequest(columns=["k", "v"], key_range=rng, key_fields=fields, snapshot=snap.token))
        assert e.meta["snapshot_id"] == snap.token and e.meta["snapshot_imported"] is True
        assert e.meta["reader"].startswith(reader)
        assert e.frame.filter(pl.col("k") == 20)["v"].to_list() == ["old"]
        assert sorted(e.frame["k"].to_list()) == [2, *range(20, 30)]
        now = src.read(ReadRequest(columns=["k", "v"], key_range=rng, key_fields=fields))
        assert now.frame.filter(pl.col("k") == 20)["v"].to_list() == ["new"] and 21000 in now.frame["k"].to_list()
        snap.check()
        _sql(pg, f"SELECT pg_terminate_backend({snap.backend_pid})")
        with pytest.raises(ServiceUnreachable) as exc:
            snap.check()
        assert exc.value.exit_code == 5 and "\n" not in str(exc.value) and "was lost" in str(exc.value)
    finally:
        snap.close()


def test_the_snapshot_session_turns_the_idle_timeout_off(pg: str, embedded_pg) -> None:
    """An idle_in_transaction_session_timeout set for the user would end the exporting session
    between tasks; the session sets it to 0 for itself."""
    role = psycopg.conninfo.conninfo_to_dict(pg)["user"]
    _sql(embedded_pg.superuser_dsn, f"ALTER ROLE {role} SET idle_in_transaction_session_timeout = '5min'")
    try:
        src = PostgresSource(parse_reference(f"{pg}#public.rr_snap"), None)
        with src.open_snapshot() as snap, psycopg.connect(pg) as c:
            assert c.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("5min",)  # the user's
            row = c.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (snap.backend_pid,)).fetchone()
            assert row is not None and row[0] == "idle in transaction"
            assert snap._conn is not None
            assert snap._conn.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("0",)
    finally:
        _sql(embedded_pg.superuser_dsn, f"ALTER ROLE {role} RESET idle_in_transaction_session_timeout")


# -- files ----------------------------------------------------------------------------------------
def test_parquet_skips_row_groups_of_a_sorted_file_only(tmp_path: Path) -> None:
    """A file sorted by its key, in row groups of 20: a range reads only the groups its keys can
    be in (``row_groups_read``); the same rows unsorted: every group spans every range, so each
    task reads the whole file (still exact after the task's filter)."""
    keys_in = sorted(TEXT_KEYS, key=lambda s: s.encode())
    table = pa.table({"k": keys_in, "v": list(range(len(keys_in)))})
    sorted_p, shuffled_p = tmp_path / "sorted.parquet", tmp_path / "shuffled.parquet"
    pq.write_table(table, sorted_p, row_group_size=20)
    pq.write_table(table.take(random.Random(3).sample(range(len(keys_in)), len(keys_in))), shuffled_p,
                   row_group_size=20)
    fields = _fields(("k", "text"))
    keys = _keys(pl.from_arrow(table), fields)  # type: ignore[arg-type]
    plan = _plan(keys, 17, 20)
    groups = pq.ParquetFile(sorted_p).metadata.num_row_groups
    for path, pruned in ((sorted_p, True), (shuffled_p, False)):
        src = ParquetSource(FileRef("parquet", str(path)))
        metas = _read_all(lambda rng, s=src: s.read(ReadRequest(columns=["k", "v"], key_range=rng, key_fields=fields)),
                          plan, fields, keys, exact=False)
        read = [m["row_groups_read"] for m in metas]
        assert all(m["row_groups"] == groups and m["key_pushdown"] for m in metas)
        if pruned:
            assert max(read) <= 2 and sum(read) <= groups + len(plan.tasks)
        else:  # nearly every group spans nearly every range
            assert sum(read) >= groups * len(plan.tasks) * 3 // 4


def test_parquet_integer_key_and_csv(tmp_path: Path) -> None:
    """An integer key prunes by the texts between a group's min and max; a CSV file is read whole."""
    p = tmp_path / "ints.parquet"
    ints = sorted(INT_KEYS, key=lambda n: str(n).encode())  # sorted by canonical key
    pq.write_table(pa.table({"k": pa.array(ints, pa.int64()), "v": [str(n) for n in ints]}), p, row_group_size=10)
    fields = _fields(("k", "int"))
    keys = _keys(pl.DataFrame({"k": ints}), fields)
    plan = _plan(keys, 11, 25)
    src = ParquetSource(FileRef("parquet", str(p)))
    metas = _read_all(lambda rng: src.read(ReadRequest(columns=["k", "v"], key_range=rng, key_fields=fields)),
                      plan, fields, keys, exact=False)
    assert sum(m["row_groups_read"] for m in metas) < len(plan.tasks) * metas[0]["row_groups"]
    c = tmp_path / "ints.csv"
    pl.DataFrame({"k": [str(n) for n in ints], "v": [str(n) for n in ints]}).write_csv(c)
    csv = CsvSource(FileRef("csv", str(c)))
    metas = _read_all(lambda rng: csv.read(ReadRequest(columns=["k", "v"], key_range=rng, key_fields=fields)),
                      plan, fields, keys, exact=False)
    assert all(m["rows"] == len(ints) and m["key_pushdown"] is False for m in metas if "key_pushdown" in m)


# -- Salesforce -----------------------------------------------------------------------------------
@pytest.fixture
def sf_env(sf_stack: SalesforceStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[SalesforceStack]:
    sf_stack.use_env(monkeypatch)
    sf_stack.clear_failures()
    sf_stack.reset_store()
    yield sf_stack


def _sf_config(tmp_path: Path, **salesforce: int) -> Any:
    from engine.config import load

    p = tmp_path / "recon.toml"
    p.write_text("[salesforce]\n" + "".join(f"{k} = {v}\n" for k, v in salesforce.items()))
    return load(p)


@pytest.mark.parametrize("rest_max_rows", [0, 5000], ids=["bulk", "rest"])
def test_salesforce_reads_each_id_range(sf_env: SalesforceStack, tmp_path: Path, rest_max_rows: int) -> None:
    """Ids that differ only in case, and across ``9``/``A``/``Z``/``a``: each range read (a Bulk
    2.0 job per range, or REST) returns exactly its Ids, with the bounds in the SOQL."""
    from engine.local.sfapi.sample import synthetic_accounts

    bodies = [f"001CASE000{c}{d}{e}00" for c in "0aA" for d in "9AZaz" for e in "bB"]
    dense = synthetic_accounts(40, start=62 * 62 * 3 - 20, seed=3).column("Id").to_pylist()
    ids = sorted({to18(b) for b in bodies} | set(dense))
    sf_env.load("Account", pa.table({"Id": ids, "Name": [f"n{i}" for i in range(len(ids))]}))
    fields = _fields(("Id", "id"))
    keys = _keys(pl.DataFrame({"Id": ids}), fields, SideOptions(empty_as_null=True))
    plan = _plan(keys, 13, 20)
    assert all(len(b) == 18 for b in plan.boundaries)
    src = SalesforceSource(SalesforceRef("Account"), _sf_config(tmp_path, rest_max_rows=rest_max_rows))
    metas = _read_all(lambda rng: src.read(ReadRequest(columns=["Id", "Name"], key_range=rng, key_fields=fields)),
                      plan, fields, keys, SideOptions(empty_as_null=True), exact=True)
    for m, t in zip(metas, plan.tasks, strict=True):
        if t.key_range.lo is not None:
            assert f"Id >= '{t.key_range.lo}'" in m["soql"][0]
        if t.key_range.hi is not None:
            assert f"Id < '{t.key_range.hi}'" in m["soql"][0]
        assert len(m["bulk_job_ids"]) == (1 if rest_max_rows == 0 else 0)
