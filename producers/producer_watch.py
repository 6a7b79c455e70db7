"""The sender's Kafka producer when the broker goes away: the watchdog that notices the producer
is cut off, and discarding a producer without waiting for what it holds.

aiokafka retries a partition without a leader with no backoff at all (its metadata loop
reconnects as fast as connections are refused: a full core and thousands of log lines a
second, measured). So the producer is discarded as soon as a partition being sent to has had no
leader for `LEADERLESS_GRACE_S`, or nothing was acknowledged for `STALL_S` (producers.sender
then connects a new one, with backoff).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from aiokafka import AIOKafkaProducer
from aiokafka.structs import TopicPartition

__all__ = [
    "LEADERLESS_GRACE_S",
    "STALL_S",
    "DeliveryProgress",
    "cut_off",
    "discard",
    "stop_producer",
]

log = logging.getLogger("steplog.producers.sender")  # the sender's lines, under its name

# The watchdog's period, and how long a partition being sent to may have no leader (aiokafka
# spins meanwhile) or a delivery may go without any acknowledgement before the producer is
# discarded. A leader election on a healthy cluster takes well under a second.
_WATCH_INTERVAL_S: Final = 0.25
LEADERLESS_GRACE_S: Final = 1.0
STALL_S: Final = 10.0
# A backstop: aiokafka's stop has no deadline of its own.
_STOP_TIMEOUT_S: Final = 5.0


@dataclass
class DeliveryProgress:
    """What the delivery thread is doing, as the watchdog sees it."""

    sending_to: list[int] = field(default_factory=list)
    """The partitions of the chunk being sent."""
    acknowledged_at: float = 0.0
    """When Kafka last acknowledged anything (time.monotonic)."""


async def cut_off(
    producer: AIOKafkaProducer,
    topic: str,
    progress: DeliveryProgress,
    closing: Callable[[], bool],
    pause: Callable[[float], Awaitable[None]],
) -> str:
    """Returns why the producer is cut off, once it is: the sender closes, a partition
    being sent to has had no leader for LEADERLESS_GRACE_S (aiokafka retries that without
    backoff), or Kafka acknowledged nothing for STALL_S."""
    leaderless_since: float | None = None
    while True:
        await pause(_WATCH_INTERVAL_S)
        now = time.monotonic()
        leaderless = _leaderless(producer, topic, progress.sending_to)
        if not leaderless:
            leaderless_since = None
        elif leaderless_since is None:
            leaderless_since = now
        if closing():
            return "the sender is closing"
        if leaderless_since is not None and now - leaderless_since >= LEADERLESS_GRACE_S:
            return (
                f"partitions {leaderless} have had no leader for {LEADERLESS_GRACE_S:g} s "
                "(is the broker down?)"
            )
        if now - progress.acknowledged_at >= STALL_S:
            return f"Kafka acknowledged nothing for {STALL_S:g} s"


def _leaderless(producer: AIOKafkaProducer, topic: str, partitions: list[int]) -> list[int]:
    cluster = producer.client.cluster
    return [
        partition
        for partition in partitions
        if cluster.leader_for_partition(TopicPartition(topic, partition)) in (None, -1)
    ]


async def discard(producer: AIOKafkaProducer, failure: BaseException) -> None:
    """Stop the producer without waiting for what it holds: those batches fail now with
    `failure` (the deliveries waiting on them re-send their events through the next
    producer); stop() alone would wait for them as long as the broker is away."""
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
    queue.fail_all(failure)
    for batch in queued:
        # Its drain waiter, which nobody awaits any more, got the exception too: mark it
        # seen, or asyncio logs "Future exception was never retrieved" on the host's stderr.
        batch._drain_waiter.exception()
    await stop_producer(producer)


async def stop_producer(producer: AIOKafkaProducer) -> None:
    """Stop a producer, within bounds. Its client is closed in any case: a client left open
    keeps its metadata task, which reconnects without backoff while the broker is away."""
    try:
        await asyncio.wait_for(producer.stop(), _STOP_TIMEOUT_S)
    except Exception:  # a producer being thrown away may fail to stop cleanly; nothing to do
        log.debug("stopping a Kafka producer failed", exc_info=True)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.client.close(), _STOP_TIMEOUT_S)
