"""Each partition's events on their way to Kafka, side by side: the sender's partition lanes.

The delivery loop routes every event it takes from the buffer to the lane of its partition
(murmur2 of the key, producers.record_batches), and each lane delivers its own events in order,
one record batch at a time, each only once the previous one was acknowledged: a batch that fails
is retried, with everything behind it, before anything else of its partition (head-of-line per
partition, never across partitions). A lane that fails waits out its own backoff; the others go
on at full rate. So a partition without a leader holds back only its own events.

Bound. The lanes together hold about `max_bytes` (plus one chunk): past it the delivery loop
takes nothing more from the buffer, which then spills or drops its oldest as it always did. One
failing lane must not turn that into a stall of every partition, so while another lane still
delivers, a failing lane's oldest events beyond its batch in flight are shed to make room
(`shed`): dropped and counted, the buffer's own policy for an outage it cannot hold. With a
spool nothing is shed (the events are owed to the disk, not to memory): the failing lane then
fills the bound, and the others wait behind the buffer, on disk, until it recovers.

Pure bookkeeping: no Kafka, no clock of its own (callers pass `now`, time.monotonic's kind).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from .record_batches import Message

__all__ = ["Entry", "Lane", "PartitionLanes", "backoff_s"]

Entry = tuple[bytes, bytes, bool]
"""An event in a lane: key, value, and whether it was read from the spool (which commits its
reads only once every event read is delivered, producers.send_buffer)."""

# A lane's backoff after failed attempts: from 50 ms (a producer replaced after a lost
# sequence is back within that), doubling, jittered, up to a few seconds (a cluster that
# stays away costs an attempt every few seconds, not a busy loop).
_FIRST_BACKOFF_S: Final = 0.05
_MAX_BACKOFF_S: Final = 5.0


def backoff_s(failures: int) -> float:
    """The wait after `failures` consecutive failed attempts (>= 1), with jitter."""
    ceiling: float = min(_MAX_BACKOFF_S, _FIRST_BACKOFF_S * 2.0 ** min(failures - 1, 16))
    return ceiling * random.uniform(0.5, 1.0)


@dataclass
class Lane:
    """One partition's undelivered events, oldest first; the first `sending` of them are the
    record batch inside the producer now."""

    partition: int
    entries: deque[Entry] = field(default_factory=deque)
    bytes: int = 0
    sending: int = 0
    sent_at: float = 0.0
    """When the batch in flight was handed to the producer."""
    alone: int = 0
    """How many of the first entries go one per batch (a batch of them was refused for good:
    one bad event must not cost the events around it)."""
    failures: int = 0
    """Consecutive failed attempts; 0 while the lane delivers."""
    ready_at: float = 0.0
    """The lane sends nothing before this (its backoff)."""

    def next_batch(self) -> list[Entry]:
        """The events the next batch may take, in order: one while they go alone."""
        if self.alone:
            return [self.entries[0]]
        return list(self.entries)

    def failed(self, now: float, *, wait: float | None = None) -> None:
        """An attempt failed for a reason that may pass: retry after the backoff (or `wait`)."""
        self.failures += 1
        self.sending = 0
        self.ready_at = now + (backoff_s(self.failures) if wait is None else wait)


class PartitionLanes:
    """The lanes of one topic's partitions (a lane stays once made: there are as many as
    partitions), holding about `max_bytes` in all."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lanes: dict[int, Lane] = {}
        self.bytes = 0
        self.events = 0

    def __iter__(self) -> Iterator[Lane]:
        return iter(list(self._lanes.values()))

    @property
    def full(self) -> bool:
        return self.bytes >= self.max_bytes

    @property
    def failing(self) -> bool:
        """Some lane's last attempt failed (an outage, for the outage report)."""
        return any(lane.failures for lane in self._lanes.values())

    def route(self, groups: dict[int, list[Message]], from_spool: bool) -> None:
        """Append a chunk's events, grouped by partition (each group in order)."""
        for partition, messages in groups.items():
            lane = self._lanes.get(partition)
            if lane is None:
                lane = self._lanes[partition] = Lane(partition)
            size = sum(len(key) + len(value) for key, value in messages)
            lane.entries.extend((key, value, from_spool) for key, value in messages)
            lane.bytes += size
            self.bytes += size
            self.events += len(messages)

    def delivered(self, lane: Lane, count: int) -> int:
        """The first `count` events of the lane are acknowledged or refused for good: they
        leave it, and it delivers again (no backoff). Returns how many came from the spool."""
        spooled = 0
        for _ in range(count):
            key, value, from_spool = lane.entries.popleft()
            lane.bytes -= len(key) + len(value)
            self.bytes -= len(key) + len(value)
            spooled += from_spool
        self.events -= count
        lane.alone = max(lane.alone - count, 0)
        lane.sending = 0
        lane.failures = 0
        lane.ready_at = 0.0
        return spooled

    def shed(self) -> tuple[int, int]:
        """Over the bound while some lane still delivers: drop the oldest events of failing
        lanes (never those in flight) until under it. Returns (dropped, of them from the
        spool)."""
        dropped = spooled = 0
        if self.bytes <= self.max_bytes or all(lane.failures for lane in self._lanes.values()):
            return 0, 0
        for lane in sorted(self._lanes.values(), key=lambda lane: -lane.bytes):
            while self.bytes > self.max_bytes and lane.failures and len(lane.entries) > lane.sending:
                key, value, from_spool = lane.entries[lane.sending]
                del lane.entries[lane.sending]
                lane.bytes -= len(key) + len(value)
                self.bytes -= len(key) + len(value)
                self.events -= 1
                lane.alone = max(lane.alone - 1, 0) if lane.alone > lane.sending else lane.alone
                dropped += 1
                spooled += from_spool
        return dropped, spooled

    def take_all(self) -> list[Message]:
        """Empty every lane (the sender closes): what is left, each partition in order."""
        left = [(key, value) for lane in self._lanes.values() for key, value, _ in lane.entries]
        for lane in self._lanes.values():
            lane.entries.clear()
            lane.bytes = lane.sending = lane.alone = 0
        self.bytes = self.events = 0
        return left
