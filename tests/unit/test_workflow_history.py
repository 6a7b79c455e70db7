"""Merging a run's events into the history a worker executes from (producers.history)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from steplog.producers.history import RunHistory
from steplog.schemas.base import ErrorInfo, TriggerInfo
from steplog.schemas.commands import StepRecord
from steplog.schemas.events import (
    Event,
    RunCompleted,
    RunInterrupted,
    RunResumed,
    RunStarted,
    RunStartedPayload,
    StepCompleted,
    StepCompletedPayload,
    StepFailed,
    StepFailedPayload,
    StepInvoked,
    StepInvokedPayload,
    StepKind,
    StepSleeping,
    StepSleepingPayload,
    StepStarted,
    StepStartedPayload,
    new_event_id,
)
from steplog.schemas.statuses import StepStatus

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
_seq = iter(range(1, 10_000))


def envelope(step: str | None = None, attempt: int = 1) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "event_id": new_event_id(),
        "project": "shop",
        "flow": "order.process",
        "run_id": "run-1",
        "attempt": attempt,
        "ts": T0,
        "seq": next(_seq),
    }
    if step is not None:
        fields["step_key"] = step
    return fields


def started(step: str, kind: StepKind = StepKind.RUN, attempt: int = 1) -> Event:
    return StepStarted(**envelope(step, attempt), payload=StepStartedPayload(kind=kind))


def completed(step: str, output: Any = None, attempt: int = 1) -> Event:
    return StepCompleted(**envelope(step, attempt), payload=StepCompletedPayload(output=output))


def failed(step: str, attempt: int = 1, retry_at: datetime | None = None, **kw: Any) -> Event:
    error = ErrorInfo(type="TimeoutError", message="slow")
    payload = StepFailedPayload(error=error, retry_at=retry_at, **kw)
    return StepFailed(**envelope(step, attempt), payload=payload)


def test_a_started_then_completed_step_is_completed_with_its_output_and_kind() -> None:
    history = RunHistory()
    history.merge([started("charge"), completed("charge", {"id": "ch_1"})])
    record = history.steps["charge"]
    assert (record.kind, record.status, record.attempt) == (
        StepKind.RUN, StepStatus.COMPLETED, 1
    )
    assert record.output == {"id": "ch_1"}


def test_a_start_arriving_after_its_outcome_does_not_regress_the_step() -> None:
    history = RunHistory.from_records(
        {"charge": StepRecord(kind=StepKind.RUN, status=StepStatus.COMPLETED, output=7)}
    )
    history.merge([started("charge")])
    assert history.steps["charge"].status is StepStatus.COMPLETED
    assert history.steps["charge"].output == 7


def test_a_later_attempt_replaces_the_record_and_an_earlier_ones_events_are_ignored() -> None:
    retry_at = T0 + timedelta(seconds=3)
    history = RunHistory()
    history.merge([started("charge"), failed("charge", retry_at=retry_at)])
    record = history.steps["charge"]
    assert (record.status, record.retry_at) == (StepStatus.RETRYING, retry_at)
    assert record.error is not None and record.error.type == "TimeoutError"
    history.merge([started("charge", attempt=2), completed("charge", 1, attempt=1)])
    record = history.steps["charge"]
    assert (record.status, record.attempt, record.error, record.retry_at) == (
        StepStatus.RUNNING, 2, None, None
    )


def test_a_final_or_non_retriable_failure_is_failed() -> None:
    history = RunHistory()
    history.merge([failed("a"), failed("b", retry_at=T0, non_retriable=True)])
    assert history.steps["a"].status is StepStatus.FAILED
    assert history.steps["b"].status is StepStatus.FAILED
    assert history.steps["b"].retry_at is None


def test_parking_events_add_what_they_know_to_the_attempts_record() -> None:
    wake_at = T0 + timedelta(hours=1)
    history = RunHistory()
    history.merge([
        StepSleeping(
            **envelope("renewal"),
            payload=StepSleepingPayload(wake_at=wake_at, kind=StepKind.SLEEP_UNTIL),
        ),
        started("fraud", StepKind.RUN_WORKFLOW),
        StepInvoked(
            **envelope("fraud"),
            payload=StepInvokedPayload(child_run_id="child-1", workflow="order.fraud-check"),
        ),
    ])
    sleep = history.steps["renewal"]
    assert (sleep.kind, sleep.status, sleep.wake_at) == (
        StepKind.SLEEP_UNTIL, StepStatus.RUNNING, wake_at
    )
    child = history.steps["fraud"]
    assert (child.kind, child.child_run_id) == (StepKind.RUN_WORKFLOW, "child-1")
    history.merge([completed("fraud", {"verdict": "ok"})])
    assert history.steps["fraud"].child_run_id == "child-1"
    assert history.steps["fraud"].output == {"verdict": "ok"}


def test_run_events_say_how_the_run_started_whether_it_ended_or_was_interrupted() -> None:
    trigger = TriggerInfo(name="order.placed", event_id="sig-1")
    history = RunHistory()
    history.merge([
        RunStarted(
            **envelope(), payload=RunStartedPayload(app="shop", input={"id": 1}, trigger=trigger)
        ),
        RunInterrupted(**envelope()),
    ])
    assert history.start is not None
    assert (history.start.workflow, history.start.app, history.start.input) == (
        "order.process", "shop", {"id": 1}
    )
    assert history.start.trigger == trigger
    assert history.interrupted and history.ended is None
    history.merge([RunResumed(**envelope())])
    assert not history.interrupted
    last = RunCompleted(**envelope())
    history.merge([last])
    assert history.ended == "run.completed"
    assert history.last_seq == last.seq
