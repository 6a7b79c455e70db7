"""The fold: how a run's events become its state and its `runs` / `steps` rows.

Scenario by scenario, in the order of processors/fold/run.py's docstring: step precedence, run
status, missing steps, deadlines, re-delivery, versions, and the state's stored form. The
order-independence property (any permutation, any duplicates) is in test_fold_convergence.py.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import JsonValue

from steplog.processors.fold.effects import Effect, RunRowChanged, StepRowChanged, latest_rows
from steplog.processors.fold.run import apply_event, fold_events
from steplog.processors.fold.run_rows import current_rows
from steplog.processors.fold.rows import (
    RUN_COLUMNS,
    STEP_COLUMNS,
    RunRow,
    StepRow,
    columns,
    json_text,
)
from steplog.processors.fold.state import (
    STATE_FORMAT,
    InvokeInfo,
    RunMismatchError,
    RunState,
    SleepInfo,
    StateFormatError,
    WaitInfo,
)
from steplog.schemas.base import ErrorInfo, TriggerInfo
from steplog.schemas.events import (
    Event,
    RunCancelled,
    RunCompleted,
    RunCompletedPayload,
    RunFailed,
    RunFailedPayload,
    RunInterrupted,
    RunResumed,
    RunScheduled,
    RunScheduledPayload,
    RunStarted,
    RunStartedPayload,
    StepCompleted,
    StepCompletedPayload,
    StepFailed,
    StepFailedPayload,
    StepInvoked,
    StepInvokedPayload,
    StepKind,
    StepSkipped,
    StepSleeping,
    StepSleepingPayload,
    StepStarted,
    StepStartedPayload,
    StepWaiting,
    StepWaitingPayload,
)
from steplog.schemas.flows import FlowDefinition, FlowEdge, FlowStep

T0 = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Run:
    """Events of one run as its SDK process sends them: seq and event ids count up.

    `seq=0` imitates record_step from another process, which knows nothing of the run's seq.
    """

    def __init__(self, run_id: str = "req_123", flow: str = "checkout") -> None:
        self.fields: dict[str, Any] = {"project": "acme", "flow": flow, "run_id": run_id}
        self.seq = 0
        self.count = 0

    def _envelope(self, t: float, seq: int | None, attempt: int) -> dict[str, Any]:
        self.count += 1
        if seq is None:
            self.seq += 1
            seq = self.seq
        return {
            **self.fields,
            "event_id": f"{self.fields['run_id']}-e{self.count:03d}",
            "ts": at(t),
            "seq": seq,
            "attempt": attempt,
        }

    def started(
        self,
        key: str,
        t: float,
        *,
        attempt: int = 1,
        seq: int | None = None,
        kind: StepKind = StepKind.INSTRUMENTED,
        input: JsonValue = None,
        metadata: dict[str, Any] | None = None,
    ) -> StepStarted:
        return StepStarted(
            **self._envelope(t, seq, attempt),
            step_key=key,
            payload=StepStartedPayload(kind=kind, input=input, metadata=metadata or {}),
        )

    def completed(
        self,
        key: str,
        t: float,
        *,
        attempt: int = 1,
        seq: int | None = None,
        output: JsonValue = None,
        duration_ms: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> StepCompleted:
        return StepCompleted(
            **self._envelope(t, seq, attempt),
            step_key=key,
            payload=StepCompletedPayload(
                output=output, duration_ms=duration_ms, metadata=metadata or {}
            ),
        )

    def failed(
        self,
        key: str,
        t: float,
        message: str,
        *,
        attempt: int = 1,
        seq: int | None = None,
        retry_at: float | None = None,
        non_retriable: bool = False,
        error_type: str = "RuntimeError",
        stack: str | None = None,
    ) -> StepFailed:
        return StepFailed(
            **self._envelope(t, seq, attempt),
            step_key=key,
            payload=StepFailedPayload(
                error=ErrorInfo(type=error_type, message=message, stack=stack),
                retry_at=None if retry_at is None else at(retry_at),
                non_retriable=non_retriable,
            ),
        )

    def skipped(self, key: str, t: float, *, seq: int | None = None) -> StepSkipped:
        return StepSkipped(**self._envelope(t, seq, 1), step_key=key)

    def sleeping(self, key: str, t: float, wake_at: float) -> StepSleeping:
        return StepSleeping(
            **self._envelope(t, None, 1),
            step_key=key,
            payload=StepSleepingPayload(wake_at=at(wake_at)),
        )

    def waiting(self, key: str, t: float, event: str, timeout_at: float | None) -> StepWaiting:
        return StepWaiting(
            **self._envelope(t, None, 1),
            step_key=key,
            payload=StepWaitingPayload(
                event=event, timeout_at=None if timeout_at is None else at(timeout_at)
            ),
        )

    def invoked(self, key: str, t: float, child_run_id: str) -> StepInvoked:
        return StepInvoked(
            **self._envelope(t, None, 1),
            step_key=key,
            payload=StepInvokedPayload(
                child_run_id=child_run_id, workflow="fraud-check", data={"order": 1}
            ),
        )

    def run_scheduled(self, t: float, start_at: float) -> RunScheduled:
        return RunScheduled(
            **self._envelope(t, None, 1),
            payload=RunScheduledPayload(
                start_at=at(start_at),
                input={"order_id": "ord_1"},
                trigger=TriggerInfo(name="order.created", event_id="sig-1"),
            ),
        )

    def run_started(self, t: float, **payload: Any) -> RunStarted:
        return RunStarted(**self._envelope(t, None, 1), payload=RunStartedPayload(**payload))

    def run_completed(
        self, t: float, output: JsonValue = None, seq: int | None = None
    ) -> RunCompleted:
        return RunCompleted(
            **self._envelope(t, seq, 1), payload=RunCompletedPayload(output=output)
        )

    def run_failed(self, t: float, message: str, seq: int | None = None) -> RunFailed:
        return RunFailed(
            **self._envelope(t, seq, 1),
            payload=RunFailedPayload(error=ErrorInfo(type="WorkflowError", message=message)),
        )

    def run_cancelled(self, t: float, seq: int | None = None) -> RunCancelled:
        return RunCancelled(**self._envelope(t, seq, 1))

    def run_interrupted(self, t: float) -> RunInterrupted:
        return RunInterrupted(**self._envelope(t, None, 1))

    def run_resumed(self, t: float) -> RunResumed:
        return RunResumed(**self._envelope(t, None, 1))


def checkout_flow(**overrides: Any) -> FlowDefinition:
    """validate-cart -> {apply-coupon, reserve-stock} -> charge-card -> send-receipt."""
    fields: dict[str, Any] = {
        "project": "acme",
        "slug": "checkout",
        "step_deadline_ms": 30_000,
        "steps": [
            FlowStep(sdk_step_key="validate-cart"),
            FlowStep(sdk_step_key="apply-coupon"),
            FlowStep(sdk_step_key="reserve-stock"),
            FlowStep(sdk_step_key="charge-card", deadline_ms=10_000),
            FlowStep(sdk_step_key="send-receipt"),
        ],
        "edges": [
            FlowEdge(source="validate-cart", target="apply-coupon"),
            FlowEdge(source="validate-cart", target="reserve-stock"),
            FlowEdge(source="apply-coupon", target="charge-card"),
            FlowEdge(source="reserve-stock", target="charge-card"),
            FlowEdge(source="charge-card", target="send-receipt"),
        ],
        "ts": T0,
    }
    fields.update(overrides)
    return FlowDefinition(**fields)


def fold(
    events: list[Event], flow: FlowDefinition | None = None
) -> tuple[RunState, RunRow, dict[str, StepRow]]:
    """The final state, run row and step rows (last emitted per key) of a run's events."""
    state, effects = fold_events(events, flow)
    runs, steps = latest_rows(effects)
    (run,) = runs.values()
    return state, run, {key[3]: row for key, row in steps.items()}


