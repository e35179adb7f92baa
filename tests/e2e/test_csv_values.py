"""Exact values through `recon diff` with CSV snapshots (issue 16): a CSV is text, typed only from the
other side's schema or its sidecar, never by guessing, so `007` is not `7`, two amounts that differ in
the 17th digit differ, a 20-digit amount is not rounded onto a wrong target; a tolerance on a column
nobody typed is an input error, not silently ignored; a number no decimal column can hold is an input
error naming it, not a traceback. CSV against CSV needs no service; CSV against PostgreSQL uses the
embedded one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]

# the review's three values: a key with leading zeros, amounts 0.01 apart in the 17th digit, and a
# 20-digit amount next to the float it would have become (12345678901234567890.12 as a double)
SOURCE = "Id,code,amount\n007,00123,12345678901234567.01\nA20,1,12345678901234567890.12\nB,2,5.00\n"
TARGET = "Id,code,amount\n7,123,12345678901234567.01\nA20,1,12345678901234567168.00\nB,2,5.00\n007,00123,12345678901234567.02\n"


def recon(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "SF_", "RECON_"))}
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "engine.cli.main", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=120)


def one_line(res: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def csv_pair(tmp_path: Path, *, typed: bool) -> tuple[Path, Path]:
    s, t = tmp_path / "s.csv", tmp_path / "t.csv"
    s.write_text(SOURCE)
    t.write_text(TARGET.replace("007,00123,12345678901234567.02\n", ""))
    t.with_name("t2.csv").write_text(TARGET)
    if typed:
        (tmp_path / "s.csv.json").write_text(json.dumps({"schema": {"amount": {"kind": "decimal", "scale": 2}}}))
    return s, t


def diff_json(*args: str, code: int, env: dict[str, str] | None = None) -> dict:
    """The diff's JSON; ``code`` is the exit the case must give (0: the sides agree, 1: they differ)."""
    res = recon("diff", *args, "--json", env=env)
    assert res.returncode == code, (res.returncode, res.stderr)
    return json.loads(res.stdout)


# -- 16.2: nothing is typed by guessing ------------------------------------------------------------
def test_csv_against_csv_keeps_every_value_as_written(tmp_path: Path) -> None:
    s, t = csv_pair(tmp_path, typed=True)
    d = diff_json(f"csv:{s}", f"csv:{t}", "-k", "Id", "-c", "amount", "-c", "code", code=1)
    assert (d["missing_in_target"], d["missing_in_source"]) == (1, 1)  # 007 and 7 are two keys
    assert d["columns"]["amount"]["mismatched"] == 1  # the 20-digit amount is not its float
    assert d["columns"]["amount"]["abs_variance"] == "722.12"  # …7168.00 − …7890.12, exactly
    assert d["compared_columns"] == {"amount": "decimal(2)", "code": "text"}
    # 007 against 007: amounts 0.01 apart in the 17th digit differ, and `00123` stays `00123`
    d = diff_json(f"csv:{s}", f"csv:{t.with_name('t2.csv')}", "-k", "Id", "-c", "amount", "-c", "code", code=1)
    assert d["missing_in_target"] == 0 and d["columns"]["amount"]["mismatched"] == 2
    assert Decimal(d["columns"]["amount"]["abs_variance"]) == Decimal("722.13")
    assert d["columns"]["code"]["mismatched"] == 0


def test_csv_without_types_compares_text_exactly(tmp_path: Path) -> None:
    s, t = csv_pair(tmp_path, typed=False)
    d = diff_json(f"csv:{s}", f"csv:{t.with_name('t2.csv')}", "-k", "Id", "-c", "amount", code=1)
    assert d["compared_columns"] == {"amount": "text"}
    assert (d["missing_in_source"], d["columns"]["amount"]["mismatched"]) == (1, 2)


