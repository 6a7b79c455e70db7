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
from steplog.producers.delivery_loop import DeliveryLoop
from steplog.producers.kafka_logs import SenderThreadLogLimit
from steplog.producers.outage_report import OutageReport
from steplog.producers.record_batches import ChunkOutcome, ChunkSender, Message, ProducerDiscarded
from steplog.producers.send_buffer import DeliveryCounts, SendBuffer
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
        # All kept: in the buffer, or taken by the delivery thread for its first attempt (at
        # most a chunk, fewer if it lingered less than the sends took).
        stats = sender.stats()
        assert (stats.sent, stats.dropped, stats.failed) == (0, 0, 0)
        assert 10_000 - sender.chunk_size <= stats.buffered <= 10_000
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
        with pytest.raises(SendError, match="send failure") as raised:
            sender.send(b"run-1", b"{}")
        assert isinstance(raised.value.__cause__, DeliveryFailing)
        # Raised once: the outage goes on, but is not told (nor raised) again.
        assert sender.flush(timeout=0) is False
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
# The batch path's failure handling cannot be provoked on a healthy broker; these drive one
# attempt of ChunkSender.send with a stand-in that fails chosen events, counting into a
# SendBuffer the chunk was taken from (what is neither acknowledged nor refused stays in flight).


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


class _Cluster:
    def __init__(self, leader: int) -> None:
        self.leader = leader

    def leader_for_partition(self, partition: object) -> int:
        return self.leader


class _Client:
    def __init__(self, leader: int) -> None:
        self.cluster = _Cluster(leader)

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


class _Producer:
    """Batches of 3 events on partitions 0-2. A batch holding a value in `refuse` is refused
    (non-retriable), in `unavailable` fails retriably, in `expire` times out, in `out_of_order`
    fails with OutOfOrderSequenceNumber. Discardable as producers.producer_watch does it."""

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
        self.client = _Client(leader=1)
        self._message_accumulator = _Accumulator()
        self._sender = _SenderTask()
        self.stopped = False

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

    async def stop(self) -> None:
        self.stopped = True


class _Delivery:
    """A chunk taken from a SendBuffer for delivery, its ChunkSender, and what was refused."""

    def __init__(self, messages: list[Message]) -> None:
        self.buffer = SendBuffer("events", max_bytes=1 << 30)
        for key, value in messages:
            self.buffer.append(key, value)
        self.chunk = self.buffer.take(len(messages))
        self.refused: list[BaseException] = []
        self.chunks = ChunkSender("events", self.buffer.acknowledged, self._refuse)

    def _refuse(self, count: int, exc: BaseException) -> None:
        self.buffer.refused(count)
        self.refused.append(exc)

    def attempt(
        self, producer: _Producer, chunk: list[Message], alone: dict[int, int]
    ) -> ChunkOutcome:
        return asyncio.run(self.chunks.send(producer, chunk, alone))

    def in_flight(self) -> int:
        return self.buffer.counts().undelivered


def _events(count: int, key: bytes = b"run-1") -> list[Message]:
    return [(key, b"e%d" % n) for n in range(count)]


def _values(messages: list[Message]) -> list[bytes]:
    return [value for _, value in messages]


def test_events_go_in_batches_to_the_default_partitioners_partition() -> None:
    delivery = _Delivery(_events(7, key=b"req_123") + [(b"req_456", b"other")])
    producer = _Producer()
    outcome = delivery.attempt(producer, delivery.chunk, {})
    expected = DefaultPartitioner()(b"req_123", [0, 1, 2], [0, 1, 2])
    assert [b for b in producer.batches if b[0] == expected][:3] == [
        (expected, [b"e0", b"e1", b"e2"]), (expected, [b"e3", b"e4", b"e5"]), (expected, [b"e6"])
    ]
    assert outcome.retry == [] and not outcome.spoiled
    assert delivery.buffer.stats().sent == 8 and delivery.in_flight() == 0


def test_a_refused_batch_is_sent_again_one_per_batch_so_only_the_bad_event_fails() -> None:
    delivery = _Delivery(_events(7))
    producer = _Producer(refuse=frozenset({b"e4"}))
    pending, attempts = delivery.chunk, 0
    alone: dict[int, int] = {}
    while pending:
        outcome = delivery.attempt(producer, pending, alone)
        # A failed batch took sequence numbers the broker never recorded: each attempt after
        # one goes through a new producer (here: the same stand-in, which keeps no numbers).
        assert outcome.cause is None  # a bad record is no outage
        pending, alone, attempts = outcome.retry, outcome.alone, attempts + 1
    assert [values for _, values in producer.batches][1:] == [
        [b"e3", b"e4", b"e5"], [b"e3"], [b"e4"], [b"e5"], [b"e6"]
    ]
    stats = delivery.buffer.stats()
    assert (stats.sent, stats.failed, attempts, delivery.in_flight()) == (6, 1, 3, 0)
    assert len(delivery.refused) == 1 and isinstance(delivery.refused[0], CorruptRecordException)