def both_orders(first: Event, second: Event) -> list[list[Event]]:
    return [[first, second], [second, first]]


def step_rows(effects: list[Effect]) -> list[StepRow]:
    return [effect.row for effect in effects if isinstance(effect, StepRowChanged)]


def run_rows(effects: list[Effect]) -> list[RunRow]:
    return [effect.row for effect in effects if isinstance(effect, RunRowChanged)]


# --- the seeds' checkout -------------------------------------------------------------------------


def test_charge_card_failure_fails_the_run_with_its_error() -> None:
    r = Run()
    events: list[Event] = [
        r.started("validate-cart", 0),
        r.completed("validate-cart", 1, output={"items": 3}),
        r.skipped("apply-coupon", 1.5),
        r.started("reserve-stock", 2),
        r.completed("reserve-stock", 3),
        r.started("charge-card", 4, input={"amount": 4200}),
        r.failed("charge-card", 6, "card declined", error_type="CardError", stack="Traceback"),
    ]
    _, run, steps = fold(events, checkout_flow())

    assert run.status == "failed"
    assert (run.error_type, run.error_message, run.error_stack) == (
        "CardError",
        "card declined",
        "Traceback",
    )
    assert run.started_at == at(0)
    assert run.finished_at == at(6)
    assert run.duration_ms == 6000.0
    assert run.failed_step_count == 1
    assert run.step_count == 4
    charge = steps["charge-card"]
    assert (charge.status, charge.error_type, charge.input) == (
        "failed",
        "CardError",
        '{"amount":4200}',
    )
    assert (charge.started_at, charge.finished_at, charge.duration_ms) == (at(4), at(6), 2000.0)
    assert steps["apply-coupon"].status == "skipped"
    assert steps["validate-cart"].output == '{"items":3}'
    # The run ended without ever reaching send-receipt: the graph shows it missing.
    assert steps["send-receipt"].status == "missing"


