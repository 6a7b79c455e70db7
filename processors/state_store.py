"""States keyed by bytes, kept by a stateful consumer (processors/stateful_consumer.py): in
memory per partition of the consumed topic, and in a compacted changelog topic from which a
partition's states are read back when the partition is assigned.

The changelog has one partition per partition of the consumed topic, and a state goes to the
changelog partition of the message that changed it (its key is the message key, or includes
it), so the states of a consumed partition are exactly one changelog partition: `recover` reads
it from its beginning to its end, and compaction keeps only each key's newest state. The
processors keep three stores (`host.create_processor_app`), each on a topic faust created when
its table was a faust table (same keys, same values), so states written then are read back as
they are:

- the runs' `RunState`, by `batch_fold.run_state_key`, in `<prefix>processors-runs-changelog`
  (the events topic's partitions);
- each event name's `NameWaits` and `NameTriggers`, by name, in
  `<prefix>processors-agents-waits-changelog` and `-triggers-changelog` (the signals topic's).

Writes are buffered: `put` keeps the newest state of each key, `take_unsent` takes those put
since the last take (one batch's states), and `send` sends them and returns once Kafka has
acknowledged every one (acks=all), sending a failed record batch again with backoff, forever. The
consumer commits a batch's offsets only after its states are acknowledged, so a committed
offset is never ahead of the states that have seen its messages (docs/processors.md).
The store has its own producer and sends each partition's states as whole record batches
(`send_batch`): a batch of events touches thousands of runs, and a `send` per state (a
coroutine, a future and the accumulator's wake-ups each) cost more than the fold itself.

Memory holds each state as its changelog bytes, never as objects: `get` decodes a fresh state
(changing it changes nothing stored) and `put` encodes it (the encoding is needed for the
changelog anyway). A 10-event run costs about 1.2 KB so, against 6.4 KB as objects, and a
partition's recovery decodes nothing; the price is a decode (10-20 µs for a run) per state and
batch that touches it. Memory holds at most `memory_bytes` of them (STEPLOG_STATE_MEMORY_MB):
the least recently put go to a scratch file on disk and come back when a batch touches them
(`held_states.HeldStates`), so memory stays flat however many runs the processors have seen.

With a retention (the runs' store, STEPLOG_STATE_RETENTION; fold/state_retention.py) a state
is put with its run's end (`ended`, None until the run ends), which goes to the changelog as the
record's `steplog-ended` header (the state's bytes, and so their format, stay as they are), and
`take_unsent` also takes what `HeldStates.expire` changed: a finished run's state replaced by its
closed marker once the log's time passes its end + retention, the marker deleted (a tombstone,
value None) after the horizon, and each partition's log time (`LOG_TIME_KEY`), so a restart goes
on with the same log time and the same markers. Compaction then keeps only the window's runs.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Final, Generic, Protocol, TypeVar

from aiokafka import AIOKafkaProducer, TopicPartition

import steplog.kafka as kafka
from steplog.errors import StateSpillError, SteplogError

from .fold.state_retention import StateRetention
from .held_states import LOG_TIME_KEY, HeldStates, marked_end

__all__ = ["StateStore", "StateTooLargeError", "Storable", "Stored", "UnsentStates"]

log = logging.getLogger("steplog.processors")

_RETRY_FIRST_S: Final = 0.1
_RETRY_MAX_S: Final = 5.0
_RECOVER_POLL_MS: Final = 1000
_RECORD_BATCH_BYTES: Final = 512 * 1024
_ENDED_HEADER: Final = "steplog-ended"
"""The changelog record's header holding its run's end (8 bytes, big-endian ms)."""


Stored = tuple[bytes | None, int | None]
"""A changelog record's value (None: a tombstone) and its run's end, if it has ended."""
UnsentStates = dict[int, dict[bytes, Stored]]
"""States put and not sent yet, by partition and state key."""


class StateTooLargeError(SteplogError):
    """A state is larger than the changelog accepts: it cannot be stored."""


class Storable(Protocol):
    """A state as a store keeps it: its changelog bytes (read back by the store's `decode`)."""

    def to_bytes(self) -> bytes: ...


S = TypeVar("S", bound=Storable)


class StateStore(Generic[S]):
    """States by partition of the consumed topic and by key, stored in `changelog`."""

    def __init__(
        self,
        bootstrap: str,
        changelog: str,
        decode: Callable[[bytes], S],
        *,
        max_message_bytes: int,
        memory_bytes: int,
        retention: StateRetention | None = None,
        ended: Callable[[S], int | None] | None = None,
    ) -> None:
        """`retention`: finished states leave after it (module docstring); `ended`: a state's
        end for it (None: not ended)."""
        self.bootstrap = bootstrap
        self.changelog = changelog
        self.decode = decode
        self.retention = retention
        self._ended = ended if retention is not None else None
        self._max_message_bytes = max_message_bytes
        self._states = HeldStates(memory_bytes, retention)
        self._spilled = False
        self._spill_failing = False
        self._unsent: UnsentStates = {}
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self._producer = kafka.producer(
            self.bootstrap,
            acks="all",
            linger_ms=0,
            max_batch_size=_RECORD_BATCH_BYTES,
            max_request_size=self._max_message_bytes,
            # Not idempotent (a state sent twice is the same state): a batch that fails, or
            # expires after the request timeout, is sent again by `_send_partition`, so no
            # sequence state can be lost; a vanished broker costs the request timeout.
            **kafka.FAILOVER_PRODUCER_OPTIONS,
        )
        await self._producer.start()

    async def stop(self) -> None:
        """Stop the producer and forget every state; states put and not sent are lost (their
        events' offsets are not committed either: they are folded again after a restart)."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        self._states.close()
        self._unsent.clear()

    @property
    def partitions(self) -> frozenset[int]:
        """The partitions whose states are held (recovered and not released since)."""
        return self._states.partitions

    @property
    def bytes_in_memory(self) -> int:
        return self._states.bytes_in_memory

    def __len__(self) -> int:
        return len(self._states)

    def get(self, partition: int, state_key: bytes) -> S | None:
        """The state of `state_key`; None if there is none (a closed run's marker included:
        `ended_at` tells)."""
        held = self._states.get(partition, state_key)
        return None if held is None or marked_end(held) is not None else self.decode(held)

    def find(self, state_key: bytes) -> S | None:
        """A state whatever its partition (the timer service knows only the run)."""
        held = self._states.find(state_key)
        return None if held is None or marked_end(held) is not None else self.decode(held)

    def items(self) -> Iterator[tuple[bytes, S]]:
        """Every state held, decoded one at a time (memory stays flat). Nothing may be got,
        found or put until the iteration ends."""
        for _, state_key, value in self._states.items():
            if marked_end(value) is None:
                yield state_key, self.decode(value)

    def ended_at(self, partition: int, state_key: bytes) -> int | None:
        """The end of `state_key`'s run as held, state or closed marker (with a retention)."""
        return self._states.ended_at(partition, state_key)

    def advance_log_time(self, partition: int, timestamp_ms: int) -> int:
        """The partition's log time once a record of `timestamp_ms` is read."""
        return self._states.advance_log_time(partition, timestamp_ms)

    def put(self, partition: int, state_key: bytes, state: S) -> None:
        """Hold `state` now (later changes to the object are not kept); its changelog write
        goes out with the next `take_unsent` and `send`."""
        value = state.to_bytes()
        ended = None if self._ended is None else self._ended(state)
        self._states.put(partition, state_key, value, ended)
        self._unsent.setdefault(partition, {})[state_key] = (value, ended)

    def take_unsent(self) -> UnsentStates:
        """The states put since the last take, for `send`: later puts do not go out with
        these (the stateful consumer sends batch by batch).

        Also where finished runs leave (with a retention: `HeldStates.expire`, their closed
        markers and tombstones go out with these) and memory is brought back under its budget:
        once per batch, after its states are put."""
        for partition, state_key, value in self._states.expire():
            self._unsent.setdefault(partition, {})[state_key] = (value, None)
        for partition, log_time in self._states.take_log_times().items():
            self._unsent.setdefault(partition, {})[LOG_TIME_KEY] = (log_time, None)
        try:
            spilled = self._states.spill()
        except StateSpillError as exc:
            # Memory is a budget, not a limit worth stopping ingestion for: the states stay
            # in memory, and the next batch's take tries again (said once, not per batch).
            if not self._spill_failing:
                log.warning("state store of %s: %s; the states stay in memory meanwhile",
                            self.changelog, exc)
            self._spill_failing, spilled = True, 0
        else:
            if self._spill_failing and spilled:
                log.warning("state store of %s: states go to disk again", self.changelog)
                self._spill_failing = False
        pending, self._unsent = self._unsent, {}
        if spilled and not self._spilled:
            self._spilled = True
            # A warning, once: the processors log nothing below, and an operator sizing the
            # machine wants to know that reads of old runs' states now go to disk.
            log.warning("state store of %s: more than %d MiB of states, the least recently "
                        "changed go to disk from now on (STEPLOG_STATE_MEMORY_MB)",
                        self.changelog, self._states.memory_bytes >> 20)
        return pending

    async def send(self, pending: UnsentStates) -> None:
        """Send states taken with `take_unsent` and wait until Kafka acknowledged all.

        One value per key per take, each partition's record batches one after the other (a
        failed batch is sent again before the next). Call it for one take at a time, in the
        order of the takes: a state can then never land behind an older state of its key.
        """
        await asyncio.gather(*(
            self._send_partition(partition, list(states.items()))
            for partition, states in pending.items()
        ))

    async def _send_partition(self, partition: int, states: list[tuple[bytes, Stored]]) -> None:
        producer = self._producer
        if producer is None:
            raise RuntimeError(f"StateStore.send: the store of {self.changelog} is not started")
        start, delay = 0, _RETRY_FIRST_S
        while start < len(states):
            batch = producer.create_batch()
            end = start
            # The first record of a batch always fits, however large (up to the request size).
            while end < len(states) and batch.append(
                key=states[end][0], value=states[end][1][0], timestamp=None,
                headers=_ended_header(states[end][1][1]),
            ) is not None:
                end += 1
            batch.close()
            if end == start:
                # Sending it again would never succeed: stop rather than loop, and say why.
                key, (value, _) = states[start]
                raise StateTooLargeError(
                    f"state {key!r}: {len(value or b'')} bytes, more than the changelog's "
                    f"{self._max_message_bytes} (max_message_bytes; raise "
                    "STEPLOG_MAX_EVENT_BYTES, which sets it)"
                )
            try:
                await (await producer.send_batch(batch, self.changelog, partition=partition))
            except Exception as exc:
                log.warning("%d state(s) not acknowledged by %s[%d], sending again in "
                            "%.1fs: %r", end - start, self.changelog, partition, delay, exc)
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, _RETRY_MAX_S)
                continue
            start, delay = end, _RETRY_FIRST_S

    def release(self, partitions: Collection[int]) -> None:
        """Forget the states of partitions this process no longer consumes."""
        self._states.release(partitions)
        for partition in partitions:
            self._unsent.pop(partition, None)

    async def recover(self, partitions: Collection[int]) -> None:
        """Read the changelog partitions of `partitions` from their beginning to their end (as
        it is when the read starts) and hold what they say: each key's newest state."""
        if not partitions:
            return
        reader = kafka.consumer(
            self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            max_partition_fetch_bytes=self._max_message_bytes,
        )
        await kafka.start_or_stop(reader)
        try:
            self._states.begin_load(partitions)
            tps = [TopicPartition(self.changelog, partition) for partition in partitions]
            reader.assign(tps)
            await reader.seek_to_beginning(*tps)
            ends = await reader.end_offsets(tps)
            remaining = {tp for tp in tps if await reader.position(tp) < ends[tp]}
            while remaining:
                fetched = await reader.getmany(*remaining, timeout_ms=_RECOVER_POLL_MS)
                for tp, records in fetched.items():
                    # A None value is a tombstone: the state was deleted.
                    self._states.load(
                        tp.partition, ((r.key, r.value, _header_end(r.headers)) for r in records)
                    )
                remaining = {tp for tp in remaining if await reader.position(tp) < ends[tp]}
        except BaseException:
            self._states.release(partitions)  # half a partition's states are not its states
            raise
        finally:
            self._states.end_load()
            await reader.stop()
        log.info("state store: %d states held after recovering %s partitions %s (%d MiB in "
                 "memory)",
                 len(self._states), self.changelog, sorted(partitions),
                 self._states.bytes_in_memory >> 20)


def _ended_header(ended: int | None) -> list[tuple[str, bytes]]:
    return [] if ended is None else [(_ENDED_HEADER, ended.to_bytes(8, "big", signed=True))]


def _header_end(headers: Sequence[tuple[str, bytes]]) -> int | None:
    """The run's end a changelog record's headers carry (`_ended_header`), if any."""
    for name, value in headers:
        if name == _ENDED_HEADER:
            return int.from_bytes(value, "big", signed=True)
    return None
