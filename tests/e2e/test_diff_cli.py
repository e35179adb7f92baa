"""`recon diff` as a subprocess, the way schedulers run it: exit codes, JSON on stdout, one-line
errors on stderr with no traceback, against the real embedded PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import psycopg
import pytest

from engine.local.state import free_port


def recon(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def assert_one_line_error(res: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    # before an exit 5, one progress line per retry (tests/e2e/test_errors_cli.py checks them)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("recon: waiting: ")]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert lines[0].startswith("recon: error:")
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def tables(embedded_pg, tmp_path_factory) -> dict[str, str]:
    """Two small account tables with known differences, and a Parquet copy of the source."""
    d = tmp_path_factory.mktemp("diffcli")
    src = pl.DataFrame({
        "id": [f"0015g00000000{i:02d}AAA" for i in range(40)],
        "clv": [f"{i * 10}.50" for i in range(40)],
        "name": [f"Acct {i}" for i in range(40)],
    })
    with psycopg.connect(embedded_pg.info.socket_dsn, autocommit=True) as c:
        c.execute("DROP SCHEMA IF EXISTS cli CASCADE")
        c.execute("CREATE SCHEMA cli")
        c.execute('CREATE TABLE cli.src (id text COLLATE "C", clv numeric(18,2), name text)')
        c.execute('CREATE TABLE cli.tgt (id text COLLATE "C", clv numeric(18,2), name text)')
        with c.cursor().copy("COPY cli.src FROM STDIN (FORMAT csv)") as cp:
            cp.write(src.write_csv(include_header=False))
        with c.cursor().copy("COPY cli.tgt FROM STDIN (FORMAT csv)") as cp:
            cp.write(src.write_csv(include_header=False))
        c.execute("UPDATE cli.tgt SET clv = clv + 100 WHERE id IN ('0015g0000000001AAA', '0015g0000000002AAA')")
        c.execute("DELETE FROM cli.tgt WHERE id = '0015g0000000003AAA'")
        c.execute("INSERT INTO cli.tgt VALUES ('0015g0000000099AAA', 1, 'extra')")
        c.execute("INSERT INTO cli.tgt SELECT * FROM cli.tgt WHERE id = '0015g0000000005AAA'")  # duplicate key
        c.execute("CREATE VIEW cli.tgt_view AS SELECT * FROM cli.tgt")
        c.execute("CREATE MATERIALIZED VIEW cli.tgt_mv AS SELECT * FROM cli.tgt")
        c.execute(f"GRANT USAGE ON SCHEMA cli TO {embedded_pg.creds['postgres_user']}")
    parquet = d / "src.parquet"
    src.with_columns(pl.col("clv").cast(pl.Float64)).write_parquet(parquet)
    info = embedded_pg.info
    return {"dsn": info.dsn, "pgpass": str(embedded_pg.paths.pgpass_file), "parquet": str(parquet)}


@pytest.fixture
def env(tables) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    e["PGPASSFILE"] = tables["pgpass"]
    return e


def test_pg_vs_pg_json_and_exit_1(tables, env, tmp_path: Path) -> None:
    res = recon("diff", f"{tables['dsn']}#cli.src", f"{tables['dsn']}#cli.tgt", "-k", "id", "--json",
                "--out", str(tmp_path), env=env)
    assert res.returncode == 1, res.stderr
    s = json.loads(res.stdout)
    assert (s["mismatched"], s["missing_in_target"], s["missing_in_source"]) == (3, 1, 1)
    assert s["duplicate_keys"] == {"source": 0, "target": 1}
    assert s["columns"]["clv"] == {"mismatched": 2, "abs_variance": "200.00", "net_variance": "200.00",
                                   "source_abs_total": "7739.00"}
    # Σ(10·i + 0.5), i < 40, over the keys unique on both sides: not 3 (missing in the target, 30.50)
    # nor 5 (duplicated in the target, 50.50), the population of abs_variance
    assert s["amount_variance_ratio"]["clv"] == pytest.approx(200 / 7739)
    assert s["unchanged"] == 36
    assert s["missing_in_target"] + s["missing_in_source"] + s["mismatched"] + s["unchanged"] == s["distinct_keys"]
    for key in ("source_root", "target_root", "boundaries_digest", "segments", "divergent_segments", "encoding_version"):
        assert key in s["merkle"]
    d = pl.read_parquet(tmp_path / "differences.parquet")
    assert set(d["kind"]) == {"mismatched", "missing_in_target", "missing_in_source", "duplicate_key"}
    assert json.loads((tmp_path / "summary.json").read_text())["mismatched"] == 3


@pytest.mark.parametrize("target", ["cli.tgt_view", "cli.tgt_mv"])
def test_views_and_materialized_views(tables, env, target: str) -> None:
    res = recon("diff", f"{tables['dsn']}#cli.src", f"{tables['dsn']}#{target}", "-k", "id", "--json", env=env)
    assert res.returncode == 1 and json.loads(res.stdout)["mismatched"] == 3


def test_parquet_vs_pg_with_tolerance(tables, env) -> None:
    res = recon("diff", f"parquet:{tables['parquet']}", f"{tables['dsn']}#cli.src", "-k", "id", "-c", "clv", "--json",
                env=env)
    assert res.returncode == 0, res.stderr + res.stdout
    res = recon("diff", f"parquet:{tables['parquet']}", f"{tables['dsn']}#cli.tgt", "-k", "id", "-c", "clv",
                "--tolerance", "clv=100", "--json", env=env)
    s = json.loads(res.stdout)
    assert s["columns"]["clv"]["mismatched"] == 0 and s["mismatched"] == 1  # only the duplicated key remains


def test_identical_tables_exit_0(tables, env) -> None:
    res = recon("diff", f"{tables['dsn']}#cli.src", f"{tables['dsn']}#cli.src", "-k", "id", "--json", env=env)
    assert res.returncode == 0 and json.loads(res.stdout)["unchanged"] == 40


def test_unknown_column(tables, env) -> None:
    res = recon("diff", f"{tables['dsn']}#cli.src", f"{tables['dsn']}#cli.tgt", "-k", "id", "-c", "nope", env=env)
    assert_one_line_error(res, 2, "unknown column 'nope'")


def test_missing_key_option(tables, env) -> None:
    res = recon("diff", f"{tables['dsn']}#cli.src", f"{tables['dsn']}#cli.tgt", env=env)
    assert_one_line_error(res, 2, "-k/--key")


def test_unknown_key_column(tables, env) -> None:
    res = recon("diff", f"{tables['dsn']}#cli.src", f"{tables['dsn']}#cli.tgt", "-k", "account_id", env=env)
    assert_one_line_error(res, 2, "account_id")


def test_non_unique_key_when_asserted(tables, env) -> None:
    res = recon("diff", f"{tables['dsn']}#cli.src", f"{tables['dsn']}#cli.tgt", "-k", "id", "--unique-key", env=env)
    assert_one_line_error(res, 2, "not unique")


@pytest.mark.parametrize("ref", ["postgresql://x@127.0.0.1:1/db", "mysql://x/y#t", "salesforce:", "parquet:",
                                 "postgresql://u@h/db#a.b.c"])
def test_malformed_reference(env, ref: str) -> None:
    res = recon("diff", ref, "parquet:/nonexistent", "-k", "id", env=env)
    assert_one_line_error(res, 2, "malformed")


def test_missing_table(tables, env) -> None:
    res = recon("diff", f"{tables['dsn']}#cli.nope", f"{tables['dsn']}#cli.tgt", "-k", "id", env=env)
    assert_one_line_error(res, 2, "does not exist")


def test_wrong_password_is_exit_2_and_secret_free(tables, env) -> None:
    env = {**env, "PGPASSWORD": "hunter2-wrong"}
    env.pop("PGPASSFILE")
    res = recon("diff", f"{tables['dsn']}#cli.src", f"{tables['dsn']}#cli.tgt", "-k", "id", env=env)
    assert_one_line_error(res, 2, "refused the password")
    assert "hunter2" not in res.stderr + res.stdout


def test_password_in_dsn_never_echoed(tables, env) -> None:
    dsn = tables["dsn"].replace("recon@", "recon:s3cr3t-pw@")
    res = recon("diff", f"{dsn}#cli.nope", f"{dsn}#cli.tgt", "-k", "id", env=env)
    assert res.returncode == 2 and "s3cr3t-pw" not in res.stderr + res.stdout


def test_unreachable_database_is_exit_5(env) -> None:
    port = free_port()  # nothing listens there
    env = {**env, "RECON_CONNECT_DEADLINE": "1"}
    res = recon("diff", f"postgresql://recon@127.0.0.1:{port}/recon#a.b", "parquet:/x", "-k", "id", env=env)
    assert_one_line_error(res, 5, "unreachable")


CONTRACT_KEYS = [
    "source.rows", "target.rows", "missing_in_target", "missing_in_source", "mismatched", "unchanged", "in_flight",
    "duplicate_keys.source", "duplicate_keys.target", "variance_ratio", "amount_variance_ratio",
    "merkle.encoding_version", "merkle.boundaries_digest", "merkle.source_root", "merkle.target_root",
    "merkle.segments", "merkle.divergent_segments", "divergent_ranges", "elapsed_s",
]


def test_json_has_every_contract_key(tables, env) -> None:
    """The keys schedulers rely on (ARCHITECTURE.md): extend, never break."""
    res = recon("diff", f"{tables['dsn']}#cli.src", f"{tables['dsn']}#cli.tgt", "-k", "id", "--json", env=env)
    s = json.loads(res.stdout)
    for dotted in CONTRACT_KEYS:
        node = s
        for part in dotted.split("."):
            assert part in node, dotted
            node = node[part]
    for name, col in s["columns"].items():
        assert {"mismatched", "abs_variance", "net_variance"} <= set(col), name
    for r in s["divergent_ranges"]:
        assert {"from", "to", "source_rows", "target_rows"} <= set(r)
    assert s["missing_in_target"] + s["missing_in_source"] + s["mismatched"] + s["unchanged"] + s["in_flight"] \
        == s["distinct_keys"]


def test_a_condition_the_server_rejects_is_exit_2_naming_the_table(tables, env) -> None:
    """QueryRejected: the early read's guess is dropped by type and the regular read reports it once."""
    res = recon("diff", f"{tables['dsn']}#cli.src", f"{tables['dsn']}#cli.tgt", "-k", "id",
                "--target-where", "no_such_column > 1", env=env)
    assert_one_line_error(res, 2, "PostgreSQL rejected the query on cli.tgt", "no_such_column")


def test_a_config_passfile_is_enough_to_log_in(tables, env, tmp_path: Path) -> None:
    """[postgres] passfile of recon.toml, handed to each connection (no PGPASSFILE in the environment)."""
    env = dict(env)
    env.pop("PGPASSFILE")
    env["HOME"] = str(tmp_path)  # no ~/.pgpass either
    cfg = tmp_path / "recon.toml"
    cfg.write_text(f'[postgres]\npassfile = "{tables["pgpass"]}"\n')
    res = recon("diff", f"{tables['dsn']}#cli.src", f"{tables['dsn']}#cli.tgt", "-k", "id", "--json", "-C", str(cfg),
                env=env)
    assert res.returncode == 1, res.stderr
    res = recon("diff", f"{tables['dsn']}#cli.src", f"{tables['dsn']}#cli.tgt", "-k", "id", env=env)
    assert_one_line_error(res, 2, "asks for a password and none was given")
