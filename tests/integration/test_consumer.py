"""`recon consume` against a real Apache Kafka and the embedded PostgreSQL, as a subprocess.

The consumer must be effectively exactly-once into PostgreSQL whatever happens to it: SIGKILLed at
random points, replayed from the beginning, run twice in one group, cut off from the database.
Every test compares the final tables with a single clean run of the same topic into another table
(same events and lineage, same aggregates, same dead letters, same persisted counters) and checks
the accounting: per partition, consumed = applied + duplicates + dead_letters, applied = rows
stored, dead_letters = dead letters stored, consumed = messages in the partition.

The 20-kill variant of the crash test is opt-in: ``.venv/bin/pytest -m slow tests/integration/test_consumer.py``.
"""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from psycopg import sql

from engine.core.ids import event_id
from engine.local import scenario
from engine.local.kafka import create_topic
from tests.kafka_fixtures import BrokerHandle
from tests.pg_fixtures import PgHandle

ORG = "00D5g0000000001EAA"
FOREIGN_ORG = "00D5g0000000002EAA"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------------------------------------
# the topic: the incident scenario (with its replayed duplicates) plus poison and odd-but-valid events


@dataclass
class TopicPlan:
    name: str
    messages: int  # produced
    per_partition: dict[int, int]  # messages per partition
    ends: dict[int, int]  # last offset + 1 per partition
    events: int  # distinct valid events
    poison: int  # messages that must be dead-lettered
    poison_at: list[tuple[int, int, str]] = field(default_factory=list)  # (partition, offset, reason)


def _poison(acc: str) -> list[tuple[Any, str | None]]:
    """(value, reason) pairs; value is bytes, None (tombstone) or a dict to JSON-encode."""
    ev = {"org_id": ORG, "account_id": acc, "event_type": "purchase", "event_ts": "2026-08-02T00:00:00.000Z",
          "amount": "10.00"}
    return [
        (b"{not json", "unparsable"),
        (b"[1, 2, 3]", "unparsable"),
        (None, "unparsable"),
        (dict(ev, org_id=FOREIGN_ORG), "foreign_org"),
        ({k: v for k, v in ev.items() if k != "amount"}, "missing_field"),
        (dict(ev, account_id="001NOTANID"), "invalid_record_id"),
        (dict(ev, amount="12,50"), "invalid_amount"),
        (dict(ev, event_ts="yesterday"), "invalid_event_time"),
        (b"{not json", "unparsable"),  # the same poison twice: two offsets, two dead letters
    ]


def _oddities(acc: str) -> list[dict[str, Any]]:
    """Valid events that stress the encoding: an escaped event type, a JSON number amount, 15-char ids."""
    return [
        {"org_id": ORG[:15], "account_id": acc[:15], "event_type": 'adj\tust "x"\\', "event_ts": "2026-08-03T01:02:03.004Z",
         "amount": 12.5},
        {"org_id": ORG, "account_id": acc, "event_type": "refund", "event_ts": "2026-08-03T09:00:00+02:00",
         "amount": "-0.75"},
    ]


