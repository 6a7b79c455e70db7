"""Reading a topic from its first offset to the end it had when reading began.

The end is fixed up front (the high watermark of every partition), so a reader of a busy topic
finishes instead of chasing new messages; that is what replay and the demo's read-back need.
No consumer group is joined and no offset committed: reading the log never disturbs the
processors' own positions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass

from aiokafka import TopicPartition

from steplog import kafka
from steplog.topics import topic_partitions


@dataclass(frozen=True)
class LogRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    """None for a tombstone (a record with a null value)."""
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()
    """The record's headers (a signed record's signature: schemas/record_signing.py)."""


async def topic_end_offsets(bootstrap: kafka.Kafka, topic: str) -> list[int]:
    """The end offset (next offset to be written) of every partition of a topic."""
    partitions = await topic_partitions(bootstrap, topic)
    consumer = kafka.consumer(bootstrap, enable_auto_commit=False)
    await kafka.start(consumer, bootstrap)
    try:
        assigned = [TopicPartition(topic, p) for p in partitions]
        ends = await consumer.end_offsets(assigned)
        return [ends[tp] for tp in assigned]
    finally:
        await consumer.stop()


async def read_log(
    bootstrap: kafka.Kafka,
    topic: str,
    *,
    partitions: Collection[int] | None = None,
    fetch_max_bytes: int = 50 * 1024 * 1024,
) -> AsyncIterator[LogRecord]:
    """Yield every record of `topic` (of `partitions` only, if given) up to its current end,
    partition by partition in offset order (records of different partitions interleave)."""
    consumer = kafka.consumer(
        bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=fetch_max_bytes,
        max_partition_fetch_bytes=fetch_max_bytes,
    )
    if partitions is None:
        partitions = await topic_partitions(bootstrap, topic)
    await kafka.start(consumer, bootstrap)
    try:
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        remaining = {tp for tp in assigned if ends[tp] > await consumer.position(tp)}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, messages in batches.items():
                for message in messages:
                    if message.offset >= ends[tp]:
                        break
                    yield LogRecord(
                        partition=tp.partition,
                        offset=message.offset,
                        key=message.key,
                        value=message.value,
                        timestamp_ms=message.timestamp,
                        headers=tuple(message.headers),
                    )
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
