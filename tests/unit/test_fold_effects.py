"""The fold's engine effects: what each event of a workflow run asks the processors to do.

One test per rule of processors/fold/workflow.py's table, in its order, then re-delivery, run ends,
the history a resume carries, and the stored state. The properties over any order of events
(timer effects agree with the state; duplicates add nothing) are in test_fold_convergence.py.
"""

from __future__ import annotations

import pickle
from typing import Any

from steplog.processors.fold.effects import (
    AppResolution,
    ClearTimer,
    Effect,
    EndParentStep,
    ParentStep,
    RunRowChanged,
    SendCommand,
    SetTimer,
    StepRowChanged,
    TimerKind,
    WorkflowRunEnded,
    WriteEvent,
    WriteSignalsMessage,
)
from steplog.processors.fold.run import apply_event, fold_events
from steplog.processors.fold.state import RunState
from steplog.processors.fold.workflow import history, wanted_timers
from steplog.schemas.base import ErrorInfo
from steplog.schemas.commands import CancelRun, ResumeRun, StartRun
from steplog.schemas.events import (
    Event,
    RunCancelled,
    RunCancelledPayload,
    RunScheduled,
    RunScheduledPayload,
    StepCompleted,
    StepCompletedPayload,
    StepInvoked,
    StepInvokedPayload,
    StepKind,
    StepSleeping,
    StepSleepingPayload,
    StepWaiting,
    StepWaitingPayload,
)
from steplog.schemas.ids import derived_id
from steplog.schemas.signals import WaitEnded
from tests.unit.test_fold import Run, at

APP = "shop"


def engine(effects: list[Effect]) -> list[Effect]:
    """The effects that are not rows (nor a run end's WorkflowRunEnded, which every workflow run
    gives: tests/unit/test_flow_control.py)."""
    return [e for e in effects
            if not isinstance(e, RunRowChanged | StepRowChanged | WorkflowRunEnded)]


def after(events: list[Event]) -> tuple[RunState, list[Effect]]:
    """The state after `events`, and the engine effects of the last one."""
    state, _ = fold_events(events[:-1]) if len(events) > 1 else (None, [])
    state, effects = apply_event(state, events[-1])
    return state, engine(effects)


def commands(effects: list[Effect]) -> list[Any]:
    return [e.command for e in effects if isinstance(e, SendCommand)]


def workflow_run(run_id: str = "order-1", flow: str = "order.process") -> Run:
    return Run(run_id=run_id, flow=flow)


def sleeping(r: Run, key: str, t: float, wake_at: float, *, kind: StepKind = StepKind.SLEEP
             ) -> StepSleeping:
    return StepSleeping(**r._envelope(t, None, 1), step_key=key,
                        payload=StepSleepingPayload(wake_at=at(wake_at), kind=kind))


def woke(r: Run, key: str, t: float, **payload: Any) -> StepCompleted:
    return StepCompleted(**r._envelope(t, None, 1), step_key=key,
                         payload=StepCompletedPayload(**payload))


def waiting(r: Run, key: str, t: float, timeout_at: float | None = None) -> StepWaiting:
    return StepWaiting(**r._envelope(t, None, 1), step_key=key, payload=StepWaitingPayload(
        event="order.approved", timeout_at=None if timeout_at is None else at(timeout_at)))


def invoked(r: Run, key: str, t: float, child: str, app: str | None = None) -> StepInvoked:
    return StepInvoked(**r._envelope(t, None, 1), step_key=key, payload=StepInvokedPayload(
        child_run_id=child, workflow="fraud.check", app=app, data={"amount": 10}))


# --- starting ----------------------------------------------------------------------------------


def test_first_run_started_of_a_workflow_run_resumes_it_with_an_empty_history() -> None:
    r = workflow_run()
    started = r.run_started(0, app=APP, input={"id": 1})
    _, effects = after([started])

    assert effects == [SendCommand(ResumeRun(
        command_id=derived_id("resume", "order-1", started.event_id), project="acme",
        run_id="order-1", ts=at(0), reason="started", workflow="order.process", app=APP,
        history={},
    ))]


