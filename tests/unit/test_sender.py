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
from collections.abc import Awaitable, Callable

import pytest
from aiokafka.errors import CorruptRecordException, OutOfOrderSequenceNumber
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import TopicPartition

from steplog.errors import DeliveryFailing, DeliveryRecovered, SendError
from steplog.producers.delivery_loop import DeliveryLoop
from steplog.producers.kafka_logs import SenderThreadLogLimit
from steplog.producers.outage_report import OutageReport
from steplog.producers.partition_lanes import PartitionLanes
from steplog.producers.record_batches import Message, ProducerDiscarded, key_partition
from steplog.producers.send_buffer import DeliveryCounts, SendBuffer, SenderStats
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


# --- delivery by partition lanes, against a producer stand-in --------------------------------
# What a partition's failures do to the others cannot be provoked on demand on a real broker
# (tests/integration/test_sender_partitions.py kills a real one); these run the DeliveryLoop
# with stand-ins that fail chosen events or have partitions without a leader.


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
    def __init__(self, leaders: dict[int, int]) -> None:
        self.leaders = leaders

    def leader_for_partition(self, partition: TopicPartition) -> int:
        return self.leaders[partition.partition]

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(self.leaders)


class _Client:
    def __init__(self, leaders: dict[int, int]) -> None:
        self.cluster = _Cluster(leaders)

    def force_metadata_update(self) -> None:
        pass

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
            if not future.done():
                future.set_exception(exc)


class _Producer:
    """Batches of 3 events on partitions 0-2, each led by broker 1 unless `leaders` says
    otherwise (-1: no leader). A batch holding a value in `refuse` is refused (non-retriable),
    in `out_of_order` fails with OutOfOrderSequenceNumber (once each); a batch for a partition
    in `hold` is kept undelivered until the producer is discarded, as producers.producer_watch
    does it."""

    def __init__(self, *, refuse: frozenset[bytes] = frozenset(),
                 out_of_order: set[bytes] | None = None,
                 leaders: dict[int, int] | None = None, hold: frozenset[int] = frozenset()
                 ) -> None:
        self.refuse = refuse
        self.out_of_order = out_of_order if out_of_order is not None else set()
        self.hold = hold
        self.batches: list[tuple[int, list[bytes]]] = []
        self.client = _Client(leaders if leaders is not None else {0: 1, 1: 1, 2: 1})
        self._message_accumulator = _Accumulator()
        self._sender = _SenderTask()
        self.stopped = False

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    def create_batch(self) -> _Batch:
        return _Batch(3)

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> asyncio.Future[object]:
        assert self.client.cluster.leaders[partition] != -1, "a batch for a leaderless partition"
        values = [value for _, value in batch.messages]
        self.batches.append((partition, values))
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if partition in self.hold:
            self._message_accumulator.held.append(future)
        elif self.refuse & set(values):
            future.set_exception(CorruptRecordException())
        elif self.out_of_order & set(values):
            self.out_of_order -= set(values)
            future.set_exception(OutOfOrderSequenceNumber())
        else:
            future.set_result(None)
        return future

    def delivered(self, partition: int | None = None) -> list[bytes]:
        return [value for p, values in self.batches if partition in (None, p)
                for value in values]

    async def stop(self) -> None:
        self.stopped = True


def _key_of(partition: int) -> bytes:
    """A run key that the default partitioner puts on `partition` of 3."""
    return next(key for n in range(1000) if key_partition(key := b"run-%d" % n, [0, 1, 2]) == partition)


