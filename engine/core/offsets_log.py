"""Records of Kafka's ``__consumer_offsets`` topic, decoded from their key and value bytes (no I/O).

Why recon decodes them itself: the group coordinator's log is the only place where the history of
a group's commits and generations survives (the AdminClient only shows the latest offsets), and no
client library exposes a decoder. The layouts follow Apache Kafka's own message schemas, shipped in
the broker's ``kafka-group-coordinator`` jar (``common/message/*.json``; checked against 4.1.1):

* key = int16 record type, then the key's fields (the key schemas have one version, 0):
  type 0 ``LegacyOffsetCommitKey`` and 1 ``OffsetCommitKey`` (group string, topic string,
  partition int32); type 2 ``GroupMetadataKey`` (group string); types 3 and up are the KIP-848
  consumer-group, share-group and streams-group records: recognised and skipped (their keys all
  start with the group id, so they are still attributed to a group).
* value = int16 version, then the fields. ``OffsetCommitValue`` v0–4: offset int64, leaderEpoch
  int32 (v3+), metadata string, commitTimestamp int64, expireTimestamp int64 (v1 only); v4 is
  flexible (compact strings, unsigned-varint lengths, tagged fields, e.g. tag 0 = topicId).
  ``GroupMetadataValue`` v0–4: protocolType string, generation int32, protocol and leader nullable
  strings, currentStateTimestamp int64 (v2+), members[] (memberId, groupInstanceId nullable v3+,
  clientId, clientHost, rebalanceTimeout int32 v1+, sessionTimeout int32, subscription bytes,
  assignment bytes); v4 flexible.
* a null value is a tombstone: the offset was deleted, or the group removed.

Bytes that do not fit their layout (truncated, garbage, an unknown value version, trailing bytes)
make the record *unparsable*: counted, never raised. :func:`decode` is the vectorised batch path
(keys deduplicated by dictionary encoding, commit values read column-wise with NumPy); records the
column-wise path cannot place go through the scalar decoders below, which are the reference.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

LEGACY_OFFSET_COMMIT: Final = 0
OFFSET_COMMIT: Final = 1
GROUP_METADATA: Final = 2
#: record types below this one are decoded; this one and above are newer coordinators' records
FIRST_SKIPPED_TYPE: Final = 3
COMMIT_VALUE_VERSIONS: Final = range(0, 5)
GROUP_VALUE_VERSIONS: Final = range(0, 5)
FLEXIBLE_FROM: Final = 4  # both value schemas: "flexibleVersions": "4+"


class Unparsable(ValueError):
    """The bytes do not fit the schema (caught by :func:`decode`, which counts them)."""


# ---------------------------------------------------------------------------------------------
# the scalar reader: Kafka's protocol primitives


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise Unparsable(f"truncated: {n} bytes wanted at {self.pos} of {len(self.buf)}")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def int16(self) -> int:
        return int(struct.unpack(">h", self._take(2))[0])

    def int32(self) -> int:
        return int(struct.unpack(">i", self._take(4))[0])

    def int64(self) -> int:
        return int(struct.unpack(">q", self._take(8))[0])

    def uvarint(self) -> int:
        out = shift = 0
        while True:
            b = self._take(1)[0]
            out |= (b & 0x7F) << shift
            if not b & 0x80:
                return out
            shift += 7
            if shift > 28:
                raise Unparsable("unsigned varint longer than 5 bytes")

    def _length(self, flexible: bool, nullable: bool, wide: bool = False) -> int | None:
        """A string's or bytes' length: int16 (int32 for bytes) or compact (uvarint n+1); None = null."""
        n = self.uvarint() - 1 if flexible else (self.int32() if wide else self.int16())
        if n < 0:
            if n == -1 and nullable:
                return None
            raise Unparsable(f"length {n} at {self.pos}")
        return n

    def string(self, flexible: bool = False, nullable: bool = False) -> str | None:
        n = self._length(flexible, nullable)
        if n is None:
            return None
        try:
            return self._take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise Unparsable("string is not UTF-8") from None

    def bytes_(self, flexible: bool = False) -> bytes:
        n = self._length(flexible, nullable=False, wide=True)
        return self._take(n or 0)

    def tagged_fields(self) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for _ in range(self.uvarint()):
            tag = self.uvarint()
            out[tag] = self._take(self.uvarint())
        return out

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise Unparsable(f"{len(self.buf) - self.pos} bytes after the last field")


# ---------------------------------------------------------------------------------------------
# typed records


@dataclass(frozen=True)
class Key:
    """A decoded key: ``type`` 0/1 carry topic and partition, 2 only the group; 3+ are skipped."""

    type: int
    group: str
    topic: str | None = None
    partition: int | None = None


@dataclass(frozen=True)
class OffsetCommit:
    version: int
    offset: int
    metadata: str
    commit_timestamp: int
    leader_epoch: int = -1
    expire_timestamp: int = -1
    topic_id: bytes | None = None


@dataclass(frozen=True)
class Member:
    member_id: str
    client_id: str
    client_host: str
    session_timeout: int
    subscription: bytes
    assignment: bytes
    group_instance_id: str | None = None
    rebalance_timeout: int = -1


@dataclass(frozen=True)
class GroupMetadata:
    version: int
    protocol_type: str
    generation: int
    protocol: str | None
    leader: str | None
    members: tuple[Member, ...]
    current_state_timestamp: int = -1


def decode_key(b: bytes) -> Key:
    """A key's type and fields; types ≥ 3 only to their leading group id."""
    r = _Reader(b)
    t = r.int16()
    if t < 0:
        raise Unparsable(f"negative record type {t}")
    group = r.string()
    assert group is not None
    if t in (LEGACY_OFFSET_COMMIT, OFFSET_COMMIT):
        topic = r.string()
        part = r.int32()
        r.end()
        return Key(t, group, topic, part)
    if t == GROUP_METADATA:
        r.end()
    return Key(t, group)


