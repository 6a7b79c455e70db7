"""The renewable producer of the worker and the client's control calls: a producer that lost its
sequence state is replaced once, what it failed is sent again through the new one in each key's
order, and only what Kafka refuses for good (or what fails while the writer stops) is raised.

The producers are fakes (the logic is pure bookkeeping); tests/integration/
test_worker_producer_recovery.py shows it on a real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    LeaderNotAvailableError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    UnknownProducerId,
)
from aiokafka.structs import RecordMetadata, TopicPartition

from steplog.producers.record_batches import ProducerDiscarded
from steplog.producers.renewable_producer import RenewableProducer, sequence_lost


class FakeQueue:
    """The part of aiokafka's accumulator that producer_watch.discard touches."""

    def __init__(self) -> None:
        self._batches: dict[Any, Any] = {}
        self._pending_batches: set[Any] = set()
        self.held: list[asyncio.Future[RecordMetadata]] = []

    def fail_all(self, exc: BaseException) -> None:
        for future in self.held:
            if not future.done():
                future.set_exception(exc)


class FakeProducer:
    """Holds each sent message's future until the test settles it."""

    def __init__(self, number: int, sent: list[tuple[int, bytes, bytes]]) -> None:
        self.number = number
        self._sent = sent
        self._message_accumulator = FakeQueue()
        self.stopped = False
        self.refuse_sends: BaseException | None = None

    @property
    def held(self) -> list[asyncio.Future[RecordMetadata]]:
        return self._message_accumulator.held

    async def send(self, topic: str, *, value: bytes, key: bytes,
                   headers: Any) -> asyncio.Future[RecordMetadata]:
        if self.refuse_sends is not None:
            raise self.refuse_sends
        self._sent.append((self.number, key, value))
        future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        self.held.append(future)
        return future

    def acknowledge_all(self) -> None:
        for offset, future in enumerate(self.held):
            if not future.done():
                future.set_result(_written(offset))

    async def stop(self) -> None:
        self.stopped = True

    @property
    def client(self) -> FakeProducer:
        return self

    async def close(self) -> None:
        return None


def _written(offset: int) -> RecordMetadata:
    return RecordMetadata("events", 0, TopicPartition("events", 0), offset, -1, -1, -1)


class Producers:
    """A RenewableProducer over fakes, and every fake it made (in order)."""

    def __init__(self, keep_going: Callable[[], bool] = lambda: True) -> None:
        self.made: list[FakeProducer] = []
        self.sent: list[tuple[int, bytes, bytes]] = []
        self.connect_failures = 0
        self.renewable = RenewableProducer(self._start, "test", keep_going)

    async def _start(self) -> Any:
        if self.connect_failures:
            self.connect_failures -= 1
            raise KafkaConnectionError("no broker")
        producer = FakeProducer(len(self.made), self.sent)
        self.made.append(producer)
        return producer


async def _settle() -> None:
    for _ in range(20):  # let the deliveries' tasks run their steps
        await asyncio.sleep(0)


def test_a_message_whose_batch_lost_the_sequence_goes_again_through_a_new_producer() -> None:
    async def scenario() -> None:
        producers = Producers()
        await producers.renewable.start()
        delivery = await producers.renewable.send("events", b"run-1", b"a", None)
        producers.made[0].held[0].set_exception(OutOfOrderSequenceNumber())
        await _settle()
        assert len(producers.made) == 2 and producers.made[0].stopped
        producers.made[1].acknowledge_all()
        assert (await delivery).offset == 0
        assert producers.sent == [(0, b"run-1", b"a"), (1, b"run-1", b"a")]
        assert producers.renewable.renewals == 1

    asyncio.run(scenario())