class _Delivery:
    """A DeliveryLoop over a SendBuffer, connecting the given producers in turn."""

    def __init__(self, producers: list[_Producer], *, max_lane_bytes: int = 1 << 30) -> None:
        self.buffer = SendBuffer("events", max_bytes=1 << 30)
        self.producers = producers
        self.connected: list[float] = []
        self.reported: list[tuple[float, BaseException]] = []
        self.told: list[BaseException] = []
        self.loop = DeliveryLoop(
            self.buffer, "events", unreachable_bootstrap(), chunk_size=100, linger_ms=0,
            max_event_bytes=1 << 20, max_lane_bytes=max_lane_bytes,
            report=lambda exc: self.reported.append((time.monotonic(), exc)),
            tell=self.told.append, connect=self._connect,
        )

    async def _connect(self) -> _Producer:
        self.connected.append(time.monotonic())
        return self.producers[min(len(self.connected), len(self.producers)) - 1]

    def send(self, messages: list[Message]) -> None:
        for key, value in messages:
            if self.buffer.append(key, value):
                self.loop.wake()

    async def until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "not done in time"
            await asyncio.sleep(0.01)

    def run(self, scenario: Callable[[_Delivery], Awaitable[None]]) -> None:
        async def main() -> None:
            running = asyncio.ensure_future(self.loop.run())
            try:
                await scenario(self)
            finally:
                self.buffer.close()
                self.loop.stop()
                await asyncio.wait_for(running, timeout=10)

        asyncio.run(main())

    def stats(self) -> SenderStats:
        return self.buffer.stats()


def _events(count: int, key: bytes = b"run-1", first: int = 0) -> list[Message]:
    return [(key, b"e%d" % n) for n in range(first, first + count)]


def _values(messages: list[Message]) -> list[bytes]:
    return [value for _, value in messages]


def test_events_go_in_batches_to_the_default_partitioners_partition() -> None:
    producer = _Producer()
    delivery = _Delivery([producer])

    async def scenario(d: _Delivery) -> None:
        d.send(_events(7, key=b"req_123") + [(b"req_456", b"other")])
        await d.until(lambda: d.stats().sent == 8)

    delivery.run(scenario)
    expected = DefaultPartitioner()(b"req_123", [0, 1, 2], [0, 1, 2])
    assert [b for b in producer.batches if b[0] == expected][:3] == [
        (expected, [b"e0", b"e1", b"e2"]), (expected, [b"e3", b"e4", b"e5"]), (expected, [b"e6"])
    ]
    assert delivery.buffer.counts().undelivered == 0 and delivery.reported == []


def test_a_refused_batch_is_sent_again_one_per_batch_so_only_the_bad_event_fails() -> None:
    producer = _Producer(refuse=frozenset({b"e4"}))
    delivery = _Delivery([producer])

    async def scenario(d: _Delivery) -> None:
        d.send(_events(7))
        await d.until(lambda: d.stats().sent + d.stats().failed == 7)

    delivery.run(scenario)
    # After the refused batch, through a new producer (here: the same stand-in).
    assert [values for _, values in producer.batches][1:] == [
        [b"e3", b"e4", b"e5"], [b"e3"], [b"e4"], [b"e5"], [b"e6"]
    ]
    stats = delivery.stats()
    assert (stats.sent, stats.failed) == (6, 1)
    [(_, refused)] = delivery.reported  # a bad record is no outage
    assert isinstance(refused, CorruptRecordException)


def test_a_partition_without_a_leader_holds_back_only_its_own_events() -> None:
    leaders = {0: 1, 1: 1, 2: 1}
    stuck = 1
    leaders[stuck] = -1
    producer = _Producer(leaders=leaders)
    delivery = _Delivery([producer])
    others = [p for p in (0, 1, 2) if p != stuck]

    async def scenario(d: _Delivery) -> None:
        for n in range(5):  # five waves on every partition while partition 1 has no leader
            for partition in (0, 1, 2):
                d.send(_events(4, key=_key_of(partition), first=n * 4))
            await d.until(lambda: d.stats().sent == (n + 1) * 4 * len(others))
        assert producer.delivered(stuck) == []  # never handed to the producer meanwhile
        leaders[stuck] = 2  # Kafka names a leader
        began = time.monotonic()
        await d.until(lambda: d.stats().sent == 60)
        assert time.monotonic() - began < 1.0  # the lane looks again every 0.25 s

    delivery.run(scenario)
    assert producer.delivered(stuck) == [b"e%d" % n for n in range(20)]  # in order
    for partition in others:
        assert producer.delivered(partition) == [b"e%d" % n for n in range(20)]
    assert len(delivery.connected) == 1  # no producer discarded for it
    [(_, failing)] = delivery.reported
    assert isinstance(failing, DeliveryFailing) and "no leader" in str(failing.cause)
    assert len(delivery.told) == 1 and isinstance(delivery.told[0], DeliveryRecovered)
    assert delivery.stats().failed == 0


