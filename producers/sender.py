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
  before anything else of its partition is sent (head-of-line). The producer is idempotent, so
  broker-side retries do not reorder or duplicate within a partition.
- Memory is bounded: when the buffer holds more than `max_buffer_bytes`, the oldest events are
  dropped and counted (`stats().dropped`). An outage therefore loses the oldest telemetry, never
  the process.
- Retriable Kafka errors (broker down, leader moving) are retried forever with exponential
  backoff and jitter; each failure is reported to `on_error`. Non-retriable ones (a message the
  broker refuses) drop the failed events, count them as `failed` and report; when the broker
  refuses a batch, its events are sent again one by one, so only the bad ones are lost.
- On interpreter exit the buffer is flushed for up to `close_timeout` seconds.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError, ProducerClosed
from aiokafka.partitioner import DefaultPartitioner
from pydantic import BaseModel, ConfigDict
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception,
    wait_exponential_jitter,
)

from steplog.errors import EventTooLargeError, SendError
from steplog.schemas.codec import DEFAULT_MAX_BYTES, encode
from steplog.schemas.events import Event

ErrorCallback = Callable[[BaseException], None]
Message = tuple[bytes, bytes]
"""An encoded event: (key, value)."""
# Kafka's request carries batch headers on top of the event; see also steplog.topics.
_REQUEST_HEADROOM_BYTES = 64 * 1024
# Largest record batch the sender builds (one event larger than this still goes, alone). The
# producer keeps one batch per partition in flight, so this bounds what one round trip to the
# broker carries. Below the broker's default max.message.bytes (1 MiB), so any topic takes it.
_BATCH_BYTES = 512 * 1024
# Partition of each key seen lately (murmur2 in pure Python costs microseconds per key).
_PARTITION_CACHE_KEYS = 100_000
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
# An error about a batch as a whole (the producer is closing): sending its events one by one
# would fail the same way.
_BATCH_WIDE_ERRORS = (ProducerClosed,)


class SenderStats(BaseModel):
    """Counters since the sender was created."""

    model_config = ConfigDict(frozen=True)

    sent: int
    """Events acknowledged by Kafka."""
    retried: int
    """Event deliveries that failed and were tried again (one event may count more than once)."""
    dropped: int
    """Oldest events discarded because the buffer was full."""
    failed: int
    """Events Kafka refused for good (non-retriable errors)."""
    buffered: int
    """Events waiting to be delivered now."""
    buffered_bytes: int