def test_record_step_from_another_process_with_seq_zero_fills_in_the_graph() -> None:
    r = Run()
    manual = Run()  # another service: its own ids, no knowledge of the run's seq
    manual.count = 100
    events: list[Event] = [
        r.started("validate-cart", 0),
        r.completed("validate-cart", 1),
        manual.started("reserve-stock", 1.2, seq=0),
        manual.completed("reserve-stock", 1.4, seq=0),
    ]
    _, run, steps = fold(events, checkout_flow())

    assert steps["reserve-stock"].status == "completed"
    assert steps["reserve-stock"].duration_ms == pytest.approx(200.0)
    assert run.status == "running"


def test_record_step_success_and_running_with_equal_seq_end_completed_in_either_order() -> None:
    manual = Run()
    running = manual.started("manual-step", 5, seq=0)
    success = manual.completed("manual-step", 5, seq=0)  # same seq, same ts
    for events in both_orders(running, success):
        _, _, steps = fold(events)
        assert steps["manual-step"].status == "completed"


# --- step precedence -----------------------------------------------------------------------------


def test_success_after_running_does_not_regress() -> None:
    r = Run()
    started = r.started("charge-card", 1, input={"amount": 1})
    completed = r.completed("charge-card", 3, output="ok")
    _, _, steps = fold([completed, started])

    row = steps["charge-card"]
    assert row.status == "completed"
    assert (row.started_at, row.finished_at, row.duration_ms) == (at(1), at(3), 2000.0)
    assert (row.input, row.output) == ('{"amount":1}', '"ok"')


def test_step_duration_comes_from_the_payload_when_given() -> None:
    r = Run()
    _, _, steps = fold([r.started("a", 1), r.completed("a", 3, duration_ms=250.5)])
    assert steps["a"].duration_ms == 250.5


def test_step_without_a_known_start_has_no_duration() -> None:
    r = Run()
    _, _, steps = fold([r.completed("a", 3)])
    row = steps["a"]
    assert (row.started_at, row.finished_at, row.duration_ms) == (None, at(3), None)


def test_metadata_of_the_winner_merges_over_the_start() -> None:
    r = Run()
    events: list[Event] = [
        r.started("a", 1, metadata={"region": "eu", "http_status": 0}),
        r.completed("a", 2, metadata={"http_status": 200}),
    ]
    _, _, steps = fold(events)
    assert steps["a"].metadata == '{"http_status":200,"region":"eu"}'


def test_step_kind_comes_from_the_start_or_the_parking_event() -> None:
    r = Run()
    events: list[Event] = [
        r.started("charge", 0, kind=StepKind.RUN),
        r.sleeping("settle", 1, wake_at=3601),
        r.waiting("approval", 2, "order.approved", timeout_at=86402),
        r.invoked("fraud", 3, "child-1"),
    ]
    state, _, steps = fold(events)

    assert {key: (row.kind, row.status) for key, row in steps.items()} == {
        "charge": ("run", "running"),
        "settle": ("sleep", "running"),
        "approval": ("wait_for_event", "running"),
        "fraud": ("run_workflow", "running"),
    }
    # Kept for the timers and waiters of durable workflows.
    assert state.steps["settle"].winner.parked == SleepInfo(at(3601))
    assert state.steps["approval"].winner.parked == WaitInfo(
        "order.approved", at(86402), None, ""
    )
    assert state.steps["fraud"].winner.parked == InvokeInfo(
        "child-1", "fraud-check", "", '{"order":1}'
    )


def test_failure_with_retry_at_is_retrying_and_so_is_the_run() -> None:
    r = Run()
    events: list[Event] = [
        r.started("charge", 0),
        r.failed("charge", 1, "timeout", retry_at=11),
    ]
    state, run, steps = fold(events)
    assert steps["charge"].status == "retrying"
    assert run.status == "retrying"
    assert state.steps["charge"].winner.retry_at == at(11)


