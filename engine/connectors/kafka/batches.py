"""Record-batch headers of a range of offsets: producer id, epoch, base sequence, transactional and
control flags. librdkafka never hands these to an application, so they are fetched with
kafka-python: its network client sends plain ``Fetch`` requests (``read_uncommitted``, so aborted
batches and transaction markers are included; no group, no commit) and its record-batch reader
(``DefaultRecordBatch``) decodes the headers. Record values are never decompressed.

kafka-python's admin client is used for the connection only (bootstrap, metadata, SASL/SSL); the
request goes through its connection manager, which is internal API: the dependency is pinned to
the minor version it was written against (pyproject.toml).

Security settings come from the same ``--kafka-config`` properties as the librdkafka clients,
translated by :data:`PROPERTY_NAMES`; other properties (consumer tuning) do not apply here.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from engine.core.errors import ServiceUnreachable, UsageError
from engine.core.isolation import Batch

#: librdkafka property → kafka-python setting, for the properties that decide whether a connection works
PROPERTY_NAMES = {
    "security.protocol": "security_protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.mechanisms": "sasl_mechanism",
    "sasl.username": "sasl_plain_username",
    "sasl.password": "sasl_plain_password",
    "ssl.ca.location": "ssl_cafile",
    "ssl.certificate.location": "ssl_certfile",
    "ssl.key.location": "ssl_keyfile",
    "ssl.key.password": "ssl_password",
    "client.id": "client_id",
}

# kafka-python logs connection trouble as warnings; without a handler Python would print them on
# stderr, where a recon error is one line (the failure itself is raised as a recon error)
logging.getLogger("kafka").addHandler(logging.NullHandler())

FETCH_MAX_BYTES = 8 << 20
#: the Fetch version asked for at most: the last one that names topics (13+ name them by topic id)
FETCH_MAX_VERSION = 12


def _client_config(bootstrap: str, extra: dict[str, str]) -> dict[str, Any]:
    conf: dict[str, Any] = {"bootstrap_servers": bootstrap, "client_id": "recon-batches",
                            "bootstrap_timeout_ms": 15_000, "request_timeout_ms": 30_000}
    for k, v in extra.items():
        if k in PROPERTY_NAMES:
            conf[PROPERTY_NAMES[k]] = v.upper() if k in ("security.protocol", "sasl.mechanism", "sasl.mechanisms") else v
    return conf


def read_batches(bootstrap: str, topic: str, ranges: dict[int, tuple[int, int]], extra: dict[str, str],
                 deadline_s: float = 60.0) -> list[Batch]:
    """Every batch overlapping ``ranges`` (partition → first, last offset, inclusive)."""
    if not ranges:
        return []
    import kafka.errors as kerr
    from kafka.admin import KafkaAdminClient

    try:
        admin = KafkaAdminClient(**_client_config(bootstrap, extra))
    except kerr.KafkaConfigurationError as exc:
        raise UsageError(f"--kafka-config: kafka-python refused a setting ({exc})") from None
    except kerr.KafkaError as exc:
        raise ServiceUnreachable(f"Kafka at {bootstrap} did not answer the record-batch reader "
                                 f"({type(exc).__name__})") from None
    try:
        leaders = _leaders(admin, topic, bootstrap)
        out: list[Batch] = []
        position = {p: lo for p, (lo, _) in ranges.items()}
        idle_since = time.monotonic()
        while position:
            by_leader: dict[int, list[int]] = {}
            for p in position:
                by_leader.setdefault(leaders[p], []).append(p)
            progressed = False
            for node, ps in sorted(by_leader.items()):
                resp = _fetch(admin, node, topic, {p: position[p] for p in ps})
                for td in resp.responses:
                    for pd in td.partitions:
                        p = pd.partition_index
                        if p not in position:
                            continue
                        if pd.error_code:
                            _raise(pd.error_code, topic, p, bootstrap)
                        last = _decode(p, pd.records, out)
                        if last is not None and last >= position[p]:
                            position[p] = last + 1
                            progressed = True
                        if position[p] > ranges[p][1] or position[p] >= pd.high_watermark:
                            del position[p]
                            progressed = True
            if progressed:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > deadline_s:
                raise ServiceUnreachable(f"Kafka at {bootstrap} returned no record batch for {deadline_s:.0f}s "
                                         f"(partitions {sorted(position)} of {topic!r})")
        return out
    finally:
        admin.close()


def _leaders(admin: Any, topic: str, bootstrap: str) -> dict[int, int]:
    import kafka.errors as kerr

    try:
        (desc,) = admin.describe_topics([topic])
    except kerr.KafkaError as exc:
        raise ServiceUnreachable(f"Kafka at {bootstrap} did not describe {topic!r} ({type(exc).__name__})") from None
    if desc.get("error_code"):
        _raise(desc["error_code"], topic, None, bootstrap)
    return {pp["partition_index"]: pp["leader_id"] for pp in desc["partitions"]}


def _fetch(admin: Any, node: int, topic: str, offsets: dict[int, int]) -> Any:
    import kafka.errors as kerr
    from kafka.protocol.consumer import FetchRequest

    ft = FetchRequest.FetchTopic
    req = FetchRequest(
        max_wait_ms=100, min_bytes=1, max_bytes=FETCH_MAX_BYTES, isolation_level=0, session_id=0, session_epoch=-1,
        topics=[ft(topic=topic, partitions=[ft.FetchPartition(partition=p, fetch_offset=o,
                                                              partition_max_bytes=FETCH_MAX_BYTES)
                                            for p, o in sorted(offsets.items())])],
        forgotten_topics_data=[], rack_id="", max_version=FETCH_MAX_VERSION)

    async def send() -> Any:
        return await admin._manager.send(req, node_id=node)

    try:
        return admin._manager.run(send)
    except kerr.KafkaError as exc:
        raise ServiceUnreachable(f"a Fetch of {topic!r} failed ({type(exc).__name__})") from None


def _decode(partition: int, records: bytes | None, out: list[Batch]) -> int | None:
    """Append the batches' headers to ``out``; the last offset of the last whole batch (None: none)."""
    from kafka.record.memory_records import MemoryRecords

    if not records:
        return None
    mr = MemoryRecords(records)
    last = None
    while (b := mr.next_batch()) is not None:
        if b.magic != 2:  # message formats 0/1 carry no producer id: nothing to report for them
            last = b.last_offset if hasattr(b, "last_offset") else last
            continue
        out.append(Batch(partition=partition, base_offset=b.base_offset, last_offset=b.last_offset,
                         producer_id=b.producer_id, producer_epoch=b.producer_epoch, base_sequence=b.base_sequence,
                         records=b.records_count, transactional=b.is_transactional, control=b.is_control_batch))
        last = b.last_offset
    return last


def _raise(code: int, topic: str, partition: int | None, bootstrap: str) -> None:
    import kafka.errors as kerr

    err = kerr.for_code(code)
    where = f"{topic!r}" + (f" partition {partition}" if partition is not None else "")
    if err in (kerr.TopicAuthorizationFailedError, kerr.ClusterAuthorizationFailedError):
        raise UsageError(f"Kafka at {bootstrap} denied reading {where}: {err.__name__} (check --kafka-config and ACLs)")
    if err is kerr.UnknownTopicOrPartitionError:
        raise UsageError(f"topic {topic!r} does not exist on {bootstrap}: check --topic")
    raise ServiceUnreachable(f"Kafka at {bootstrap} answered a Fetch of {where} with {err.__name__}")
