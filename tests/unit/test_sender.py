"""The sender's promises that hold without any broker: the caller never waits, memory stays
bounded, and failures are reported the way the caller asked. (Delivery itself is tested
against the real broker in tests/integration/test_sender_round_trip.py.)"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from steplog.errors import SendError
from steplog.producers.sender import EventSender


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
