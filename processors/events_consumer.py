"""The fold's feed: a plain aiokafka consumer on the events topic, one batch at a time.

Why not a faust agent: faust's stream costs about 150 µs per event (event-loop iterations,
tasks and waits per message), which capped the processors at a few thousand events/s whatever
the fold cost; `getmany` hands over what the fetcher has buffered in one call
(BENCHMARKS.md, "Instrumentation pipeline").

A batch is whatever `getmany` returns, up to `max_records`: idle, it returns as soon as an
event arrives (the wait adds no latency); under load, it returns everything fetched while the
previous batch was processed. aiokafka's fetcher keeps fetching in the background meanwhile,
so fetching overlaps processing. Per batch, in order (docs/processors.md):

1. `process(records)`: decode, fold, carry out the effects, write the rows, put the states in
   the store (`FoldHost.process_events`);
2. `store.flush()`: the states' changelog writes, acknowledged;
3. commit the offsets after the batch's last records.

So a committed offset is never ahead of the states, rows and messages of the events before it.
One batch at a time over every partition of this process: a partition's events are handled in
log order and a run's state is never updated by two batches at once.

Partitions come from the consumer group `<prefix>processors` (`ProcessorConfig.app_id`; the
faust agents have a group of their own: faust assigns with a protocol of its own). The
rebalance listener takes the same lock as a batch: a revocation waits for the batch in hand to
be committed, then forgets the partitions' states;
an assignment reads the new partitions' states back from the changelog, then calls `recovered`
(the timer heap and the parents' index are rebuilt from every state). Records fetched for a
partition whose states are not (or no longer) held, or fetched before a rebalance and handed
over after it, are not processed: the consumer seeks back to the first of them, so they are
fetched again once the partition's states are held (or by the partition's new owner).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from .run_store import RunStore

__all__ = ["EventsConsumer", "Record"]

log = logging.getLogger("steplog.processors")


class Record(Protocol):
    """A consumed Kafka message as the hosts read it (aiokafka's ConsumerRecord, faust's
    Message)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


ProcessBatch = Callable[[Sequence[Record]], Awaitable[None]]


class EventsConsumer:
    """Feeds the events topic to `process` in batches and commits after each (module doc)."""

    def __init__(
        self,
        *,
        bootstrap: str,
        group_id: str,
        topic: str,
        store: RunStore,
        process: ProcessBatch,
        recovered: Callable[[], Awaitable[None]],
        max_records: int,
        max_fetch_bytes: int,
        poll_ms: int = 1000,
    ) -> None:
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.topic = topic
        self.store = store
        self.process = process
        self.recovered = recovered
        self.max_records = max_records
        self.max_fetch_bytes = max_fetch_bytes
        self.poll_ms = poll_ms
        self._lock = asyncio.Lock()
        self._rebalances = 0
        """Counts rebalance callbacks: a batch fetched before one is not processed after it."""
        self._failure: BaseException | None = None

    async def run(self) -> None:
        """Consume until cancelled (the app stopping) or until a batch or a recovery fails."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=self.max_fetch_bytes,
        )
        consumer.subscribe([self.topic], listener=_Listener(self))
        await self.store.start()
        try:
            await consumer.start()
            try:
                while True:
                    await self._next_batch(consumer)
            finally:
                await consumer.stop()
        finally:
            await self.store.stop()

    async def _next_batch(self, consumer: AIOKafkaConsumer) -> None:
        rebalances = self._rebalances
        # Outside the lock: getmany waits while a rebalance is in progress, and the rebalance
        # waits for the lock in its callbacks.
        fetched = await consumer.getmany(timeout_ms=self.poll_ms, max_records=self.max_records)
        if self._failure is not None:
            raise self._failure
        if not fetched:
            return
        async with self._lock:
            owned = self.store.partitions if rebalances == self._rebalances else frozenset()
            batch: list[Record] = []
            ends: dict[TopicPartition, int] = {}
            for tp, records in fetched.items():
                if tp.partition in owned:
                    batch.extend(records)
                    ends[tp] = records[-1].offset + 1
                elif tp in consumer.assignment():
                    consumer.seek(tp, records[0].offset)
            if not batch:
                return
            await self.process(batch)
            await self.store.flush()
            try:
                await consumer.commit(ends)
            except KafkaError as exc:
                # The group moved on (this member timed out, or is rejoining). The batch is
                # done and its states are in the changelog: whoever consumes the partitions
                # next folds these events again from those states, which changes nothing.
                log.warning("events: commit of %s failed, the events will be delivered again: "
                            "%r", {tp.partition: end for tp, end in ends.items()}, exc)

    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:  # the batch in hand finishes (and commits) first
            self._rebalances += 1
            self.store.release([tp.partition for tp in revoked])

    async def _assigned(self, assigned: set[TopicPartition]) -> None:
        async with self._lock:
            self._rebalances += 1
            try:
                await self.store.recover([tp.partition for tp in assigned])
                await self.recovered()
            except Exception as exc:
                # aiokafka only logs a listener's exception; the loop raises it instead, so a
                # process that cannot read its states stops rather than skipping their events.
                self._failure = exc


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, consumer: EventsConsumer) -> None:
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.consumer._revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.consumer._assigned(assigned)
