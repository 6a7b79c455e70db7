"""The sender: hands events to Kafka in the background so callers never wait on the network.

`send()` only appends to an in-memory buffer and returns; a daemon thread with its own asyncio
loop drains the buffer into an aiokafka producer in chunks. This works the same from sync code
and from asyncio code (the caller's loop is never used, so a blocked or closed caller loop
cannot stall delivery). A chunk is split by partition, computed as the producer's default
partitioner does (murmur2 of the key), and each partition's events go to Kafka as whole record
batches (`send_batch`): per event, the delivery thread only appends bytes to a batch, so it
takes little of the GIL from the caller's threads.

Guarantees and their limits:
- Order per key (run_id) is kept: a key always maps to one partition; chunks are delivered one
  after another, and within a chunk each partition's batches one after another, each only once
  the previous one was acknowledged; a batch that fails is retried, with everything behind it,
  before anything else of its partition is sent (head-of-line).
- Memory is bounded: when the buffer holds more than `max_buffer_bytes`, the oldest events are
  dropped and counted (`stats().dropped`). An outage therefore loses the oldest telemetry, never
  the process.
- Nothing buffered is lost to an outage the buffer can hold. The producer is idempotent, and an
  idempotent producer numbers each partition's batches; a batch that fails after it was
  numbered (aiokafka fails a batch that waited `request_timeout_ms` for a partition without a
  leader, which is what a stopped broker leaves behind) is a gap the broker never fills, so
  every later batch of that producer to that partition is refused (OutOfOrderSequenceNumber).
  The sender therefore never sends again through a producer that failed a batch, or that lost
  its sequence state (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch): it
  discards it and re-sends what was not acknowledged through a new one (a new producer id, so
  new sequences). A re-sent event may land twice; the fold drops duplicates by `event_id`.
- No busy loop while the broker is away. aiokafka retries a partition without a leader with no
  backoff at all (its metadata loop reconnects as fast as connections are refused: a full core
  and thousands of log lines a second, measured). So a watchdog discards the producer as soon as
  a partition being sent to has had no leader for `_LEADERLESS_GRACE_S`, or nothing was
  acknowledged for `_STALL_S`; until a new producer connects, nothing of aiokafka runs, and
  connecting is retried with exponential backoff (tenacity) up to `_BACKOFF_MAX_S`.
- An outage is told once, not per attempt: one log line and one `on_error(DeliveryFailing)`
  when delivery starts failing, one line and one `on_error(DeliveryRecovered)` when it works
  again. aiokafka's own per-attempt lines from the delivery thread are rate-limited
  (producers.kafka_logs). Events Kafka refuses for good (a bad record) are counted `failed` and
  each reported; when the broker refuses a batch, its events are sent again one per batch, so
  only the bad ones are lost.
- `close()` (also run at interpreter exit) waits at most `close_timeout`: what is still
  undelivered then is dropped, counted in `stats().dropped` and logged in one line.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

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
from aiokafka.structs import TopicPartition
from pydantic import BaseModel, ConfigDict
from tenacity import AsyncRetrying, RetryCallState, RetryError, retry_if_exception_type
from tenacity import wait_exponential_jitter

from steplog.errors import DeliveryFailing, DeliveryRecovered, EventTooLargeError, SendError
from steplog.producers.kafka_logs import SENDER_THREAD_PREFIX, limit_sender_thread_logs
from steplog.schemas.codec import DEFAULT_MAX_BYTES, encode
from steplog.schemas.events import Event

ErrorCallback = Callable[[BaseException], None]
Message = tuple[bytes, bytes]
"""An encoded event: (key, value)."""

log = logging.getLogger(__name__)

# Kafka's request carries batch headers on top of the event; see also steplog.topics.
_REQUEST_HEADROOM_BYTES = 64 * 1024
# Largest record batch the sender builds (one event larger than this still goes, alone). The
# producer keeps one batch per partition in flight, so this bounds what one round trip to the
# broker carries. Below the broker's default max.message.bytes (1 MiB), so any topic takes it.
_BATCH_BYTES = 512 * 1024
# Partition of each key seen lately (murmur2 in pure Python costs microseconds per key).
_PARTITION_CACHE_KEYS = 100_000
# Between two attempts to deliver a chunk (a new producer connecting, mostly): from 0.2 s,
# doubling, with jitter, up to a few seconds, so a broker that comes back is used soon after
# and a broker that stays away costs a connection attempt every few seconds.
_BACKOFF_MAX_S = 5.0
_BACKOFF = wait_exponential_jitter(multiplier=0.2, max=_BACKOFF_MAX_S, jitter=0.5)
# The watchdog's period, and how long a partition being sent to may have no leader (aiokafka
# spins meanwhile) or a delivery may go without any acknowledgement before the producer is
# discarded. A leader election on a healthy cluster takes well under a second.
_WATCH_INTERVAL_S = 0.25
_LEADERLESS_GRACE_S = 1.0
_STALL_S = 10.0
# Backstops: aiokafka's start and stop have no deadline of their own.
_START_TIMEOUT_S = 15.0
_STOP_TIMEOUT_S = 5.0
# Of close()'s budget, the share left for the delivery thread to stop and count what it drops.
_CLOSE_STOP_SHARE = 0.1
_default_partitioner = DefaultPartitioner()


def key_partition(key: bytes, partitions: list[int]) -> int:
    """The partition of `partitions` a message keyed `key` goes to with the producers' default
    partitioner (murmur2 of the key): where a run's events are, keyed by its run id."""
    partition: int = _default_partitioner(key, partitions, partitions)
    return partition

