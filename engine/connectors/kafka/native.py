"""The native scan loop (``native/kafka_scan.c``): librdkafka messages straight into Arrow buffers.

confluent-kafka creates one Python ``Message`` per message, and taking a scan's fields from it costs
≈3 µs of Python per message: with that, a scan cannot keep up with the broker. The C loop consumes
with the same librdkafka that confluent-kafka loaded (same version, same properties) and appends
partition, offset, timestamp, key, the three picked headers and the value to columnar buffers; the
values are split into their fields in C when they are in the producers' shape (:func:`event_fields`). Python sees one call per
chunk of messages, and the buffers become Arrow arrays without a copy.

Written by hand because no maintained library fits: kafkarrow 0.1.1 (Rust, Arrow batches, Oct
2026) has no headers in its batches (the sequence check needs producer-id and sequence), no
explicit per-partition start offsets (``--offsets``), and releases messages in timestamp order
across partitions; aiokafka and kafka-python are pure Python, slower than confluent-kafka.

The library is compiled on first use with the machine's C compiler into the user cache (keyed by the
source, the librdkafka file and the compiler), or ahead of time by ``python -m
engine.connectors.kafka.native build`` (``scripts/_env.sh`` does). Without a compiler, or with
``RECON_KAFKA_NATIVE=0``, the scan uses the pure-Python loop, which reads the same data the same way
(the integration tests compare both); ``RECON_KAFKA_NATIVE=1`` makes a failed build an error.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from engine.connectors.kafka.client import missing_topic
from engine.core.errors import ReconError, ServiceUnreachable, UsageError

SOURCE = Path(__file__).with_name("csrc") / "kafka_scan.c"
ENV = "RECON_KAFKA_NATIVE"

CHUNK_ROWS = 1 << 17
"""Messages per fill (over all partitions) handed to Python: large enough that the per-chunk Python
work (wrapping the buffers, splitting the values) is noise, small enough that a fill's buffers stay in
tens of MB."""
CHUNK_BYTES = 256 << 20
"""A chunk also ends once its values reach this size (messages may be up to MBs each)."""
IDLE_MS = 250
"""How long one fill waits for a message before returning control (deadline checks, progress)."""

T = TypeVar("T")

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_why_not: str | None = None


class NativeUnavailable(ReconError):
    """The native loop could not be built or loaded (only raised when ``RECON_KAFKA_NATIVE=1``)."""


class NativeBuildFailed(NativeUnavailable):
    """A compiler was there and refused the source: a defect of recon, not of the machine. The
    product still falls back to the Python loop; the test suite fails on it (tests/prereqs.py)."""


def wanted() -> bool | None:
    """``RECON_KAFKA_NATIVE``: '0' off, '1' required, unset: use it when it builds."""
    v = os.environ.get(ENV, "").strip()
    return None if v == "" else v not in ("0", "false", "no", "off")


def librdkafka_path() -> Path | None:
    """The librdkafka file that confluent-kafka's extension loaded (the wheel's own copy, or a system
    library for a source build): read from the process's memory map after importing it."""
    import confluent_kafka.cimpl  # noqa: F401 - loads librdkafka

    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if "librdkafka" in Path(path).name and Path(path).is_file():
            return Path(path)
    return None


