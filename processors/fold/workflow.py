"""The workflow half of the fold: what a workflow run's events ask of the engine.

`run.apply_event` decides the rows; for every event it has not seen before it also calls
`engine_effects` here with the event's `Transition` (what the event changed: the step's winner
before and after it, the run's first start or end, the timers wanted before and after it),
which adds the engine effects (`effects.SendCommand`, `SetTimer`, ...). Pure, like the rest of
the fold: no clock (a command's `ts` is the causing event's), no I/O; every id is derived.

A **workflow run** is a run whose `run.started` names an app (workers write it that way).
Instrumented runs never have one, so nothing here ever sends them a command or sets them a
timer (their `step.failed` may carry a `retry_at`: that is their SDK's business). The one
exception is `run.scheduled`: a scheduled run gets its start timer whoever scheduled it.

    event (not a duplicate)                     effects
    run.scheduled                               SetTimer(start, start_at)
    first run.started, run not ended            ClearTimer(start); SendCommand(resume_run)
    step.sleeping                               SetTimer(wake, wake_at) (past: due at once)
    step.waiting with timeout_at                SetTimer(wait_timeout, timeout_at)
    step.failed with retry_at                   SetTimer(retry, retry_at)
    step.invoked                                SendCommand(start_run of the child), the app
                                                resolved by the host (AppResolution); pinned to
                                                a runner: the host also writes the child's
                                                run.scheduled (processors/dispatch.py)
    step.completed / final step.failed          ClearTimer; SendCommand(resume_run)
      of a sleeping, waiting or invoked step
    run.completed / run.failed / run.cancelled  ClearTimer for every timer; run.cancelled for
      (the first of them)                       each running child (WriteEvent); wait.ended
                                                (cancelled) for each running wait; EndParentStep
                                                when the run is a child; WorkflowRunEnded
                                                (flow control); run.cancelled only:
                                                SendCommand(cancel_run)

Timers are not decided event by event but from the state: `wanted_timers(state)` is every due
time the run wants now (the timer service rebuilds its heap from it at start-up, and checks it
again when a timer is due); an event's timer effects are the difference between what the run
wanted before and after it (`Transition.timers_before` / `timers_after`). So a timer effect
never contradicts the state, whatever the order of events.

Commands and events depend on arrival order (the first run.started, the step's previous winner):
they follow the log's order, which is fixed, and a re-delivered event (already in `seen`) gives
none. Ids, so that a batch carried out twice after a crash only makes duplicates:

    message                                    id
    resume_run after an event                  derived_id("resume", run_id, event_id)
    start_run of a child                       derived_id("start", child_run_id)
    cancel_run                                 derived_id("cancel", run_id)
    run.cancelled of a child                   derived_id("cancel-child", child_run_id)
    wait.ended(cancelled)                      derived_id("wait.cancelled", run_id, step_key,
                                               attempt)
    the parent step's outcome (EndParentStep)  derived_id("child-end", child_run_id)
"""

from __future__ import annotations

import json
from datetime import datetime

from pydantic import JsonValue

from steplog.schemas.base import ErrorInfo
from steplog.schemas.commands import CancelRun, ResumeRun, StartRun, StepRecord
from steplog.schemas.events import (
    RunCancelled,
    RunCancelledPayload,
    RunCompleted,
    RunEvent,
    RunFailed,
    StepCompleted,
    StepEvent,
    StepInvoked,
    StepKind,
)
from steplog.schemas.ids import derived_id
from steplog.schemas.signals import WaitEnded
from steplog.schemas.statuses import StepStatus

from .effects import (
    AppResolution,
    ClearTimer,
    Effect,
    EndParentStep,
    ParentStep,
    SendCommand,
    SetTimer,
    TimerKind,
    WorkflowRunEnded,
    WriteEvent,
    WriteSignalsMessage,
)
from .state import InvokeInfo, RunState, SleepInfo, StepFact, StepState, WaitInfo
from .transition import RunTransition, StepTransition, Timers, Transition

