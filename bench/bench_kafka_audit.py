"""Scan + analyze throughput of `recon kafka-audit` next to a bare confluent-kafka consume loop of the
same topic (the floor), on the local Apache Kafka broker.

    python bench/bench_kafka_audit.py --events 1000000 [--backend apache|tansu] [--loop native|python]

Produces scenario events (≈5 per account, 15% of accounts with re-delivered copies) once per size
into a fresh broker in a temporary directory, then times, alternating, the floor and recon's
scan+audit (in-process, excluding interpreter start-up), and prints JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, TopicPartition

from engine.connectors.kafka.scan import FETCH_TUNING, POLL_S


def bare_loop(bootstrap: str, topic: str, partitions: int) -> tuple[float, int]:
    """The floor: assign every partition, read to EOF, touch each value, nothing else.

    Same client settings as recon's scan (``FETCH_TUNING``: fetch sizes and a 10 ms fetch-queue
    backoff instead of librdkafka's 1 s default, which idled this loop for 55% of its time at 5M
    events; ``POLL_S`` as the consume timeout), so that the ratio measures recon's work per
    message, not a difference in client configuration."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"floor-{uuid.uuid4()}", "enable.auto.commit": False,
                  "enable.partition.eof": True, **FETCH_TUNING})
    t = time.perf_counter()
    c.assign([TopicPartition(topic, p, -2) for p in range(partitions)])
    pending, n, nbytes = set(range(partitions)), 0, 0
    while pending:
        for m in c.consume(20_000, POLL_S):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(m.partition())
                continue
            nbytes += len(m.value())
            n += 1
    dt = time.perf_counter() - t
    c.close()
    return dt, n