def test_non_retriable_failure_is_final_even_with_retry_at() -> None:
    r = Run()
    _, run, steps = fold([r.failed("charge", 1, "declined", retry_at=11, non_retriable=True)])
    assert steps["charge"].status == "failed"
    assert run.status == "failed"


def test_success_on_attempt_2_after_attempt_1_failed_completes_the_step() -> None:
    r = Run()
    events: list[Event] = [
        r.started("charge", 0, input={"try": 1}),
        r.failed("charge", 1, "timeout", retry_at=11),
        r.started("charge", 11, attempt=2, input={"try": 2}),
        r.completed("charge", 12, attempt=2, output="ok"),
    ]
    for order in (events, list(reversed(events))):
        _, run, steps = fold(list(order))
        row = steps["charge"]
        assert (row.status, row.attempt, row.started_at, row.input) == (
            "completed",
            2,
            at(11),
            '{"try":2}',
        )
        assert (row.error_type, row.error_message) == ("", "")
        assert run.status == "running"
        assert run.failed_step_count == 0


def test_new_attempt_started_after_a_retryable_failure_is_running() -> None:
    r = Run()
    events: list[Event] = [
        r.started("charge", 0),
        r.failed("charge", 1, "timeout", retry_at=11),
        r.started("charge", 11, attempt=2),
    ]
    _, run, steps = fold(events)
    assert (steps["charge"].status, steps["charge"].attempt) == ("running", 2)
    assert run.status == "running"


def test_final_failure_superseded_by_a_later_success_in_the_same_attempt_recovers_the_run() -> None:
    manual = Run()
    failed = manual.failed("sync", 1, "boom", seq=0)
    completed = manual.completed("sync", 2, seq=0)  # later ts breaks the seq tie
    for events in both_orders(failed, completed):
        _, run, steps = fold(events)
        assert steps["sync"].status == "completed"
        assert run.status == "running"


def test_step_started_twice_in_one_attempt_keeps_the_first_start() -> None:
    # A worker that restarts mid-step sends step.started again, with a new event id.
    r = Run()
    first = r.started("charge", 1, input={"n": 1})
    again = r.started("charge", 4, input={"n": 2})
    for events in both_orders(first, again):
        _, _, steps = fold(events)
        assert (steps["charge"].started_at, steps["charge"].input) == (at(1), '{"n":1}')


# --- run status ----------------------------------------------------------------------------------


def test_run_completes_when_every_graph_step_completed_or_skipped() -> None:
    r = Run()
    events: list[Event] = [
        r.started("validate-cart", 0),
        r.completed("validate-cart", 1),
        r.skipped("apply-coupon", 1),
        r.started("reserve-stock", 1),
        r.completed("reserve-stock", 2),
        r.started("charge-card", 2),
        r.completed("charge-card", 3),
        r.started("send-receipt", 3),
    ]
    flow = checkout_flow()
    state, effects = fold_events(events, flow)
    assert run_rows(effects)[-1].status == "running"

    state, effects = apply_event(state, r.completed("send-receipt", 4.5), flow)
    run = run_rows(effects)[-1]
    assert (run.status, run.started_at, run.finished_at, run.duration_ms) == (
        "completed",
        at(0),
        at(4.5),
        4500.0,
    )
    assert run.output == ""


def test_run_without_a_flow_graph_stays_running_when_its_steps_are_done() -> None:
    r = Run()
    _, run, _ = fold([r.started("a", 0), r.completed("a", 1)])
    assert run.status == "running"
    assert run.finished_at is None


def test_scheduled_run_is_scheduled_until_it_starts() -> None:
    r = Run()
    scheduled = r.run_scheduled(0, start_at=60)
    state, effects = apply_event(None, scheduled)
    run = run_rows(effects)[-1]
    assert (run.status, run.scheduled_for, run.started_at) == ("scheduled", at(60), None)
    assert (run.input, run.trigger_event, run.trigger_event_id) == (
        '{"order_id":"ord_1"}',
        "order.created",
        "sig-1",
    )

    _, effects = apply_event(state, r.run_started(61, app="shop"))
    run = run_rows(effects)[-1]
    assert (run.status, run.scheduled_for, run.started_at, run.app) == (
        "running",
        at(60),
        at(61),
        "shop",
    )
    # The scheduled input and trigger still describe the run.
    assert run.input == '{"order_id":"ord_1"}'


