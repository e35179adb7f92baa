"""`recon scenario load --cause mixed` through the CLI on a whole stack of its own: the written
recon.toml names the warehouse's group, the warehouse holds one row per delivery, and
`kafka-audit -C recon.toml --isolation-check` finds the aborted range the ground truth lists.

Slow (its own stack: PostgreSQL, Kafka and the Salesforce API start, about a minute): the causes
themselves are covered cheaply by test_scenario_causes.py; this checks the wiring of `load`.
Opt in with ``pytest -m slow tests/integration/test_scenario_causes_cli.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import tomllib
from pathlib import Path

import psycopg
import pytest

from tests import prereqs
from tests.stack_fixtures import recon

pytestmark = [pytest.mark.slow]


def test_scenario_load_cause_mixed_end_to_end() -> None:
    base = Path(tempfile.mkdtemp(prefix="recon-causes-cli-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "SF_", "RECON_"))}
    env["RECON_STATE_DIR"] = str(base / "state")
    try:
        up = recon("services", "up", "--json", env=env)
        assert up.returncode == 0, up.stderr
        endpoints = json.loads(up.stdout)
        prereqs.assert_apache(endpoints["kafka_backend"], "the causes stack")
        cfg = base / "recon.toml"
        load = recon("scenario", "load", "--accounts", "150", "--seed", "11", "--cause", "mixed", "--config-out",
                     str(cfg), "--json", env=env)
        assert load.returncode == 0, load.stderr
        truth = json.loads(Path(json.loads(load.stdout)["ground_truth"]).read_text())
        assert truth["cause"] == "mixed" and truth["partitions"] == 4
        assert tomllib.loads(cfg.read_text())["kafka"]["group"] == "clv-events-warehouse"
        with psycopg.connect(endpoints["postgres_socket_dsn"]) as c:
            n = c.execute("SELECT count(*) FROM warehouse.clv_events").fetchone()
            twice = c.execute("SELECT count(*) FROM warehouse.clv_events WHERE delivery = 2").fetchone()
        assert n is not None and n[0] == truth["warehouse_deliveries"]
        assert twice is not None and twice[0] == sum(1 for c in truth["copies"] if c["delivery"] == 2) > 0
        audit = recon("kafka-audit", "-C", str(cfg), "--isolation-check", "--json", env=env)
        assert audit.returncode == 1, audit.stderr
        aborted = [c["offset"] for c in truth["copies"] if c["cause"] == "aborted_read_uncommitted"]
        (part,) = {c["partition"] for c in truth["copies"] if c["cause"] == "aborted_read_uncommitted"}
        assert json.loads(audit.stdout)["aborted"] == [
            {"partition": part, "from_offset": min(aborted), "to_offset": max(aborted), "events": len(aborted)}]
    finally:
        recon("services", "down", env=env)
        shutil.rmtree(base, ignore_errors=True)
