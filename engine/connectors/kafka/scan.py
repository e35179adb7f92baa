"""Scan a window of a Kafka topic into Arrow: partition, offset, timestamp, key, headers and the
configured JSON fields — read-only (no consumer-group commits).

Robust to brokers that answer ListOffsets wrongly (Tansu returns 0 from `offsets_for_times` and
stale watermarks): the end of a partition is found by EOF, a time window is always enforced on the
messages' own timestamps, and an `offsets_for_times` answer is only a starting hint that is checked
against the message just before it.

Messages are read by the native loop (``kafka_native``: C against confluent-kafka's librdkafka,
straight into Arrow buffers, one process, one chunk per partition so rows arrive in (partition,
offset) order) or, where it cannot be built, by the Python loop below (confluent-kafka ``Message``
objects, one worker process per partition group on large topics); both give the same frame.

Values are parsed by :mod:`engine.connectors.kafka.columns`: those in the producers' shape split
into their fields column-wise, the others one by one with the strict parser of the one definition of
a valid event (:mod:`engine.core.events`, shared with the consumer); a bad value is counted (and
sampled) as unparsable, never fatal. Tombstones (null values) are counted apart.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from engine.connectors.kafka.client import all_topics, existing_partitions, missing_topic
from engine.connectors.kafka.columns import (
    _PARSED_SCHEMA,
    HEADERS,
    _joined,
    _pick_headers,
    parse_array,
    parse_values,
)
from engine.core.errors import ServiceUnreachable, UsageError, kafka_config_error
from engine.core.events import EventFields, Scan, Window, iso_ms  # noqa: F401  (the scan's types; re-exported)

POLL_S = 0.1
"""consume() timeout: it returns early only when the batch is full, so the last, partial batch of a
scan always waits this long."""

FETCH_TUNING: dict[str, int] = {
    "fetch.wait.max.ms": 100,
    "fetch.queue.backoff.ms": 10,
    "queued.max.messages.kbytes": 262144,
    "fetch.max.bytes": 52428800,
    "max.partition.fetch.bytes": 10485760,
}
"""Fetch settings of the scan, shared with the benchmark's bare loop so that both read alike.
``fetch.queue.backoff.ms``: librdkafka ≥ 2.4 pauses a partition's fetches for 1 s (the default)
whenever its local queue exceeds ``queued.min.messages``, so a consumer faster than one fetch per
second idles most of the time (measured on 5M events: a bare loop 13.0 s by default, 5.6 s at 10 ms)."""


LAST_OFFSET = (1 << 62) - 1
"""The last offset of a window open at the top: the partition is read to its end (found by EOF)."""


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


_LIBRDKAFKA_LOG = logging.getLogger(__name__ + ".librdkafka")
# librdkafka's own log lines (a refused connection every 50 ms while a broker is down, warnings about
# properties) go to Python logging, which says nothing unless the application asks: the CLI's answer
# to a user is its one-line error
_LIBRDKAFKA_LOG.addHandler(logging.NullHandler())


def _consumer(bootstrap: str, extra: dict[str, str], **callbacks: Any) -> Any:
    from confluent_kafka import Consumer

    return Consumer({**_consumer_conf(bootstrap, extra), "logger": _LIBRDKAFKA_LOG, **callbacks})


def _consumer_conf(bootstrap: str, extra: dict[str, str]) -> dict[str, Any]:
    """The scan's client properties (the Python and the native loop use the same)."""
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": f"recon-scan-{uuid.uuid4()}",  # never committed: the scan leaves no trace in the cluster
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        **FETCH_TUNING,
    }
    conf.update(extra)
    return conf


