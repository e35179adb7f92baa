"""pytest-benchmark micro-benchmarks of the pure hot paths, on generated data (no services).

Run: ``./scripts/bench micro`` (= ``python -m pytest bench/test_micro.py --benchmark-only``).
Sizes: ``RECON_MICRO_ROWS`` (default 1,000,000). These time the algorithm alone; the end-to-end
figures against the I/O floor and the peers come from ``bench/diff_vs_peers.py``.
"""

from __future__ import annotations

import os
from decimal import Decimal

import numpy as np
import polars as pl
import pytest

from engine.core import ids, merkle
from engine.core.diff import compare
from engine.core.normalize import Canonical, ColumnType, FieldSpec, SideOptions, canonicalize

ROWS = int(os.environ.get("RECON_MICRO_ROWS", "1000000"))
FIELDS = (
    FieldSpec("id", "id", ColumnType("id"), is_key=True),
    FieldSpec("name", "name", ColumnType("text")),
    FieldSpec("clv", "clv", ColumnType("decimal", 2), Decimal("0")),
    FieldSpec("n", "n", ColumnType("int")),
    FieldSpec("ts", "ts", ColumnType("timestamp", precision="ms")),
)


def _frame(rows: int, seed: int, shuffle: bool) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    idx = np.arange(rows)
    if shuffle:
        rng.shuffle(idx)
    return pl.DataFrame({
        "id": pl.Series([f"001{i:015d}" for i in idx]),
        "name": pl.Series([f"Account {i}" for i in idx]),
        "clv": pl.Series(np.round(rng.uniform(0, 1e6, rows), 2)).cast(pl.Decimal(38, 2)),
        "n": pl.Series(rng.integers(0, 1000, rows)),
        "ts": pl.Series(rng.integers(1_600_000_000_000_000, 1_800_000_000_000_000, rows)).cast(pl.Datetime("us", "UTC")),
    })


@pytest.fixture(scope="module")
def raw() -> pl.DataFrame:
    return _frame(ROWS, 1, shuffle=True)


@pytest.fixture(scope="module")
def sides() -> tuple[Canonical, Canonical]:
    raw = _frame(ROWS, 1, shuffle=False)
    t_frame = raw.with_columns(  # one CLV in 7 inflated, like the incident (raw values, not canonical ones)
        pl.when(pl.int_range(pl.len()) % 7 == 0).then(pl.col("clv") * 2).otherwise(pl.col("clv")).alias("clv"))
    return canonicalize(raw, FIELDS, SideOptions()), canonicalize(t_frame, FIELDS, SideOptions())


def test_canonicalize_unsorted(benchmark, raw: pl.DataFrame) -> None:  # noqa: ANN001
    out = benchmark.pedantic(canonicalize, args=(raw, FIELDS, SideOptions()), rounds=3, iterations=1)
    assert out.frame.height == ROWS and out.frame["__key"].is_sorted()


def test_merkle_hash_one_side(benchmark, sides: tuple[Canonical, Canonical]) -> None:  # noqa: ANN001
    s, _ = sides
    seg = merkle.Segmentation(tuple(merkle.choose_boundaries(s.frame["__key"])))
    tree, _ = benchmark.pedantic(merkle.side_tree, args=(s.frame, s.fields, seg), rounds=3, iterations=1)
    assert len(tree.digests) == len(seg.boundaries) + 1


def test_compare_15_percent(benchmark, sides: tuple[Canonical, Canonical]) -> None:  # noqa: ANN001
    s, t = sides
    r = benchmark.pedantic(compare, args=(s, t), rounds=3, iterations=1)
    unchanged = int((s.frame["clv"].gather_every(7) == 0).sum())  # doubling 0.00 changes nothing
    assert r.mismatched == (ROWS + 6) // 7 - unchanged


def test_event_ids_batch(benchmark) -> None:  # noqa: ANN001
    n = min(ROWS, 200_000)
    org = ["00D8d00000RECONEA5"] * n
    rec = [f"001{i:012d}" for i in range(n)]
    typ = ["purchase"] * n
    ts = [f"2026-09-{1 + i % 28:02d}T10:00:00.000000Z" for i in range(n)]
    out = benchmark.pedantic(ids.event_ids, args=(org, rec, typ, ts), rounds=3, iterations=1)
    assert len(out) == n and all(out)


@pytest.fixture(scope="module")
def scan_frame():  # noqa: ANN201
    """A scan of ROWS events over 3 partitions in (partition, offset) order, 3% of them re-delivered
    copies placed in blocks, like the incident, with producer sequence headers."""
    from engine.connectors.kafka.scan import Scan

    rng = np.random.default_rng(7)
    n = ROWS
    rec = rng.integers(0, max(1, n // 5), n)
    sec = rng.integers(0, 86_400, n)
    copy = np.zeros(n, dtype=bool)
    for start in rng.integers(0, n - 1000, max(1, n * 3 // 100 // 1000)):
        copy[start:start + 1000] = True  # these rows repeat the event 5,000 rows earlier
    src = np.where(copy & (np.arange(n) >= 5000), np.arange(n) - 5000, np.arange(n))
    rec, sec = rec[src], sec[src]
    part = np.repeat(np.arange(3, dtype=np.int32), -(-n // 3))[:n]
    offset = np.concatenate([np.arange(c) for c in np.bincount(part, minlength=3)])
    frame = pl.DataFrame({
        "partition": part, "offset": offset.astype(np.int64), "ts_ms": 1_785_000_000_000 + np.arange(n),
        "ts_type": np.ones(n, dtype=np.int8), "key": pl.Series([None] * n, dtype=pl.Utf8),
        "org_header": pl.Series(["00D8d00000RECONEA5"] * n), "producer_id": pl.Series(["7"] * n),
        "sequence": np.arange(n, dtype=np.int64), "org_id": pl.Series(["00D8d00000RECONEA5"] * n),
        "record_id": pl.Series([f"0015g{r:013d}" for r in rec]), "event_type": pl.Series(["purchase"] * n),
        "event_time": pl.Series([f"2026-08-01T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}.000Z" for s in sec]),
        "amount": pl.Series([f"{r % 5000}.{r % 100:02d}" for r in rec]), "status": pl.Series(["ok"] * n),
        "in_window": np.ones(n, dtype=bool),
    })
    return Scan(frame=frame, topic="micro")


def test_kafka_audit_analyze(benchmark, scan_frame) -> None:  # noqa: ANN001
    """The analysis half of `recon kafka-audit` (prepare, occurrences, windows, sequences) on ROWS
    scanned events."""
    from engine.core import forensics

    a = benchmark.pedantic(forensics.audit, args=(scan_frame,), kwargs={"org_id": "00D8d00000RECONEA5"}, rounds=3,
                           iterations=1)
    assert a.events == ROWS and a.duplicates > 0 and a.windows