def test_run_started_without_an_app_is_not_a_workflow_run_and_asks_for_nothing() -> None:
    r = workflow_run()
    assert after([r.run_started(0)])[1] == []
    assert after([r.run_started(0), r.sleeping("nap", 1, wake_at=60)])[1] == []
    assert after([r.run_started(0), r.failed("charge", 1, "down", retry_at=5)])[1] == []


def test_a_duplicate_or_second_run_started_does_not_resume_again() -> None:
    r = workflow_run()
    started = r.run_started(0, app=APP)
    assert after([started, started])[1] == []
    assert after([started, r.run_started(1, app=APP)])[1] == []


def test_a_run_cancelled_before_its_run_started_is_never_resumed() -> None:
    r = workflow_run()
    assert after([r.run_cancelled(0), r.run_started(1, app=APP)])[1] == []


def test_scheduled_run_sets_its_start_timer_and_run_started_clears_it() -> None:
    r = workflow_run()
    scheduled = RunScheduled(**r._envelope(0, None, 1), payload=RunScheduledPayload(
        start_at=at(3600), app=APP, input={"n": 1}))
    state, effects = after([scheduled])
    assert effects == [SetTimer(TimerKind.START, "", 1, at(3600))]
    assert wanted_timers(state) == {(TimerKind.START, ""): effects[0]}

    _, effects = after([scheduled, r.run_started(3600, app=APP)])
    assert effects[0] == ClearTimer(TimerKind.START, "")
    assert isinstance(commands(effects)[0], ResumeRun)


def test_scheduled_run_cancelled_before_its_start_clears_the_timer_and_sends_nothing() -> None:
    r = workflow_run()
    scheduled = r.run_scheduled(0, start_at=3600)
    assert after([scheduled, r.run_cancelled(1)])[1] == [ClearTimer(TimerKind.START, "")]


# --- sleeping, waiting, retrying ---------------------------------------------------------------


def test_sleep_sets_a_wake_timer_and_its_completion_resumes_the_run() -> None:
    r = workflow_run()
    events: list[Event] = [r.run_started(0, app=APP), sleeping(r, "settle", 1, wake_at=3601)]
    assert after(events)[1] == [SetTimer(TimerKind.WAKE, "settle", 1, at(3601))]

    completion = woke(r, "settle", 3601)
    state, effects = after([*events, completion])
    assert effects[0] == ClearTimer(TimerKind.WAKE, "settle")
    (resume,) = commands(effects)
    assert isinstance(resume, ResumeRun)
    assert resume.command_id == derived_id("resume", "order-1", completion.event_id)
    assert resume.reason == "step 'settle' woke"
    assert resume.history["settle"].status == "completed"
    assert resume.history["settle"].kind == StepKind.SLEEP
    assert wanted_timers(state) == {}


def test_a_wake_at_in_the_past_is_a_timer_due_at_once() -> None:
    # The fold has no clock: the timer service fires a due time in the past immediately.
    r = workflow_run()
    events: list[Event] = [r.run_started(100, app=APP), sleeping(r, "nap", 101, wake_at=5)]
    assert after(events)[1] == [SetTimer(TimerKind.WAKE, "nap", 1, at(5))]


def test_completing_a_step_that_was_not_parked_does_not_resume() -> None:
    r = workflow_run()
    events: list[Event] = [r.run_started(0, app=APP), r.started("charge", 1, kind=StepKind.RUN),
                           r.completed("charge", 2, output=42)]
    assert after(events)[1] == []


def test_retryable_failure_sets_a_retry_timer_and_the_next_attempt_clears_it() -> None:
    r = workflow_run()
    events: list[Event] = [r.run_started(0, app=APP), r.started("charge", 1),
                           r.failed("charge", 2, "card network down", retry_at=5)]
    assert after(events)[1] == [SetTimer(TimerKind.RETRY, "charge", 1, at(5))]
    # The worker runs attempt 2 (after the timer's resume_run): no resume from the fold.
    assert after([*events, r.started("charge", 5, attempt=2)])[1] == [
        ClearTimer(TimerKind.RETRY, "charge")
    ]


