# ruff: noqa: S608 - SQL built from the test's own constant schema and table names
"""`recon watch` against a real PostgreSQL (issue 19): a --once cycle exits with the gate's code,
cycles run every period with one JSON line each, SIGTERM stops cleanly, and SIGKILL at seeded
random points leaves a watch whose restart ends where an uninterrupted one does, with a state that
verifies by a full read."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from engine.store.ledger import Ledger

MAPPING = "inc"


def _dsn(pg: Any, user: str, db: str) -> str:
    return f"postgresql://{user}@/{db}?host={pg.info.socket_dir}&port={pg.info.port}"


@pytest.fixture(scope="module")
def ledger_dsn(embedded_pg: Any) -> str:
    name = f"watch_ledger_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(embedded_pg.info.superuser_socket_dsn("postgres"), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name} OWNER recon")
    with Ledger(_dsn(embedded_pg, "recon", name)) as lg:
        lg.init(writer="recon_app")
    return _dsn(embedded_pg, "recon_app", name)  # the application's role appends


def _conn(pg: Any) -> psycopg.Connection:
    return psycopg.connect(pg.info.dsn, autocommit=True, passfile=str(pg.paths.pgpass_file))


class Watch:
    def __init__(self, pg: Any, schema: str, config: Path) -> None:
        self.pg, self.schema, self.config = pg, schema, config
        self.env = {**os.environ, "PGPASSFILE": str(pg.paths.pgpass_file)}
        self.env.pop("RECON_LEDGER_DSN", None)

    def args(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "engine.cli.main", "watch", "-C", str(self.config), "--mapping", MAPPING, *args]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.args(*args), capture_output=True, text=True, env=self.env, timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.args(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env)

    def mutate(self, rng: random.Random, step: int) -> None:
        with _conn(self.pg) as c:
            for t in ("s", "t"):
                keys = [r[0] for r in c.execute(f"SELECT k FROM {self.schema}.{t} ORDER BY k").fetchall()]
                for k in rng.sample(keys, 5):
                    c.execute(f"UPDATE {self.schema}.{t} SET v = v + %s WHERE k = %s", (rng.choice(["0.01", "3"]), k))
                for k in rng.sample(keys, 2):
                    c.execute(f"DELETE FROM {self.schema}.{t} WHERE k = %s", (k,))
                for i in range(3):
                    c.execute(f"INSERT INTO {self.schema}.{t} (k, v, n) VALUES (%s, %s, %s) ON CONFLICT (k) DO "
                              "UPDATE SET n = 0", (f"n{step:02d}{i}{rng.choice('ab')}", f"{rng.randint(0, 999)}.5", i))


@pytest.fixture()
def watch(embedded_pg: Any, ledger_dsn: str, tmp_path: Path) -> Iterator[Watch]:
    schema = f"w_{uuid.uuid4().hex[:8]}"
    with _conn(embedded_pg) as c:
        c.execute(f"CREATE SCHEMA {schema}")
        c.execute(f"CREATE FUNCTION {schema}.touch() RETURNS trigger LANGUAGE plpgsql AS "
                  "$$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$")
        for t in ("s", "t"):
            c.execute(f"CREATE TABLE {schema}.{t} (k text PRIMARY KEY, v numeric(14,2), n int, "
                      "updated_at timestamptz NOT NULL DEFAULT now())")
            c.execute(f"CREATE TRIGGER touch BEFORE UPDATE ON {schema}.{t} FOR EACH ROW EXECUTE FUNCTION "
                      f"{schema}.touch()")
        c.execute(f"INSERT INTO {schema}.s (k, v, n, updated_at) SELECT 'k' || lpad(i::text, 5, '0'), i / 4.0, "
                  "i % 7, now() - interval '1 hour' FROM generate_series(1, 800) i")
        c.execute(f"INSERT INTO {schema}.t (k, v, n, updated_at) SELECT k, CASE WHEN n = 3 THEN v + 0.01 ELSE v "
                  f"END, n, updated_at FROM {schema}.s WHERE k NOT LIKE '%7'")
    dsn = embedded_pg.info.dsn
    cfg = tmp_path / "recon.toml"
    cfg.write_text(f'[ledger]\ndsn = "{ledger_dsn}"\n\n[gate]\n{MAPPING} = {{ column = "v" }}\n\n[mapping.{MAPPING}]\nsource = "{dsn}#{schema}.s"\n'
                   f'target = "{dsn}#{schema}.t"\nkey = ["k"]\ncolumns = ["v", "n"]\n'
                   'source_updated_at = "updated_at"\ntarget_updated_at = "updated_at"\nstate = "state"\n')
    yield Watch(embedded_pg, schema, cfg)
    with _conn(embedded_pg) as c:
        c.execute(f"DROP SCHEMA {schema} CASCADE")


def _lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _cycles(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "cycles").iterdir()) if (out / "cycles").is_dir() else []


def test_once_runs_one_cycle_and_exits_with_the_gates_code(watch: Watch) -> None:
    first = watch.run("--once", "--json")
    assert first.returncode == 3, first.stderr  # ~10 % of the keys differ: the breaker opens
    (doc,) = _lines(first.stdout)
    assert doc["cycle"] == 1 and doc["incremental"]["mode"] == "full" and doc["exit_code"] == 3
    assert doc["gate"]["state"] == "open" and doc["gate"]["open_reasons"] == ["variance"]
    assert doc["new_differences"] == doc["differences"]["missing_in_target"] + doc["differences"]["mismatched"] > 0
    assert doc["explain"] == {"ran": False, "new_keys": doc["new_differences"],
                              "reason": "explain needs a Salesforce source"}
    assert isinstance(doc["ledger_seq"], int) and doc["openlineage"] == ["START", "COMPLETE"]
    out = watch.config.parent / "watch" / MAPPING  # the default --out: next to the config
    cycle = out / "cycles" / "000001"
    assert json.loads((cycle / "cycle.json").read_text())["merkle"] == doc["merkle"]
    for f in ("diff/summary.json", "diff/differences.parquet", "gate/gate_decision.json"):
        assert (cycle / f).is_file(), f
    assert len(list((cycle / "openlineage").iterdir())) == 2
    password = watch.pg.creds.get("postgres_password")
    assert password and password not in first.stdout and password not in (cycle / "cycle.json").read_text()

    # the second cycle is incremental, and explains only what is new since the first
    with _conn(watch.pg) as c:
        c.execute(f"UPDATE {watch.schema}.t SET v = v + 1 WHERE k IN ('k00001', 'k00002')")
    second = watch.run("--once", "--json")
    assert second.returncode == 3, second.stderr
    (doc2,) = _lines(second.stdout)
    assert doc2["cycle"] == 2 and doc2["incremental"]["mode"] == "incremental"
    assert doc2["new_differences"] == 2
    assert doc2["differences"]["mismatched"] == doc["differences"]["mismatched"] + 2
    assert _cycles(out) == ["000001", "000002"]


def test_watch_refuses_without_a_ledger_or_a_state_in_one_line(watch: Watch) -> None:
    text = watch.config.read_text()
    watch.config.write_text(text.split("\n\n", 1)[1])  # no [ledger]
    res = watch.run("--once")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "ledger" in res.stderr, res.stderr
    watch.config.write_text(text.replace('state = "state"\n', ""))
    res = watch.run("--once")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "state" in res.stderr, res.stderr
    res = watch.run("--every", "0s")
    assert res.returncode == 2 and "e.g. --every 5m" in res.stderr and "Traceback" not in res.stderr


def test_cycles_run_every_period_without_overlap_and_sigterm_stops_cleanly(watch: Watch) -> None:
    p = watch.popen("--every", "1s", "--json")
    assert p.stdout is not None
    docs = [json.loads(p.stdout.readline()) for _ in range(3)]
    p.send_signal(signal.SIGTERM)
    rest, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "Traceback" not in err
    docs += _lines(rest)
    assert [d["cycle"] for d in docs] == list(range(1, len(docs) + 1))
    assert [d["incremental"]["mode"] for d in docs[:3]] == ["full", "incremental", "incremental"]
    for a, b in zip(docs, docs[1:], strict=False):
        start, prev_start = datetime.fromisoformat(b["started_at"]), datetime.fromisoformat(a["started_at"])
        assert start >= datetime.fromisoformat(a["finished_at"])  # no overlap
        # the next start: a period after the previous one started, or right after an overrun
        assert (start - prev_start).total_seconds() >= min(1.0, a["elapsed_s"]) - 0.05
        assert (start - datetime.fromisoformat(a["finished_at"])).total_seconds() < 1.5
    out = watch.config.parent / "watch" / MAPPING
    assert not [n for n in _cycles(out) if n.startswith(".partial")]
    assert len(_cycles(out)) == len(docs)


def test_a_second_watcher_on_one_directory_is_refused(watch: Watch) -> None:
    p = watch.popen("--every", "1h", "--json")
    assert p.stdout is not None
    json.loads(p.stdout.readline())  # the first cycle is done; the watcher now waits, holding its lock
    try:
        res = watch.run("--once")
        assert res.returncode == 2 and "in use by another `recon watch`" in res.stderr, res.stderr
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=60)
    assert p.returncode == 0


def _killed_and_restarted(watch: Watch, tmp: Path, *, points: int, seed: int) -> None:
    """Watcher A runs one uninterrupted cycle after each change; watcher B watches continuously
    and is SIGKILLed at a seeded random moment after each change (while starting, diffing,
    recording, committing or waiting), then restarted once at the end."""
    rng = random.Random(seed)
    a = ("--out", str(tmp / "a"), "--state", str(tmp / "state-a"))
    b = ("--out", str(tmp / "b"), "--state", str(tmp / "state-b"))
    for step in range(points):
        watch.mutate(rng, step)
        res = watch.run("--once", "--json", *a)
        assert res.returncode in (0, 3), res.stderr
        p = watch.popen("--every", "1s", "--json", *b)
        time.sleep(rng.uniform(0.2, 4.0))
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=30)
    res = watch.run("--once", "--json", *b)
    assert res.returncode in (0, 3), res.stderr
    (last_b,) = _lines(res.stdout)
    last_a = json.loads((tmp / "a" / "cycles" / _cycles(tmp / "a")[-1] / "cycle.json").read_text())
    assert last_b["differences"] == last_a["differences"]
    assert last_b["merkle"] == last_a["merkle"]
    assert last_b["status"] == last_a["status"] == "ok"
    names = _cycles(tmp / "b")
    assert names == [f"{i:06d}" for i in range(1, len(names) + 1)]  # no gap, no partial cycle
    # B's state verifies: a full read with its boundaries finds what the state holds
    check = subprocess.run([sys.executable, "-m", "engine.cli.main", "diff", "-C", str(watch.config), "--mapping",
                            MAPPING, "--state", str(tmp / "state-b"), "--verify-full", "--json"],
                           capture_output=True, text=True, env=watch.env, timeout=120)
    assert check.returncode in (0, 1), check.stderr
    full = json.loads(check.stdout)
    assert full["status"] == "ok" and full["incremental"]["full_check"]["equal"], full["incremental"]
    assert full["merkle"]["source_root"] == last_a["merkle"]["source_root"]
    assert full["merkle"]["target_root"] == last_a["merkle"]["target_root"]


def test_sigkill_at_random_points_restarts_consistently(watch: Watch, tmp_path: Path) -> None:
    _killed_and_restarted(watch, tmp_path, points=2, seed=19)


@pytest.mark.slow
def test_sigkill_at_ten_random_points_restarts_consistently(watch: Watch, tmp_path: Path) -> None:
    _killed_and_restarted(watch, tmp_path, points=10, seed=1919)
