"""The tail: one consumer per client that reads the events topic for the ends of the runs that
handles wait for (producers/run_results.py has the argument for where it reads from).

One consumer per client, on the client's background loop (`ControlSender.submit`), serves every
handle waiting, so a caller waiting on hundreds of runs costs one consumer: no consumer group,
no commits, every partition assigned and paused. A partition is read (resumed) while a handle
waits on it, and for `_LINGER_S` after the last one is answered, so a caller that starts and
waits in a loop finds its partitions being read and takes its marks without a round trip. Only
records whose value names a run end are decoded, and only when a handle waits on their key or
to remember them: a partition being read keeps its last end events (`PartitionEnds`), so a
handle whose mark is behind the tail's position (the run ended before `result()` was called;
other runs' events were read meanwhile) is answered from memory instead of reading the
partition again. A mark below what the memory covers seeks the partition back to the mark; the
other handles waiting there read a few records twice, which changes nothing. A partition that
starts being read joins at the next fetch: at most `fetch_max_wait_ms` (`_FETCH_MAX_WAIT_MS`)
later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from steplog.errors import ResultTimeoutError, WorkflowError
from steplog.producers.run_end_lookup import RunEndLookup
from steplog.producers.run_end_offsets import RunEndOffsets
from steplog.producers.run_end_records import PartitionEnds, decode_run_end, is_run_end
from steplog.producers.sender import key_partition
from steplog.projections.queries import RunEnd

if TYPE_CHECKING:
    from steplog.kafka import Kafka

__all__ = ["CoroutineRunner", "RunEndTail"]

log = logging.getLogger("steplog.client")

T = TypeVar("T")

_LINGER_S: Final = 30.0
_FETCH_MAX_WAIT_MS: Final = 50
_POLL_MS: Final = 500
_READ_RETRY_S: Final = 1.0


class CoroutineRunner(Protocol):
    """Where the tail's coroutines run (the client's ControlSender)."""

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]: ...


@dataclass(eq=False)
class _Waiter:
    key: bytes
    project: str
    start: int
    future: asyncio.Future[RunEnd]


@dataclass
class _PartitionState:
    reading: bool = False
    ends: PartitionEnds = field(default_factory=lambda: PartitionEnds(0))
    waiting: int = 0
    idle_since: float = 0.0


class RunEndTail:
    """Reads the events topic for the ends of the runs that handles wait for (module doc).

    Every method runs on the client's background loop; a forked child (a new loop) starts
    afresh.
    """

    def __init__(
        self,
        runner: CoroutineRunner,
        bootstrap: Kafka,
        topic: str,
        *,
        processors_group: str,
        max_event_bytes: int,
        lookup: RunEndLookup,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.processors_group = processors_group
        self.max_event_bytes = max_event_bytes
        self._runner = runner
        self._lookup = lookup
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reset()

    def _reset(self) -> None:
        self._consumer: AIOKafkaConsumer | None = None
        self._offsets: RunEndOffsets | None = None
        self._partitions: list[int] = []
        self._states: dict[int, _PartitionState] = {}
        self._waiters: dict[bytes, list[_Waiter]] = {}
        self._starting: asyncio.Lock | None = None
        self._wake: asyncio.Event | None = None
        self._reader: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------------ from any thread

    def submit_wait(
        self, run_id: str, project: str, workflow: str | None, mark: int | None,
        timeout: float | None,
    ) -> Future[RunEnd]:
        """`wait` on the tail's loop, given up (ResultTimeoutError) after `timeout` seconds."""
        return self._runner.submit(self._wait_at_most(run_id, project, workflow, mark, timeout))

    def close(self, timeout: float = 30.0) -> None:
        """Stop reading (from any thread); handles still waiting get a WorkflowError."""
        if self._loop is not None:
            self._runner.submit(self._close()).result(timeout)

    # ------------------------------------------------------------------------ on the tail's loop

    def partition_of(self, run_id: str) -> int:
        """The partition of the events topic holding the run's events (the producers' default
        partitioner: murmur2 of the key, over every partition)."""
        return key_partition(run_id.encode(), self._partitions)

    async def mark(self, run_id: str) -> int:
        """An offset at or below every event the run will write from now on
        (producers/run_results.py).
        Call it before sending what starts the run."""
        consumer = await self._ready()
        partition = self.partition_of(run_id)
        if self._states[partition].reading:  # the tail's position: at or below the end
            position: int = await consumer.position(TopicPartition(self.topic, partition))
            return position
        assert self._offsets is not None
        return await self._offsets.end(partition)

    async def wait(self, run_id: str, project: str, mark: int | None) -> RunEnd:
        """The run's end: read from `mark`, or, with no mark, looked up (the order of the
        two matters: producers/run_results.py)."""
        await self._ready()
        partition = self.partition_of(run_id)
        if mark is None:
            assert self._offsets is not None
            committed = await self._offsets.committed(partition)  # first, then the lookup
            found = await asyncio.to_thread(self._lookup, run_id, project)
            if found is not None:
                return found
            mark = committed
        waiter = _Waiter(
            run_id.encode(), project, mark, asyncio.get_running_loop().create_future()
        )
        self._add(partition, waiter)
        try:
            return await waiter.future
        finally:
            self._remove(partition, waiter)

    async def _wait_at_most(
        self, run_id: str, project: str, workflow: str | None, mark: int | None,
        timeout: float | None,
    ) -> RunEnd:
        try:
            async with asyncio.timeout(timeout) as deadline:
                return await self.wait(run_id, project, mark)
        except TimeoutError:
            if deadline.expired():
                raise ResultTimeoutError(run_id, workflow, timeout or 0.0) from None
            raise

    async def _close(self) -> None:
        if self._loop is not asyncio.get_running_loop():
            return  # nothing started on this loop (or a forked child's copy)
        reader, consumer, offsets = self._reader, self._consumer, self._offsets
        waiters = [w for ws in self._waiters.values() for w in ws]
        self._reset()
        self._loop = None
        for waiter in waiters:
            if not waiter.future.done():
                waiter.future.set_exception(WorkflowError("the client was closed"))
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if consumer is not None:
            await consumer.stop()
        if offsets is not None:
            await offsets.close()

    # ------------------------------------------------------------------------ mechanics

    async def _ready(self) -> AIOKafkaConsumer:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._reset()  # first use, or a new loop (after a fork, or a close)
            self._loop = loop
            self._starting = asyncio.Lock()
            self._wake = asyncio.Event()
        if self._consumer is not None:
            return self._consumer
        assert self._starting is not None
        async with self._starting:  # concurrent first calls start one consumer
            if self._consumer is None:
                await self._start()
        assert self._consumer is not None
        return self._consumer

    async def _start(self) -> None:
        # Imported here: they load aiokafka's admin client, which the SDK's import does not pay
        # for until a handle waits.
        from steplog.kafka import consumer as kafka_consumer
        from steplog.kafka import start as kafka_start
        from steplog.topics import topic_partitions

        partitions = await topic_partitions(self.bootstrap, self.topic)
        consumer = kafka_consumer(
            self.bootstrap,
            client_id="steplog-client-results",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=_FETCH_MAX_WAIT_MS,
            max_partition_fetch_bytes=max(self.max_event_bytes, 1024 * 1024),
        )
        await kafka_start(consumer, self.bootstrap)
        try:
            assigned = [TopicPartition(self.topic, p) for p in partitions]
            consumer.assign(assigned)
            consumer.pause(*assigned)
        except BaseException:
            await consumer.stop()
            raise
        self._partitions = partitions
        self._states = {p: _PartitionState() for p in partitions}
        self._consumer = consumer
        self._offsets = RunEndOffsets(consumer, self.bootstrap, self.topic, self.processors_group)
        self._reader = asyncio.create_task(self._read(consumer), name="steplog run ends")

    def _add(self, partition: int, waiter: _Waiter) -> None:
        # No await in here: the reader cannot read anything between the check and the
        # registration.
        state = self._states[partition]
        self._waiters.setdefault(waiter.key, []).append(waiter)
        state.waiting += 1
        if not state.reading:
            self._read_from(partition, waiter.start)
            state.reading = True
            assert self._consumer is not None and self._wake is not None
            self._consumer.resume(TopicPartition(self.topic, partition))
            self._wake.set()
            return
        if not state.ends.covers(waiter.start):
            self._read_from(partition, waiter.start)  # the mark is older than the memory
            return
        for offset, value in state.ends.find(waiter.key, waiter.start):
            if value is None:  # too large to keep: read it again
                assert self._consumer is not None
                self._consumer.seek(TopicPartition(self.topic, partition), offset)
                return
            self._resolve([waiter], offset, value)
            if waiter.future.done():
                return

    def _read_from(self, partition: int, offset: int) -> None:
        assert self._consumer is not None
        self._consumer.seek(TopicPartition(self.topic, partition), offset)
        self._states[partition].ends = PartitionEnds(offset)

    def _remove(self, partition: int, waiter: _Waiter) -> None:
        waiters = self._waiters.get(waiter.key, [])
        if waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._waiters[waiter.key]
            state = self._states.get(partition)
            if state is not None:
                state.waiting -= 1
                if state.waiting == 0:
                    state.idle_since = time.monotonic()

    def _resolve(self, waiters: list[_Waiter], offset: int, value: bytes) -> None:
        ended = decode_run_end(value, max_bytes=self.max_event_bytes)
        if ended is None:
            return
        for waiter in waiters:
            if (
                not waiter.future.done()
                and waiter.start <= offset
                and waiter.project == ended.project
            ):
                waiter.future.set_result(ended)

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        try:
            await self._read_forever(consumer)
        except BaseException as exc:  # a bug, or closing: nobody must wait for ever
            self._fail_waiting(exc)
            raise

    async def _read_forever(self, consumer: AIOKafkaConsumer) -> None:
        assert self._wake is not None
        wake = self._wake
        while True:
            if not any(state.reading for state in self._states.values()):
                wake.clear()
                await wake.wait()
                continue
            try:
                batches: dict[TopicPartition, list[Any]] = await consumer.getmany(
                    timeout_ms=_POLL_MS
                )
            except KafkaError as exc:  # the consumer retries what it can; this it could not
                log.warning("reading %s for run ends failed: %r", self.topic, exc)
                self._fail_waiting(exc)
                await asyncio.sleep(_READ_RETRY_S)
                continue
            for tp, records in batches.items():
                state = self._states[tp.partition]
                if not state.reading:
                    continue
                for record in records:
                    value: bytes | None = record.value
                    if value is None or not is_run_end(value):
                        continue
                    key: bytes = record.key or b""
                    state.ends.add(record.offset, key, value)
                    waiters = self._waiters.get(key)
                    if waiters:
                        self._resolve(waiters, record.offset, value)
            self._stop_idle(consumer)

    def _stop_idle(self, consumer: AIOKafkaConsumer) -> None:
        now = time.monotonic()
        for partition, state in self._states.items():
            if state.reading and state.waiting == 0 and now - state.idle_since > _LINGER_S:
                consumer.pause(TopicPartition(self.topic, partition))
                state.reading = False
                state.ends = PartitionEnds(0)

    def _fail_waiting(self, exc: BaseException) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.future.done():
                    waiter.future.set_exception(
                        WorkflowError(f"reading {self.topic!r} for the end of a run failed: "
                                      f"{exc!r}")
                    )
