"""Kafka credentials never live in recon.toml: every librdkafka property that holds one is refused in
`[kafka]` (however TOML spells the key) with a pointer to `--kafka-config FILE`; the rest pass."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from engine.config import is_secret_kafka_property, load
from engine.core.errors import UsageError

SECRET = [
    "sasl.password", "ssl.key.password", "ssl.keystore.password", "ssl.key.pem", "ssl_key",
    "sasl.oauthbearer.client.secret", "sasl.oauthbearer.client.credentials.client.secret",
    "sasl.oauthbearer.assertion.private.key.passphrase", "sasl.oauthbearer.assertion.private.key.pem",
    "sasl.oauthbearer.config", "sasl.jaas.config", "SASL.Password", "some.future.password",
    "some.future.secret", "some.access.token", "truststore.passwd",
]
PLAIN = [
    "security.protocol", "sasl.mechanism", "sasl.username", "ssl.ca.location", "ssl.ca.pem",
    "ssl.certificate.pem", "ssl.key.location", "ssl.keystore.location", "sasl.oauthbearer.client.id",
    "sasl.oauthbearer.token.endpoint.url", "sasl.oauthbearer.assertion.private.key.file",
    "sasl.kerberos.keytab", "client.id", "group.instance.id",
]


@pytest.mark.parametrize("name", SECRET)
def test_secret_properties_are_recognised(name: str) -> None:
    assert is_secret_kafka_property(name)


@pytest.mark.parametrize("name", PLAIN)
def test_plain_properties_pass(name: str) -> None:
    assert not is_secret_kafka_property(name)


@pytest.mark.parametrize("line", [
    '"sasl.password" = "hunter2-kafka"',
    'sasl.password = "hunter2-kafka"',  # a TOML dotted key: the nested table {sasl = {password = ...}}
    '"ssl.key.pem" = "-----BEGIN PRIVATE KEY----- hunter2-kafka"',
    'ssl_key = "hunter2-kafka"',
    '"sasl.oauthbearer.client.secret" = "hunter2-kafka"',
    '"ssl.keystore.password" = "hunter2-kafka"',
])
def test_config_refuses_kafka_credentials(tmp_path: Path, line: str) -> None:
    cfg = tmp_path / "recon.toml"
    cfg.write_text(f'[kafka]\nbootstrap = "localhost:9092"\ntopic = "t"\n{line}\n')
    with pytest.raises(UsageError) as err:
        load(cfg)
    msg = str(err.value)
    assert "--kafka-config FILE" in msg and "[kafka]" in msg and "\n" not in msg
    assert "hunter2" not in msg
    assert err.value.exit_code == 2


def test_config_keeps_plain_kafka_properties(tmp_path: Path) -> None:
    cfg = tmp_path / "recon.toml"
    cfg.write_text('[kafka]\nbootstrap = "localhost:9092"\ntopic = "t"\n"security.protocol" = "sasl_ssl"\n'
                   '"sasl.username" = "alice"\n"sasl.oauthbearer.token.endpoint.url" = "https://idp/token"\n')
    assert load(cfg).section("kafka")["sasl.username"] == "alice"


def test_consumer_settings_never_show_the_properties_file() -> None:
    from engine.connectors.kafka.consumer import ConsumerSettings, parse_table

    s = ConsumerSettings(bootstrap="b:9092", topic="t", group="g", dsn="postgresql://u@h/db",
                         table=parse_table("public.events"), kafka_config={"sasl.password": "hunter2-kafka"})
    assert "hunter2" not in repr(s) and "hunter2" not in repr(replace(s, group="g2"))