# This process's id, kept here because os.getpid() is a system call and send() asks on every
# event whether it runs in the process that started the delivery thread (a forked child must
# start its own).
_pid = os.getpid()


def _note_fork() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_note_fork)


class _ProducerDiscarded(Exception):
    """What the batches a discarded producer still held fail with; they are re-sent."""


# After these a producer cannot deliver again: its sequence state is gone (or it is). Retried
# through a new producer, never counted as refused.
_PRODUCER_LOST = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    ProducerFenced,
    ProducerClosed,
    _ProducerDiscarded,
)


class SenderStats(BaseModel):
    """Counters since the sender was created."""

    model_config = ConfigDict(frozen=True)

    sent: int
    """Events acknowledged by Kafka (an event re-sent after an outage may land twice; the
    processors drop the duplicate by event_id)."""
    retried: int
    """Event deliveries that failed and were tried again (one event may count more than once)."""
    dropped: int
    """Events discarded undelivered: the oldest when the buffer was full, and those left when
    the sender closed before Kafka acknowledged them."""
    failed: int
    """Events Kafka refused for good (non-retriable errors)."""
    buffered: int
    """Events waiting to be delivered now."""
    buffered_bytes: int


@dataclass
class _PartitionOutcome:
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
class _ChunkOutcome:
    retry: list[Message]
    alone: dict[int, int]
    """By partition: `_PartitionOutcome.alone`."""
    cause: BaseException | None
    spoiled: bool


@dataclass(frozen=True)
class _Outage:
    began: float
    dropped: int
    failed: int


class _Retriable(Exception):
    """An attempt left events to deliver; tenacity waits and tries again."""


