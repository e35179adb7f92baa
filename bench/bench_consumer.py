"""`recon consume` throughput into PostgreSQL next to a plain, non-idempotent loader, in one run.

Usage (from the repository root, with the project's venv):

    .venv/bin/python bench/bench_consumer.py --events 1000000 [--repeat 2] [--kafka apache|tansu] [--markdown]

Starts (or reuses) an embedded PostgreSQL and a local broker in ./.recon-bench (stopping at the
end what it started, unless --keep), produces the incident scenario sized to about --events
messages (so ~3% of them are replayed duplicates) into a fresh 3-partition topic, then times,
alternately and --repeat times each:

  baseline  the pipeline that caused the incident: consume, json.loads, COPY straight into a
            table shaped like warehouse.clv_events (no event id, no dedup, no lineage, no
            aggregates, no offsets in the database), one transaction per batch;
  same_rows the rows recon stores (event ids, lineage JSONB; same transform) COPYed straight into a
            table without a key: no dedup, no aggregates, no offsets. recon vs this is the cost of
            the idempotency itself; recon vs baseline also includes ids, lineage and validation;
  recon     engine.connectors.kafka.consumer.run (what `recon consume --until-caught-up` runs) into a fresh events
            table: event ids, dedup, lineage JSONB, dead-letter guards, per-record aggregates and
            offsets + counters, all in one transaction per batch.

Both run in this process, read the same topic from the beginning with a new consumer group, use
the same batch size and stop at partition EOF. Reported per side: events/s (messages consumed /
wall seconds, group join included) and CPU microseconds per event of the consumer process, the
PostgreSQL server and the broker, so that figures taken on a busy machine can still be read; and
``postgres_backend``, the CPU of the side's own PostgreSQL backends only (no autovacuum, no other
clients of a shared server), read from /proc just before each connection closes.
The best run of each side is compared. Each side's tables are dropped as soon as it is measured
(unless --keep), so that autovacuum of one side's rows does not run while the next is timed.
Prints one JSON object (and a table row with --markdown).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ORG_ID = "00D5g0000000001EAA"


# ---------------------------------------------------------------------------------------------
# CPU accounting


def _proc_cpu(pid: int, children: bool = False) -> float:
    """utime+stime (and reaped children's, with ``children``) of a process, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def _pg_cpu(postmaster: int) -> float:
    """The whole PostgreSQL server: the postmaster, its live children, and the exited (reaped) ones."""
    return _proc_cpu(postmaster, children=True) + sum(_proc_cpu(c) for c in _children(postmaster))


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


#: CPU seconds of the PostgreSQL backends of the side being measured, read from /proc just before
#: each of its connections closes (the server-wide figure also counts autovacuum and, on a shared
#: machine, other clients of the same server).
_backend_cpu: list[float] = []


def _backend_closing(conn: Any) -> None:
    """Record the CPU of ``conn``'s backend, which has served only this connection since its fork."""
    pid = conn.info.backend_pid
    if pid:
        _backend_cpu.append(_proc_cpu(pid))


class Meter:
    def __init__(self, pg_pid: int, broker_pid: int) -> None:
        self.pg_pid, self.broker_pid = pg_pid, broker_pid

    def snap(self, settle: float = 0.0) -> tuple[float, float, float, float]:
        """Wall clock now; CPU after ``settle`` seconds, so that backends which just exited have been
        reaped and credited to the postmaster (their CPU would be missed otherwise)."""
        wall = time.perf_counter()
        if settle:
            time.sleep(settle)
        return wall, _self_cpu(), _pg_cpu(self.pg_pid), _proc_cpu(self.broker_pid)

    @staticmethod
    def result(a: tuple[float, ...], b: tuple[float, ...], events: int) -> dict[str, Any]:
        wall = b[0] - a[0]
        per = {k: round((b[i] - a[i]) / events * 1e6, 2) for i, k in ((1, "consumer"), (2, "postgres"), (3, "broker"))}
        per["total"] = round(sum(per.values()), 2)
        per["postgres_backend"] = round(sum(_backend_cpu) / events * 1e6, 2)
        _backend_cpu.clear()
        return {"elapsed_s": round(wall, 3), "events_per_s": round(events / wall), "cpu_us_per_event": per}


# ---------------------------------------------------------------------------------------------
# the two sides


def baseline(bootstrap: str, topic: str, dsn: str, table: str, batch_size: int) -> int:
    """The plain loader: consume, parse, COPY straight into a table, commit per batch. No dedup."""
    import psycopg
    from confluent_kafka import Consumer, KafkaError

    from engine.connectors.kafka.client import fast_rejoin_consumer_config

    with psycopg.connect(dsn) as conn:
        conn.execute(f"""CREATE TABLE {table} (
            kafka_topic text NOT NULL, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL,
            org_id text NOT NULL, account_id text COLLATE "C" NOT NULL, event_type text NOT NULL,
            event_ts timestamptz NOT NULL, amount numeric(18,2) NOT NULL, producer_id text,
            loaded_at timestamptz NOT NULL DEFAULT now())""")
        conn.commit()
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-plain-{uuid.uuid4().hex[:8]}",
                      "enable.auto.commit": False, "enable.partition.eof": True, "auto.offset.reset": "earliest",
                      "fetch.wait.max.ms": 100, **fast_rejoin_consumer_config()})
        assigned: set[int] = set()
        eof: set[int] = set()

        def on_assign(consumer: Any, parts: list[Any]) -> None:
            assigned.update(tp.partition for tp in parts)

        c.subscribe([topic], on_assign=on_assign)
        n = 0
        copy_sql = (f"COPY {table} (kafka_topic, kafka_partition, kafka_offset, org_id, account_id, event_type, "
                    "event_ts, amount, producer_id) FROM STDIN")
        loads = json.loads
        try:
            while not assigned or eof < assigned:
                msgs = c.consume(batch_size, 0.25)
                lines = []
                for m in msgs:
                    if m.error() is not None:
                        if m.error().code() == KafkaError._PARTITION_EOF:
                            eof.add(m.partition())
                        continue
                    eof.discard(m.partition())
                    d = loads(m.value())
                    pid = next((v.decode() for k, v in m.headers() or () if k == "producer-id"), "\\N")
                    lines.append(f"{m.topic()}\t{m.partition()}\t{m.offset()}\t{d['org_id']}\t{d['account_id']}\t"
                                 f"{d['event_type']}\t{d['event_ts']}\t{d['amount']}\t{pid}\n")
                if lines:
                    with conn.cursor().copy(copy_sql) as cp:
                        cp.write("".join(lines))
                    conn.commit()
                    n += len(lines)
        finally:
            c.close()
        _backend_closing(conn)
    return n


