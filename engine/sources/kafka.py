"""Scan a window of a Kafka topic into Arrow: partition, offset, timestamp, key, headers and the
configured JSON fields — read-only (no consumer-group commits).

Robust to brokers that answer ListOffsets wrongly (Tansu returns 0 from `offsets_for_times` and
stale watermarks): the end of a partition is found by EOF, a time window is always enforced on the
messages' own timestamps, and an `offsets_for_times` answer is only a starting hint that is checked
against the message just before it.

Values are parsed in bulk by Polars' NDJSON reader (Rust); a batch that fails is split so that only
the bad messages fall back to one-by-one parsing and are counted (and sampled) as unparsable, never
fatal. Tombstones (null values) are counted apart.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from engine.errors import ServiceUnreachable, UsageError

EOF_WAIT_S = 0.5


@dataclass(frozen=True)
class EventFields:
    """Names of the JSON fields in an event (configurable in every command that reads events:
    producers differ). One definition for kafka-audit, explain and consume."""

    record_id: str = "account_id"
    event_type: str = "event_type"
    event_time: str = "event_ts"
    amount: str = "amount"
    org_id: str = "org_id"

    def __post_init__(self) -> None:
        names = [self.record_id, self.event_type, self.event_time, self.amount, self.org_id]
        if any(not n or not n.strip() for n in names):
            raise UsageError("field names must not be empty (--record-id-field, --event-type-field, "
                             "--event-time-field, --amount-field, --org-id-field)")
        if len(set(names)) != len(names):
            raise UsageError(f"field names must be distinct, got {', '.join(names)}")

    def names(self) -> list[str]:
        return [self.org_id, self.record_id, self.event_type, self.event_time, self.amount]


@dataclass(frozen=True)
class Window:
    """Which part of the topic to read: a time range, explicit offsets per partition, or all of it.

    offsets: partition → (first offset, last offset) inclusive.
    lookback_s: start this much earlier than ``start`` (to recognise duplicates of earlier events),
      without counting those earlier messages in the window.
    """

    start: datetime | None = None
    end: datetime | None = None
    offsets: dict[int, tuple[int, int]] | None = None
    lookback_s: float = 0.0


@dataclass
class Scan:
    """The scanned messages. ``frame`` columns: partition, offset, ts_ms, ts_type, key, org_header,
    producer_id, sequence, in_window, status ('ok' | 'unparsable' | 'tombstone'), raw (str, only for
    unparsable), and the parsed fields (org_id, record_id, event_type, event_time, amount as text)."""

    frame: pl.DataFrame
    topic: str
    partitions: dict[int, dict[str, int | None]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0


def parse_offsets(text: str) -> dict[int, tuple[int, int]]:
    """`P:A-B,…` → {P: (A, B)}."""
    out: dict[int, tuple[int, int]] = {}
    for part in text.split(","):
        try:
            p, rng = part.strip().split(":", 1)
            a, b = rng.split("-", 1)
            out[int(p)] = (int(a), int(b))
        except ValueError:
            raise UsageError(f"malformed --offsets {part!r}: use PARTITION:FIRST-LAST[,…], e.g. 0:100-200") from None
        if out[int(p)][0] > out[int(p)][1] or out[int(p)][0] < 0:
            raise UsageError(f"malformed --offsets {part!r}: FIRST must be <= LAST and >= 0")
    return out


def load_kafka_config(path: str | Path | None) -> dict[str, str]:
    """librdkafka properties from a `key=value` file (comments with #)."""
    if not path:
        return {}
    p = Path(path)
    try:
        lines = p.read_text().splitlines()
    except OSError:
        raise UsageError(f"--kafka-config {p}: cannot read the file") from None
    conf = {}
    for ln in lines:
        ln = ln.strip()
        if not ln or ln.startswith("#"):
            continue
        if "=" not in ln:
            raise UsageError(f"--kafka-config {p}: malformed line {ln.split('=')[0][:40]!r}: use key=value")
        k, v = ln.split("=", 1)
        conf[k.strip()] = v.strip()
    return conf


def _consumer(bootstrap: str, extra: dict[str, str]) -> Any:
    from confluent_kafka import Consumer

    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": f"recon-scan-{uuid.uuid4()}",  # never committed: the scan leaves no trace in the cluster
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 100,
        "queued.max.messages.kbytes": 262144,
        "fetch.max.bytes": 52428800,
        "max.partition.fetch.bytes": 10485760,
    }
    conf.update(extra)
    return Consumer(conf)


