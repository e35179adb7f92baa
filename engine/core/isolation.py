"""Root-cause evidence read from the log itself, as pure functions over what the Kafka connector read:
which offsets were aborted (a ``read_uncommitted`` read returned them, a ``read_committed`` read of
the same range did not) and which producer wrote each run of record batches.

Kept apart from the reads (``engine.connectors.kafka.isolation`` and ``.batches``) so that the rules
are tested without a broker: what counts as a run, when a transaction is still open, where a run of
producer batches breaks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class IsolationRead:
    """One partition read twice. ``uncommitted``/``committed``: the offsets each read returned inside
    the window, ascending. ``last_stable``: where the ``read_committed`` read ended (its end of
    partition: the last stable offset), or None when it stopped at the window's last offset before
    reaching it. ``high_watermark``: where the ``read_uncommitted`` read ended (None likewise)."""

    partition: int
    uncommitted: Sequence[int]
    committed: Sequence[int]
    last_stable: int | None
    high_watermark: int | None


def aborted_runs(reads: Iterable[IsolationRead]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``aborted[]`` and ``open_transaction[]`` of the reads.

    An offset is aborted when the ``read_uncommitted`` read returned it, the ``read_committed`` read
    did not, and it lies below the last stable offset: above it a transaction is still open, and
    whether it commits or aborts is not known yet, so those offsets are counted as ``undecided`` in
    ``open_transaction`` instead of being guessed. A run is a maximal stretch of aborted offsets
    not interrupted by a committed one (offsets neither read returned, such as transaction markers,
    do not break it)."""
    aborted: list[dict[str, Any]] = []
    open_tx: list[dict[str, Any]] = []
    for r in sorted(reads, key=lambda x: x.partition):
        committed = set(r.committed)
        stable = r.last_stable
        run: list[int] = []

        def close(run: list[int], p: int = r.partition) -> None:
            if run:
                aborted.append({"partition": p, "from_offset": run[0], "to_offset": run[-1], "events": len(run)})

        undecided = 0
        for o in r.uncommitted:
            if stable is not None and o >= stable:
                undecided += 1
                continue
            if o in committed:
                close(run)
                run = []
            else:
                run.append(o)
        close(run)
        if stable is not None and (undecided or (r.high_watermark is not None and stable < r.high_watermark)):
            open_tx.append({"partition": r.partition, "last_stable_offset": stable,
                            "high_watermark": r.high_watermark, "undecided": undecided})
    return aborted, open_tx


@dataclass(frozen=True)
class Batch:
    """The header of one record batch (message format v2): what librdkafka never shows."""

    partition: int
    base_offset: int
    last_offset: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records: int
    transactional: bool
    control: bool


def producer_runs(batches: Iterable[Batch], ranges: dict[int, tuple[int, int]]) -> list[dict[str, Any]]:
    """``producers[]``: per partition, maximal runs of data batches written by one producer session
    (the same producer id and epoch) whose sequence numbers continue from one batch to the next.

    A run breaks where the producer id or epoch changes, or where an idempotent producer's sequence
    does not continue (a regression is a copy of what it already wrote: a retry that idempotence
    did not drop, or a replay under the same id). Without idempotence the id, epoch and sequence
    are −1 and a run is every consecutive batch so written. Control batches (transaction markers)
    are never in a run and do not break one. Offsets are cut to ``ranges`` (partition → first,
    last offset, inclusive)."""
    out: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    next_seq = -1
    for b in sorted(batches, key=lambda x: (x.partition, x.base_offset)):
        if b.control or b.partition not in ranges:
            continue
        lo, hi = ranges[b.partition]
        if b.last_offset < lo or b.base_offset > hi:
            continue
        same = (cur is not None and cur["partition"] == b.partition and cur["producer_id"] == b.producer_id
                and cur["producer_epoch"] == b.producer_epoch
                and (b.producer_id < 0 or b.base_sequence == next_seq))
        if same:
            assert cur is not None
            cur["to_offset"] = min(b.last_offset, hi)
            cur["batches"] += 1
            cur["transactional"] = cur["transactional"] or b.transactional
        else:
            cur = {"partition": b.partition, "from_offset": max(b.base_offset, lo), "to_offset": min(b.last_offset, hi),
                   "producer_id": b.producer_id, "producer_epoch": b.producer_epoch,
                   "base_sequence": b.base_sequence, "batches": 1, "transactional": b.transactional}
            out.append(cur)
        next_seq = (b.base_sequence + b.records) % (1 << 31) if b.base_sequence >= 0 else -1
    return out
