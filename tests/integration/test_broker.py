"""The local Kafka broker: a real JVM on loopback, started, probed, restarted and stopped.

Three broker starts in all (each ~5 s). Jars come from the real cache
(`load_settings().cache_dir`), so only the very first run on a machine downloads them. Missing
java or mvn fails these tests: they are not skipped.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from steplog.server.broker import LocalBroker
from steplog.errors import BrokerError
from steplog.settings import load_settings

pytestmark = pytest.mark.integration

CLIENT_DEADLINE_S = 30.0

BrokerFactory = Callable[[Path], LocalBroker]


@pytest.fixture
def make_broker() -> Iterator[BrokerFactory]:
    """LocalBrokers on free loopback ports, every one stopped when the test ends, pass or fail."""
    brokers: list[LocalBroker] = []
    cache_dir = load_settings().cache_dir

    def make(data_dir: Path) -> LocalBroker:
        broker = LocalBroker(data_dir, _free_port(), cache_dir=cache_dir)
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.stop()


def test_broker_serves_kafka_and_stops_cleanly(
    make_broker: BrokerFactory, tmp_path: Path
) -> None:
    broker = make_broker(tmp_path / "kafka")
    broker.start()

    status = broker.status()
    assert status.running and status.pid is not None
    assert status.bootstrap == broker.bootstrap == f"127.0.0.1:{broker.port}"
    assert status.data_dir == (tmp_path / "kafka").resolve()
    pid_file = json.loads((tmp_path / "kafka" / "broker.pid").read_text())
    assert (pid_file["pid"], pid_file["port"]) == (status.pid, broker.port)

    # A second start, from this object or from another one over the same data dir, adopts the
    # running broker instead of spawning one.
    broker.start()
    LocalBroker(tmp_path / "kafka", broker.port, cache_dir=broker.cache_dir).start()
    assert broker.status().pid == status.pid

    asyncio.run(_produce(broker.bootstrap, "broker-smoke", b"hello"))
    assert asyncio.run(_read_first(broker.bootstrap, "broker-smoke")) == b"hello"

    broker.stop()
    assert not broker.status().running
    assert broker.status().pid is None
    assert not (tmp_path / "kafka" / "broker.pid").exists()
    assert not Path(f"/proc/{status.pid}").exists()
    broker.stop()  # stopping a stopped broker is a no-op


def test_restart_keeps_messages_and_ignores_a_stale_pid_file(
    make_broker: BrokerFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "kafka"
    broker = make_broker(data_dir)
    broker.start()
    asyncio.run(_produce(broker.bootstrap, "broker-restart", b"before restart"))
    broker.stop()

    # A pid file left by a crash, naming a pid that no longer runs: start() must clean it up.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True, text=True, check=True,
    )
    (data_dir / "broker.pid").write_text(
        json.dumps({"pid": int(dead.stdout), "port": broker.port, "controller_port": 1})
    )
    assert not broker.status().running

    broker.start()  # formatted storage: no new cluster id, the log is reused
    assert broker.status().pid != int(dead.stdout)
    assert asyncio.run(_read_first(broker.bootstrap, "broker-restart")) == b"before restart"
    broker.stop()


def test_port_held_by_another_socket_is_refused(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        broker = LocalBroker(tmp_path / "kafka", port, cache_dir=load_settings().cache_dir)

        with pytest.raises(BrokerError, match=rf"\bport {port}\b"):
            broker.start()

    assert not broker.status().running
    assert not (tmp_path / "kafka" / "broker.pid").exists()


def test_from_settings_serves_only_loopback(tmp_path: Path) -> None:
    broker = LocalBroker.from_settings(
        load_settings(kafka_bootstrap="localhost:19092", data_dir=tmp_path)
    )
    assert (broker.port, broker.data_dir) == (19092, (tmp_path / "kafka").resolve())

    with pytest.raises(BrokerError, match="only serves loopback"):
        LocalBroker.from_settings(load_settings(kafka_bootstrap="10.1.2.3:9092"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await asyncio.wait_for(producer.send_and_wait(topic, value), CLIENT_DEADLINE_S)
    finally:
        await producer.stop()


async def _read_first(bootstrap: str, topic: str) -> bytes:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        message = await asyncio.wait_for(consumer.getone(), CLIENT_DEADLINE_S)
    finally:
        await consumer.stop()
    value: bytes = message.value
    return value
