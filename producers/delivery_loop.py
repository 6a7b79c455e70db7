"""The sender's delivery loop, on its own thread and asyncio loop: takes chunks from the buffer,
routes their events to their partitions' lanes (producers.partition_lanes), and runs one task
per lane that delivers it through the shared idempotent Kafka producer, until the sender closes
(producers.sender states the guarantees this keeps).

Each lane goes at its own pace: one batch in flight, acknowledged before the next (order per
partition), its own backoff after a failure. A partition without a leader holds back only its
own lane: the lane hands the producer nothing while the metadata names no leader (aiokafka
would retry it without backoff) and asks for fresh metadata every `_LEADER_POLL_S` until a
leader is named; a batch already inside the producer when its leader dies is aiokafka's to
re-send to the new leader (same producer id and sequence numbers, so the broker drops a
duplicate); producers.producer_watch discards the producer only when that cannot work.

The failure protocol. A batch that failed after the producer numbered it leaves a gap in that
partition's sequence numbers that the broker never fills (every later batch would be
OutOfOrderSequenceNumber), and OutOfOrderSequenceNumber, UnknownProducerId and a fenced
epoch say the producer's state is gone: in all these cases the producer is discarded (every
batch it still holds fails with ProducerDiscarded) and a new one, with a new producer id,
connects; each lane re-sends what was not acknowledged, from its head, in order. A re-sent
event may land twice; the fold drops duplicates by event_id. Nothing is dropped but what
Kafka refuses for good (a bad record: its batch's events are sent again one per batch, and only
the bad one is counted failed and reported), what the lanes shed to stay bounded, and what is
left when the sender closes.

Connecting is retried with the lanes' backoff (from 50 ms up to `_MAX_BACKOFF_S`), at most one
attempt per backoff for all lanes together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError, LeaderNotAvailableError

import steplog.kafka as kafka
from steplog.errors import SendError
from steplog.schemas.record_signing import RecordSigner

from .outage_report import OutageReport
from .partition_lanes import Lane, PartitionLanes, backoff_s
from .producer_watch import DeliveryProgress, cut_off, discard, leaderless, stop_producer
from .record_batches import KeyPartitions, ProducerDiscarded, fill_batch
from .renewable_producer import sequence_lost
from .record_batches import is_retriable
from .send_buffer import SendBuffer

__all__ = ["Connect", "DeliveryLoop", "ErrorCallback"]

ErrorCallback = Callable[[BaseException], None]
Connect = Callable[[], Awaitable[AIOKafkaProducer]]
"""Starts a producer connected to the cluster."""

log = logging.getLogger("steplog.producers.sender")  # the sender's lines, under its name

# Kafka's request carries batch headers on top of the event; see also steplog.topics.
_REQUEST_HEADROOM_BYTES: Final = 64 * 1024
# Largest record batch the sender builds (one event larger than this still goes, alone). A lane
# keeps one batch in flight, so this bounds what one round trip to the broker carries per
# partition. Below the broker's default max.message.bytes (1 MiB), so any topic takes it.
_BATCH_BYTES: Final = 512 * 1024
# How often a lane whose partition has no leader looks again, asking for fresh metadata: it
# bounds how long after Kafka names a new leader the lane resumes.
_LEADER_POLL_S: Final = 0.25
# A backstop: aiokafka's start has no deadline of its own.
_START_TIMEOUT_S: Final = 15.0


class DeliveryLoop:
    """Delivers `buffer`'s events to `topic` until the buffer is closed (and what is left is
    dropped or spooled).

    `report` is told failures (an outage starting, an event refused for good), `tell` what is
    no failure (an outage ending). `connect` starts a producer; by default one to `bootstrap`.
    The lanes hold at most about `max_lane_bytes` (producers.partition_lanes). Everything but
    construction runs on the delivery thread's loop.
    """

    def __init__(
        self,
        buffer: SendBuffer,
        topic: str,
        bootstrap: kafka.Kafka,
        *,
        chunk_size: int,
        linger_ms: int,
        max_event_bytes: int,
        max_lane_bytes: int,
        report: ErrorCallback,
        tell: ErrorCallback,
        connect: Connect | None = None,
        signer: RecordSigner | None = None,
    ) -> None:
        self._buffer = buffer
        self.topic = topic
        self.bootstrap = bootstrap
        self.chunk_size = chunk_size
        self.linger_ms = linger_ms
        self.max_event_bytes = max_event_bytes
        self.signer = signer
        self._report = report
        self._tell = tell
        self._connect = connect or self._start_producer
        self._changed = asyncio.Event()
        """Set when the loop has something to do: an event queued while it was idle, a lane
        finished, the sender stops."""
        self._stopping = asyncio.Event()
        self._lanes = PartitionLanes(max_lane_bytes)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._key_partitions = KeyPartitions()
        self._partitions: list[int] = []
        # The producer (None while there is none), its watchdog, and the connection backoff.
        self._producer: AIOKafkaProducer | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._discarding: set[asyncio.Task[None]] = set()
        """Producers being discarded in the background: the loop ends only after them."""
        self._connecting = asyncio.Lock()
        self._connect_failures = 0
        self._connect_at = 0.0
        self._connect_error: BaseException | None = None
        self._progress = DeliveryProgress()
        self._outage = OutageReport(topic, buffer.counts)

    def wake(self) -> None:
        """On the loop: an event was queued while the loop was idle."""
        self._changed.set()

    def stop(self) -> None:
        """On the loop, once the buffer is closed: stop what is under way (pauses, retries)
        and wake the loop to see the buffer closed."""
        self._stopping.set()
        self._changed.set()

    async def run(self) -> None:
        try:
            while not self._buffer.closed:
                if not await self._feed():
                    await self._changed.wait()
                    self._changed.clear()
                    if self.linger_ms and not self._buffer.closed and not self._lanes.events:
                        # Woken by the first event after a quiet spell: give the ones right
                        # behind it a moment to join its batch (the producer's linger).
                        await self._pause(self.linger_ms / 1000)
        finally:
            # close() already waited for delivery as long as it may: fail what the producer
            # holds (the lanes end), then drop or spool what is left.
            await self._discard_producer("the sender is closing")
            for task in list(self._tasks.values()):
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            # A discard under way (the watchdog's, a lane's) ends before the loop does, or its
            # producer would be left unclosed and its task destroyed pending.
            await asyncio.gather(*self._discarding, return_exceptions=True)
            self._drop_undelivered()

    async def _feed(self) -> bool:
        """Take chunks into the lanes while they have room, and start the lanes that have
        events to send. False when there was nothing to take. Nothing is taken before the
        topic's partitions are known (events wait in the buffer, bounded, spooled or dropped
        as it does): an event's partition is its key's, never a guess."""
        took = False
        while not self._lanes.full and await self._know_partitions():
            taken = self._buffer.take(self.chunk_size)
            if not taken.messages:
                break
            took = True
            groups = self._key_partitions.group(self._partitions, taken.messages)
            self._lanes.route(groups, taken.from_spool)
            if not self._buffer.spooling:
                shed, spooled = self._lanes.shed()
                if shed:
                    self._buffer.shed(shed, spooled)
        for lane in self._lanes:
            task = self._tasks.get(lane.partition)
            if lane.entries and (task is None or task.done()):
                self._tasks[lane.partition] = asyncio.ensure_future(self._run_lane(lane))
        return took

    async def _know_partitions(self) -> bool:
        """Whether the topic's partitions are known (as the producer's metadata has them
        now, else as last seen). When they cannot be learnt, the loop is woken again after
        the connection's backoff; a topic Kafka refuses for good costs the next chunk, refused
        and reported (a message naming the topic)."""
        producer = self._producer
        if producer is not None:
            known = producer.client.cluster.partitions_for_topic(self.topic)
            if known:
                self._partitions = sorted(known)
        if self._partitions:
            return True
        try:
            producer = await self._ensure_producer()
            self._partitions = sorted(await producer.partitions_for(self.topic))
            return True
        except Exception as exc:
            if is_retriable(exc):
                self._note_failure(exc)
                delay = max(self._connect_at - time.monotonic(), backoff_s(1))
                asyncio.get_running_loop().call_later(delay, self._changed.set)
                return False
            taken = self._buffer.take(self.chunk_size)
            self._buffer.refused(len(taken.messages), len(taken.messages) * taken.from_spool)
            self._report(exc)
            return bool(taken.messages)

    # ---------------------------------------------------------------------- one lane

    async def _run_lane(self, lane: Lane) -> None:
        """Deliver the lane's events in order until it is empty or the sender closes."""
        try:
            while lane.entries and not self._buffer.closed:
                wait = lane.ready_at - time.monotonic()
                if wait > 0:
                    await self._pause(wait)
                    continue
                await self._send_head(lane)
        finally:
            self._changed.set()  # room in the lanes, or a lane to start again

    async def _send_head(self, lane: Lane) -> None:
        """One attempt at the lane's next batch."""
        try:
            producer = await self._ensure_producer()
        except Exception as exc:  # the cluster is not there (yet): retried with backoff
            self._lane_failed(lane, exc)
            return
        if leaderless(producer, self.topic, [lane.partition]):
            # Never hand aiokafka a batch it would retry without backoff: wait here, asking
            # for fresh metadata, until Kafka names a leader.
            producer.client.force_metadata_update()
            self._lane_failed(lane, LeaderNotAvailableError(
                f"partition {lane.partition} of {self.topic!r} has no leader"
            ), waiting=True)
            return
        batch, count = fill_batch(producer, self.topic, lane.next_batch(), self.signer)
        if count == 0:  # not expected; never loop on an event no batch takes
            self._refuse(lane, 1, SendError(
                f"an event of {len(lane.entries[0][1])} bytes does not fit in a record batch "
                f"for topic {self.topic!r}"
            ))
            return
        lane.sending, lane.sent_at = count, time.monotonic()
        try:
            delivery = await producer.send_batch(batch, self.topic, partition=lane.partition)
        except Exception as exc:
            # Not queued, so not numbered: the producer is still sound unless the error says
            # it is gone.
            self._batch_failed(lane, producer, exc, numbered=sequence_lost(exc, queued=False))
            return
        try:
            await delivery
        except Exception as exc:
            # Numbered (aiokafka numbers a batch when it first leaves its queue, also to fail
            # it there) and not recorded by the broker: a gap in the sequence.
            self._batch_failed(lane, producer, exc, numbered=sequence_lost(exc, queued=True))
            return
        self._delivered(lane, count)

    def _delivered(self, lane: Lane, count: int) -> None:
        spooled = self._lanes.delivered(lane, count)
        self._buffer.acknowledged(count, spooled)
        self._progress.acknowledged_at = time.monotonic()
        if not self._lanes.failing:
            recovered = self._outage.delivering()
            if recovered is not None:
                self._tell(recovered)  # never reported as a failure: recovering is not one

    def _batch_failed(
        self, lane: Lane, producer: AIOKafkaProducer, exc: BaseException, *, numbered: bool
    ) -> None:
        if numbered:
            self._drop_producer(producer, f"it failed a batch ({type(exc).__name__})")
        if is_retriable(exc):
            self._lane_failed(lane, exc)
        elif lane.sending > 1:
            # Refused for good. The broker refuses a batch for one bad record: its events go
            # again one per batch, so that one bad event cannot cost the events around it.
            lane.alone, lane.sending = lane.sending, 0
        else:
            self._refuse(lane, 1, exc)

    def _lane_failed(self, lane: Lane, exc: BaseException, *, waiting: bool = False) -> None:
        """A failure that may pass: the lane backs off (`waiting` for a leader: it looks again
        in `_LEADER_POLL_S`, no delivery having failed); the outage is told once."""
        if waiting:
            lane.failed(time.monotonic(), wait=_LEADER_POLL_S)
        else:
            lane.failed(time.monotonic())
            self._buffer.retried(len(lane.entries))
        self._note_failure(exc)

    def _note_failure(self, exc: BaseException) -> None:
        if not self._buffer.closed:
            failing = self._outage.failing(exc)
            if failing is not None:
                self._report(failing)

    def _refuse(self, lane: Lane, count: int, exc: BaseException) -> None:
        """`count` events at the lane's head Kafka will never take: counted failed, reported."""
        spooled = self._lanes.delivered(lane, count)
        self._buffer.refused(count, spooled)
        self._report(exc)

    # ------------------------------------------------------------------ the producer

    async def _ensure_producer(self) -> AIOKafkaProducer:
        """The producer; one is connected if there is none, at most once per backoff for all
        lanes (between attempts, the last attempt's error is raised again)."""
        async with self._connecting:
            if self._producer is not None:
                return self._producer
            if time.monotonic() < self._connect_at and self._connect_error is not None:
                raise self._connect_error
            try:
                producer = await self._connect()
            except Exception as exc:
                self._connect_failures += 1
                self._connect_at = time.monotonic() + backoff_s(self._connect_failures)
                self._connect_error = exc
                raise
            self._connect_failures = 0
            self._producer = producer
            self._progress.acknowledged_at = time.monotonic()
            self._watchdog = asyncio.ensure_future(self._watch(producer))
            return producer

    async def _watch(self, producer: AIOKafkaProducer) -> None:
        reason = await cut_off(producer, self.topic, self._lanes, self._progress,
                               lambda: self._buffer.closed, self._pause,
                               lambda why: self._note_failure(KafkaTimeoutError(why)))
        # In a task of its own, which the loop waits for before it ends (the discard cancels
        # this watchdog, which has returned by then).
        self._drop_producer(producer, reason)

    async def _start_producer(self) -> AIOKafkaProducer:
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
            **kafka.FAILOVER_PRODUCER_OPTIONS,
        )
        try:
            await asyncio.wait_for(kafka.start(producer, self.bootstrap), _START_TIMEOUT_S)
        except BaseException:
            await stop_producer(producer)  # releases the half-opened client
            raise
        return producer

    def _drop_producer(self, producer: AIOKafkaProducer, reason: str) -> None:
        """From a lane or the watchdog: discard the producer in the background (the other batches
        in it fail and are re-sent through the next one)."""
        task = asyncio.ensure_future(self._discard_producer(reason, producer))
        self._discarding.add(task)
        task.add_done_callback(self._discarding.discard)

    async def _discard_producer(self, reason: str, only: AIOKafkaProducer | None = None) -> None:
        """Stop the producer (`only` that one: not its successor) without waiting for what it
        holds (producers.producer_watch)."""
        if only is not None and only is not self._producer:
            return
        producer, self._producer = self._producer, None
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.cancel()  # it only sleeps and looks: cancelling it anywhere is safe
            with contextlib.suppress(BaseException):
                await watchdog
        if producer is None:
            return
        log.info("the producer to %r is discarded: %s", self.topic, reason)
        await discard(
            producer, ProducerDiscarded(f"the producer to {self.topic!r} was discarded: {reason}")
        )

    async def _pause(self, seconds: float) -> None:
        """Sleep, but no longer than until the sender closes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _drop_undelivered(self) -> None:
        """Closed before Kafka acknowledged everything: what is left is dropped, and said (or
        kept in the spool, producers.spool)."""
        dropped = self._buffer.drop_undelivered(self._lanes.take_all())
        if dropped:
            log.warning(
                "closing: %d events not acknowledged by Kafka within close_timeout are dropped "
                "(topic %r; counted in stats().dropped)",
                dropped,
                self.topic,
            )