def same_rows(bootstrap: str, topic: str, dsn: str, table: str, batch_size: int) -> int:
    """recon's own rows (event ids, lineage JSONB) COPYed straight into a table without a key: what
    the idempotency itself (dedup, aggregates, offsets and counters, fencing) costs on top."""
    import psycopg
    from confluent_kafka import Consumer

    from engine.connectors.kafka import consumer
    from engine.connectors.kafka.client import fast_rejoin_consumer_config

    with psycopg.connect(dsn) as conn:
        conn.execute(f"""CREATE TABLE {table} (
            event_id uuid NOT NULL, org_id text COLLATE "C" NOT NULL, record_id text COLLATE "C" NOT NULL,
            event_type text NOT NULL, event_ts timestamptz NOT NULL, amount numeric NOT NULL, lineage jsonb NOT NULL,
            ingested_at timestamptz NOT NULL DEFAULT now())""")
        conn.commit()
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-rows-{uuid.uuid4().hex[:8]}",
                      "enable.auto.commit": False, "enable.partition.eof": True, "auto.offset.reset": "earliest",
                      "fetch.wait.max.ms": 100, **fast_rejoin_consumer_config()})
        assigned: set[int] = set()
        eof: dict[int, bool] = {}
        c.subscribe([topic], on_assign=lambda _c, parts: assigned.update(tp.partition for tp in parts))
        n = 0
        fields = consumer.FieldNames()
        copy_sql = f"COPY {table} (event_id, org_id, record_id, event_type, event_ts, amount, lineage) FROM STDIN"
        try:
            while not assigned or not all(eof.get(p) for p in assigned):
                b = consumer.transform(c.consume(batch_size, 0.25), fields, ORG_ID)
                eof.update(b.eof)
                if b.frame.height:
                    with conn.cursor().copy(copy_sql) as cp:
                        cp.write(b.frame.get_column("line").str.join("").item())
                    conn.commit()
                n += len(b)
        finally:
            c.close()
        _backend_closing(conn)
    return n