def topic_partitions(bootstrap: str, topic: str, extra: dict[str, str] | None = None, timeout: float = 15) -> list[int]:
    """Partitions of an existing topic; UsageError when it does not exist or is not readable
    (``client.existing_partitions``), ServiceUnreachable when the broker does not answer.

    Asked through a consumer with the scan's own properties: an admin client would warn on stderr
    about every consumer property of --kafka-config (the file exists to hold those)."""
    from confluent_kafka import KafkaException

    from engine.connectors.kafka import errors as kafka_errors
    from engine.connectors.retry import RetryPolicy

    errors: list[Any] = []
    try:
        c = _consumer(bootstrap, extra or {}, error_cb=errors.append)
    except KafkaException as exc:
        raise kafka_config_error(exc) from None

    def probe() -> Any:  # one-second attempts: a refused login is told apart from silence at once
        try:
            return all_topics(c, timeout=1.0)
        except KafkaException:
            c.poll(0)  # serves the error callback, whose reports tell why
            raise

    try:
        md = RetryPolicy(timeout).run(probe, lambda exc: kafka_errors.classify(exc, bootstrap, errors),
                                      service=f"Kafka at {bootstrap}",
                                      hint="check the bootstrap address and that the broker runs")
    finally:
        c.close()
    return existing_partitions(md, topic, bootstrap)


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
    if workers is None and _native_available():
        workers = 1  # the native loop keeps up with the broker in one process; workers would add start-up and IPC
    sizes = _partition_sizes(bootstrap, topic, parts, extra) if workers is None or workers > 1 else {}
    n = workers if workers is not None else _auto_workers(parts, sizes)
    if n > 1:
        groups = _balanced_groups(parts, sizes, n)
        results = _run_workers([(bootstrap, topic, g, window, fields, extra, batch, deadline_s) for g in groups],
                               sum(sizes.values()))
        info, samples = {}, []
        for _, inf, smp in results:
            info.update(inf)
            samples.extend(smp)
        frame = _concat_sorted([r[0] for r in results], groups)
        samples.sort(key=lambda r: (r["partition"], r["offset"]))  # the first five of the whole frame
        return Scan(frame=frame, topic=topic, partitions=info, samples=samples[:5], elapsed_s=time.perf_counter() - t0)
    frame, info, samples = _scan_partitions(bootstrap, topic, parts, window, fields, extra, batch, deadline_s, progress)
    return Scan(frame=frame, topic=topic, partitions=info, samples=samples, elapsed_s=time.perf_counter() - t0)


def _native_available() -> bool:
    from engine.connectors.kafka import native as kafka_native

    return kafka_native.library() is not None


def _concat_sorted(frames: list[pl.DataFrame], groups: list[list[int]]) -> pl.DataFrame:
    """The workers' frames (each sorted by partition, offset) as one frame in that order: a plain
    concatenation when the groups' partition ranges do not interleave, else a sort."""
    order = sorted(range(len(frames)), key=lambda i: min(groups[i]))
    ranges = [(min(groups[i]), max(groups[i])) for i in order]
    frame = pl.concat([frames[i] for i in order])
    if all(a[1] < b[0] for a, b in zip(ranges, ranges[1:], strict=False)):
        return frame
    return frame.sort(["partition", "offset"])


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


IPC_BYTES_PER_MESSAGE = 600
"""Generous size of one scanned message in a worker's IPC file (≈300 bytes measured on the scenario)."""


