"""A plain aiokafka consumer that feeds a topic to its host batch after batch, keeps the
host's states in changelogs (processors/state_store.py) and commits after them: the fold's
(events topic, run states, rows to write) and the signals' (signals topic, each name's waits
and triggers, no rows). Each batch's completion overlaps the handling of the next ones.

Why not faust: faust's stream costs about 150 µs per message (event-loop iterations, tasks and
waits per message), which capped the processors at a few thousand events/s whatever the fold
cost; `getmany` hands over what the fetcher has buffered in one call (BENCHMARKS.md,
"Instrumentation pipeline"). And faust handed a signal to its agent 9-10 ms after it was sent,
the largest part of the resume of a waiting run when the signals were a faust agent.

A batch is whatever `getmany` returns, up to `max_records`: idle, it returns as soon as a
message arrives (the wait adds no latency); under load, it returns everything fetched while the
previous batch was handled. aiokafka's fetcher keeps fetching in the background meanwhile,
so fetching overlaps processing. Per batch, in order (docs/processors.md):

1. `process(records)`: decode, apply, carry out the effects, wait for their
   acknowledgements and put the states into the stores (memory) (`FoldHost.process_events`,
   `SignalsHost.process_signals`); it returns the batch's rows;
2. take the batch's states from the stores' unsent states, for the batch's own changelog
   writes;
3. in the background, once the previous completion is done: `write` its rows (if it has any),
   send its states to the changelogs (acknowledged), then commit the offsets after its last
   records.

Step 3 takes every batch processed since the previous completion began, as one completion: one
write (one insert per table, whatever the number of batches: an insert costs tens of ms however
small), one changelog send per store, one commit. So a committed offset is never ahead of the
states, rows and messages of the records before it; rows, states and commits go out in batch
order; a state is never durable before its rows (a re-delivered event gives its run's current
rows, not the rows its first folding gave other steps). Meanwhile the next batches are handled
from the states in memory: their messages (resumes of workflows) do not wait for an insert.
Once the completion being collected holds `max_records` records, the handling waits for the one
being written (back-pressure: the rows wait in memory, and batches grow meanwhile). One batch at
a time over every partition of this consumer: a partition's records are handled in log order and
a key's state is never updated by two batches at once.

Each consumer has a group of its own (`ProcessorConfig.app_id` for the events,
`signals_group` for the signals). The rebalance listener takes the same lock as a batch: a revocation waits for the batch in
hand and every batch being completed to be committed, then forgets the partitions' states; an
assignment reads the new partitions' states back from every store's changelog, then calls
`recovered` (the fold's rebuilds the timer heap and the parents' index from every run state).
Records fetched for a partition whose states are not (or no longer) held, or fetched before a
rebalance and handed over after it, are not processed: the consumer seeks back to the first of
them, so they are fetched again once the partition's states are held (or by the partition's new
owner).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Final, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import InconsistentGroupProtocolError, KafkaError

from steplog.kafka import consumer as kafka_consumer
from steplog.kafka import start_or_stop
from steplog.metrics import metrics
from steplog.projections.writer import TableRows, concat_rows

from .membership import GroupMembership
from .state_store import StateStore, UnsentStates

__all__ = ["ProcessBatch", "Record", "RecordPosition", "StatefulConsumer"]

_JOIN_RETRY_FIRST_S: Final = 1.0
_JOIN_RETRY_MAX_S: Final = 10.0

log = logging.getLogger("steplog.processors")


class RecordPosition(Protocol):
    """Where a message was read: all a dead letter needs besides the value."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...


class Record(RecordPosition, Protocol):
    """A consumed Kafka message as the hosts read it (aiokafka's ConsumerRecord, faust's
    Message)."""

    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> int:
        """The broker timestamp (ms): the log's time the state retention goes by."""
        ...


ProcessBatch = Callable[[Sequence[Record]], Awaitable[Mapping[str, TableRows]]]
"""Handles a batch: carries out its effects, waits for their acknowledgements, puts its states
in the stores (memory now, the changelogs later) and returns its rows, by projection table
(none: nothing to write). `FoldHost.process_events`, `SignalsHost.process_signals`."""
WriteRows = Callable[[Mapping[str, TableRows]], Awaitable[None]]
"""Writes rows (retrying until written, or raising for good): `FoldHost.write_rows`."""


async def _nothing_to_rebuild() -> None:
    pass


