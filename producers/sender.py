"""The sender: hands events to Kafka in the background so callers never wait on the network.

`send()` only appends to an in-memory buffer and returns; a daemon thread with its own asyncio
loop drains the buffer into an aiokafka producer. This works the same from sync code and from
asyncio code (the caller's loop is never used, so a blocked or closed caller loop cannot stall
delivery). Each event goes to the lane of its partition, computed as the producer's default
partitioner does (murmur2 of the key), and each lane delivers on its own, as whole record
batches (`send_batch`): per event, the delivery thread only appends bytes to a batch, so it
takes little of the GIL from the caller's threads (producers.delivery_loop, partition_lanes).

Guarantees and their limits:
- Each partition is delivered independently. A partition without a leader (its broker dead,
  an election pending) holds back only its own events: the others keep being acknowledged at
  full rate meanwhile. Failover is Kafka's: once Kafka names a new leader, its partition
  resumes within about `retry_backoff_ms` plus a metadata round trip (README, "Failover").
- Order per key (run_id) is kept: a key always maps to one partition, and a partition's
  batches go one after another, each only once the previous one was acknowledged; a batch
  that fails is retried, with everything behind it, before anything else of its partition.
- Memory is bounded: the buffer holds at most three quarters of `max_buffer_bytes` (when more
  arrives, the oldest events are dropped and counted in `stats().dropped`), the partitions'
  lanes about a quarter more (plus one chunk). An outage therefore loses the oldest telemetry,
  never the process. With a spool (`spool=`, producers.spool) they go to disk instead,
  bounded in bytes, and are sent first, in order, when Kafka is back, also by the next process
  to open the spool dir after a restart. Without a spool, a partition that stays without a
  leader while others deliver has its oldest events dropped once it fills the lanes' share;
  with one, it fills that share and the others then wait (on disk, nothing lost) for it.
- Nothing buffered is lost to an outage the buffer can hold. The producer is idempotent: a
  batch it numbered and then failed (or OutOfOrderSequenceNumber, UnknownProducerId, a fenced
  epoch) means its sequence state is gone, so it is discarded and what was not acknowledged is
  re-sent through a new one (a new producer id). A re-sent event may land twice; the fold drops
  duplicates by `event_id`.
- No busy loop while a broker is away: aiokafka retries a partition without a leader with no
  backoff at all (a full core, measured), so it is never handed a batch for one, and a
  watchdog discards the producer if it holds one anyway (producers.producer_watch);
  connecting is retried with exponential backoff up to a few seconds.
- An outage is told once, not per attempt: one log line and one `on_error(DeliveryFailing)`
  when delivery starts failing, one line and one `on_error(DeliveryRecovered)` when every
  partition delivers again (producers.outage_report). aiokafka's own per-attempt lines from the
  delivery thread are rate-limited (producers.kafka_logs). Events Kafka refuses for good (a bad
  record) are counted `failed` and each reported; when the broker refuses a batch, its events
  are sent again one per batch, so only the bad ones are lost.
- `close()` (also run at interpreter exit) waits at most `close_timeout`: what is still
  undelivered then is dropped, counted in `stats().dropped` and logged in one line.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING

from steplog.errors import EventTooLargeError, SendError
from steplog.producers.kafka_logs import SENDER_THREAD_PREFIX, limit_sender_thread_logs
from steplog.record_signer import own_signer
from steplog.schemas.codec import DEFAULT_MAX_BYTES, encode
from steplog.schemas.events import Event
from steplog.schemas.record_signing import RecordSigner

if TYPE_CHECKING:
    from steplog.kafka import Kafka

from .delivery_loop import DeliveryLoop, ErrorCallback
from .send_buffer import SendBuffer
from .spool import Spool

# Re-exported: callers of EventSender.send name its messages; run_log.py and run_end_tail.py
# find a run's partition as the sender chose it; stats() answers a SenderStats.
from .record_batches import Message as Message
from .record_batches import key_partition as key_partition
from .send_buffer import SenderStats as SenderStats

__all__ = ["ErrorCallback", "EventSender", "Message", "SenderStats", "key_partition"]

# Of close()'s budget, the share left for the delivery thread to stop and count what it drops.
_CLOSE_STOP_SHARE = 0.1
# Of max_buffer_bytes, the share the partitions' lanes may hold (the buffer has the rest).
_LANES_SHARE = 0.25
# This process's id, kept here because os.getpid() is a system call and send() asks on every
# event whether it runs in the process that started the delivery thread (a forked child must
# start its own).
_pid = os.getpid()


def _note_fork() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_note_fork)


class EventSender:
    """Batches encoded events to one topic; see the module docstring for its guarantees.

    This is the callers' side (queue, flush, close, stats, failures to raise); the delivery
    thread runs a producers.delivery_loop.DeliveryLoop over the shared SendBuffer.
    """

    def __init__(
        self,
        bootstrap: Kafka,
        topic: str,
        *,
        max_buffer_bytes: int = 64 * 1024 * 1024,
        max_event_bytes: int = DEFAULT_MAX_BYTES,
        chunk_size: int = 5000,
        linger_ms: int = 5,
        on_error: ErrorCallback | None = None,
        throw_on_send_error: bool = False,
        close_timeout: float = 10.0,
        signer: RecordSigner | None = None,
        spool: Spool | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        # Each record signed with this process's own key unless told which (README, Security).
        self.signer = signer if signer is not None else own_signer()
        self.max_buffer_bytes = max_buffer_bytes
        self.max_event_bytes = max_event_bytes
        self.chunk_size = chunk_size
        self.linger_ms = linger_ms
        self.on_error = on_error
        self.throw_on_send_error = throw_on_send_error
        self.close_timeout = close_timeout

        self._lane_bytes = int(max_buffer_bytes * _LANES_SHARE)
        self._buffer = SendBuffer(topic, max_buffer_bytes - self._lane_bytes, spool)
        self._errors_lock = threading.Lock()
        self._pending_errors: list[BaseException] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._delivery: DeliveryLoop | None = None
        self._owner_pid = 0
        if spool is not None and spool.unread:
            self._start()  # what an earlier process spooled goes first, new events or not

    def send_event(self, event: Event) -> None:
        """Encode and queue an event, keyed by its run id."""
        self.send(event.run_id.encode(), encode(event, max_bytes=self.max_event_bytes))

    def send(self, key: bytes, value: bytes) -> None:
        """Queue one encoded event; returns at once. Raises EventTooLargeError for an event
        over the limit, and SendError for earlier failures when throw_on_send_error is set."""
        # One test for the three rare cases, so that the common one pays a single branch.
        if len(value) > self.max_event_bytes or self._pending_errors or self._owner_pid != _pid:
            self._before_unusual_send(len(value))
        if self._buffer.append(key, value):
            # The loop was idle (a busy one takes the next chunk by itself: no cross-thread
            # call, a pipe write, on the per-event path).
            assert self._loop is not None and self._delivery is not None
            self._loop.call_soon_threadsafe(self._delivery.wake)

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

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every queued event is acknowledged (or dropped/failed); False on timeout.

        With throw_on_send_error, raises SendError for failures seen since the last check.
        """
        done = self._buffer.wait_drained(timeout)
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
            self._buffer.close_spool()
            return
        budget = self.close_timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        try:
            self.flush(budget * (1 - _CLOSE_STOP_SHARE))
        finally:
            self._buffer.close()
            assert self._loop is not None and self._delivery is not None
            try:
                # One callback: the loop may finish (and close) right after the first event
                # is set, and a second call would find it closed.
                self._loop.call_soon_threadsafe(self._delivery.stop)
            except RuntimeError:  # closed already: the delivery thread has ended by itself
                pass
            self._thread.join(max(deadline - time.monotonic(), 0.0))
            if not self._thread.is_alive():  # else the OS releases the spool at exit
                self._buffer.close_spool()
            self._thread = None

    def stats(self) -> SenderStats:
        return self._buffer.stats()

    def _raise_pending_errors(self) -> None:
        if not self.throw_on_send_error or not self._pending_errors:
            return
        with self._errors_lock:
            errors, self._pending_errors = self._pending_errors, []
        raise SendError(
            f"{len(errors)} send failure(s) to topic {self.topic!r}; first: {errors[0]!r}"
        ) from errors[0]

    def _report(self, exc: BaseException) -> None:
        """A failure: raised at the next call with throw_on_send_error, and told on_error."""
        if self.throw_on_send_error:
            with self._errors_lock:
                self._pending_errors.append(exc)
        self._tell(exc)

    def _tell(self, exc: BaseException) -> None:
        if self.on_error is not None:
            try:
                self.on_error(exc)
            except Exception:  # a broken callback must not kill delivery
                pass

    def _start(self) -> None:
        # Also runs in a forked child (the parent's thread does not exist there): the buffer
        # copied from the parent belongs to the parent, which delivers it.
        self._buffer.forget()
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
        loop = self._loop = asyncio.new_event_loop()
        self._delivery = DeliveryLoop(
            self._buffer,
            self.topic,
            self.bootstrap,
            chunk_size=self.chunk_size,
            linger_ms=self.linger_ms,
            max_event_bytes=self.max_event_bytes,
            max_lane_bytes=self._lane_bytes,
            report=self._report,
            tell=self._tell,
            signer=self.signer,
        )
        ready.set()
        try:
            loop.run_until_complete(self._delivery.run())
        finally:
            loop.close()


def _close_at_exit(sender: EventSender) -> None:
    ref = weakref.ref(sender)

    def close() -> None:
        alive = ref()
        if alive is not None:
            alive.close()

    atexit.register(close)