def test_final_failure_of_a_running_step_asks_for_nothing() -> None:
    # The worker is executing the run: it raises the error in the workflow code itself.
    r = workflow_run()
    events: list[Event] = [r.run_started(0, app=APP), r.started("charge", 1),
                           r.failed("charge", 2, "declined", non_retriable=True)]
    assert after(events)[1] == []


def test_wait_with_a_timeout_sets_a_timer_and_its_resolution_resumes_the_run() -> None:
    r = workflow_run()
    events: list[Event] = [r.run_started(0, app=APP), waiting(r, "approval", 1, timeout_at=86401)]
    assert after(events)[1] == [SetTimer(TimerKind.WAIT_TIMEOUT, "approval", 1, at(86401))]
    assert after([r.run_started(0, app=APP), waiting(r, "forever", 1)])[1] == []

    _, effects = after([*events, woke(r, "approval", 5, output={"ok": True})])
    assert effects[0] == ClearTimer(TimerKind.WAIT_TIMEOUT, "approval")
    (resume,) = commands(effects)
    assert resume.reason == "step 'approval' received 'order.approved'"
    assert resume.history["approval"].output == {"ok": True}

    _, effects = after([*events, woke(r, "approval", 86401, timed_out=True)])
    (resume,) = commands(effects)
    assert resume.reason == "step 'approval' timed out waiting for 'order.approved'"
    assert resume.history["approval"].output is None


# --- child runs --------------------------------------------------------------------------------


def test_step_invoked_starts_the_child_in_the_calling_app_first() -> None:
    r = workflow_run()
    _, effects = after([r.run_started(0, app=APP), invoked(r, "fraud", 1, "child-1")])
    assert effects == [SendCommand(
        StartRun(command_id=derived_id("start", "child-1"), project="acme", run_id="child-1",
                 ts=at(1), workflow="fraud.check", app=APP, input={"amount": 10},
                 parent_run_id="order-1", parent_step_key="fraud",
                 parent_flow="order.process", parent_step_attempt=1),
        resolve_app=AppResolution(preferred=APP, exact=False),
        parent=ParentStep("acme", "order.process", "order-1", "fraud", 1),
    )]


def test_step_invoked_naming_an_app_starts_the_child_in_that_app_only() -> None:
    r = workflow_run()
    _, effects = after([r.run_started(0, app=APP), invoked(r, "charge", 1, "c", app="billing")])
    (effect,) = effects
    assert isinstance(effect, SendCommand)
    assert effect.resolve_app == AppResolution(preferred="billing", exact=True)
    assert effect.command.app == "billing"


def test_the_end_of_an_invoked_step_resumes_the_parent() -> None:
    r = workflow_run()
    events: list[Event] = [r.run_started(0, app=APP), invoked(r, "fraud", 1, "child-1")]
    (resume,) = commands(after([*events, r.completed("fraud", 2, output={"v": 1})])[1])
    assert resume.reason == "step 'fraud': child run child-1 completed"
    assert resume.history["fraud"].child_run_id == "child-1"
    assert resume.history["fraud"].kind == StepKind.RUN_WORKFLOW

    (resume,) = commands(after([*events, r.failed("fraud", 2, "boom", non_retriable=True)])[1])
    assert resume.reason == "step 'fraud': child run child-1 failed"
    assert resume.history["fraud"].error == ErrorInfo(type="RuntimeError", message="boom")


