"""The PostgreSQL source: the psql-pipe reader and the in-process psycopg reader read the same
snapshot into the same typed frame, and fail with the same one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from engine.connectors.base import parse_reference
from engine.connectors.postgres import copy_stream
from engine.connectors.postgres import source as pg_source
from engine.core.errors import UsageError

ROWS = """
INSERT INTO src_read VALUES
 ('001A', 'plain', 1.50, 7, '2026-01-02 03:04:05.123456', '2026-01-02 03:04:05+02', true, '2026-01-02', 'ab '),
 ('001B', '', NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 ('001C', NULL, -0.00, -9, '1999-12-31 23:59:59', '1999-12-31 23:59:59-05', false, '1999-12-31', 'x'),
 ('001D', 'comma, "quote" and
newline', 123456789012.34, 0, '2026-11-26 00:00:00', '2026-11-26 00:00:00Z', true, '2026-11-26', 'é'),
 ('001E', 'Ünïcödé ✓', 0.01, 42, '2026-01-01 00:00:00', '2026-01-01 00:00:00Z', NULL, NULL, '')
"""


@pytest.fixture()
def table(embedded_pg, monkeypatch: pytest.MonkeyPatch) -> str:
    # setenv, not os.environ: a passfile left behind would let a later test's empty password connect
    monkeypatch.setenv("PGPASSFILE", str(embedded_pg.paths.pgpass_file))
    with psycopg.connect(embedded_pg.info.dsn, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS src_read")
        c.execute("CREATE TABLE src_read (id text, label text, amount numeric(14,2), n int8, ts timestamp, "
                  "tstz timestamptz, flag bool, d date, pad char(3))")
        c.execute(ROWS)
    return f"{embedded_pg.info.dsn}#public.src_read"


def _read(ref_text: str, reader: str, where: str | None = None):  # noqa: ANN202
    old = os.environ.get("RECON_PG_READER")
    os.environ["RECON_PG_READER"] = reader
    try:
        return pg_source.extract(parse_reference(ref_text), None, where)
    finally:
        if old is None:
            os.environ.pop("RECON_PG_READER", None)
        else:
            os.environ["RECON_PG_READER"] = old


@pytest.mark.parametrize("other", ["psycopg", "adbc"])
def test_every_reader_gives_the_same_frame(table: str, other: str) -> None:
    a, b = _read(table, "psql"), _read(table, other)
    assert a.meta["reader"] == "psql" and b.meta["reader"] == other
    assert a.frame.equals(b.frame, null_equal=True)
    assert a.frame.schema == b.frame.schema and a.frame.height == 5
    row = a.frame.filter(a.frame["id"] == "001B").row(0, named=True)
    assert row["label"] == "" and row["amount"] is None  # empty string and NULL stay apart
    first = a.frame.filter(a.frame["id"] == "001A").row(0, named=True)
    assert str(first["tstz"]) == "2026-01-02 01:04:05+00:00" and str(first["ts"]) == "2026-01-02 03:04:05.123456"
    assert first["pad"] == "ab"  # char(n): trailing blanks are padding, not value
    assert a.frame.filter(a.frame["id"] == "001D")["label"].item() == 'comma, "quote" and\nnewline'


def test_psql_reader_reads_the_exported_snapshot(table: str) -> None:
    got = _read(table, "psql")
    assert got.meta["snapshot_id"] and got.meta["rows"] == 5


@pytest.mark.parametrize("reader", ["psql", "adbc", "psycopg"])
def test_reader_errors_are_one_line_usage_errors(table: str, reader: str) -> None:
    with pytest.raises(UsageError, match="rejected the query") as exc:
        _read(table, reader, where="nope = 1")
    assert "\n" not in str(exc.value) and "nope" in str(exc.value)
    empty = _read(table, reader, where="false")
    assert empty.frame.height == 0 and empty.frame.columns == _read(table, reader).frame.columns


def test_adbc_reads_the_snapshot_the_read_exported(table: str, embedded_pg, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row committed after the snapshot was exported must not be read: ADBC's own connection
    joins the same snapshot (psql's children are checked the same way by the ledger and diff tests)."""
    monkeypatch.setenv("RECON_PG_READER", "adbc")
    read = pg_source.PgRead(parse_reference(table), None, None)
    with read:
        with psycopg.connect(embedded_pg.info.dsn, autocommit=True) as c:
            c.execute("INSERT INTO src_read (id, label) VALUES ('001Z', 'late')")
        frame, reader = read.collect()
    assert reader == "adbc"
    assert frame.height == 5 and "001Z" not in frame["id"].to_list()
    assert _read(table, "adbc").frame.height == 6  # a new read sees it



def test_psql_reader_takes_a_password_from_the_dsn_without_putting_it_on_the_command_line(
        embedded_pg, table: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    info, creds = embedded_pg.info, embedded_pg.creds
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))  # only the DSN's password can work
    seen: list[list[str]] = []
    real = copy_stream.subprocess.Popen

    def spy(cmd, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append(list(cmd))
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(copy_stream.subprocess, "Popen", spy)
    pw = creds["postgres_password"]
    dsn = f"postgresql://{info.user}:{pw}@{info.host}:{info.port}/{info.database}#public.src_read"
    got = _read(dsn, "psql")
    assert got.frame.height == 5 and seen
    assert all(pw not in part for cmd in seen for part in cmd)
    assert pw not in repr(got.meta)


def test_parallel_page_ranges_read_every_row_once(embedded_pg, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSFILE", str(embedded_pg.paths.pgpass_file))
    with psycopg.connect(embedded_pg.info.dsn, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS big_read")
        c.execute("CREATE TABLE big_read (id text, v int8, pad text)")
        c.execute("INSERT INTO big_read SELECT lpad(g::text, 6, '0'), g, repeat('x', 200) FROM generate_series(1, 3000) g")
        c.execute("DELETE FROM big_read WHERE v % 7 = 0")  # holes in the pages
        pages = c.execute("SELECT pg_relation_size('big_read') / 8192").fetchone()[0]
    assert pages >= 3
    ref = f"{embedded_pg.info.dsn}#public.big_read"
    monkeypatch.setattr(pg_source, "PARALLEL_MIN_PAGES", 1)
    monkeypatch.setenv("RECON_PG_PARALLEL", "3")
    par = _read(ref, "psql")
    filtered = _read(ref, "psql", where="v > 100")
    monkeypatch.setenv("RECON_PG_PARALLEL", "1")
    one = _read(ref, "psql")
    assert par.meta["reader"] == "psql x3" and one.meta["reader"] == "psql"
    assert par.frame.height == one.frame.height == 3000 - 3000 // 7
    assert par.frame.sort("id").equals(one.frame.sort("id"))
    assert filtered.frame.height == one.frame.filter(one.frame["v"] > 100).height
    monkeypatch.setenv("RECON_PG_PARALLEL", "many")
    with pytest.raises(UsageError, match="RECON_PG_PARALLEL"):
        _read(ref, "psql")


def test_a_psql_that_cannot_connect_hands_over_to_the_next_reader(
        table: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """psql, then ADBC, then the in-process reader: each that cannot connect hands over."""
    fake = tmp_path / "psql"
    fake.write_text("#!/bin/sh\necho 'psql: error: connection to server at \"x\" failed: too many clients' >&2\nexit 2\n")
    fake.chmod(0o755)
    monkeypatch.setattr(pg_source, "_psql_binary", lambda: str(fake))
    got = pg_source.extract(parse_reference(table), None, None)
    assert got.meta["reader"] == "adbc" and got.frame.height == 5

    def cannot(*_a: object, **_k: object) -> None:
        raise copy_stream._AdbcCannotConnect("OperationalError")

    monkeypatch.setattr(pg_source, "_read_via_adbc", cannot)
    got = pg_source.extract(parse_reference(table), None, None)
    assert got.meta["reader"] == "psycopg" and got.frame.height == 5


def _connector_read(ref_text: str, columns: list[str]):  # noqa: ANN202
    """A read as the diff makes it: through the connector, which takes a read started early."""
    from engine.config import load
    from engine.connectors.base import ReadRequest
    from engine.connectors.registry import source_for

    return source_for(parse_reference(ref_text), load(None)).read(ReadRequest(columns))


def _psql_children() -> list[str]:
    """Running psql COPY children of this process."""
    import subprocess

    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(os.getpid())], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if "psql" in ln and "COPY" in ln]


def test_a_read_started_early_is_taken_and_reads_the_same_rows(table: str, tmp_path: Path) -> None:
    """`recon diff` starts the PostgreSQL read before the data libraries load; the diff must read
    exactly what a regular read gives, and say that it was started early."""
    import polars as pl

    from engine.config import load
    from engine.connectors.postgres import early

    regular = _read(table, "psql")
    other = tmp_path / "other.parquet"
    pl.DataFrame({"ID": ["x"], "amount": [1.0], "label": ["y"]}).write_parquet(other)  # names match case-insensitively
    early.start_for_diff(f"parquet:{other}", table, keys=(("ID", "id"),), columns=(), source_where=None,
                         target_where=None, config=load(None))
    got = _connector_read(table, ["id", "label", "amount"])
    assert got.meta["started_early"] is True and regular.meta["started_early"] is False
    assert got.frame.columns == ["id", "label", "amount"]
    assert got.frame.equals(regular.frame.select("id", "label", "amount"), null_equal=True)
    assert not _psql_children()


def test_an_early_read_missing_a_wanted_column_is_stopped_and_read_again(table: str, tmp_path: Path) -> None:
    import polars as pl

    from engine.config import load
    from engine.connectors.postgres import early

    other = tmp_path / "other.parquet"
    pl.DataFrame({"id": ["x"], "label": ["y"]}).write_parquet(other)  # the guess: id and label only
    early.start_for_diff(f"parquet:{other}", table, keys=(("id", "id"),), columns=(), source_where=None,
                         target_where=None, config=load(None))
    got = _connector_read(table, ["id", "label", "n"])  # n was not in the guess
    assert got.meta["started_early"] is False
    assert got.frame.columns == ["id", "label", "n"] and got.frame.height == 5
    assert not _psql_children()


def test_an_early_read_nobody_takes_is_stopped(table: str, tmp_path: Path) -> None:
    import time

    import polars as pl

    from engine.config import load
    from engine.connectors.postgres import early

    other = tmp_path / "other.parquet"
    pl.DataFrame({"id": ["x"]}).write_parquet(other)
    early.start_for_diff(f"parquet:{other}", table, keys=(("id", "id"),), columns=(), source_where=None,
                         target_where=None, config=load(None))
    early.discard()
    deadline = time.monotonic() + 10
    while _psql_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _psql_children()
    assert early.take(parse_reference(table), None, None) is None  # nothing left behind


def test_an_early_read_reports_bad_credentials_like_a_regular_one(embedded_pg, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.config import load
    from engine.connectors.postgres import early

    info = embedded_pg.info
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    monkeypatch.delenv("PGPASSWORD", raising=False)
    bad = f"postgresql://{info.user}:wrong-secret@{info.host}:{info.port}/{info.database}#public.src_read"
    early.start_for_diff("parquet:/nonexistent.parquet", bad, keys=(("id", "id"),), columns=(("a", "amount"),),
                         source_where=None, target_where=None, config=load(None))
    with pytest.raises(UsageError, match="refused the password") as exc:
        _connector_read(bad, ["id", "amount"])
    assert "wrong-secret" not in str(exc.value)
    assert early.take(parse_reference(bad), None, ["id", "amount"]) is None  # the early read was taken


def test_a_copy_child_drain_holds_a_bounded_amount_while_nobody_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The drain keeps the server streaming before the parser starts, but a parser slower than the
    server must not let it buffer the whole table: it stops at DRAIN_LIMIT and resumes on reads.

    No window is timed: the test waits until the drain pauses for room (or the child's output is
    all read, which only a drain ignoring its limit gets to), then checks what it holds."""
    import time

    limit = 2 << 20
    monkeypatch.setattr(copy_stream, "DRAIN_LIMIT", limit)  # read where _Child is defined
    child = copy_stream._Child(["head", "-c", str(40 << 20), "/dev/zero"], dict(os.environ))

    def wait_paused_or_eof() -> int:
        deadline = time.monotonic() + 30
        while True:
            with child._cond:
                if child.paused or child._eof:
                    return child._held if child.paused else -child._held
            assert time.monotonic() < deadline, f"the drain neither paused nor finished ({child._held} bytes held)"
            time.sleep(0.01)

    held = wait_paused_or_eof()
    assert limit <= held <= limit + (1 << 20), f"the drain did not stop at its limit: {held} bytes"  # 40 MiB on offer
    first = child.read(1 << 20)  # a read makes room: the drain resumes, and pauses at the limit again
    assert first == bytes(1 << 20)
    held = wait_paused_or_eof()
    assert limit <= held <= limit + (1 << 20), f"the drain did not stop at its limit again: {held} bytes"
    total = len(first)
    while block := child.read(1 << 22):
        total += len(block)
    rc, _ = child.finish()
    assert rc == 0 and total == 40 << 20 and child._held == 0


def test_as_of_on_the_warehouse_side_counts_later_changes_in_flight(embedded_pg, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`--as-of T` with the mapping's `target_updated_at`: warehouse rows changed after T are in
    flight, not differences; a row changed before T that differs is still a difference."""
    from datetime import UTC, datetime
    from decimal import Decimal

    import polars as pl

    from engine.app.reconcile import DiffRequest, run_diff
    from engine.config import load

    monkeypatch.setenv("PGPASSFILE", str(embedded_pg.paths.pgpass_file))
    with psycopg.connect(embedded_pg.info.dsn, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS wh_asof")
        c.execute("CREATE TABLE wh_asof (id text PRIMARY KEY, v numeric(12,2), updated_at timestamptz)")
        c.execute("INSERT INTO wh_asof VALUES ('a', 1.00, '2026-09-01Z'), ('b', 2.50, '2026-09-01Z'), "
                  "('c', 9.99, '2026-09-01Z'), ('d', 7.00, '2026-10-02Z'), ('e', 5.00, '2026-10-03Z')")
    src = tmp_path / "sf.parquet"
    pl.DataFrame({"id": ["a", "b", "c", "d", "e"], "v": [Decimal("1.00"), Decimal("2.50"), Decimal("3.00"),
                                                         Decimal("4.00"), Decimal("5.00")]}).write_parquet(src)
    req = DiffRequest(source=f"parquet:{src}", target=f"{embedded_pg.info.dsn}#public.wh_asof",
                      keys=(("id", "id"),), columns=(("v", "v"),), as_of=datetime(2026, 9, 30, tzinfo=UTC),
                      target_updated_at="updated_at")
    r = run_diff(req, load(None)).result
    # c differs and was last changed before T: a difference; d and e changed after T: in flight
    assert (r.mismatched, r.in_flight, r.unchanged) == (1, 2, 2)
    assert r.differences["key"].to_list() == ["c"]
    without = run_diff(DiffRequest(source=req.source, target=req.target, keys=req.keys, columns=req.columns),
                       load(None)).result
    assert (without.mismatched, without.in_flight) == (2, 0)  # d differs when nothing is in flight


@pytest.mark.parametrize("reader", ["psql", "adbc", "psycopg"])
def test_a_config_passfile_reaches_every_connection_and_leaves_the_environment_alone(
        embedded_pg, table: str, reader: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`[postgres] passfile` is handed to each connection (psycopg's parameter, the psql children's
    environment, ADBC's connection string), never put into os.environ: with no PGPASSWORD,
    PGPASSFILE or ~/.pgpass, every reader still logs in, and the process environment is unchanged."""
    from engine.config import load
    from engine.connectors.base import ReadRequest
    from engine.connectors.registry import source_for

    monkeypatch.delenv("PGPASSFILE", raising=False)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.pgpass to fall back on
    monkeypatch.setenv("RECON_PG_READER", reader)
    cfg = tmp_path / "recon.toml"
    cfg.write_text(f'[postgres]\npassfile = "{embedded_pg.paths.pgpass_file}"\n')
    before = dict(os.environ)
    got = source_for(parse_reference(table), load(cfg)).read(ReadRequest(["id", "amount"]))
    assert got.meta["reader"].startswith(reader) and got.frame.height == 5
    assert dict(os.environ) == before
    with pytest.raises(UsageError, match="asks for a password and none was given"):  # the file was the only way in
        source_for(parse_reference(table), load(None)).read(ReadRequest(["id", "amount"]))


def test_a_dsn_with_sslpassword_is_never_read_by_psql_children(table: str) -> None:
    """psql gets its connection string on its command line, where `ps` shows it; the password goes
    through the environment, but sslpassword has no environment variable: such a DSN is read in
    process (ADBC), never by children (review of issue 16)."""
    dsn, rest = table.split("#", 1)
    sep = "&" if "?" in dsn else "?"
    got = _read(f"{dsn}{sep}sslpassword=k3y-s3cret#{rest}", "psql")
    assert got.meta["reader"] != "psql" and not got.meta["reader"].startswith("psql")
    assert got.frame.height == 5