__all__ = [
    "engine_effects",
    "history",
    "is_workflow_run",
    "resume_command",
    "start_timer",
    "step_timer",
    "step_timers",
    "wanted_timers",
]

_NO_TIMERS: Timers = {}
_RUNNING = StepStatus.RUNNING
_RETRYING = StepStatus.RETRYING
_FAILED = StepStatus.FAILED
_STEP_KINDS = {kind.value: kind for kind in StepKind}


def is_workflow_run(state: RunState) -> bool:
    """A run started by a worker (its run.started names an app)."""
    started = state.started
    return started is not None and started.app != ""


# --- history ----------------------------------------------------------------------------------


def history(state: RunState) -> dict[str, StepRecord]:
    """Each step's record as the worker needs it to replay the run (`resume_run.history`).

    A completed step gives its output (a timed-out wait: null), a failed or retrying one its
    error (and retry_at), a running sleep its wake_at, a run_workflow step its child run id.
    """
    records: dict[str, StepRecord] = {}
    for key in sorted(state.steps):
        step = state.steps[key]
        winner = step.winner
        parked = winner.parked
        invoked = step.parked.parked if step.parked is not None else None
        records[key] = StepRecord(
            kind=_STEP_KINDS[step.kind],
            status=step.status,
            attempt=winner.order[0],
            output=json.loads(winner.output) if winner.output else None,
            error=(
                ErrorInfo(
                    type=winner.error_type,
                    message=winner.error_message,
                    stack=winner.error_stack or None,
                )
                if winner.type == "step.failed"
                else None
            ),
            retry_at=winner.retry_at,
            wake_at=parked.wake_at if isinstance(parked, SleepInfo) else None,
            child_run_id=invoked.child_run_id if isinstance(invoked, InvokeInfo) else None,
        )
    return records


def resume_command(
    state: RunState,
    command_id: str,
    reason: str,
    ts: datetime,
    position: tuple[int, int] | None = None,
) -> ResumeRun:
    """A resume_run for the run as the state has it; `position` is the log position the
    history reflects (the host stamps the folded event's when it is not known here)."""
    started = state.started
    return ResumeRun(
        command_id=command_id,
        project=state.project,
        run_id=state.run_id,
        ts=ts,
        reason=reason,
        workflow=state.flow,
        app=started.app if started is not None and started.app else None,
        runner=started.runner if started is not None and started.runner else None,
        history=history(state),
        history_partition=None if position is None else position[0],
        history_offset=None if position is None else position[1],
    )


# --- timers -------------------------------------------------------------------------------------


def start_timer(state: RunState) -> SetTimer | None:
    """A scheduled run that has not begun (nor been cancelled) wants to start at start_at."""
    scheduled = state.scheduled
    if scheduled is None or state.started is not None or state.steps or state.ended is not None:
        return None
    if scheduled.runner:  # a pinned child: its start_run waits for the runner already
        return None
    return SetTimer(TimerKind.START, "", 1, scheduled.start_at)


def step_timer(state: RunState, key: str, step: StepState) -> SetTimer | None:
    """The due time one step of a live workflow run wants: a sleep's wake_at, a wait's
    timeout_at, a failed attempt's retry_at."""
    if state.ended is not None or not is_workflow_run(state):
        return None
    winner = step.winner
    status = step.status
    if status is _RETRYING:
        assert winner.retry_at is not None  # retrying means a retry_at (fold._status_of)
        return SetTimer(TimerKind.RETRY, key, winner.order[0], winner.retry_at)
    parked = winner.parked
    if status is not _RUNNING or parked is None:
        return None
    if isinstance(parked, SleepInfo):
        return SetTimer(TimerKind.WAKE, key, winner.order[0], parked.wake_at)
    if isinstance(parked, WaitInfo) and parked.timeout_at is not None:
        return SetTimer(TimerKind.WAIT_TIMEOUT, key, winner.order[0], parked.timeout_at)
    return None


