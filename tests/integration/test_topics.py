"""`steplog topics ensure` against the real broker."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from steplog.errors import TopicError
from steplog.settings import Settings
from steplog.topics import TopicOutcome, alerts_topic, ensure_topics, topic_specs


async def describe(bootstrap: str, names: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}
    finally:
        await admin.close()


async def min_insync(bootstrap: str, names: list[str]) -> dict[str, str]:
    """The topics' min.insync.replicas, as the broker has them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, {"min.insync.replicas": None})
             for name in names]
        )
    finally:
        await admin.close()
    return {resource["resource_name"]: entry["config_value"]
            for resource in response.to_object()["resources"]
            for entry in resource["config_entries"]}


def test_ensure_creates_the_topics_then_changes_nothing(settings: Settings) -> None:
    specs = topic_specs(settings)
    first = asyncio.run(ensure_topics(settings.kafka_bootstrap, specs))
    assert [r.outcome for r in first] == [TopicOutcome.CREATED] * 9
    assert asyncio.run(describe(settings.kafka_bootstrap, [s.name for s in specs])) == {
        settings.topics.events: 3,
        settings.topics.signals: 2,
        settings.topics.flow_control: 2,
        settings.topics.commands: 3,
        settings.topics.runner_commands: 3,
        settings.topics.dlq: 1,
        settings.topics.flows: 1,
        settings.topics.keys: 1,
        alerts_topic(settings): 1,
    }
    second = asyncio.run(ensure_topics(settings.kafka_bootstrap, specs))
    assert [r.outcome for r in second] == [TopicOutcome.UNCHANGED] * 9


def test_unset_replication_follows_the_single_brokers_default(settings: Settings) -> None:
    assert settings.replication_factor is None
    specs = topic_specs(settings)
    reports = asyncio.run(ensure_topics(settings.kafka_bootstrap, specs))
    assert {r.replicas for r in reports} == {1}
    names = [s.name for s in specs]
    assert asyncio.run(min_insync(settings.kafka_bootstrap, names)) == dict.fromkeys(names, "1")


def test_a_replication_mismatch_fails_naming_the_topic_and_the_command(
    settings: Settings,
) -> None:
    specs = topic_specs(settings)[:2]
    asyncio.run(ensure_topics(settings.kafka_bootstrap, specs))
    wanted = [dataclasses.replace(s, replication_factor=2) for s in specs]
    with pytest.raises(TopicError) as raised:
        asyncio.run(ensure_topics(settings.kafka_bootstrap, wanted))
    assert str(raised.value).startswith(
        f"topic '{specs[0].name}' has 1 replicas per partition, 2 asked; "
        f"topic '{specs[1].name}' has 1 replicas per partition, 2 asked. "
        "Run `steplog topics ensure --reassign`"
    )
    # Nothing changed: min.insync.replicas=1 stays (2 would refuse every write to one replica).
    assert asyncio.run(min_insync(settings.kafka_bootstrap, [specs[0].name])) == {
        specs[0].name: "1"
    }


def test_ensure_brings_drifted_configs_back(settings: Settings) -> None:
    specs = topic_specs(settings)
    asyncio.run(ensure_topics(settings.kafka_bootstrap, specs))
    drifted = [dataclasses.replace(specs[0], configs={**specs[0].configs, "retention.ms": "1000"})]
    assert asyncio.run(ensure_topics(settings.kafka_bootstrap, drifted))[0].outcome == (
        TopicOutcome.CONFIGS_UPDATED
    )
    assert asyncio.run(ensure_topics(settings.kafka_bootstrap, specs[:1]))[0].outcome == (
        TopicOutcome.CONFIGS_UPDATED
    )


def test_a_partition_count_mismatch_is_an_error_naming_the_variable(settings: Settings) -> None:
    specs = topic_specs(settings)
    asyncio.run(ensure_topics(settings.kafka_bootstrap, specs))
    wrong = [dataclasses.replace(specs[0], partitions=5)]
    with pytest.raises(TopicError, match="has 3 partitions but STEPLOG_EVENTS_PARTITIONS asks for 5"):
        asyncio.run(ensure_topics(settings.kafka_bootstrap, wrong))


def test_a_config_the_broker_refuses_is_an_error_naming_the_topic(settings: Settings) -> None:
    specs = topic_specs(settings)
    asyncio.run(ensure_topics(settings.kafka_bootstrap, specs))
    refused = [dataclasses.replace(specs[0], configs={**specs[0].configs, "retention.ms": "soon"})]
    with pytest.raises(TopicError, match=f"cannot change configs of topic '{specs[0].name}'"):
        asyncio.run(ensure_topics(settings.kafka_bootstrap, refused))
