"""The sender's chunks as Kafka takes them: split by partition, sent as whole record batches.

A chunk is split by partition, computed as the producer's default partitioner does (murmur2 of
the key, so a run's events share a partition and keep their order in it), and each
partition's events go out as record batches (`send_batch`), one after the other, each only
once the previous one was acknowledged: a failed batch is retried, with everything behind it,
before anything else of its partition is sent (head-of-line). Per event, the cost is appending
it to a batch, not a coroutine and a future.

Records are signed (schemas/record_signing.py) as they are appended, with the sender's own
key: the buffer before keeps (key, value) only, so an event waiting there costs no header bytes,
and a retried one is signed again alike (the MAC depends only on the topic and the value).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    UnknownProducerId,
)
from aiokafka.partitioner import DefaultPartitioner

from steplog.errors import SendError
from steplog.schemas.record_signing import RecordSigner

from .producer_watch import DeliveryProgress

__all__ = [
    "PRODUCER_LOST",
    "Acknowledged",
    "ChunkOutcome",
    "ChunkSender",
    "KeyPartitions",
    "Message",
    "PartitionOutcome",
    "ProducerDiscarded",
    "Refused",
    "is_retriable",
    "key_partition",
    "send_partition",
]

Message = tuple[bytes, bytes]
"""An encoded event: (key, value)."""

_PARTITION_CACHE_KEYS: Final = 100_000
"""Partition of each key seen lately (murmur2 in pure Python costs microseconds per key)."""
_default_partitioner = DefaultPartitioner()


def key_partition(key: bytes, partitions: list[int]) -> int:
    """The partition of `partitions` a message keyed `key` goes to with the producers' default
    partitioner (murmur2 of the key): where a run's events are, keyed by its run id."""
    partition: int = _default_partitioner(key, partitions, partitions)
    return partition


class KeyPartitions:
    """Groups messages by the partition of their key, remembering recent keys' partitions."""

    def __init__(self) -> None:
        self._partitions: list[int] = []
        self._partition_of: dict[bytes, int] = {}

    def group(self, partitions: list[int], chunk: Sequence[Message]) -> dict[int, list[Message]]:
        """The chunk's messages by partition of `partitions` (sorted), each list in order."""
        if partitions != self._partitions:
            # New or changed partition count (a topic's partitions can only be added to):
            # keys are hashed again against the new list, as the producer itself would.
            self._partitions = partitions
            self._partition_of.clear()
        partition_of = self._partition_of
        if len(partition_of) > _PARTITION_CACHE_KEYS:
            partition_of.clear()
        groups: dict[int, list[Message]] = {}
        for message in chunk:
            key = message[0]
            partition = partition_of.get(key)
            if partition is None:
                partition = key_partition(key, partitions)
                partition_of[key] = partition
            group = groups.get(partition)
            if group is None:
                groups[partition] = [message]
            else:
                group.append(message)
        return groups


class ProducerDiscarded(Exception):
    """What the batches a discarded producer still held fail with; they are re-sent."""


PRODUCER_LOST: Final = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    ProducerFenced,
    ProducerClosed,
    ProducerDiscarded,
)
"""After these a producer cannot deliver again: its sequence state is gone (or it is).
Retried through a new producer, never counted as refused."""


def is_retriable(exc: BaseException) -> bool:
    if isinstance(exc, (KafkaTimeoutError, *PRODUCER_LOST)):
        # KafkaTimeoutError: aiokafka could not queue a batch or find metadata in time, the
        # broker being away (aiokafka does not mark it retriable). The others: a new producer
        # delivers what this one could not.
        return True
    if isinstance(exc, KafkaError):
        return bool(getattr(exc, "retriable", False))
    return isinstance(exc, (ConnectionError, asyncio.TimeoutError))


@dataclass
class PartitionOutcome:
    """What became of one partition's events in one attempt."""

    retry: list[Message] = field(default_factory=list)
    """Not delivered, in order: the failed batch and everything behind it."""
    alone: int = 0
    """How many of `retry`'s first events must go one per batch (a batch of them was refused)."""
    cause: BaseException | None = None
    """The retriable failure, if any (an outage, not a bad record)."""
    spoiled: bool = False
    """The producer must not send again (a gap in its sequence numbers, or it is gone)."""


@dataclass
class ChunkOutcome:
    retry: list[Message]
    alone: dict[int, int]
    """By partition: `PartitionOutcome.alone`."""
    cause: BaseException | None
    spoiled: bool


Acknowledged = Callable[[int], None]
"""Told how many events Kafka acknowledged."""
Refused = Callable[[int, BaseException], None]
"""Told how many events Kafka refused for good, and why."""


