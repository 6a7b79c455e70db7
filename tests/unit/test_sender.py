"""The sender's promises that hold without any broker: the caller never waits, memory stays
bounded, failures and outages are reported the way the caller asked, and a producer whose
sequence numbers have a gap is never used again. (Delivery itself, and a real outage, are tested
against a real broker in tests/integration/test_sender_round_trip.py and test_sender_outage.py.)"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import pytest
from aiokafka.errors import (
    CorruptRecordException,
    KafkaTimeoutError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
)
from aiokafka.partitioner import DefaultPartitioner

from steplog.errors import DeliveryFailing, DeliveryRecovered, SendError
from steplog.producers.kafka_logs import SenderThreadLogLimit
from steplog.producers.record_batches import ChunkOutcome as _ChunkOutcome
from steplog.producers.record_batches import Message
from steplog.producers.record_batches import ProducerDiscarded as _ProducerDiscarded
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
        # All kept: in the buffer, or taken by the delivery thread for its first attempt.
        stats = sender.stats()
        assert (stats.sent, stats.dropped, stats.failed) == (0, 0, 0)
        assert stats.buffered in (10_000, 10_000 - sender.chunk_size)
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
    # One call for the outage, however many connection attempts failed.
    assert len(seen) == 1 and isinstance(seen[0], DeliveryFailing)
    assert "connect" in str(seen[0].cause).lower()


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


def test_closing_with_the_broker_down_waits_at_most_close_timeout_and_drops_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sender = EventSender(unreachable_bootstrap(), "events", close_timeout=0.5)
    for _ in range(5):
        sender.send(b"run-1", b"{}")
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="steplog.producers.sender"):
        sender.close()
    assert time.monotonic() - began < 0.5 + 0.2  # the budget, plus the scheduler's slack
    stats = sender.stats()
    assert (stats.dropped, stats.failed, stats.buffered) == (5, 0, 0)
    closing = [r.getMessage() for r in caplog.records if "closing" in r.getMessage()]
    assert len(closing) == 1 and "5 events" in closing[0]
    with pytest.raises(SendError, match="closed"):
        sender.send(b"run-1", b"{}")


# --- delivery in record batches, against a producer stand-in --------------------------------
# The batch path's failure handling cannot be provoked on a healthy broker; these drive
# EventSender._send_chunk (one attempt) with a stand-in that fails chosen events.


class _Batch:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.messages: list[Message] = []
        self.closed = False

    def append(self, *, key: bytes, value: bytes, timestamp: None) -> object | None:
        if self.closed or len(self.messages) >= self.capacity:
            return None
        self.messages.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True


class _Producer:
    """Batches of 3 events on partitions 0-2. A batch holding a value in `refuse` is refused
    (non-retriable), in `unavailable` fails retriably, in `expire` times out, in `out_of_order`
    fails with OutOfOrderSequenceNumber."""

    def __init__(self, *, refuse: frozenset[bytes] = frozenset(),
                 unavailable: frozenset[bytes] = frozenset(),
                 expire: frozenset[bytes] = frozenset(),
                 out_of_order: frozenset[bytes] = frozenset()) -> None:
        self.failures: list[tuple[frozenset[bytes], type[Exception]]] = [
            (unavailable, NotLeaderForPartitionError),
            (expire, KafkaTimeoutError),
            (out_of_order, OutOfOrderSequenceNumber),
            (refuse, CorruptRecordException),
        ]
        self.batches: list[tuple[int, list[bytes]]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    def create_batch(self) -> _Batch:
        return _Batch(3)

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> asyncio.Future[object]:
        values = [value for _, value in batch.messages]
        self.batches.append((partition, values))
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        error = next((kind for chosen, kind in self.failures if chosen & set(values)), None)
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error())
        return future


def _chunk(sender: EventSender, count: int, key: bytes = b"run-1") -> list[Message]:
    chunk = [(key, b"e%d" % n) for n in range(count)]
    sender._in_flight = len(chunk)  # as _take_chunk leaves it
    return chunk


def _values(messages: list[Message]) -> list[bytes]:
    return [value for _, value in messages]


def test_events_go_in_batches_to_the_default_partitioners_partition() -> None:
    sender = EventSender(unreachable_bootstrap(), "events")
    producer = _Producer()
    chunk = _chunk(sender, 7, key=b"req_123") + [(b"req_456", b"other")]
    sender._in_flight = len(chunk)
    outcome = asyncio.run(sender._send_chunk(producer, chunk, {}))
    expected = DefaultPartitioner()(b"req_123", [0, 1, 2], [0, 1, 2])
    assert [b for b in producer.batches if b[0] == expected][:3] == [
        (expected, [b"e0", b"e1", b"e2"]), (expected, [b"e3", b"e4", b"e5"]), (expected, [b"e6"])
    ]
    assert outcome.retry == [] and not outcome.spoiled
    assert sender.stats().sent == 8 and sender._in_flight == 0


def test_a_refused_batch_is_sent_again_one_per_batch_so_only_the_bad_event_fails() -> None:
    errors: list[BaseException] = []
    sender = EventSender(unreachable_bootstrap(), "events", on_error=errors.append)
    producer = _Producer(refuse=frozenset({b"e4"}))
    pending = _chunk(sender, 7)
    alone: dict[int, int] = {}
    attempts = 0
    while pending:
        outcome = asyncio.run(sender._send_chunk(producer, pending, alone))
        # A failed batch took sequence numbers the broker never recorded: each attempt after
        # one goes through a new producer (here: the same stand-in, which keeps no numbers).
        assert outcome.cause is None  # a bad record is no outage
        pending, alone, attempts = outcome.retry, outcome.alone, attempts + 1
    assert [values for _, values in producer.batches][1:] == [
        [b"e3", b"e4", b"e5"], [b"e3"], [b"e4"], [b"e5"], [b"e6"]
    ]
    stats = sender.stats()
    assert (stats.sent, stats.failed, attempts) == (6, 1, 3)
    assert len(errors) == 1 and isinstance(errors[0], CorruptRecordException)


def test_a_retriable_batch_failure_holds_back_everything_behind_it_in_order() -> None:
    sender = EventSender(unreachable_bootstrap(), "events", on_error=lambda _: None)
    producer = _Producer(unavailable=frozenset({b"e4"}))
    outcome = asyncio.run(sender._send_chunk(producer, _chunk(sender, 8), {}))
    assert _values(outcome.retry) == [b"e3", b"e4", b"e5", b"e6", b"e7"]
    assert [values for _, values in producer.batches] == [[b"e0", b"e1", b"e2"], [b"e3", b"e4", b"e5"]]
    assert isinstance(outcome.cause, NotLeaderForPartitionError) and outcome.spoiled
    assert sender.stats().sent == 3 and sender._in_flight == 5


def test_a_batch_that_expired_without_a_broker_is_retried_not_counted_failed() -> None:
    sender = EventSender(unreachable_bootstrap(), "events", on_error=lambda _: None)
    producer = _Producer(expire=frozenset({b"e1"}))
    outcome = asyncio.run(sender._send_chunk(producer, _chunk(sender, 4), {}))
    assert _values(outcome.retry) == [b"e0", b"e1", b"e2", b"e3"]
    assert outcome.spoiled  # it was numbered: this producer's next batch would be out of order
    assert sender.stats().failed == 0


def test_a_lost_sequence_is_retried_through_a_new_producer_never_counted_failed() -> None:
    errors: list[BaseException] = []
    sender = EventSender(unreachable_bootstrap(), "events", on_error=errors.append)
    producer = _Producer(out_of_order=frozenset({b"e3"}))
    outcome = asyncio.run(sender._send_chunk(producer, _chunk(sender, 6), {}))
    assert _values(outcome.retry) == [b"e3", b"e4", b"e5"]
    assert outcome.spoiled and isinstance(outcome.cause, OutOfOrderSequenceNumber)
    assert (sender.stats().failed, errors) == (0, [])


# --- the watchdog, the outage's reports and aiokafka's log lines -----------------------------


class _Cluster:
    def leader_for_partition(self, partition: object) -> int:
        return -1  # what a broker's controlled shutdown leaves in the metadata


class _Client:
    cluster = _Cluster()

    async def close(self) -> None:
        pass


class _SenderTask:
    async def close(self) -> None:
        pass


class _Accumulator:
    def __init__(self) -> None:
        self.held: list[asyncio.Future[object]] = []
        self._batches: dict[object, list[object]] = {}
        self._pending_batches: set[object] = set()

    def fail_all(self, exc: BaseException) -> None:
        for future in self.held:
            future.set_exception(exc)


class _LeaderlessProducer(_Producer):
    """Takes batches and never delivers them, its partitions without a leader."""

    client = _Client()

    def __init__(self) -> None:
        super().__init__()
        self._message_accumulator = _Accumulator()
        self._sender = _SenderTask()
        self.stopped = False

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> asyncio.Future[object]:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._message_accumulator.held.append(future)
        return future

    async def stop(self) -> None:
        self.stopped = True


def test_a_producer_whose_partitions_lost_their_leader_is_discarded_within_seconds() -> None:
    sender = EventSender(unreachable_bootstrap(), "events")
    producer = _LeaderlessProducer()

    async def attempt() -> tuple[_ChunkOutcome, float]:
        sender._stopping = asyncio.Event()
        sender._producer = producer
        began = time.monotonic()
        outcome = await sender._attempt(_chunk(sender, 4), {})
        return outcome, time.monotonic() - began

    outcome, took = asyncio.run(attempt())
    assert producer.stopped and sender._producer is None
    assert _values(outcome.retry) == [b"e0", b"e1", b"e2", b"e3"]
    assert isinstance(outcome.cause, _ProducerDiscarded)
    assert "no leader" in str(outcome.cause)
    assert 1.0 <= took < 3.0


def test_an_outage_is_told_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    told: list[BaseException] = []
    sender = EventSender(
        unreachable_bootstrap(), "events", on_error=told.append, throw_on_send_error=True
    )
    with caplog.at_level(logging.INFO, logger="steplog.producers.sender"):
        for _ in range(100):  # every failed attempt of one outage
            sender._note_failing(ConnectionRefusedError("refused"))
        sender._note_delivering()
        sender._note_delivering()  # delivering while nothing failed tells nothing
    failing, recovered = told
    assert isinstance(failing, DeliveryFailing) and "refused" in str(failing)
    assert isinstance(recovered, DeliveryRecovered) and recovered.duration_s >= 0
    assert len(caplog.records) == 2
    # Failing is a failure the caller asked to see raised; recovering is not.
    with pytest.raises(SendError) as raised:
        sender._raise_pending_errors()
    assert raised.value.__cause__ is failing
    sender._raise_pending_errors()


def test_aiokafka_lines_from_the_sender_thread_are_limited_and_others_pass() -> None:
    now = [0.0]
    limit = SenderThreadLogLimit("steplog-sender-", 300.0, clock=lambda: now[0])
    record = logging.LogRecord("aiokafka.client", logging.ERROR, __file__, 1,
                               "Unable connect to node with id %s: %s", (1, "refused"), None)
    passed: list[bool] = []

    def log_many() -> None:
        for _ in range(1000):
            passed.append(limit.filter(record))
        now[0] += 301.0
        passed.append(limit.filter(record))

    thread = threading.Thread(target=log_many, name="steplog-sender-events")
    thread.start()
    thread.join()
    assert passed.count(True) == 2  # the first, and the first after the interval
    assert all(limit.filter(record) for _ in range(10))  # the host's own threads: untouched
