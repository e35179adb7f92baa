"""The ``__consumer_offsets`` decoder against vectors Kafka itself decoded (captured from the 4.1.1 broker,
or hand-encoded from its JSON schemas; see ``data/consumer_offsets_vectors.json``'s "about"), the batch
path against the scalar one, damaged bytes, and the analysis of rewinds and rebalances."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from engine.core import group_audit, offsets_log
from engine.core.offsets_log import Unparsable

VECTORS = json.loads((Path(__file__).parent / "data" / "consumer_offsets_vectors.json").read_text())["vectors"]
BY_NAME = {v["name"]: v for v in VECTORS}


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _commit_as_kafka(c: offsets_log.OffsetCommit) -> dict[str, Any]:
    """Our decoding in the shape of DumpLogSegments' JSON (fields absent from a version left out)."""
    d: dict[str, Any] = {"offset": c.offset}
    if c.version >= 3:
        d["leaderEpoch"] = c.leader_epoch
    d |= {"metadata": c.metadata, "commitTimestamp": c.commit_timestamp}
    if c.version == 1:
        d["expireTimestamp"] = c.expire_timestamp
    if c.topic_id is not None:
        d["topicId"] = base64.urlsafe_b64encode(c.topic_id).decode().rstrip("=")
    return d


def _group_as_kafka(g: offsets_log.GroupMetadata, kafka: dict[str, Any]) -> dict[str, Any]:
    d: dict[str, Any] = {"protocolType": g.protocol_type, "generation": g.generation, "protocol": g.protocol,
                         "leader": g.leader}
    if g.version >= 2:
        d["currentStateTimestamp"] = g.current_state_timestamp
    members = []
    for m, km in zip(g.members, kafka["members"], strict=True):
        md: dict[str, Any] = {"memberId": m.member_id}
        if g.version >= 3:
            md["groupInstanceId"] = m.group_instance_id
        md |= {"clientId": m.client_id, "clientHost": m.client_host}
        if g.version >= 1:
            md["rebalanceTimeout"] = m.rebalance_timeout
        md["sessionTimeout"] = m.session_timeout
        # Kafka prints the bytes as base64, or parsed when they are a ConsumerProtocol message
        md["subscription"] = _b64(m.subscription) if isinstance(km["subscription"], str) else km["subscription"]
        md["assignment"] = _b64(m.assignment) if isinstance(km["assignment"], str) else km["assignment"]
        members.append(md)
    d["members"] = members
    return d


def test_the_vectors_cover_every_version_and_type() -> None:
    commits = {v["kafka_value"]["version"] for v in VECTORS if v["kafka_key"]["type"] in ("0", "1")}
    groups = {v["kafka_value"]["version"] for v in VECTORS if v["kafka_key"]["type"] == "2" and v["kafka_value"]}
    assert commits == {"0", "1", "2", "3", "4"} and groups == {"0", "1", "2", "3", "4"}
    assert {v["kafka_key"]["type"] for v in VECTORS} >= {"0", "1", "2", "3", "5", "6", "7", "8"}
    assert any(v["source"].startswith("captured") and v["kafka_key"]["type"] == "1" for v in VECTORS)
    assert any(v["source"].startswith("captured") and v["kafka_key"]["type"] == "2" for v in VECTORS)


@pytest.mark.parametrize("vec", VECTORS, ids=[v["name"] for v in VECTORS])
def test_each_vector_decodes_as_kafka_decodes_it(vec: dict[str, Any]) -> None:
    key = offsets_log.decode_key(bytes.fromhex(vec["key_hex"]))
    kk = vec["kafka_key"]
    assert key.type == int(kk["type"])
    assert key.group == kk["data"].get("group", kk["data"].get("groupId"))
    if key.type in (0, 1):
        assert (key.topic, key.partition) == (kk["data"]["topic"], kk["data"]["partition"])
    if vec["value_hex"] is None or key.type >= offsets_log.FIRST_SKIPPED_TYPE:
        return
    value = bytes.fromhex(vec["value_hex"])
    kv = vec["kafka_value"]
    if key.type == 2:
        g = offsets_log.decode_group_metadata(value)
        assert g.version == int(kv["version"])
        assert _group_as_kafka(g, kv["data"]) == kv["data"]
    else:
        c = offsets_log.decode_offset_commit(value)
        assert c.version == int(kv["version"])
        assert _commit_as_kafka(c) == kv["data"]


def _arrays(vecs: list[dict[str, Any]]) -> tuple[pa.Array, pa.Array, np.ndarray, np.ndarray]:
    keys = pa.array([bytes.fromhex(v["key_hex"]) for v in vecs], pa.binary())
    values = pa.array([None if v["value_hex"] is None else bytes.fromhex(v["value_hex"]) for v in vecs], pa.binary())
    n = len(vecs)
    return keys, values, np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64) * 1000