def wanted_timers(state: RunState) -> dict[tuple[TimerKind, str], SetTimer]:
    """Every timer the run wants now. O(steps)."""
    timers: dict[tuple[TimerKind, str], SetTimer] = {}
    start = start_timer(state)
    if start is not None:
        timers[(start.kind, "")] = start
    if state.ended is None and is_workflow_run(state):
        for key, step in state.steps.items():
            timer = step_timer(state, key, step)
            if timer is not None:
                timers[(timer.kind, key)] = timer
    return timers


def step_timers(state: RunState, key: str) -> Timers:
    """The timers one step event can change: the run's start and that step's. O(1)."""
    start = start_timer(state)
    step = state.steps.get(key)
    timer = None if step is None else step_timer(state, key, step)
    if start is None and timer is None:
        return _NO_TIMERS
    timers: dict[tuple[TimerKind, str], SetTimer] = {}
    for found in (start, timer):
        if found is not None:
            timers[(found.kind, found.step_key)] = found
    return timers


def _timer_changes(before: Timers, after: Timers, effects: list[Effect]) -> None:
    for key, timer in before.items():
        if key not in after:
            effects.append(ClearTimer(timer.kind, timer.step_key))
    for key, timer in after.items():
        if before.get(key) != timer:
            effects.append(timer)


# --- effects of one event ---------------------------------------------------------------------


def engine_effects(state: RunState, change: Transition, effects: list[Effect]) -> None:
    """Add the engine effects of an event just folded (not a duplicate), from what it changed."""
    if change.timers_before or change.timers_after:  # most events touch no timer
        _timer_changes(change.timers_before, change.timers_after, effects)
    if isinstance(change, StepTransition):
        _step_event_effects(state, change, effects)
    else:
        _run_event_effects(state, change, effects)


def _step_event_effects(state: RunState, change: StepTransition, effects: list[Effect]) -> None:
    if state.ended is not None or not is_workflow_run(state):
        return
    winner, old_winner = change.winner, change.old_winner
    if winner is old_winner:  # an event that does not decide the step asks for nothing
        return
    event = change.event
    key = event.step_key
    step = state.steps[key]
    if isinstance(event, StepInvoked):
        effects.append(_start_child(state, event))
    elif (
        winner.terminal
        and old_winner is not None
        and old_winner.parked is not None
        and (isinstance(event, StepCompleted) or step.status is _FAILED)
    ):
        reason = _resumed_because(key, old_winner, event)
        command_id = derived_id("resume", state.run_id, event.event_id)
        effects.append(SendCommand(resume_command(state, command_id, reason, event.ts)))


def _run_event_effects(state: RunState, change: RunTransition, effects: list[Effect]) -> None:
    if not is_workflow_run(state):
        return
    event = change.event
    if change.first_start:
        if state.ended is None:
            command_id = derived_id("resume", state.run_id, event.event_id)
            effects.append(SendCommand(resume_command(state, command_id, "started", event.ts)))
        else:  # cancelled before it started (its start held back by flow control, say)
            effects.append(_ended(state, event))
    elif change.first_end:
        _release(state, event, effects)
        effects.append(_ended(state, event))
        if isinstance(event, RunCancelled):
            started = state.started
            assert started is not None  # a workflow run
            effects.append(
                SendCommand(
                    CancelRun(
                        command_id=derived_id("cancel", state.run_id),
                        project=state.project,
                        run_id=state.run_id,
                        ts=event.ts,
                        reason=event.payload.reason,
                        app=started.app,
                        runner=started.runner or None,
                    )
                )
            )
        _report_to_parent(state, event, effects)


def _ended(state: RunState, event: RunEvent) -> WorkflowRunEnded:
    """For flow control (the host frees the run's concurrency slot, if its workflow counts)."""
    started = state.started
    assert started is not None  # a workflow run
    return WorkflowRunEnded(
        project=state.project, app=started.app, workflow=state.flow, run_id=state.run_id,
        input_json=started.input, trigger_event=started.trigger_event,
        trigger_event_id=started.trigger_event_id, ts=event.ts, reason=event.type,
    )


