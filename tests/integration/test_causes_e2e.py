"""Issue 20 end to end: `recon scenario load --cause X` on the Apache broker, `recon diff`, then
`recon explain`: every duplicated delivery the ground truth lists gets the cause the scenario gave
it, and the evidence explain cites (the group's rewound commit, the rebalance's uncommitted range,
the aborted offsets, the copies' producer ids) is what the scenario did.

A stack of its own per cause (a load replaces the org, the warehouse and the topic, so the shared
``scenario_stack`` cannot be used), with 150 accounts. Not one stack for all causes loaded one
after another: ``__consumer_offsets`` keeps the previous load's commits of the same group and topic
name, and a group deleted and re-created lower is a rewind as far as the log can tell, so the
second load would show the first load's end "rewound" to its own start. About 20 s to start a
stack, 10-15 s for load, diff and explain, 10 s to stop it. Slow: opt in with
``pytest -m slow tests/integration/test_causes_e2e.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import prereqs
from tests.causes_checks import check_causes
from tests.stack_fixtures import recon

pytestmark = [pytest.mark.slow]

ACCOUNTS = "150"
SEED = "11"
GROUP = "clv-events-warehouse"


class _Stack:
    def __init__(self, base: Path, env: dict[str, str]) -> None:
        self.base, self.env = base, env

    def run(self, *args: str) -> Any:
        return recon(*args, env=self.env)

    def load_and_explain(self, cause: str, *explain_args: str) -> dict[str, Any]:
        """Load the cause, diff, explain: the ground truth, the config and explain's JSON."""
        d = self.base / cause
        d.mkdir()
        cfg = d / "recon.toml"
        load = self.run("scenario", "load", "--accounts", ACCOUNTS, "--seed", SEED, "--cause", cause,
                        "--config-out", str(cfg), "--json")
        assert load.returncode == 0, load.stderr
        truth = json.loads(Path(json.loads(load.stdout)["ground_truth"]).read_text())
        diff = self.run("diff", "-C", str(cfg), "--mapping", "clv", "--out", str(d / "diff"))
        assert diff.returncode == 1, diff.stderr
        return {"truth": truth, "config": tomllib.loads(cfg.read_text()), "cfg": cfg, "dir": d,
                "explain": self.explain(d, cfg, "explain", *explain_args)}

    def explain(self, d: Path, cfg: Path, out: str, *args: str) -> dict[str, Any]:
        exp = self.run("explain", "--diff", str(d / "diff"), "-C", str(cfg), "--json", "--out", str(d / out), *args)
        assert exp.returncode == 1, exp.stderr
        doc: dict[str, Any] = json.loads(exp.stdout)
        return doc


@pytest.fixture
def stack() -> Iterator[_Stack]:
    base = Path(tempfile.mkdtemp(prefix="recon-causes-e2e-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "SF_", "RECON_"))}
    env["RECON_STATE_DIR"] = str(base / "state")
    try:
        up = recon("services", "up", "--json", env=env)
        assert up.returncode == 0, up.stderr
        prereqs.assert_apache(json.loads(up.stdout)["kafka_backend"], "the causes stack")
        yield _Stack(base, env)
    finally:
        recon("services", "down", env=env)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("cause", ["mixed", "rewind", "redelivery", "aborted"])
def test_explain_assigns_each_copy_the_cause_the_scenario_gave_it(stack: _Stack, cause: str) -> None:
    r = stack.load_and_explain(cause)
    assert r["config"]["kafka"]["group"] == GROUP
    exp = r["explain"]
    assert exp["kafka"]["group"] == GROUP and exp["kafka"]["isolation_level"] == "read_uncommitted"
    if cause == "mixed":
        assert {c["cause"] for c in r["truth"]["copies"]} == {"offset_rewind", "redelivery_before_commit",
                                                            "aborted_read_uncommitted", "producer_replay"}
    check_causes(r["truth"], exp)
    assert exp["classes"]["unexplained"] == 0
    if cause == "aborted":  # a warehouse that reads read_committed never applied the aborted copies
        rc = stack.explain(r["dir"], r["cfg"], "explain-rc", "--kafka-config", str(_props(r["dir"])))
        assert rc["kafka"]["isolation_level"] == "read_committed"
        assert rc["kafka"]["duplicates"] == 0 and rc["kafka"]["causes"] == {}


def _props(d: Path) -> Path:
    p = d / "rc.properties"
    p.write_text("isolation.level=read_committed\n")
    return p


def test_replay_with_the_group_read_gives_the_demos_numbers(stack: _Stack) -> None:
    """The default cause writes no group; naming one (scan read_uncommitted, the batches' producer
    ids instead of the headers) changes no number of the explanation, only the evidence's source."""
    r = stack.load_and_explain("replay")
    assert "group" not in r["config"]["kafka"]
    plain = r["explain"]
    assert plain["kafka"]["isolation_level"] == "read_committed"
    grouped = stack.explain(r["dir"], r["cfg"], "explain-group", "--group", GROUP)
    assert grouped["kafka"]["isolation_level"] == "read_uncommitted"
    check_causes(r["truth"], grouped)
    for k in ("records", "classes", "exposure"):
        assert grouped[k] == plain[k], k
    for k in ("events", "duplicates", "duplicate_records", "causes", "partitions"):
        assert grouped["kafka"][k] == plain["kafka"][k], k
    assert {e["source"] for w in plain["kafka"]["windows"] for x in w["causes"] for e in x["evidence"]} == {"header"}