def test_failed_messages_go_again_in_their_keys_order_and_one_renewal_serves_all() -> None:
    async def scenario() -> None:
        producers = Producers()
        await producers.renewable.start()
        first = await producers.renewable.send("events", b"run-1", b"started", None)
        second = await producers.renewable.send("events", b"run-1", b"completed", None)
        other = await producers.renewable.send("events", b"run-2", b"x", None)
        # The batch expired waiting for a leader (numbered, so the sequence has a gap): the
        # discard fails the rest of what the old producer held.
        held = producers.made[0].held
        held[1].set_exception(UnknownProducerId())
        held[0].set_exception(LeaderNotAvailableError())
        await _settle()
        assert len(producers.made) == 2
        again = [(key, value) for number, key, value in producers.sent if number == 1]
        # run-1's second message waits for its first to be acknowledged again.
        assert sorted(again) == [(b"run-1", b"started"), (b"run-2", b"x")]
        producers.made[1].acknowledge_all()
        await _settle()
        producers.made[1].acknowledge_all()
        await asyncio.gather(first, second, other)
        again = [(key, value) for number, key, value in producers.sent if number == 1]
        assert again.index((b"run-1", b"started")) < again.index((b"run-1", b"completed"))
        assert producers.renewable.renewals == 1

    asyncio.run(scenario())


def test_a_message_refused_for_good_is_raised_and_the_producer_still_renewed() -> None:
    async def scenario() -> None:
        producers = Producers()
        await producers.renewable.start()
        delivery = await producers.renewable.send("events", b"run-1", b"huge", None)
        producers.made[0].held[0].set_exception(MessageSizeTooLargeError())
        with pytest.raises(MessageSizeTooLargeError):
            await delivery
        assert len(producers.made) == 2  # its gap would fail every later message otherwise
        assert [number for number, _, _ in producers.sent] == [0]

    asyncio.run(scenario())


def test_while_the_writer_stops_a_failure_is_raised_not_sent_again() -> None:
    async def scenario() -> None:
        going = [True]
        producers = Producers(lambda: going[0])
        await producers.renewable.start()
        delivery = await producers.renewable.send("events", b"run-1", b"a", None)
        going[0] = False
        producers.made[0].held[0].set_exception(OutOfOrderSequenceNumber())
        with pytest.raises(OutOfOrderSequenceNumber):
            await delivery
        assert len(producers.sent) == 1

    asyncio.run(scenario())


def test_a_send_into_a_discarded_producer_goes_through_its_successor() -> None:
    async def scenario() -> None:
        producers = Producers()
        await producers.renewable.start()
        producers.made[0].refuse_sends = ProducerClosed()
        delivery = await producers.renewable.send("events", b"run-1", b"a", None)
        producers.made[1].acknowledge_all()
        await delivery
        assert producers.sent == [(1, b"run-1", b"a")]

    asyncio.run(scenario())


def test_starting_the_new_producer_is_retried_until_the_cluster_answers() -> None:
    async def scenario() -> None:
        producers = Producers()
        await producers.renewable.start()
        delivery = await producers.renewable.send("events", b"run-1", b"a", None)
        producers.connect_failures = 2
        producers.made[0].held[0].set_exception(OutOfOrderSequenceNumber())
        while len(producers.made) < 2:
            await asyncio.sleep(0.01)
        producers.made[1].acknowledge_all()
        await delivery
        assert producers.renewable.renewals == 1

    asyncio.run(scenario())


def test_stopped_it_makes_no_new_producer() -> None:
    async def scenario() -> None:
        producers = Producers()
        await producers.renewable.start()
        delivery = await producers.renewable.send("events", b"run-1", b"a", None)
        await producers.renewable.stop()
        producers.made[0].held[0].set_exception(ProducerDiscarded("stopped"))
        with pytest.raises(ProducerDiscarded):
            await delivery
        assert len(producers.made) == 1

    asyncio.run(scenario())


def test_what_means_the_sequence_state_is_lost() -> None:
    assert sequence_lost(LeaderNotAvailableError(), queued=True)  # numbered, then failed
    assert sequence_lost(OutOfOrderSequenceNumber(), queued=False)
    assert sequence_lost(ProducerDiscarded("x"), queued=False)
    assert not sequence_lost(KafkaConnectionError(), queued=False)  # never numbered
