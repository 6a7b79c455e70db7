"""Scheduled starts: what a run's due start writes, and how a cron schedule keeps ticking.

Pure, like the rest of the fold (the clock and the current schedule are arguments). The timer
service calls `start_effects` when a scheduled run's start is due (`timers.fire_timer`), and
`first_tick` when it learns a workflow definition with a schedule.

**A tick is a scheduled run.** Each tick of a cron schedule is a `run.scheduled` whose run id
derives from (project, app, workflow, tick) (`schedules.cron_tick_run_id`) and whose event id
derives from that run id and the schedule. So a tick is durable exactly like a `start_at`: its
start timer lives in the run's state (rebuilt at start-up, moved with its partition on a
rebalance), and a tick written twice (by every processors process that learns the definition,
or by a timer fired again after a restart) is a duplicate the fold drops.

**The chain.** When a tick is due, it writes the `run.scheduled` of the tick that follows it, then
starts (a `start_run`) or ends `expired` (a `run.cancelled` with `expired`). Should the process
die in between, the rebuilt timer fires the tick again: the same messages with the same ids.
Each process that learns the definition also writes the first tick after its clock's now: the
chain's own next tick, so a duplicate, unless the chain has never begun.

**Missed ticks** (the tick that follows is already due when one fires: the processors were down
or behind across several ticks), by the schedule's `missed`:

| missed     | this tick | then schedules                                       |
| ---------- | --------- | ---------------------------------------------------- |
| run_all    | starts    | the following tick (due: fires at once, and so on)   |
| run_latest | expires   | the latest due tick (fires at once; it starts)       |
| skip       | expires   | the first tick after now                             |

A tick that is merely late (no later tick due yet) starts, whatever `missed` says. Any start
(a tick, or a run scheduled with `expires_after`) that is later than its `expires_after` ends
`expired` instead of starting; so does a run whose `sleep_until(..., expires_after=)` wakes
later than that (`expired_wake_up`, from `timers.fire_timer`).

**A changed schedule.** A tick whose schedule is no longer its workflow's (the workflow's cron
changed, or it lost its schedule) is cancelled when due and writes no next tick: the new
schedule's first tick was written when its definition was learned.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from steplog.schemas.base import TriggerInfo
from steplog.schemas.commands import StartRun
from steplog.schemas.events import (
    RunCancelled,
    RunCancelledPayload,
    RunScheduled,
    RunScheduledPayload,
)
from steplog.schemas.flows import WorkflowDefinition
from steplog.schemas.ids import derived_id, timer_message_id
from steplog.schemas.schedules import CronSchedule, cron_tick_run_id

from .effects import AppResolution, Effect, SendCommand, TimerKind, WriteEvent
from .state import RunState, ScheduledFact, SleepInfo

__all__ = [
    "ScheduleLookup", "expired_wake_up", "first_tick", "is_too_late", "start_effects",
    "tick_scheduled",
]

ScheduleLookup = Callable[[str, str, str], CronSchedule | None]
"""(project, app, workflow) -> the workflow's schedule as its newest definition has it."""

_EXPIRE = "expire"


def first_tick(definition: WorkflowDefinition, now: datetime) -> RunScheduled | None:
    """The run.scheduled of the first tick after `now` of a workflow with a schedule."""
    schedule = definition.schedule
    if schedule is None:
        return None
    return tick_scheduled(
        definition.project, definition.app, definition.name, schedule,
        schedule.next_tick(now), now,
    )


def tick_scheduled(
    project: str, app: str, workflow: str, schedule: CronSchedule, tick: datetime, ts: datetime
) -> RunScheduled:
    """The run.scheduled of one tick (ids: module docstring). The run's input names its tick,
    so that a run can tell which period it covers."""
    run_id = cron_tick_run_id(project, app, workflow, tick)
    return RunScheduled(
        event_id=derived_id("cron-tick", run_id, schedule.model_dump_json()),
        project=project,
        flow=workflow,
        run_id=run_id,
        ts=ts,
        payload=RunScheduledPayload(
            start_at=tick,
            app=app,
            input={"cron": schedule.cron, "tick": tick.astimezone(UTC).isoformat()},
            schedule=schedule,
            expires_after_ms=schedule.expires_after_ms,
        ),
    )


