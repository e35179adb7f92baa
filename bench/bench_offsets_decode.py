"""Throughput of the ``__consumer_offsets`` decoder (``engine.core.offsets_log.decode``) on synthetic
commit records shaped like the 4.1.1 broker's (OffsetCommitValue v4, empty metadata, no tagged field),
next to the scalar reference decoders record by record, and of the rewind/rebalance analysis.

    python bench/bench_offsets_decode.py --records 1000000

No broker: the bytes are built in memory (the reading itself is the Kafka client's, measured by
bench_kafka_audit.py); 3 groups share the partition, the audited one writes 80% of the records over
one topic of 12 partitions; prints JSON (best of --repeat runs).
"""

from __future__ import annotations

import argparse
import json
import struct
import time

import numpy as np
import pyarrow as pa

from engine.core import group_audit, offsets_log


def _key(group: str, topic: str, part: int) -> bytes:
    g, t = group.encode(), topic.encode()
    return struct.pack(">hh", 1, len(g)) + g + struct.pack(">h", len(t)) + t + struct.pack(">i", part)


def records(n: int, seed: int = 1) -> tuple[pa.Array, pa.Array, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    groups = rng.choice(3, n, p=[0.8, 0.1, 0.1])
    parts = rng.integers(0, 12, n)
    keys_by = {(g, p): _key(f"warehouse-{g}", "clv-events", p) for g in range(3) for p in range(12)}
    offsets = np.cumsum(rng.integers(0, 50, n))
    ts0 = 1_796_000_000_000
    keys = [keys_by[(int(g), int(p))] for g, p in zip(groups, parts, strict=True)]
    values = [struct.pack(">hqib", 4, int(o), 0, 1) + struct.pack(">qb", ts0 + i, 0) for i, o in enumerate(offsets)]
    return (pa.array(keys, pa.binary()), pa.array(values, pa.binary()), np.arange(n, dtype=np.int64),
            np.arange(n, dtype=np.int64) + ts0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scalar-sample", type=int, default=100_000)
    a = ap.parse_args()
    keys, values, offs, tss = records(a.records)
    best = best_audit = float("inf")
    recs = None
    for _ in range(a.repeat):
        t = time.perf_counter()
        recs = offsets_log.decode(keys, values, offs, tss, "warehouse-0")
        best = min(best, time.perf_counter() - t)
        t = time.perf_counter()
        group_audit.audit(recs, "clv-events")
        best_audit = min(best_audit, time.perf_counter() - t)
    assert recs is not None and recs.unparsable == 0
    m = min(a.scalar_sample, a.records)
    kl, vl = keys.slice(0, m).to_pylist(), values.slice(0, m).to_pylist()
    t = time.perf_counter()
    for kb, vb in zip(kl, vl, strict=True):
        if offsets_log.decode_key(kb).group == "warehouse-0":
            offsets_log.decode_offset_commit(vb)
    scalar = (time.perf_counter() - t) * a.records / m
    print(json.dumps({
        "records": a.records, "group_commits": recs.commits.num_rows,
        "decode_s": round(best, 3), "records_per_s": round(a.records / best),
        "scalar_s_extrapolated": round(scalar, 3), "speedup_vs_scalar": round(scalar / best, 1),
        "analysis_s": round(best_audit, 3),
    }, indent=1))


if __name__ == "__main__":
    main()