def test_batch_decode_of_the_vectors_matches_the_scalar_decoders() -> None:
    for group in {v["kafka_key"]["data"].get("group") or v["kafka_key"]["data"]["groupId"] for v in VECTORS}:
        recs = offsets_log.decode(*_arrays(VECTORS), group=group)
        want = []
        for i, v in enumerate(VECTORS):
            k = offsets_log.decode_key(bytes.fromhex(v["key_hex"]))
            if k.group == group and k.type in (0, 1):
                c = offsets_log.decode_offset_commit(bytes.fromhex(v["value_hex"])) if v["value_hex"] else None
                want.append((k.topic, k.partition, i, c and c.offset, c and c.commit_timestamp, c and c.version))
        got = [(r["topic"], r["partition"], r["log_offset"], r["offset"], r["commit_ts"], r["version"])
               for r in recs.commits.to_pylist()]
        assert got == want, group
        assert recs.unparsable == 0 and recs.read == len(VECTORS)
        skipped = sum(1 for v in VECTORS if int(v["kafka_key"]["type"]) >= 3
                      and v["kafka_key"]["data"].get("groupId") == group)
        assert recs.skipped_types == skipped
    kip848 = offsets_log.decode(*_arrays(VECTORS), group=BY_NAME["broker_p49_o5"]["kafka_key"]["data"]["group"])
    assert kip848.skipped_types == 9 and [r["offset"] for r in kip848.commits.to_pylist()] == [20]


def _commit_key(group: str, topic: str, part: int) -> bytes:
    g, t = group.encode(), topic.encode()
    return struct.pack(">hh", 1, len(g)) + g + struct.pack(">h", len(t)) + t + struct.pack(">i", part)


def _v3(offset: int, ts: int, metadata: bytes = b"") -> bytes:
    return struct.pack(">hqih", 3, offset, 0, len(metadata)) + metadata + struct.pack(">q", ts)


def _uvarint(n: int) -> bytes:
    out = b""
    while n >= 0x80:
        out, n = out + bytes([(n & 0x7F) | 0x80]), n >> 7
    return out + bytes([n])


def _v4(offset: int, ts: int, metadata: bytes = b"", tags: bytes = b"\x00") -> bytes:
    return struct.pack(">hqi", 4, offset, 0) + _uvarint(len(metadata) + 1) + metadata + struct.pack(">q", ts) + tags


def test_truncated_and_garbage_records_are_counted_never_raised() -> None:
    good_key, good = _commit_key("g", "t", 0), _v4(5, 1000)
    keys = [good_key] * 4 + [good_key[:-1], b"\x00", b"", b"\xff\xff\x00\x01g", None, good_key + b"x"]
    values = [good, good[:-1], good + b"\x00", b"\x00\x07" + good[2:], good, good, good, good, good, good]
    recs = offsets_log.decode(pa.array(keys, pa.binary()), pa.array(values, pa.binary()),
                              np.arange(len(keys)), np.zeros(len(keys)), "g")
    assert recs.read == 10 and recs.unparsable == 9
    assert recs.commits.num_rows == 1 and recs.commits["offset"].to_pylist() == [5]
    for bad in (good[:-1], good + b"\x00", b"\x00\x07" + good[2:], b"", b"\x00"):
        with pytest.raises(Unparsable):
            offsets_log.decode_offset_commit(bad)
    group_value = bytes.fromhex(BY_NAME["group_v4"]["value_hex"])
    for cut in range(len(group_value)):
        with pytest.raises(Unparsable):
            offsets_log.decode_group_metadata(group_value[:cut])


def test_every_truncation_of_a_commit_value_is_unparsable_in_the_batch_path() -> None:
    values = [bytes.fromhex(v["value_hex"]) for v in VECTORS if v["kafka_key"]["type"] == "1" and v["value_hex"]
              and v["kafka_key"]["data"]["group"] == "vec-group"]
    cuts = [v[:i] for v in values for i in range(len(v))]
    keys = pa.array([_commit_key("g", "t", 0)] * len(cuts), pa.binary())
    recs = offsets_log.decode(keys, pa.array(cuts, pa.binary()), np.arange(len(cuts)), np.zeros(len(cuts)), "g")
    assert recs.unparsable == len(cuts) and recs.commits.num_rows == 0


def test_columnwise_and_fallback_rows_agree_with_the_scalar_decoder() -> None:
    rng = np.random.default_rng(7)
    vals = []
    for i in range(400):
        meta = b"m" * int(rng.integers(0, 300))
        vals.append((_v3 if i % 2 else _v4)(int(rng.integers(0, 2**40)), int(rng.integers(0, 2**41)), meta))
    vals.append(_v4(9, 9, tags=b"\x01\x00\x02ab"))  # a tagged field: the scalar path
    recs = offsets_log.decode(pa.array([_commit_key("g", "t", 1)] * len(vals), pa.binary()),
                              pa.array(vals, pa.binary()), np.arange(len(vals)), np.zeros(len(vals)), "g")
    want = [(c.offset, c.commit_timestamp, c.version) for c in map(offsets_log.decode_offset_commit, vals)]
    got = [(r["offset"], r["commit_ts"], r["version"]) for r in recs.commits.to_pylist()]
    assert got == want and recs.unparsable == 0


