"""`recon consume` without services: option parsing and validation, and the message transformation.

The transformation is what decides an event's id, its stored row and its lineage, or why it is
dead-lettered; these tests pin each guard and the COPY/JSON encoding on hand-made Kafka messages.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message

from engine.connectors.kafka import consumer as c
from engine.core.errors import UsageError
from engine.core.ids import event_id, event_ids

ORG = "00D5g0000000001EAA"
OTHER_ORG = "00D5g0000000002EAA"
ACC = "0015g000000001xAAA"
GOOD = {"org_id": ORG, "account_id": ACC, "event_type": "purchase", "event_ts": "2026-08-01T10:00:00.123Z",
        "amount": "1071.02"}
HEADERS = [("org-id", ORG.encode()), ("producer-id", b"1001"), ("sequence", b"7")]


def msg(value: object = None, *, partition: int = 0, offset: int = 0, key: bytes | None = b"k",
        headers: list[tuple[str, bytes | None]] | None = None, raw: bytes | None = None,
        ts: tuple[int, int] = (1, 1_785_578_400_123)) -> Message:
    """A Kafka message as the consumer sees it; ``value`` is JSON-encoded unless ``raw`` is given."""
    body = raw if raw is not None else (None if value is None else json.dumps(value).encode())
    return Message(topic="t", partition=partition, offset=offset, key=key, value=body,
                   headers=HEADERS if headers is None else headers, timestamp=ts, error=None)


def eof(partition: int, offset: int) -> Message:
    return Message(topic="t", partition=partition, offset=offset, error=KafkaError(KafkaError._PARTITION_EOF))


def run(*messages: Message, guard: str | None = ORG, fields: c.FieldNames | None = None,
        positions: dict[int, int | None] | None = None) -> c.Batch:
    return c.transform(list(messages), fields or c.FieldNames(), guard, positions)


def unescape_copy(field: str) -> str:
    """Undo COPY text-format escaping of one field."""
    return re.sub(r"\\(.)", lambda m: {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}[m.group(1)], field)


def row_fields(batch: c.Batch, i: int = 0) -> list[str]:
    """The COPY fields of row i: event_id, org_id, record_id, event_type, event_ts, amount, lineage."""
    line = batch.ids[i] + batch.rows[i]
    assert line.endswith("\n") and line.count("\n") == 1
    return [unescape_copy(f) for f in line[:-1].split("\t")]


def reasons(batch: c.Batch) -> list[str]:
    return [d.reason for d in batch.dead]


# ---------------------------------------------------------------------------------------------
# options


def test_parse_table() -> None:
    assert c.parse_table("warehouse.clv_events") == c.TableRef("warehouse", "clv_events")
    assert c.parse_table(" events ") == c.TableRef("public", "events")
    assert c.parse_table("Mixed.Case").display == "Mixed.Case"
    for bad in ("", ".", "a.", ".b", "a.b.c", 'a."b"', "x." + "n" * 51):
        with pytest.raises(UsageError):
            c.parse_table(bad)
    assert c.parse_table("x." + "n" * 50).name == "n" * 50  # + "_dead_letters" = 63 bytes


def test_normalize_org_id() -> None:
    assert c.normalize_org_id(None) is None
    assert c.normalize_org_id("  ") is None
    assert c.normalize_org_id(ORG) == ORG
    assert c.normalize_org_id(ORG[:15]) == ORG
    with pytest.raises(UsageError, match="not a Salesforce organization id"):
        c.normalize_org_id("00Dxyz")
    with pytest.raises(UsageError, match="start with 00D"):
        c.normalize_org_id(ACC)


def test_parse_kafka_config(tmp_path: Path) -> None:
    f = tmp_path / "client.properties"
    f.write_text("# SASL\n! also a comment\n\nsecurity.protocol=SASL_SSL\nsasl.mechanism : PLAIN\n"
                 "sasl.password=s3cr3t=with=equals\n")
    assert c.parse_kafka_config(f) == {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
                                       "sasl.password": "s3cr3t=with=equals"}


@pytest.mark.parametrize(("text", "match"), [
    ("enable.auto.commit=true\n", "enable.auto.commit"),
    ("group.id=hush-hush\n", "--group"),
    ("bootstrap.servers=elsewhere:9092\n", "--bootstrap"),
    ("sasl.password\n", "line 1: expected key=value"),
])
def test_parse_kafka_config_refuses_without_echoing_values(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "client.properties"
    f.write_text(text)
    with pytest.raises(UsageError, match=match) as exc:
        c.parse_kafka_config(f)
    assert "hush-hush" not in str(exc.value) and "elsewhere" not in str(exc.value)


def test_parse_kafka_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        c.parse_kafka_config(tmp_path / "nope.properties")


def settings(**kw: object) -> c.ConsumerSettings:
    base: dict[str, object] = dict(bootstrap="127.0.0.1:9092", topic="clv-events", group="g",
                                   dsn="postgresql://recon@127.0.0.1:5432/recon", table=c.parse_table("w.e"))
    base.update(kw)
    return c.ConsumerSettings(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kw", "match", "field"), [
    ({"topic": "bad topic"}, "not a valid Kafka topic name", None),
    ({"topic": ""}, "not a valid Kafka topic name", None),
    ({"group": " "}, "consumer group name is empty", "group"),
    ({"bootstrap": ""}, "bootstrap address is empty", "bootstrap"),
    ({"batch_size": 0}, "batch size 0", "batch_size"),
    ({"deadline_s": 0}, "deadline 0", "deadline_s"),
    ({"metrics_interval_s": -1}, "metrics interval -1", "metrics_interval_s"),
    ({"api_version": "latest"}, "'latest' is not a Salesforce API version", "api_version"),
    ({"dsn": "postgresql://u:pw-in-uri@h/db?bogus_option=1"}, "DSN is not a valid", "dsn"),
    ({"dsn": "postgresql://u:pw-in-uri@[::1"}, "DSN is not a valid", "dsn"),
    ({"dsn": "postgresql://u:pw-in-uri@h:notaport/db"}, "port 'notaport' is not a number", "dsn"),
])
def test_settings_validation(kw: dict[str, object], match: str, field: str | None) -> None:
    """The messages are about the data (the consumer is also called without the CLI); the error
    names the setting, and `recon consume` adds its option (tests/e2e/test_errors_cli.py)."""
    with pytest.raises(UsageError, match=match) as exc:
        settings(**kw)
    assert "pw-in-uri" not in str(exc.value)
    assert " --" not in str(exc.value)
    if field is not None:
        assert exc.value.field == field


def test_dsn_display_never_shows_the_password() -> None:
    s = settings(dsn="postgresql://recon:topsecret@db.example:6543/warehouse")
    assert s.dsn_display == "db.example:6543/warehouse"


def test_field_names_must_be_distinct_and_non_empty() -> None:
    with pytest.raises(UsageError, match="distinct"):
        c.FieldNames(record_id="id", event_type="id")
    with pytest.raises(UsageError, match="empty"):
        c.FieldNames(amount="")


def test_consumer_config_keeps_offsets_out_of_kafka() -> None:
    conf = c.consumer_config(settings(kafka_config={"security.protocol": "SSL", "session.timeout.ms": "10000"},
                                      instance_id="worker-1"))
    assert conf["enable.auto.commit"] is False and conf["enable.auto.offset.store"] is False
    assert conf["enable.partition.eof"] is True and conf["auto.offset.reset"] == "earliest"
    assert conf["group.id"] == "g" and conf["bootstrap.servers"] == "127.0.0.1:9092"
    assert conf["group.protocol"] == "classic" and conf["heartbeat.interval.ms"] == 1000
    assert conf["group.instance.id"] == "worker-1"
    assert conf["security.protocol"] == "SSL" and conf["session.timeout.ms"] == "10000"  # user may tune
    assert "group.instance.id" not in c.consumer_config(settings())


# ---------------------------------------------------------------------------------------------
# transform: valid events


def test_valid_event_row_id_and_lineage() -> None:
    b = run(msg(GOOD, partition=2, offset=41, key=f"{ORG}:{ACC}".encode()))
    assert not b.dead and len(b.ids) == 1
    assert b.ids[0] == event_id(ORG, ACC, "purchase", "2026-08-01T10:00:00.123Z")
    eid, org, rec, typ, ts, amount, lineage = row_fields(b)
    assert (eid, org, rec, typ, ts, amount) == (b.ids[0], ORG, ACC, "purchase", "2026-08-01T10:00:00.123Z", "1071.02")
    lin = json.loads(lineage)
    assert lin == {"topic": "t", "partition": 2, "offset": 41, "timestamp": 1_785_578_400_123,
                   "timestamp_type": "CreateTime", "key": f"{ORG}:{ACC}",
                   "headers": {"org-id": ORG, "producer-id": "1001", "sequence": "7"},
                   "api_version": "59.0", "transform_digest": c.transform_digest(), "event_id_layout": 1}
    assert (b.consumed, b.start, b.next_offset, b.eof) == ({2: 1}, {2: None}, {2: 42}, {2: False})
    assert (b.row_records, b.row_amounts, b.row_times) == ([ACC], ["1071.02"], ["2026-08-01T10:00:00.123Z"])


def test_ids_and_times_are_canonicalised() -> None:
    ev = dict(GOOD, org_id=ORG[:15], account_id=ACC[:15], event_ts="2026-08-01T12:00:00.123999+02:00")
    b = run(msg(ev))
    assert row_fields(b)[1:5] == [ORG, ACC, "purchase", "2026-08-01T10:00:00.123Z"]
    assert b.ids[0] == event_id(ORG, ACC, "purchase", "2026-08-01T10:00:00.123Z")


@pytest.mark.parametrize(("amount", "stored"), [("12.50", "12.50"), ("-3", "-3"), (12, "12"), (12.5, "12.5"),
                                                 ("+0.01", "+0.01")])
def test_amounts_stay_exact_decimals(amount: object, stored: str) -> None:
    b = run(msg(dict(GOOD, amount=amount)))
    assert not b.dead and row_fields(b)[5] == stored


def test_optional_lineage_parts() -> None:
    """No key, a binary key, no timestamp, extra and binary headers: all recorded, nothing lost."""
    b = run(msg(GOOD, key=None, headers=[], ts=(0, -1)),
            msg(GOOD | {"event_type": "refund"}, offset=1, key=b"\xff\x00k",
                headers=[*HEADERS, ("trace", b"abc"), ("blob", b"\x00\x01")]))
    first, second = (json.loads(row_fields(b, i)[6]) for i in (0, 1))
    assert "key" not in first and "timestamp" not in first and first["timestamp_type"] == "NotAvailable"
    assert first["headers"] == {}
    assert second["key_base64"] == "/wBr" and "key" not in second
    assert second["headers"] == {"org-id": ORG, "producer-id": "1001", "sequence": "7", "trace": "abc",
                                 "blob": {"base64": "AAE="}}


def test_copy_and_json_escaping_round_trip() -> None:
    typ = 'odd\ttype "with"\\ newline\n'
    key = 'k"\\\t\u00e9'.encode()
    b = run(msg(dict(GOOD, event_type=typ), key=key, headers=[("org-id", ORG.encode()), ("sequence", b"x\ty")]))
    fields = row_fields(b)
    assert len(fields) == 7
    assert fields[3] == typ
    lin = json.loads(fields[6])
    assert lin["key"] == key.decode() and lin["headers"]["sequence"] == "x\ty"
    assert b.ids[0] == event_id(ORG, ACC, typ, GOOD["event_ts"])


def test_custom_field_names() -> None:
    ev = {"org": ORG, "id": ACC, "kind": "purchase", "at": "2026-08-01T10:00:00.123Z", "value": "5.00"}
    fields = c.FieldNames(record_id="id", event_type="kind", event_time="at", amount="value", org_id="org")
    b = run(msg(ev), fields=fields)
    assert not b.dead and row_fields(b)[1:6] == [ORG, ACC, "purchase", "2026-08-01T10:00:00.123Z", "5.00"]
    b = run(msg(GOOD), fields=fields)
    assert reasons(b) == ["missing_field"] and "id" in b.dead[0].detail


def test_without_guard_any_org_is_accepted() -> None:
    b = run(msg(dict(GOOD, org_id=OTHER_ORG)), guard=None)
    assert not b.dead and row_fields(b)[1] == OTHER_ORG


# ---------------------------------------------------------------------------------------------
# transform: dead letters


@pytest.mark.parametrize(("message", "reason", "detail"), [
    (msg(raw=b"{not json"), "unparsable", "not JSON"),
    (msg(raw=b'{"a": 1} trailing'), "unparsable", "not JSON"),
    (msg(raw=b"[1, 2]"), "unparsable", "list, not an object"),
    (msg(raw=b"\xff\xfe"), "unparsable", "not JSON"),
    (msg(raw=b'{"amount": NaN}'), "unparsable", "not JSON"),
    (msg(None), "unparsable", "tombstone"),
    (msg({k: v for k, v in GOOD.items() if k != "amount"}), "missing_field", "amount"),
    (msg(dict(GOOD, event_ts=None)), "missing_field", "event_ts"),
    (msg(dict(GOOD, org_id=OTHER_ORG)), "foreign_org", OTHER_ORG),
    (msg(GOOD, headers=[("org-id", OTHER_ORG.encode())]), "foreign_org", "header org-id"),
    (msg(dict(GOOD, org_id="00Dxyz")), "invalid_org_id", "00Dxyz"),
    (msg(dict(GOOD, account_id="001XYZ")), "invalid_record_id", "001XYZ"),
    (msg(dict(GOOD, account_id=["x"])), "invalid_record_id", "['x']"),
    (msg(dict(GOOD, account_id=ACC[:15] + "ZZZ")), "invalid_record_id", "not a Salesforce id"),
    (msg(dict(GOOD, event_type="")), "invalid_event_type", "event_type"),
    (msg(dict(GOOD, event_type="a\x00b")), "invalid_event_type", "event_type"),
    (msg(raw=json.dumps(GOOD).replace('"purchase"', '"\\ud800"').encode()), "invalid_event_type", "event_type"),
    (msg(dict(GOOD, event_type=7)), "invalid_event_type", "event_type"),
    (msg(dict(GOOD, event_ts="yesterday")), "invalid_event_time", "yesterday"),
    (msg(dict(GOOD, event_ts="\uff12\uff10\uff12\uff16-08-01T10:00:00.000Z")), "invalid_event_time", "event_ts"),
    (msg(dict(GOOD, event_ts=1785578400)), "invalid_event_time", "event_ts"),
    (msg(dict(GOOD, amount="12,50")), "invalid_amount", "12,50"),
    (msg(dict(GOOD, amount="1e5")), "invalid_amount", "1e5"),
    (msg(dict(GOOD, amount="\u0661\u0662")), "invalid_amount", "amount"),
    (msg(dict(GOOD, amount=True)), "invalid_amount", "True"),
    (msg(raw=json.dumps(GOOD).replace('"1071.02"', "1e400").encode()), "invalid_amount", "1e400"),
])
def test_dead_letter_reasons(message: Message, reason: str, detail: str) -> None:
    b = run(message)
    assert not b.ids and reasons(b) == [reason]
    assert detail in b.dead[0].detail
    assert b.consumed == {0: 1} and b.next_offset == {0: 1}  # a dead letter is still accounted for


def test_dead_letter_keeps_raw_bytes_and_headers() -> None:
    raw = b"\x00\xffnot json"
    b = run(msg(raw=raw, partition=1, offset=9, key=b"\xfe", headers=[("org-id", ORG.encode()), ("bin", b"\xff")]))
    (d,) = b.dead
    assert (d.partition, d.offset, d.key, d.value, d.ts_ms, d.ts_type) == (1, 9, b"\xfe", raw, 1_785_578_400_123,
                                                                           "CreateTime")
    assert json.loads(d.headers_json) == [{"key": "org-id", "value": ORG}, {"key": "bin", "value_base64": "/w=="}]


def test_every_message_is_a_row_or_a_dead_letter() -> None:
    ms = [msg(GOOD, offset=0), msg(raw=b"x", offset=1), msg(GOOD, offset=2), msg(dict(GOOD, amount="?"), offset=3),
          msg(GOOD, partition=1, offset=5)]
    b = run(*ms)
    assert len(b.ids) == 3 and len(b.dead) == 2
    assert b.consumed == {0: 4, 1: 1} and b.next_offset == {0: 4, 1: 6}
    assert b.ids[0] == b.ids[1] == b.ids[2]  # three deliveries of one event: duplicates are the writer's call


# ---------------------------------------------------------------------------------------------
# transform: positions, EOF, errors


def test_eof_and_positions() -> None:
    b = run(msg(GOOD, offset=10), eof(0, 11), msg(GOOD, partition=1, offset=3), eof(2, 0),
            positions={0: 10, 1: 3})
    assert b.eof == {0: True, 1: False, 2: True}
    assert b.start == {0: 10, 1: 3} and b.next_offset == {0: 11, 1: 4}


def test_messages_below_the_position_or_repeated_are_dropped() -> None:
    """Prefetched messages from before a rebalance next to the re-fetched ones: each offset once."""
    b = run(msg(GOOD, offset=4), msg(GOOD, offset=5), msg(GOOD, offset=6), msg(GOOD, offset=5), msg(GOOD, offset=7),
            positions={0: 5})
    assert b.consumed == {0: 3} and b.start == {0: 5} and b.next_offset == {0: 8}
    assert [m.offset() for m in b.row_msgs] == [5, 6, 7]


def test_other_errors_are_handed_to_the_caller() -> None:
    err = Message(topic="t", partition=0, offset=0, error=KafkaError(KafkaError._TRANSPORT))
    b = run(err)
    assert [e.code() for e in b.errors] == [KafkaError._TRANSPORT] and not b.consumed


def test_only_keeps_the_selected_partitions() -> None:
    b = run(msg(GOOD, offset=0), msg(raw=b"x", partition=1, offset=0), msg(GOOD, partition=2, offset=0),
            eof(1, 1))
    kept = b.only(lambda p: p != 1)
    assert kept.partitions == [0, 2] and not kept.dead and len(kept.ids) == 2 and kept.eof == b.eof


def test_transform_digest_is_stable() -> None:
    d = c.transform_digest()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", d) and d == c.transform_digest()


_DIGEST_EDITS = """
import json, linecache, sys
from pathlib import Path
from engine.connectors.kafka.consumer import transformation as t

