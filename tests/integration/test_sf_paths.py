# ruff: noqa: S608 - the f-strings here are SOQL sent to the local org (the server binds literals as parameters)
"""Salesforce paths that only run at scale, run small: Id-range chunking of a Bulk extraction and
the Id-list chunks of a re-extraction, against the local org through unmodified simple-salesforce.

The sizes that decide these paths are settings (`[salesforce] chunk_rows`, `rest_max_rows`,
`id_chunk`), so a few hundred rows take the same code a few million would. Every expectation is
computed here from the loaded ids in byte order (Salesforce's Id order: `0-9 < A-Z < a-z`), never
from recon's own range arithmetic. Each test loads its own Accounts (`reset_store`), so the first
and last Id of the object are the test's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest

from engine.core.sfid import to18
from engine.local.sfapi.sample import synthetic_accounts
from tests.salesforce_fixtures import SalesforceStack


@pytest.fixture
def sf_env(sf_stack: SalesforceStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[SalesforceStack]:
    """The stack's credentials in the environment recon reads, no size overrides, no failures left."""
    sf_stack.use_env(monkeypatch)
    sf_stack.clear_failures()
    sf_stack.reset_store()
    yield sf_stack
    sf_stack.clear_failures()


def _config(tmp_path: Path, **salesforce: int) -> Any:
    from engine.config import load

    p = tmp_path / "recon.toml"
    p.write_text("[salesforce]\n" + "".join(f"{k} = {v}\n" for k, v in salesforce.items()))
    return load(p)


def _dense(n: int) -> pa.Table:
    """n Accounts with consecutive ids whose last character runs through `…zg` → `…32C`: across
    `9`→`A`, `Z`→`a` and `z`→`0` with a carry, where a case-blind or misordered alphabet breaks."""
    return synthetic_accounts(n, start=62 * 62 * 3 - 20, seed=3).select(["Id", "Name", "AnnualRevenue"])


def _case_pairs() -> pa.Table:
    """Sparse ids in pairs that differ only in the case of one character (distinct records in
    Salesforce, equal to a case-insensitive comparison), around every class of character."""
    bodies = [f"001CASE000{c}{d}{e}00" for c in "0aA" for d in "9AZaz" for e in "bB"]
    ids = sorted(to18(b) for b in bodies)
    return pa.table({"Id": ids, "Name": [f"pair {i}" for i in range(len(ids))],
                     "AnnualRevenue": pa.array([float(i) for i in range(len(ids))])})


def _ranges(soqls: list[str]) -> list[tuple[str | None, str | None]]:
    out = []
    for q in soqls:
        bounds = dict((op, b) for op, b in re.findall(r"Id (>=|<) '(\w+)'", q))
        out.append((bounds.get(">="), bounds.get("<")))
    return out


def _in(i: str, lo: str | None, hi: str | None) -> bool:
    return (lo is None or i >= lo) and (hi is None or i < hi)  # Python compares str by code point = byte order


def _job_rows(stack: SalesforceStack, job_ids: list[str]) -> list[int]:
    """Records each Bulk job processed, as the server reports them (one login for all)."""
    out = []
    with stack.http() as s:
        s.headers["Authorization"] = f"Bearer {stack.access_token()}"
        for job in job_ids:
            r = s.get(f"{stack.instance_url}/services/data/v59.0/jobs/query/{job}", timeout=30)
            r.raise_for_status()
            out.append(int(r.json()["numberRecordsProcessed"]))
    return out