def cpu_s() -> float:
    """CPU seconds (user + system) of this process and its finished children (recon's workers):
    wall time is noisy on a shared machine, CPU time much less."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def whole_process(bootstrap: str, org_id: str, repeat: int, duplicates: int) -> dict[str, object]:
    """`recon kafka-audit … --json` as a user runs it: wall time (median) and peak RSS of the process."""
    recon = str(Path(sys.executable).with_name("recon"))
    walls, peaks = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        res = subprocess.run(["/usr/bin/time", "-f", "%M", recon, "kafka-audit", "--bootstrap", bootstrap, "--topic",
                              "bench-clv", "--org-id", org_id, "--json"], capture_output=True, text=True)
        walls.append(time.perf_counter() - t)
        if res.returncode != 1 or json.loads(res.stdout)["duplicates"] != duplicates:
            raise SystemExit(f"recon kafka-audit disagreed with the in-process run: {res.stderr[-500:]}")
        peaks.append(int(res.stderr.strip().splitlines()[-1]) // 1024)
    return {"cli_s": round(statistics.median(walls), 3), "cli_runs_s": [round(x, 2) for x in walls],
            "cli_peak_rss_mb": max(peaks)}


EVIDENCE_COMMITS = 3000


def evidence_costs(bootstrap: str, topic: str, repeat: int) -> dict[str, object]:
    """Wall seconds (median of ``repeat``) of the two evidence reads kafka-audit adds on request:
    ``--group`` (read the group's ``__consumer_offsets`` partition, decode, audit) and
    ``--isolation-check`` (the window read_uncommitted and read_committed, then the batch headers)."""
    from confluent_kafka.admin import AdminClient

    from engine.app.audit import isolation_evidence
    from engine.connectors.kafka import isolation, offsets_topic
    from engine.connectors.kafka.batches import read_batches
    from engine.core import group_audit
    from engine.core.events import Window

    group = f"bench-wh-{uuid.uuid4().hex[:8]}"
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    hw = {p: c.get_watermark_offsets(TopicPartition(topic, p), 10)[1] for p in range(3)}
    for i in range(EVIDENCE_COMMITS):  # a warehouse committing as it goes: one commit per partition per step
        p = i % 3
        c.commit(offsets=[TopicPartition(topic, p, hw[p] * (i // 3 + 1) // (EVIDENCE_COMMITS // 3))],
                 asynchronous=False)
    c.close()
    groups, isos, twice, headers, commits, batches = [], [], [], [], 0, 0
    for _ in range(repeat):
        t = time.perf_counter()
        records, part = offsets_topic.read_group(bootstrap, group, {})
        g = group_audit.audit(records, topic, offsets_partition=part)
        groups.append(time.perf_counter() - t)
        commits = sum(v["commits"] for v in g.history_coverage.values())
        t = time.perf_counter()
        ev = isolation_evidence(bootstrap, topic, Window(), {})
        isos.append(time.perf_counter() - t)
        batches = sum(r["batches"] for r in ev["producers"])
        t = time.perf_counter()  # its parts, once more: the two librdkafka reads, then the batch headers
        reads = isolation.read_twice(bootstrap, topic, list(range(3)), Window(), {})
        twice.append(time.perf_counter() - t)
        t = time.perf_counter()
        read_batches(bootstrap, topic, {r.partition: (r.uncommitted[0], r.uncommitted[-1]) for r in reads}, {})
        headers.append(time.perf_counter() - t)
    AdminClient({"bootstrap.servers": bootstrap}).delete_consumer_groups([group])
    return {"group_s": round(statistics.median(groups), 3), "group_runs_s": [round(x, 2) for x in groups],
            "group_commits_read": commits, "isolation_check_s": round(statistics.median(isos), 3),
            "isolation_runs_s": [round(x, 2) for x in isos], "producer_batches_read": batches,
            "isolation_two_reads_s": round(statistics.median(twice), 3),
            "isolation_batch_headers_s": round(statistics.median(headers), 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backend", default="apache")
    ap.add_argument("--loop", choices=["native", "python"], default="native",
                    help="recon's scan loop: the C loop (default) or the pure-Python one")
    ap.add_argument("--cli", action="store_true",
                    help="also time the whole `recon kafka-audit` process (start-up included) and its peak RSS")
    ap.add_argument("--evidence", action="store_true",
                    help="also time what --group (one __consumer_offsets partition read and audited, a "
                         "group with EVIDENCE_COMMITS commits) and --isolation-check (two more reads, the "
                         "record-batch headers) add to the audit")
    a = ap.parse_args()
    os.environ["RECON_KAFKA_NATIVE"] = "1" if a.loop == "native" else "0"
    from engine.connectors.kafka import scan as ks
    from engine.core import forensics
    from engine.local import scenario
    from engine.local.kafka import create_topic, ensure_kafka_jars, get_broker

    if a.backend == "apache":
        ensure_kafka_jars()
    with tempfile.TemporaryDirectory() as tmp:
        broker = get_broker(a.backend, tmp)
        broker.start()
        try:
            bs = broker.bootstrap
            accounts = max(100, a.events // 5)
            t = time.perf_counter()
            sc = scenario.generate(scenario.ScenarioSpec(accounts=accounts, topic="bench-clv"), "00D8d00000RECONEA5")
            create_topic(bs, "bench-clv", partitions=3)
            delivered = scenario.produce(sc, bs)
            gen_s = time.perf_counter() - t
            floors, recons, floor_cpu, recon_cpu, n_recon, dups = [], [], [], [], 0, 0
            for _ in range(a.repeat):
                c0 = cpu_s()
                dt, n = bare_loop(bs, "bench-clv", 3)
                floors.append(dt)
                floor_cpu.append(cpu_s() - c0)
                c0, t = cpu_s(), time.perf_counter()
                au = forensics.audit(ks.scan(bs, "bench-clv"), org_id=sc.org_id)
                recons.append(time.perf_counter() - t)
                recon_cpu.append(cpu_s() - c0)
                n_recon, dups = au.events + au.unparsable, au.duplicates
                # each CLI run is a fresh process: holding this run's frames (GBs at 5M) while the
                # next one runs made every second run 30-50% slower
                del au
                gc.collect()
            cli: dict[str, object] = {}
            if a.evidence:
                cli.update(evidence_costs(bs, "bench-clv", a.repeat))
            if a.cli:
                cli = whole_process(bs, sc.org_id, a.repeat, dups)
            n = len(delivered)
            f, r = statistics.median(floors), statistics.median(recons)
            print(json.dumps({
                "backend": a.backend, "scan_loop": a.loop, "events": n, "generate_and_produce_s": round(gen_s, 1),
                "floor_s": round(f, 3), "floor_events_per_s": round(n / f), "recon_s": round(r, 3),
                "recon_events_per_s": round(n / r), "recon_vs_floor_throughput": round(f / r, 2),
                "floor_cpu_s": round(statistics.median(floor_cpu), 2), "recon_cpu_s": round(statistics.median(recon_cpu), 2),
                "floors_s": [round(x, 2) for x in floors], "recons_s": [round(x, 2) for x in recons],
                "events_seen_by_recon": n_recon, "duplicates": dups, **cli,
            }, indent=2))
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