class EventSender:
    """Batches encoded events to one topic; see the module docstring for its guarantees."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        max_buffer_bytes: int = 64 * 1024 * 1024,
        max_event_bytes: int = DEFAULT_MAX_BYTES,
        chunk_size: int = 5000,
        linger_ms: int = 5,
        on_error: ErrorCallback | None = None,
        throw_on_send_error: bool = False,
        close_timeout: float = 10.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.max_buffer_bytes = max_buffer_bytes
        self.max_event_bytes = max_event_bytes
        self.chunk_size = chunk_size
        self.linger_ms = linger_ms
        self.on_error = on_error
        self.throw_on_send_error = throw_on_send_error
        self.close_timeout = close_timeout

        self._buffer: deque[Message] = deque()
        self._buffered_bytes = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._sent = self._retried = self._dropped = self._failed = 0
        self._pending_errors: list[BaseException] = []

        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._loop_idle = False
        self._closing = False
        self._owner_pid = 0
        # Delivery thread only: the producer (None while the broker is away), the topic's
        # partitions, the partition of recent keys, the partitions of the chunk being sent,
        # when Kafka last acknowledged anything, and the outage under way.
        self._producer: AIOKafkaProducer | None = None
        self._partitions: list[int] = []
        self._partition_of: dict[bytes, int] = {}
        self._sending_to: list[int] = []
        self._progress_at = 0.0
        self._outage: _Outage | None = None

    # ----------------------------------------------------------------- caller side

    def send_event(self, event: Event) -> None:
        """Encode and queue an event, keyed by its run id."""
        self.send(event.run_id.encode(), encode(event, max_bytes=self.max_event_bytes))

    def send(self, key: bytes, value: bytes) -> None:
        """Queue one encoded event; returns at once. Raises EventTooLargeError for an event
        over the limit, and SendError for earlier failures when throw_on_send_error is set."""
        size = len(value)
        # One test for the three rare cases, so that the common one pays a single branch.
        if size > self.max_event_bytes or self._pending_errors or self._owner_pid != _pid:
            self._before_unusual_send(size)
        size += len(key)
        with self._lock:
            if self._closing:
                raise SendError(f"the sender for {self.topic!r} is closed")
            self._buffer.append((key, value))
            self._buffered_bytes += size
            if self._buffered_bytes > self.max_buffer_bytes:
                self._drop_oldest()
            if not self._loop_idle:
                # A busy loop takes the next chunk by itself: no cross-thread call (a pipe
                # write) on the per-event path.
                return
            self._loop_idle = False
        assert self._loop is not None and self._wake is not None
        self._loop.call_soon_threadsafe(self._wake.set)

    def _before_unusual_send(self, size: int) -> None:
        """An event over the limit, earlier failures to raise, or the first send in this
        process (the delivery thread is started here, also in a forked child)."""
        if size > self.max_event_bytes:
            raise EventTooLargeError(
                "",
                f"event is {size} bytes, over the limit of {self.max_event_bytes} "
                "(STEPLOG_MAX_EVENT_BYTES)",
            )
        if self._pending_errors:  # only ever filled with throw_on_send_error
            self._raise_pending_errors()
        if self._owner_pid != _pid:
            self._start()

    def _drop_oldest(self) -> None:
        """Over the bound: drop the oldest events (never the newest). Holding the lock."""
        while self._buffered_bytes > self.max_buffer_bytes and len(self._buffer) > 1:
            old_key, old_value = self._buffer.popleft()
            self._buffered_bytes -= len(old_key) + len(old_value)
            self._dropped += 1

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every queued event is acknowledged (or dropped/failed); False on timeout.

        With throw_on_send_error, raises SendError for failures seen since the last check.
        """
        with self._drained:
            done = self._drained.wait_for(
                lambda: not self._buffer and not self._in_flight, timeout=timeout
            )
        self._raise_pending_errors()
        return done

    async def flush_async(self, timeout: float | None = 30.0) -> bool:
        """`flush` for asyncio callers: waits in a worker thread, not on the caller's loop."""
        return await asyncio.to_thread(self.flush, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued and stop the background thread, within `timeout` seconds
        (default close_timeout) in all. What Kafka has not acknowledged by then (it is
        unreachable, say) is dropped: counted in `stats().dropped` and logged in one line."""
        if self._thread is None or self._owner_pid != _pid:
            return
        budget = self.close_timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        try:
            self.flush(budget * (1 - _CLOSE_STOP_SHARE))
        finally:
            with self._lock:
                self._closing = True
            assert self._loop is not None
            try:
                # One callback: the loop may finish (and close) right after the first event
                # is set, and a second call would find it closed.
                self._loop.call_soon_threadsafe(self._wake_to_stop)
            except RuntimeError:  # closed already: the delivery thread has ended by itself
                pass
            self._thread.join(max(deadline - time.monotonic(), 0.0))
            self._thread = None

    def _wake_to_stop(self) -> None:
        """On the delivery loop: stop what is under way and wake the loop to see `_closing`."""
        assert self._stopping is not None and self._wake is not None
        self._stopping.set()
        self._wake.set()

    def stats(self) -> SenderStats:
        with self._lock:
            return SenderStats(
                sent=self._sent,
                retried=self._retried,
                dropped=self._dropped,
                failed=self._failed,
                buffered=len(self._buffer),
                buffered_bytes=self._buffered_bytes,
            )

    def _raise_pending_errors(self) -> None:
        if not self.throw_on_send_error or not self._pending_errors:
            return
        with self._lock:
            errors, self._pending_errors = self._pending_errors, []
        raise SendError(
            f"{len(errors)} send failure(s) to topic {self.topic!r}; first: {errors[0]!r}"
        ) from errors[0]

    def _report(self, exc: BaseException) -> None:
        """A failure: raised at the next call with throw_on_send_error, and told on_error."""
        if self.throw_on_send_error:
            with self._lock:
                self._pending_errors.append(exc)
        self._tell(exc)

    def _tell(self, exc: BaseException) -> None:
        if self.on_error is not None:
            try:
                self.on_error(exc)
            except Exception:  # a broken callback must not kill delivery
                pass

    # ------------------------------------------------------------ background side

    def _start(self) -> None:
        # Also runs in a forked child (the parent's thread does not exist there): the buffer
        # copied from the parent belongs to the parent, which delivers it.
        with self._lock:
            self._buffer.clear()
            self._buffered_bytes = 0
            self._in_flight = 0
            self._owner_pid = _pid
        limit_sender_thread_logs()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run_loop,
            args=(ready,),
            name=f"{SENDER_THREAD_PREFIX}{self.topic}",
            daemon=True,
        )
        self._thread.start()
        ready.wait()
        _close_at_exit(self)

    def _run_loop(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        ready.set()
        try:
            self._loop.run_until_complete(self._deliver_forever())
        finally:
            self._loop.close()

    async def _deliver_forever(self) -> None:
        assert self._wake is not None
        try:
            while True:
                chunk = self._take_chunk()
                if chunk:
                    await self._deliver(chunk)
                    continue
                if self._closing:
                    return
                await self._wake.wait()
                self._wake.clear()
                if self.linger_ms and not self._closing:
                    # Woken by the first event after a quiet spell: give the ones right behind
                    # it a moment to join its batch (the producer's linger, for whole chunks).
                    await asyncio.sleep(self.linger_ms / 1000)
        finally:
            await self._discard_producer("the sender is closing")

    def _take_chunk(self) -> list[Message]:
        with self._lock:
            count = min(self.chunk_size, len(self._buffer))
            chunk = [self._buffer.popleft() for _ in range(count)]
            self._buffered_bytes -= sum(len(k) + len(v) for k, v in chunk)
            self._in_flight = count
            if not count:
                self._loop_idle = True
                self._drained.notify_all()
            return chunk

    async def _deliver(self, chunk: list[Message]) -> None:
        """Deliver a chunk, retrying with backoff what is left after each attempt, until it is
        all acknowledged or refused, or the sender closes (then it is dropped)."""
        pending: list[Message] = chunk
        alone: dict[int, int] = {}
        try:
            async for attempt in AsyncRetrying(
                wait=_BACKOFF,
                retry=retry_if_exception_type(_Retriable),
                stop=self._stop_when_closing,
                sleep=self._pause,
            ):
                with attempt:
                    outcome = await self._attempt(pending, alone)
                    if outcome.spoiled:
                        await self._discard_producer("it failed a batch")
                    if outcome.cause is not None and not self._closing:
                        self._note_failing(outcome.cause)
                    if outcome.retry:
                        pending, alone = outcome.retry, outcome.alone
                        with self._lock:
                            self._retried += len(pending)
                        raise _Retriable()
        except RetryError:
            self._drop_undelivered()
            return
        self._note_delivering()

    async def _attempt(self, chunk: list[Message], alone: dict[int, int]) -> _ChunkOutcome:
        """Send a chunk through the producer (one is started if there is none), under the
        watchdog that discards a producer cut off from the cluster."""
        if self._closing:  # close() already waited for delivery as long as it may
            return _ChunkOutcome(chunk, alone, None, False)
        try:
            producer = await self._ensure_producer()
        except Exception as exc:  # the broker is not there (yet): retried with backoff
            return _ChunkOutcome(chunk, alone, exc, False)
        self._progress_at = time.monotonic()
        sending = asyncio.ensure_future(self._send_chunk(producer, chunk, alone))
        watchdog = asyncio.ensure_future(self._watch(producer))
        await asyncio.wait((sending, watchdog), return_when=asyncio.FIRST_COMPLETED)
        if sending.done():
            watchdog.cancel()  # it only sleeps and looks: cancelling it anywhere is safe
            await asyncio.gather(watchdog, return_exceptions=True)
        else:
            # Cut off: failing what the producer holds ends the sends, with what to re-send.
            await self._discard_producer(watchdog.result())
        return await sending

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id="steplog-sdk",
            acks="all",
            enable_idempotence=True,
            linger_ms=self.linger_ms,
            # A batch may not exceed the topic's max.message.bytes (steplog.topics sets it to
            # max_event_bytes plus headroom); a single larger event still goes, alone.
            max_batch_size=min(_BATCH_BYTES, self.max_event_bytes),
            max_request_size=self.max_event_bytes + _REQUEST_HEADROOM_BYTES,
        )
        try:
            await asyncio.wait_for(producer.start(), _START_TIMEOUT_S)
        except BaseException:
            await _stop(producer)  # releases the half-opened client
            raise
        self._producer = producer
        return producer

    async def _discard_producer(self, reason: str) -> None:
        """Stop the producer without waiting for what it holds: those batches fail now (the
        deliveries waiting on them re-send their events through the next producer); stop()
        alone would wait for them as long as the broker is away."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        # aiokafka has no public call for "give up what you hold". Its sender task goes first
        # (its in-flight requests end and put their batches back in the queue; failing a batch
        # under a request in flight makes aiokafka raise KeyError when the request re-queues
        # it), then every queued batch fails, as aiokafka does itself when that task dies.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer._sender.close(), _STOP_TIMEOUT_S)
        queue = producer._message_accumulator
        # A batch that was sent and put back in the queue (retry_count > 0) still has the
        # callback that removes it from the "sent" set when it completes; aiokafka removed it
        # from that set when it put it back, so failing it would raise KeyError in the loop.
        queued = [batch for batches in queue._batches.values() for batch in batches]
        queue._pending_batches.update(batch for batch in queued if batch.retry_count)
        queue.fail_all(
            _ProducerDiscarded(f"the producer to {self.topic!r} was discarded: {reason}")
        )
        for batch in queued:
            # Its drain waiter, which nobody awaits any more, got the exception too: mark it
            # seen, or asyncio logs "Future exception was never retrieved" on the host's stderr.
            batch._drain_waiter.exception()
        await _stop(producer)

    async def _watch(self, producer: AIOKafkaProducer) -> str:
        """Returns why the producer is cut off, once it is: the sender closes, a partition
        being sent to has had no leader for _LEADERLESS_GRACE_S (aiokafka retries that without
        backoff), or Kafka acknowledged nothing for _STALL_S."""
        leaderless_since: float | None = None
        while True:
            await self._pause(_WATCH_INTERVAL_S)
            now = time.monotonic()
            leaderless = self._leaderless(producer)
            if not leaderless:
                leaderless_since = None
            elif leaderless_since is None:
                leaderless_since = now
            if self._closing:
                return "the sender is closing"
            if leaderless_since is not None and now - leaderless_since >= _LEADERLESS_GRACE_S:
                return (
                    f"partitions {leaderless} have had no leader for {_LEADERLESS_GRACE_S:g} s "
                    "(is the broker down?)"
                )
            if now - self._progress_at >= _STALL_S:
                return f"Kafka acknowledged nothing for {_STALL_S:g} s"

    def _leaderless(self, producer: AIOKafkaProducer) -> list[int]:
        cluster = producer.client.cluster
        return [
            partition
            for partition in self._sending_to
            if cluster.leader_for_partition(TopicPartition(self.topic, partition)) in (None, -1)
        ]

    async def _pause(self, seconds: float) -> None:
        """Sleep, but no longer than until the sender closes."""
        assert self._stopping is not None
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    def _stop_when_closing(self, _: RetryCallState) -> bool:
        return self._closing

    def _note_failing(self, cause: BaseException) -> None:
        """Delivery failed for a reason that may pass (the broker away): told once an outage."""
        if self._outage is not None:
            return
        with self._lock:
            self._outage = _Outage(time.monotonic(), self._dropped, self._failed)
            buffered = len(self._buffer) + self._in_flight
        failing = DeliveryFailing(self.topic, cause, buffered)
        log.warning("%s", failing)
        self._report(failing)

    def _note_delivering(self) -> None:
        """A chunk was delivered: if delivery was failing, it recovered (told once)."""
        outage, self._outage = self._outage, None
        if outage is None:
            return
        with self._lock:
            dropped, failed = self._dropped - outage.dropped, self._failed - outage.failed
        recovered = DeliveryRecovered(
            self.topic, time.monotonic() - outage.began, dropped, failed
        )
        log.warning("%s", recovered)
        self._tell(recovered)  # never raised: recovering is not a failure

    def _drop_undelivered(self) -> None:
        """Closed before Kafka acknowledged everything: what is left is dropped, and said."""
        with self._lock:
            dropped = len(self._buffer) + self._in_flight
            self._dropped += dropped
            self._buffer.clear()
            self._buffered_bytes = 0
            self._in_flight = 0
            self._drained.notify_all()
        if dropped:
            log.warning(
                "closing: %d events not acknowledged by Kafka within close_timeout are dropped "
                "(topic %r; counted in stats().dropped)",
                dropped,
                self.topic,
            )

    async def _send_chunk(
        self, producer: AIOKafkaProducer, chunk: list[Message], alone: dict[int, int]
    ) -> _ChunkOutcome:
        """Send a chunk once and count the outcome; returns what should be tried again.

        The chunk is split by partition (the producer's default partitioner: murmur2 of the
        key, so a run's events share a partition and keep their order in it) and each
        partition's events go out as whole record batches (`send_batch`), one batch after the
        other: the cost per event is appending it to a batch, not a coroutine and a future.
        """
        try:
            groups = await self._by_partition(producer, chunk)
        except Exception as exc:  # no metadata for the topic: nothing was sent
            if _is_retriable(exc):
                return _ChunkOutcome(chunk, alone, exc, False)
            self._refuse(len(chunk), exc)
            return _ChunkOutcome([], {}, None, False)
        self._sending_to = list(groups)
        outcomes = await asyncio.gather(
            *[
                self._send_partition(producer, partition, messages, alone.get(partition, 0))
                for partition, messages in groups.items()
            ]
        )
        retry = [message for outcome in outcomes for message in outcome.retry]
        with self._lock:
            self._in_flight = len(retry)
        return _ChunkOutcome(
            retry,
            {partition: o.alone for partition, o in zip(groups, outcomes) if o.alone},
            next((o.cause for o in outcomes if o.cause is not None), None),
            any(o.spoiled for o in outcomes),
        )

    async def _by_partition(
        self, producer: AIOKafkaProducer, chunk: list[Message]
    ) -> dict[int, list[Message]]:
        """The chunk's events by partition, each list in chunk order."""
        partitions = sorted(await producer.partitions_for(self.topic))
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

    async def _send_partition(
        self, producer: AIOKafkaProducer, partition: int, messages: list[Message], alone: int
    ) -> _PartitionOutcome:
        """Send one partition's events in order, one record batch at a time, each batch after
        the previous one was acknowledged (so a failed batch is retried before anything behind
        it, head-of-line); the first `alone` events one per batch. Counts what was sent and
        refused; stops at the first failure."""
        start, total = 0, len(messages)
        while start < total:
            batch = producer.create_batch()
            limit = start + 1 if start < alone else total
            end = start
            while end < limit:
                key, value = messages[end]
                if batch.append(key=key, value=value, timestamp=None) is None:
                    break  # full (the first event of a batch always fits, however large)
                end += 1
            batch.close()
            if end == start:  # not expected; never loop on an event no batch takes
                self._refuse(1, SendError(
                    f"an event of {len(messages[start][1])} bytes does not fit in a record "
                    f"batch for topic {self.topic!r}"
                ))
                start += 1
                continue
            try:
                delivery = await producer.send_batch(batch, self.topic, partition=partition)
            except Exception as exc:
                # Not queued, so no sequence number was taken: the producer is still sound
                # unless the error says it is gone.
                return self._after_failure(
                    messages, start, end, alone, exc, isinstance(exc, _PRODUCER_LOST)
                )
            try:
                await delivery
            except Exception as exc:
                # The producer numbered this batch (aiokafka numbers a batch when it first
                # leaves its queue, also to fail it there) and the broker never recorded the
                # numbers: its next batch to this partition would be OutOfOrderSequenceNumber.
                return self._after_failure(messages, start, end, alone, exc, True)
            with self._lock:
                self._sent += end - start
                self._in_flight -= end - start
            self._progress_at = time.monotonic()
            start = end
        return _PartitionOutcome()

    def _after_failure(
        self,
        messages: list[Message],
        start: int,
        end: int,
        alone: int,
        exc: BaseException,
        spoiled: bool,
    ) -> _PartitionOutcome:
        """The batch messages[start:end] failed with `exc`: what to try again."""
        if _is_retriable(exc):
            return _PartitionOutcome(messages[start:], max(alone - start, 0), exc, spoiled)
        if end - start > 1:
            # Refused for good. The broker refuses a batch for one bad record; send its events
            # again one per batch, so that one bad event cannot cost the events around it.
            return _PartitionOutcome(messages[start:], end - start, None, spoiled)
        self._refuse(1, exc)
        return _PartitionOutcome(messages[end:], max(alone - end, 0), None, spoiled)

    def _refuse(self, count: int, exc: BaseException) -> None:
        """`count` events Kafka will never take: counted failed and reported."""
        with self._lock:
            self._failed += count
            self._in_flight -= count
        self._report(exc)


async def _stop(producer: AIOKafkaProducer) -> None:
    """Stop a producer, within bounds. Its client is closed in any case: a client left open
    keeps its metadata task, which reconnects without backoff while the broker is away."""
    try:
        await asyncio.wait_for(producer.stop(), _STOP_TIMEOUT_S)
    except Exception:  # a producer being thrown away may fail to stop cleanly; nothing to do
        log.debug("stopping a Kafka producer failed", exc_info=True)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.client.close(), _STOP_TIMEOUT_S)


def _is_retriable(exc: BaseException) -> bool:
    if isinstance(exc, (KafkaTimeoutError, *_PRODUCER_LOST)):
        # KafkaTimeoutError: aiokafka could not queue a batch or find metadata in time, the
        # broker being away (aiokafka does not mark it retriable). The others: a new producer
        # delivers what this one could not.
        return True
    if isinstance(exc, KafkaError):
        return bool(getattr(exc, "retriable", False))
    return isinstance(exc, (ConnectionError, asyncio.TimeoutError))


def _close_at_exit(sender: EventSender) -> None:
    ref = weakref.ref(sender)

    def close() -> None:
        alive = ref()
        if alive is not None:
            alive.close()

    atexit.register(close)
