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
  a partition being sent to has had no leader for `LEADERLESS_GRACE_S`, or nothing was
  acknowledged for `STALL_S` (producers.producer_watch); until a new producer connects,
  nothing of aiokafka runs, and connecting is retried with exponential backoff (tenacity) up
  to `_BACKOFF_MAX_S`.
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
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from pydantic import BaseModel, ConfigDict
from tenacity import AsyncRetrying, RetryCallState, RetryError, retry_if_exception_type
from tenacity import wait_exponential_jitter

import steplog.kafka as kafka
from steplog.errors import DeliveryFailing, DeliveryRecovered, EventTooLargeError, SendError
from steplog.producers.kafka_logs import SENDER_THREAD_PREFIX, limit_sender_thread_logs
from steplog.schemas.codec import DEFAULT_MAX_BYTES, encode
from steplog.schemas.events import Event

from .producer_watch import DeliveryProgress, cut_off, discard, stop_producer
from .record_batches import (
    ChunkOutcome,
    KeyPartitions,
    PartitionOutcome,
    ProducerDiscarded,
    is_retriable,
    send_partition,
)
# Re-exported: callers of EventSender.send name its messages; run_log.py and run_end_tail.py
# find a run's partition as the sender chose it.
from .record_batches import Message as Message
from .record_batches import key_partition as key_partition

ErrorCallback = Callable[[BaseException], None]

log = logging.getLogger(__name__)

# Kafka's request carries batch headers on top of the event; see also steplog.topics.
_REQUEST_HEADROOM_BYTES = 64 * 1024
# Largest record batch the sender builds (one event larger than this still goes, alone). The
# producer keeps one batch per partition in flight, so this bounds what one round trip to the
# broker carries. Below the broker's default max.message.bytes (1 MiB), so any topic takes it.
_BATCH_BYTES = 512 * 1024
# Between two attempts to deliver a chunk (a new producer connecting, mostly): from 0.2 s,
# doubling, with jitter, up to a few seconds, so a broker that comes back is used soon after
# and a broker that stays away costs a connection attempt every few seconds.
_BACKOFF_MAX_S = 5.0
_BACKOFF = wait_exponential_jitter(multiplier=0.2, max=_BACKOFF_MAX_S, jitter=0.5)
# A backstop: aiokafka's start has no deadline of its own.
_START_TIMEOUT_S = 15.0
# Of close()'s budget, the share left for the delivery thread to stop and count what it drops.
_CLOSE_STOP_SHARE = 0.1
# This process's id, kept here because os.getpid() is a system call and send() asks on every
# event whether it runs in the process that started the delivery thread (a forked child must
# start its own).
_pid = os.getpid()


def _note_fork() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_note_fork)


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
        # Delivery thread only: the producer (None while the broker is away), the partition
        # of recent keys (with the topic's partitions), the partitions of the chunk being sent,
        # when Kafka last acknowledged anything, and the outage under way.
        self._producer: AIOKafkaProducer | None = None
        self._key_partitions = KeyPartitions()
        self._progress = DeliveryProgress()
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

    async def _attempt(self, chunk: list[Message], alone: dict[int, int]) -> ChunkOutcome:
        """Send a chunk through the producer (one is started if there is none), under the
        watchdog that discards a producer cut off from the cluster."""
        if self._closing:  # close() already waited for delivery as long as it may
            return ChunkOutcome(chunk, alone, None, False)
        try:
            producer = await self._ensure_producer()
        except Exception as exc:  # the broker is not there (yet): retried with backoff
            return ChunkOutcome(chunk, alone, exc, False)
        self._progress.acknowledged_at = time.monotonic()
        sending = asyncio.ensure_future(self._send_chunk(producer, chunk, alone))
        watchdog = asyncio.ensure_future(
            cut_off(producer, self.topic, self._progress, lambda: self._closing, self._pause)
        )
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
        producer = kafka.producer(
            self.bootstrap,
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
            await stop_producer(producer)  # releases the half-opened client
            raise
        self._producer = producer
        return producer

    async def _discard_producer(self, reason: str) -> None:
        """Stop the producer without waiting for what it holds (producers.producer_watch)."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        await discard(
            producer, ProducerDiscarded(f"the producer to {self.topic!r} was discarded: {reason}")
        )

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
    ) -> ChunkOutcome:
        """Send a chunk once and count the outcome; returns what should be tried again.

        The chunk is split by partition and each partition's events go out as whole record
        batches, one after the other (producers.record_batches).
        """
        try:
            partitions = sorted(await producer.partitions_for(self.topic))
            groups = self._key_partitions.group(partitions, chunk)
        except Exception as exc:  # no metadata for the topic: nothing was sent
            if is_retriable(exc):
                return ChunkOutcome(chunk, alone, exc, False)
            self._refuse(len(chunk), exc)
            return ChunkOutcome([], {}, None, False)
        self._progress.sending_to = list(groups)
        outcomes: list[PartitionOutcome] = await asyncio.gather(
            *[
                send_partition(
                    producer, self.topic, partition, messages, alone.get(partition, 0),
                    self._acknowledged, self._refuse,
                )
                for partition, messages in groups.items()
            ]
        )
        retry = [message for outcome in outcomes for message in outcome.retry]
        with self._lock:
            self._in_flight = len(retry)
        return ChunkOutcome(
            retry,
            {partition: o.alone for partition, o in zip(groups, outcomes) if o.alone},
            next((o.cause for o in outcomes if o.cause is not None), None),
            any(o.spoiled for o in outcomes),
        )

    def _acknowledged(self, count: int) -> None:
        with self._lock:
            self._sent += count
            self._in_flight -= count
        self._progress.acknowledged_at = time.monotonic()

    def _refuse(self, count: int, exc: BaseException) -> None:
        """`count` events Kafka will never take: counted failed and reported."""
        with self._lock:
            self._failed += count
            self._in_flight -= count
        self._report(exc)


def _close_at_exit(sender: EventSender) -> None:
    ref = weakref.ref(sender)

    def close() -> None:
        alive = ref()
        if alive is not None:
            alive.close()

    atexit.register(close)
