"""Fixtures for the real Kafka broker and the real ClickHouse engine, shared by every test.

One broker per pytest run (started here on a free loopback port, stopped at the end), or an
existing one named by STEPLOG_TEST_KAFKA_BOOTSTRAP. One chDB path per pytest process (the
engine allows one path a process), or a server named by STEPLOG_TEST_CLICKHOUSE_DSN. Tests are
isolated from each other by a unique topic prefix and a unique ClickHouse database.

A missing Java, Maven or chDB is a failure here, never a skip: the suite must prove the real
components work.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client

from steplog.kafka import KafkaAccess
from steplog.server.broker import LocalBroker
from steplog.projections.clickhouse import open_clickhouse
from steplog.projections.migrations import migrate
from steplog.server.sql_http import sql_endpoint_answers
from steplog.credentials import local_admin_key
from steplog.server.admin_key import ensure_admin_key
from steplog.settings import Settings, child_environment, load_settings
from steplog.topics import ensure_topics, topic_specs


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


# The 3-node Kafka cluster: one for the session, asked for by name by any module.
pytest_plugins = ["tests.cluster_fixtures"]

EXIT_DEADLINE_S = 120


def pytest_unconfigure(config: pytest.Config) -> None:
    """A process that cannot exit after its tests (a thread stuck in a call that never
    returns) fails loudly with every thread's stack instead of hanging CI until its timeout."""
    faulthandler.dump_traceback_later(EXIT_DEADLINE_S, exit=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def announce(config: pytest.Config, line: str) -> None:
    """Write to the test log even with output capture on: CI's log must show the real
    components being started and used."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    assert capture is not None
    with capture.global_and_fixture_disabled():
        print(line, flush=True)


def local_broker(data_dir: Path) -> LocalBroker:
    """A broker (not started) on a free loopback port with its data in `data_dir`."""
    base = load_settings()
    return LocalBroker(data_dir=data_dir, port=free_port(), heap=base.broker_heap,
                       version=base.kafka_version, cache_dir=base.cache_dir)


@pytest.fixture(scope="session")
def kafka_bootstrap(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[str]:
    """The bootstrap address of a real Kafka broker for the whole run."""
    existing = os.environ.get("STEPLOG_TEST_KAFKA_BOOTSTRAP")
    if existing:
        announce(pytestconfig, f"using the Kafka broker at {existing}")
        yield existing
        return
    broker = local_broker(tmp_path_factory.mktemp("kafka"))
    began = time.perf_counter()
    broker.start()
    announce(
        pytestconfig,
        f"\nstarted Kafka {broker.version} (KRaft) on {broker.bootstrap} "
        f"in {time.perf_counter() - began:.1f}s, data in {broker.data_dir}",
    )
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
        announce(pytestconfig, f"\nstopped Kafka on {broker.bootstrap}")


@pytest.fixture(scope="session")
def clickhouse_dsn(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> str:
    """The ClickHouse DSN for the whole run: the embedded engine unless a server is named."""
    dsn = os.environ.get("STEPLOG_TEST_CLICKHOUSE_DSN") or (
        f"chdb://{tmp_path_factory.mktemp('clickhouse')}"
    )
    announce(pytestconfig, f"ClickHouse for this run: {dsn}")
    return dsn


def isolated_settings(kafka_bootstrap: str, clickhouse_dsn: str, data_dir: Path) -> Settings:
    """Settings with a topic prefix and database of their own on the shared broker and engine."""
    unique = uuid.uuid4().hex[:10]
    return load_settings(
        kafka_bootstrap=kafka_bootstrap,
        clickhouse_dsn=clickhouse_dsn,
        clickhouse_database=f"test_{unique}",
        topic_prefix=f"test.{unique}.",
        data_dir=data_dir,
        events_partitions=3,
        commands_partitions=3,
        signals_partitions=2,
    )


def with_own_engine(settings: Settings, directory: Path) -> Settings:
    """Settings for a processors child process: a chDB path (the engine allows one process a
    path), a SQL port and a health port of its own."""
    return settings.model_copy(update={
        "clickhouse_dsn": f"chdb://{directory / 'stack-clickhouse'}", "sql_port": free_port(),
        "health_port": free_port(),
    })


@pytest.fixture
def settings(kafka_bootstrap: str, clickhouse_dsn: str, tmp_path: Path) -> Settings:
    """Settings for one test: its own topics and database on the shared broker and engine."""
    return isolated_settings(kafka_bootstrap, clickhouse_dsn, tmp_path / "steplog")


@pytest.fixture
def topics(settings: Settings) -> Settings:
    """The test's topics, created on the real broker."""
    asyncio.run(ensure_topics(settings.kafka_bootstrap, topic_specs(settings)))
    return settings


@pytest.fixture
def clickhouse(settings: Settings) -> Iterator[Client]:
    """A client on the test's own migrated database, dropped afterwards."""
    client = open_clickhouse(settings.clickhouse_dsn)
    migrate(client, settings.clickhouse_database)
    try:
        yield client
    finally:
        client.command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")


@dataclass
class RunningProcessors:
    """`steplog processors` in a child process, with its own chDB files and SQL endpoint."""

    settings: Settings
    process: subprocess.Popen[bytes]
    sql: Client
    """clickhouse-connect's HTTP client on the processors' SQL endpoint, as an analyst uses it."""

    def rows(self, sql: str, **parameters: Any) -> list[dict[str, Any]]:
        """The rows of `sql` (with `{name:Type}` parameters) as dicts, by column name."""
        result = self.sql.query(sql, parameters=parameters)
        return [dict(zip(result.column_names, row)) for row in result.result_rows]

    def run_status(self, run_id: str) -> str | None:
        """The run's status in runs_current; None while it has no row."""
        rows = self.rows("SELECT status FROM runs_current WHERE run_id = {id:String}", id=run_id)
        return str(rows[0]["status"]) if rows else None

    def stop(self, *, kill: bool = False) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


def start_processors(settings: Settings, log_path: Path) -> RunningProcessors:
    """Start the processors and wait (with a deadline) until their SQL endpoint answers; its
    client logs in with the admin key `steplog dev` would make (`<data dir>/admin.key`, which
    the CLI run by `run_cli` finds too)."""
    key = ensure_admin_key(settings) or local_admin_key(settings)
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [sys.executable, "-c", "from steplog.server.entry import main; main()", "processors"],
        env=child_environment(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"processors exited with {process.returncode}: "
                                 f"{log_path.read_text(errors='replace')[-3000:]}")
        return sql_endpoint_answers(settings.sql_port, timeout=5)

    try:
        wait_for(answers, timeout=120, what="the processors' SQL endpoint")
    except BaseException:
        process.kill()
        process.wait(timeout=30)
        raise
    sql = clickhouse_connect.get_client(
        host="127.0.0.1", port=settings.sql_port, database=settings.clickhouse_database,
        password=key or "",
    )
    return RunningProcessors(settings, process, sql)


@pytest.fixture
def stack_settings(topics: Settings, tmp_path: Path) -> Settings:
    """Settings for a processors child process: its own chDB path and SQL port."""
    return with_own_engine(topics, tmp_path)


@pytest.fixture
def processors(stack_settings: Settings, tmp_path: Path) -> Iterator[RunningProcessors]:
    running = start_processors(stack_settings, tmp_path / "processors.log")
    try:
        yield running
    finally:
        running.stop()


def wait_for(condition: Callable[[], bool], *, timeout: float = 60, what: str = "condition") -> None:
    """Poll `condition` until it holds, with a deadline (tests wait on state, never on time)."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def run_cli(settings: Settings, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`steplog ARGS` in a child process configured with `settings`, its output captured."""
    return subprocess.run(
        [sys.executable, "-c", "from steplog.server.entry import main; main()", *args],
        env={**os.environ, **child_environment(settings)},
        capture_output=True, text=True, timeout=timeout,
    )


def replay_dry_run(settings: Settings, processes: int, tables: tuple[str, ...] = (
    "events", "runs", "steps", "flows", "run_list",
)) -> str:
    """`steplog replay --dry-run` on `settings`' stack, asserting it rebuilt each of `tables`
    identical to the live projection; its output (the counts of what it skipped)."""
    done = run_cli(settings, "replay", "--dry-run", "--processes", str(processes))
    assert done.returncode == 0, done.stdout + done.stderr
    for table in tables:
        assert any(line.startswith(table) and line.endswith("identical")
                   for line in done.stdout.splitlines()), done.stdout
    return done.stdout


@dataclass
class DevProcess:
    """`steplog dev` in a child process: its own data dir, broker, SQL, web and health ports."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    kafka_port: int
    sql_port: int
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Kill it if it still runs, and stop the broker it started if it could not."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        base = load_settings()
        LocalBroker(self.data_dir / "kafka", self.kafka_port, heap=base.broker_heap,
                    version=base.kafka_version, cache_dir=base.cache_dir).stop()


def start_dev(directory: Path, **environment: str) -> DevProcess:
    """Start `steplog dev` (not waiting for it) with `environment`'s STEPLOG_ variables over a
    clean environment."""
    data_dir, kafka_port, sql_port = directory / "data", free_port(), free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STEPLOG_")}
    clean |= {"STEPLOG_HEALTH_PORT": str(free_port()), "STEPLOG_API_PORT": str(free_port()),
              **environment}
    log_path = directory / "dev.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", "from steplog.server.entry import main; main()", "dev",
             "--data-dir", str(data_dir), "--kafka-port", str(kafka_port),
             "--sql-port", str(sql_port)],
            env=clean, stdout=log, stderr=subprocess.STDOUT,
        )
    return DevProcess(process, data_dir, kafka_port, sql_port, log_path)


@pytest.fixture(scope="session")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A secured broker of the suite's own (SASL/SCRAM-SHA-512, ACLs), shared by the modules
    that need one: each uses topics of its own prefix."""
    base = load_settings()
    broker = LocalBroker(
        tmp_path_factory.mktemp("secure-kafka"), free_port(), heap=base.broker_heap,
        version=base.kafka_version, cache_dir=base.cache_dir, secure=True,
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def admin(secure_broker: LocalBroker) -> KafkaAccess:
    """How a client logs in to `secure_broker` as its admin (the super user)."""
    return secure_broker.admin_access()
