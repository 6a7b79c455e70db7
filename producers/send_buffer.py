"""The sender's buffer: encoded events on their way from the callers' threads to the delivery
thread, bounded in bytes, with the counters of what became of them.

Callers append; the delivery thread takes chunks and tells what Kafka acknowledged or refused.
Both sides share one lock, held for a few deque and counter operations only. The buffer also
carries the hand-off between the two sides: whether the delivery loop is idle (it must be woken
for the next event; a busy loop takes it by itself) and whether the sender is closed (nothing
more is appended; the loop delivers what is left and stops).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict

from steplog.errors import SendError

from .record_batches import Message

__all__ = ["DeliveryCounts", "SendBuffer", "SenderStats"]


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


class DeliveryCounts(NamedTuple):
    """The counts an outage is told with (producers.outage_report)."""

    undelivered: int
    """Events buffered or in flight."""
    dropped: int
    failed: int


class SendBuffer:
    """The events of one sender not yet delivered, at most `max_bytes` of them (the oldest are
    dropped beyond), and the counts of those that were."""

    def __init__(self, topic: str, max_bytes: int) -> None:
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
                self._drop_oldest()
            if not self._idle:
                return False
            self._idle = False
            return True

    def _drop_oldest(self) -> None:
        """Over the bound: drop the oldest events (never the newest). Holding the lock."""
        while self._bytes > self.max_bytes and len(self._messages) > 1:
            old_key, old_value = self._messages.popleft()
            self._bytes -= len(old_key) + len(old_value)
            self._dropped += 1

    def wait_drained(self, timeout: float | None) -> bool:
        """Wait until nothing is buffered or in flight; False on timeout."""
        with self._drained:
            return self._drained.wait_for(
                lambda: not self._messages and not self._in_flight, timeout=timeout
            )

    def close(self) -> None:
        """Refuse further events; the delivery loop delivers what is left, then stops."""
        with self._lock:
            self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def forget(self) -> None:
        """Empty the buffer without counting anything: in a forked child, the events copied
        from the parent belong to the parent, which delivers them."""
        with self._lock:
            self._messages.clear()
            self._bytes = 0
            self._in_flight = 0

    def stats(self) -> SenderStats:
        with self._lock:
            return SenderStats(
                sent=self._sent,
                retried=self._retried,
                dropped=self._dropped,
                failed=self._failed,
                buffered=len(self._messages),
                buffered_bytes=self._bytes,
            )

    def counts(self) -> DeliveryCounts:
        with self._lock:
            return DeliveryCounts(
                len(self._messages) + self._in_flight, self._dropped, self._failed
            )

    # ------------------------------------------------------------ delivery side

    def take(self, count: int) -> list[Message]:
        """The next chunk of at most `count` events, now in flight. When there is none, the
        delivery loop is idle from here, and whoever waits for the buffer to drain is woken."""
        with self._lock:
            count = min(count, len(self._messages))
            chunk = [self._messages.popleft() for _ in range(count)]
            self._bytes -= sum(len(k) + len(v) for k, v in chunk)
            self._in_flight = count
            if not count:
                self._idle = True
                self._drained.notify_all()
            return chunk

    def acknowledged(self, count: int) -> None:
        """`count` events in flight were acknowledged by Kafka."""
        with self._lock:
            self._sent += count
            self._in_flight -= count

    def refused(self, count: int) -> None:
        """`count` events in flight were refused by Kafka for good."""
        with self._lock:
            self._failed += count
            self._in_flight -= count

    def retried(self, count: int) -> None:
        """`count` events in flight failed and are tried again."""
        with self._lock:
            self._retried += count

    def drop_undelivered(self) -> int:
        """Drop what is buffered or in flight (the sender closed before Kafka acknowledged
        it); returns how many events that was."""
        with self._lock:
            dropped = len(self._messages) + self._in_flight
            self._dropped += dropped
            self._messages.clear()
            self._bytes = 0
            self._in_flight = 0
            self._drained.notify_all()
            return dropped