def recon(bootstrap: str, topic: str, dsn: str, table: str, batch_size: int) -> dict[str, Any]:
    from engine.connectors.kafka import consumer

    s = consumer.ConsumerSettings(bootstrap=bootstrap, topic=topic, group=f"bench-recon-{uuid.uuid4().hex[:8]}",
                                  dsn=dsn, table=consumer.parse_table(table), org_id=ORG_ID, until_caught_up=True,
                                  batch_size=batch_size, metrics_interval_s=0)
    close = consumer.Sink.close

    def closing(sink: consumer.Sink) -> None:  # the sink's backend CPU, read just before it goes
        if sink.conn is not None and not sink.conn.closed:
            _backend_closing(sink.conn)
        close(sink)

    consumer.Sink.close = closing  # type: ignore[method-assign]
    try:
        return consumer.run(s).as_dict()
    finally:
        consumer.Sink.close = close  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------


def _produce(bootstrap: str, events: int) -> tuple[str, int, int]:
    from engine.local import scenario
    from engine.local.kafka import create_topic

    topic = f"bench-consume-{events}-{uuid.uuid4().hex[:6]}"
    accounts = max(50, round(events / 5.06))  # 2 + Poisson(3) events per account, plus the replayed copies
    sc = scenario.generate(scenario.ScenarioSpec(accounts=accounts, topic=topic), ORG_ID)
    create_topic(bootstrap, topic, partitions=3)
    delivered = scenario.produce(sc, bootstrap)
    return topic, len(delivered), int(delivered["is_copy"].sum())


def _warm_group_coordinator(bootstrap: str, topic: str) -> None:
    """The first consumer group on a fresh broker waits ~3 s for __consumer_offsets: not ours to time."""
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-warm-{uuid.uuid4().hex[:8]}"})
    c.subscribe([topic])
    deadline = time.monotonic() + 30
    while not c.assignment() and time.monotonic() < deadline:
        c.poll(0.2)
    c.close()


