# ruff: noqa: S608 - SQL built from the test's own schema and table names
"""`recon watch` on the whole local stack (the local Salesforce API, Apache Kafka, embedded
PostgreSQL): the two steps of a cycle that test_watch.py cannot reach with PostgreSQL alone.

* **explain runs for the new differences only.** The incident scenario's Salesforce org against a
  copy of its warehouse table: cycle 1 explains every difference; a few rows changed in the copy
  make cycle 2 explain exactly those keys (its JSON line, explain.json and findings.parquet say
  so), and cycle 3, with nothing changed, explains nothing. Without this, a watcher could re-price
  every standing difference each period, or skip the new ones, and no test would notice.
* **gate --lag runs when ``[gate] NAME.lag_amount`` is set.** Money produced to Kafka that the
  warehouse's consumer has not applied opens the ``lag`` reason of the cycle's breaker; after
  `recon consume --until-caught-up` the next cycle closes it. The ledger holds every decision in
  order and the SQL guard follows them, as in test_lag_gate.py, whose helpers this reuses.

Runs on the shared ``scenario_stack`` without changing what other tests read: its own schema, table
copy, topic, consumer group and a ledger in a database of its own (Salesforce is only read).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pytest

from engine.local.kafka import create_topic
from tests.integration.test_lag_gate import (
    Lag,
    _consume,
    _decisions,
    _guard,
    _produce,
    _replace_db,
    _wait_kafka_commits,
)
from tests.stack_fixtures import Stack


@dataclass
class Base:
    """What both tests share: the stack, a ledger (administrator's and writer's DSNs), a schema."""

    stack: Stack
    ledger_dsn: str
    writer_dsn: str
    schema: str
    tag: str
    tmp: Path

    @property
    def admin(self) -> str:
        return str(self.stack.endpoints["postgres_socket_dsn"])

    def recon(self, *args: str) -> Any:
        # the ledger DSN in the config is a socket DSN without a password: the pgpass file has it
        return self.stack.run(*args, env={"PGPASSFILE": self.stack.endpoints["pgpass_file"]})

    def watch(self, config: Path, mapping: str, out: Path) -> tuple[int, dict[str, Any]]:
        """One ``--once --json`` cycle: its exit code and its one JSON line."""
        res = self.recon("watch", "-C", str(config), "--mapping", mapping, "--once", "--json",
                         "--out", str(out / "cycles-out"), "--state", str(out / "state"))
        assert res.returncode in (0, 3), res.stderr
        lines = [json.loads(ln) for ln in res.stdout.splitlines() if ln.strip()]
        assert len(lines) == 1, res.stdout
        return res.returncode, lines[0]

    def run_command(self, run_id: str) -> str | None:
        """The command the ledger recorded for ``run_id`` (None: no such run)."""
        with psycopg.connect(self.ledger_dsn) as c:
            row = c.execute("SELECT command FROM recon_audit.runs WHERE run_id = %s", (run_id,)).fetchone()
        return None if row is None else str(row[0])


def _section(text: str, name: str, body: str) -> str:
    """``text`` with the TOML table ``[name]`` replaced by ``body`` (its lines, without the header)."""
    head = f"[{name}]\n"
    start = text.index(head)
    end = text.find("\n[", start + len(head))
    end = len(text) if end < 0 else end + 1
    return text[:start] + head + body + "\n" + text[end:]


def _kafka_value(text: str, key: str) -> str | None:
    """A quoted value of the scenario config's ``[kafka]`` table (None when it has no such line)."""
    section = text[text.index("[kafka]\n"):].split("\n[", 1)[0]
    line = next((ln for ln in section.splitlines() if ln.startswith(f"{key} = ")), None)
    return None if line is None else line.split('"')[1]


def _config(base: Base, name: str, *, topic: str, group: str | None, gate: str, mapping: str) -> Path:
    """The scenario's recon.toml with this module's ledger, the given [kafka] topic and group, a
    [gate] of its own and one more mapping."""
    text = base.stack.config.read_text()
    kafka = f'bootstrap = "{base.stack.endpoints["kafka_bootstrap"]}"\ntopic = "{topic}"\n'
    kafka += f'group = "{group}"\n' if group else ""
    text = _section(text, "kafka", kafka)
    text = _section(text, "ledger", f'dsn = "{base.writer_dsn}"\n')
    text = _section(text, "gate", gate) + mapping
    path = base.tmp / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def base(scenario_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Base]:
    tag = uuid.uuid4().hex[:8]
    schema, ledger_db = f"wst_{tag}", f"recon_wst_{tag}"
    admin = scenario_stack.endpoints["postgres_socket_dsn"]
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {ledger_db}")
        c.execute(f"CREATE SCHEMA {schema}")
    ledger_dsn = _replace_db(admin, ledger_db)
    writer_dsn = ledger_dsn.replace("postgresql://recon@", "postgresql://recon_app@", 1)
    b = Base(scenario_stack, ledger_dsn, writer_dsn, schema, tag, tmp_path_factory.mktemp("watch-stack"))
    init = b.recon("ledger", "init", "-C", str(scenario_stack.config), "--dsn", ledger_dsn, "--writer", "recon_app")
    assert init.returncode == 0, init.stderr
    yield b
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"DROP SCHEMA {schema} CASCADE")