@pytest.mark.parametrize("data,chunk_rows", [("dense", 40), ("case_pairs", 7)])
def test_id_range_chunks_read_every_row_once(sf_env: SalesforceStack, tmp_path: Path, data: str,
                                             chunk_rows: int) -> None:
    """Above `chunk_rows` the extraction is one Bulk job per Id range: the ranges follow each other
    without a gap (each starts at the bound where the previous one stopped), every job reads exactly
    the loaded ids that byte order puts in its range, a record whose 15-character prefix equals a
    bound is read by the range that starts there, and together the jobs read each record once. With
    consecutive ids no job reads more than `chunk_rows`."""
    from engine.connectors.base import SalesforceRef
    from engine.connectors.salesforce import source as sf_source

    table = _dense(157) if data == "dense" else _case_pairs()
    ids: list[str] = table.column("Id").to_pylist()
    assert sf_env.load("Account", table) == len(ids)
    sf_env.reset_stats()
    e = sf_source.extract(SalesforceRef("Account"), _config(tmp_path, chunk_rows=chunk_rows, rest_max_rows=0),
                          ["Id", "AnnualRevenue"], None)
    got = e.frame["Id"].to_list()
    assert sorted(got) == sorted(ids) and len(got) == len(set(got))  # none lost, none read twice
    assert sf_env.stats()["records"].get("bulk_results") == len(ids)  # the server served each row once
    ranges = _ranges(e.meta["soql"])
    assert len(ranges) == len(e.meta["bulk_job_ids"]) == -(-len(ids) // chunk_rows)
    assert ranges[0][0] is None and ranges[-1][1] is None  # open at both ends: nothing outside the bounds
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))  # no gap, no overlap
    bounds = [b for _, b in ranges[:-1]]
    assert bounds == sorted(bounds) and all(len(b) == 15 for b in bounds)
    per_job = _job_rows(sf_env, e.meta["bulk_job_ids"])
    assert per_job == [sum(_in(i, lo, hi) for i in ids) for lo, hi in ranges]
    if data == "dense":  # consecutive ids: bounds land on records, and the split is even
        at_bound = [i for i in ids if i[:15] in bounds]
        assert len(at_bound) == len(bounds)  # a record sits exactly on every bound…
        for i in at_bound:  # …and is read by the range starting there (15 chars < its 18: byte order)
            assert [k for k, (lo, hi) in enumerate(ranges) if _in(i, lo, hi)] == [bounds.index(i[:15]) + 1]
        assert max(per_job) <= chunk_rows


@pytest.mark.parametrize("chunk_rows,jobs", [(60, 1), (59, 2)])
def test_chunking_starts_just_above_the_threshold(sf_env: SalesforceStack, tmp_path: Path, chunk_rows: int,
                                                  jobs: int) -> None:
    """`chunk_rows` rows are one job; one row more than `chunk_rows` is two."""
    from engine.connectors.base import SalesforceRef
    from engine.connectors.salesforce import source as sf_source

    table = _dense(60)
    sf_env.load("Account", table)
    e = sf_source.extract(SalesforceRef("Account"), _config(tmp_path, chunk_rows=chunk_rows, rest_max_rows=0),
                          ["Id"], None)
    assert len(e.meta["bulk_job_ids"]) == jobs and sorted(e.frame["Id"].to_list()) == table.column("Id").to_pylist()