def _drop(dsn: str, tables: list[str], keep: bool) -> None:
    """Drop the measured tables (unless --keep) as soon as a side is measured: autovacuum would
    otherwise process a side's million fresh rows while the next side is being timed."""
    import psycopg

    if keep or not tables:
        return
    with psycopg.connect(dsn, autocommit=True) as conn:
        for t in tables:
            conn.execute(f"DROP TABLE IF EXISTS {t}")
    tables.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="approximate number of messages to produce")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each side (best is reported)")
    ap.add_argument("--batch-size", type=int, default=10_000)
    ap.add_argument("--kafka", choices=("apache", "tansu"), default=None)
    ap.add_argument("--state-dir", default=str(ROOT / ".recon-bench"))
    ap.add_argument("--keep", action="store_true", help="leave the services running and the tables in place")
    ap.add_argument("--markdown", action="store_true", help="also print a table row for bench/RESULTS.md")
    a = ap.parse_args()

    import psycopg

    from engine.local.kafka import choose_backend, delete_topic, get_broker
    from engine.local.postgres import EmbeddedPostgres
    from engine.local.state import StackPaths

    paths = StackPaths.at(a.state_dir)
    pg_server = EmbeddedPostgres(paths)
    pg_was_running = pg_server.status() is not None
    pg = pg_server.start()
    broker = get_broker(choose_backend(a.kafka), paths.root)
    broker_was_running = broker.status() is not None
    binfo = broker.start(timeout=120)
    os.environ["PGPASSFILE"] = str(paths.pgpass_file)
    bootstrap, dsn = binfo["bootstrap"], pg.dsn
    tables: list[str] = []
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
        t = time.perf_counter()
        topic, messages, copies = _produce(bootstrap, a.events)
        produce_s = time.perf_counter() - t
        _warm_group_coordinator(bootstrap, topic)
        meter = Meter(pg.pid, int(binfo["pid"]))
        runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "same_rows": [], "recon": []}
        load_before = os.getloadavg()
        for i in range(a.repeat):
            name = f"bench.plain_{uuid.uuid4().hex[:8]}"
            tables.append(name)
            s0 = meter.snap()
            n = baseline(bootstrap, topic, dsn, name, a.batch_size)
            r = Meter.result(s0, meter.snap(settle=0.5), messages)
            assert n == messages, (n, messages)
            runs["baseline"].append(r)
            _drop(dsn, tables, a.keep)

            name = f"bench.rows_{uuid.uuid4().hex[:8]}"
            tables.append(name)
            s0 = meter.snap()
            n = same_rows(bootstrap, topic, dsn, name, a.batch_size)
            r = Meter.result(s0, meter.snap(settle=0.5), messages)
            assert n == messages, (n, messages)
            runs["same_rows"].append(r)
            _drop(dsn, tables, a.keep)

            name = f"bench.recon_{uuid.uuid4().hex[:8]}"
            tables += [name, name + "_aggregates", name + "_dead_letters", name + "_offsets"]
            s0 = meter.snap()
            res = recon(bootstrap, topic, dsn, name, a.batch_size)
            r = Meter.result(s0, meter.snap(settle=0.5), messages)
            assert res["run"]["consumed"] == messages and res["run"]["duplicates"] >= copies, res["run"]
            r["counters"] = res["run"]
            runs["recon"].append(r)
            _drop(dsn, tables, a.keep)
            print(f"run {i + 1}: baseline {runs['baseline'][-1]['events_per_s']:,}/s, "
                  f"same rows {runs['same_rows'][-1]['events_per_s']:,}/s, recon {r['events_per_s']:,}/s", file=sys.stderr)
        best = {k: max(v, key=lambda x: x["events_per_s"]) for k, v in runs.items()}
        ratio = best["recon"]["events_per_s"] / best["baseline"]["events_per_s"]
        out = {
            "events": messages, "duplicate_copies": copies, "batch_size": a.batch_size, "repeat": a.repeat,
            "kafka": broker.backend, "cpus": os.cpu_count(), "produce_s": round(produce_s, 1),
            "load_avg_before": [round(x, 2) for x in load_before], "load_avg_after": [round(x, 2) for x in os.getloadavg()],
            "baseline": best["baseline"], "same_rows": best["same_rows"], "recon": best["recon"], "all_runs": runs,
            "recon_vs_baseline": round(ratio, 3),
            "recon_vs_same_rows": round(best["recon"]["events_per_s"] / best["same_rows"]["events_per_s"], 3),
            "targets": {"recon_events_per_s_ge_50000": best["recon"]["events_per_s"] >= 50_000,
                        "recon_ge_60pct_of_baseline": ratio >= 0.6},
        }
        print(json.dumps(out, indent=2))
        if a.markdown:
            b, r = best["baseline"], best["recon"]
            sr = best["same_rows"]
            cpu = r["cpu_us_per_event"]
            print(f"| {messages:,} | {broker.backend} | {os.cpu_count()} | {b['events_per_s']:,} | {sr['events_per_s']:,} | "
                  f"{r['events_per_s']:,} | {ratio:.0%} | {out['recon_vs_same_rows']:.0%} | "
                  f"{cpu['consumer']} / {cpu['postgres']} ({cpu['postgres_backend']}) / {cpu['broker']} |")
        if not a.keep:
            delete_topic(bootstrap, topic)
    finally:
        _drop(dsn, tables, a.keep)
        if not a.keep and not broker_was_running:
            broker.stop()
        if not a.keep and not pg_was_running:
            pg_server.stop()


if __name__ == "__main__":
    main()