def produce_plan(bootstrap: str, accounts: int, seed: int) -> TopicPlan:
    name = f"t-consume-{uuid.uuid4().hex[:10]}"
    sc = scenario.generate(scenario.ScenarioSpec(accounts=accounts, seed=seed, topic=name), ORG)
    create_topic(bootstrap, name, partitions=3)
    rng = random.Random(seed)
    m = sc.messages
    per: dict[int, list[dict[str, Any]]] = {0: [], 1: [], 2: []}
    for acc, typ, ts, cents, part, ts_ms, pid, seq in zip(
            *[m[c].to_list() for c in ("account_id", "event_type", "event_ts", "cents", "partition", "ts_ms",
                                       "producer_id", "sequence")], strict=True):
        sign = "-" if cents < 0 else ""
        value = json.dumps({"org_id": ORG, "account_id": acc, "event_type": typ, "event_ts": ts,
                            "amount": f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"}).encode()
        per[part].append(dict(value=value, key=f"{ORG}:{acc}".encode(), timestamp=ts_ms,
                              headers=[("org-id", ORG.encode()), ("producer-id", pid.encode()),
                                       ("sequence", str(seq).encode())]))
    acc0 = m["account_id"][0]
    extra: list[dict[str, Any]] = []
    for value, reason in _poison(acc0):
        body = json.dumps(value).encode() if isinstance(value, dict) else value
        hdrs = [("org-id", (FOREIGN_ORG if reason == "foreign_org" else ORG).encode())]
        extra.append(dict(value=body, key=b"poison", headers=hdrs, reason=reason))
    for ev in _oddities(acc0):
        extra.append(dict(value=json.dumps(ev).encode(), key=b"\xff\xfe binary key", headers=[]))
    for rec in extra:  # each at a random position of a random partition
        lst = per[rng.randrange(3)]
        lst.insert(rng.randrange(len(lst) + 1), rec)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 10,
                         "compression.type": "lz4"})
    ends: dict[int, int] = {}
    errors: list[Any] = []
    poison_at: list[tuple[int, int, str]] = []

    def on_delivery(reason: str | None, err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err)
        else:
            ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)
            if reason is not None:
                poison_at.append((msg.partition(), msg.offset(), reason))

    for part, recs in per.items():
        for rec in recs:
            reason = rec.pop("reason", None)
            producer.produce(name, partition=part, on_delivery=functools.partial(on_delivery, reason), **rec)
            producer.poll(0)
    assert producer.flush(60) == 0 and not errors, errors
    valid = int((~sc.events["lost"]).sum()) + len(_oddities(acc0))
    return TopicPlan(name=name, messages=sum(len(v) for v in per.values()),
                     per_partition={p: len(v) for p, v in per.items()}, ends=ends, events=valid,
                     poison=len(_poison(acc0)), poison_at=sorted(poison_at))


# ---------------------------------------------------------------------------------------------
# running the CLI and reading the tables


def _env(pg: PgHandle) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
    env["PGPASSFILE"] = str(pg.paths.pgpass_file)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def consume_cmd(pg: PgHandle, bootstrap: str, topic: str, table: str, group: str, *extra: str,
                dsn: str | None = None) -> list[str]:
    return [sys.executable, "-m", "engine.cli.main", "consume", "--bootstrap", bootstrap, "--topic", topic,
            "--group", group, "--dsn", dsn or pg.info.dsn, "--table", table, "--org-id", ORG, "--json",
            "--metrics-interval", "0", *extra]