def topic_partitions(bootstrap: str, topic: str, extra: dict[str, str] | None = None, timeout: float = 15) -> list[int]:
    """Partitions of an existing topic; UsageError when it does not exist, ServiceUnreachable when the
    broker does not answer. Lists all topics: asking Tansu about one topic by name creates it."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    conf = {"bootstrap.servers": bootstrap, **(extra or {})}
    conf.pop("group.id", None)
    try:
        md = AdminClient(conf).list_topics(timeout=timeout)
    except KafkaException as exc:
        raise ServiceUnreachable(f"Kafka at {bootstrap} did not answer within {timeout:.0f}s ({exc.args[0].name()}): "
                                 "check the bootstrap address and that the broker runs") from None
    t = md.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        raise UsageError(f"topic {topic!r} does not exist on {bootstrap}: check --topic")
    return sorted(t.partitions)


def _start_offsets(c: Any, topic: str, parts: list[int], window: Window) -> dict[int, int]:
    """Where to start reading each partition (BEGINNING = -2 unless a checked hint says later)."""
    from confluent_kafka import TopicPartition

    if window.offsets is not None:
        return {p: window.offsets[p][0] for p in parts if p in window.offsets}
    if window.start is None:
        return {p: -2 for p in parts}
    t_ms = int((window.start.timestamp() - window.lookback_s) * 1000)
    try:
        hints = c.offsets_for_times([TopicPartition(topic, p, t_ms) for p in parts], timeout=10)
    except Exception:  # a broker without ListOffsets: read from the beginning, filter by timestamp
        return {p: -2 for p in parts}
    starts = {}
    for tp in hints:
        off = tp.offset
        starts[tp.partition] = off - 1 if off > 0 else -2  # include the previous message to check the hint
    return starts


PARALLEL_MIN_MESSAGES = 200_000


def scan(
    bootstrap: str,
    topic: str,
    window: Window | None = None,
    fields: EventFields | None = None,
    *,
    kafka_config: dict[str, str] | None = None,
    batch: int = 20_000,
    progress: Callable[[int], None] | None = None,
    deadline_s: float = 60.0,
    workers: int | None = None,
) -> Scan:
    """Read the window into a frame (see :class:`Scan`).

    Large topics are read by one process per group of partitions (up to the number of cores):
    confluent-kafka hands out messages one Python object at a time, so a single process is bound by
    one core. The watermarks used to decide are only a hint (some brokers answer them wrongly);
    correctness never depends on them.
    """
    t0 = time.perf_counter()
    window = window or Window()
    fields = fields or EventFields()
    extra = dict(kafka_config or {})
    parts = topic_partitions(bootstrap, topic, extra)
    sizes = _partition_sizes(bootstrap, topic, parts, extra) if workers is None or workers > 1 else {}
    n = workers if workers is not None else _auto_workers(parts, sizes)
    if n > 1:
        groups = _balanced_groups(parts, sizes, n)
        results = _run_workers([(bootstrap, topic, g, window, fields, extra, batch, deadline_s) for g in groups])
        frames, info, samples = [], {}, []
        for ipc, inf, smp in results:
            frames.append(pl.read_ipc(io.BytesIO(ipc)))
            info.update(inf)
            samples.extend(smp)
        frame = pl.concat(frames).sort(["partition", "offset"])
        return Scan(frame=frame, topic=topic, partitions=info, samples=samples[:5], elapsed_s=time.perf_counter() - t0)
    frame, info, samples = _scan_partitions(bootstrap, topic, parts, window, fields, extra, batch, deadline_s, progress)
    return Scan(frame=frame, topic=topic, partitions=info, samples=samples, elapsed_s=time.perf_counter() - t0)


def _partition_sizes(bootstrap: str, topic: str, parts: list[int], extra: dict[str, str]) -> dict[int, int]:
    """Messages per partition from the watermarks: a hint for planning only (some brokers answer
    them wrongly); empty when the broker does not answer."""
    from confluent_kafka import TopicPartition

    c = _consumer(bootstrap, extra)
    try:
        sizes = {}
        for p in parts:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=5, cached=False)
            sizes[p] = max(0, hi - lo)
        return sizes
    except Exception:  # noqa: BLE001 - a hint only
        return {}
    finally:
        c.close()


def _auto_workers(parts: list[int], sizes: dict[int, int]) -> int:
    """One process per partition, up to twice the cores (more processes than cores keeps the last
    one from being a straggler when partitions do not divide evenly), for large topics only."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores < 2 or len(parts) < 2 or sum(sizes.values()) < PARALLEL_MIN_MESSAGES:
        return 1
    return min(len(parts), 2 * cores)


