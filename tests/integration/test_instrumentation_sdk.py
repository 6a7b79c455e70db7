"""The instrumentation SDK against the real broker: what `run.step`, `run.skip` and
`record_step` send arrives on the events topic, validated, in order; flows files arrive on the
flows topic."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from steplog import Client
from steplog.producers.flows_file import load_flows_file, push_flows
from steplog.projections.log_reader import read_log
from steplog.schemas.codec import decode_event, decode_flow
from steplog.schemas.events import (
    Event,
    StepCompleted,
    StepFailed,
    StepSkipped,
    StepStarted,
)
from steplog.schemas.flows import FlowDefinition
from steplog.settings import Settings


class CardDeclined(Exception):
    pass


def charge_card(cart: list[int]) -> int:
    raise CardDeclined(f"card declined for {sum(cart)} cents")


def reserve_stock(cart: list[int]) -> int:
    return len(cart)


async def read_events(settings: Settings) -> list[Event]:
    return [
        decode_event(record.value)
        async for record in read_log(settings.kafka_bootstrap, settings.topics.events)
    ]


def events_of_run(settings: Settings, run_id: str, count: int, timeout: float = 30) -> list[Event]:
    """The run's events in seq order, once `count` of them are on the topic (no sleeps: the
    client was flushed, so they are acknowledged; reading is retried only until they show)."""
    deadline = time.monotonic() + timeout
    while True:
        events = [e for e in asyncio.run(read_events(settings)) if e.run_id == run_id]
        if len(events) >= count or time.monotonic() > deadline:
            return sorted(events, key=lambda e: e.seq)


def summary(events: list[Event]) -> list[tuple[str, str, int, int]]:
    return [(e.type, getattr(e, "step_key", ""), e.attempt, e.seq) for e in events]


def test_a_checkout_run_with_a_failing_step_arrives_in_order_with_its_error(
    topics: Settings,
) -> None:
    errors: list[BaseException] = []
    client = Client(settings=topics, capture_stack=True, on_error=errors.append)
    run = client.run("checkout", run_id="req_123")
    cart = [1200, 3000]

    assert run.step("reserve-stock", reserve_stock, cart, metadata={"items": 2}) == 2
    raised: BaseException | None = None
    for _ in range(2):  # the application's own retry loop: two attempts
        try:
            run.step("charge-card", charge_card, cart, metadata={"card_number": "4111"})
        except CardDeclined as exc:
            assert raised is None or exc is not raised
            raised = exc
    run.skip("send-receipt", reason="payment failed")
    client.record_step(
        flow_key="checkout",
        run_id="req_123",
        step_key="notify-fraud-team",
        status="success",
        metadata={"channel": "slack"},
    )
    assert client.flush(timeout=60)
    stats = client.stats()
    assert (stats.sent, stats.dropped, stats.failed) == (8, 0, 0)
    assert errors == []
    client.close()

    events = events_of_run(topics, "req_123", 8)
    assert summary(events) == [
        ("step.completed", "notify-fraud-team", 1, 0),  # record_step: seq 0
        ("step.started", "reserve-stock", 1, 1),
        ("step.completed", "reserve-stock", 1, 2),
        ("step.started", "charge-card", 1, 3),
        ("step.failed", "charge-card", 1, 4),
        ("step.started", "charge-card", 2, 5),
        ("step.failed", "charge-card", 2, 6),
        ("step.skipped", "send-receipt", 1, 7),
    ]
    assert all(e.project == topics.project and e.flow == "checkout" for e in events)
    started = events[1]
    assert isinstance(started, StepStarted) and started.payload.metadata == {"items": 2}
    completed = events[2]
    assert isinstance(completed, StepCompleted)
    assert completed.payload.duration_ms is not None and completed.payload.duration_ms > 0
    charge_started = events[3]
    assert isinstance(charge_started, StepStarted)
    assert charge_started.payload.metadata == {"card_number": "[REDACTED]"}
    failed = events[6]
    assert isinstance(failed, StepFailed)
    assert failed.payload.error.type == "CardDeclined"
    assert failed.payload.error.message == "card declined for 4200 cents" == str(raised)
    assert failed.payload.error.stack is not None
    assert "in charge_card" in failed.payload.error.stack
    assert failed.payload.duration_ms is not None and failed.payload.duration_ms > 0
    skipped = events[7]
    assert isinstance(skipped, StepSkipped) and skipped.payload.reason == "payment failed"
    assert len({e.event_id for e in events}) == len(events)


def test_the_original_exception_object_reaches_the_caller(topics: Settings) -> None:
    client = Client(settings=topics)
    error = CardDeclined("declined")

    def fail() -> None:
        raise error

    with pytest.raises(CardDeclined) as caught:
        client.run("checkout", run_id="req_raise").step("charge-card", fail)
    assert caught.value is error
    assert client.flush(timeout=60)
    client.close()
    types = [e.type for e in events_of_run(topics, "req_raise", 2)]
    assert types == ["step.started", "step.failed"]


def test_an_async_run_with_async_steps_and_async_with(topics: Settings) -> None:
    async def charge_async(amount: int) -> dict[str, int]:
        await asyncio.sleep(0.001)
        return {"charged": amount}

    async def main(client: Client) -> dict[str, int]:
        run = client.run("checkout", run_id="req_async")
        async with run.step("reserve-stock", metadata={"warehouse": "ber-1"}):
            await asyncio.sleep(0.001)
        result = await run.step("charge-card", charge_async, 4200, record_output=True)
        with pytest.raises(TimeoutError):
            async with run.step("ship"):
                raise TimeoutError("carrier did not answer")
        run.complete({"status": "charged"})
        assert await client.flush_async(timeout=60)
        return result

    client = Client(settings=topics)
    assert asyncio.run(main(client)) == {"charged": 4200}
    client.close()

    events = events_of_run(topics, "req_async", 7)
    assert summary(events) == [
        ("step.started", "reserve-stock", 1, 1),
        ("step.completed", "reserve-stock", 1, 2),
        ("step.started", "charge-card", 1, 3),
        ("step.completed", "charge-card", 1, 4),
        ("step.started", "ship", 1, 5),
        ("step.failed", "ship", 1, 6),
        ("run.completed", "", 1, 7),
    ]
    charged = events[3]
    assert isinstance(charged, StepCompleted) and charged.payload.output == {"charged": 4200}
    assert charged.payload.duration_ms is not None and charged.payload.duration_ms >= 1
    shipped = events[5]
    assert isinstance(shipped, StepFailed)
    assert (shipped.payload.error.type, shipped.payload.error.message) == (
        "TimeoutError",
        "carrier did not answer",
    )
    assert shipped.payload.error.stack is None  # capture_stack off


FLOWS = """\
{
  "flows": [
    {
      "slug": "checkout",
      "name": "Checkout",
      "step_deadline_ms": 30000,
      "steps": [
        {"sdk_step_key": "reserve-stock"},
        {"sdk_step_key": "charge-card", "deadline_ms": 10000},
        {"sdk_step_key": "send-receipt"}
      ],
      "edges": [
        {"source": "reserve-stock", "target": "charge-card"},
        {"source": "charge-card", "target": "send-receipt"}
      ]
    },
    {"slug": "refund", "steps": [{"sdk_step_key": "refund-card"}]}
  ]
}
"""


async def read_flows(settings: Settings) -> list[tuple[bytes | None, FlowDefinition]]:
    return [
        (record.key, decode_flow(record.value))
        async for record in read_log(settings.kafka_bootstrap, settings.topics.flows)
    ]


def test_a_flows_file_is_pushed_to_the_flows_topic_keyed_by_project_and_slug(
    topics: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "flows.json"
    path.write_text(FLOWS, encoding="utf-8")
    definitions = load_flows_file(path, topics.project)
    push_flows(topics, definitions)  # returns once Kafka acknowledged every definition

    pushed = asyncio.run(read_flows(topics))
    assert [(key, definition) for key, definition in pushed] == [
        (f"{topics.project}/checkout".encode(), definitions[0]),
        (f"{topics.project}/refund".encode(), definitions[1]),
    ]
    assert pushed[0][1].downstream("reserve-stock") == {"charge-card", "send-receipt"}