print(t.transform_digest())  # the copy as started: with the unlisted file edited
for rel, anchor in json.loads(sys.argv[1]):
    p = Path("engine") / rel
    data = p.read_bytes()
    assert data.count(anchor.encode()) == 1, (rel, anchor)
    at = data.index(anchor.encode()) + len(anchor)
    p.write_bytes(data[:at] + chr(data[at]).swapcase().encode() + data[at + 1:])  # one letter's case
    linecache.clearcache()
    t.transform_digest.cache_clear()
    print(t.transform_digest())
    p.write_bytes(data)
"""


def test_the_transform_digest_follows_the_bytes_of_the_code_it_names(tmp_path: Path) -> None:
    """Not the product's function against itself: on a copy of the package, a file the digest does
    not name (errors.py, a new module) leaves it as it is, in a process started from that copy; and
    one changed byte in each module the lineage names (the event id, the Salesforce ids, the event
    definition) and in the source of transform() changes the digest that every stored row carries.
    (Those edits are made in the running copy, the digest recomputed: a digest that missed them
    could only make this fail, never pass.)"""
    import shutil
    import subprocess
    import sys

    tree = tmp_path / "pkg"
    shutil.copytree(Path(__file__).resolve().parents[2] / "engine", tree / "engine",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    errors = tree / "engine" / "core" / "errors.py"
    errors.write_text(errors.read_text().replace('"""User-facing', '"""user-facing', 1))
    (tree / "engine" / "core" / "unlisted_helper.py").write_text("# not transformation code\n")
    listed = [("core/ids.py", '"""Deterministic event '), ("core/sfid.py", '"""Salesforce record '),
              ("core/events.py", '"""What a scan of an '),
              ("connectors/kafka/consumer/transformation.py", '"""Turn consumed ')]  # transform()'s docstring
    run = subprocess.run([sys.executable, "-c", _DIGEST_EDITS, json.dumps(listed)], cwd=tree, text=True,
                         capture_output=True, env={**os.environ, "PYTHONPATH": str(tree)}, timeout=120)
    assert run.returncode == 0, run.stderr
    unlisted, *edited = run.stdout.split()
    assert unlisted == c.transform_digest()  # the package's own digest: errors.py and a new file are not in it
    assert len(edited) == len(listed)
    for (rel, _), digest in zip(listed, edited, strict=True):
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest) and digest != unlisted, rel