def decode_offset_commit(b: bytes) -> OffsetCommit:
    r = _Reader(b)
    v = r.int16()
    if v not in COMMIT_VALUE_VERSIONS:
        raise Unparsable(f"unknown OffsetCommitValue version {v}")
    flex = v >= FLEXIBLE_FROM
    offset = r.int64()
    epoch = r.int32() if v >= 3 else -1
    metadata = r.string(flex)
    ts = r.int64()
    expire = r.int64() if v == 1 else -1
    topic_id = r.tagged_fields().get(0) if flex else None
    r.end()
    assert metadata is not None
    return OffsetCommit(v, offset, metadata, ts, epoch, expire, topic_id)


def decode_group_metadata(b: bytes) -> GroupMetadata:
    r = _Reader(b)
    v = r.int16()
    if v not in GROUP_VALUE_VERSIONS:
        raise Unparsable(f"unknown GroupMetadataValue version {v}")
    flex = v >= FLEXIBLE_FROM
    protocol_type = r.string(flex)
    generation = r.int32()
    protocol = r.string(flex, nullable=True)
    leader = r.string(flex, nullable=True)
    state_ts = r.int64() if v >= 2 else -1
    n = r.uvarint() - 1 if flex else r.int32()
    if n < 0:
        raise Unparsable(f"members array length {n}")  # not nullable in the schema
    members = []
    for _ in range(n):
        member_id = r.string(flex)
        instance = r.string(flex, nullable=True) if v >= 3 else None
        client_id = r.string(flex)
        client_host = r.string(flex)
        rebalance = r.int32() if v >= 1 else -1
        session = r.int32()
        sub = r.bytes_(flex)
        assignment = r.bytes_(flex)
        if flex:
            r.tagged_fields()
        assert member_id is not None and client_id is not None and client_host is not None
        members.append(Member(member_id, client_id, client_host, session, sub, assignment, instance, rebalance))
    if flex:
        r.tagged_fields()
    r.end()
    assert protocol_type is not None
    return GroupMetadata(v, protocol_type, generation, protocol, leader, tuple(members), state_ts)


# ---------------------------------------------------------------------------------------------
# the batch path


