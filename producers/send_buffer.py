"""The sender's buffer: encoded events on their way from the callers' threads to the delivery
thread, bounded in bytes, with the counters of what became of them.

Callers append; the delivery thread takes chunks and tells what Kafka acknowledged or refused.
Both sides share one lock, held for a few deque and counter operations only. The buffer also
carries the hand-off between the two sides: whether the delivery loop is idle (it must be woken
for the next event; a busy loop takes it by itself) and whether the sender is closed (nothing
more is appended; the loop delivers what is left and stops).

With a spool (producers.spool), the oldest events past the bound go to disk instead of being
dropped, and chunks are taken from the spool while it holds any: what it holds is older than
anything in memory. The events read from the spool stay on disk until every one read is
delivered (the delivery loop's partitions finish them in any order across partitions); then the
spool commits its reads. The spool has its own lock; the buffer's is taken first where both are.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict

from steplog.errors import SendError

from .record_batches import Message
from .spool import Spool

__all__ = ["DeliveryCounts", "SendBuffer", "SenderStats", "Taken"]


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
    spooled: int = 0
    """Events waiting in the spool on disk (Client(spool_dir=...)), not counted in buffered."""
    spool_bytes: int = 0


class DeliveryCounts(NamedTuple):
    """The counts an outage is told with (producers.outage_report)."""

    undelivered: int
    """Events buffered, spooled or in flight."""
    dropped: int
    failed: int


class Taken(NamedTuple):
    """A chunk the delivery loop took, and where from."""

    messages: list[Message]
    from_spool: bool


class SendBuffer:
    """The events of one sender not yet delivered, at most `max_bytes` of them in memory (the
    oldest are spooled or dropped beyond), and the counts of those that were."""

    def __init__(self, topic: str, max_bytes: int, spool: Spool | None = None) -> None:
        self.topic = topic
        self.max_bytes = max_bytes
        self._messages: deque[Message] = deque()
        self._bytes = 0
        self._in_flight = 0
        """Taken by the delivery thread and neither acknowledged nor refused yet."""
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._sent = self._retried = self._dropped = self._failed = 0
        self._idle = False
        self._closed = False
        self._spool = spool
        self._spool_pid = os.getpid()
        self._spool_in_flight = 0
        """Of `_in_flight`, read from the spool: the spool commits its reads when none is left."""
        self._spool_read = False
        """Events were read from the spool since its last commit."""

    # ----------------------------------------------------------------- caller side

    def append(self, key: bytes, value: bytes) -> bool:
        """Queue one event, dropping the oldest ones beyond the bound. True when the delivery
        loop is idle and must be woken (it counts as busy again from here). Raises SendError
        once the buffer is closed."""
        with self._lock:
            if self._closed:
                raise SendError(f"the sender for {self.topic!r} is closed")
            self._messages.append((key, value))
            self._bytes += len(key) + len(value)
            if self._bytes > self.max_bytes:
                self._spill_oldest()
            if not self._idle:
                return False
            self._idle = False
            return True

    def _spill_oldest(self) -> None:
        """Over the bound: the oldest events (never the newest) go to the spool (queued for
        its writer thread: no disk on the caller's, producers.spool), or are dropped. Holding
        the lock, so that spills reach the spool in their order."""
        oldest: list[Message] = []
        while self._bytes > self.max_bytes and len(self._messages) > 1:
            old_key, old_value = self._messages.popleft()
            self._bytes -= len(old_key) + len(old_value)
            oldest.append((old_key, old_value))
        if self._spool is None:
            self._dropped += len(oldest)
        else:
            self._spool.append(oldest)

    def wait_drained(self, timeout: float | None) -> bool:
        """Wait until nothing is buffered or in flight; False on timeout."""
        with self._drained:
            return self._drained.wait_for(
                lambda: not self._messages and not self._in_flight and not self._spooled(),
                timeout=timeout,
            )

    def close(self) -> None:
        """Refuse further events; the delivery loop delivers what is left, then stops."""
        with self._lock:
            self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def spooling(self) -> bool:
        """Events past the bound go to a spool (else they are dropped)."""
        return self._spool is not None

    def forget(self) -> None:
        """Empty the buffer without counting anything: in a forked child, the events copied
        from the parent belong to the parent, which delivers them. So does the spool: the
        child spools nothing (its dir is the parent's, locked by it)."""
        with self._lock:
            self._messages.clear()
            self._bytes = 0
            self._in_flight = 0
            if os.getpid() != self._spool_pid:
                self._spool = None

    def close_spool(self) -> None:
        """Sync and release the spool, once the delivery thread has stopped (or never ran)."""
        if self._spool is not None and os.getpid() == self._spool_pid:
            self._spool.close()  # kept: stats() still counts what it dropped and holds

    def stats(self) -> SenderStats:
        with self._lock:
            spool = self._spool
            return SenderStats(
                sent=self._sent,
                retried=self._retried,
                dropped=self._dropped + (spool.dropped if spool else 0),
                failed=self._failed,
                buffered=len(self._messages),
                buffered_bytes=self._bytes,
                spooled=spool.unread if spool else 0,
                spool_bytes=spool.size if spool else 0,
            )

    def counts(self) -> DeliveryCounts:
        with self._lock:
            spool = self._spool
            return DeliveryCounts(
                len(self._messages) + self._in_flight + self._spooled(),
                self._dropped + (spool.dropped if spool else 0),
                self._failed,
            )

    def _spooled(self) -> int:
        """Events in the spool not taken yet (0 once closed: they stay for the next start)."""
        spool = self._spool
        return spool.unread if spool is not None and not self._closed else 0

    # ------------------------------------------------------------ delivery side

    def take(self, count: int) -> Taken:
        """The next chunk of at most `count` events, now in flight: from the spool while it
        holds any, else from memory. When there is none, the delivery loop is idle from here
        (it must be woken for the next event), and whoever waits for the buffer to drain is
        woken when nothing is in flight either. Once closed, what is left in memory goes to
        the spool (for the next start), not to Kafka."""
        while True:
            chunk = self._take_spooled(count)
            if chunk:
                return Taken(chunk, True)
            with self._lock:
                if self._spooled():
                    continue  # spilled since the spool was read: older than what is in memory
                if self._closed and self._spool is not None and self._messages:
                    self._spool.append(list(self._messages))
                    self._messages.clear()
                    self._bytes = 0
                count = min(count, len(self._messages))
                chunk = [self._messages.popleft() for _ in range(count)]
                self._bytes -= sum(len(k) + len(v) for k, v in chunk)
                self._in_flight += count
                if not count:
                    self._idle = True
                    self._notify_if_drained()
                return Taken(chunk, False)

    def _take_spooled(self, count: int) -> list[Message]:
        # Read without the buffer's lock (a disk read must not hold up send()); spills meanwhile
        # only add newer events after these.
        spool = self._spool
        chunk = spool.read(count) if spool is not None and self._spooled() else []
        if chunk:
            with self._lock:
                self._in_flight += len(chunk)
                self._spool_in_flight += len(chunk)
                self._spool_read = True
        return chunk

    def acknowledged(self, count: int, spooled: int = 0) -> None:
        """`count` events in flight were acknowledged by Kafka, `spooled` of them read from
        the spool."""
        with self._lock:
            self._sent += count
            self._finished(count, spooled)
        self._commit_spool()

    def refused(self, count: int, spooled: int = 0) -> None:
        """`count` events in flight were refused by Kafka for good."""
        with self._lock:
            self._failed += count
            self._finished(count, spooled)
        self._commit_spool()

    def shed(self, count: int, spooled: int = 0) -> None:
        """`count` events in flight were dropped to keep memory bounded
        (producers.partition_lanes)."""
        with self._lock:
            self._dropped += count
            self._finished(count, spooled)
        self._commit_spool()

    def _finished(self, count: int, spooled: int) -> None:
        """Holding the lock: `count` events in flight are done with."""
        self._in_flight -= count
        self._spool_in_flight -= spooled
        self._notify_if_drained()

    def _notify_if_drained(self) -> None:
        if not self._messages and not self._in_flight:
            self._drained.notify_all()

    def _commit_spool(self) -> None:
        """Every event read from the spool is delivered: the reads leave the disk."""
        with self._lock:
            commit = self._spool_read and not self._spool_in_flight
            if commit:
                self._spool_read = False
        if commit and self._spool is not None:
            self._spool.commit()

    def retried(self, count: int) -> None:
        """`count` events in flight failed and are tried again: a failed attempt, which is
        when the delivery thread syncs the spool (producers.spool, the fsync policy)."""
        with self._lock:
            self._retried += count
        if self._spool is not None:
            self._spool.sync()

    def drop_undelivered(self, pending: list[Message]) -> int:
        """The sender closed before Kafka acknowledged what is buffered or in flight
        (`pending`: every event in flight, each partition's in order): drop it and return how
        many events that was; or, with a spool, keep it there for the next start and return 0.
        Those in flight go before everything the spool holds (each partition's in flight are
        older than its events spooled since), then the spool's reads are committed: every
        event read is delivered or written again in front."""
        spool = self._spool
        if spool is not None:
            spool.prepend(pending)
            with self._lock:
                spool.append(list(self._messages))
                self._messages.clear()
                self._bytes = 0
                self._in_flight = self._spool_in_flight = 0
                read, self._spool_read = self._spool_read, False
                self._drained.notify_all()
            if read:
                spool.commit()
            return 0
        with self._lock:
            dropped = len(self._messages) + self._in_flight
            self._dropped += dropped
            self._messages.clear()
            self._bytes = 0
            self._in_flight = 0
            self._drained.notify_all()
            return dropped