def test_the_environment_wins_over_the_config(sf_env: SalesforceStack, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.connectors.base import SalesforceRef
    from engine.connectors.salesforce import source as sf_source

    sf_env.load("Account", _dense(30))
    monkeypatch.setenv("RECON_SF_CHUNK_ROWS", "10")
    e = sf_source.extract(SalesforceRef("Account"), _config(tmp_path, chunk_rows=1000, rest_max_rows=0), ["Id"], None)
    assert len(e.meta["bulk_job_ids"]) == 3 and e.frame.height == 30


def test_an_id_range_job_that_keeps_failing_fails_the_extraction(sf_env: SalesforceStack, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranges run side by side; when one range's job cannot be created before the deadline, the
    extraction raises (exit 5) instead of returning the other ranges' rows as the object."""
    from engine.connectors.base import SalesforceRef
    from engine.connectors.salesforce import source as sf_source
    from engine.connectors.salesforce.client import SalesforceUnreachable

    sf_env.load("Account", _dense(30))
    monkeypatch.setenv("RECON_SF_RETRY_DEADLINE", "1")
    sf_env.fail(503, count=10_000, kinds=["bulk_create"], after=2)
    with pytest.raises(SalesforceUnreachable, match="Bulk API 2.0 query job"):
        sf_source.extract(SalesforceRef("Account"), _config(tmp_path, chunk_rows=10, rest_max_rows=0), ["Id"], None)


# -- re-extraction of exact records in Id-list chunks (repair, explain) -----------------------------

def _values(table: pa.Table) -> dict[str, str]:
    return {i: f"{v:.2f}" for i, v in zip(table.column("Id").to_pylist(), table.column("AnnualRevenue").to_pylist(),
                                          strict=True) if v is not None}


def test_reextraction_of_more_than_500_ids_runs_one_job_per_500(sf_env: SalesforceStack, tmp_path: Path) -> None:
    """1,203 ids at the default chunk of 500: three jobs of 500, 500 and 203 ids in byte order, every
    record read once, each with the value Salesforce holds and the job that read it; an id that is
    not in the org is simply absent."""
    from engine.connectors.salesforce.records import reextract

    table = _dense(1203)
    sf_env.load("Account", table)
    ids = table.column("Id").to_pylist()
    absent = to18("001CASE00000000")  # a well-formed id of no record
    sf_env.reset_stats()
    ex = reextract("Account", "AnnualRevenue", [*reversed(ids), absent], _config(tmp_path))
    want = sorted([*ids, absent])
    chunks = [want[i: i + 500] for i in range(0, len(want), 500)]
    assert [len(c) for c in chunks] == [500, 500, 204]
    assert len(ex.metas) == 3 and ex.records == len(ids) == len(ex.values)
    assert sf_env.stats()["records"].get("bulk_results") == len(ids)
    jobs = [m["bulk_job_ids"][0] for m in ex.metas]
    assert len(set(jobs)) == 3
    for chunk, job, meta in zip(chunks, jobs, ex.metas, strict=True):
        assert meta["soql"][0].count("'") == 2 * len(chunk)  # the ids of this chunk, and only they
        assert all(ex.values[i]["bulk_job_id"] == job for i in chunk if i != absent)
    values = _values(table)
    assert {i: f"{float(v['value']):.2f}" for i, v in ex.values.items() if v["value"] is not None} == values
    assert absent not in ex.values


def test_the_id_chunk_is_a_setting(sf_env: SalesforceStack, tmp_path: Path) -> None:
    from engine.connectors.salesforce.records import reextract

    table = _dense(23)
    sf_env.load("Account", table)
    ex = reextract("Account", "AnnualRevenue", table.column("Id").to_pylist(), _config(tmp_path, id_chunk=5))
    assert [m["soql"][0].count("'") // 2 for m in ex.metas] == [5, 5, 5, 5, 3] and ex.records == 23


def test_a_chunk_that_fails_once_is_retried_and_nothing_is_lost(sf_env: SalesforceStack, tmp_path: Path) -> None:
    """The second chunk's job creation fails once with 503: recon retries that call, and the result
    is the same as without the failure (every record, each once)."""
    from engine.connectors.salesforce.records import reextract

    table = _dense(12)
    sf_env.load("Account", table)
    ids = table.column("Id").to_pylist()
    sf_env.fail(503, count=1, kinds=["bulk_create"], after=1)
    ex = reextract("Account", "AnnualRevenue", ids, _config(tmp_path, id_chunk=5))
    assert len(ex.metas) == 3 and ex.records == 12 and set(ex.values) == set(ids)
    assert sf_env.stats()["errors"].get("SERVER_UNAVAILABLE", 0) >= 1  # the failure did happen


def test_a_chunk_that_keeps_failing_ends_the_reextraction(sf_env: SalesforceStack, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The first chunk is read, the second one's job cannot be created until the deadline: the
    re-extraction raises Salesforce unreachable (exit 5) naming the call, and returns nothing, so
    no caller acts on the first chunk alone."""
    from engine.connectors.salesforce.client import SalesforceUnreachable
    from engine.connectors.salesforce.records import reextract
    from engine.core.errors import Exit

    table = _dense(12)
    sf_env.load("Account", table)
    monkeypatch.setenv("RECON_SF_RETRY_DEADLINE", "1")
    sf_env.fail(503, count=10_000, kinds=["bulk_create"], after=1)
    sf_env.reset_stats()
    with pytest.raises(SalesforceUnreachable) as err:
        reextract("Account", "AnnualRevenue", table.column("Id").to_pylist(), _config(tmp_path, id_chunk=5))
    assert err.value.exit_code == Exit.UNREACHABLE
    assert "Bulk API 2.0 query job" in str(err.value) and "\n" not in str(err.value)
    assert sf_env.stats()["requests"].get("bulk_results") == 1  # the first chunk had been read


# -- what the user gets when a re-extraction chunk fails mid-way (`recon repair --apply`) -----------

@pytest.mark.slow  # a CLI pipeline (diff, explain, two repairs): 35-45 s on the shared 2-core box
def test_repair_whose_reextraction_fails_mid_way_writes_nothing_of_that_group(scenario_stack: Any,
                                                                            tmp_path: Path) -> None:
    """`recon repair --apply` re-reads the corrected records in chunks (100 Ids here, so the
    scenario's ~300 corrections take several jobs) and writes a group only once all of it is read.
    The SEC-critical group is read, written and verified first; then the second chunk of the other
    group cannot be read before the deadline: exit 5, one line naming the call, none of that group's
    records written, no repair.json. Run again without the failure, repair completes: the SEC group
    is already applied, the rest is applied, each record once."""
    import psycopg

    from engine.local.postgres import EmbeddedPostgres
    from engine.local.salesforce import LocalSalesforce
    from engine.local.state import StackPaths

    s = scenario_stack
    cfg = str(s.config)
    dsn = s.endpoints["postgres_socket_dsn"]
    schema = "wh_reextract_fail"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        c.execute(f"CREATE SCHEMA {schema}")
        c.execute(f"CREATE TABLE {schema}.customer_clv (LIKE warehouse.customer_clv INCLUDING ALL)")
        c.execute(f"INSERT INTO {schema}.customer_clv SELECT * FROM warehouse.customer_clv")
    port = s.endpoints["postgres_dsn"].rsplit(":", 1)[1].split("/")[0]
    target = f"postgresql://recon@127.0.0.1:{port}/recon#{schema}.customer_clv"
    assert s.run("diff", "-C", cfg, "--mapping", "clv", "--out", str(tmp_path / "d")).returncode == 1
    ex = s.run("explain", "--diff", str(tmp_path / "d"), "-C", cfg, "--out", str(tmp_path / "e"))
    assert ex.returncode == 1, ex.stderr
    findings = pl.read_parquet(tmp_path / "e" / "findings.parquet")
    corrected = findings.filter(pl.col("class").is_in(["duplicate_inflation", "missing_events",
                                                       "warehouse_only_drift", "missing_in_warehouse"]))
    sec = set(corrected.filter(pl.col("sec_critical"))["Id"].to_list())
    rest = set(corrected["Id"].to_list()) - sec
    assert 0 < len(sec) <= 100 and len(rest) > 200  # one SEC job, then at least three for the rest

    paths = StackPaths.at(s.state)
    sf = LocalSalesforce(paths, EmbeddedPostgres(paths).status())
    args = ("repair", "--from-explain", str(tmp_path / "e"), "-C", cfg, "--apply", "--target", target,
            "--out", str(tmp_path / "r"), "--json")
    env = {"RECON_SF_ID_CHUNK": "100", "RECON_SF_RETRY_DEADLINE": "1"}
    sf.control("POST", "fail", {"status": 503, "count": 100_000, "kinds": ["bulk_create"], "after": 2})
    try:
        failed = s.run(*args, env=env)
    finally:
        sf.control("POST", "fail", {"count": 0})
    assert failed.returncode == 5, failed.stderr
    # the 503s are waited out with a progress line per retry (issue 21), then one error line
    lines = [ln for ln in failed.stderr.strip().splitlines() if not ln.startswith("recon: waiting: ")]
    assert len(lines) == 1 and "Bulk API 2.0 query job" in lines[0] and "Traceback" not in failed.stderr
    assert not (tmp_path / "r" / "repair.json").exists()

    def repaired() -> list[str]:
        with psycopg.connect(dsn, autocommit=True) as c:
            return [r[0] for r in c.execute(f"SELECT account_id FROM {schema}.customer_clv_versions "
                                            "WHERE source = 'repair'").fetchall()]

    assert sorted(repaired()) == sorted(sec)  # the verified SEC group, and nothing of the failed one
    done = s.run(*args, env={"RECON_SF_ID_CHUNK": "100"})
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert (out["corrections"]["already_applied"], out["corrections"]["applied"]) == (len(sec), len(rest))
    after = repaired()
    assert len(after) == len(set(after)) and set(after) == sec | rest
    assert len(out["salesforce"]["bulk_job_ids"]) == -(-len(rest) // 100)  # the rest, in chunks of 100
