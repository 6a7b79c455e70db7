"""The sender's Kafka producer when the broker goes away: the watchdog that notices the producer
is cut off, and discarding a producer without waiting for what it holds.

aiokafka retries a partition without a leader with no backoff at all (its metadata loop
reconnects as fast as connections are refused: a full core and thousands of log lines a
second, measured). So no lane hands the producer a batch for a partition without a leader (it
waits for one itself, producers.delivery_loop), and the producer is discarded as soon as a
partition it holds a batch for has had no leader for `LEADERLESS_GRACE_S`, or it has held
batches for `STALL_S` without any acknowledgement (the cluster is away; producers.delivery_loop
then connects a new one, with backoff). A partition whose leader is a dead broker that Kafka
has not fenced yet is not leaderless to aiokafka: it retries that every `retry_backoff_ms`
(no busy loop) and sends to the new leader as soon as the metadata names it, with the same
producer and sequence numbers, so the batches in flight need no re-send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from aiokafka import AIOKafkaProducer
from aiokafka.structs import TopicPartition

from .partition_lanes import PartitionLanes

__all__ = [
    "LEADERLESS_GRACE_S",
    "STALL_REPORT_S",
    "STALL_S",
    "DeliveryProgress",
    "cut_off",
    "discard",
    "leaderless",
    "stop_producer",
]

log = logging.getLogger("steplog.producers.sender")  # the sender's lines, under its name

# The watchdog's period, and how long a partition the producer holds a batch for may have no
# leader (aiokafka spins meanwhile) or the producer may hold batches without any
# acknowledgement before it is discarded. In KRaft a partition goes from its dead leader
# straight to the new one when the controller fences the broker; "no leader" (-1) lasts only
# while no in-sync replica is left (replication 1), so the grace is no part of a failover.
_WATCH_INTERVAL_S: Final = 0.25
LEADERLESS_GRACE_S: Final = 1.0
# Longer than a failover: when a broker dies, acks=all waits on it as an in-sync follower of
# every partition it replicates until the controller fences it (broker.session.timeout.ms, 9 s
# by default), so nothing at all may be acknowledged for that long on a healthy cluster.
STALL_S: Final = 30.0
# Nothing acknowledged for this long while batches wait is told as an outage (once, not a
# discard): operators hear of a broker away or a failover within seconds, not after STALL_S.
STALL_REPORT_S: Final = 5.0
# A backstop: aiokafka's stop has no deadline of its own.
_STOP_TIMEOUT_S: Final = 5.0


@dataclass
class DeliveryProgress:
    """When Kafka last acknowledged anything (time.monotonic), as the watchdog sees it."""

    acknowledged_at: float = 0.0


async def cut_off(
    producer: AIOKafkaProducer,
    topic: str,
    lanes: PartitionLanes,
    progress: DeliveryProgress,
    closing: Callable[[], bool],
    pause: Callable[[float], Awaitable[None]],
    stalled: Callable[[str], None],
) -> str:
    """Returns why the producer is cut off, once it is: the sender closes, a partition it
    holds a batch for has had no leader for LEADERLESS_GRACE_S (aiokafka retries that without
    backoff), or it has held batches for STALL_S with nothing acknowledged. Meanwhile
    `stalled(why)` is called at each look once nothing was acknowledged for STALL_REPORT_S."""
    leaderless_since: dict[int, float] = {}
    while True:
        await pause(_WATCH_INTERVAL_S)
        now = time.monotonic()
        if closing():
            return "the sender is closing"
        inside = [lane for lane in lanes if lane.sending]
        without = set(leaderless(producer, topic, [lane.partition for lane in inside]))
        leaderless_since = {p: leaderless_since.get(p, now) for p in without}
        long = sorted(p for p, since in leaderless_since.items()
                      if now - since >= LEADERLESS_GRACE_S)
        if long:
            return (
                f"partitions {long} have had no leader for {LEADERLESS_GRACE_S:g} s "
                "(is the broker down?)"
            )
        if inside:
            waiting_since = max(progress.acknowledged_at, min(lane.sent_at for lane in inside))
            if now - waiting_since >= STALL_S:
                return f"Kafka acknowledged nothing for {STALL_S:g} s"
            if now - waiting_since >= STALL_REPORT_S:
                stalled(f"Kafka acknowledged nothing for {now - waiting_since:.0f} s")


def leaderless(producer: AIOKafkaProducer, topic: str, partitions: list[int]) -> list[int]:
    """Those of `partitions` without a leader in the producer's metadata."""
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
