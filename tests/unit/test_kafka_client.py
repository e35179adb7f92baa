"""What every Kafka command shares (``engine.connectors.kafka.client``), without a broker: the one
grammar of ``--kafka-config`` files, which the scan commands (kafka-audit, explain) and
``recon consume`` all read, and the topic-existence verdict on a metadata answer.

Talking to a real broker (the listing itself, Tansu's auto-creation) is covered by
tests/integration/test_kafka_brokers.py, test_forensics.py, test_consumer.py and test_kafka_native.py.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.connectors.kafka import consumer as c
from engine.connectors.kafka.client import (
    KafkaProperty,
    existing_partitions,
    load_kafka_config,
    missing_topic,
    read_kafka_properties,
)
from engine.core.errors import UsageError

SECRET = "hunter2-s3cr3t"


def _file(tmp_path: Path, text: str | bytes) -> Path:
    f = tmp_path / "client.properties"
    if isinstance(text, bytes):
        f.write_bytes(text)
    else:
        f.write_text(text, encoding="utf-8")
    return f


@pytest.mark.parametrize(("text", "want"), [
    ("", {}),
    ("\n  \n\t\n", {}),
    ("# a comment\n! another\n  # indented\n  ! indented\n", {}),
    ("security.protocol=SASL_SSL\n", {"security.protocol": "SASL_SSL"}),
    ("sasl.mechanism : PLAIN\n", {"sasl.mechanism": "PLAIN"}),
    ("sasl.mechanism:PLAIN\n", {"sasl.mechanism": "PLAIN"}),
    ("  client.id  =  recon  \n", {"client.id": "recon"}),
    ("sasl.password=" + SECRET + "=with=equals\n", {"sasl.password": SECRET + "=with=equals"}),
    ("sasl.password: a:b=c\n", {"sasl.password": "a:b=c"}),
    ("a=b:c\n", {"a": "b:c"}),
    ("a:b=c\n", {"a": "b=c"}),  # the first separator ends the key
    ("ssl.ca.location=\n", {"ssl.ca.location": ""}),
    ("debug=all # not a comment: values are verbatim\n", {"debug": "all # not a comment: values are verbatim"}),
    ("client.id=one\nclient.id=two\n", {"client.id": "two"}),  # the last one wins
    ("sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required "
     'username="u" password="p";\n',
     {"sasl.jaas.config": 'org.apache.kafka.common.security.plain.PlainLoginModule required username="u" password="p";'}),
    ("a=1\r\nb=2\r\n", {"a": "1", "b": "2"}),
    ("client.id=récon\n", {"client.id": "récon"}),
])
def test_grammar_accepts(tmp_path: Path, text: str, want: dict[str, str]) -> None:
    f = _file(tmp_path, text)
    assert load_kafka_config(f) == want
    assert c.parse_kafka_config(f) == want  # the consumer reads the same grammar


@pytest.mark.parametrize(("text", "line"), [
    ("sasl.password\n", 1),
    ("sasl.password " + SECRET + "\n", 1),  # Java's blank separator is not librdkafka's
    ("a=1\n\n" + SECRET + "\n", 3),
    ("=" + SECRET + "\n", 1),
    (": " + SECRET + "\n", 1),
    ("sasl password=" + SECRET + "\n", 1),  # a key has no white space
    ("# ok\n; " + SECRET + "=x\n", 2),  # ";" is no comment mark, and a key has no blank
])
def test_grammar_refuses_naming_the_line_never_the_text(tmp_path: Path, text: str, line: int) -> None:
    f = _file(tmp_path, text)
    for read in (load_kafka_config, c.parse_kafka_config):
        with pytest.raises(UsageError) as exc:
            read(f)
        msg = str(exc.value)
        assert SECRET not in msg and "--kafka-config" in msg
        assert f"line {line}: expected key=value" in msg


def test_line_numbers_and_order(tmp_path: Path) -> None:
    f = _file(tmp_path, "# head\nb=2\n\na: 1\n")
    assert read_kafka_properties(f) == [KafkaProperty(2, "b", "2"), KafkaProperty(4, "a", "1")]


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        load_kafka_config(tmp_path / "nope.properties")
    with pytest.raises(UsageError, match=r"cannot read it \(IsADirectoryError\)"):
        load_kafka_config(tmp_path)
    bad = _file(tmp_path, b"sasl.password=\xff" + SECRET.encode() + b"\n")
    for read in (load_kafka_config, c.parse_kafka_config):
        with pytest.raises(UsageError, match=r"cannot read it \(UnicodeDecodeError\)") as exc:
            read(bad)
        assert SECRET not in str(exc.value)
    assert load_kafka_config(None) == {} and load_kafka_config("") == {}


def test_consumer_refuses_the_properties_it_manages_on_top(tmp_path: Path) -> None:
    f = _file(tmp_path, "client.id=x\n# c\ngroup.id=" + SECRET + "\n")
    assert load_kafka_config(f) == {"client.id": "x", "group.id": SECRET}  # a scan may set it
    with pytest.raises(UsageError, match=r"line 3: property 'group.id' cannot be set here: use --group") as exc:
        c.parse_kafka_config(f)
    assert SECRET not in str(exc.value)


# ---------------------------------------------------------------------------------------------
# the topic-existence verdict


class _Err:
    def str(self) -> str:  # noqa: A003 - KafkaError's own method name
        return "Broker: Topic authorization failed"


def _md(**topics: object) -> SimpleNamespace:
    return SimpleNamespace(topics=topics)


def test_existing_partitions() -> None:
    md = _md(events=SimpleNamespace(partitions={2: None, 0: None, 1: None}, error=None),
             empty=SimpleNamespace(partitions={}, error=None),
             locked=SimpleNamespace(partitions={0: None}, error=_Err()),
             gone=SimpleNamespace(partitions={}, error=_Err()))
    assert existing_partitions(md, "events", "h:9092") == [0, 1, 2]
    want = str(missing_topic("x", "h:9092"))
    assert want == "topic 'x' does not exist on h:9092: check --topic"
    for name in ("x", "empty", "gone"):
        with pytest.raises(UsageError) as exc:
            existing_partitions(md, name, "h:9092")
        assert str(exc.value) == str(missing_topic(name, "h:9092"))
    with pytest.raises(UsageError, match="topic 'locked' on h:9092 is not readable: Broker: Topic authorization"):
        existing_partitions(md, "locked", "h:9092")


@pytest.mark.parametrize("pid", [2**31 - 1, -1, (1 << 20), "0"])
def test_a_hostile_partition_id_in_metadata_is_refused(pid: object) -> None:
    """Issue 17 (native scan): the native loop sizes a table by the largest partition id, so
    max_part + 1 overflowed at INT32_MAX; a broker's answer is checked before anything is sized."""
    md = SimpleNamespace(topics={"t": SimpleNamespace(partitions={0: None, pid: None}, error=None)})
    with pytest.raises(UsageError, match="outside 0..1048575"):
        existing_partitions(md, "t", "b:9092")
