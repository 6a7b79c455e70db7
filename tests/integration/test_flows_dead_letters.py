"""The flows topic has one reader in every processors process (processors/definitions.py); an
unusable message on it is dead-lettered when it arrives, and not again at every restart."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer

from steplog.producers.flows_file import push_flows
from steplog.projections.log_reader import read_log
from steplog.schemas.codec import decode_dead_letter
from steplog.schemas.flows import FlowDefinition, FlowStep
from steplog.settings import Settings
from tests.conftest import RunningProcessors, start_processors, wait_for


def dead_letters(settings: Settings) -> list[str]:
    async def read() -> list[str]:
        return [decode_dead_letter(record.value).source_topic
                async for record in read_log(settings.kafka_bootstrap, settings.topics.dlq)]

    return asyncio.run(read())


def flow(settings: Settings, slug: str) -> FlowDefinition:
    return FlowDefinition(project=settings.project, slug=slug,
                          steps=[FlowStep(sdk_step_key="only")], ts=datetime.now(UTC))


def pushed(running: RunningProcessors, settings: Settings, slug: str) -> None:
    """Push a flow and wait for its row: the processors have read the topic up to it."""
    push_flows(settings, [flow(settings, slug)])
    wait_for(lambda: running.sql.command(
        "SELECT count() FROM flows WHERE slug = {slug:String}", parameters={"slug": slug}) == 1,
        what=f"flow {slug} in the flows table")


def test_a_bad_flows_message_is_dead_lettered_once_across_restarts(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = stack_settings
    log = tmp_path / "processors.log"
    running = start_processors(settings, log)
    try:
        pushed(running, settings, "before")

        async def produce() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
            await producer.start()
            try:
                await producer.send_and_wait(settings.topics.flows, b"not a flow", key=b"x")
            finally:
                await producer.stop()

        asyncio.run(produce())
        wait_for(lambda: dead_letters(settings) == [settings.topics.flows],
                 what="the bad flows message's dead letter")
    finally:
        running.stop()

    running = start_processors(settings, log)
    try:
        pushed(running, settings, "after")  # read past the bad message again
    finally:
        running.stop()
    assert dead_letters(settings) == [settings.topics.flows]