def test_scheduled_run_whose_step_reported_is_running() -> None:
    r = Run()
    _, run, _ = fold([r.run_scheduled(0, start_at=60), r.started("a", 61)])
    assert (run.status, run.started_at) == ("running", at(61))


def test_run_started_describes_the_run() -> None:
    r = Run()
    started = r.run_started(
        1,
        app="shop",
        input={"order": 7},
        trigger=TriggerInfo(name="order.paid", event_id="sig-9"),
        parent_run_id="parent-1",
        parent_step_key="fulfil",
        retrigger_of="req_100",
    )
    _, run, _ = fold([r.started("a", 0.5), started])
    assert run.started_at == at(1)  # run.started's ts, not the earliest event's
    assert (run.app, run.input, run.trigger_event, run.trigger_event_id) == (
        "shop",
        '{"order":7}',
        "order.paid",
        "sig-9",
    )
    assert (run.parent_run_id, run.parent_step_key, run.retrigger_of) == (
        "parent-1",
        "fulfil",
        "req_100",
    )


def test_run_completed_carries_its_output() -> None:
    r = Run()
    _, run, _ = fold([r.run_started(0), r.run_completed(5, output={"shipped": True})])
    assert (run.status, run.output, run.finished_at, run.duration_ms) == (
        "completed",
        '{"shipped":true}',
        at(5),
        5000.0,
    )


def test_run_failed_carries_its_error() -> None:
    r = Run()
    _, run, _ = fold([r.run_started(0), r.run_failed(2, "child failed")])
    assert (run.status, run.error_type, run.error_message) == (
        "failed",
        "WorkflowError",
        "child failed",
    )


def test_explicit_run_completed_wins_over_a_failed_step() -> None:
    # The code caught the step's exception and completed the run: its decision stands.
    r = Run()
    events: list[Event] = [
        r.run_started(0),
        r.failed("charge", 1, "declined"),
        r.run_completed(2, output="fallback"),
    ]
    _, run, steps = fold(events)
    assert (run.status, run.output, run.error_message) == ("completed", '"fallback"', "")
    assert run.failed_step_count == 1
    assert steps["charge"].status == "failed"


def test_latest_of_several_terminal_run_events_decides() -> None:
    r = Run()
    cancelled = r.run_cancelled(5, seq=10)
    completed = r.run_completed(4, seq=11)  # later seq wins over the later ts
    for events in both_orders(cancelled, completed):
        _, run, _ = fold(events)
        assert (run.status, run.finished_at) == ("completed", at(4))


def test_cancelled_run_is_cancelled_and_never_stuck() -> None:
    r = Run()
    events: list[Event] = [r.run_started(0), r.started("charge-card", 1), r.run_cancelled(2)]
    _, run, steps = fold(events, checkout_flow())
    assert (run.status, run.finished_at, run.stuck_after) == ("cancelled", at(2), None)
    assert (steps["charge-card"].status, steps["charge-card"].version) == ("interrupted", 3)


def test_a_step_left_running_by_the_runs_end_is_interrupted_until_its_own_end_arrives() -> None:
    r = Run()
    started, failed = r.started("pack", 1), r.run_failed(2, "boom")
    completed = r.completed("pack", 3)
    for events in both_orders(started, failed):
        _, _, steps = fold([r.run_started(0), *events])
        assert (steps["pack"].status, steps["pack"].version) == ("interrupted", 3)
    # A late success still wins, with a higher version than the closed row.
    for events in both_orders(failed, completed):
        _, _, steps = fold([r.run_started(0), started, *events])
        assert (steps["pack"].status, steps["pack"].version) == ("completed", 4)


def test_cancelled_before_start_has_no_start() -> None:
    r = Run()
    _, run, _ = fold([r.run_scheduled(0, start_at=60), r.run_cancelled(10)])
    assert (run.status, run.started_at, run.finished_at, run.duration_ms) == (
        "cancelled",
        None,
        at(10),
        None,
    )


def test_interrupted_run_is_interrupted_until_resumed() -> None:
    r = Run()
    interrupted = r.run_interrupted(2)
    resumed = r.run_resumed(3)
    base: list[Event] = [r.run_started(0), r.started("a", 1)]
    _, run, _ = fold([*base, interrupted])
    assert run.status == "interrupted"
    for tail in both_orders(interrupted, resumed):
        _, run, _ = fold([*base, *tail])
        assert run.status == "running"


