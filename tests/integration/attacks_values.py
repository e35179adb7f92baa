# ruff: noqa: S608 - the setup's SQL names the test's own fixed schema and tables
"""Issue 16, exact values (items 16.2, 16.s-tolerance, 16.s-abs-total, 16.s-1e100): what a CSV
snapshot or a warehouse value can do to `recon diff`'s numbers.

The victims live in schema ``vals16`` of the scenario's warehouse, recreated before each row:
``vals16.t`` holds the review's values (a text key ``7`` next to ``007``, amounts 0.01 apart in the
17th digit, a 20-digit amount stored as the float it would have been rounded to), ``vals16.dups``
the population of the abs-total row and ``vals16.huge`` an unconstrained numeric holding 1E+100.
Every row leaves them intact and writes no half output.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import psycopg

from tests.integration.attacks import Attack, Run
from tests.stack_fixtures import Stack

SOURCE = "Id,code,amount\n007,00123,12345678901234567.01\nA20,1,12345678901234567890.12\nB,2,5.00\n"
T_ROWS = [("007", 123, "12345678901234567.02"), ("7", 123, "12345678901234567.01"),
          ("A20", 1, "12345678901234567168.00"), ("B", 2, "5.00")]
DUPS_SOURCE = "Id,amount\na,10.00\nb,20.00\nb,20.00\nc,1000.00\nd,-5.00\n"  # b twice, c not in the target
DUPS_ROWS = [("a", "11.00"), ("b", "20.00"), ("d", "-5.00")]

_SETUP = """
CREATE SCHEMA IF NOT EXISTS vals16;
DROP TABLE IF EXISTS vals16.t, vals16.dups, vals16.huge;
CREATE TABLE vals16.t ("Id" text COLLATE "C", code int, amount numeric(38,2));
CREATE TABLE vals16.dups ("Id" text COLLATE "C", amount numeric(18,2));
CREATE TABLE vals16.huge ("Id" text COLLATE "C", amount numeric);
INSERT INTO vals16.huge VALUES ('B', 1E+100);
"""


def _setup(stack: Stack, tmp: Path) -> dict:
    with psycopg.connect(stack.endpoints["postgres_socket_dsn"], autocommit=True) as conn:
        conn.execute(_SETUP)
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO vals16.t VALUES (%s, %s, %s::numeric)", T_ROWS)
            cur.executemany("INSERT INTO vals16.dups VALUES (%s, %s::numeric)", DUPS_ROWS)
    (tmp / "s.csv").write_text(SOURCE)
    (tmp / "t.csv").write_text("Id,code,amount\n7,123,12345678901234567.01\nA20,1,12345678901234567168.00\nB,2,5.00\n")
    (tmp / "dups.csv").write_text(DUPS_SOURCE)
    (tmp / "big.csv").write_text(SOURCE.replace("5.00", "1E+100"))
    return {"dsn": stack.endpoints["postgres_dsn"]}


def _typed(tmp: Path, name: str = "s.csv") -> None:
    (tmp / f"{name}.json").write_text(json.dumps({"schema": {"amount": {"kind": "decimal", "scale": 2}}}))


def _diff(source: str, target: str, *extra: str, sidecar: str | None = None):  # noqa: ANN202
    """`recon diff` of a file against a file or a vals16 table, JSON and --out into the row's dir."""
    def command(stack: Stack, tmp: Path, ctx: dict) -> list[str]:
        if sidecar:
            _typed(tmp, sidecar)
        tgt = f"{ctx['dsn']}#vals16.{target}" if "." not in target else f"csv:{tmp / target}"
        return ["diff", "-C", str(stack.config), f"csv:{tmp / source}", tgt, "-k", "Id", *extra, "--json",
                "--out", str(tmp / "out")]
    return command


def _tables_intact(stack: Stack) -> None:
    with psycopg.connect(stack.endpoints["postgres_socket_dsn"]) as conn:
        t = conn.execute('SELECT "Id", code, amount::text FROM vals16.t ORDER BY "Id"').fetchall()
        d = conn.execute('SELECT "Id", amount::text FROM vals16.dups ORDER BY "Id"').fetchall()
        h = conn.execute("SELECT amount = 1E+100 FROM vals16.huge").fetchall()
    assert t == T_ROWS and d == DUPS_ROWS and h == [(True,)], (t, d, h)


def _summary(run: Run, tmp: Path) -> dict:
    s = json.loads(run.stdout)
    assert json.loads((tmp / "out" / "summary.json").read_text())["columns"] == s["columns"]
    return s