class _Completion:
    """Processed batches written, sent to the changelogs and committed together."""

    def __init__(
        self,
        stores: int,
        full_at: int,
        run: Callable[[_Completion], Coroutine[Any, Any, None]],
    ) -> None:
        self.rows: list[Mapping[str, TableRows]] = []
        self.states: list[UnsentStates] = [{} for _ in range(stores)]
        """Per store, in the consumer's order of the stores."""
        self.ends: dict[TopicPartition, int] = {}
        self.records = 0
        self.began = False
        """Writing: later batches go to the next completion."""
        self.full_at = full_at
        self.full = asyncio.Event()
        """Holds `full_at` records (a batch's worth): written without waiting for the write
        interval."""
        self.task = asyncio.create_task(run(self))

    def add(self, rows: Mapping[str, TableRows], states: list[UnsentStates],
            ends: dict[TopicPartition, int], records: int) -> None:
        self.rows.append(rows)
        for held, taken in zip(self.states, states, strict=True):
            for partition, by_key in taken.items():
                held.setdefault(partition, {}).update(by_key)  # a later state replaces
        self.ends.update(ends)  # later offsets
        self.records += records
        if self.records >= self.full_at:
            self.full.set()


class StatefulConsumer:
    """Feeds `topic` to `process` in batches and commits after each (module doc)."""

    def __init__(
        self,
        *,
        bootstrap: str,
        group_id: str,
        topic: str,
        stores: Sequence[StateStore[Any]],
        process: ProcessBatch,
        write: WriteRows | None = None,
        recovered: Callable[[], Awaitable[None]] = _nothing_to_rebuild,
        max_records: int,
        max_fetch_bytes: int,
        write_interval: float = 0.0,
        poll_ms: int = 1000,
        rebalance_timeout: float = 60.0,
        membership: GroupMembership = GroupMembership(),
    ) -> None:
        """`stores`: every store the batches keep states in (one at least); `write`: the rows'
        writer, if the batches have rows; `recovered`: called once the stores recovered new
        partitions; `write_interval`: the least time (seconds) between the beginnings of two
        completions (the batches handled meanwhile join the later one); `rebalance_timeout`:
        how long (seconds) the group waits for this member in a rebalance, of which a revoke
        waits half for the completions under way (`_revoked`); `membership`: the client id and
        static member id to join with (processors/membership.py)."""
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.topic = topic
        self.stores = stores
        self.process = process
        self.write = write
        self.recovered = recovered
        self.max_records = max_records
        self.max_fetch_bytes = max_fetch_bytes
        self.write_interval = write_interval
        self.poll_ms = poll_ms
        self.rebalance_timeout = rebalance_timeout
        self.membership = membership
        self._last_write = float("-inf")
        """Event-loop time when the last completion began."""
        self._lock = asyncio.Lock()
        self._rebalances = 0
        """Counts rebalance callbacks: a batch fetched before one is not processed after it."""
        self._failure: BaseException | None = None
        self._completions: deque[_Completion] = deque()
        """The completion being written (if any), then the one collecting batches (if any)."""

    @property
    def partitions(self) -> frozenset[int]:
        """The partitions whose states every store holds."""
        return frozenset.intersection(*(store.partitions for store in self.stores))

    async def run(self) -> None:
        """Consume until cancelled (the app stopping) or until a batch or a recovery fails."""
        started: list[StateStore[Any]] = []
        try:
            for store in self.stores:
                await store.start()
                started.append(store)
            delay = _JOIN_RETRY_FIRST_S
            while True:
                try:
                    await self._consume()
                except InconsistentGroupProtocolError:
                    # The group has members assigning partitions with another protocol: the
                    # faust processors of before an upgrade, still running or killed less
                    # than their session timeout ago. Theirs is the group until they leave.
                    log.warning(
                        "%s: the consumer group %r has members of another protocol (the "
                        "processors of an earlier version, still running or not yet timed "
                        "out?); joining again in %.0fs", self.topic, self.group_id, delay,
                    )
                    for store in self.stores:  # (only held if the group was joined before)
                        store.release(store.partitions)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _JOIN_RETRY_MAX_S)
        finally:
            for store in started:
                await store.stop()

    async def _consume(self) -> None:
        """One consumer's life: join, then batch after batch (an aiokafka consumer that failed
        to join stays failed, so a retry takes a new one)."""
        membership = self.membership
        consumer = kafka_consumer(
            self.bootstrap,
            group_id=self.group_id,
            # Static membership (processors/membership.py): a restarted process takes its
            # partitions back at once instead of waiting out its predecessor's session.
            group_instance_id=membership.instance_id,
            client_id=membership.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=self.max_fetch_bytes,
            # aiokafka's default is the session timeout (10 s): a revoke waits for writes.
            rebalance_timeout_ms=int(self.rebalance_timeout * 1000),
        )
        consumer.subscribe([self.topic], listener=_Listener(self))
        await start_or_stop(consumer)
        try:
            while True:
                await self._next_batch(consumer)
        finally:
            await self._cancel_completions()
            await consumer.stop()

    async def _cancel_completions(self) -> None:
        """Stop the completions under way: what they did not commit is delivered again (and
        written again) later, from the states they did not send."""
        tasks = [completion.task for completion in self._completions]
        self._completions.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _next_batch(self, consumer: AIOKafkaConsumer) -> None:
        rebalances = self._rebalances
        # Outside the lock: getmany waits while a rebalance is in progress, and the rebalance
        # waits for the lock in its callbacks.
        fetched = await consumer.getmany(timeout_ms=self.poll_ms, max_records=self.max_records)
        if self._failure is not None:
            raise self._failure
        await self._wait_completions(2)  # a failed completion's error is the consumer's
        if not fetched:
            return
        async with self._lock:
            owned = self.partitions if rebalances == self._rebalances else frozenset()
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
            metrics().events_consumed.labels(self.topic).inc(len(batch))
            rows = await self.process(batch)  # its states are in the stores now
            completion = self._collecting(consumer)
            completion.add(
                rows, [store.take_unsent() for store in self.stores], ends, len(batch)
            )
        # Back-pressure: a completion holding a batch's worth waits for the one written. Not
        # holding the lock: a revoke must be able to give stuck completions up.
        await self._wait_completions(1 if completion.full.is_set() else 2)

    def _collecting(self, consumer: AIOKafkaConsumer) -> _Completion:
        """The completion that takes the next processed batch: the last one, unless it began."""
        if self._completions and not self._completions[-1].began:
            return self._completions[-1]
        previous = self._completions[-1].task if self._completions else None
        completion = _Completion(
            len(self.stores), self.max_records, lambda it: self._complete(previous, consumer, it)
        )
        self._completions.append(completion)
        return completion

    async def _complete(
        self,
        previous: asyncio.Task[None] | None,
        consumer: AIOKafkaConsumer,
        completion: _Completion,
    ) -> None:
        if previous is not None:
            await previous  # batch order; the previous completion's failure is this one's
        await self._paced(completion)
        completion.began = True  # no await from here to the rows' concatenation
        rows = concat_rows(completion.rows)
        if any(table.rows for table in rows.values()):
            if self.write is None:
                raise RuntimeError(f"{self.topic}: a batch has rows, the consumer no writer")
            await self.write(rows)
        # After the rows: a durable state's rows exist. The stores' sends are independent.
        await asyncio.gather(*(
            store.send(states) for store, states in zip(self.stores, completion.states, strict=True)
        ))
        ends = completion.ends
        try:
            await consumer.commit(ends)
        except KafkaError as exc:
            # The group moved on (this member timed out, or is rejoining). The batch is done
            # and its states are in the changelogs: whoever consumes the partitions next handles
            # these records again from those states, which changes nothing.
            log.warning("%s: commit of %s failed, the records will be delivered again: %r",
                        self.topic, {tp.partition: end for tp, end in ends.items()}, exc)

    async def _paced(self, completion: _Completion) -> None:
        """Wait until `write_interval` has passed since the previous completion began (or this
        one is full): batches handled meanwhile join it."""
        loop = asyncio.get_running_loop()
        remaining = self._last_write + self.write_interval - loop.time()
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(completion.full.wait(), remaining)
        self._last_write = loop.time()

    async def _wait_completions(self, at_most: int) -> None:
        """Forget the completions done since, raising a failed one's error, and wait until at
        most `at_most` are under way."""
        while self._completions and (
            self._completions[0].task.done() or len(self._completions) > at_most
        ):
            task = self._completions.popleft().task
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                # Given up by a revoke (`_cancel_completions`): nothing to wait for.

    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        """Wait for the batch in hand and every completion, so that all are committed before
        another member goes on; but not past half the rebalance timeout (the member learns of
        a rebalance at its next heartbeat, up to 3 s after it began). A member later than
        the timeout is dropped from the group, and a completion that went on after that (a
        write that took minutes) would send its states to a changelog that the partition's
        new owner already writes: older states after newer ones, read back at its next
        recovery. So completions still under way then are given up, as if this process had
        died: the new owner folds their batches again from the last commit."""
        async with self._lock:
            try:
                await asyncio.wait_for(self._wait_completions(0), self.rebalance_timeout / 2)
            except TimeoutError:
                log.warning(
                    "%s: completions not done within %.0fs of a rebalance are given up; the "
                    "partitions' next owner handles their batches again", self.topic,
                    self.rebalance_timeout / 2,
                )
                await self._cancel_completions()
            self._rebalances += 1
            for store in self.stores:
                store.release([tp.partition for tp in revoked])

    async def _assigned(self, assigned: set[TopicPartition]) -> None:
        """`assigned`: the whole assignment (the group's protocol is eager)."""
        async with self._lock:
            self._rebalances += 1
            try:
                partitions = [tp.partition for tp in assigned]
                await asyncio.gather(*(store.recover(partitions) for store in self.stores))
                await self.recovered()
            except Exception as exc:
                # aiokafka only logs a listener's exception; the loop raises it instead, so a
                # process that cannot read its states stops rather than skipping their records.
                self._failure = exc


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, consumer: StatefulConsumer) -> None:
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.consumer._revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.consumer._assigned(assigned)
