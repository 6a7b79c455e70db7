"""The secured deployment of docker-compose.secure.yml, without Docker: its own scripts
(deploy/secure/make-certs.sh, kafka-start.sh) run a real broker from the Maven jars, and
Steplog's CLI configured as the compose file configures its services (SASL_SSL, SCRAM-SHA-512,
the CA it trusts) makes the topics, the services' admin key and an application's user.

What this proves: the broker takes TLS with the CA's certificate and SCRAM logins only; a
client that does not trust the CA, speaks plaintext or has a wrong password is refused; the
setup's commands work over it; and an application user made with `steplog broker user add`
may write events but read nothing (the keys topic above all)."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.errors import KafkaError
from pydantic import SecretStr

from steplog import kafka
from steplog.kafka import KafkaAccess, KafkaSecurity
from steplog.server.broker import ensure_kafka_jars
from steplog.settings import load_settings
from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.integration

SECURE = Path(__file__).parents[2] / "deploy" / "secure"
PREFIX = "deploy."


class SecureBroker:
    def __init__(self, directory: Path, port: int, password: str) -> None:
        self.directory, self.port, self.password = directory, port, password
        self.bootstrap = f"127.0.0.1:{port}"
        self.cafile = directory / "certs" / "ca.pem"

    def access(self, username: str, password: str, *, cafile: Path | None = None) -> KafkaAccess:
        return KafkaAccess(self.bootstrap, KafkaSecurity(
            protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", username=username,
            password=SecretStr(password), cafile=cafile or self.cafile,
        ))

    def steplog_environment(self) -> dict[str, str]:
        """What docker-compose.secure.yml gives Steplog's services, pointed at this broker."""
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("STEPLOG_")},
            "STEPLOG_KAFKA_BOOTSTRAP": self.bootstrap,
            "STEPLOG_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "STEPLOG_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "STEPLOG_KAFKA_SASL_USERNAME": "admin",
            "STEPLOG_KAFKA_SASL_PASSWORD": self.password,
            "STEPLOG_KAFKA_SSL_CAFILE": str(self.cafile),
            "STEPLOG_DATA_DIR": str(self.directory / "steplog-keys"),
            "STEPLOG_TOPIC_PREFIX": PREFIX,
            "STEPLOG_EVENTS_PARTITIONS": "1",
            "STEPLOG_SIGNALS_PARTITIONS": "1",
            "STEPLOG_COMMANDS_PARTITIONS": "1",
        }

    def steplog(
        self, *args: str, environment: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from steplog.server.entry import main; main()", *args],
            env={**self.steplog_environment(), **(environment or {})},
            capture_output=True, text=True, timeout=120,
        )


def _kafka_home(directory: Path) -> Path:
    """The two scripts of the apache/kafka image that kafka-start.sh calls, over our jars."""
    settings = load_settings()
    libs = ensure_kafka_jars(settings.kafka_version, settings.cache_dir)
    home = directory / "kafka-home"
    (home / "bin").mkdir(parents=True)
    for script, main in (("kafka-storage.sh", "kafka.tools.StorageTool"),
                         ("kafka-server-start.sh", "kafka.Kafka")):
        path = home / "bin" / script
        path.write_text(f'#!/bin/sh\nexec java -Xmx{settings.broker_heap} -cp "{libs}/*" {main} "$@"\n')
        path.chmod(0o755)
    return home


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    directory = tmp_path_factory.mktemp("secure-deploy")
    subprocess.run([str(SECURE / "make-certs.sh"), str(directory / "certs")], check=True,
                   capture_output=True, timeout=60)
    secure = SecureBroker(directory, free_port(), secrets.token_hex(16))
    environment = {
        **os.environ, "KAFKA_ADMIN_PASSWORD": secure.password,
        "KAFKA_HOME": str(_kafka_home(directory)), "KAFKA_DATA": str(directory / "data"),
        "KAFKA_CERTS": str(directory / "certs"), "KAFKA_CONFIG_DIR": str(directory / "config"),
        "KAFKA_ADVERTISED_HOST": "127.0.0.1", "KAFKA_LISTEN_HOST": "127.0.0.1",
        "KAFKA_PORT": str(secure.port), "KAFKA_CONTROLLER_PORT": str(free_port()),
    }
    with open(directory / "kafka.log", "wb") as log:
        process = subprocess.Popen([str(SECURE / "kafka-start.sh")], env=environment,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: _answers(secure) or process.poll() is not None, timeout=90,
                 what="the secured broker to take a SCRAM login over TLS")
        assert process.poll() is None, (directory / "kafka.log").read_text(errors="replace")
        yield secure
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _answers(broker: SecureBroker) -> bool:
    try:
        asyncio.run(_list_topics(broker.access("admin", broker.password)))
    except KafkaError:
        return False
    return True


async def _list_topics(access: KafkaAccess) -> set[str]:
    consumer = kafka.consumer(access, enable_auto_commit=False, request_timeout_ms=5000)
    await kafka.start(consumer, access)
    try:
        return set(await consumer.topics())
    finally:
        await consumer.stop()


def test_the_broker_keeps_its_configuration_private(broker: SecureBroker) -> None:
    for name in ("server.properties", "admin.properties"):
        mode = stat.S_IMODE((broker.directory / "config" / name).stat().st_mode)
        assert mode == 0o600, f"{name} is {mode:o}"


@pytest.mark.parametrize("who", ["wrong password", "untrusted CA", "plaintext"])
def test_the_broker_refuses_what_is_not_a_scram_login_over_trusted_tls(
    broker: SecureBroker, who: str, tmp_path: Path
) -> None:
    if who == "wrong password":
        access = broker.access("admin", "not-the-password")
    elif who == "untrusted CA":
        subprocess.run([str(SECURE / "make-certs.sh"), str(tmp_path / "other")], check=True,
                       capture_output=True, timeout=60)
        access = broker.access("admin", broker.password, cafile=tmp_path / "other" / "ca.pem")
    else:
        access = KafkaAccess(broker.bootstrap, KafkaSecurity())
    with pytest.raises(KafkaError):
        asyncio.run(_list_topics(access))


def test_the_setup_commands_work_over_it_and_an_application_may_only_write_events(
    broker: SecureBroker,
) -> None:
    for command in (("topics", "ensure"), ("keys", "ensure-admin")):
        done = broker.steplog(*command)
        assert done.returncode == 0, done.stdout + done.stderr
    made = broker.steplog("keys", "ensure-admin")
    assert made.returncode == 0 and "holds a valid admin key" in made.stdout, made.stdout
    key_file = broker.directory / "steplog-keys" / "admin.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    added = broker.steplog("broker", "user", "add", "shop", "--produce", f"{PREFIX}events")
    assert added.returncode == 0, added.stdout + added.stderr
    password = added.stdout.rsplit(" ", 1)[-1].strip()
    shop = broker.access("shop", password)

    async def write_event() -> None:
        producer = kafka.producer(shop)
        await kafka.start(producer, shop)
        try:
            await producer.send_and_wait(f"{PREFIX}events", b"{}", key=b"run-1")
        finally:
            await producer.stop()

    asyncio.run(write_event())
    as_shop = {"STEPLOG_KAFKA_SASL_USERNAME": "shop", "STEPLOG_KAFKA_SASL_PASSWORD": password}
    refused = broker.steplog("keys", "list", environment=as_shop)
    assert refused.returncode != 0, refused.stdout
    assert "user 'shop' may not read it" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr, refused.stderr