@pytest.fixture(scope="module")
def pg(embedded_pg) -> dict[str, str]:
    """The target of the review's values in PostgreSQL: a text key, an int code, numeric(38,2) amounts,
    and an unconstrained numeric holding 1E+100."""
    with psycopg.connect(embedded_pg.info.socket_dsn, autocommit=True) as c:
        c.execute("DROP SCHEMA IF EXISTS csvval CASCADE")
        c.execute("CREATE SCHEMA csvval")
        c.execute('CREATE TABLE csvval.t ("Id" text COLLATE "C", code int, amount numeric(38,2))')
        c.execute("INSERT INTO csvval.t VALUES ('7', 123, 12345678901234567.01), "
                  "('A20', 1, 12345678901234567168.00), ('B', 2, 5.00), ('007', 123, 12345678901234567.02)")
        c.execute('CREATE TABLE csvval.huge ("Id" text COLLATE "C", amount numeric)')
        c.execute("INSERT INTO csvval.huge VALUES ('B', 1E+100)")
        c.execute(f"GRANT USAGE ON SCHEMA csvval TO {embedded_pg.creds['postgres_user']}")
        c.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA csvval TO {embedded_pg.creds['postgres_user']}")
    env = {"PGPASSFILE": str(embedded_pg.paths.pgpass_file)}
    return {"t": f"{embedded_pg.info.dsn}#csvval.t", "huge": f"{embedded_pg.info.dsn}#csvval.huge",
            "env": json.dumps(env)}


def test_csv_against_postgres_is_typed_from_the_table(tmp_path: Path, pg: dict[str, str]) -> None:
    s, _ = csv_pair(tmp_path, typed=False)  # no sidecar: numeric(38,2) and int come from PostgreSQL
    d = diff_json(f"csv:{s}", pg["t"], "-k", "Id", "-c", "amount", "-c", "code", env=json.loads(pg["env"]), code=1)
    assert d["compared_columns"] == {"amount": "decimal(2)", "code": "int"}
    assert (d["missing_in_target"], d["missing_in_source"]) == (0, 1)  # 7 is only in the table
    assert d["columns"]["amount"]["mismatched"] == 2  # 007's …567.01 vs …567.02, A20's 20 digits vs its float
    assert Decimal(d["columns"]["amount"]["abs_variance"]) == Decimal("722.13")
    assert d["columns"]["code"]["mismatched"] == 0  # `00123` read as the table's int is 123


# -- 16.s-tolerance: a tolerance needs a number type -------------------------------------------------
def test_a_tolerance_on_an_untyped_csv_column_is_exit_2_saying_how_to_type_it(tmp_path: Path) -> None:
    s, t = csv_pair(tmp_path, typed=False)
    res = recon("diff", f"csv:{s}", f"csv:{t}", "-k", "Id", "-c", "amount", "--tolerance", "amount=1000")
    line = one_line(res, 2, "--tolerance", "'amount'", "compared as text", "s.csv.json", '"schema"')
    assert "decimal:2" in line
    (tmp_path / "s.csv.json").write_text(json.dumps({"schema": {"amount": "decimal:2"}}))  # the fix it names
    d = diff_json(f"csv:{s}", f"csv:{t}", "-k", "Id", "-c", "amount", "--tolerance", "amount=1000", code=1)
    assert d["columns"]["amount"]["mismatched"] == 0


@pytest.mark.parametrize(("sidecar", "needle"), [
    ('{"schema": {"amout": "decimal:2"}}', "'amout'"),
    ('{"schema": {"amount": "money"}}', "'money'"),
    ('{"schema": {"amount": {"kind": "decimal", "scale": 40}}}', "scale"),
    ('{"schema": ', "cannot read the sidecar"),
])
def test_a_wrong_sidecar_is_exit_2_naming_it(tmp_path: Path, sidecar: str, needle: str) -> None:
    s, t = csv_pair(tmp_path, typed=False)
    (tmp_path / "s.csv.json").write_text(sidecar)
    one_line(recon("diff", f"csv:{s}", f"csv:{t}", "-k", "Id"), 2, "s.csv.json", needle)


def test_snapshot_writes_the_sidecar_the_diff_reads(tmp_path: Path) -> None:
    """One format: `recon snapshot` of a typed CSV writes PATH.json; a diff of the Parquet snapshot
    takes its types from it (the Parquet columns are strings) and recomputes the same root."""
    s, t = csv_pair(tmp_path, typed=True)
    snap = tmp_path / "snap.parquet"
    res = recon("snapshot", f"csv:{s}", "-k", "Id", "--out", str(snap), "--json")
    assert res.returncode == 0, res.stderr
    side = json.loads((tmp_path / "snap.parquet.json").read_text())
    assert side["schema"]["amount"] == {"kind": "decimal", "scale": 2, "native_type": "csv"}
    d = diff_json(f"parquet:{snap}", f"csv:{t}", "-k", "Id", "-c", "amount", "-c", "code", "--tolerance", "amount=1",
                  code=1)
    live = diff_json(f"csv:{s}", f"csv:{t}", "-k", "Id", "-c", "amount", "-c", "code", "--tolerance", "amount=1",
                     code=1)
    assert d["compared_columns"]["amount"] == "decimal(2)"
    assert d["merkle"]["source_root"] == live["merkle"]["source_root"]
    full = diff_json(f"parquet:{snap}", f"csv:{s}", "-k", "Id", code=0)  # the same rows
    assert full["merkle"]["source_root"] == side["merkle"]["root"] and full["mismatched"] == 0


