"""A secured broker of the test's own (SASL/SCRAM-SHA-512, ACLs): a wrong password is refused,
a principal without a write ACL cannot produce, and the SDK with a user's credentials sends
what a consumer then reads."""

from __future__ import annotations

import asyncio
import secrets
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError

from steplog import kafka
from steplog.kafka import KafkaAccess
from steplog.producers.client import Client
from steplog.schemas.codec import decode_event
from steplog.schemas.events import StepStarted
from steplog.server.broker import LocalBroker
from steplog.server.broker.security import (
    CREDENTIALS_FILE,
    Acl,
    BrokerCredentials,
    consume_acls,
    produce_acls,
)
from steplog.settings import Settings, load_settings
from steplog.topics import ensure_topics, topic_specs
from tests.conftest import free_port, wait_for

PREFIX = "secure."


@pytest.fixture(scope="module")
def secured_settings(secure_broker: LocalBroker, admin: KafkaAccess,
                     tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings of a client of the secured broker (no user yet); the topics made as admin."""
    settings = load_settings(
        kafka_bootstrap=secure_broker.bootstrap, topic_prefix=PREFIX,
        data_dir=tmp_path_factory.mktemp("secure-steplog"), events_partitions=1,
        commands_partitions=1, signals_partitions=1,
    )
    asyncio.run(ensure_topics(admin, topic_specs(settings)))
    return settings


def _new_user(broker: LocalBroker, name: str, acls: list[Acl]) -> BrokerCredentials:
    return broker.add_user(name, secrets.token_urlsafe(12), acls)


async def _read_all(access: KafkaAccess, topic: str) -> list[bytes]:
    """Every record of partition 0 of `topic`, read as `access`."""
    consumer = kafka.consumer(access, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        end = (await consumer.end_offsets([partition]))[partition]
        values: list[bytes] = []
        while await consumer.position(partition) < end:
            batch = await consumer.getmany(partition, timeout_ms=1000)
            values += [record.value for record in batch.get(partition, []) if record.value]
        return values
    finally:
        await consumer.stop()


def test_the_admin_credentials_are_kept_readable_by_their_owner_only(
    secure_broker: LocalBroker,
) -> None:
    for name in (CREDENTIALS_FILE, "server.properties"):
        mode = stat.S_IMODE((secure_broker.data_dir / name).stat().st_mode)
        assert mode == 0o600, f"{name} is {mode:o}"


def test_a_client_with_a_wrong_password_is_refused_saying_so(admin: KafkaAccess) -> None:
    wrong = admin.as_user(admin.security.username or "", "not-the-password")

    async def connect() -> None:
        producer = kafka.producer(wrong)
        try:
            await kafka.start(producer, wrong)
        finally:
            await producer.stop()

    with pytest.raises(KafkaError) as refused:
        asyncio.run(connect())
    message = str(refused.value)
    assert "as user 'admin'" in message and "SaslAuthenticationFailed" in message, message


def test_a_principal_without_a_write_acl_cannot_produce(
    secure_broker: LocalBroker, secured_settings: Settings
) -> None:
    events = secured_settings.topics.events
    reader = _new_user(secure_broker, "reader-only", consume_acls(events))
    access = reader.access(secure_broker.bootstrap)

    async def produce() -> None:
        producer = kafka.producer(access)
        await producer.start()
        try:
            await producer.send_and_wait(events, b"{}", key=b"r")
        finally:
            await producer.stop()

    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(produce())


def test_the_sdk_sends_with_a_users_credentials_and_a_consumer_reads_it(
    secure_broker: LocalBroker, secured_settings: Settings, admin: KafkaAccess
) -> None:
    events = secured_settings.topics.events
    sdk_user = _new_user(secure_broker, "sdk-shop", produce_acls(events))
    settings = secured_settings.model_copy(update={
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": sdk_user.username,
        "kafka_sasl_password": sdk_user.password,
    })
    client = Client("shop", settings=settings, throw_on_send_error=True)
    try:
        client.record_step(flow_key="checkout", run_id="r-secure", step_key="charge",
                           status="running", metadata={"password": "hunter2"})
        assert client.flush(timeout=30)
    finally:
        client.close()

    (value,) = asyncio.run(_read_all(admin, events))
    event = decode_event(value)
    assert isinstance(event, StepStarted)
    assert (event.run_id, event.step_key) == ("r-secure", "charge")
    assert event.payload.metadata == {"password": "[REDACTED]"}


def test_the_user_of_the_sdk_may_not_read_the_log(
    secure_broker: LocalBroker, secured_settings: Settings
) -> None:
    events = secured_settings.topics.events
    writer = _new_user(secure_broker, "writer-only", produce_acls(events))

    with pytest.raises(KafkaError):
        asyncio.run(_read_all(writer.access(secure_broker.bootstrap), events))


def test_a_data_dir_formatted_without_security_is_not_started_secured(tmp_path: Path) -> None:
    base = load_settings()
    plain = LocalBroker(tmp_path, free_port(), cache_dir=base.cache_dir)
    plain.start()
    plain.stop()
    secured = LocalBroker(tmp_path, plain.port, cache_dir=base.cache_dir, secure=True)
    with pytest.raises(Exception, match="without security"):
        secured.start()


def test_the_sdk_tells_a_refused_password_and_a_missing_write_acl_by_name(
    secure_broker: LocalBroker, secured_settings: Settings
) -> None:
    events = secured_settings.topics.events
    reader = _new_user(secure_broker, "sdk-reader", consume_acls(events))
    cases = {"wrong password": ("sdk-reader", "wrong", "SaslAuthenticationFailed"),
             "no write ACL": (reader.username, reader.password.get_secret_value(),
                              # The idempotent producer's first request, InitProducerId,
                              # needs a WRITE on some topic: refused before any produce.
                              "ClusterAuthorizationFailed")}
    for case, (username, password, named) in cases.items():
        errors: list[BaseException] = []
        settings = secured_settings.model_copy(update={
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": username,
            "kafka_sasl_password": SecretStr(password),
        })
        client = Client("shop", settings=settings, on_error=errors.append, close_timeout=1.0)
        try:
            client.record_step(flow_key="checkout", run_id="r-refused", step_key="charge",
                               status="running")
            wait_for(lambda: bool(errors), timeout=60, what=f"the SDK's error ({case})")
        finally:
            client.close()
        assert named in str(errors[0]), f"{case}: {errors[0]}"