def test_interrupted_run_that_failed_is_failed() -> None:
    r = Run()
    _, run, _ = fold([r.run_started(0), r.run_interrupted(1), r.run_failed(2, "gave up")])
    assert run.status == "failed"


def test_earliest_failed_step_gives_the_run_its_error() -> None:
    r = Run()
    events: list[Event] = [
        r.failed("b", 2, "second"),
        r.failed("a", 1, "first"),
        r.failed("c", 1, "first too, but c sorts after a"),
    ]
    _, run, _ = fold(events)
    assert (run.status, run.error_message, run.finished_at, run.failed_step_count) == (
        "failed",
        "first",
        at(1),
        3,
    )


# --- missing steps -------------------------------------------------------------------------------


def test_step_is_missing_once_a_step_downstream_reported() -> None:
    r = Run()
    events: list[Event] = [
        r.started("validate-cart", 0),
        r.completed("validate-cart", 1),
        r.started("charge-card", 2),  # neither apply-coupon nor reserve-stock ever reported
    ]
    _, run, steps = fold(events, checkout_flow())
    assert {key: row.status for key, row in steps.items()} == {
        "validate-cart": "completed",
        "apply-coupon": "missing",
        "reserve-stock": "missing",
        "charge-card": "running",
    }
    missing = steps["reserve-stock"]
    assert (missing.kind, missing.attempt, missing.version, missing.updated_at) == (
        "instrumented",
        0,
        0,
        None,
    )
    assert (missing.started_at, missing.finished_at, missing.deadline_at) == (None, None, None)
    assert run.status == "running"
    assert run.step_count == 2


def test_unreported_steps_are_missing_once_the_run_ended() -> None:
    r = Run()
    _, _, steps = fold([r.started("validate-cart", 0), r.run_cancelled(1)], checkout_flow())
    assert sorted(key for key, row in steps.items() if row.status == "missing") == [
        "apply-coupon",
        "charge-card",
        "reserve-stock",
        "send-receipt",
    ]


def test_no_step_is_missing_while_the_run_is_under_way_upstream() -> None:
    r = Run()
    _, _, steps = fold([r.started("validate-cart", 0)], checkout_flow())
    assert list(steps) == ["validate-cart"]


def test_missing_step_that_reports_later_replaces_its_missing_row() -> None:
    r = Run()
    flow = checkout_flow()
    state, effects = fold_events([r.started("charge-card", 2)], flow)
    assert {row.step_key: row.status for row in step_rows(effects)}["reserve-stock"] == "missing"

    state, effects = apply_event(state, r.completed("reserve-stock", 3), flow)
    (row,) = [row for row in step_rows(effects) if row.step_key == "reserve-stock"]
    assert (row.status, row.version) == ("completed", 2)
    assert "reserve-stock" not in state.missing
    _, rows = current_rows(state, flow)
    assert [row.status for row in rows if row.step_key == "reserve-stock"] == ["completed"]


def test_final_failure_declares_missing_steps_even_when_a_later_event_supersedes_it() -> None:
    # Missing is decided by facts that never turn false again (here: a final failure was
    # reported), not by the run's current status, which the later success turns back to
    # running. Otherwise the order [failed, completed] would write a missing row that the
    # order [completed, failed] never writes.
    manual = Run()
    failed = manual.failed("validate-cart", 1, "boom", seq=0)
    completed = manual.completed("validate-cart", 2, seq=0)
    flow = checkout_flow()
    results = [fold(events, flow) for events in both_orders(failed, completed)]
    for state, run, steps in results:
        assert run.status == "running"
        assert steps["validate-cart"].status == "completed"
        assert steps["send-receipt"].status == "missing"
    # Equal but for created_at: the ts of whichever event came first (RunState.created_at).
    (state_a, run_a, steps_a), (state_b, run_b, steps_b) = results
    assert (state_a.created_at, state_b.created_at) == (failed.ts, completed.ts)
    assert dataclasses.replace(state_b, created_at=state_a.created_at) == state_a
    assert (dataclasses.replace(run_b, created_at=run_a.created_at), steps_b) == (run_a, steps_a)


def test_flow_definition_arriving_mid_run_is_adopted() -> None:
    r = Run()
    events: list[Event] = [
        r.started("validate-cart", 0),
        r.completed("validate-cart", 1),
        r.started("charge-card", 2),
    ]
    state, _ = fold_events(events)  # no definition yet
    state, effects = apply_event(state, r.completed("charge-card", 3), checkout_flow())
    assert sorted(row.step_key for row in step_rows(effects) if row.status == "missing") == [
        "apply-coupon",
        "reserve-stock",
    ]
    assert state.incomplete_graph_steps == 3


