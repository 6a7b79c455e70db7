"""Replication on a real 3-node cluster (default.replication.factor=3): Steplog's topics,
changelogs and faust's topic follow it, and topics made with one replica are warned about,
refused by `steplog topics ensure` and aligned by `steplog topics ensure --reassign`."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from steplog.server.broker.cluster import LocalCluster
from steplog.server.stack import ensure_processors_topics, processor_config
from steplog.settings import Settings
from steplog.topics import ensure_topics, topic_specs
from tests.cluster_fixtures import cluster_settings
from tests.conftest import run_cli


async def replication(
    bootstrap: str, prefix: str, expected: int
) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every topic of `prefix`: its partitions' replica counts and its min.insync.replicas.

    Asked again until `expected` topics are listed and every one's configs are known: a topic
    just created is known to one broker before another, which may answer the next request."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            names = [name for name in await admin.list_topics() if name.startswith(prefix)]
            described = await admin.describe_topics(names)
            (response,) = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name, {"min.insync.replicas": None})
                 for name in names]
            )
            in_sync = {resource["resource_name"]: entry["config_value"]
                       for resource in response.to_object()["resources"]
                       for entry in resource["config_entries"]}
            known = len(names) >= expected and all(name in in_sync for name in names)
            if known or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    return {t["topic"]: (tuple(sorted({len(p["replicas"]) for p in t["partitions"]})),
                         in_sync[t["topic"]])
            for t in described}


def make_topics(settings: Settings) -> int:
    """The topics as `steplog topics ensure` and the processors' start make them; the
    replicas the processors give faust."""

    async def make() -> int:
        await ensure_topics(settings.kafka_bootstrap, topic_specs(settings))
        return await ensure_processors_topics(processor_config(settings), settings)

    return asyncio.run(make())


def test_every_topic_takes_the_clusters_replication_and_one_less_in_sync(
    kafka_cluster: LocalCluster, clickhouse_dsn: str, tmp_path: Path,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = cluster_settings(kafka_cluster, clickhouse_dsn, tmp_path / "steplog")
    with caplog.at_level(logging.WARNING, logger="steplog.topics"):
        assert make_topics(settings) == 3
    assert caplog.messages == []
    config = processor_config(settings)
    made = asyncio.run(replication(kafka_cluster.bootstrap, settings.topic_prefix,
                                   len(topic_specs(settings)) + 5))
    # The processors' group prefix is the topic prefix: their changelogs and faust's topic too.
    assert {config.runs_changelog, config.waits_changelog, config.faust_leader_topic} <= set(made)
    assert len(made) == len(topic_specs(settings)) + 5
    assert made == dict.fromkeys(made, ((3,), "2"))


def test_one_replica_is_warned_about_refused_then_reassigned(
    kafka_cluster: LocalCluster, clickhouse_dsn: str, tmp_path: Path,  # noqa: F811
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = cluster_settings(kafka_cluster, clickhouse_dsn, tmp_path / "steplog")
    single = settings.model_copy(update={"replication_factor": 1})
    with caplog.at_level(logging.WARNING, logger="steplog.topics"):
        make_topics(single)
    # Once at `topics ensure`, then at the processors' start (their own topics, then the rest).
    assert [m.split(":")[0] for m in caplog.messages] == [
        f"topics {names} have one replica on a cluster of 3 brokers" for names in (
            [s.name for s in topic_specs(settings)],
            [settings.topics.flow_control, *changelogs_and_fausts(settings)],
            [s.name for s in topic_specs(settings) if s.name != settings.topics.flow_control],
        )
    ]

    monkeypatch.setenv("STEPLOG_REPLICATION_FACTOR", "3")
    refused = run_cli(settings, "topics", "ensure")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"topic '{settings.topics.events}' has 1 replicas per partition, 3 asked" in (
        refused.stderr
    )
    assert "Run `steplog topics ensure --reassign`" in refused.stderr

    aligned = run_cli(settings, "topics", "ensure", "--reassign")
    assert aligned.returncode == 0, aligned.stdout + aligned.stderr
    assert aligned.stdout.count("3 replicas  replicas reassigned") == len(topic_specs(settings))
    made = asyncio.run(replication(kafka_cluster.bootstrap, settings.topic_prefix,
                                   len(topic_specs(settings))))
    assert {made[s.name] for s in topic_specs(settings)} == {((3,), "2")}


def changelogs_and_fausts(settings: Settings) -> list[str]:
    config = processor_config(settings)
    return [config.runs_changelog, config.waits_changelog, config.triggers_changelog,
            config.flow_control_changelog, config.faust_leader_topic]