def start_effects(
    state: RunState, now: datetime, current: ScheduleLookup | None = None
) -> list[Effect]:
    """What the due start of scheduled run `state` writes at `now`; `current` gives a tick's
    workflow's schedule now (None: not checked)."""
    scheduled = state.scheduled
    assert scheduled is not None  # start_timer wants a start only for a scheduled run
    if not scheduled.schedule:
        return [_start_or_expire(state, scheduled, now)]
    schedule = CronSchedule.model_validate_json(scheduled.schedule)
    if current is not None and current(state.project, scheduled.app, state.flow) != schedule:
        return [_end(state, now, f"the schedule {schedule.cron!r} ({schedule.timezone}) is no "
                     f"longer workflow {state.flow!r}'s", expired=False)]
    tick = scheduled.start_at
    following = schedule.next_tick(tick)
    then = following
    missed = following <= now
    if missed and schedule.missed == "run_latest":
        then = schedule.latest_tick(following, now)
    elif missed and schedule.missed == "skip":
        then = schedule.next_tick(now)
    effects: list[Effect] = [
        WriteEvent(tick_scheduled(state.project, scheduled.app, state.flow, schedule, then, now))
    ]
    if missed and schedule.missed != "run_all":
        effects.append(_end(
            state, now, f"tick {tick.isoformat()} was missed (tick {following.isoformat()} was "
            f"due too when it fired at {now.isoformat()}); missed={schedule.missed!r}",
            expired=True,
        ))
    else:
        effects.append(_start_or_expire(state, scheduled, now))
    return effects


def is_too_late(due: datetime, expires_after_ms: int | None, now: datetime) -> bool:
    """True when something due at `due` comes at `now`, later than its `expires_after_ms`."""
    return expires_after_ms is not None and now - due > timedelta(milliseconds=expires_after_ms)


def expired_wake_up(
    state: RunState, step_key: str, attempt: int, sleep: SleepInfo, now: datetime
) -> WriteEvent:
    """The run.cancelled (expired) of a run whose sleep woke past its expires_after."""
    return _end(
        state, now, f"step {step_key!r} was to wake at {sleep.wake_at.isoformat()}; it woke "
        f"{(now - sleep.wake_at).total_seconds():.3f} s later, past its expires_after of "
        f"{sleep.expires_after_ms} ms", expired=True,
        event_id=timer_message_id(state.run_id, step_key, attempt, _EXPIRE),
    )


def _start_or_expire(state: RunState, scheduled: ScheduledFact, now: datetime) -> Effect:
    if is_too_late(scheduled.start_at, scheduled.expires_after_ms, now):
        return _end(
            state, now, f"due at {scheduled.start_at.isoformat()}, it could start only "
            f"{(now - scheduled.start_at).total_seconds():.3f} s later, past its "
            f"expires_after of {scheduled.expires_after_ms} ms", expired=True,
        )
    return start_command(state, scheduled, now)


def start_command(state: RunState, scheduled: ScheduledFact, now: datetime) -> SendCommand:
    """The start_run of a scheduled run (its app: the scheduled one, else resolved)."""
    command = StartRun(
        command_id=timer_message_id(state.run_id, "", 1, TimerKind.START.value),
        project=state.project,
        run_id=state.run_id,
        ts=now,
        workflow=state.flow,
        app=scheduled.app or None,
        input=json.loads(scheduled.input) if scheduled.input else None,
        trigger=(
            TriggerInfo(name=scheduled.trigger_event, event_id=scheduled.trigger_event_id)
            if scheduled.trigger_event
            else None
        ),
        retrigger_of=scheduled.retrigger_of or None,
    )
    # A run scheduled without an app goes to whichever app defines its workflow.
    resolve = None if scheduled.app else AppResolution(preferred="", exact=False)
    return SendCommand(command, resolve_app=resolve)


def _end(
    state: RunState, now: datetime, reason: str, *, expired: bool, event_id: str | None = None
) -> WriteEvent:
    """The run.cancelled of a run that will not start or go on: `expired` (too late, or a
    missed tick) or cancelled (its schedule is gone)."""
    return WriteEvent(
        RunCancelled(
            event_id=event_id or timer_message_id(state.run_id, "", 1, _EXPIRE),
            project=state.project,
            flow=state.flow,
            run_id=state.run_id,
            ts=now,
            payload=RunCancelledPayload(reason=reason, expired=expired),
        )
    )