# -- explain inside a cycle: the new differences only ------------------------------------------------

EXPLAIN_MAPPING = "wclv"


def _differences(cycle: Path) -> pl.DataFrame:
    return pl.read_parquet(cycle / "diff" / "differences.parquet")


def _explained_keys(differences: pl.DataFrame, column: str) -> set[str]:
    """The keys explain makes a finding of: a mismatch of the amount column, a record missing in
    the target, a duplicate key (forensics.triangulate)."""
    d = differences.filter(((pl.col("kind") == "mismatched") & (pl.col("column") == column))
                           | pl.col("kind").is_in(["missing_in_target", "duplicate_key"]))
    return set(d["key"].cast(pl.Utf8).to_list())


def test_explain_runs_for_the_new_differences_only(base: Base) -> None:
    admin, s = base.admin, base.schema
    with psycopg.connect(admin, autocommit=True) as c:
        # a copy of the warehouse table whose updated_at a trigger sets, as an incremental target needs
        c.execute(f"CREATE TABLE {s}.clv (account_id text COLLATE \"C\" PRIMARY KEY, clv numeric(18,2) NOT NULL, "
                  "event_count integer NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())")
        c.execute(f"CREATE FUNCTION {s}.touch() RETURNS trigger LANGUAGE plpgsql AS "
                  "$$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$")
        c.execute(f"CREATE TRIGGER touch BEFORE UPDATE ON {s}.clv FOR EACH ROW EXECUTE FUNCTION {s}.touch()")
        c.execute(f"INSERT INTO {s}.clv SELECT account_id, clv, event_count, updated_at FROM warehouse.customer_clv")
    text = base.stack.config.read_text()
    column = "Customer_Lifetime_Value__c"
    cfg = _config(base, "explain", topic=str(_kafka_value(text, "topic")), group=_kafka_value(text, "group"),
                  gate=f'{EXPLAIN_MAPPING} = {{ variance_ratio = 0.005, amount_variance_ratio = 0.005, column = "{column}" }}\n',
                  mapping=f"""
[mapping.{EXPLAIN_MAPPING}]
source = "salesforce:Account"
target = "{admin}#{s}.clv"
key = ["Id=account_id"]
columns = ["{column}=clv"]
target_updated_at = "updated_at"
tolerance = {{ {column} = "0.00" }}
""")
    out = base.tmp / "explain"
    cycles = out / "cycles-out" / "cycles"

    rc, one = base.watch(cfg, EXPLAIN_MAPPING, out)
    assert (rc, one["cycle"], one["incremental"]["mode"]) == (3, 1, "full"), one
    assert one["gate"]["open_reasons"] == ["variance"] and one["gate"]["lag"] is False  # the incident
    d1 = _differences(cycles / "000001")
    keys1 = set(d1["key"].cast(pl.Utf8).to_list())
    assert one["new_differences"] == len(keys1) > 0  # everything is new in the first cycle
    assert one["explain"]["ran"] is True and one["explain"]["new_keys"] == len(keys1), one["explain"]
    assert one["explain"]["records"] == len(_explained_keys(d1, column)) > 0
    assert base.run_command(one["explain"]["run_id"]) == "explain"
    assert json.loads((cycles / "000001" / "explain" / "explain.json").read_text())["only_keys"] == len(keys1)

    # three keys that do not differ yet: two mismatches and one record missing in the target
    with psycopg.connect(admin, autocommit=True) as c:
        fresh = [r[0] for r in c.execute(f"SELECT account_id FROM {s}.clv WHERE NOT account_id = ANY(%s) "
                                         "ORDER BY account_id LIMIT 3", (sorted(keys1),)).fetchall()]
        assert len(fresh) == 3
        c.execute(f"UPDATE {s}.clv SET clv = clv + 1 WHERE account_id = ANY(%s)", (fresh[:2],))
        c.execute(f"DELETE FROM {s}.clv WHERE account_id = %s", (fresh[2],))

    rc, two = base.watch(cfg, EXPLAIN_MAPPING, out)
    assert (rc, two["cycle"], two["incremental"]["mode"]) == (3, 2, "incremental"), two
    assert two["differences"]["mismatched"] == one["differences"]["mismatched"] + 2
    assert two["differences"]["missing_in_target"] == one["differences"]["missing_in_target"] + 1
    assert two["new_differences"] == 3
    assert two["explain"]["ran"] is True and two["explain"]["new_keys"] == 3, two["explain"]
    assert two["explain"]["records"] == 3
    assert base.run_command(two["explain"]["run_id"]) == "explain"
    explained = cycles / "000002" / "explain"
    assert json.loads((explained / "explain.json").read_text())["only_keys"] == 3
    findings = pl.read_parquet(explained / "findings.parquet")
    assert sorted(findings["Id"].to_list()) == sorted(fresh)
    kinds = dict(zip(findings["Id"].to_list(), findings["kind"].to_list(), strict=True))
    assert kinds == {fresh[0]: "mismatched", fresh[1]: "mismatched", fresh[2]: "missing_in_target"}

    # nothing changed: the standing differences are not explained again
    rc, three = base.watch(cfg, EXPLAIN_MAPPING, out)
    assert (rc, three["cycle"], three["differences"]) == (3, 3, two["differences"]), three
    assert three["new_differences"] == 0
    assert three["explain"] == {"ran": False, "new_keys": 0, "reason": "no new differences"}
    assert not (cycles / "000003" / "explain").exists()
    for doc in (one, two, three):
        assert base.run_command(doc["run_id"]) == "watch"