class _Retriable(Exception):
    """A chunk had retriable failures; tenacity retries the part that failed."""

    def __init__(self, messages: list[Message]) -> None:
        super().__init__(f"{len(messages)} events to retry")
        self.messages = messages


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
        self._loop_idle = False
        self._closing = False
        self._owner_pid = 0
        # Delivery thread only: the topic's partitions and the partition of recent keys.
        self._partitions: list[int] = []
        self._partition_of: dict[bytes, int] = {}

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
        """Flush (for up to `timeout`, default close_timeout) and stop the background thread."""
        if self._thread is None or self._owner_pid != _pid:
            return
        self.flush(self.close_timeout if timeout is None else timeout)
        with self._lock:
            self._closing = True
        assert self._loop is not None and self._wake is not None
        self._loop.call_soon_threadsafe(self._wake.set)
        self._thread.join(self.close_timeout if timeout is None else timeout)
        self._thread = None

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
        if self.throw_on_send_error:
            with self._lock:
                self._pending_errors.append(exc)
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
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run_loop, args=(ready,), name=f"steplog-sender-{self.topic}", daemon=True
        )
        self._thread.start()
        ready.wait()
        _close_at_exit(self)

    def _run_loop(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        self._wake = asyncio.Event()
        ready.set()
        try:
            self._loop.run_until_complete(self._deliver_forever())
        finally:
            self._loop.close()

    async def _deliver_forever(self) -> None:
        assert self._wake is not None
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
        if not await self._start_producer(producer):
            self._abandon_buffer()
            await producer.stop()  # releases the half-opened client
            return
        try:
            while True:
                chunk = self._take_chunk()
                if chunk:
                    await self._deliver(producer, chunk)
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
            await producer.stop()

    async def _start_producer(self, producer: AIOKafkaProducer) -> bool:
        """Connect, retrying until it works or the sender is closed (then False)."""
        # Every start failure is worth retrying: the broker may simply not be up yet, and
        # meanwhile events wait in the bounded buffer.
        try:
            async for attempt in AsyncRetrying(
                wait=wait_exponential_jitter(multiplier=0.2, max=10, jitter=0.5),
                retry=retry_if_exception(self._note_start_failure),
                stop=self._stop_when_closing,
            ):
                with attempt:
                    await producer.start()
        except RetryError:
            return False
        return True

    def _stop_when_closing(self, _: RetryCallState) -> bool:
        return self._closing

    def _abandon_buffer(self) -> None:
        """Closed while Kafka is unreachable: what is left counts as failed, not sent."""
        with self._lock:
            self._failed += len(self._buffer) + self._in_flight
            self._buffer.clear()
            self._buffered_bytes = 0
            self._in_flight = 0
            self._drained.notify_all()

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

    async def _deliver(self, producer: AIOKafkaProducer, chunk: list[Message]) -> None:
        pending = chunk
        try:
            async for attempt in AsyncRetrying(
                wait=wait_exponential_jitter(multiplier=0.1, max=10, jitter=0.5),
                retry=retry_if_exception(lambda exc: isinstance(exc, _Retriable)),
                stop=self._stop_when_closing,
            ):
                with attempt:
                    try:
                        await self._send_chunk(producer, pending)
                    except _Retriable as exc:
                        pending = exc.messages
                        with self._lock:
                            self._retried += len(pending)
                        raise
        except RetryError:
            self._abandon_buffer()
        with self._lock:
            self._in_flight = 0

    async def _send_chunk(self, producer: AIOKafkaProducer, chunk: list[Message]) -> None:
        """Send a chunk and count the outcome; raise _Retriable with what should be retried.

        The chunk is split by partition (the producer's default partitioner: murmur2 of the
        key, so a run's events share a partition and keep their order in it) and each
        partition's events go out as whole record batches (`send_batch`), one batch after the
        other: the cost per event is appending it to a batch, not a coroutine and a future.
        """
        try:
            groups = await self._by_partition(producer, chunk)
        except Exception as exc:  # no metadata for the topic: nothing was sent
            self._report(exc)
            if _is_retriable(exc):
                raise _Retriable(chunk) from exc
            with self._lock:
                self._failed += len(chunk)
                self._in_flight = 0
            return
        outcomes = await asyncio.gather(
            *[self._send_partition(producer, p, messages) for p, messages in groups.items()]
        )
        retry = [message for pending, _ in outcomes for message in pending]
        with self._lock:
            self._in_flight = len(retry)
        first_error = next((error for _, error in outcomes if error is not None), None)
        if first_error is not None:
            self._report(first_error)
        if retry:
            raise _Retriable(retry)

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
        self, producer: AIOKafkaProducer, partition: int, messages: list[Message]
    ) -> tuple[list[Message], BaseException | None]:
        """Send one partition's events in order, one record batch at a time, each batch after
        the previous one was acknowledged (so a failed batch is retried before anything behind
        it, head-of-line). Counts what was sent and refused; returns what should be retried
        (the failed batch and everything behind it) and the first error."""
        first_error: BaseException | None = None
        start, total = 0, len(messages)
        while start < total:
            batch = producer.create_batch()
            end = start
            while end < total:
                key, value = messages[end]
                if batch.append(key=key, value=value, timestamp=None) is None:
                    break  # full (the first event of a batch always fits, however large)
                end += 1
            batch.close()
            if end == start:  # not expected; never loop on an event the batch refused
                retry, _ = await self._send_one_by_one(
                    producer, partition, messages[start : start + 1], None
                )
                if retry:
                    return retry + messages[start + 1 :], first_error
                start += 1
                continue
            try:
                delivery = await producer.send_batch(batch, self.topic, partition=partition)
                await delivery
            except Exception as exc:
                first_error = first_error or exc
                if _is_retriable(exc):
                    return messages[start:], first_error
                # Refused for good. The broker refuses a batch for one bad record; find out
                # which, so that one bad event cannot cost the events around it.
                retry, error = await self._send_one_by_one(
                    producer, partition, messages[start:end], exc
                )
                if retry:
                    return retry + messages[end:], first_error
            else:
                with self._lock:
                    self._sent += end - start
                    self._in_flight -= end - start
            start = end
        return [], first_error

    async def _send_one_by_one(
        self,
        producer: AIOKafkaProducer,
        partition: int,
        messages: list[Message],
        batch_error: BaseException | None,
    ) -> tuple[list[Message], BaseException | None]:
        """After a batch was refused (`batch_error`; None: never sent): each of its events on
        its own. Counts what was sent and refused; returns the retriable failures in order and
        the batch's error."""
        if batch_error is not None and (
            len(messages) == 1 or isinstance(batch_error, _BATCH_WIDE_ERRORS)
        ):
            outcomes: list[object] = [batch_error] * len(messages)
        else:
            futures = [await self._enqueue(producer, partition, k, v) for k, v in messages]
            outcomes = await asyncio.gather(*futures, return_exceptions=True)
        retry: list[Message] = []
        sent = refused = 0
        for message, outcome in zip(messages, outcomes):
            if not isinstance(outcome, BaseException):
                sent += 1
            elif _is_retriable(outcome):
                retry.append(message)
            else:
                refused += 1
        with self._lock:
            self._sent += sent
            self._failed += refused
            self._in_flight -= sent + refused
        return retry, batch_error

    async def _enqueue(
        self, producer: AIOKafkaProducer, partition: int, key: bytes, value: bytes
    ) -> asyncio.Future[object]:
        """The producer's delivery future for one event; a send refused before queuing becomes
        a failed future, so one bad event cannot stop the others."""
        try:
            future: asyncio.Future[object] = await producer.send(
                self.topic, value=value, key=key, partition=partition
            )
        except Exception as exc:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(exc)
        return future

    def _note_start_failure(self, exc: BaseException) -> bool:
        self._report(exc)
        return True


def _is_retriable(exc: BaseException) -> bool:
    if isinstance(exc, KafkaTimeoutError):
        # aiokafka gives up on a batch after request_timeout_ms (40 s) without a broker, or
        # could not queue it in that time: the broker is down, which is retried like the rest
        # (aiokafka does not mark it retriable).
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

