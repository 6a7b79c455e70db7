"""`steplog broker start --nodes 3`: a local KRaft cluster on loopback, as an operator runs it.

The session's cluster is that one: tests/cluster_fixtures.py starts it with the CLI (and stops it
with the CLI after the last test, checking every node stopped). Here: what the operator then sees.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from steplog.server.broker import LocalCluster
from steplog.settings import load_settings
from tests.cluster_fixtures import NODES, cluster_settings
from tests.conftest import run_cli


async def _replicas(bootstrap: str, topics: list[str]) -> dict[str, set[int]]:
    """How many replicas each partition of `topics` has, per topic."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return {topic["topic"]: {len(part["replicas"]) for part in topic["partitions"]}
            for topic in described}


def test_cli_runs_a_three_node_cluster_whose_topics_have_three_replicas(
    kafka_cluster: LocalCluster, clickhouse_dsn: str, tmp_path: Path
) -> None:
    operator = load_settings(kafka_bootstrap=kafka_cluster.bootstrap,
                             data_dir=kafka_cluster.data_dir.parent)
    status = run_cli(operator, "broker", "status", "--nodes", str(NODES))
    assert status.returncode == 0, status.stdout + status.stderr
    nodes = json.loads(status.stdout)["nodes"]
    assert [node["running"] for node in nodes] == [True] * NODES
    assert len({node["pid"] for node in nodes}) == NODES

    # No replication configured: Steplog's topics take the cluster's default of 3.
    settings = cluster_settings(kafka_cluster, clickhouse_dsn, tmp_path / "steplog")
    ensured = run_cli(settings, "topics", "ensure")
    assert ensured.returncode == 0, ensured.stdout + ensured.stderr
    events = settings.topics.events
    assert asyncio.run(_replicas(kafka_cluster.bootstrap, [events])) == {events: {3}}