@dataclass
class GroupRecords:
    """One group's records of a run of ``__consumer_offsets``, in log order.

    ``commits``: one row per offset commit or deletion (tombstone: ``offset`` null) with the
    record's log offset and timestamp; ``metadata``: (log offset, record timestamp, value or None
    for a tombstone). Counters: ``read`` = records handed in (every group's), ``unparsable`` = keys
    that do not decode (whosever they were) plus this group's values that do not,
    ``skipped_types`` = this group's records of types ≥ 3."""

    group: str
    commits: pa.Table
    metadata: list[tuple[int, int, GroupMetadata | None]] = field(default_factory=list)
    read: int = 0
    unparsable: int = 0
    skipped_types: int = 0

    def counts(self) -> dict[str, int]:
        return {"read": self.read, "unparsable": self.unparsable, "skipped_types": self.skipped_types}


COMMITS_SCHEMA: Final = pa.schema([
    ("topic", pa.string()), ("partition", pa.int32()), ("log_offset", pa.int64()), ("record_ts", pa.int64()),
    ("offset", pa.int64()), ("leader_epoch", pa.int32()), ("commit_ts", pa.int64()), ("version", pa.int16()),
])


def _be(data: np.ndarray, pos: np.ndarray, width: int, dtype: str) -> np.ndarray:
    """Big-endian integers of ``width`` bytes at each of ``pos`` in ``data`` (positions in range).

    A byte-strided view of the buffer has, at index i, the integer whose bytes start at byte i: one
    gather of n elements instead of n × width byte lookups."""
    view = np.ndarray(shape=(len(data) - width + 1,), dtype=dtype, buffer=data, strides=(1,))
    return view[pos].astype(dtype.replace(">", "<"))