def cache_dir() -> Path:
    base = os.environ.get("RECON_NATIVE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "recon", "native")
    return Path(base)


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    return cc if cc and shutil.which(cc) else shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def build(force: bool = False) -> Path:
    """Compile the loop against the loaded librdkafka (a no-op when the cached build is current).
    Raises NativeUnavailable with the reason."""
    if not sys.platform.startswith("linux"):
        raise NativeUnavailable("the native Kafka scan is built on Linux only")
    lib = librdkafka_path()
    if lib is None:
        raise NativeUnavailable("cannot find the librdkafka that confluent-kafka loaded")
    cc = _compiler()
    if cc is None:
        raise NativeUnavailable("no C compiler (cc, gcc or clang) on PATH")
    src = SOURCE.read_bytes()
    st = lib.stat()
    key = hashlib.sha256(src + f"\0{lib}\0{st.st_size}\0{st.st_mtime_ns}\0{cc}".encode()).hexdigest()[:16]
    out = cache_dir() / f"kafka_scan-{key}.so"
    if out.exists() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [cc, "-O2", "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-shared", "-fPIC", "-o", tmp, str(SOURCE), str(lib),
           f"-Wl,-rpath,{lib.parent}"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            msg = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise NativeBuildFailed(f"building the native Kafka scan failed: {msg}")
        os.replace(tmp, out)  # atomic: concurrent builders each write their own file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build()))
    c_p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.recon_chunk_new.restype = c_p
    lib.recon_chunk_free.argtypes = [c_p]
    lib.recon_chunk_free.restype = None
    lib.recon_chunk_buffer.argtypes = [c_p, i32, ctypes.POINTER(i64)]
    lib.recon_chunk_buffer.restype = c_p
    lib.recon_chunk_take.argtypes = [c_p, i32, ctypes.POINTER(i64)]
    lib.recon_chunk_take.restype = c_p
    lib.recon_buffer_free.argtypes = [c_p]
    lib.recon_buffer_free.restype = None
    lib.recon_chunk_count.argtypes = [c_p, i32]
    lib.recon_chunk_count.restype = i64
    lib.recon_scan_open.argtypes = [i32, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p),
                                    ctypes.c_char_p, i32, ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(i64),
                                    ctypes.POINTER(i64), ctypes.POINTER(ctypes.c_char_p), ctypes.c_char_p, i32,
                                    ctypes.POINTER(i32)]
    lib.recon_scan_open.restype = c_p
    lib.recon_scan_fill.argtypes = [c_p, ctypes.POINTER(c_p), i64, i64, i32]
    lib.recon_scan_fill.restype = i64
    lib.recon_scan_pending.argtypes = [c_p]
    lib.recon_scan_pending.restype = i32
    lib.recon_scan_eof.argtypes = [c_p, i32]
    lib.recon_scan_eof.restype = i64
    lib.recon_scan_error.argtypes = [c_p, ctypes.POINTER(i32)]
    lib.recon_scan_error.restype = ctypes.c_char_p
    lib.recon_scan_close.argtypes = [c_p]
    lib.recon_scan_close.restype = None
    lib.recon_event_shape.argtypes = [i64, c_p, c_p, ctypes.POINTER(ctypes.c_char_p), c_p, c_p, c_p, c_p]
    lib.recon_event_shape.restype = i64
    lib.recon_event_gather.argtypes = [i64, c_p, c_p, c_p, c_p, i32, c_p, c_p]
    lib.recon_event_gather.restype = None
    return lib


def event_fields(values: Any, names: list[str]) -> tuple[Any, list[Any]] | None:
    """The five fields of the values in the producers' shape (``recon_event_shape`` in the C
    source says which), from a large_binary Arrow array: a NumPy bool array (which rows are in
    shape) and five large_string Arrow arrays (null for the other rows). None when the library is
    not available. Two passes in C over the values' bytes, no Python per value."""
    import numpy as np
    import pyarrow as pa

    lib = library()
    if lib is None:
        return None
    n = len(values)
    _, offs_buf, data_buf = values.buffers()
    offs = offs_buf.address + values.offset * 8
    data = data_buf.address if data_buf is not None and data_buf.size else 0
    ok = np.zeros(n, dtype=np.uint8)
    start = np.empty(n * 5, dtype=np.int64)
    length = np.empty(n * 5, dtype=np.int64)
    sizes = np.zeros(5, dtype=np.int64)
    c_names = (ctypes.c_char_p * 5)(*[nm.encode() for nm in names])
    good = lib.recon_event_shape(n, offs, data, c_names, ok.ctypes.data, start.ctypes.data, length.ctypes.data,
                                 sizes.ctypes.data)
    validity = pa.py_buffer(np.packbits(ok, bitorder="little")) if good < n else None
    cols = []
    for k in range(5):
        out_offs = np.empty(n + 1, dtype=np.int64)
        out = np.empty(max(1, int(sizes[k])), dtype=np.uint8)
        lib.recon_event_gather(n, data, ok.ctypes.data, start.ctypes.data, length.ctypes.data, k, out_offs.ctypes.data,
                               out.ctypes.data)
        cols.append(pa.Array.from_buffers(pa.large_string(), n, [validity, pa.py_buffer(out_offs), pa.py_buffer(out)],
                                          null_count=n - good))
    return ok.view(bool), cols


def library() -> ctypes.CDLL | None:
    """The loaded native library, or None when it is off or cannot be built (the reason is in
    :func:`why_not`). Built and loaded once per process."""
    global _lib, _why_not
    want = wanted()
    if want is False:
        return None
    with _lock:
        if _lib is None and _why_not is None:
            try:
                _lib = _load()
            except (NativeUnavailable, OSError, subprocess.SubprocessError) as exc:
                _why_not = str(exc)
                logging.getLogger(__name__).info("native Kafka scan unavailable (%s): using the Python loop", _why_not)
    if _lib is None and want:
        raise NativeUnavailable(f"{ENV}=1 but {_why_not}")
    return _lib


def why_not() -> str | None:
    return _why_not


class _Owned:
    """One C buffer taken over from a chunk; freed when the last Arrow buffer over it goes."""

    __slots__ = ("_free", "addr")

    def __init__(self, free: Any, addr: int) -> None:
        self._free, self.addr = free, addr

    def __del__(self) -> None:
        self._free(self.addr)


class _Chunk:
    """Owns one C chunk. Columns that end up in the scan frame take their buffers over
    (:meth:`take`), so that the frame keeps only them alive; the values' buffers stay with the chunk
    and go with it once they are parsed."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        self.ptr = lib.recon_chunk_new()
        if not self.ptr:
            raise MemoryError("cannot allocate a scan chunk")

    def __del__(self) -> None:
        if self.ptr:
            self._lib.recon_chunk_free(self.ptr)
            self.ptr = None

    def count(self, which: int) -> int:
        return int(self._lib.recon_chunk_count(self.ptr, which))

    def buffer(self, which: int) -> Any:
        import pyarrow as pa

        size = ctypes.c_int64()
        addr = self._lib.recon_chunk_buffer(self.ptr, which, ctypes.byref(size))
        if not addr or size.value == 0:
            return pa.py_buffer(b"")
        return pa.foreign_buffer(addr, size.value, base=self)

    def take(self, which: int) -> Any:
        import pyarrow as pa

        size = ctypes.c_int64()
        addr = self._lib.recon_chunk_take(self.ptr, which, ctypes.byref(size))
        if not addr:
            return pa.py_buffer(b"")
        owner = _Owned(self._lib.recon_buffer_free, addr)
        return pa.foreign_buffer(addr, size.value, base=owner) if size.value else pa.py_buffer(b"")

    def raw(self, which: int) -> bytes:
        size = ctypes.c_int64()
        addr = self._lib.recon_chunk_buffer(self.ptr, which, ctypes.byref(size))
        return ctypes.string_at(addr, size.value) if addr and size.value else b""


KEY, ORG, PROD, SEQ, VALUE = range(5)


def _binary(ch: _Chunk, col: int, n: int, take: bool = True) -> Any:
    import pyarrow as pa

    buf = ch.take if take else ch.buffer
    nulls = ch.count(3 + col)
    validity = buf(14 + col) if nulls else None
    return pa.Array.from_buffers(pa.large_binary(), n, [validity, buf(9 + col), buf(4 + col)], null_count=nulls)


def _to_arrow(ch: _Chunk) -> tuple[Any, Any]:
    """The chunk's base columns (same names as the Python loop's, large_binary instead of binary) and
    its value column (each value still followed by its newline)."""
    import pyarrow as pa

    n = ch.count(0)
    ts = pa.StructArray.from_arrays([pa.Array.from_buffers(pa.int8(), n, [None, ch.take(3)]),
                                     pa.Array.from_buffers(pa.int64(), n, [None, ch.take(2)])],
                                    names=["ts_type", "ts_ms"])
    batch = pa.RecordBatch.from_arrays([
        pa.Array.from_buffers(pa.int32(), n, [None, ch.take(0)]),
        pa.Array.from_buffers(pa.int64(), n, [None, ch.take(1)]),
        ts, _binary(ch, KEY, n), _binary(ch, ORG, n), _binary(ch, PROD, n), _binary(ch, SEQ, n),
    ], names=["partition", "offset", "ts", "key", "org_header", "producer_id", "sequence"])
    return batch, _binary(ch, VALUE, n, take=False)


def read(
    bootstrap: str, topic: str, conf: dict[str, Any], starts: dict[int, int], stops: dict[int, int],
    headers: tuple[str, str, str], deadline_s: float, progress: Callable[[int], None] | None,
    on_chunk: Callable[[Any, Any], T],
) -> tuple[list[T], dict[int, dict[str, int | None]]]:
    """Consume ``starts`` (partition → first offset, -2 = beginning) to EOF or to ``stops`` (last
    offset, inclusive).

    Each chunk holds one partition's messages in offset order and is handed to ``on_chunk(batch,
    values)``: the base columns as an Arrow record batch and the values as a large_binary array
    (null for tombstones, each value followed by its newline). ``on_chunk`` runs on the calling
    thread while the next chunk is
    being consumed. Returns its results in (partition, offset) order and per-partition info
    (``end_offset`` from the EOF event)."""
    lib = library()
    assert lib is not None
    parts = sorted(starts)
    n = len(parts)
    items = [(str(k), _conf_text(v)) for k, v in conf.items()]
    keys = (ctypes.c_char_p * max(1, len(items)))(*[k.encode() for k, _ in items])
    vals = (ctypes.c_char_p * max(1, len(items)))(*[v.encode() for _, v in items])
    c_parts = (ctypes.c_int32 * max(1, n))(*parts)
    c_starts = (ctypes.c_int64 * max(1, n))(*[starts[p] for p in parts])
    c_stops = (ctypes.c_int64 * max(1, n))(*[stops.get(p, -1) for p in parts])
    c_hdrs = (ctypes.c_char_p * 3)(*[h.encode() for h in headers])
    err = ctypes.create_string_buffer(512)
    bad = ctypes.c_int(-1)
    scan = lib.recon_scan_open(len(items), keys, vals, topic.encode(), n, c_parts, c_starts, c_stops, c_hdrs, err,
                               len(err), ctypes.byref(bad))
    if not scan:
        if bad.value >= 0:  # librdkafka's text may quote the value: name the property only
            raise UsageError(f"Kafka client property {items[bad.value][0]!r} was rejected: check --kafka-config")
        raise ServiceUnreachable(f"cannot create a Kafka consumer for {bootstrap}: {err.value.decode(errors='replace')}")
    results: list[list[T]] = [[] for _ in parts]
    filled: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=2)  # bounded: ≤ 2 fills wait for Python
    stop = threading.Event()

    def consume() -> None:
        """The fill loop, in its own thread: librdkafka keeps being drained while Python builds the
        previous chunks (ctypes releases the GIL for the C call, Polars for the parse)."""
        try:
            while not stop.is_set() and lib.recon_scan_pending(scan) > 0:
                chunks = [_Chunk(lib) for _ in range(max(1, n))]
                ptrs = (ctypes.c_void_p * len(chunks))(*[c.ptr for c in chunks])
                got = lib.recon_scan_fill(scan, ptrs, CHUNK_ROWS, CHUNK_BYTES, IDLE_MS)
                if got < 0:
                    filled.put(("error", None))
                    return
                filled.put(("chunks", chunks) if got else ("idle", None))
            filled.put(("done", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            filled.put(("exception", exc))

    reader = threading.Thread(target=consume, name="recon-kafka-scan", daemon=True)
    reader.start()
    try:
        seen = 0
        last_data = _now()
        while True:
            what, payload = filled.get()
            if what == "done":
                break
            if what == "error":
                _raise(lib, scan, bootstrap, topic)
            if what == "exception":
                raise payload
            if what == "idle":
                if _now() - last_data > deadline_s:
                    pending = [parts[i] for i in range(n) if lib.recon_scan_eof(scan, i) < 0]
                    raise ServiceUnreachable(f"Kafka at {bootstrap} sent nothing for {deadline_s:.0f}s while "
                                             f"partitions {pending} had not reached their end: check the broker")
                continue
            last_data = _now()
            for i, ch in enumerate(payload):
                rows = ch.count(0)
                if rows:
                    results[i].append(_hand_over(ch, on_chunk))
                    seen += rows
            del payload
            if progress:
                progress(seen)
        reader.join()
        info: dict[int, dict[str, int | None]] = {}
        for i, p in enumerate(parts):
            eof = lib.recon_scan_eof(scan, i)
            if eof >= 0:
                info.setdefault(p, {})["end_offset"] = int(eof)
        return [r for per_part in results for r in per_part], info
    finally:
        stop.set()
        while reader.is_alive():  # unblock a put() on the full queue, then let the thread end
            with contextlib.suppress(queue.Empty):
                filled.get(timeout=0.05)
        lib.recon_scan_close(scan)


def _hand_over(ch: _Chunk, on_chunk: Callable[..., T]) -> T:
    batch, values = _to_arrow(ch)
    return on_chunk(batch, values)


def _raise(lib: ctypes.CDLL, scan: Any, bootstrap: str, topic: str) -> None:
    kind = ctypes.c_int(0)
    text = (lib.recon_scan_error(scan, ctypes.byref(kind)) or b"").decode(errors="replace")
    if kind.value == 1:
        raise missing_topic(topic, bootstrap)
    if kind.value == 4:
        raise UsageError(f"not authorized to read topic {topic!r} on {bootstrap}: check the credentials in "
                         "--kafka-config")
    if kind.value == 5:  # librdkafka's reason may name the user: not shown
        raise UsageError(f"Kafka at {bootstrap} refused the credentials: check the sasl.* and ssl.* properties in "
                         "--kafka-config")
    if kind.value == 3:
        raise MemoryError(text)
    raise ServiceUnreachable(f"Kafka error while scanning {topic!r}: {text}")


def _conf_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _now() -> float:
    import time

    return time.monotonic()


if __name__ == "__main__":
    if sys.argv[1:2] == ["build"]:
        try:
            print(build(force="--force" in sys.argv))
        except NativeUnavailable as exc:
            print(f"native Kafka scan not built: {exc}; the scan will use the Python loop", file=sys.stderr)
            sys.exit(0 if wanted() is not True else 1)
