"""The steps that park their branch until something outside the pass happens, and `emit`.

    history record          sleep / wait / run_workflow         emit
    completed (skipped)     return its output                   return
    failed                  raise (ChildRunFailedError)         -
    running, interrupted    park again                          execute
    none                    write, then park                    execute

Whatever resumes a parked run (a timer, a signal, a child's end) sends a `resume_run`, and a
new pass replays the history, where the step is then completed.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import JsonValue

from steplog.errors import ChildRunFailedError, WorkflowError
from steplog.expressions import compile_condition
from steplog.schemas.base import ErrorInfo
from steplog.schemas.commands import StepRecord
from steplog.schemas.events import (
    StepCompleted,
    StepCompletedPayload,
    StepInvoked,
    StepInvokedPayload,
    StepKind,
    StepSleeping,
    StepSleepingPayload,
    StepStarted,
    StepStartedPayload,
    StepWaiting,
    StepWaitingPayload,
)
from steplog.schemas.ids import (
    child_run_id,
    derived_id,
    emitted_signal_id,
    wait_registration_id,
)
from steplog.schemas.signals import (
    WAIT_CONDITION_NAMES,
    Signal,
    WaitRegistered,
    resolve_match_path,
)
from steplog.schemas.statuses import StepStatus

from steplog.durations import Duration
from .json_values import input_value, shown
from .runner_names import check_runner_name
from .run_journal import failed_error

if TYPE_CHECKING:
    from .run_pass import RunPass

__all__ = ["emit_step", "invoke_step", "sleep_step", "wait_step"]


# ----------------------------------------------------------------------------- sleeping


async def sleep_step(
    run: RunPass,
    step_id: str,
    kind: StepKind,
    wake_at: datetime,
    input: dict[str, JsonValue],
    expires_after_ms: int | None = None,
) -> None:
    writes = run.writes
    record = await run.enter(step_id, kind)
    if record is not None:
        if record.status in (StepStatus.COMPLETED, StepStatus.SKIPPED):
            return None
        if record.status is StepStatus.FAILED:
            raise failed_error(step_id, record)
        if record.wake_at is None:
            # Its step.started is in the log but not its step.sleeping (the worker died
            # between the two): write it, under the id the first write would have had.
            await run.branches.writing(
                _sleeping(run, step_id, kind, record.attempt, wake_at, expires_after_ms)
            )
        await run.branches.block(parked=True)
    await run.check_new_step(step_id, kind)
    started = writes.step_event(
        StepStarted, step_id, 1, StepStartedPayload(kind=kind, input=input)
    )
    # A time already past returns at once, unless it may be too late: the processors decide.
    if wake_at <= run.now() and expires_after_ms is None:
        completed = writes.step_event(StepCompleted, step_id, 1, StepCompletedPayload())

        async def at_once() -> None:
            started_ack = await writes.enqueue(started)
            await writes.acknowledged(await writes.enqueue(completed), started_ack)

        await run.branches.writing(at_once())
        run.journal.steps[step_id] = StepRecord(
            kind=kind, status=StepStatus.COMPLETED, attempt=1, wake_at=wake_at
        )
        return None

    async def park() -> None:
        started_ack = await writes.enqueue(started)
        await _sleeping(run, step_id, kind, 1, wake_at, expires_after_ms, started_ack)

    await run.branches.writing(park())
    run.journal.steps[step_id] = StepRecord(
        kind=kind, status=StepStatus.RUNNING, attempt=1, wake_at=wake_at
    )
    await run.branches.block(parked=True)


async def _sleeping(
    run: RunPass,
    step_id: str,
    kind: StepKind,
    attempt: int,
    wake_at: datetime,
    expires_after_ms: int | None,
    started_ack: Awaitable[object] | None = None,
) -> None:
    sleeping = run.writes.step_event(
        StepSleeping, step_id, attempt,
        StepSleepingPayload(wake_at=wake_at, kind=kind, expires_after_ms=expires_after_ms),
        event_id=derived_id("step.sleeping", run.run_id, step_id, str(attempt)),
    )
    await run.writes.acknowledged(await run.writes.enqueue(sleeping), started_ack)


# -------------------------------------------------------------------- waiting for events


async def wait_step(
    run: RunPass,
    step_id: str,
    event: str,
    timeout: Duration | None,
    timeout_ms: int | None,
    match: str | None,
    condition: str | None = None,
) -> JsonValue:
    writes = run.writes
    if condition is not None:  # a bad condition fails here, in the workflow's code
        compile_condition(condition, field=f"step {step_id!r}: if_", names=WAIT_CONDITION_NAMES)
    match_value: JsonValue = None
    if match is not None:
        found, match_value = resolve_match_path(run.event.as_document(), match)
        if not found:
            raise WorkflowError(
                f"step {step_id!r}: match path {match!r} is not in the run's trigger "
                f"event ({shown(run.event.as_document())}); a wait matches signals "
                "whose value at the path equals the trigger event's"
            )
    record = await run.enter(step_id, StepKind.WAIT_FOR_EVENT)
    if record is not None:
        if record.status in (StepStatus.COMPLETED, StepStatus.SKIPPED):
            return record.output
        if record.status is StepStatus.FAILED:
            raise failed_error(step_id, record)
    else:
        await run.check_new_step(step_id, StepKind.WAIT_FOR_EVENT)
    attempt = record.attempt if record is not None else 1
    timeout_at = None
    if timeout_ms is not None:
        timeout_at = run.now() + timedelta(milliseconds=timeout_ms)
    registration = WaitRegistered(
        event_id=wait_registration_id(run.run_id, step_id, attempt),
        project=run.project,
        name=event,
        app=run.app,
        flow=run.workflow,
        run_id=run.run_id,
        step_key=step_id,
        attempt=attempt,
        match=match,
        match_value=match_value,
        timeout_at=timeout_at,
        condition=condition,
        ts=run.now(),
    )
    # Built in the order they are written: the fold orders a step's events by seq.
    shown_timeout: JsonValue = (
        timeout if isinstance(timeout, (str, int, float)) or timeout is None else timeout_ms
    )
    started = writes.step_event(
        StepStarted, step_id, attempt,
        StepStartedPayload(
            kind=StepKind.WAIT_FOR_EVENT,
            input={"event": event, "timeout": shown_timeout, "match": match}
            | ({} if condition is None else {"if": condition}),
        ),
    )
    waiting = writes.step_event(
        StepWaiting, step_id, attempt,
        StepWaitingPayload(
            event=event, timeout_at=timeout_at, match=match, match_value=match_value
        ),
        event_id=derived_id("step.waiting", run.run_id, step_id, str(attempt)),
    )

    async def register() -> None:
        # The registration first, acknowledged: from then on a signal of the name lands
        # behind it in the name's partition and cannot be missed. A run parked again
        # (record running) writes both again under their first ids: duplicates, dropped.
        await (await writes.sink.send_signal(registration))
        started_ack = await writes.enqueue(started) if record is None else None
        await writes.acknowledged(await writes.enqueue(waiting), started_ack)

    await run.branches.writing(register())
    if record is None:
        run.journal.steps[step_id] = StepRecord(
            kind=StepKind.WAIT_FOR_EVENT, status=StepStatus.RUNNING, attempt=1
        )
    await run.branches.block(parked=True)


# ---------------------------------------------------------------------------- child runs


async def invoke_step(
    run: RunPass,
    step_id: str,
    name: str,
    data: JsonValue,
    app: str | None,
    runner: str | None = None,
) -> JsonValue:
    child_data = input_value(step_id, data, "data")
    if runner is not None:
        check_runner_name(runner, f"step {step_id!r}: runner")
    record = await run.enter(step_id, StepKind.RUN_WORKFLOW)
    child = child_run_id(run.run_id, step_id)
    if record is not None:
        if record.status in (StepStatus.COMPLETED, StepStatus.SKIPPED):
            return record.output
        if record.status is StepStatus.FAILED:
            error = record.error or ErrorInfo(type="Error", message="the child run failed")
            raise ChildRunFailedError(
                step_id, record.child_run_id or child, error.type, error.message
            )
        if record.child_run_id is None:
            await run.branches.writing(
                _invoked(run, step_id, record.attempt, child, name, data, app, runner)
            )
        await run.branches.block(parked=True)
    await run.check_new_step(step_id, StepKind.RUN_WORKFLOW)
    started = run.writes.step_event(
        StepStarted, step_id, 1,
        StepStartedPayload(
            kind=StepKind.RUN_WORKFLOW,
            input={"name": name, "app": app, "data": child_data}
            | ({} if runner is None else {"runner": runner}),
        ),
    )

    async def invoke() -> None:
        started_ack = await run.writes.enqueue(started)
        await _invoked(run, step_id, 1, child, name, child_data, app, runner, started_ack)

    await run.branches.writing(invoke())
    run.journal.steps[step_id] = StepRecord(
        kind=StepKind.RUN_WORKFLOW, status=StepStatus.RUNNING, attempt=1, child_run_id=child
    )
    await run.branches.block(parked=True)


async def _invoked(
    run: RunPass,
    step_id: str,
    attempt: int,
    child: str,
    name: str,
    data: JsonValue,
    app: str | None,
    runner: str | None,
    started_ack: Awaitable[object] | None = None,
) -> None:
    invoked = run.writes.step_event(
        StepInvoked, step_id, attempt,
        StepInvokedPayload(child_run_id=child, workflow=name, app=app, data=data, runner=runner),
        event_id=derived_id("step.invoked", run.run_id, step_id, str(attempt)),
    )
    await run.writes.acknowledged(await run.writes.enqueue(invoked), started_ack)


# --------------------------------------------------------------------------------- emit


async def emit_step(
    run: RunPass, step_id: str, name: str, data: JsonValue, app: str | None
) -> None:
    writes = run.writes
    signal_data = input_value(step_id, data, "data")
    record = await run.enter(step_id, StepKind.EMIT)
    if record is not None and record.status in (StepStatus.COMPLETED, StepStatus.SKIPPED):
        return None
    if record is None:
        await run.check_new_step(step_id, StepKind.EMIT)
    attempt = record.attempt if record is not None else 1
    signal = Signal(
        event_id=emitted_signal_id(run.run_id, step_id),
        project=run.project,
        name=name,
        data=signal_data,
        app=app,
        ts=run.now(),
        source_run_id=run.run_id,
        source_step_key=step_id,
    )
    started = writes.step_event(
        StepStarted, step_id, attempt,
        StepStartedPayload(
            kind=StepKind.EMIT, input={"name": name, "app": app, "data": signal_data}
        ),
    )

    async def send() -> None:
        started_ack = await writes.enqueue(started)
        await (await writes.sink.send_signal(signal))
        completed = writes.step_event(StepCompleted, step_id, attempt, StepCompletedPayload())
        await writes.acknowledged(await writes.enqueue(completed), started_ack)

    await run.branches.writing(send())
    run.journal.steps[step_id] = StepRecord(
        kind=StepKind.EMIT, status=StepStatus.COMPLETED, attempt=attempt
    )
    return None
