"""Events posted to the ingest API are redacted by the SDK's rules before they reach the events
topic: a `password` in a step's metadata, a card number in its input, a token in its output."""

from __future__ import annotations

import asyncio

from steplog.schemas.codec import decode_event
from steplog.schemas.events import StepCompleted, StepStarted
from steplog.settings import Settings
from tests.integration.test_api import golden, read_topic, running_api

CARD = "4111 1111 1111 1111"


def test_posted_step_events_land_on_the_topic_redacted(topics: Settings) -> None:
    started = golden("step.started")
    started.update(event_id="redact-1", run_id="run-redact")
    started["payload"] = {
        "kind": "run", "input": {"card": CARD, "qty": 1},
        "metadata": {"password": "hunter2", "order_id": "o-7"},
    }
    completed = golden("step.completed")
    completed.update(event_id="redact-2", run_id="run-redact")
    completed["payload"] = {"output": {"refresh_token": "r-1", "ok": True}}

    async def scenario() -> None:
        async with running_api(topics) as client:
            response = await client.post("/v1/events?wait=true", json=[started, completed])
            assert response.status == 202, await response.text()

    asyncio.run(scenario())
    records = asyncio.run(read_topic(topics, topics.topics.events))
    landed = {event.event_id: event for event in map(decode_event, (r.value for r in records))}
    first, second = landed["redact-1"], landed["redact-2"]
    assert isinstance(first, StepStarted) and isinstance(second, StepCompleted)
    assert first.payload.metadata == {"password": "[REDACTED]", "order_id": "o-7"}
    assert first.payload.input == {"card": "[REDACTED]", "qty": 1}
    assert second.payload.output == {"refresh_token": "[REDACTED]", "ok": True}
    assert not any(b"hunter2" in (r.value or b"") or b"4111" in (r.value or b"") for r in records)
