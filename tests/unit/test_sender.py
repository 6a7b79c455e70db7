"""The sender's promises that hold without any broker: the caller never waits, memory stays
bounded, and failures are reported the way the caller asked. (Delivery itself is tested
against the real broker in tests/integration/test_sender_round_trip.py.)"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
from aiokafka.errors import (
    CorruptRecordException,
    KafkaTimeoutError,
    NotLeaderForPartitionError,
)
from aiokafka.partitioner import DefaultPartitioner

from steplog.errors import SendError
from steplog.producers.sender import EventSender, _Retriable


def unreachable_bootstrap() -> str:
    """A loopback port that nothing listens on (bound, never listening)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"127.0.0.1:{port}"


def test_a_full_buffer_drops_the_oldest_events_and_counts_them() -> None:
    sender = EventSender(unreachable_bootstrap(), "events", max_buffer_bytes=10_000)
    try:
        for n in range(1000):
            sender.send(b"run-1", b"%05d" % n + b"x" * 95)
        stats = sender.stats()
        assert stats.buffered_bytes <= 10_000
        assert stats.dropped == 1000 - stats.buffered
        assert stats.sent == 0
    finally:
        sender.close(timeout=0.1)


def test_sending_does_not_wait_for_an_unreachable_broker() -> None:
    sender = EventSender(unreachable_bootstrap(), "events")
    try:
        began = time.perf_counter()
        for _ in range(10_000):
            sender.send(b"run-1", b"{}")
        # Generous bound: the point is that nothing waits on a connection attempt
        # (aiokafka's own connect timeout is seconds).
        assert time.perf_counter() - began < 2.0
        assert sender.stats().buffered == 10_000
    finally:
        sender.close(timeout=0.1)


def test_send_failures_reach_on_error_and_flush_times_out() -> None:
    seen: list[BaseException] = []
    reported = threading.Event()

    def on_error(exc: BaseException) -> None:
        seen.append(exc)
        reported.set()

    sender = EventSender(unreachable_bootstrap(), "events", on_error=on_error)
    try:
        sender.send(b"run-1", b"{}")
        assert reported.wait(timeout=30), "on_error was not called"
        assert sender.flush(timeout=0.2) is False
    finally:
        sender.close(timeout=0.1)
    assert "connect" in repr(seen[0]).lower() or "Kafka" in repr(seen[0])


def test_throw_on_send_error_raises_at_the_next_call() -> None:
    reported = threading.Event()
    sender = EventSender(
        unreachable_bootstrap(),
        "events",
        throw_on_send_error=True,
        on_error=lambda _: reported.set(),
    )
    try:
        sender.send(b"run-1", b"{}")
        assert reported.wait(timeout=30)
        with pytest.raises(SendError, match="send failure"):
            sender.send(b"run-1", b"{}")
    finally:
        sender.close(timeout=0.1)


def test_closing_with_the_broker_down_counts_what_was_left_as_failed() -> None:
    sender = EventSender(unreachable_bootstrap(), "events", close_timeout=0.1)
    for _ in range(5):
        sender.send(b"run-1", b"{}")
    sender.close(timeout=0.1)
    deadline = time.monotonic() + 30
    while sender.stats().failed < 5 and time.monotonic() < deadline:
        threading.Event().wait(0.05)
    assert sender.stats().failed == 5
    assert sender.stats().buffered == 0
    with pytest.raises(SendError, match="closed"):
        sender.send(b"run-1", b"{}")


# --- delivery in record batches, against a producer stand-in --------------------------------
# The batch path's failure handling cannot be provoked on a healthy broker; these drive
# EventSender._send_chunk with a stand-in that refuses chosen events.


class _Batch:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.messages: list[tuple[bytes, bytes]] = []
        self.closed = False

    def append(self, *, key: bytes, value: bytes, timestamp: None) -> object | None:
        if self.closed or len(self.messages) >= self.capacity:
            return None
        self.messages.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True