def test_a_childs_end_is_reported_to_its_parent_step() -> None:
    child = workflow_run("child-1", "fraud.check")
    started = child.run_started(0, app=APP, parent_run_id="order-1", parent_step_key="fraud",
                                parent_flow="order.process", parent_step_attempt=2)

    _, effects = after([started, child.run_completed(5, output={"verdict": "ok"})])
    assert effects == [EndParentStep(project="acme", parent_run_id="order-1",
                                     parent_step_key="fraud", child_run_id="child-1",
                                     output={"verdict": "ok"}, error=None, ts=at(5),
                                     parent_flow="order.process", parent_step_attempt=2)]

    _, effects = after([started, child.run_failed(5, "fraud suspected")])
    (end,) = effects
    assert isinstance(end, EndParentStep)
    assert end.error == ErrorInfo(type="WorkflowError", message="fraud suspected")

    _, effects = after([started, child.run_cancelled(5)])
    end = next(e for e in effects if isinstance(e, EndParentStep))
    assert end.error is not None and end.error.type == "RunCancelled"

    # Started before run.started named the parent's workflow and attempt: the host's index.
    older = child.run_started(0, app=APP, parent_run_id="order-1", parent_step_key="fraud")
    _, effects = after([older, child.run_completed(5)])
    (end,) = effects
    assert isinstance(end, EndParentStep)
    assert (end.parent_flow, end.parent_step_attempt) == ("", 0)


# --- run ends ----------------------------------------------------------------------------------


def test_cancel_sends_cancel_run_clears_timers_cancels_children_and_ends_waits() -> None:
    r = workflow_run()
    events: list[Event] = [
        r.run_started(0, app=APP),
        sleeping(r, "nap", 1, wake_at=600),
        waiting(r, "approval", 2, timeout_at=900),
        invoked(r, "fraud", 3, "child-1"),
        RunCancelled(**r._envelope(4, None, 1), payload=RunCancelledPayload(reason="customer")),
    ]
    _, effects = after(events)
    assert effects == [
        ClearTimer(TimerKind.WAKE, "nap"),
        ClearTimer(TimerKind.WAIT_TIMEOUT, "approval"),
        WriteSignalsMessage(WaitEnded(
            event_id=derived_id("wait.cancelled", "order-1", "approval", "1"), project="acme",
            name="order.approved", run_id="order-1", flow="order.process", step_key="approval",
            attempt=1, reason="cancelled", ts=at(4))),
        WriteEvent(RunCancelled(
            event_id=derived_id("cancel-child", "child-1"), project="acme", flow="fraud.check",
            run_id="child-1", ts=at(4),
            payload=RunCancelledPayload(reason="parent run order-1 ended (run.cancelled)"))),
        SendCommand(CancelRun(command_id=derived_id("cancel", "order-1"), project="acme",
                              run_id="order-1", ts=at(4), reason="customer", app=APP)),
    ]


def test_a_run_that_ends_leaves_nothing_running_but_is_not_sent_a_cancel() -> None:
    r = workflow_run()
    events: list[Event] = [r.run_started(0, app=APP), sleeping(r, "nap", 1, wake_at=600),
                           r.run_failed(2, "a sibling failed")]
    _, effects = after(events)
    assert effects == [ClearTimer(TimerKind.WAKE, "nap")]


def test_nothing_resumes_a_run_that_has_ended() -> None:
    r = workflow_run()
    events: list[Event] = [r.run_started(0, app=APP), sleeping(r, "nap", 1, wake_at=600),
                           r.run_cancelled(2), woke(r, "nap", 600)]
    assert after(events)[1] == []
    assert after([*events[:3], r.run_cancelled(3)])[1] == []  # a second end: nothing again


# --- re-delivery, history, stored state --------------------------------------------------------


def test_a_redelivered_event_gives_its_rows_and_no_engine_effect() -> None:
    r = workflow_run()
    sleep = sleeping(r, "nap", 1, wake_at=600)
    state, _ = fold_events([r.run_started(0, app=APP), sleep])
    state, effects = apply_event(state, sleep)
    assert effects and engine(effects) == []