def test_coordinator_partition_is_kafkas() -> None:
    # the captured groups' partitions, and Java's String.hashCode edge: "polygenelubricants" hashes to
    # Integer.MIN_VALUE, which Kafka's Utils.abs maps to 0
    for name, part in (("broker_p17_o0", 17), ("broker_p49_o5", 49), ("broker_p2_o0", 2)):
        assert offsets_log.coordinator_partition(BY_NAME[name]["kafka_key"]["data"]["group"], 50) == part
    assert offsets_log.coordinator_partition("polygenelubricants", 50) == 0
    assert offsets_log.coordinator_partition("é-grüppe", 50) == offsets_log.coordinator_partition("é-grüppe", 50)


def _records(rows: list[tuple[str, Any]]) -> offsets_log.GroupRecords:
    """A log built from ("commit", (partition, offset or None, ts)) and ("gen", (generation, members))."""
    keys, values = [], []
    for kind, arg in rows:
        if kind == "commit":
            p, off, ts = arg
            keys.append(_commit_key("g", "t", p))
            values.append(None if off is None else _v4(off, ts))
        else:
            gen, members = arg
            g = b"g"
            keys.append(struct.pack(">hh", 2, 1) + g)
            body = struct.pack(">hh", 3, 8) + b"consumer" + struct.pack(">ihh", gen, -1, -1) + struct.pack(">q", gen * 10)
            body += struct.pack(">i", len(members))
            for m in members:
                mb = m.encode()
                body += struct.pack(">h", len(mb)) + mb + struct.pack(">hh", -1, 1) + b"c" + struct.pack(">h", 1) + b"h"
                body += struct.pack(">iiii", 1, 6000, 0, 0)
            values.append(body)
    n = len(keys)
    return offsets_log.decode(pa.array(keys, pa.binary()), pa.array(values, pa.binary()), np.arange(n),
                              np.arange(n) * 1000, "g")


def test_rewinds_name_partition_offsets_and_time() -> None:
    recs = _records([("commit", (0, 100, 5000)), ("commit", (1, 10, 5001)), ("commit", (0, 40, 6000)),
                     ("commit", (0, 40, 6100)), ("commit", (0, None, 0)), ("commit", (0, 7, 7000))])
    a = group_audit.audit(recs, "t")
    assert a.rewinds == [
        {"partition": 0, "from_offset": 100, "to_offset": 40, "committed_at": "1970-01-01T00:00:06.000Z",
         "events_redelivered": 60, "log_offset": 2},
        {"partition": 0, "from_offset": 40, "to_offset": 7, "committed_at": "1970-01-01T00:00:07.000Z",
         "events_redelivered": 33, "log_offset": 5},
    ]
    assert a.history_coverage == {
        "0": {"first_commit": "1970-01-01T00:00:05.000Z", "last_commit": "1970-01-01T00:00:07.000Z", "commits": 4},
        "1": {"first_commit": "1970-01-01T00:00:05.001Z", "last_commit": "1970-01-01T00:00:05.001Z", "commits": 1}}
    assert group_audit.audit(recs, "other").rewinds == []


def test_rebalances_give_the_range_re_read_after_the_generation_change() -> None:
    recs = _records([("gen", (0, [])), ("gen", (1, ["a"])), ("commit", (0, 30, 1)), ("commit", (1, 50, 1)),
                     ("gen", (2, ["a", "b"])), ("gen", (3, ["b"])), ("commit", (0, 80, 2)), ("commit", (1, 50, 2)),
                     ("commit", (2, 5, 2)), ("gen", (4, []))])
    a = group_audit.audit(recs, "t")
    assert [(r["previous_generation"], r["generation"], r["members"]) for r in a.rebalances] == [
        (1, 2, ["a", "b"]), (2, 3, ["b"]), (3, 4, [])]
    # p0: last commit 30 before generation 2, next commit 80: listed once, under the first change;
    # p1 made no progress; p2 had no commit before: the next owner started at the reset position
    assert a.rebalances[0]["uncommitted"] == [{"partition": 0, "from_offset": 30, "to_offset": 80},
                                              {"partition": 2, "from_offset": None, "to_offset": 5}]
    assert a.rebalances[1]["uncommitted"] == [] and a.rebalances[2]["uncommitted"] == []
    assert a.rebalances[0]["time"] == "1970-01-01T00:00:00.020Z"  # currentStateTimestamp, not the record's
