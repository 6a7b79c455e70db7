"""Starts with an idempotency key (producers/control_messages.py): one run id per key and
window, carried by a run.scheduled whose event id repeats, so duplicates collapse in the fold."""

from __future__ import annotations

import pytest

from steplog.producers.control_messages import ControlMessages
from steplog.schemas.errors import InvalidEventError
from steplog.schemas.events import RunScheduled
from steplog.schemas.ids import derived_id
from steplog.schemas.topics import TopicNames

MESSAGES = ControlMessages("acme", TopicNames.with_prefix("steplog."), "steplog.events", 1_000_000)
DAY_MS = 86_400_000


def test_two_starts_with_one_key_are_the_same_scheduled_run_and_event() -> None:
    first = MESSAGES.idempotent_start("order.process", {"n": 1}, "shop", None, "ord-7", DAY_MS)
    second = MESSAGES.idempotent_start("order.process", {"n": 2}, "shop", None, "ord-7", DAY_MS)
    (topic, run_id, event), (_, run_id_2, event_2) = first, second
    assert topic == "steplog.events" and run_id == run_id_2
    assert isinstance(event, RunScheduled) and isinstance(event_2, RunScheduled)
    assert event.event_id == event_2.event_id == derived_id("idempotent-start", run_id)
    assert event.payload.app == "shop" and event.payload.input == {"n": 1}


def test_another_key_workflow_or_window_is_another_run() -> None:
    def run_id(workflow: str, key: str, window_ms: int) -> str:
        return MESSAGES.idempotent_start(workflow, None, None, None, key, window_ms)[1]

    base = run_id("order.process", "ord-7", DAY_MS)
    assert run_id("order.process", "ord-8", DAY_MS) != base
    assert run_id("order.refund", "ord-7", DAY_MS) != base
    assert run_id("order.process", "ord-7", DAY_MS + 1) != base


@pytest.mark.parametrize(("key", "window_ms", "field"), [
    ("", DAY_MS, "idempotency_key"), ("x" * 201, DAY_MS, "idempotency_key"),
    ("ord-7", 0, "idempotency_window"),
])
def test_a_bad_key_or_window_is_refused_naming_it(key: str, window_ms: int, field: str) -> None:
    with pytest.raises(InvalidEventError) as refused:
        MESSAGES.idempotent_start("order.process", None, None, None, key, window_ms)
    assert refused.value.field == field
