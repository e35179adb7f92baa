"""Scan + analyze throughput of `recon kafka-audit` next to a bare confluent-kafka consume loop of the
same topic (the floor), on the local Apache Kafka broker.

    python bench/bench_kafka_audit.py --events 1000000 [--backend apache|tansu]

Produces scenario events (≈5 per account, 15% of accounts with re-delivered copies) once per size
into a fresh broker in a temporary directory, then times, alternating, the floor and recon's
scan+audit (in-process, excluding interpreter start-up), and prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid

from confluent_kafka import Consumer, KafkaError, TopicPartition


def bare_loop(bootstrap: str, topic: str, partitions: int) -> tuple[float, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"floor-{uuid.uuid4()}", "enable.auto.commit": False,
                  "enable.partition.eof": True, "fetch.wait.max.ms": 100, "queued.max.messages.kbytes": 262144,
                  "fetch.max.bytes": 52428800, "max.partition.fetch.bytes": 10485760})
    t = time.perf_counter()
    c.assign([TopicPartition(topic, p, -2) for p in range(partitions)])
    pending, n, nbytes = set(range(partitions)), 0, 0
    while pending:
        for m in c.consume(20_000, 0.5):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(m.partition())
                continue
            nbytes += len(m.value())
            n += 1
    dt = time.perf_counter() - t
    c.close()
    return dt, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backend", default="apache")
    a = ap.parse_args()
    from engine import forensics
    from engine.local import scenario
    from engine.local.kafka import create_topic, ensure_kafka_jars, get_broker
    from engine.sources import kafka as ks

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
            floors, recons, n_recon = [], [], 0
            for _ in range(a.repeat):
                dt, n = bare_loop(bs, "bench-clv", 3)
                floors.append(dt)
                t = time.perf_counter()
                au = forensics.audit(ks.scan(bs, "bench-clv"), org_id=sc.org_id)
                recons.append(time.perf_counter() - t)
                n_recon = au.events + au.unparsable
            n = len(delivered)
            f, r = statistics.median(floors), statistics.median(recons)
            print(json.dumps({
                "backend": a.backend, "events": n, "generate_and_produce_s": round(gen_s, 1),
                "floor_s": round(f, 3), "floor_events_per_s": round(n / f), "recon_s": round(r, 3),
                "recon_events_per_s": round(n / r), "recon_vs_floor_throughput": round(f / r, 2),
                "events_seen_by_recon": n_recon, "duplicates": au.duplicates,
            }, indent=2))
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