def test_a_lost_sequence_replaces_the_producer_and_resends_never_counted_failed() -> None:
    first = _Producer(out_of_order={b"e3"}, hold=frozenset({0}))
    second = _Producer()
    delivery = _Delivery([first, second])

    async def scenario(d: _Delivery) -> None:
        d.send(_events(6, key=_key_of(2)) + _events(2, key=_key_of(0)))
        await d.until(lambda: d.stats().sent == 8)

    delivery.run(scenario)
    assert first.stopped and len(delivery.connected) == 2
    # Partition 2: e0-e2 through the first, e3 on through the second, in order; partition 0's
    # batch held by the discarded producer is re-sent through the second.
    assert second.delivered(2) == [b"e3", b"e4", b"e5"]
    assert second.delivered(0) == [b"e0", b"e1"]
    stats = delivery.stats()
    assert stats.failed == 0 and stats.retried >= 3


def test_a_producer_holding_a_batch_for_a_leaderless_partition_is_discarded() -> None:
    leaders = {0: 1, 1: 1, 2: 1}
    held = _Producer(leaders=leaders, hold=frozenset({0, 1, 2}))
    healthy = _Producer()
    delivery = _Delivery([held, healthy])

    async def scenario(d: _Delivery) -> None:
        d.send(_events(4))
        await d.until(lambda: bool(held.batches))
        leaders.update({0: -1, 1: -1, 2: -1})  # what a broker's death leaves with replication 1
        await d.until(lambda: bool(d.told), timeout=30)

    delivery.run(scenario)
    # The first producer: cut off within seconds, its events re-sent through the second.
    assert held.stopped and len(delivery.connected) == 2
    [(reported_at, failing)] = delivery.reported
    assert isinstance(failing, DeliveryFailing) and isinstance(failing.cause, ProducerDiscarded)
    assert "no leader" in str(failing.cause)
    assert 1.0 <= reported_at - delivery.connected[0] < 3.0
    assert healthy.delivered() == _values(_events(4))
    assert len(delivery.told) == 1 and isinstance(delivery.told[0], DeliveryRecovered)
    stats = delivery.stats()
    assert (stats.sent, stats.retried, stats.failed) == (4, 4, 0)
    assert healthy.stopped  # closing discards the producer


def test_a_failing_lane_over_the_bound_sheds_its_oldest_while_others_deliver() -> None:
    lanes = PartitionLanes(max_bytes=100)
    lanes.route({0: [(b"k", b"x" * 9)] * 12, 1: [(b"k", b"y" * 9)]}, from_spool=False)
    [stuck, healthy] = sorted(lanes, key=lambda lane: lane.partition)
    stuck.sending = 2
    assert lanes.shed() == (0, 0)  # nobody failing: back-pressure only
    stuck.failures = 1
    assert lanes.shed() == (3, 0)  # down to the bound, the batch in flight kept
    assert (len(stuck.entries), lanes.bytes, lanes.events) == (9, 100, 10)
    healthy.failures = 1
    lanes.route({0: [(b"k", b"x" * 9)]}, from_spool=True)
    assert lanes.shed() == (0, 0)  # all failing (an outage): nothing to make room for
    assert lanes.delivered(healthy, 1) == 0 and healthy.failures == 0


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