def consume(pg: PgHandle, bootstrap: str, topic: str, table: str, group: str | None = None, *extra: str,
            timeout: float = 90, env: dict[str, str] | None = None,
            dsn: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = consume_cmd(pg, bootstrap, topic, table, group or f"g-{uuid.uuid4().hex[:8]}", "--until-caught-up",
                      *extra, dsn=dsn)
    return subprocess.run(cmd, env=env or _env(pg), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def ok_json(res: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert res.returncode == 0, res.stderr[-3000:]
    out: dict[str, Any] = json.loads(res.stdout)
    return out


@dataclass
class State:
    events: list[tuple[Any, ...]]
    aggregates: list[tuple[Any, ...]]
    dead_letters: list[tuple[Any, ...]]
    offsets: list[tuple[Any, ...]]

    def data(self) -> tuple[Any, ...]:
        """Everything but the counters (a replay adds to those)."""
        return self.events, self.aggregates, self.dead_letters, [r[:2] for r in self.offsets]


def ident(table: str, suffix: str = "") -> sql.Identifier:
    schema, name = table.split(".")
    return sql.Identifier(schema, name + suffix)


def read_state(pg: PgHandle, table: str) -> State:
    with psycopg.connect(pg.info.socket_dsn) as conn:
        def rows(query: str, suffix: str = "") -> list[tuple[Any, ...]]:
            return conn.execute(sql.SQL(query).format(ident(table, suffix))).fetchall()

        return State(
            events=rows("SELECT event_id, org_id, record_id, event_type, event_ts, amount, lineage::text FROM {} "
                        "ORDER BY event_id"),
            aggregates=rows("SELECT record_id, clv, event_count, last_event_ts FROM {} ORDER BY record_id", "_aggregates"),
            dead_letters=rows("SELECT kafka_topic, kafka_partition, kafka_offset, kafka_timestamp, kafka_timestamp_type, "
                              "key, value, headers::text, reason, detail FROM {} "
                              "ORDER BY kafka_topic, kafka_partition, kafka_offset", "_dead_letters"),
            offsets=rows("SELECT kafka_partition, next_offset, consumed, applied, duplicates, dead_letters, conflicts FROM {} "
                         "ORDER BY kafka_partition", "_offsets"),
        )


def check_accounting(st: State, plan: TopicPlan, replays: int = 1) -> None:
    """The persisted counters prove that every offset was applied, skipped as a duplicate or dead-lettered."""
    assert [r[0] for r in st.offsets] == [0, 1, 2]
    for p, nxt, consumed, applied, dups, dead, conflicts in st.offsets:
        assert consumed == applied + dups + dead and conflicts == 0  # the scenario's copies are true copies
        assert nxt == plan.ends[p]
        assert consumed == replays * plan.per_partition[p]
    assert sum(r[3] for r in st.offsets) == len(st.events) == plan.events
    assert sum(r[5] for r in st.offsets) == len(st.dead_letters) == plan.poison
    # each poison message is dead-lettered at its own offset, for its own reason
    assert sorted((r[1], r[2], r[8]) for r in st.dead_letters) == plan.poison_at
    assert len({r[0] for r in st.events}) == len(st.events)
    # the aggregates are the sums of the stored events, per record
    sums: dict[str, list[Any]] = {}
    for _eid, _org, rec, _typ, ts, amount, _lin in st.events:
        s = sums.setdefault(rec, [0, 0, ts])
        s[0] += amount
        s[1] += 1
        s[2] = max(s[2], ts)
    assert {r[0]: list(r[1:]) for r in st.aggregates} == sums


def totals(st: State) -> dict[str, int]:
    keys = ("consumed", "applied", "duplicates", "dead_letters", "conflicts")
    return {k: sum(r[2 + i] for r in st.offsets) for i, k in enumerate(keys)}


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def plan(apache_kafka: BrokerHandle) -> TopicPlan:
    return produce_plan(apache_kafka.bootstrap, accounts=1500, seed=11)


@pytest.fixture(scope="module")
def reference(embedded_pg: PgHandle, apache_kafka: BrokerHandle, plan: TopicPlan) -> State:
    """One clean run of the topic: what every other way of consuming it must end with."""
    table = f"consume_ref.r_{uuid.uuid4().hex[:8]}"
    out = ok_json(consume(embedded_pg, apache_kafka.bootstrap, plan.name, table))
    assert out["stopped_by"] == "caught_up"
    assert out["run"] == out["totals"]
    st = read_state(embedded_pg, table)
    check_accounting(st, plan)
    assert totals(st) == out["totals"]
    return st


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Consumers started by a test; none outlives it."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)


def _table() -> str:
    return f"consume_it.t_{uuid.uuid4().hex[:8]}"


def _counter(pg: PgHandle, table: str) -> int:
    with psycopg.connect(pg.info.socket_dsn, autocommit=True) as conn:
        try:
            row = conn.execute(sql.SQL("SELECT coalesce(sum(consumed), 0) FROM {}").format(
                ident(table, "_offsets"))).fetchone()
        except psycopg.errors.UndefinedTable:
            return -1
    return int(row[0]) if row else 0


# ---------------------------------------------------------------------------------------------
# crash safety


@pytest.mark.parametrize("kills", [3, pytest.param(20, marks=pytest.mark.slow)])
def test_sigkill_at_random_points_changes_nothing(embedded_pg: PgHandle, apache_kafka: BrokerHandle, plan: TopicPlan,
                                                  reference: State, procs: list[subprocess.Popen[str]],
                                                  kills: int) -> None:
    """Kill -9 while batches are being written, restart, repeat; the end state is the clean run's.

    Small batches make every kill land between, or inside, one of hundreds of transactions. Each
    kill waits until the persisted counters pass a random threshold, then a random few ms more.
    The default variant uses static membership (``--instance-id``): a restarted singleton gets
    its partitions back at once; the slow variant restarts as a new dynamic member each time.
    """
    rng = random.Random(kills)
    table, group = _table(), f"g-crash-{uuid.uuid4().hex[:8]}"
    extra = ["--until-caught-up", "--batch-size", "20"]
    if kills <= 3:
        extra += ["--instance-id", f"crash-{uuid.uuid4().hex[:6]}"]
    thresholds = sorted(rng.uniform(0.05, 0.9) * plan.messages for _ in range(kills))
    killed = 0
    for threshold in thresholds:
        p = subprocess.Popen(consume_cmd(embedded_pg, apache_kafka.bootstrap, plan.name, table, group, *extra),
                             env=_env(embedded_pg), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        procs.append(p)
        deadline = time.monotonic() + 60
        while p.poll() is None and _counter(embedded_pg, table) < threshold:
            assert time.monotonic() < deadline, "the consumer made no progress"
            time.sleep(0.005)
        if p.poll() is None:
            time.sleep(rng.uniform(0, 0.03))
            p.send_signal(signal.SIGKILL)
            killed += 1
        p.communicate(timeout=30)
    assert killed >= kills - 1, f"only {killed} of {kills} kills landed before the consumer finished"
    out = ok_json(consume(embedded_pg, apache_kafka.bootstrap, plan.name, table, group, *extra[1:]))
    assert out["stopped_by"] == "caught_up"
    st = read_state(embedded_pg, table)
    check_accounting(st, plan)
    assert st == reference  # rows, lineage, aggregates, dead letters, offsets and counters


def test_reset_offsets_replay_changes_nothing(embedded_pg: PgHandle, apache_kafka: BrokerHandle, plan: TopicPlan,
                                              reference: State) -> None:
    table = _table()
    ok_json(consume(embedded_pg, apache_kafka.bootstrap, plan.name, table))
    before = read_state(embedded_pg, table)
    assert before == reference
    again = ok_json(consume(embedded_pg, apache_kafka.bootstrap, plan.name, table))  # nothing new: nothing read
    assert again["run"] == {"consumed": 0, "applied": 0, "duplicates": 0, "dead_letters": 0, "conflicts": 0}

    out = ok_json(consume(embedded_pg, apache_kafka.bootstrap, plan.name, table, None, "--reset-offsets", "earliest"))
    assert out["run"] == {"consumed": plan.messages, "applied": 0, "duplicates": plan.messages, "dead_letters": 0,
                          "conflicts": 0}
    after = read_state(embedded_pg, table)
    assert after.data() == before.data()
    check_accounting(after, plan, replays=2)
    t0, t1 = totals(before), totals(after)
    assert t1 == {"consumed": 2 * t0["consumed"], "applied": t0["applied"],
                  "duplicates": t0["duplicates"] + plan.messages, "dead_letters": t0["dead_letters"], "conflicts": 0}
    assert out["totals"] == t1


def test_two_consumers_in_one_group_equal_one(embedded_pg: PgHandle, apache_kafka: BrokerHandle, plan: TopicPlan,
                                              reference: State, procs: list[subprocess.Popen[str]]) -> None:
    """Started together: the group rebalances under them mid-stream; the offset fence keeps even the
    counters exact."""
    table, group = _table(), f"g-pair-{uuid.uuid4().hex[:8]}"
    for _ in range(2):
        procs.append(subprocess.Popen(
            consume_cmd(embedded_pg, apache_kafka.bootstrap, plan.name, table, group, "--until-caught-up",
                        "--batch-size", "50"),
            env=_env(embedded_pg), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT))
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=90)
        assert p.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout))
    st = read_state(embedded_pg, table)
    check_accounting(st, plan)
    assert st == reference
    run_sum = {k: sum(o["run"][k] for o in outs) for k in ("consumed", "applied", "duplicates", "dead_letters",
                                                           "conflicts")}
    assert run_sum == totals(reference)


def test_database_connection_cut_mid_run(embedded_pg: PgHandle, apache_kafka: BrokerHandle, plan: TopicPlan,
                                         reference: State, procs: list[subprocess.Popen[str]]) -> None:
    """The server terminates the consumer's connection three times: it reconnects and carries on."""
    table = _table()
    p = subprocess.Popen(consume_cmd(embedded_pg, apache_kafka.bootstrap, plan.name, table, f"g-{uuid.uuid4().hex[:8]}",
                                     "--until-caught-up", "--batch-size", "20"),
                         env=_env(embedded_pg), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    procs.append(p)
    cuts = 0
    with psycopg.connect(embedded_pg.superuser_dsn, autocommit=True) as admin:
        for threshold in (0.2, 0.45, 0.7):
            deadline = time.monotonic() + 60
            while p.poll() is None and _counter(embedded_pg, table) < threshold * plan.messages:
                assert time.monotonic() < deadline
                time.sleep(0.005)
            n = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                              "WHERE application_name = %s", (f"recon consume {table}",)).fetchone()
            cuts += int(n[0]) if n else 0
    stdout, stderr = p.communicate(timeout=90)
    assert p.returncode == 0, stderr[-3000:]
    assert cuts >= 2
    st = read_state(embedded_pg, table)
    check_accounting(st, plan)
    assert st == reference


def test_sigterm_finishes_the_batch_and_exits_0(embedded_pg: PgHandle, apache_kafka: BrokerHandle, plan: TopicPlan,
                                                reference: State, procs: list[subprocess.Popen[str]]) -> None:
    table = _table()
    p = subprocess.Popen(consume_cmd(embedded_pg, apache_kafka.bootstrap, plan.name, table, f"g-{uuid.uuid4().hex[:8]}"),
                         env=_env(embedded_pg), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    procs.append(p)
    deadline = time.monotonic() + 60
    while _counter(embedded_pg, table) < plan.messages:  # it never stops by itself: no --until-caught-up
        assert p.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=20)
    assert p.returncode == 0, stderr[-3000:]
    out = json.loads(stdout)
    assert out["stopped_by"] == "signal (SIGTERM)" and out["totals"] == totals(reference)
    assert read_state(embedded_pg, table) == reference


def test_rows_the_database_refuses_are_dead_lettered(embedded_pg: PgHandle, apache_kafka: BrokerHandle,
                                                     tmp_path: Any) -> None:
    """An operator's CHECK constraint refuses an event that passed validation: the batch is rewritten
    message by message, only that event becomes a dead letter, and the stream carries on."""
    from engine.connectors.kafka import consumer as c

    topic = f"t-refused-{uuid.uuid4().hex[:8]}"
    create_topic(apache_kafka.bootstrap, topic, partitions=1)
    acc = "0015g0000000001AAA"
    amounts = ["1.00", "2.00", "5000.00", "3.00", "1.00"]  # the last repeats the first: a duplicate
    producer = Producer({"bootstrap.servers": apache_kafka.bootstrap})
    for i, amount in enumerate(amounts):
        ev = {"org_id": ORG, "account_id": acc, "event_type": "purchase",
              "event_ts": f"2026-08-01T10:00:0{i % 4}.000Z", "amount": amount}
        producer.produce(topic, json.dumps(ev).encode(), key=b"k", partition=0)
    assert producer.flush(30) == 0
    table = _table()
    settings = c.ConsumerSettings(bootstrap=apache_kafka.bootstrap, topic=topic, group="unused",
                                  dsn=embedded_pg.info.socket_dsn, table=c.parse_table(table))
    sink = c.Sink(settings, lambda _s: True)
    sink.connect()
    sink.ensure_schema()
    sink.conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT amount_cap CHECK (amount < 1000)").format(ident(table)))
    sink.conn.commit()
    sink.close()
    cfg = tmp_path / "client.properties"
    cfg.write_text("# a valid librdkafka property passes through\nfetch.min.bytes=1\n")
    out = ok_json(consume(embedded_pg, apache_kafka.bootstrap, topic, table, None, "--kafka-config", str(cfg)))
    assert out["run"] == {"consumed": 5, "applied": 3, "duplicates": 1, "dead_letters": 1, "conflicts": 0}
    st = read_state(embedded_pg, table)
    assert [r[5] for r in st.events] and sorted(str(r[5]) for r in st.events) == ["1.00", "2.00", "3.00"]
    (dl,) = st.dead_letters
    assert (dl[2], dl[8]) == (2, "rejected_by_database") and "amount_cap" in dl[9]
    assert json.loads(dl[6])["amount"] == "5000.00"  # the raw message, as produced
    assert st.offsets == [(0, 5, 5, 3, 1, 1, 0)]
    assert st.aggregates[0][1:3] == (Decimal("6.00"), 3)


# ---------------------------------------------------------------------------------------------
# the incident could not have happened


def test_scenario_rebuilt_through_consume_matches_salesforce(embedded_pg: PgHandle,
                                                             apache_kafka: BrokerHandle) -> None:
    topic = f"t-scenario-{uuid.uuid4().hex[:8]}"
    sc = scenario.generate(scenario.ScenarioSpec(accounts=500, topic=topic), ORG)
    create_topic(apache_kafka.bootstrap, topic, partitions=sc.spec.partitions)
    delivered = scenario.produce(sc, apache_kafka.bootstrap)
    table = f"consume_it.clv_{uuid.uuid4().hex[:8]}"
    out = ok_json(consume(embedded_pg, apache_kafka.bootstrap, topic, table))
    copies = int(delivered["is_copy"].sum())
    assert copies > 0
    assert out["run"] == {"consumed": len(delivered), "applied": len(delivered) - copies, "duplicates": copies,
                          "dead_letters": 0, "conflicts": 0}
    with psycopg.connect(embedded_pg.info.socket_dsn) as conn:
        clv = {r[0]: (r[1], r[2]) for r in conn.execute(sql.SQL(
            "SELECT record_id, clv * 100, event_count FROM {}").format(ident(table, "_aggregates"))).fetchall()}
        ids = {str(r[0]) for r in conn.execute(sql.SQL("SELECT event_id FROM {}").format(ident(table))).fetchall()}
    # one row per delivered event, whatever the number of copies; the same ids the scenario computed
    reached = sc.events.filter(~sc.events["lost"])
    assert ids == set(reached["event_id"].to_list())
    a = sc.accounts
    complete = a.filter(a["class"] != "missing_events")  # every event of these reached the topic
    checked_sf = 0
    for acc, cls, sf_cents, true_cents in complete.select("Id", "class", "sf_cents", "true_cents").iter_rows():
        cents, _n = clv[acc]
        assert cents == true_cents, (acc, cls)
        if cls != "stale_salesforce":  # Salesforce itself lags there; its truth is true_cents
            assert cents == sf_cents, (acc, cls)
            checked_sf += 1
    assert checked_sf >= len(a) - 3 * sc.spec.n_special
    # the accounts whose events were lost in the incident are short of exactly those events
    for acc, true_cents in a.filter(a["class"] == "missing_events").select("Id", "true_cents").iter_rows():
        lost = sc.events.filter(sc.events["lost"] & (sc.events["account_id"] == acc))["cents"].sum()
        assert clv[acc][0] == true_cents - lost


# ---------------------------------------------------------------------------------------------
# errors the user can fix (exit 2) and services that stay away (exit 5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _one_line_error(res: subprocess.CompletedProcess[str], code: int, *needles: str, notices: bool = False) -> str:
    """The error is one line, last on stderr; before it only ``consume:`` notices (retries), if allowed."""
    assert res.returncode == code, (res.returncode, res.stderr[-2000:])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("recon: error: "), res.stderr
    assert all(ln.startswith("consume: ") for ln in lines[:-1]) if notices else len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in lines[-1], lines[-1]
    return lines[-1]


def test_database_unreachable_past_the_deadline_exits_5(embedded_pg: PgHandle, apache_kafka: BrokerHandle,
                                                         plan: TopicPlan) -> None:
    """An outage, not a user error: retried with backoff until the deadline, one notice per retry,
    then one line that names the deadline and counts the attempts (no clock is read here)."""
    import re

    port = _free_port()
    res = consume(embedded_pg, apache_kafka.bootstrap, plan.name, _table(), None, "--deadline", "2",
                  dsn=f"postgresql://recon@127.0.0.1:{port}/recon", timeout=30)
    last = _one_line_error(res, 5, f"PostgreSQL at 127.0.0.1:{port}/recon unreachable for 2 s", "--deadline",
                           notices=True)
    attempts = re.search(r"\((\d+) attempts?\)", last)
    assert attempts, last
    retries = [ln for ln in res.stderr.splitlines() if ln.startswith("consume: ") and ", retrying in " in ln]
    assert int(attempts.group(1)) >= 2 and len(retries) == int(attempts.group(1)) - 1, res.stderr


def test_broker_unreachable_past_the_deadline_exits_5(embedded_pg: PgHandle, plan: TopicPlan) -> None:
    port = _free_port()
    res = consume(embedded_pg, f"127.0.0.1:{port}", plan.name, _table(), None, "--deadline", "2", timeout=30)
    _one_line_error(res, 5, f"Kafka at 127.0.0.1:{port} unreachable", notices=True)


def test_missing_topic_exits_2_and_is_not_created(embedded_pg: PgHandle, apache_kafka: BrokerHandle) -> None:
    topic = f"t-missing-{uuid.uuid4().hex[:8]}"
    res = consume(embedded_pg, apache_kafka.bootstrap, topic, _table(), None, "--deadline", "10")
    _one_line_error(res, 2, f"topic '{topic}' does not exist", "--topic")
    md = AdminClient({"bootstrap.servers": apache_kafka.bootstrap}).list_topics(timeout=10)
    assert topic not in md.topics


def test_wrong_password_exits_2_without_echoing_it(embedded_pg: PgHandle, apache_kafka: BrokerHandle,
                                                   plan: TopicPlan, tmp_path: Any) -> None:
    env = _env(embedded_pg)
    del env["PGPASSFILE"]
    env["PGPASSWORD"] = "not-the-password-4711"
    res = consume(embedded_pg, apache_kafka.bootstrap, plan.name, _table(), env=env)
    line = _one_line_error(res, 2, "refused the password", "PGPASSWORD")
    assert "4711" not in res.stderr + res.stdout and "4711" not in line
    empty = tmp_path / "pgpass"
    empty.write_text("")
    empty.chmod(0o600)
    env["PGPASSFILE"] = str(empty)
    del env["PGPASSWORD"]
    res = consume(embedded_pg, apache_kafka.bootstrap, plan.name, _table(), env=env)
    _one_line_error(res, 2, "none was given")


@pytest.mark.parametrize(("args", "needle"), [
    (["--reset-offsets", "latest"], "only 'earliest'"),
    (["--batch-size", "0"], "--batch-size"),
    (["--org-id", "nonsense"], "--org-id"),
])
def test_bad_options_exit_2(embedded_pg: PgHandle, apache_kafka: BrokerHandle, plan: TopicPlan,
                            args: list[str], needle: str) -> None:
    res = consume(embedded_pg, apache_kafka.bootstrap, plan.name, _table(), None, *args)
    _one_line_error(res, 2, needle)


def test_bad_kafka_config_exits_2(embedded_pg: PgHandle, apache_kafka: BrokerHandle, plan: TopicPlan,
                                  tmp_path: Any) -> None:
    f = tmp_path / "client.properties"
    f.write_text("no.such.property=whatever-secret\n")
    res = consume(embedded_pg, apache_kafka.bootstrap, plan.name, _table(), None, "--kafka-config", str(f))
    _one_line_error(res, 2, "no.such.property", "--kafka-config")
    assert "whatever-secret" not in res.stderr


def test_wrong_sasl_credentials_exit_2_without_the_password(embedded_pg: PgHandle, apache_kafka: BrokerHandle,
                                                            plan: TopicPlan, tmp_path: Any) -> None:
    """The local broker's SASL_PLAINTEXT listener refuses the login: one line, exit 2, no password."""
    from engine.local.kafka import LOCAL_SASL_USER

    f = tmp_path / "sasl.properties"
    f.write_text(f"security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.username={LOCAL_SASL_USER}\n"
                 "sasl.password=not-the-password-42\n")
    res = consume(embedded_pg, apache_kafka.broker.sasl_bootstrap, plan.name, _table(), None, "--kafka-config", str(f))
    _one_line_error(res, 2, "refused", "--kafka-config", notices=True)
    assert "not-the-password-42" not in res.stderr + res.stdout


def test_event_id_vector_matches_engine_ids() -> None:
    """The consumer and the scenario share one id function: the published vector holds here too."""
    assert event_id(ORG, "0015g0000000001AAA", "purchase", "2026-08-01T10:00:00.123Z") == \
        "983e2908-4d48-5f72-aebb-29619c55b973"


def test_the_sum_column_is_named_by_the_user(embedded_pg: PgHandle, apache_kafka: BrokerHandle) -> None:
    """`--sum-column` names the aggregates column that sums the amounts (nothing in the consumer
    assumes the scenario's `clv`); a name that is not a plain column name is refused before any
    table is created."""
    topic = f"t-sumcol-{uuid.uuid4().hex[:8]}"
    create_topic(apache_kafka.bootstrap, topic, partitions=1)
    acc = "0015g0000000001AAA"
    producer = Producer({"bootstrap.servers": apache_kafka.bootstrap})
    for i, amount in enumerate(["1.25", "2.50", "-0.75"]):
        ev = {"org_id": ORG, "account_id": acc, "event_type": "purchase",
              "event_ts": f"2026-08-01T10:00:0{i}.000Z", "amount": amount}
        producer.produce(topic, json.dumps(ev).encode(), key=b"k", partition=0)
    assert producer.flush(30) == 0
    table = _table()
    out = ok_json(consume(embedded_pg, apache_kafka.bootstrap, topic, table, None, "--sum-column", "ltv_amount"))
    assert out["run"]["applied"] == 3
    with psycopg.connect(embedded_pg.info.socket_dsn) as conn:
        row = conn.execute(sql.SQL("SELECT record_id, ltv_amount, event_count FROM {}").format(
            ident(table, "_aggregates"))).fetchone()
    assert row is not None and (row[0], str(row[1]), row[2]) == (acc, "3.00", 3)
    bad = consume(embedded_pg, apache_kafka.bootstrap, topic, _table(), None, "--sum-column", "x; DROP TABLE y")
    assert bad.returncode == 2 and "--sum-column" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