class _Producer:
    """Batches of 3 events; a batch holding a value in `refuse` is refused (non-retriable),
    as is that event sent alone; a batch holding a value in `unavailable` fails retriably."""

    def __init__(self, *, refuse: frozenset[bytes] = frozenset(),
                 unavailable: frozenset[bytes] = frozenset(),
                 expire: frozenset[bytes] = frozenset()) -> None:
        self.refuse = refuse
        self.unavailable = unavailable
        self.expire = expire
        self.batches: list[tuple[int, list[bytes]]] = []
        self.singles: list[bytes] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    def create_batch(self) -> _Batch:
        return _Batch(3)

    def _outcome(self, values: list[bytes]) -> asyncio.Future[object]:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if any(v in self.unavailable for v in values):
            future.set_exception(NotLeaderForPartitionError())
        elif any(v in self.expire for v in values):
            future.set_exception(KafkaTimeoutError())
        elif any(v in self.refuse for v in values):
            future.set_exception(CorruptRecordException())
        else:
            future.set_result(None)
        return future

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> asyncio.Future[object]:
        values = [value for _, value in batch.messages]
        self.batches.append((partition, values))
        return self._outcome(values)

    async def send(self, topic: str, *, value: bytes, key: bytes, partition: int) -> asyncio.Future[object]:
        self.singles.append(value)
        return self._outcome([value])


def _chunk(sender: EventSender, count: int, key: bytes = b"run-1") -> list[tuple[bytes, bytes]]:
    chunk = [(key, b"e%d" % n) for n in range(count)]
    sender._in_flight = len(chunk)  # as _take_chunk leaves it
    return chunk


def test_events_go_in_batches_to_the_default_partitioners_partition() -> None:
    sender = EventSender(unreachable_bootstrap(), "events")
    producer = _Producer()
    chunk = _chunk(sender, 7, key=b"req_123") + [(b"req_456", b"other")]
    sender._in_flight = len(chunk)
    asyncio.run(sender._send_chunk(producer, chunk))
    expected = DefaultPartitioner()(b"req_123", [0, 1, 2], [0, 1, 2])
    assert [b for b in producer.batches if b[0] == expected][:3] == [
        (expected, [b"e0", b"e1", b"e2"]), (expected, [b"e3", b"e4", b"e5"]), (expected, [b"e6"])
    ]
    assert sender.stats().sent == 8 and sender._in_flight == 0


def test_a_refused_batch_is_sent_again_one_by_one_so_only_the_bad_event_fails() -> None:
    errors: list[BaseException] = []
    sender = EventSender(unreachable_bootstrap(), "events", on_error=errors.append)
    producer = _Producer(refuse=frozenset({b"e4"}))
    asyncio.run(sender._send_chunk(producer, _chunk(sender, 7)))
    assert producer.singles == [b"e3", b"e4", b"e5"]
    assert [values for _, values in producer.batches][-1] == [b"e6"]  # and on behind it
    stats = sender.stats()
    assert (stats.sent, stats.failed) == (6, 1)
    assert isinstance(errors[0], CorruptRecordException)


def test_a_retriable_batch_failure_holds_back_everything_behind_it_in_order() -> None:
    sender = EventSender(unreachable_bootstrap(), "events", on_error=lambda _: None)
    producer = _Producer(unavailable=frozenset({b"e4"}))
    with pytest.raises(_Retriable) as caught:
        asyncio.run(sender._send_chunk(producer, _chunk(sender, 8)))
    assert [value for _, value in caught.value.messages] == [b"e3", b"e4", b"e5", b"e6", b"e7"]
    assert [values for _, values in producer.batches] == [[b"e0", b"e1", b"e2"], [b"e3", b"e4", b"e5"]]
    assert sender.stats().sent == 3 and sender._in_flight == 5


def test_a_batch_that_expired_without_a_broker_is_retried_not_counted_failed() -> None:
    sender = EventSender(unreachable_bootstrap(), "events", on_error=lambda _: None)
    producer = _Producer(expire=frozenset({b"e1"}))
    with pytest.raises(_Retriable) as caught:
        asyncio.run(sender._send_chunk(producer, _chunk(sender, 4)))
    assert [value for _, value in caught.value.messages] == [b"e0", b"e1", b"e2", b"e3"]
    assert producer.singles == []
    assert sender.stats().failed == 0