def _binary_parts(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, lengths, data bytes) of a binary array; nulls have length 0."""
    arr = arr.cast(pa.large_binary()) if arr.type != pa.large_binary() else arr
    bufs = arr.buffers()
    offs = np.frombuffer(bufs[1], dtype=np.int64, count=len(arr) + 1, offset=arr.offset * 8)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    starts = offs[:-1]
    return starts, offs[1:] - starts, data


def _commit_values(values: pa.Array) -> tuple[np.ndarray, ...]:
    """Column-wise decode of OffsetCommitValue bytes: (ok, version, offset, epoch, commit_ts).

    Handles every layout whose metadata length fits the fixed or one-byte-varint form and, for v4,
    an empty tagged-field section; ``ok`` is False for every other row (including real garbage),
    which the caller sends through :func:`decode_offset_commit`."""
    n = len(values)
    starts, lens, data = _binary_parts(values)
    # pad so that every fixed-width gather below stays inside the buffer
    data = np.concatenate([data, np.zeros(32, np.uint8)])
    ok = lens >= 2
    ver = np.where(ok, _be(data, starts, 2, ">i2"), -1)
    v3 = ver >= 3
    flex = ver == FLEXIBLE_FROM
    offset = _be(data, starts + 2, 8, ">i8")
    epoch = np.where(v3, _be(data, starts + 10, 4, ">i4"), -1)
    mpos = starts + np.where(v3, 14, 10)  # where the metadata length is
    fixed_len = _be(data, np.minimum(mpos, len(data) - 2), 2, ">i2").astype(np.int64)
    varint = data[np.minimum(mpos, len(data) - 1)].astype(np.int64)
    mlen = np.where(flex, varint - 1, fixed_len)
    head = np.where(flex, 1, 2)
    ts_pos = mpos + head + np.maximum(mlen, 0)
    # the value's expected size from its version: v1 has expireTimestamp, v4 one tagged-field byte
    tail = np.select([ver == 1, flex], [16, 9], 8)
    ok &= (ver >= 0) & (ver <= FLEXIBLE_FROM) & (mlen >= 0) & ~(flex & (varint >= 0x80))
    ok &= (ts_pos - starts + tail) == lens
    ts = np.zeros(n, np.int64)
    if ok.any():
        sel = np.flatnonzero(ok)
        ts[sel] = _be(data, ts_pos[sel], 8, ">i8")
        empty_tags = ~flex[sel] | (data[ts_pos[sel] + 8] == 0)
        ok[sel] &= empty_tags
    return ok, ver, offset, epoch, ts


def decode(keys: pa.Array, values: pa.Array, log_offsets: np.ndarray, timestamps: np.ndarray,
           group: str) -> GroupRecords:
    """Decode a run of ``__consumer_offsets`` records and keep ``group``'s.

    ``keys``/``values``: binary arrays (a null value is a tombstone); ``log_offsets``/``timestamps``:
    the records' offsets and timestamps (ms) in the partition, in log order."""
    n = len(keys)
    log_offsets = np.asarray(log_offsets, dtype=np.int64)
    timestamps = np.asarray(timestamps, dtype=np.int64)
    out = GroupRecords(group, COMMITS_SCHEMA.empty_table(), read=n)
    if n == 0:
        return out
    # keys repeat (that is what compaction relies on): decode each distinct key once
    enc = pc.dictionary_encode(keys.cast(pa.large_binary()))
    uniq = enc.dictionary.to_pylist()
    kinds = np.full(len(uniq) + 1, -1, np.int16)  # -1 unparsable, -2 another group, else the type
    topics: list[str | None] = [None] * (len(uniq) + 1)
    parts = np.full(len(uniq) + 1, -1, np.int32)
    for i, kb in enumerate(uniq):
        try:
            k = decode_key(kb)
        except Unparsable:
            continue
        if k.group != group:
            kinds[i] = -2
            continue
        kinds[i] = k.type
        topics[i], parts[i] = k.topic, (k.partition if k.partition is not None else -1)
    idx = enc.indices.fill_null(len(uniq)).to_numpy(zero_copy_only=False)  # a null key: unparsable
    kind = kinds[idx]
    out.unparsable = int((kind == -1).sum())
    out.skipped_types = int((kind >= FIRST_SKIPPED_TYPE).sum())
    is_null = values.is_null().to_numpy(zero_copy_only=False)

    commit_rows = np.flatnonzero((kind == LEGACY_OFFSET_COMMIT) | (kind == OFFSET_COMMIT))
    cvals = values.take(pa.array(commit_rows))
    ok, ver, offset, epoch, ts = _commit_values(cvals)
    tomb = is_null[commit_rows]
    ok |= tomb
    bad = np.flatnonzero(~ok)
    if len(bad):  # the scalar reference decides what the column-wise path could not place
        for j, vb in zip(bad, cvals.take(pa.array(bad)).to_pylist(), strict=True):
            try:
                c = decode_offset_commit(vb)
            except Unparsable:
                continue
            ok[j], ver[j], offset[j], epoch[j], ts[j] = True, c.version, c.offset, c.leader_epoch, c.commit_timestamp
        out.unparsable += int((~ok).sum())
    keep = commit_rows[ok]
    kidx = idx[keep]
    okv = np.flatnonzero(ok)
    out.commits = pa.table({
        "topic": pc.take(pa.array(topics, pa.string()), pa.array(kidx, pa.int64())),
        "partition": pa.array(parts[kidx], pa.int32()),
        "log_offset": pa.array(log_offsets[keep], pa.int64()),
        "record_ts": pa.array(timestamps[keep], pa.int64()),
        "offset": pa.array(offset[okv], pa.int64(), mask=tomb[okv]),
        "leader_epoch": pa.array(epoch[okv], pa.int32(), mask=tomb[okv]),
        "commit_ts": pa.array(ts[okv], pa.int64(), mask=tomb[okv]),
        "version": pa.array(ver[okv], pa.int16(), mask=tomb[okv]),
    }, schema=COMMITS_SCHEMA)

    for row in np.flatnonzero(kind == GROUP_METADATA):
        vb = values[int(row)].as_py()
        if vb is None:
            out.metadata.append((int(log_offsets[row]), int(timestamps[row]), None))
            continue
        try:
            out.metadata.append((int(log_offsets[row]), int(timestamps[row]), decode_group_metadata(vb)))
        except Unparsable:
            out.unparsable += 1
    return out


def coordinator_partition(group: str, partitions: int) -> int:
    """The ``__consumer_offsets`` partition holding ``group``'s records: Kafka's
    ``Utils.abs(groupId.hashCode()) % partitions`` (Java's String hash over UTF-16 code units, and
    ``Utils.abs`` maps Integer.MIN_VALUE to 0)."""
    units = group.encode("utf-16-be")
    h = 0
    for (cu,) in struct.iter_unpack(">H", units):
        h = (31 * h + cu) & 0xFFFFFFFF
    signed = h - (1 << 32) if h >= 1 << 31 else h
    return (0 if signed == -(1 << 31) else abs(signed)) % partitions
