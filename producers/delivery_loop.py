"""The sender's delivery loop, on its own thread and asyncio loop: takes chunks from the buffer
and delivers each through an idempotent Kafka producer, retrying with backoff what is left,
until the sender closes (producers.sender states the guarantees this keeps).

A producer that failed a batch, lost its sequence state or was cut off from the cluster
(producers.producer_watch) is discarded and never sent through again; the next attempt connects
a new one. Connecting is retried with exponential backoff (tenacity) up to `_BACKOFF_MAX_S`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaProducer
from tenacity import AsyncRetrying, RetryCallState, RetryError, retry_if_exception_type
from tenacity import wait_exponential_jitter

import steplog.kafka as kafka
from steplog.schemas.record_signing import RecordSigner

from .outage_report import OutageReport
from .producer_watch import cut_off, discard, stop_producer
from .record_batches import ChunkOutcome, ChunkSender, Message, ProducerDiscarded
from .send_buffer import SendBuffer

__all__ = ["Connect", "DeliveryLoop", "ErrorCallback"]

ErrorCallback = Callable[[BaseException], None]
Connect = Callable[[], Awaitable[AIOKafkaProducer]]
"""Starts a producer connected to the cluster."""

log = logging.getLogger("steplog.producers.sender")  # the sender's lines, under its name

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


class _Retriable(Exception):
    """An attempt left events to deliver; tenacity waits and tries again."""


class DeliveryLoop:
    """Delivers `buffer`'s events to `topic` until the buffer is closed and empty.

    `report` is told failures (an outage starting, an event refused for good), `tell` what is
    no failure (an outage ending). `connect` starts a producer; by default one to `bootstrap`.
    Everything but construction runs on the delivery thread's loop.
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
        self._report = report
        self._tell = tell
        self._connect = connect or self._start_producer
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        # The producer (None while the broker is away), the chunks' sender and the outage.
        self._producer: AIOKafkaProducer | None = None
        self._chunks = ChunkSender(topic, buffer.acknowledged, self._refuse, signer)
        self._outage = OutageReport(topic, buffer.counts)

    def wake(self) -> None:
        """On the loop: an event was queued while the loop was idle."""
        self._wake.set()

    def stop(self) -> None:
        """On the loop, once the buffer is closed: stop what is under way (pauses, retries)
        and wake the loop to see the buffer closed."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        try:
            while True:
                chunk = self._buffer.take(self.chunk_size)
                if chunk:
                    await self._deliver(chunk)
                    continue
                if self._buffer.closed:
                    return
                await self._wake.wait()
                self._wake.clear()
                if self.linger_ms and not self._buffer.closed:
                    # Woken by the first event after a quiet spell: give the ones right behind
                    # it a moment to join its batch (the producer's linger, for whole chunks).
                    await asyncio.sleep(self.linger_ms / 1000)
        finally:
            await self._discard_producer("the sender is closing")

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
                    if outcome.cause is not None and not self._buffer.closed:
                        failing = self._outage.failing(outcome.cause)
                        if failing is not None:
                            self._report(failing)
                    if outcome.retry:
                        pending, alone = outcome.retry, outcome.alone
                        self._buffer.retried(len(pending))
                        if self._buffer.set_aside(pending):
                            return  # to the spool's front, taken again before what it holds
                        raise _Retriable()
        except RetryError:
            self._drop_undelivered(pending)
            return
        recovered = self._outage.delivering()
        if recovered is not None:
            self._tell(recovered)  # never reported as a failure: recovering is not one

    async def _attempt(self, chunk: list[Message], alone: dict[int, int]) -> ChunkOutcome:
        """Send a chunk through the producer (one is started if there is none), under the
        watchdog that discards a producer cut off from the cluster."""
        if self._buffer.closed:  # close() already waited for delivery as long as it may
            return ChunkOutcome(chunk, alone, None, False)
        try:
            producer = await self._ensure_producer()
        except Exception as exc:  # the broker is not there (yet): retried with backoff
            return ChunkOutcome(chunk, alone, exc, False)
        progress = self._chunks.progress
        progress.acknowledged_at = time.monotonic()
        sending = asyncio.ensure_future(self._chunks.send(producer, chunk, alone))
        watchdog = asyncio.ensure_future(
            cut_off(producer, self.topic, progress, lambda: self._buffer.closed, self._pause)
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
        if self._producer is None:
            self._producer = await self._connect()
        return self._producer

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
        )
        try:
            await asyncio.wait_for(kafka.start(producer, self.bootstrap), _START_TIMEOUT_S)
        except BaseException:
            await stop_producer(producer)  # releases the half-opened client
            raise
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
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    def _stop_when_closing(self, _: RetryCallState) -> bool:
        return self._buffer.closed

    def _drop_undelivered(self, pending: list[Message]) -> None:
        """Closed before Kafka acknowledged everything: what is left is dropped, and said (or
        kept in the spool, producers.spool)."""
        dropped = self._buffer.drop_undelivered(pending)
        if dropped:
            log.warning(
                "closing: %d events not acknowledged by Kafka within close_timeout are dropped "
                "(topic %r; counted in stats().dropped)",
                dropped,
                self.topic,
            )

    def _refuse(self, count: int, exc: BaseException) -> None:
        """`count` events Kafka will never take: counted failed and reported."""
        self._buffer.refused(count)
        self._report(exc)
