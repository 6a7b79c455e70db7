"""An idempotent producer that is replaced when its sequence state is lost, for the writers that
wait on each acknowledgement: the worker's checkpoints (producers.kafka_run_sink) and the
client's control calls (producers.control).

Why. An idempotent producer numbers each partition's batches, and the broker takes batch n + 1
only after batch n. A batch that fails once it was queued (aiokafka numbers a batch when it
first leaves its queue, also to fail it there, as it does with a batch that expired waiting
for a leader) leaves a gap the broker never fills; OutOfOrderSequenceNumber, UnknownProducerId
and a fenced epoch say the broker has forgotten the producer. Either way every later batch of
that producer to that partition fails the same way for as long as it lives, so retrying through
it is useless: `renew` replaces it (a new producer id, sequences from 0) and `deliver` sends the
message again through the new one. The SDK's sender follows the same rule for its batches
(producers.delivery_loop); what counts as lost is `sequence_lost`, over the error classes of
producers.record_batches.

Order. Messages with the same key are sent again in the order they were first sent: a message
that failed waits until the one sent before it with its key is acknowledged (or has failed for
good) before it goes again. Both copies may land (the first may have been written without its
acknowledgement reaching us); every message carries an id (an event's `event_id`, a command's
id) by which its consumers drop the second.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import ProducerClosed
from aiokafka.structs import RecordMetadata

from .partition_lanes import backoff_s
from .producer_watch import discard, stop_producer
from .record_batches import PRODUCER_LOST, ProducerDiscarded, is_retriable

__all__ = ["Outgoing", "RenewableProducer", "sequence_lost"]

log = logging.getLogger("steplog.producers")

StartProducer = Callable[[], Awaitable[AIOKafkaProducer]]
"""Makes and starts a producer connected to the cluster (raises if it cannot connect)."""

Outgoing = tuple[str, bytes, bytes, list[tuple[str, bytes]] | None]
"""A message as sent: (topic, key, value, headers)."""


def sequence_lost(exc: BaseException, *, queued: bool) -> bool:
    """Whether the producer that raised `exc` can no longer deliver to the partition: `queued`
    says the send had been accepted (its batch is numbered, so any failure of it leaves a gap);
    before that, only the errors that say the producer itself is gone (PRODUCER_LOST)."""
    return queued or isinstance(exc, PRODUCER_LOST)


class RenewableProducer:
    """The current producer of a writer, replaced when its sequence state is lost (module
    docstring). `keep_going()` says whether a failed message is still worth sending again (False
    once the writer is stopping: the failure is then raised to the caller)."""

    def __init__(self, start: StartProducer, name: str, keep_going: Callable[[], bool]) -> None:
        self._start = start
        self.name = name
        self._keep_going = keep_going
        self._producer: AIOKafkaProducer | None = None
        self._renewing = asyncio.Lock()
        self._latest: dict[tuple[str, bytes], asyncio.Future[RecordMetadata]] = {}
        """Per (topic, key), the delivery of the newest message not yet settled."""
        self.renewals = 0
        self._stopped = False

    async def start(self) -> AIOKafkaProducer:
        if self._producer is None:
            self._producer = await self._start()
        return self._producer

    async def stop(self) -> None:
        """Stop the producer (waiting, within bounds, for what it holds); none is made after."""
        self._stopped = True
        producer, self._producer = self._producer, None
        if producer is not None:
            await stop_producer(producer)

    async def send(
        self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None
    ) -> asyncio.Future[RecordMetadata]:
        """Queue the message now (so calls keep their order) and return its delivery: it
        completes with where the message was written, once acknowledged, sending it again
        through a new producer if this one lost its sequence state. Raises what the first
        send raises unless it says the producer is gone (then it goes through the next)."""
        message: Outgoing = (topic, key, value, headers)
        producer, ack = await self._queue(message, await self._sendable())
        before = self._latest.get((topic, key))
        delivery = asyncio.ensure_future(self._deliver(message, producer, ack, before))
        self._latest[(topic, key)] = delivery
        delivery.add_done_callback(lambda done: self._settled(topic, key, done))
        return delivery

    def _settled(self, topic: str, key: bytes, delivery: asyncio.Future[Any]) -> None:
        if self._latest.get((topic, key)) is delivery:
            del self._latest[(topic, key)]

    async def _sendable(self) -> AIOKafkaProducer:
        """The current producer; while one is being renewed, its successor."""
        if self._producer is not None and not self._renewing.locked():
            return self._producer
        return await self.renew(None)  # waits for the renewal under way, or makes one

    async def _queue(
        self, message: Outgoing, producer: AIOKafkaProducer
    ) -> tuple[AIOKafkaProducer, asyncio.Future[RecordMetadata]]:
        """Queue the message in `producer`, or in its successors while they are gone."""
        topic, key, value, headers = message
        while True:
            try:
                ack: asyncio.Future[RecordMetadata] = await producer.send(
                    topic, value=value, key=key, headers=headers
                )
                return producer, ack
            except Exception as exc:
                if not sequence_lost(exc, queued=False) or not self._keep_going():
                    raise
                producer = await self.renew(producer, exc)

    async def _deliver(
        self,
        message: Outgoing,
        producer: AIOKafkaProducer,
        ack: asyncio.Future[RecordMetadata],
        before: asyncio.Future[RecordMetadata] | None,
    ) -> RecordMetadata:
        while True:
            try:
                return await ack
            except Exception as exc:
                failure = exc
            # Queued, so numbered: whatever the failure, this producer's sequence for the
            # partition has a gap. It is replaced even when the message is not sent again
            # (refused for good), or every later message to the partition would fail too.
            try:
                producer = await self.renew(producer, failure)
            except Exception:
                raise failure from None  # stopping: the caller learns why its message failed
            if not is_retriable(failure) or not self._keep_going():
                raise failure
            if before is not None:
                # The key's earlier message goes again first (or has failed for good).
                await asyncio.wait((before,))
                before = None
            log.debug("%s: sending a message to %r again after %s", self.name, message[0],
                     type(failure).__name__)
            producer, ack = await self._queue(message, producer)

    async def renew(
        self, broken: AIOKafkaProducer | None, reason: BaseException | None = None
    ) -> AIOKafkaProducer:
        """The producer to use instead of `broken`: a new one if `broken` is still the current
        one (discarded first: what it still holds fails with ProducerDiscarded and is sent
        again by its senders), else the one that already replaced it (None: the current one,
        made if a renewal was cut short). Starting is retried with backoff while
        `keep_going()` (else the start's error is raised)."""
        async with self._renewing:
            if self._stopped:
                raise ProducerClosed()
            current = self._producer
            if current is not None and current is not broken:
                return current
            if current is not None:
                self._producer = None
                self.renewals += 1
                log.warning("%s: the producer lost its sequence state (%r); a new one takes "
                            "over", self.name, reason)
                # Shielded: a sender cancelled meanwhile must not leave it half stopped.
                await asyncio.shield(
                    discard(current, ProducerDiscarded(f"{self.name}: producer replaced"))
                )
            failures = 0
            while True:
                try:
                    producer = await self._start()
                except Exception:
                    failures += 1
                    if not self._keep_going():
                        raise
                    log.warning("%s: starting a new producer failed; again shortly", self.name,
                                exc_info=failures == 1)
                    await asyncio.sleep(backoff_s(failures))
                    continue
                if self._stopped:  # stopped while this one was starting
                    await stop_producer(producer)
                    raise ProducerClosed()
                self._producer = producer
                return producer