def _start_child(state: RunState, event: StepInvoked) -> SendCommand:
    invoked = event.payload
    started = state.started
    assert started is not None  # a workflow run
    app = invoked.app or started.app
    return SendCommand(
        StartRun(
            command_id=derived_id("start", invoked.child_run_id),
            project=state.project,
            run_id=invoked.child_run_id,
            ts=event.ts,
            workflow=invoked.workflow,
            app=app,
            input=invoked.data,
            parent_run_id=state.run_id,
            parent_step_key=event.step_key,
            parent_flow=state.flow,
            parent_step_attempt=event.attempt,
            runner=invoked.runner,
        ),
        resolve_app=AppResolution(preferred=app, exact=bool(invoked.app)),
        parent=ParentStep(state.project, state.flow, state.run_id, event.step_key, event.attempt),
    )


def _resumed_because(key: str, parked: StepFact, event: StepEvent) -> str:
    info = parked.parked
    if isinstance(info, SleepInfo):
        return f"step {key!r} woke"
    if isinstance(info, WaitInfo):
        if isinstance(event, StepCompleted) and event.payload.timed_out:
            return f"step {key!r} timed out waiting for {info.event!r}"
        return f"step {key!r} received {info.event!r}"
    assert isinstance(info, InvokeInfo)
    ended = "completed" if isinstance(event, StepCompleted) else "failed"
    return f"step {key!r}: child run {info.child_run_id} {ended}"


def _release(state: RunState, event: RunEvent, effects: list[Effect]) -> None:
    """An ended run leaves nothing behind: its running children are cancelled (parent-close
    policy: terminate) and its waits stop counting."""
    for key in sorted(state.steps):
        step = state.steps[key]
        parked = step.winner.parked
        if step.status is not _RUNNING or parked is None:
            continue
        attempt = step.winner.order[0]
        if isinstance(parked, InvokeInfo):
            effects.append(
                WriteEvent(
                    RunCancelled(
                        event_id=derived_id("cancel-child", parked.child_run_id),
                        project=state.project,
                        flow=parked.workflow,
                        run_id=parked.child_run_id,
                        ts=event.ts,
                        payload=RunCancelledPayload(
                            reason=f"parent run {state.run_id} ended ({event.type})"
                        ),
                    )
                )
            )
        elif isinstance(parked, WaitInfo):
            effects.append(
                WriteSignalsMessage(
                    WaitEnded(
                        event_id=derived_id("wait.cancelled", state.run_id, key, str(attempt)),
                        project=state.project,
                        name=parked.event,
                        run_id=state.run_id,
                        flow=state.flow,
                        step_key=key,
                        attempt=attempt,
                        reason="cancelled",
                        ts=event.ts,
                    )
                )
            )


def _report_to_parent(state: RunState, event: RunEvent, effects: list[Effect]) -> None:
    started = state.started
    if started is None or not started.parent_run_id or not started.parent_step_key:
        return
    output: JsonValue = None
    error: ErrorInfo | None = None
    if isinstance(event, RunCompleted):
        output = event.payload.output
    elif isinstance(event, RunFailed):
        error = event.payload.error
    else:
        reason = event.payload.reason if isinstance(event, RunCancelled) else None
        error = ErrorInfo(
            type="RunCancelled",
            message=f"child run {state.run_id} ({state.flow}) was cancelled"
            + (f": {reason}" if reason else ""),
        )
    effects.append(
        EndParentStep(
            project=state.project,
            parent_run_id=started.parent_run_id,
            parent_step_key=started.parent_step_key,
            child_run_id=state.run_id,
            output=output,
            error=error,
            ts=event.ts,
            parent_flow=started.parent_flow,
            parent_step_attempt=started.parent_step_attempt,
        )
    )