# -- gate --lag inside a cycle ---------------------------------------------------------------------

LAG_MAPPING = "wlag"


def test_lag_opens_the_cycles_breaker_until_the_consumer_catches_up(base: Base) -> None:
    admin, s = base.admin, base.schema
    with psycopg.connect(admin, autocommit=True) as c:
        for t in ("src", "tgt"):  # equal sides: the diff's variance stays closed, lag alone decides
            c.execute(f"CREATE TABLE {s}.{t} (id text PRIMARY KEY, amount numeric(18, 2))")
            c.execute(f"INSERT INTO {s}.{t} SELECT 'k' || i, i FROM generate_series(1, 20) i")
    lag = Lag(base.stack, Path(), base.ledger_dsn, base.writer_dsn, s, base.tag)
    create_topic(base.stack.endpoints["kafka_bootstrap"], lag.topic("kafka"), partitions=2)
    cfg = _config(base, "lag", topic=lag.topic("kafka"), group=lag.group("kafka"),
                  gate=f'{LAG_MAPPING} = {{ variance_ratio = 0.05, lag_amount = "100.00" }}\n',
                  mapping=f"""
[mapping.{LAG_MAPPING}]
source = "{admin}#{s}.src"
target = "{admin}#{s}.tgt"
key = ["id"]
columns = ["amount"]
""")
    out = base.tmp / "lag"
    cycles = out / "cycles-out" / "cycles"

    _produce(lag, "kafka", ["60.00", "40.01"], 0)  # one cent over the limit, not yet applied
    rc, one = base.watch(cfg, LAG_MAPPING, out)
    assert (rc, one["exit_code"], one["differences"]["mismatched"]) == (3, 3, 0), one
    assert one["gate"] == {"state": "open", "open_reasons": ["lag"], "lag": True,
                           "decisions": [{"variance": "closed"}, {"lag": "open"}]}, one["gate"]
    assert one["explain"]["reason"] == "explain needs a Salesforce source"
    decided = json.loads((cycles / "000001" / "gate-lag" / "gate_decision.json").read_text())
    assert (decided["lag"]["amount"], decided["lag"]["events"], decided["tripped"]) == ("100.01", 2, ["lag_amount"])
    assert "reasons: lag (" in (_guard(lag, LAG_MAPPING) or "")

    _consume(lag, "kafka")
    _wait_kafka_commits(lag, "kafka", {0: 1, 1: 1})
    rc, two = base.watch(cfg, LAG_MAPPING, out)
    assert (rc, two["cycle"], two["exit_code"]) == (0, 2, 0), two
    assert two["gate"] == {"state": "closed", "open_reasons": [], "lag": True,
                           "decisions": [{"variance": "closed"}, {"lag": "closed"}]}, two["gate"]
    decided = json.loads((cycles / "000002" / "gate-lag" / "gate_decision.json").read_text())
    assert decided["lag"]["events"] == 0
    assert _guard(lag, LAG_MAPPING) is None
    assert _decisions(lag, LAG_MAPPING) == [("diff", {"variance": "closed"}), ("lag", {"lag": "open"}),
                                            ("diff", {"variance": "closed"}), ("lag", {"lag": "closed"})]
    for doc in (one, two):  # the cycle's gate runs are the ledger's, the diff's then the lag's
        assert [base.run_command(r) for r in doc["runs"]["gate"]] == ["gate", "gate"]
        assert base.run_command(doc["runs"]["diff"]) == "diff"
    verify = base.recon("ledger", "verify", "--dsn", base.ledger_dsn)
    assert verify.returncode == 0, verify.stderr
