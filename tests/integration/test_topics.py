"""`steplog topics ensure` against the real broker."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from aiokafka.admin import AIOKafkaAdminClient

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


def test_ensure_creates_the_topics_then_changes_nothing(settings: Settings) -> None:
    specs = topic_specs(settings)
    first = asyncio.run(ensure_topics(settings.kafka_bootstrap, specs))
    assert [r.outcome for r in first] == [TopicOutcome.CREATED] * 8
    assert asyncio.run(describe(settings.kafka_bootstrap, [s.name for s in specs])) == {
        settings.topics.events: 3,
        settings.topics.signals: 2,
        settings.topics.flow_control: 2,
        settings.topics.commands: 3,
        settings.topics.dlq: 1,
        settings.topics.flows: 1,
        settings.topics.keys: 1,
        alerts_topic(settings): 1,
    }
    second = asyncio.run(ensure_topics(settings.kafka_bootstrap, specs))
    assert [r.outcome for r in second] == [TopicOutcome.UNCHANGED] * 8


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