def _balanced_groups(parts: list[int], sizes: dict[int, int], n: int) -> list[list[int]]:
    """Greedy: the largest partitions first, each to the currently lightest group."""
    groups: list[list[int]] = [[] for _ in range(n)]
    load = [0] * n
    for p in sorted(parts, key=lambda q: -sizes.get(q, 1)):
        i = load.index(min(load))
        groups[i].append(p)
        load[i] += sizes.get(p, 1)
    return [g for g in groups if g]


def _run_workers(jobs: list[tuple[Any, ...]]) -> list[tuple[bytes, dict[int, dict[str, int | None]], list[dict[str, Any]]]]:
    """One `python -m engine.sources.kafka --worker` process per job (arguments and results pickled
    over pipes). Plain subprocesses rather than multiprocessing: no re-import of the caller's main
    module, and no fork of a process that holds librdkafka threads."""
    import pickle
    import subprocess
    import sys

    procs = []
    for job in jobs:
        p = subprocess.Popen([sys.executable, "-m", "engine.sources.kafka", "--worker"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert p.stdin is not None
        p.stdin.write(pickle.dumps(job))
        p.stdin.close()
        p.stdin = None  # closed: communicate() must not flush it
        procs.append(p)
    results = []
    for p in procs:
        out_b, err_b = p.communicate()
        if p.returncode != 0:
            for q in procs:
                q.kill()
            raise ServiceUnreachable(f"a Kafka scan worker failed: {err_b.decode(errors='replace').strip().splitlines()[-1:]}")
        status, payload = pickle.loads(out_b)
        if status == "error":  # a recon error raised in the worker: re-raise it here, same class and message
            raise payload
        results.append(payload)
    return results


def _worker_main() -> None:
    import pickle
    import sys

    from engine.errors import ReconError

    job = pickle.loads(sys.stdin.buffer.read())
    try:
        frame, info, samples = _scan_partitions(*job)
        buf = io.BytesIO()
        frame.write_ipc(buf)
        result: tuple[str, Any] = ("ok", (buf.getvalue(), info, samples))
    except ReconError as exc:
        result = ("error", exc)
    sys.stdout.buffer.write(pickle.dumps(result))


def _scan_partitions(
    bootstrap: str, topic: str, parts: list[int], window: Window, fields: EventFields, extra: dict[str, str],
    batch: int, deadline_s: float, progress: Callable[[int], None] | None = None,
) -> tuple[pl.DataFrame, dict[int, dict[str, int | None]], list[dict[str, Any]]]:
    from confluent_kafka import KafkaError, TopicPartition

    c = _consumer(bootstrap, extra)
    cols: dict[str, list[Any]] = {k: [] for k in ("partition", "offset", "ts_ms", "ts_type", "key", "value",
                                                    "org_header", "producer_id", "sequence")}
    part, off, tsm, tst, key, val = (cols[k] for k in ("partition", "offset", "ts_ms", "ts_type", "key", "value"))
    org_h, prod_h, seq_h = cols["org_header"], cols["producer_id"], cols["sequence"]
    info: dict[int, dict[str, int | None]] = {}
    try:
        starts = _start_offsets(c, topic, parts, window)
        if not starts:
            raise UsageError(f"--offsets names no partition of {topic!r} (partitions: {parts})")
        c.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
        stop_at = {p: window.offsets[p][1] for p in starts} if window.offsets is not None else {}
        pending = set(starts)
        last_progress = 0
        idle_since = time.monotonic()
        while pending:
            msgs = c.consume(batch, EOF_WAIT_S)
            if not msgs:
                if time.monotonic() - idle_since > deadline_s:
                    raise ServiceUnreachable(f"Kafka at {bootstrap} sent nothing for {deadline_s:.0f}s while partitions "
                                             f"{sorted(pending)} had not reached their end: check the broker")
                continue
            idle_since = time.monotonic()
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(m.partition())
                        info.setdefault(m.partition(), {})["end_offset"] = m.offset()
                        continue
                    if err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                        raise UsageError(f"topic {topic!r} does not exist on {bootstrap}: check --topic")
                    if err.fatal():
                        raise ServiceUnreachable(f"Kafka error while scanning {topic!r}: {err.str()}")
                    continue
                p, o = m.partition(), m.offset()
                if stop_at and o > stop_at.get(p, -1):
                    pending.discard(p)
                    continue
                part.append(p)
                off.append(o)
                tt, ts = m.timestamp()
                tsm.append(ts)
                tst.append(tt)
                key.append(m.key())
                val.append(m.value())
                o_h = pr_h = sq_h = None
                hs = m.headers()
                if hs:
                    for hk, hv in hs:
                        if hk == "org-id":
                            o_h = hv
                        elif hk == "producer-id":
                            pr_h = hv
                        elif hk == "sequence":
                            sq_h = hv
                org_h.append(o_h)
                prod_h.append(pr_h)
                seq_h.append(sq_h)
                if stop_at and o >= stop_at.get(p, -1):
                    pending.discard(p)
            if progress and len(off) - last_progress >= 50_000:
                progress(len(off))
                last_progress = len(off)
        if stop_at:
            c.unassign()
    finally:
        c.close()
    frame = _build_frame(cols, fields, window)
    samples = frame.filter(pl.col("status") == "unparsable").head(5).select("partition", "offset", "raw").to_dicts()
    frame = frame.drop("raw")
    for p in parts:
        sub = frame.filter(pl.col("partition") == p)
        info.setdefault(p, {})
        info[p]["first_offset"] = int(sub["offset"].min()) if len(sub) else None  # type: ignore[arg-type]
        info[p]["last_offset"] = int(sub["offset"].max()) if len(sub) else None  # type: ignore[arg-type]
    return frame, info, samples


def _text(values: list[bytes | None]) -> pl.Series:
    """Header bytes as text, decoded column-wise (invalid UTF-8 becomes null, never an error)."""
    return pl.Series(values, dtype=pl.Binary).cast(pl.Utf8, strict=False) if values else pl.Series([], dtype=pl.Utf8)


def _build_frame(cols: dict[str, list[Any]], fields: EventFields, window: Window) -> pl.DataFrame:
    n = len(cols["offset"])
    base = pl.DataFrame({
        "partition": pl.Series(cols["partition"], dtype=pl.Int32),
        "offset": pl.Series(cols["offset"], dtype=pl.Int64),
        "ts_ms": pl.Series(cols["ts_ms"], dtype=pl.Int64),
        "ts_type": pl.Series(cols["ts_type"], dtype=pl.Int8),
        "key": pl.Series(cols["key"], dtype=pl.Binary).cast(pl.Utf8, strict=False) if n else pl.Series([], dtype=pl.Utf8),
        "org_header": _text(cols["org_header"]),
        "producer_id": _text(cols["producer_id"]),
        "sequence": _text(cols["sequence"]).cast(pl.Int64, strict=False),
    })
    parsed = parse_values(cols["value"], fields)
    frame = pl.concat([base, parsed], how="horizontal")
    in_window = pl.lit(True)
    if window.start is not None:
        in_window = in_window & (pl.col("ts_ms") >= int(window.start.timestamp() * 1000))
    if window.end is not None:
        in_window = in_window & (pl.col("ts_ms") <= int(window.end.timestamp() * 1000))
    frame = frame.with_columns(in_window.alias("in_window"))
    if window.start is not None and window.offsets is None:
        # messages read only to check the hint or for the lookback, and earlier than the lookback: drop
        lb = int((window.start.timestamp() - window.lookback_s) * 1000)
        frame = frame.filter(pl.col("ts_ms") >= lb)
    return frame


_OUT = ("org_id", "record_id", "event_type", "event_time", "amount")


def parse_values(values: list[bytes | None], fields: EventFields) -> pl.DataFrame:
    """Parse JSON values in bulk; bad values become status 'unparsable' with their raw text."""
    names = fields.names()
    n = len(values)
    status = ["ok"] * n
    out: dict[str, list[Any]] = {k: [None] * n for k in _OUT}
    raw: list[str | None] = [None] * n
    idx_ok = [i for i, v in enumerate(values) if v is not None]
    for i in range(n):
        if values[i] is None:
            status[i] = "tombstone"
    _parse_chunk(values, idx_ok, names, out, status, raw)
    cols: dict[str, Any] = {k: pl.Series(k, out[k], dtype=pl.Utf8) for k in _OUT}
    cols["status"] = pl.Series("status", status, dtype=pl.Utf8)
    cols["raw"] = pl.Series("raw", raw, dtype=pl.Utf8)
    return pl.DataFrame(cols)


def _parse_chunk(values: list[bytes | None], idx: list[int], names: list[str], out: dict[str, list[Any]],
                 status: list[str], raw: list[str | None]) -> None:
    if not idx:
        return
    blob = b"\n".join(values[i] for i in idx)  # type: ignore[misc]
    ok = b"\n" not in b"".join(values[i] for i in idx[:1])  # cheap guard: multi-line values go the slow way
    if ok and blob.count(b"\n") == len(idx) - 1:
        try:
            df = pl.read_ndjson(io.BytesIO(blob), schema={k: pl.Utf8 for k in names}, ignore_errors=False)
            if df.height == len(idx):
                for target, src in zip(_OUT, names, strict=True):
                    col = df[src].to_list()
                    if len(idx) == len(out[target]):  # every value is in this chunk: take the column whole
                        out[target] = col
                        continue
                    o = out[target]
                    for j, i in enumerate(idx):
                        o[i] = col[j]
                return
        except Exception:  # noqa: BLE001 - any parse failure: split and retry
            pass
    if len(idx) > 64:
        mid = len(idx) // 2
        _parse_chunk(values, idx[:mid], names, out, status, raw)
        _parse_chunk(values, idx[mid:], names, out, status, raw)
        return
    for i in idx:
        v = values[i]
        try:
            obj = json.loads(v)  # type: ignore[arg-type]
            if not isinstance(obj, dict):
                raise ValueError("not an object")
            for target, src in zip(_OUT, names, strict=True):
                x = obj.get(src)
                out[target][i] = None if x is None else (x if isinstance(x, str) else json.dumps(x))
        except (ValueError, UnicodeDecodeError):
            status[i] = "unparsable"
            raw[i] = (v or b"")[:200].decode("utf-8", "replace")


def iso_ms(ts_ms: int | None) -> str | None:
    if ts_ms is None:
        return None
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


if __name__ == "__main__":
    import sys as _sys

    if _sys.argv[1:] == ["--worker"]:
        _worker_main()