def test_api_version_is_recorded() -> None:
    b = c.transform([msg(GOOD)], c.FieldNames(), ORG, None, "v61.0")
    assert json.loads(row_fields(b)[6])["api_version"] == "61.0"


def test_row_is_a_one_message_batch() -> None:
    b = run(msg(GOOD, offset=3), msg(dict(GOOD, event_type="refund"), partition=1, offset=8), positions={0: 3})
    b.epoch = {0: 2, 1: 5}
    one = b.row(1)
    assert (one.ids, one.rows, one.row_parts) == ([b.ids[1]], [b.rows[1]], [1])
    assert (one.row_records, one.row_amounts, one.row_times) == ([ACC], ["1071.02"], ["2026-08-01T10:00:00.123Z"])
    assert (one.consumed, one.next_offset, one.epoch) == ({1: 1}, {1: 9}, {1: 5})


def test_extra_headers_with_escapes_round_trip() -> None:
    hdrs = [("org-id", ORG.encode()), ("note", b'a\\b "c"\td'), ("producer-id", b'p\\1')]
    b = run(msg(GOOD, headers=hdrs))
    assert json.loads(row_fields(b)[6])["headers"] == {"org-id": ORG, "note": 'a\\b "c"\td', "producer-id": "p\\1"}
    b = run(msg(GOOD, headers=[("org-id", b'00D\\"x')]))  # not an org id: the guard cannot judge it
    assert not b.dead and json.loads(row_fields(b)[6])["headers"] == {"org-id": '00D\\"x'}