# -- 16.s-1e100: a number no decimal column holds ----------------------------------------------------
def test_1e100_in_a_csv_decimal_column_is_exit_2_naming_value_and_column(tmp_path: Path) -> None:
    s, t = csv_pair(tmp_path, typed=True)
    s.write_text(SOURCE.replace("5.00", "1E+100"))
    one_line(recon("diff", f"csv:{s}", f"csv:{t}", "-k", "Id"), 2, "'1E+100'", "'amount'", "s.csv")
    one_line(recon("snapshot", f"csv:{s}", "-k", "Id", "--out", str(tmp_path / "x.parquet")), 2, "'1E+100'",
             "'amount'")
    assert not (tmp_path / "x.parquet").exists()  # nothing half-written


def test_1e100_against_or_in_postgres_is_exit_2(tmp_path: Path, pg: dict[str, str]) -> None:
    s, _ = csv_pair(tmp_path, typed=False)
    s.write_text(SOURCE.replace("5.00", "1E+100"))
    env = json.loads(pg["env"])
    one_line(recon("diff", f"csv:{s}", pg["t"], "-k", "Id", "-c", "amount", env=env), 2, "'1E+100'", "'amount'")
    s.write_text(SOURCE)
    (tmp_path / "s.csv.json").write_text(json.dumps({"schema": {"amount": "decimal:2"}}))
    one_line(recon("diff", f"csv:{s}", pg["huge"], "-k", "Id", "-c", "amount", env=env), 2, "'amount'", "csvval.huge")


@pytest.mark.parametrize(("value", "needle"), [
    ("NaN", "not a finite number"),  # a tolerance is decimal text too: a Polars panic and exit 1 before
    ("Infinity", "not a finite number"),
    ("-1", "negative"),
])
def test_a_tolerance_no_decimal_column_can_hold_is_exit_2_naming_it(tmp_path: Path, value: str, needle: str) -> None:
    s, t = csv_pair(tmp_path, typed=True)
    one_line(recon("diff", f"csv:{s}", f"csv:{t}", "-k", "Id", "--tolerance", f"amount={value}"), 2,
             "--tolerance", repr(value), needle)
    cfg = tmp_path / "recon.toml"
    cfg.write_text(f'[mapping.m]\nsource = "csv:{s}"\ntarget = "csv:{t}"\nkey = ["Id"]\n'
                   f'tolerance = {{ amount = "{value}" }}\n')
    one_line(recon("diff", "-C", str(cfg), "--mapping", "m"), 2, "tolerance.amount", repr(value), needle)


@pytest.mark.parametrize(("value", "mismatched"), [("1e-100", 2), ("0.011", 1), ("1e30", 0), ("1E+100", 0)])
def test_any_finite_tolerance_applies_at_the_columns_scale(tmp_path: Path, value: str, mismatched: int) -> None:
    """A tolerance finer than the scale absorbs nothing (0.011 at scale 2 is 0.01), one larger than any
    difference absorbs every difference: neither is a crash (1E+100 and 1e-100 were exit 70)."""
    s, t = csv_pair(tmp_path, typed=True)
    t2 = f"csv:{t.with_name('t2.csv')}"
    d = diff_json(f"csv:{s}", t2, "-k", "Id", "-c", "amount", "--tolerance", f"amount={value}", code=1)
    assert d["columns"]["amount"]["mismatched"] == mismatched
    (tmp_path / "s.csv.json").write_text(json.dumps({"schema": {"code": "int"}}))
    d = diff_json(f"csv:{s}", t2, "-k", "Id", "-c", "code", "--tolerance", f"code={value}", code=1)
    assert d["columns"]["code"]["mismatched"] == 0  # 00123 is 123 as an int
