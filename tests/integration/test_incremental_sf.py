"""Incremental diffs of the local Salesforce org against a real PostgreSQL (issue 19's acceptance):
a seeded random sequence of inserts, updates and deletes on both sides over 12 incremental runs.
After every run, the incremental summary, differences and roots equal a full read with the same
boundaries. The sequence includes Salesforce deletes seen through getDeleted, a run past the 30-day
window (the org's clock moved through the control API: the side is read whole and the run says so),
and a hard delete, which no change list shows: the org's COUNT() in the same poll gives it away and
the full check agrees. PostgreSQL's late-committing transaction is test_incremental.py's."""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from engine.app import reconcile
from engine.app.incremental import StateOptions
from engine.config import load
from tests.salesforce_fixtures import SalesforceStack

T0 = datetime(2031, 5, 4, 12, 0, 10, tzinfo=UTC)
COUNTS = ("missing_in_target", "missing_in_source", "mismatched", "unchanged", "distinct_keys", "columns",
          "duplicate_keys", "variance_ratio", "merkle")


class World:
    def __init__(self, stack: SalesforceStack, pg: Any, tmp: Path) -> None:
        self.stack, self.pg, self.tmp = stack, pg, tmp
        self.conn = stack.connect()
        self.sf = self.conn.sf
        cfg = tmp / "recon.toml"
        cfg.write_text("[salesforce]\n")
        self.cfg = load(cfg)
        self.db = psycopg.connect(pg.info.dsn, autocommit=True, passfile=str(pg.paths.pgpass_file))
        self.db.execute("DROP SCHEMA IF EXISTS inc_sf CASCADE")
        self.db.execute("CREATE SCHEMA inc_sf")
        self.db.execute("CREATE FUNCTION inc_sf.touch() RETURNS trigger LANGUAGE plpgsql AS "
                        "$$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$")
        self.db.execute("CREATE TABLE inc_sf.clv (account_id text PRIMARY KEY, name text, revenue numeric(18,2), "
                        "updated_at timestamptz NOT NULL DEFAULT now())")
        self.db.execute("CREATE TRIGGER touch BEFORE UPDATE ON inc_sf.clv FOR EACH ROW EXECUTE FUNCTION inc_sf.touch()")
        self.req = reconcile.DiffRequest(
            source="salesforce:Account", target=f"{pg.info.dsn}#inc_sf.clv", keys=(("Id", "account_id"),),
            columns=(("Name", "name"), ("AnnualRevenue", "revenue")), target_updated_at="updated_at", segment_rows=16)

    def diff(self, state: Path, **kw: Any) -> dict[str, Any]:
        d = reconcile.run_diff(self.req, self.cfg, state=StateOptions(state, **kw))
        s = d.summary()
        s["_differences"] = d.result.differences.sort(["key", "kind", "column"], nulls_last=True)
        return s

    def advance(self, seconds: float) -> None:
        self.stack.control("POST", "clock", {"advance_seconds": seconds})

    def sf_ids(self) -> list[str]:
        return sorted(r["Id"] for r in self.sf.query_all("SELECT Id FROM Account")["records"])


@pytest.fixture
def world(sf_stack: SalesforceStack, embedded_pg: Any, monkeypatch: pytest.MonkeyPatch,
          tmp_path: Path) -> Iterator[World]:
    sf_stack.use_env(monkeypatch)
    monkeypatch.setenv("PGPASSFILE", str(embedded_pg.paths.pgpass_file))
    sf_stack.reset_store()
    sf_stack.clear_failures()
    sf_stack.control("POST", "clock", {"now": T0.isoformat()})
    w = World(sf_stack, embedded_pg, tmp_path)
    try:
        yield w
    finally:
        w.conn.close()
        w.db.execute("DROP SCHEMA IF EXISTS inc_sf CASCADE")
        w.db.close()
        sf_stack.reset_store()


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    for k in COUNTS:
        assert a[k] == b[k], k
    assert a["source"]["rows"] == b["source"]["rows"] and a["target"]["rows"] == b["target"]["rows"]
    assert a["_differences"].equals(b["_differences"])


