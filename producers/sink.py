"""Where a Client's encoded events go: the Kafka sender, or memory in tests.

`EventSink` is the part of `EventSender` the client uses. `MemorySink` keeps the events in a
list, so that the SDK's own tests, and a service's tests of its instrumentation, can run
`run.step(...)` and look at exactly the bytes that would have gone to Kafka:

    sink = MemorySink()
    client = Client(project="shop", sink=sink)
    ...
    assert [e.type for e in sink.events()] == ["step.started", "step.completed"]
"""

from __future__ import annotations

import threading
from typing import Protocol

from steplog.errors import EventTooLargeError
from steplog.producers.sender import SenderStats
from steplog.schemas.codec import DEFAULT_MAX_BYTES, decode_event
from steplog.schemas.events import Event

__all__ = ["EventSink", "MemorySink"]


class EventSink(Protocol):
    """What the client needs from a sender (EventSender is one)."""

    def send(self, key: bytes, value: bytes) -> None:
        """Queue one encoded event and return at once. May raise EventTooLargeError (this
        event) or SendError (earlier failures, with throw_on_send_error; this event is then
        not queued)."""

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything queued is delivered; False on timeout."""

    def close(self, timeout: float | None = None) -> None:
        """Flush, then release the connection."""

    def stats(self) -> SenderStats:
        """Counters since the sink was created."""


class MemorySink:
    """An EventSink that keeps every (key, value) it is given, in order. Thread-safe."""

    def __init__(self, *, max_event_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self.messages: list[tuple[bytes, bytes]] = []
        self.closed = False
        self._lock = threading.Lock()

    def send(self, key: bytes, value: bytes) -> None:
        if len(value) > self.max_event_bytes:
            raise EventTooLargeError(
                "", f"event is {len(value)} bytes, over the limit of {self.max_event_bytes}"
            )
        with self._lock:
            self.messages.append((key, value))

    def flush(self, timeout: float | None = 30.0) -> bool:
        return True

    def close(self, timeout: float | None = None) -> None:
        self.closed = True

    def stats(self) -> SenderStats:
        with self._lock:
            sent = len(self.messages)
        return SenderStats(sent=sent, retried=0, dropped=0, failed=0, buffered=0, buffered_bytes=0)

    def events(self) -> list[Event]:
        """Every event sent so far, decoded (and so validated) as a processor would."""
        with self._lock:
            values = [value for _, value in self.messages]
        return [decode_event(value) for value in values]
