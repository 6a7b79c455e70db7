"""Where the tail starts reading a partition for a run's end: the two offsets of the argument in
producers/run_results.py, read from Kafka.

- `end(partition)`, a handle's *mark*: the partition's end offset (ListOffsets), or one read
  less than `_END_CACHE_S` ago (any end offset read before a start is sent is at or below every
  event the run will write; a stale one only means reading more). Starts asked for at once share
  one ListOffsets: its answer, whenever it was asked, comes before any of their sends.
- `committed(partition)`: the processors' committed offset C. They commit only after ClickHouse
  has the rows of everything below it (docs/processors.md, steps 5 to 7), so every event below C
  is in ClickHouse; no commit yet: the partition's first offset.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Final

from aiokafka import AIOKafkaConsumer, TopicPartition

if TYPE_CHECKING:
    from aiokafka.admin import AIOKafkaAdminClient

    from steplog.kafka import Kafka

__all__ = ["RunEndOffsets"]

_END_CACHE_S: Final = 1.0


class RunEndOffsets:
    """The end and committed offsets of the events topic's partitions, through the tail's
    consumer (and an admin client for the processors' group, made when first needed). Lives on
    the tail's loop, as long as its consumer."""

    def __init__(
        self, consumer: AIOKafkaConsumer, bootstrap: Kafka, topic: str, processors_group: str
    ) -> None:
        self._consumer = consumer
        self._bootstrap = bootstrap
        self._topic = topic
        self._processors_group = processors_group
        self._admin: AIOKafkaAdminClient | None = None
        self._known_ends: dict[int, tuple[float, int]] = {}
        self._end_queries: dict[int, asyncio.Task[int]] = {}

    async def end(self, partition: int) -> int:
        """The partition's end offset, as of at most `_END_CACHE_S` ago (module doc)."""
        known = self._known_ends.get(partition)
        if known is not None and time.monotonic() - known[0] <= _END_CACHE_S:
            return known[1]
        query = self._end_queries.get(partition)
        if query is None:
            query = asyncio.create_task(self._query_end(TopicPartition(self._topic, partition)))
            self._end_queries[partition] = query
        return await asyncio.shield(query)

    async def committed(self, partition: int) -> int:
        """The processors' committed offset of the partition; its first offset when none."""
        if self._admin is None:
            # Imported here, as the admin client is made: the SDK's import does not pay for it.
            from steplog.kafka import admin_client

            admin = admin_client(self._bootstrap)
            await admin.start()
            self._admin = admin
        tp = TopicPartition(self._topic, partition)
        offsets = await self._admin.list_consumer_group_offsets(
            self._processors_group, partitions=[tp]
        )
        committed = offsets.get(tp)
        if committed is not None and committed.offset >= 0:
            return int(committed.offset)
        first: dict[TopicPartition, int] = await self._consumer.beginning_offsets([tp])
        return first[tp]

    async def close(self) -> None:
        """Close the admin client, if one was made (the consumer is the tail's to stop)."""
        admin, self._admin = self._admin, None
        if admin is not None:
            await admin.close()

    async def _query_end(self, tp: TopicPartition) -> int:
        try:
            ends: dict[TopicPartition, int] = await self._consumer.end_offsets([tp])
            self._known_ends[tp.partition] = (time.monotonic(), ends[tp])
            return ends[tp]
        finally:
            self._end_queries.pop(tp.partition, None)