# --- deadlines -----------------------------------------------------------------------------------


def test_running_step_has_a_deadline_and_the_run_is_stuck_after_the_earliest() -> None:
    r = Run()
    flow = checkout_flow()
    events: list[Event] = [
        r.started("validate-cart", 0),  # flow default: 30 s
        r.completed("validate-cart", 1),
        r.started("reserve-stock", 2),  # 30 s -> 32
        r.started("charge-card", 3),  # its own 10 s -> 13
    ]
    state, run, steps = fold(events, flow)
    assert steps["validate-cart"].deadline_at is None
    assert steps["reserve-stock"].deadline_at == at(32)
    assert steps["charge-card"].deadline_at == at(13)
    assert run.stuck_after == at(13)

    state, effects = apply_event(state, r.completed("charge-card", 4), flow)
    assert step_rows(effects)[-1].deadline_at is None
    assert run_rows(effects)[-1].stuck_after == at(32)

    _, effects = apply_event(state, r.completed("reserve-stock", 5), flow)
    assert run_rows(effects)[-1].stuck_after is None


def test_no_deadline_without_a_flow_or_a_configured_deadline() -> None:
    r = Run()
    _, run, steps = fold([r.started("charge-card", 0)])
    assert (steps["charge-card"].deadline_at, run.stuck_after) == (None, None)
    _, run, steps = fold([r.started("charge-card", 0)], checkout_flow(step_deadline_ms=None))
    assert steps["charge-card"].deadline_at == at(10)  # its own deadline still holds
    _, run, steps = fold([r.started("send-receipt", 0)], checkout_flow(step_deadline_ms=None))
    assert (steps["send-receipt"].deadline_at, run.stuck_after) == (None, None)


def test_sleeping_step_is_stuck_only_after_it_oversleeps() -> None:
    r = Run()
    flow = checkout_flow(steps=[FlowStep(sdk_step_key="settle")], edges=[], step_deadline_ms=1_000)
    _, run, steps = fold([r.sleeping("settle", 0, wake_at=3600)], flow)
    assert steps["settle"].deadline_at == at(3601)
    assert run.stuck_after == at(3601)


# --- re-delivery, versions, ownership ------------------------------------------------------------


def test_duplicate_event_changes_nothing_and_re_emits_the_current_rows() -> None:
    r = Run()
    flow = checkout_flow()
    first = r.started("charge-card", 2)
    events: list[Event] = [r.started("validate-cart", 0), first, r.completed("charge-card", 3)]
    state, _ = fold_events(events, flow)
    before = state.copy()
    run_before, steps_before = current_rows(state, flow)

    state, effects = apply_event(state, first, flow)

    assert state == before
    rows = {row.step_key: row for row in step_rows(effects)}
    assert rows["charge-card"] == next(s for s in steps_before if s.step_key == "charge-card")
    # The missing steps' rows come again too: the host may have died before writing them.
    assert {key for key, row in rows.items() if row.status == "missing"} == {
        "apply-coupon",
        "reserve-stock",
    }
    assert run_rows(effects) == [run_before]


def test_versions_count_distinct_events_and_updated_at_is_the_latest_event_time() -> None:
    r = Run()
    events: list[Event] = [
        r.started("a", 5),
        r.completed("a", 9),
        r.started("b", 7),
    ]
    state, effects = fold_events([*events, events[0]])
    assert [row.version for row in run_rows(effects)] == [1, 2, 3, 3]
    # A step row's version is twice its events (odd versions are rows closed by a run's end).
    assert [(row.step_key, row.version) for row in step_rows(effects)] == [
        ("a", 2),
        ("a", 4),
        ("b", 2),
        ("a", 4),
    ]
    run = run_rows(effects)[-1]
    assert (run.updated_at, state.version) == (at(9), 3)
    assert step_rows(effects)[2].updated_at == at(7)  # a step's own latest event


def test_apply_event_takes_ownership_and_copy_keeps_the_state_before() -> None:
    r = Run()
    state, _ = apply_event(None, r.started("a", 0))
    kept = state.copy()
    updated, _ = apply_event(state, r.completed("a", 1))
    assert updated is state
    assert kept.steps["a"].status == "running"
    assert updated.steps["a"].status == "completed"


def test_event_of_another_run_is_refused() -> None:
    state, _ = apply_event(None, Run("req_1").started("a", 0))
    with pytest.raises(RunMismatchError, match="req_2"):
        apply_event(state, Run("req_2").started("a", 0))


