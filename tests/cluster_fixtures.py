"""A real 3-node Kafka cluster (KRaft, on loopback) for the tests of replication and failover.

Three JVMs on two cores take 20-50 s to start, so the session starts one, the way an operator
does (`steplog broker start --nodes 3`), and stops it the same way after the last test. It is a
plugin of tests/conftest.py, so every module asks for it by name:

    def test_x(kafka_cluster: LocalCluster, clickhouse_dsn: str, tmp_path: Path) -> None:
        settings = cluster_settings(kafka_cluster, clickhouse_dsn, tmp_path / "steplog")
        ...

A test that kills or shuts down a node restarts it before it ends (`restarted_after`), so the
next test finds every node up; each test has its own topic prefix and database.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from steplog.server.broker.cluster import LocalCluster
from steplog.settings import Settings, load_settings
from tests.conftest import announce, free_port, isolated_settings, run_cli

NODES = 3


@pytest.fixture(scope="session")
def kafka_cluster(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[LocalCluster]:
    """The session's started 3-node cluster, started and stopped through the CLI."""
    ports = [free_port() for _ in range(NODES)]
    settings = load_settings(kafka_bootstrap=",".join(f"127.0.0.1:{port}" for port in ports),
                             data_dir=tmp_path_factory.mktemp("kafka-cluster"))
    began = time.perf_counter()
    started = run_cli(settings, "broker", "start", "--nodes", str(NODES), timeout=300)
    # Made after the start: a LocalCluster reads the layout (controller ports, cluster id) the
    # start saved; one made before would plan a layout of its own for its restarts.
    cluster = LocalCluster.from_settings(settings, NODES)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert cluster.bootstrap in started.stdout
        announce(pytestconfig, f"\nstarted a {NODES}-node Kafka cluster on {cluster.bootstrap} "
                              f"in {time.perf_counter() - began:.1f}s, data in {cluster.data_dir}")
        yield cluster
        stopped = run_cli(settings, "broker", "stop", "--nodes", str(NODES))
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not any(node.running for node in cluster.status().nodes)
    finally:
        cluster.stop()  # whatever the CLI left running when it or a test failed


def cluster_settings(cluster: LocalCluster, clickhouse_dsn: str, data_dir: Path) -> Settings:
    """A test's settings (own topic prefix and database) on `cluster`, bootstrapping from
    every node."""
    return isolated_settings(cluster.bootstrap, clickhouse_dsn, data_dir)


@contextmanager
def restarted_after(cluster: LocalCluster) -> Iterator[None]:
    """Restart, when the block ends, every node it killed or shut down and left down."""
    try:
        yield
    finally:
        for node_id in cluster.node_ids:
            if not cluster.node(node_id).status().running:
                cluster.restart(node_id)