def _run_workers(jobs: list[tuple[Any, ...]], expected_messages: int = 0) -> list[tuple[pl.DataFrame, dict[int, dict[str, int | None]],
                                                          list[dict[str, Any]]]]:
    """One `python -m engine.connectors.kafka.scan --worker` process per job (arguments and small results
    pickled over pipes). Plain subprocesses rather than multiprocessing: no re-import of the caller's
    main module, and no fork of a process that holds librdkafka threads.

    Each worker writes its frame as an uncompressed Arrow IPC file (in /dev/shm when there is one)
    that is read here: ≈300 bytes per message, which through a pipe and pickle cost three
    copies and seconds at 5M messages."""
    import pickle
    import shutil
    import subprocess
    import sys
    import tempfile

    shm = Path("/dev/shm")
    use_shm = (shm.is_dir() and os.access(shm, os.W_OK)
               and shutil.disk_usage(shm).free > IPC_BYTES_PER_MESSAGE * expected_messages)  # containers: often 64 MB
    tmp = tempfile.mkdtemp(prefix="recon-scan-", dir=shm if use_shm else None)
    procs = []
    # each worker imports NumPy, whose OpenBLAS would start a spinning thread per core for
    # matrix work the scan never does (measured: recon CPU 5.54 → 5.41 s at 1M events)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
    try:
        for i, job in enumerate(jobs):
            p = subprocess.Popen([sys.executable, "-m", "engine.connectors.kafka.scan", "--worker"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            assert p.stdin is not None
            p.stdin.write(pickle.dumps((*job, str(Path(tmp) / f"{i}.arrow"))))
            p.stdin.close()
            p.stdin = None  # closed: communicate() must not flush it
            procs.append(p)
        results = []
        for p in procs:
            out_b, err_b = p.communicate()
            if p.returncode != 0:
                for q in procs:
                    q.kill()
                raise ServiceUnreachable("a Kafka scan worker failed: "
                                         f"{err_b.decode(errors='replace').strip().splitlines()[-1:]}")
            status, payload = pickle.loads(out_b)
            if status == "error":  # a recon error raised in the worker: re-raise it here, same class and message
                raise payload
            path, info, samples = payload
            results.append((pl.read_ipc(path), info, samples))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)  # mapped files stay readable until unmapped


def _worker_main() -> None:
    """Scan the job's partitions and write the frame to the job's IPC file, sorted by (partition,
    offset) so that the parent can concatenate without sorting."""
    import pickle
    import sys

    from engine.core.errors import ReconError
    from engine.runtime import tune_malloc

    tune_malloc()
    *job, path = pickle.loads(sys.stdin.buffer.read())
    try:
        frame, info, samples = _scan_partitions(*job)
        frame.write_ipc(path, compression="uncompressed")
        result: tuple[str, Any] = ("ok", (path, info, samples))
    except ReconError as exc:
        result = ("error", exc)
    sys.stdout.buffer.write(pickle.dumps(result))
    sys.stdout.buffer.flush()
    os._exit(0)  # skip freeing millions of objects one by one: the process ends anyway


def _scan_partitions(
    bootstrap: str, topic: str, parts: list[int], window: Window, fields: EventFields, extra: dict[str, str],
    batch: int, deadline_s: float, progress: Callable[[int], None] | None = None,
) -> tuple[pl.DataFrame, dict[int, dict[str, int | None]], list[dict[str, Any]]]:
    """Read ``parts`` to their ends (or window ends) and build the frame.

    The cyclic garbage collector is off while reading: the loop allocates millions of short-lived
    tuples (timestamps, headers) that never form cycles, and the collector's passes over them cost
    more than reading the messages (measured: ``headers()`` 1.3 µs per message with it, 0.5 without)."""
    import gc

    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        frame, info = _read_messages(bootstrap, topic, parts, window, fields, extra, batch, deadline_s, progress)
    finally:
        if gc_was_enabled:
            gc.enable()
    frame = _build_frame(frame, window)
    samples = frame.filter(pl.col("status") == "unparsable").head(5).select("partition", "offset", "raw").to_dicts()
    frame = frame.drop("raw")
    ends = frame.group_by("partition").agg(pl.col("offset").min().alias("lo"), pl.col("offset").max().alias("hi"))
    bounds = {r[0]: (r[1], r[2]) for r in ends.iter_rows()}  # one row per partition, not per message
    for p in parts:
        lo, hi = bounds.get(p, (None, None))
        info.setdefault(p, {})
        info[p]["first_offset"] = lo
        info[p]["last_offset"] = hi
    return frame, info, samples


_BASE = pa.schema([("partition", pa.int32()), ("offset", pa.int64()), ("ts", pa.struct([("ts_type", pa.int8()),
                   ("ts_ms", pa.int64())])), ("key", pa.binary()), ("org_header", pa.binary()),
                   ("producer_id", pa.binary()), ("sequence", pa.binary())])


def _read_messages(
    bootstrap: str, topic: str, parts: list[int], window: Window, fields: EventFields, extra: dict[str, str],
    batch: int, deadline_s: float, progress: Callable[[int], None] | None,
) -> tuple[pl.DataFrame, dict[int, dict[str, int | None]]]:
    """Consume to the end of every partition, into the scan's columns in (partition, offset) order. Each batch becomes Arrow at once (its Python objects
    die while still in cache): every field is taken with one C-level ``map`` over the messages, the
    values parsed column-wise (:func:`parse_values`); no Python bytecode per message except the header
    pick.

    Messages past an explicit offset range are dropped when the frame is built (columnar), not
    here; a partition is finished once a batch reaches the range's last offset."""
    from engine.connectors.kafka import native as kafka_native

    if kafka_native.library() is not None:
        return _read_native(bootstrap, topic, parts, window, fields, extra, deadline_s, progress)
    from confluent_kafka import KafkaError, Message, TopicPartition

    c = _consumer(bootstrap, extra)
    chunks: list[pa.RecordBatch] = []
    parsed: list[pl.DataFrame] = []
    info: dict[int, dict[str, int | None]] = {}
    names = fields.names()
    try:
        starts = _start_offsets(c, topic, parts, window)
        if not starts:
            raise UsageError(f"--offsets names no partition of {topic!r} (partitions: {parts})")
        c.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
        stop_at = {p: window.offsets[p][1] for p in starts} if window.offsets is not None else {}
        pending = set(starts)
        seen = last_progress = 0
        idle_since = time.monotonic()
        while pending:
            msgs = c.consume(batch, POLL_S)
            if not msgs:
                if time.monotonic() - idle_since > deadline_s:
                    raise ServiceUnreachable(f"Kafka at {bootstrap} sent nothing for {deadline_s:.0f}s while partitions "
                                             f"{sorted(pending)} had not reached their end: check the broker")
                continue
            idle_since = time.monotonic()
            errs = list(map(Message.error, msgs))
            if any(errs):  # EOF events (usually one per partition) or errors: rare. (KafkaError is always
                # truthy; errs.count(None) cannot be used: KafkaError == None raises)
                kept = []
                for m, err in zip(msgs, errs, strict=True):
                    if err is None:
                        kept.append(m)
                    elif err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(m.partition())
                        info.setdefault(m.partition(), {})["end_offset"] = m.offset()
                    elif err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                        raise missing_topic(topic, bootstrap)
                    elif err.fatal():
                        raise ServiceUnreachable(f"Kafka error while scanning {topic!r}: {err.str()}")
                msgs = kept
                if not msgs:
                    continue
            part = list(map(Message.partition, msgs))
            off = list(map(Message.offset, msgs))
            org_h, prod_h, seq_h = _pick_headers(list(map(Message.headers, msgs)))
            chunks.append(pa.RecordBatch.from_arrays([
                pa.array(part, pa.int32()), pa.array(off, pa.int64()),
                pa.array(list(map(Message.timestamp, msgs)), _BASE.field("ts").type),
                pa.array(list(map(Message.key, msgs)), pa.binary()),
                pa.array(org_h, pa.binary()), pa.array(prod_h, pa.binary()), pa.array(seq_h, pa.binary()),
            ], schema=_BASE))
            parsed.append(parse_values(list(map(Message.value, msgs)), fields, names))
            if stop_at:  # a partition's messages come in offset order: the last one per partition is its maximum
                for p, o in dict(zip(part, off, strict=True)).items():
                    if o >= stop_at.get(p, -1):
                        pending.discard(p)
            seen += len(msgs)
            if progress and seen - last_progress >= 50_000:
                progress(seen)
                last_progress = seen
        if stop_at:
            c.unassign()
    finally:
        c.close()
    values = pl.concat(parsed) if parsed else pl.DataFrame(schema=_PARSED_SCHEMA)
    frame = _joined(pa.Table.from_batches(chunks, schema=_BASE), values)
    if len(parts) > 1:  # partitions arrive interleaved as the broker answers: one order for every run
        frame = frame.sort(["partition", "offset"])
    return frame, info


_NATIVE_BASE = pa.schema([(f.name, pa.large_binary() if f.type == pa.binary() else f.type) for f in _BASE])


def _read_native(
    bootstrap: str, topic: str, parts: list[int], window: Window, fields: EventFields, extra: dict[str, str],
    deadline_s: float, progress: Callable[[int], None] | None,
) -> tuple[pl.DataFrame, dict[int, dict[str, int | None]]]:
    """:func:`_read_messages` through the native loop (``kafka_native``): the same window, the same
    columns, no Python object per message. Start offsets for a time window still come from
    confluent-kafka (one request), the messages from the C loop."""
    from engine.connectors.kafka import native as kafka_native

    if window.start is not None and window.offsets is None:
        c = _consumer(bootstrap, extra)
        try:
            starts = _start_offsets(c, topic, parts, window)
        finally:
            c.close()
    else:
        starts = _start_offsets(None, topic, parts, window)
    if not starts:
        raise UsageError(f"--offsets names no partition of {topic!r} (partitions: {parts})")
    stops = {p: window.offsets[p][1] for p in starts} if window.offsets is not None else {}
    names = fields.names()

    def on_chunk(batch: pa.RecordBatch, values: pa.Array) -> pl.DataFrame:
        return _joined(batch, parse_array(values, names, newline=True))

    conf = _consumer_conf(bootstrap, extra)
    if "debug" not in conf and "log_level" not in conf:
        conf["log_level"] = 0  # the C loop has no Python logger to hand librdkafka's lines to: silent, as above
    frames, info = kafka_native.read(bootstrap, topic, conf, starts, stops, HEADERS, deadline_s, progress, on_chunk)
    if not frames:
        return _joined(pa.Table.from_batches([], schema=_NATIVE_BASE), pl.DataFrame(schema=_PARSED_SCHEMA)), info
    return pl.concat(frames), info  # chunks come per partition, in offset order: no sort


def _build_frame(frame: pl.DataFrame, window: Window) -> pl.DataFrame:
    """The scan frame: the read rows cut to the window and flagged ``in_window``."""
    if window.offsets is not None:
        # messages read past a range's last offset, or before its first: a first offset beyond the
        # partition's end makes the client restart at the beginning (auto.offset.reset)
        first = pl.col("partition").replace_strict({p: a for p, (a, _) in window.offsets.items()}, default=-1,
                                                   return_dtype=pl.Int64)
        last = pl.col("partition").replace_strict({p: b for p, (_, b) in window.offsets.items()}, default=-1,
                                                  return_dtype=pl.Int64)
        frame = frame.filter(pl.col("offset").is_between(first, last))
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


if __name__ == "__main__":
    import sys as _sys

    if _sys.argv[1:] == ["--worker"]:
        _worker_main()