# ---------------------------------------------------------------------------------------------
# transform: the column-wise path writes exactly what the per-message path writes


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


FOREIGN = "foreign"  # a verdict: foreign_org under the org guard, a row without one


def _path_table() -> list[tuple[bytes | None, dict[str, Any], str]]:
    """Messages in producer shape and every way of missing it by a little, each with its verdict
    read from the README's definition of a valid event: "row", FOREIGN, or the dead-letter reason."""
    acc18 = "0015g0000000Az6AAE"
    bad_checksum = ACC[:15] + "ABA"  # right shape, wrong case-safe suffix
    spaced = json.dumps(GOOD).encode()
    return [
        (_compact(GOOD), {}, "row"),
        (spaced, {}, "row"),
        (b" \n" + _compact(GOOD) + b"\t", {}, "row"),  # JSON whitespace around the object
        (_compact(dict(GOOD, account_id=acc18, event_type="refund", amount="-3")), {"key": f"{ORG}:{acc18}".encode()},
         "row"),
        (_compact(GOOD), {"key": None}, "row"),
        (_compact(GOOD), {"key": b'k"q'}, "row"),
        (_compact(GOOD), {"key": b"\xff"}, "row"),
        (_compact(GOOD), {"ts": (2, 1_785_578_400_999)}, "row"),
        (_compact(GOOD), {"ts": (0, -1)}, "row"),
        (_compact(GOOD), {"headers": []}, "row"),
        (_compact(GOOD), {"headers": [HEADERS[1], HEADERS[0], HEADERS[2]]}, "row"),
        (_compact(GOOD), {"headers": [*HEADERS, ("trace", b"t")]}, "row"),
        (_compact(GOOD), {"headers": [("org-id", ORG[:15].encode()), HEADERS[1], HEADERS[2]]}, "row"),  # same org
        (_compact(GOOD), {"headers": [("org-id", OTHER_ORG.encode()), HEADERS[1], HEADERS[2]]}, FOREIGN),
        (_compact(GOOD), {"headers": [HEADERS[0], ("producer-id", None), HEADERS[2]]}, "row"),
        (_compact(GOOD), {"headers": [HEADERS[0], ("producer-id", "é".encode()), HEADERS[2]]}, "row"),
        (_compact(GOOD), {"headers": [HEADERS[0], HEADERS[1], ("sequence", b"1\t2")]}, "row"),
        (_compact(dict(GOOD, org_id=ORG[:15])), {}, "row"),  # 15-character ids are ids
        (_compact(dict(GOOD, account_id=ACC[:15])), {}, "row"),
        (_compact(dict(GOOD, account_id=bad_checksum)), {}, "invalid_record_id"),
        (_compact(dict(GOOD, org_id=OTHER_ORG)), {}, FOREIGN),
        (_compact(dict(GOOD, event_ts="2026-08-01T10:00:00Z")), {}, "row"),  # ISO-8601 without milliseconds
        (_compact(dict(GOOD, event_type="pur\\chase")), {}, "row"),
        (_compact(dict(GOOD, event_type="pur\u00e9")), {}, "row"),
        (_compact(dict(GOOD, event_type="x" * 256)), {}, "invalid_event_type"),  # 1–255 characters
        (_compact(dict(GOOD, amount=12)), {}, "row"),  # an unquoted number is its text
        (_compact(dict(GOOD, amount="1e5")), {}, "invalid_amount"),  # no exponent
        (_compact({"account_id": ACC, **GOOD}), {}, "row"),
        (_compact(dict(GOOD, extra=1)), {}, "row"),
        (_compact(GOOD)[:-1] + b',"org_id":"' + OTHER_ORG.encode() + b'"}', {}, "unparsable"),  # a key twice
        (b"{not json", {}, "unparsable"),
        (None, {}, "unparsable"),  # a tombstone
    ]


