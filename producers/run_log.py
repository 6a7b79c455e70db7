"""Reading one run's events back from its partition of the events topic (for the worker).

Before a pass, the worker reads the run's partition after the position its command's history
reflects, to the partition's end, so that what was written after the command was issued is
found rather than done again. When it does not know the run's input (a run it did not start
itself), it also looks back for the run's `run.started`.

One consumer serves every read, with no consumer group and no commits: every partition is
assigned and paused, and a read seeks, resumes, fetches up to a known stop offset and pauses
again. Reads that arrive while one is being served wait and are served together, one fetch per
partition from the lowest start asked for: under load, many runs' reads cost one round trip.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition

import steplog.kafka as kafka
from steplog.errors import InvalidEventError, TopicError
from steplog.schemas.codec import decode_event
from steplog.schemas.events import Event, RunStarted
from steplog.topics import topic_partitions

from .history import RunStart
from .record_batches import key_partition

__all__ = ["RunLogReader"]

log = logging.getLogger("steplog.worker")

_FIRST_WINDOW: Final = 1000
_WINDOW_GROWTH: Final = 8
_RUN_STARTED_TAG: Final = b'"type":"run.started"'


@dataclass
class _Read:
    partition: int
    start: int
    stop: int | None
    """Exclusive; None: the partition's end when the read is served."""
    key: bytes
    values: list[bytes] = field(default_factory=list)
    future: asyncio.Future[tuple[list[bytes], int]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class RunLogReader:
    """Reads the events of one run (key = run id) from a range of its partition."""

    def __init__(self, bootstrap: kafka.Kafka, topic: str, *, max_event_bytes: int) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.max_event_bytes = max_event_bytes
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[int] = []
        self._pending: list[_Read] = []
        self._wake = asyncio.Event()
        self._server: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._partitions = await topic_partitions(self.bootstrap, self.topic)
        consumer = kafka.consumer(
            self.bootstrap,
            client_id="steplog-worker-history",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=5,
            max_partition_fetch_bytes=max(self.max_event_bytes, 1024 * 1024),
        )
        await kafka.start(consumer, self.bootstrap)
        assigned = [TopicPartition(self.topic, p) for p in self._partitions]
        consumer.assign(assigned)
        consumer.pause(*assigned)
        self._consumer = consumer
        self._server = asyncio.create_task(self._serve(), name="steplog run log reader")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.cancel()
            await asyncio.gather(self._server, return_exceptions=True)
        for read in self._pending:
            if not read.future.done():
                read.future.cancel()
        if self._consumer is not None:
            await self._consumer.stop()

    def partition_of(self, run_id: str) -> int:
        """The partition a run's events are on (the producers' default partitioner)."""
        return key_partition(run_id.encode(), self._partitions)

    async def read_after(
        self, partition: int, offset: int | None, run_id: str
    ) -> tuple[list[Event], int]:
        """The run's events after `offset` (all of the partition when None) up to the end it
        has now, and that end (the next offset to be written)."""
        start = 0 if offset is None else offset + 1
        values, stop = await self._read(partition, start, None, run_id)
        return [event for event in map(self._decode, values) if event is not None], stop

    async def find_run_start(
        self, partition: int, run_id: str, before: int | None
    ) -> RunStart | None:
        """The run's `run.started`, searched backwards from offset `before` (exclusive; None:
        the partition's end), in windows that grow: a run's start is usually near."""
        if before is None:
            before = await self._end(partition)
        stop, window = before, _FIRST_WINDOW
        while stop > 0:
            start = max(0, stop - window)
            values, _ = await self._read(partition, start, stop, run_id)
            for value in values:
                if _RUN_STARTED_TAG in value:
                    event = self._decode(value)
                    if isinstance(event, RunStarted):
                        return RunStart.from_event(event)
            stop, window = start, window * _WINDOW_GROWTH
        return None

    # ------------------------------------------------------------------------ serving reads

    async def _end(self, partition: int) -> int:
        assert self._consumer is not None
        tp = TopicPartition(self.topic, partition)
        ends: dict[TopicPartition, int] = await self._consumer.end_offsets([tp])
        return ends[tp]

    async def _read(
        self, partition: int, start: int, stop: int | None, run_id: str
    ) -> tuple[list[bytes], int]:
        if partition not in self._partitions:
            raise TopicError(
                f"partition {partition} of {self.topic!r} does not exist (it has "
                f"{len(self._partitions)})"
            )
        read = _Read(partition, start, stop, run_id.encode())
        self._pending.append(read)
        self._wake.set()
        return await read.future

    async def _serve(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            try:
                await self._serve_batch(batch)
            except asyncio.CancelledError:
                for read in batch:
                    if not read.future.done():
                        read.future.cancel()
                raise
            except Exception as exc:
                for read in batch:
                    if not read.future.done():
                        read.future.set_exception(exc)

    async def _serve_batch(self, batch: list[_Read]) -> None:
        consumer = self._consumer
        assert consumer is not None
        by_partition: dict[TopicPartition, list[_Read]] = {}
        for read in batch:
            by_partition.setdefault(TopicPartition(self.topic, read.partition), []).append(read)
        open_ended = [
            tp for tp, reads in by_partition.items() if any(r.stop is None for r in reads)
        ]
        ends: dict[TopicPartition, int] = (
            await consumer.end_offsets(open_ended) if open_ended else {}
        )
        ranges: dict[TopicPartition, tuple[int, int]] = {}
        for tp, reads in by_partition.items():
            for read in reads:
                if read.stop is None:
                    read.stop = ends[tp]
            start = min(read.start for read in reads)
            stop = max(read.stop or 0 for read in reads)
            if stop > start:
                ranges[tp] = (start, stop)
        active = set(ranges)
        for tp in active:
            consumer.seek(tp, ranges[tp][0])
        try:
            if active:
                consumer.resume(*active)
            while active:
                fetched: dict[TopicPartition, list[Any]] = await consumer.getmany(
                    *active, timeout_ms=1000
                )
                for tp, messages in fetched.items():
                    reads = by_partition[tp]
                    for message in messages:
                        for read in reads:
                            if (
                                read.start <= message.offset < (read.stop or 0)
                                and message.key == read.key
                            ):
                                read.values.append(message.value)
                for tp in list(active):
                    if await consumer.position(tp) >= ranges[tp][1]:
                        active.discard(tp)
                        consumer.pause(tp)
        finally:
            if active:
                consumer.pause(*active)
        for read in batch:
            if not read.future.done():
                read.future.set_result((read.values, read.stop or 0))

    def _decode(self, value: bytes) -> Event | None:
        try:
            return decode_event(value, max_bytes=max(self.max_event_bytes, len(value)))
        except InvalidEventError as exc:
            # Not a valid event (the processors dead-letter it): it cannot be a step of ours.
            log.warning("skipping an invalid event on %s: %s", self.topic, exc)
            return None