def test_a_retriable_batch_failure_holds_back_everything_behind_it_in_order() -> None:
    delivery = _Delivery(_events(8))
    producer = _Producer(unavailable=frozenset({b"e4"}))
    outcome = delivery.attempt(producer, delivery.chunk, {})
    assert _values(outcome.retry) == [b"e3", b"e4", b"e5", b"e6", b"e7"]
    assert [values for _, values in producer.batches] == [[b"e0", b"e1", b"e2"], [b"e3", b"e4", b"e5"]]
    assert isinstance(outcome.cause, NotLeaderForPartitionError) and outcome.spoiled
    assert delivery.buffer.stats().sent == 3 and delivery.in_flight() == 5


def test_a_batch_that_expired_without_a_broker_is_retried_not_counted_failed() -> None:
    delivery = _Delivery(_events(4))
    producer = _Producer(expire=frozenset({b"e1"}))
    outcome = delivery.attempt(producer, delivery.chunk, {})
    assert _values(outcome.retry) == [b"e0", b"e1", b"e2", b"e3"]
    assert outcome.spoiled  # it was numbered: this producer's next batch would be out of order
    assert delivery.buffer.stats().failed == 0 and delivery.in_flight() == 4


def test_a_lost_sequence_is_retried_through_a_new_producer_never_counted_failed() -> None:
    delivery = _Delivery(_events(6))
    producer = _Producer(out_of_order=frozenset({b"e3"}))
    outcome = delivery.attempt(producer, delivery.chunk, {})
    assert _values(outcome.retry) == [b"e3", b"e4", b"e5"]
    assert outcome.spoiled and isinstance(outcome.cause, OutOfOrderSequenceNumber)
    assert (delivery.buffer.stats().failed, delivery.refused) == (0, [])


# --- the watchdog, the outage's reports and aiokafka's log lines -----------------------------


class _LeaderlessProducer(_Producer):
    """Takes batches and never delivers them, its partitions without a leader (what a broker's
    controlled shutdown leaves in the metadata)."""

    def __init__(self) -> None:
        super().__init__()
        self.client = _Client(leader=-1)

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> asyncio.Future[object]:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._message_accumulator.held.append(future)
        return future


def test_a_producer_whose_partitions_lost_their_leader_is_discarded_for_a_new_one() -> None:
    buffer = SendBuffer("events", max_bytes=1 << 30)
    for _, value in _events(4):
        buffer.append(b"run-1", value)
    leaderless, healthy = _LeaderlessProducer(), _Producer()
    connected: list[float] = []
    reported: list[tuple[float, BaseException]] = []
    told: list[BaseException] = []

    async def connect() -> _Producer:
        connected.append(time.monotonic())
        return [leaderless, healthy][len(connected) - 1]

    async def deliver() -> None:
        recovered = asyncio.Event()

        def tell(exc: BaseException) -> None:
            told.append(exc)
            recovered.set()

        delivery = DeliveryLoop(
            buffer, "events", unreachable_bootstrap(), chunk_size=100, linger_ms=0,
            max_event_bytes=1 << 20,
            report=lambda exc: reported.append((time.monotonic(), exc)),
            tell=tell,
            connect=connect,
        )
        running = asyncio.ensure_future(delivery.run())
        try:
            await asyncio.wait_for(recovered.wait(), timeout=30)
        finally:
            buffer.close()
            delivery.stop()
            await asyncio.wait_for(running, timeout=10)

    asyncio.run(deliver())
    # The first producer: cut off within seconds, its events re-sent through the second.
    assert leaderless.stopped and len(connected) == 2
    [(reported_at, failing)] = reported
    assert isinstance(failing, DeliveryFailing) and isinstance(failing.cause, ProducerDiscarded)
    assert "no leader" in str(failing.cause)
    assert 1.0 <= reported_at - connected[0] < 3.0
    assert [value for _, values in healthy.batches for value in values] == _values(_events(4))
    # Recovering is told, never reported as a failure.
    assert len(told) == 1 and isinstance(told[0], DeliveryRecovered)
    stats = buffer.stats()
    assert (stats.sent, stats.retried, stats.failed, buffer.counts().undelivered) == (4, 4, 0, 0)
    assert healthy.stopped  # closing discards the producer


def test_an_outage_is_told_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    counts = [DeliveryCounts(undelivered=7, dropped=2, failed=1)]
    report = OutageReport("events", lambda: counts[0], clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="steplog.producers.sender"):
        assert report.delivering() is None  # delivering while nothing failed tells nothing
        # every failed attempt of one outage
        told = [report.failing(ConnectionRefusedError("refused")) for _ in range(100)]
        now[0] += 12.5
        counts[0] = DeliveryCounts(undelivered=0, dropped=5, failed=1)
        recovered, again = report.delivering(), report.delivering()
    failing = told[0]
    assert isinstance(failing, DeliveryFailing) and "refused" in str(failing)
    assert failing.buffered == 7 and told[1:] == [None] * 99
    assert isinstance(recovered, DeliveryRecovered) and again is None
    assert (recovered.duration_s, recovered.dropped, recovered.failed) == (12.5, 3, 0)
    assert len(caplog.records) == 2
    assert report.failing(ConnectionRefusedError("refused")) is not None  # the next outage


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