def _where(i: int) -> tuple[int, int]:
    return i % 3, 100 + i // 3


def _path_cases() -> list[Message]:
    return [msg(raw=raw, partition=_where(i)[0], offset=_where(i)[1], **kw) if raw is not None
            else msg(None, partition=_where(i)[0], offset=_where(i)[1], **kw)
            for i, (raw, kw, _) in enumerate(_path_table())]


def _snapshot(b: c.Batch) -> tuple[Any, ...]:
    return (b.frame.rows(), [m.offset() for m in b.row_msgs], [vars(d) for d in b.dead], b.consumed, b.start,
            b.next_offset, b.eof)


@pytest.mark.parametrize("guard", [ORG, None])
def test_both_paths_give_the_same_batch(guard: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    ms = _path_cases()
    fast = run(*ms, guard=guard, positions={0: 100})
    # the flag is read from the module that defines transform(): patch it there (consumer.transform
    # is the function, re-exported)
    monkeypatch.setattr(importlib.import_module("engine.connectors.kafka.consumer.transformation"), "_FAST_PATH", False)
    slow = run(*ms, guard=guard, positions={0: 100})
    assert _snapshot(fast) == _snapshot(slow)
    # and the batch both give is the one the table's verdicts say: exactly these rows and dead letters
    verdicts = [("foreign_org" if guard else "row") if v == FOREIGN else v for _, _, v in _path_table()]
    assert sorted((m.partition(), m.offset()) for m in fast.row_msgs) == \
        sorted(_where(i) for i, v in enumerate(verdicts) if v == "row")
    assert sorted((d.partition, d.offset, d.reason) for d in fast.dead) == \
        sorted((*_where(i), v) for i, v in enumerate(verdicts) if v != "row")
    rows = [row_fields(fast, i) for i in range(len(fast.ids))]
    assert len(rows) == verdicts.count("row") and fast.ids == event_ids(*([r[k] for r in rows] for k in (1, 2, 3, 4)))


def test_producer_shaped_messages_take_the_column_wise_path() -> None:
    kept = _path_cases()[:5]
    frame, slow = c._fast_rows(kept, [m.partition() for m in kept], [m.offset() for m in kept], c.FieldNames(), ORG,
                               '"59.0"', c.transform_digest())
    assert slow == [] and frame.height == 5
    frame, slow = c._fast_rows(kept, [m.partition() for m in kept], [m.offset() for m in kept],
                               c.FieldNames(org_id="org-id"), ORG, '"59.0"', c.transform_digest())
    assert slow == [0, 1, 2, 3, 4] and frame.height == 0  # a field name that is not an identifier


def test_runtime_tuning_is_restored_by_the_last_run_out() -> None:
    import gc
    import sys

    before = (sys.getswitchinterval(), gc.get_threshold())
    with c._runtime_tuning():
        tuned = (sys.getswitchinterval(), gc.get_threshold())
        # exactly the tuned values: a shorter switch interval, a larger first GC threshold, never the reverse
        assert tuned == (min(before[0], c._SWITCH_INTERVAL_S),
                         (max(before[1][0], c._GC_GEN0_THRESHOLD), *before[1][1:]))
        with c._runtime_tuning():  # a second run in the same process
            pass
        assert (sys.getswitchinterval(), gc.get_threshold()) == tuned  # still tuned for the first one
    assert (sys.getswitchinterval(), gc.get_threshold()) == before
