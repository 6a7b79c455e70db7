"""Kafka security settings: checked together at load with errors naming the variables, and
turned by steplog.kafka into the same aiokafka options for every client."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import faust
import pytest
from pydantic import SecretStr

from steplog import kafka
from steplog.errors import SettingsError
from steplog.kafka import KafkaAccess, KafkaSecurity
from steplog.processors.app import faust_credentials
from steplog.producers.run_end_lookup import clickhouse_http_endpoint
from steplog.settings import child_environment, load_settings

SCRAM = {
    "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_mechanism": "SCRAM-SHA-512",
    "kafka_sasl_username": "shop",
    "kafka_sasl_password": "s3cret",
}


def test_plaintext_is_the_default_and_adds_no_options() -> None:
    access = kafka.access(load_settings())

    assert access.security.client_options() == {"security_protocol": "PLAINTEXT"}


def test_sasl_ssl_with_scram_gives_every_client_the_mechanism_the_user_and_a_tls_context() -> None:
    access = kafka.access(load_settings(**SCRAM))

    options = access.security.client_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("shop", "s3cret")
    assert isinstance(options["ssl_context"], ssl.SSLContext)

    async def made() -> tuple[str, str]:
        producer = kafka.producer(access)
        return producer.client._security_protocol, producer.client._sasl_mechanism

    assert asyncio.run(made()) == ("SASL_SSL", "SCRAM-SHA-512")


def test_the_password_never_shows_in_a_repr_or_a_message() -> None:
    access = kafka.access(load_settings(**SCRAM))

    assert "s3cret" not in repr(access) and "s3cret" not in str(access)
    assert "s3cret" not in repr(load_settings(**SCRAM))


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"kafka_security_protocol": "SASL_PLAINTEXT"},
         "STEPLOG_KAFKA_SASL_MECHANISM, STEPLOG_KAFKA_SASL_USERNAME, STEPLOG_KAFKA_SASL_PASSWORD"),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN",
          "kafka_sasl_password": "x"}, "STEPLOG_KAFKA_SASL_USERNAME"),
        ({"kafka_sasl_mechanism": "SCRAM-SHA-256", "kafka_sasl_username": "u"},
         "STEPLOG_KAFKA_SASL_MECHANISM, STEPLOG_KAFKA_SASL_USERNAME"),
        ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "PLAIN",
          "kafka_sasl_username": "u", "kafka_sasl_password": "p",
          "kafka_ssl_cafile": __file__}, "STEPLOG_KAFKA_SSL_CAFILE"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_certfile": __file__},
         "STEPLOG_KAFKA_SSL_KEYFILE"),
    ],
)
def test_an_incomplete_or_contradictory_combination_names_the_variables(
    given: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(**given)
    message = str(refused.value)
    assert "STEPLOG_KAFKA_SECURITY_PROTOCOL" in message and named in message, message


def test_an_unknown_mechanism_and_a_missing_certificate_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(kafka_security_protocol="SSL", kafka_sasl_mechanism="GSSAPI",
                      kafka_ssl_cafile=str(tmp_path / "nope.pem"))
    message = str(refused.value)
    assert "STEPLOG_KAFKA_SASL_MECHANISM='GSSAPI'" in message, message
    assert f"STEPLOG_KAFKA_SSL_CAFILE='{tmp_path / 'nope.pem'}'" in message, message


def test_a_child_process_gets_the_security_settings_and_the_real_password() -> None:
    environment = child_environment(load_settings(**SCRAM))

    assert environment["STEPLOG_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert environment["STEPLOG_KAFKA_SASL_PASSWORD"] == "s3cret"
    assert "STEPLOG_KAFKA_SSL_CAFILE" not in environment  # unset stays unset


def test_a_bare_bootstrap_connects_with_this_processs_security(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in SCRAM.items():
        monkeypatch.setenv(f"STEPLOG_{name.upper()}", value)

    resolved = kafka.resolve("10.0.0.1:9093")

    assert resolved.bootstrap == "10.0.0.1:9093"
    assert resolved.security.username == "shop"
    explicit = KafkaAccess("10.0.0.1:9093", KafkaSecurity())
    assert kafka.resolve(explicit) is explicit


def test_another_user_of_the_same_cluster_keeps_protocol_and_mechanism() -> None:
    access = kafka.access(load_settings(**SCRAM)).as_user("reader", "pw")

    assert access.security.protocol == "SASL_SSL"
    assert access.security.username == "reader"
    assert access.security.password == SecretStr("pw")


def test_the_project_key_logs_in_to_the_stacks_sql_endpoint_unless_the_dsn_has_a_password(
) -> None:
    assert clickhouse_http_endpoint("chdb:///x", 8123, key="sl_key") == (
        "http://127.0.0.1:8123/", {"X-ClickHouse-Key": "sl_key"},
    )
    assert clickhouse_http_endpoint("http://u:pw@ch:8123", 8123, key="sl_key") == (
        "http://ch:8123/", {"X-ClickHouse-User": "u", "X-ClickHouse-Key": "pw"},
    )


def test_faust_gets_the_same_credentials_as_every_other_client() -> None:
    sasl = faust_credentials(kafka.access(load_settings(**SCRAM)).security)
    assert isinstance(sasl, faust.SASLCredentials)
    assert (sasl.protocol.value, sasl.mechanism.value) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (sasl.username, sasl.password) == ("shop", "s3cret")
    tls = faust_credentials(KafkaSecurity(protocol="SSL"))
    assert isinstance(tls, faust.SSLCredentials)
    assert faust_credentials(KafkaSecurity()) is None
