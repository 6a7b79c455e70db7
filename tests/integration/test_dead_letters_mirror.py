"""The processors mirror the DLQ topic into the `dead_letters` table (processors/
dead_letters_host.py), which the dashboard reads instead of Kafka: a poison event becomes one row
naming its reason and where it was read, one row still when the mirror reads the DLQ again after
a restart, and what is not a dead letter on the DLQ is skipped without stopping the mirror."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from steplog.processors.dead_letters_host import dead_letters_group
from steplog.projections.dead_letter_reads import dead_letter_page
from steplog.projections.log_reader import topic_end_offsets
from steplog.projections.read_models import DeadLetterView
from steplog.settings import Settings
from steplog.server.stack import processor_config
from steplog.topics import topic_partitions
from tests.conftest import RunningProcessors, start_processors, wait_for

POISON = b'{"type": "step.completed", "attempt": 0}'


def produce(settings: Settings, topic: str, value: bytes | None, *, key: bytes | None = None,
            partition: int | None = None) -> tuple[int, int]:
    """Send one record; its (partition, offset)."""

    async def send() -> tuple[int, int]:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        try:
            sent = await producer.send_and_wait(topic, value, key=key, partition=partition)
        finally:
            await producer.stop()
        return sent.partition, sent.offset

    return asyncio.run(send())


def listed(running: RunningProcessors) -> list[DeadLetterView]:
    """The dead letters as the dashboard reads them (the processors' SQL endpoint)."""
    page = dead_letter_page(running.sql, running.settings.clickhouse_database, limit=500)
    return page.dead_letters


def mirror_group(settings: Settings) -> str:
    return dead_letters_group(processor_config(settings))


def mirror_committed_to_end(settings: Settings) -> bool:
    """Whether the mirror has committed the whole DLQ topic (so it wrote every row first)."""

    async def check() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(mirror_group(settings))
        finally:
            await admin.close()
        ends = await topic_end_offsets(settings.kafka_bootstrap, settings.topics.dlq)
        committed = {tp.partition: meta.offset for tp, meta in offsets.items()}
        return all(committed.get(partition, 0) >= end for partition, end in enumerate(ends))

    return asyncio.run(check())


def rewound_mirror(settings: Settings) -> bool:
    """Commit the mirror's group back to the DLQ's beginning, as if the processors had died
    before any commit; False while the group still has a member (a stopped static member holds
    it until its session times out)."""

    async def rewind() -> bool:
        partitions = await topic_partitions(settings.kafka_bootstrap, settings.topics.dlq)
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                    group_id=mirror_group(settings), enable_auto_commit=False)
        await consumer.start()
        try:
            assigned = [TopicPartition(settings.topics.dlq, p) for p in partitions]
            consumer.assign(assigned)
            await consumer.commit({tp: 0 for tp in assigned})
        except KafkaError:
            return False
        finally:
            await consumer.stop()
        return True

    return asyncio.run(rewind())


def test_a_poison_event_is_one_dead_letter_row_even_when_mirrored_again(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = stack_settings
    log = tmp_path / "processors.log"
    running = start_processors(settings, log)
    try:
        partition, offset = produce(settings, settings.topics.events, POISON, key=b"run-\xff")
        wait_for(lambda: len(listed(running)) == 1, what="the poison event's dead letter row")
        (letter,) = listed(running)
        assert (letter.source_topic, letter.partition, letter.offset) == (
            settings.topics.events, partition, offset
        )
        assert (letter.field, letter.reason) == ("event_id", "required field is missing")
        assert letter.preview == POISON.decode()
        assert (letter.value_bytes, letter.value_truncated) == (len(POISON), False)
        assert letter.key == "cnVuLf8="  # not UTF-8: its base64
        wait_for(lambda: mirror_committed_to_end(settings), what="the mirror's commit")
    finally:
        running.stop()

    wait_for(lambda: rewound_mirror(settings), what="the mirror's group rewound")
    assert not mirror_committed_to_end(settings)
    running = start_processors(settings, log)
    try:
        wait_for(lambda: mirror_committed_to_end(settings),
                 what="the mirror reading the DLQ again to its end")
        assert listed(running) == [letter]
    finally:
        running.stop()


def test_what_is_not_a_dead_letter_on_the_dlq_does_not_stop_the_mirror(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = stack_settings
    log = tmp_path / "processors.log"
    running = start_processors(settings, log)
    try:
        # On every partition, ahead of the dead letter to come: whichever it lands on, the
        # mirror reads past a garbage record and a tombstone to get to it.
        dlq_partitions = asyncio.run(
            topic_partitions(settings.kafka_bootstrap, settings.topics.dlq)
        )
        for dlq_partition in dlq_partitions:
            produce(settings, settings.topics.dlq, b"not a dead letter", partition=dlq_partition)
            produce(settings, settings.topics.dlq, None, key=b"k", partition=dlq_partition)
        _, offset = produce(settings, settings.topics.events, POISON)
        wait_for(lambda: [letter.offset for letter in listed(running)] == [offset],
                 what="the poison event's dead letter row behind the garbage")
        wait_for(lambda: mirror_committed_to_end(settings), what="the mirror's commit")
        skipped = 2 * len(dlq_partitions)
        assert f"is not a dead letter, skipped ({skipped} so far)" in log.read_text(
            errors="replace"
        )
        assert running.process.poll() is None
    finally:
        running.stop()