def test_history_has_each_steps_outcome_as_the_worker_replays_it() -> None:
    r = workflow_run()
    state, _ = fold_events([
        r.run_started(0, app=APP),
        r.started("charge", 1, kind=StepKind.RUN, input={"amount": 42}),
        r.completed("charge", 2, output={"charged": 42}),
        r.started("ship", 3, kind=StepKind.RUN),
        r.failed("ship", 4, "carrier down", retry_at=60, stack="Traceback ..."),
        sleeping(r, "settle", 5, wake_at=3605, kind=StepKind.SLEEP_UNTIL),
        invoked(r, "fraud", 6, "child-1"),
        r.skipped("notify", 7),
    ])
    records = history(state)
    assert list(records) == ["charge", "fraud", "notify", "settle", "ship"]
    assert (records["charge"].status, records["charge"].output) == ("completed", {"charged": 42})
    assert records["ship"].status == "retrying" and records["ship"].retry_at == at(60)
    assert records["ship"].error == ErrorInfo(type="RuntimeError", message="carrier down",
                                              stack="Traceback ...")
    assert (records["settle"].kind, records["settle"].wake_at) == (StepKind.SLEEP_UNTIL, at(3605))
    assert (records["fraud"].status, records["fraud"].child_run_id) == ("running", "child-1")
    assert records["notify"].status == "skipped"


def test_a_woken_sleep_keeps_its_kind_in_its_row() -> None:
    r = workflow_run()
    _, effects = fold_events([r.run_started(0, app=APP),
                              sleeping(r, "nap", 1, wake_at=5, kind=StepKind.SLEEP_UNTIL),
                              woke(r, "nap", 5)])
    row = [e.row for e in effects if isinstance(e, StepRowChanged)][-1]
    assert (row.kind, row.status) == ("sleep_until", "completed")


def test_a_scheduled_runs_row_shows_its_app() -> None:
    r = workflow_run()
    _, effects = fold_events([RunScheduled(**r._envelope(0, None, 1), payload=RunScheduledPayload(
        start_at=at(60), app=APP))])
    row = [e.row for e in effects if isinstance(e, RunRowChanged)][-1]
    assert (row.status, row.app, row.scheduled_for) == ("scheduled", APP, at(60))


def test_state_of_format_1_is_read_with_what_it_did_not_have_left_empty() -> None:
    r = workflow_run()
    state, _ = fold_events([r.run_scheduled(0, start_at=60), r.run_started(1, app=APP),
                            sleeping(r, "nap", 2, wake_at=600), r.completed("charge", 3)])
    stored = pickle.loads(state.to_bytes()[5:])
    steps = {
        key: (*step[:2], (*step[2][:-1], step[2][-1][:2] if step[2][-1] else None), *step[3:7])
        for key, step in stored[5].items()
    }
    format_1 = (*stored[:5], steps, stored[6], stored[7][:5], stored[8][:8], *stored[9:19])
    restored = RunState.from_bytes(b"SLRS\x01" + pickle.dumps(format_1))

    assert restored.steps["nap"].winner == state.steps["nap"].winner
    assert restored.steps["nap"].parked is None and restored.position is None
    assert restored.scheduled == state.scheduled
    assert wanted_timers(restored) == wanted_timers(state)


def test_state_of_format_2_is_read_without_the_parents_workflow_and_attempt() -> None:
    child = workflow_run("child-1", "fraud.check")
    state, _ = fold_events([child.run_started(
        0, app=APP, parent_run_id="order-1", parent_step_key="fraud",
        parent_flow="order.process", parent_step_attempt=2)])
    stored = pickle.loads(state.to_bytes()[5:])
    assert stored[8][-3:-1] == ("order.process", 2)  # then format 6's runner
    format_2 = (*stored[:8], stored[8][:-3], *stored[9:-1])  # without format 4's created_at
    restored = RunState.from_bytes(b"SLRS\x02" + pickle.dumps(format_2))

    assert state.started is not None
    assert restored.started == state.started._replace(parent_flow="", parent_step_attempt=0)
    _, effects = apply_event(restored, child.run_completed(5), None)
    (end,) = [e for e in effects if isinstance(e, EndParentStep)]
    assert (end.parent_run_id, end.parent_flow, end.parent_step_attempt) == ("order-1", "", 0)


def test_the_hosts_position_is_stored_but_not_part_of_the_states_value() -> None:
    r = workflow_run()
    state, _ = fold_events([r.run_started(0, app=APP)])
    copy = state.copy()
    state.position = (2, 41)
    assert RunState.from_bytes(state.to_bytes()).position == (2, 41)
    assert copy == state and copy.position is None