class ChunkSender:
    """Sends chunks to one topic, each partition's events as record batches (`send_partition`),
    the partitions side by side; tells what Kafka acknowledged and what it refused for good."""

    def __init__(
        self,
        topic: str,
        acknowledged: Acknowledged,
        refused: Refused,
        signer: RecordSigner | None = None,
    ) -> None:
        self.topic = topic
        self.signer = signer
        """Signs every record (None: records go unsigned)."""
        self._acknowledged = acknowledged
        self._refused = refused
        self._key_partitions = KeyPartitions()
        self.progress = DeliveryProgress()
        """Where the chunk being sent goes, and when Kafka last acknowledged anything."""

    async def send(
        self, producer: AIOKafkaProducer, chunk: list[Message], alone: dict[int, int]
    ) -> ChunkOutcome:
        """Send a chunk once; returns what should be tried again. `alone` (by partition) is
        the outcome of the previous attempt: events to send one per batch."""
        try:
            partitions = sorted(await producer.partitions_for(self.topic))
            groups = self._key_partitions.group(partitions, chunk)
        except Exception as exc:  # no metadata for the topic: nothing was sent
            if is_retriable(exc):
                return ChunkOutcome(chunk, alone, exc, False)
            self._refused(len(chunk), exc)
            return ChunkOutcome([], {}, None, False)
        self.progress.sending_to = list(groups)
        outcomes: list[PartitionOutcome] = await asyncio.gather(
            *[
                send_partition(
                    producer, self.topic, partition, messages, alone.get(partition, 0),
                    self._acknowledge, self._refused, self.signer,
                )
                for partition, messages in groups.items()
            ]
        )
        return ChunkOutcome(
            [message for outcome in outcomes for message in outcome.retry],
            {partition: o.alone for partition, o in zip(groups, outcomes) if o.alone},
            next((o.cause for o in outcomes if o.cause is not None), None),
            any(o.spoiled for o in outcomes),
        )

    def _acknowledge(self, count: int) -> None:
        self._acknowledged(count)
        self.progress.acknowledged_at = time.monotonic()


async def send_partition(
    producer: AIOKafkaProducer,
    topic: str,
    partition: int,
    messages: list[Message],
    alone: int,
    acknowledged: Acknowledged,
    refused: Refused,
    signer: RecordSigner | None = None,
) -> PartitionOutcome:
    """Send one partition's events in order, one record batch at a time, each batch after
    the previous one was acknowledged (so a failed batch is retried before anything behind
    it, head-of-line); the first `alone` events one per batch. Tells what was acknowledged
    and what refused; stops at the first failure."""
    start, total = 0, len(messages)
    while start < total:
        batch = producer.create_batch()
        limit = start + 1 if start < alone else total
        end = start
        while end < limit:
            key, value = messages[end]
            if signer is None:
                appended = batch.append(key=key, value=value, timestamp=None)
            else:
                appended = batch.append(
                    key=key, value=value, timestamp=None, headers=signer.headers(topic, value)
                )
            if appended is None:
                break  # full (the first event of a batch always fits, however large)
            end += 1
        batch.close()
        if end == start:  # not expected; never loop on an event no batch takes
            refused(1, SendError(
                f"an event of {len(messages[start][1])} bytes does not fit in a record "
                f"batch for topic {topic!r}"
            ))
            start += 1
            continue
        try:
            delivery = await producer.send_batch(batch, topic, partition=partition)
        except Exception as exc:
            # Not queued, so no sequence number was taken: the producer is still sound
            # unless the error says it is gone.
            return _after_failure(
                messages, start, end, alone, exc, isinstance(exc, PRODUCER_LOST), refused
            )
        try:
            await delivery
        except Exception as exc:
            # The producer numbered this batch (aiokafka numbers a batch when it first
            # leaves its queue, also to fail it there) and the broker never recorded the
            # numbers: its next batch to this partition would be OutOfOrderSequenceNumber.
            return _after_failure(messages, start, end, alone, exc, True, refused)
        acknowledged(end - start)
        start = end
    return PartitionOutcome()


def _after_failure(
    messages: list[Message],
    start: int,
    end: int,
    alone: int,
    exc: BaseException,
    spoiled: bool,
    refused: Refused,
) -> PartitionOutcome:
    """The batch messages[start:end] failed with `exc`: what to try again."""
    if is_retriable(exc):
        return PartitionOutcome(messages[start:], max(alone - start, 0), exc, spoiled)
    if end - start > 1:
        # Refused for good. The broker refuses a batch for one bad record; send its events
        # again one per batch, so that one bad event cannot cost the events around it.
        return PartitionOutcome(messages[start:], end - start, None, spoiled)
    refused(1, exc)
    return PartitionOutcome(messages[end:], max(alone - end, 0), None, spoiled)