def _step(w: World, rng: random.Random, step: int, log: dict[str, list[str]]) -> None:
    ids = w.sf_ids()
    for i in rng.sample(ids, min(4, len(ids))):
        w.sf.Account.update(i, {"AnnualRevenue": f"{rng.randint(1, 99999)}.{rng.randint(10, 99)}"})
    for n in range(3):
        new = w.sf.Account.create({"Name": f"s{step}-{n}", "AnnualRevenue": f"{rng.randint(1, 9999)}.50"})["id"]
        if rng.random() < 0.7:  # the warehouse mostly follows
            w.db.execute("INSERT INTO inc_sf.clv (account_id, name, revenue) VALUES (%s, %s, %s)",
                         (new, f"s{step}-{n}", f"{rng.randint(1, 9999)}.50"))
    gone = rng.choice(w.sf_ids())
    w.sf.Account.delete(gone)  # to the Recycle Bin: getDeleted lists it
    log["deleted"].append(gone)
    wh = [r[0] for r in w.db.execute("SELECT account_id FROM inc_sf.clv ORDER BY 1").fetchall()]
    for k in rng.sample(wh, min(2, len(wh))):
        w.db.execute("UPDATE inc_sf.clv SET revenue = revenue + 1 WHERE account_id = %s", (k,))
    if wh:
        w.db.execute("DELETE FROM inc_sf.clv WHERE account_id = %s", (rng.choice(wh),))
    if step == 5:  # a hard delete: in no change list
        hard = rng.choice(w.sf_ids())
        assert w.stack.control("POST", "hard_delete", {"sobject": "Account", "ids": [hard]}) == {"deleted": 1}
        log["hard"].append(hard)
    w.advance(31 * 24 * 3600 if step == 8 else 120)  # step 8: past the 30-day window


def test_sf_pg_incremental_runs_equal_a_full_read_with_the_same_boundaries(world: World, tmp_path: Path) -> None:
    w = world
    rng = random.Random(1919)
    rows = []
    for i in range(120):
        rows.append({"Name": f"a{i}", "AnnualRevenue": f"{rng.randint(1, 99999)}.{rng.randint(10, 99)}"})
    created = [w.sf.Account.create(r)["id"] for r in rows]
    with w.db.cursor() as cur:
        cur.executemany("INSERT INTO inc_sf.clv (account_id, name, revenue, updated_at) "
                        "VALUES (%s, %s, %s, now() - interval '1 hour')",
                        [(i, r["Name"], r["AnnualRevenue"] if n % 9 else "1.00") for n, (i, r) in
                         enumerate(zip(created, rows, strict=True)) if n % 11])
    w.advance(180)
    state = tmp_path / "state"
    first = w.diff(state)
    assert first["incremental"]["mode"] == "full"
    log: dict[str, list[str]] = {"deleted": [], "hard": []}
    seen = {"getDeleted": False, "window": False, "hard": False}
    for step in range(12):
        _step(w, rng, step, log)
        check = tmp_path / f"check{step}"
        shutil.copytree(state, check)
        inc = w.diff(state)
        info = inc["incremental"]
        assert info["mode"] == "incremental" and inc["status"] == "ok", info
        sf = info["sides"]["source"]
        if step == 8:
            assert sf["mode"] == "whole" and "INVALID_REPLICATION_DATE" in sf["reason"], sf
            seen["window"] = True
        else:
            assert sf["mode"] == "changes" and sf["rows_reread"] < 30, sf
        if step == 5:
            assert sf.get("deletions", {}).get("found", 0) >= 1, sf  # the COUNT() told
            seen["hard"] = True
        full = w.diff(check, verify_full=True)
        assert full["incremental"]["full_check"]["equal"], (step, full["incremental"])
        _same(inc, full)
        # the record deleted in Salesforce this step is no longer on the source side
        d = inc["_differences"]
        kinds = set(d.filter(d["key"] == log["deleted"][-1])["kind"].to_list())
        assert kinds <= {"missing_in_source"}, (step, kinds)
        if sf["mode"] == "changes":  # getDeleted listed this step's delete (and the overlap may re-list one)
            assert sf["deleted_listed"] >= 1, sf
            seen["getDeleted"] = True
            if step != 5:  # listed deletions leave the org's count as predicted: no key read
                assert "deletions" not in sf, sf
        shutil.rmtree(check)
    assert all(seen.values()), seen
    # the hard-deleted record is gone from the state's Salesforce side, like from the org
    final = w.diff(state, verify_full=True)
    assert final["incremental"]["full_check"]["equal"]
    assert final["source"]["rows"] == len(w.sf_ids())
