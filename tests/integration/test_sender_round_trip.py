"""The SDK's sender against the real broker: every event arrives, validated, in order per key;
and bad input is refused with a message that names the problem."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from steplog.errors import EventTooLargeError, InvalidEventError
from steplog.producers.sender import EventSender
from steplog.projections.log_reader import LogRecord, read_log
from steplog.schemas.codec import decode_event
from steplog.schemas.events import (
    Event,
    StepCompleted,
    StepCompletedPayload,
    StepStarted,
    StepStartedPayload,
    new_event_id,
)
from steplog.settings import Settings

EVENTS = 10_000
RUNS = 250


def step_events(project: str) -> list[Event]:
    """EVENTS events over RUNS runs: each run's steps start and complete, seq counting up."""
    now = datetime.now(UTC)
    events: list[Event] = []
    for index in range(EVENTS):
        run, seq = index % RUNS, index // RUNS
        common: dict[str, Any] = dict(
            event_id=new_event_id(),
            project=project,
            flow="checkout",
            run_id=f"run-{run}",
            ts=now,
            seq=seq,
        )
        step_key = f"step-{seq // 2}"
        if seq % 2 == 0:
            events.append(
                StepStarted(
                    **common, step_key=step_key, payload=StepStartedPayload(input={"n": index})
                )
            )
        else:
            events.append(
                StepCompleted(
                    **common,
                    step_key=step_key,
                    payload=StepCompletedPayload(output={"n": index}, duration_ms=1.5),
                )
            )
    return events


async def read_all(settings: Settings) -> list[LogRecord]:
    return [record async for record in read_log(settings.kafka_bootstrap, settings.topics.events)]


def test_ten_thousand_events_round_trip_validated_and_in_order_per_run(topics: Settings) -> None:
    sent = step_events(topics.project)
    sender = EventSender(topics.kafka_bootstrap, topics.topics.events)
    try:
        for event in sent:
            sender.send_event(event)
        assert sender.flush(timeout=120), sender.stats()
        assert sender.stats().sent == EVENTS
        assert sender.stats().dropped == sender.stats().failed == 0
    finally:
        sender.close()

    records = asyncio.run(read_all(topics))
    assert len(records) == EVENTS

    received = [decode_event(record.value) for record in records]
    assert {e.event_id for e in received} == {e.event_id for e in sent}
    assert received[0] == next(e for e in sent if e.event_id == received[0].event_id)

    seqs_by_run: dict[str, list[int]] = defaultdict(list)
    partitions_by_run: dict[str, set[int]] = defaultdict(set)
    for record, event in zip(records, received):
        assert record.key == event.run_id.encode()
        seqs_by_run[event.run_id].append(event.seq)
        partitions_by_run[event.run_id].add(record.partition)
    assert len(seqs_by_run) == RUNS
    for run_id, seqs in seqs_by_run.items():
        assert seqs == sorted(seqs), f"{run_id} arrived out of order"
        assert len(partitions_by_run[run_id]) == 1, f"{run_id} spread over partitions"


def test_an_oversized_event_is_refused_before_it_is_queued(topics: Settings) -> None:
    sender = EventSender(topics.kafka_bootstrap, topics.topics.events, max_event_bytes=2048)
    event = step_events(topics.project)[0]
    big = event.model_copy(update={"payload": StepStartedPayload(input="x" * 4096)})
    with pytest.raises(EventTooLargeError, match="over the limit of 2048"):
        sender.send_event(big)
    assert sender.stats().buffered == 0


async def produce_raw(settings: Settings, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(settings.topics.events, value=value, key=b"bad")
    finally:
        await producer.stop()


def test_bad_messages_on_the_log_are_rejected_naming_the_problem(topics: Settings) -> None:
    valid = step_events(topics.project)[0].model_dump_json().encode()
    unknown_type = valid.replace(b'"step.started"', b'"step.exploded"')
    oversized = valid.replace(b'"input":{"n":0}', b'"input":"' + b"x" * 4096 + b'"')
    asyncio.run(produce_raw(topics, [b"\xff\xfenot json", unknown_type, oversized]))

    records = asyncio.run(read_all(topics))
    problems = []
    for record in records:
        with pytest.raises(InvalidEventError) as caught:
            decode_event(record.value, max_bytes=2048)
        problems.append(caught.value)

    malformed, wrong_type, too_big = problems
    assert "JSON" in str(malformed) or "UTF-8" in str(malformed)
    assert wrong_type.field == "type"
    assert "step.exploded" in str(wrong_type)
    assert isinstance(too_big, EventTooLargeError)
    assert "2048" in str(too_big)