def _no_output(needles: tuple[str, ...]):  # noqa: ANN202
    def after(stack: Stack, tmp: Path, ctx: dict, run: Run) -> None:
        _tables_intact(stack)
        assert not (tmp / "out").exists(), "an error must leave no half-written output"
        for n in needles:
            assert n in run.stderr, (n, run.stderr)
    return after


def _csv_vs_postgres(stack: Stack, tmp: Path, ctx: dict, run: Run) -> None:
    _tables_intact(stack)
    s = _summary(run, tmp)
    assert s["compared_columns"] == {"amount": "decimal(2)", "code": "int"}  # typed from the table
    assert (s["missing_in_target"], s["missing_in_source"]) == (0, 1)  # 007 is not 7
    assert s["columns"]["amount"]["mismatched"] == 2  # the 17th digit, the 20-digit amount vs its float
    assert Decimal(s["columns"]["amount"]["abs_variance"]) == Decimal("722.13")
    assert s["columns"]["code"]["mismatched"] == 0  # `00123` as the table's int is 123


def _csv_vs_csv(stack: Stack, tmp: Path, ctx: dict, run: Run) -> None:
    s = _summary(run, tmp)
    assert s["compared_columns"] == {"amount": "decimal(2)", "code": "text"}  # the sidecar types amount only
    assert (s["missing_in_target"], s["missing_in_source"]) == (1, 1)  # 007 and 7 are two keys
    assert s["columns"]["amount"]["abs_variance"] == "722.12" and s["columns"]["code"]["mismatched"] == 0


def _abs_total(stack: Stack, tmp: Path, ctx: dict, run: Run) -> None:
    _tables_intact(stack)
    s = _summary(run, tmp)
    assert (s["duplicate_keys"]["source"], s["missing_in_target"], s["mismatched"]) == (1, 1, 2)
    col = s["columns"]["amount"]
    # a and d only: not b (twice in the source) nor c (not in the target): 10 + 5, not 1,055
    assert (col["abs_variance"], col["source_abs_total"]) == ("1.00", "15.00")
    assert abs(s["amount_variance_ratio"]["amount"] - 1 / 15) < 1e-12


ATTACKS = [
    Attack("16.2", "csv-keys-and-amounts-vs-postgres",
           "csv `007,00123,12345678901234567.01` and `A20,…,12345678901234567890.12` vs the warehouse's "
           "`7`, `…567.02` and the float `…7168.00`",
           _diff("s.csv", "t", "-c", "amount", "-c", "code"), 1, _csv_vs_postgres, _setup),
    Attack("16.2", "csv-keys-and-amounts-vs-csv", "the same values in two CSV snapshots, amount typed by a sidecar",
           _diff("s.csv", "t.csv", "-c", "amount", "-c", "code", sidecar="s.csv"), 1, _csv_vs_csv, _setup),
    Attack("16.s-tolerance", "tolerance-on-untyped-csv", "--tolerance amount=1000 on CSV vs CSV without types",
           _diff("s.csv", "t.csv", "-c", "amount", "--tolerance", "amount=1000"), 2,
           _no_output(("'amount'", "compared as text", "s.csv.json")), _setup),
    Attack("16.s-tolerance", "tolerance-nan", "--tolerance amount=NaN (a Polars panic and exit 1 before)",
           _diff("s.csv", "t", "-c", "amount", "--tolerance", "amount=NaN"), 2,
           _no_output(("--tolerance", "'NaN'", "finite")), _setup),
    Attack("16.s-abs-total", "duplicated-and-missing-source-keys",
           "source b twice and c (1,000.00) missing from the target: Σ|source| counted both",
           _diff("dups.csv", "dups", "-c", "amount", sidecar="dups.csv"), 1, _abs_total, _setup),
    Attack("16.s-1e100", "csv-1e100-vs-postgres", "`1E+100` in a CSV amount compared with numeric(38,2)",
           _diff("big.csv", "t", "-c", "amount"), 2, _no_output(("'1E+100'", "'amount'", "big.csv")), _setup),
    Attack("16.s-1e100", "postgres-numeric-1e100", "1E+100 in an unconstrained numeric column of the warehouse",
           _diff("s.csv", "huge", "-c", "amount", sidecar="s.csv"), 2,
           _no_output(("'amount'", "vals16.huge", "more than 38 digits")), _setup),
]