def test_flow_definition_of_another_flow_is_refused() -> None:
    with pytest.raises(RunMismatchError, match="acme/refund"):
        apply_event(None, Run().started("a", 0), checkout_flow(slug="refund"))


def test_event_times_in_other_offsets_become_utc() -> None:
    r = Run()
    event = r.started("a", 0).model_copy(
        update={"ts": datetime(2025, 3, 14, 11, 0, tzinfo=timezone(timedelta(hours=2)))}
    )
    _, run, steps = fold([event])
    assert steps["a"].started_at == T0
    assert steps["a"].started_at is not None and steps["a"].started_at.tzinfo is UTC
    assert run.updated_at.tzinfo is UTC


def test_fold_events_needs_at_least_one_event() -> None:
    with pytest.raises(ValueError, match="no events"):
        fold_events([])


# --- the stored state ----------------------------------------------------------------------------


def test_state_round_trips_through_bytes() -> None:
    r = Run()
    flow = checkout_flow()
    events: list[Event] = [
        r.run_scheduled(0, start_at=1),
        r.run_started(1, app="shop"),
        r.started("validate-cart", 1, metadata={"k": 1}),
        r.failed("reserve-stock", 2, "timeout", retry_at=5),
        r.started("charge-card", 3),
        r.sleeping("send-receipt", 4, wake_at=100),
    ]
    state, _ = fold_events(events, flow)
    restored = RunState.from_bytes(state.to_bytes())
    assert restored == state
    # And it folds on exactly like the original.
    next_event = r.completed("charge-card", 6)
    assert apply_event(restored, next_event, flow)[1] == apply_event(state, next_event, flow)[1]


def test_state_bytes_of_another_format_are_refused() -> None:
    data = bytearray(RunState(
        project="p", flow="f", run_id="r", updated_at=T0, created_at=T0
    ).to_bytes())
    data[4] = STATE_FORMAT + 1
    expected = f"format {STATE_FORMAT + 1}, expected {STATE_FORMAT}"
    with pytest.raises(StateFormatError, match=expected):
        RunState.from_bytes(bytes(data))


def test_bytes_that_are_not_a_state_are_refused() -> None:
    with pytest.raises(StateFormatError, match="header"):
        RunState.from_bytes(b'{"run_id": "r"}')


# --- rows ----------------------------------------------------------------------------------------


def test_row_values_follow_the_columns() -> None:
    r = Run()
    _, run, steps = fold([r.started("a", 0, input={"b": 1, "a": [1, 2]})])
    assert columns(RunRow) == RUN_COLUMNS
    assert columns(StepRow) == STEP_COLUMNS
    assert dict(zip(RUN_COLUMNS, run.values(), strict=True))["run_id"] == "req_123"
    step = dict(zip(STEP_COLUMNS, steps["a"].values(), strict=True))
    assert (step["step_key"], step["input"], step["output"], step["metadata"]) == (
        "a",
        '{"a":[1,2],"b":1}',
        "",
        "",
    )
    with pytest.raises(TypeError, match="RunRow or StepRow"):
        columns(dict)  # type: ignore[arg-type]


def test_rows_are_frozen_values() -> None:
    r = Run()
    _, run, steps = fold([r.started("a", 0)])
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.status = "completed"  # type: ignore[misc]
    assert dataclasses.replace(steps["a"], status="completed").status == "completed"
    assert steps["a"] == dataclasses.replace(steps["a"])


def test_json_columns_are_compact_with_sorted_keys_and_empty_for_none() -> None:
    assert json_text(None) == ""
    assert json_text("ok") == '"ok"'
    assert json_text({"b": [1, {"d": None, "c": "é"}], "a": 1.5}) == (
        '{"a":1.5,"b":[1,{"c":"é","d":null}]}'
    )


def test_a_workflow_run_whose_step_failed_for_good_runs_on_until_its_code_ends_it() -> None:
    # The step's error is raised in the workflow code, which may catch it: the worker's
    # run.failed (or run.completed) decides, not the step.
    r = Run(flow="order.process")
    started, failed = r.run_started(0, app="shop"), r.failed("charge", 1, "declined")
    for events in both_orders(started, failed):
        _, run, steps = fold(events)
        assert (run.status, run.error_type, run.failed_step_count) == ("running", "", 1)
        assert steps["charge"].status == "failed"
    _, run, _ = fold([started, failed, r.run_failed(2, "charge failed: declined")])
    assert (run.status, run.error_type, run.error_message) == (
        "failed", "WorkflowError", "charge failed: declined"
    )
