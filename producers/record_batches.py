"""The sender's events as Kafka takes them: by partition, as whole record batches.

Events are grouped by partition, computed as the producer's default partitioner does (murmur2
of the key, so a run's events share a partition and keep their order in it), and each
partition's events go out as record batches (`fill_batch`, then `send_batch`) by that
partition's lane (producers.partition_lanes, producers.delivery_loop). Per event, the cost is
appending it to a batch, not a coroutine and a future.

Records are signed (schemas/record_signing.py) as they are appended, with the sender's own
key: the buffer before keeps (key, value) only, so an event waiting there costs no header bytes,
and a retried one is signed again alike (the MAC depends only on the topic and the value).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
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
from aiokafka.producer.message_accumulator import BatchBuilder

from steplog.schemas.record_signing import RecordSigner

__all__ = [
    "PRODUCER_LOST",
    "KeyPartitions",
    "Message",
    "ProducerDiscarded",
    "fill_batch",
    "is_retriable",
    "key_partition",
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


def fill_batch(
    producer: AIOKafkaProducer,
    topic: str,
    entries: Sequence[tuple[bytes, bytes, bool]],
    signer: RecordSigner | None,
) -> tuple[BatchBuilder, int]:
    """A closed record batch of the first of `entries` (key, value, ...) that fit, and how
    many that is (0: not even the first fits, which a batch's first event always should)."""
    batch = producer.create_batch()
    count = 0
    for key, value, _ in entries:
        if signer is None:
            appended = batch.append(key=key, value=value, timestamp=None)
        else:
            appended = batch.append(
                key=key, value=value, timestamp=None, headers=signer.headers(topic, value)
            )
        if appended is None:
            break  # full (the first event of a batch always fits, however large)
        count += 1
    batch.close()
    return batch, count
