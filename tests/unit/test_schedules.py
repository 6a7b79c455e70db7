"""Cron schedules: when ticks fall (daylight saving included), how a declared schedule is
checked, and what a due tick writes (the chain, missed ticks, expires_after)."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import steplog
from steplog.errors import WorkflowError
from steplog.processors.fold.effects import Effect, SendCommand, SetTimer, WriteEvent
from steplog.processors.fold.run import fold_events
from steplog.processors.fold.run_rows import run_outcome
from steplog.processors.fold.schedules import first_tick, start_effects, tick_scheduled
from steplog.processors.fold.state import RunState
from steplog.processors.fold.timers import fire_timer
from steplog.processors.fold.workflow import wanted_timers
from steplog.processors.registry import WorkflowRegistry
from steplog.processors.timer_service import TimerService
from steplog.schemas.codec import decode_command, decode_event
from steplog.schemas.commands import StartRun
from steplog.schemas.events import (
    RunCancelled,
    RunScheduled,
    RunScheduledPayload,
    StepKind,
    StepSleeping,
    StepSleepingPayload,
)
from steplog.schemas.flows import WorkflowDefinition
from steplog.schemas.schedules import CronSchedule, MissedTicks, cron_tick_run_id
from steplog.schemas.statuses import RunStatus
from tests.readme import readme_python
from tests.unit.test_fold import at
from tests.unit.test_dispatch import TOPICS, FakeProducer, dispatcher
from tests.unit.test_fold_effects import APP, workflow_run
from tests.unit.test_timers import serve, until

PARIS = ZoneInfo("Europe/Paris")


def ticks(schedule: CronSchedule, after: datetime, count: int) -> list[str]:
    """The next `count` ticks after `after`, on the schedule's wall clock."""
    found: list[str] = []
    for _ in range(count):
        after = schedule.next_tick(after)
        found.append(after.astimezone(ZoneInfo(schedule.timezone)).isoformat())
    return found


# --- when ticks fall ------------------------------------------------------------------------


def test_a_daily_tick_keeps_its_wall_clock_time_across_a_change_of_offset() -> None:
    schedule = CronSchedule(cron="0 8 * * *", timezone="Europe/Paris")
    assert ticks(schedule, datetime(2026, 3, 28, 9, tzinfo=PARIS), 2) == [
        "2026-03-29T08:00:00+02:00", "2026-03-30T08:00:00+02:00",
    ]


def test_a_tick_in_the_spring_gap_fires_once_when_the_clock_has_jumped() -> None:
    daily = CronSchedule(cron="30 2 * * *", timezone="Europe/Paris")
    assert ticks(daily, datetime(2026, 3, 28, 3, tzinfo=PARIS), 2) == [
        "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00",
    ]
    half_hourly = CronSchedule(cron="*/30 * * * *", timezone="Europe/Paris")
    assert ticks(half_hourly, datetime(2026, 3, 29, 1, tzinfo=PARIS), 3) == [
        "2026-03-29T01:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:30:00+02:00",
    ]


def test_a_tick_in_the_hour_that_happens_twice_fires_at_its_first_occurrence_only() -> None:
    half_hourly = CronSchedule(cron="*/30 * * * *", timezone="Europe/Paris")
    assert ticks(half_hourly, datetime(2026, 10, 25, 1, 45, tzinfo=PARIS), 3) == [
        "2026-10-25T02:00:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-25T03:00:00+01:00",
    ]


@pytest.mark.parametrize(
    ("cron", "timezone", "problem"),
    [
        ("0 8 * *", "UTC", "has 4 fields; expected 5"),
        ("61 8 * * *", "UTC", "is not a valid cron expression"),
        ("0 0 30 2 *", "UTC", "never fires"),
        ("0 8 * * *", "Mars/Olympus", "not a known IANA time zone"),
    ],
)
def test_a_schedule_that_cannot_work_is_refused_with_the_reason(
    cron: str, timezone: str, problem: str
) -> None:
    app = steplog.App("reports", project="acme")
    with pytest.raises(WorkflowError, match=problem) as caught:
        app.workflow("digest", cron=cron, timezone=timezone)(_digest)
    assert "'digest'" in str(caught.value)


def test_schedule_options_without_a_cron_are_refused() -> None:
    app = steplog.App("reports", project="acme")
    with pytest.raises(WorkflowError, match=r"timezone='Europe/Paris' is an option of a cron"):
        app.workflow("digest", timezone="Europe/Paris")(_digest)


def test_a_declared_schedule_is_registered_with_the_workflow() -> None:
    app = steplog.App("reports", project="acme")
    app.workflow("digest", cron="0 8 * * *", timezone="Europe/Paris", missed="skip",
                 expires_after="10m")(_digest)
    (definition,) = app.definitions()
    assert definition.schedule == CronSchedule(
        cron="0 8 * * *", timezone="Europe/Paris", missed="skip", expires_after_ms=600_000
    )


async def _digest(ctx: object) -> None:
    return None


# --- what a due tick writes -----------------------------------------------------------------

T8 = datetime(2026, 5, 4, 8, tzinfo=UTC)
HOURLY = CronSchedule(cron="0 * * * *")


def tick(schedule: CronSchedule, at: datetime) -> RunState:
    state, _ = fold_events([tick_scheduled("acme", "reports", "digest", schedule, at, at)])
    return state


def fire(state: RunState, now: datetime, schedule: CronSchedule | None = None) -> list[Effect]:
    held = schedule if schedule is not None else CronSchedule.model_validate_json(
        state.scheduled.schedule if state.scheduled else ""
    )
    return start_effects(state, now, lambda project, app, workflow: held)


def next_tick_of(effects: list[Effect]) -> datetime:
    (scheduled,) = [e.event for e in effects
                    if isinstance(e, WriteEvent) and isinstance(e.event, RunScheduled)]
    return scheduled.payload.start_at


def started(effects: list[Effect]) -> bool:
    return any(isinstance(e, SendCommand) and isinstance(e.command, StartRun) for e in effects)


def expired(effects: list[Effect]) -> RunCancelled | None:
    ends = [e.event for e in effects
            if isinstance(e, WriteEvent) and isinstance(e.event, RunCancelled)]
    return ends[0] if ends else None


def test_a_tick_on_time_starts_and_schedules_the_next_with_derived_ids() -> None:
    state = tick(HOURLY, T8)
    assert state.run_id == cron_tick_run_id("acme", "reports", "digest", T8)
    effects = fire(state, T8 + timedelta(seconds=0.2))
    assert started(effects) and next_tick_of(effects) == T8 + timedelta(hours=1)
    (command,) = [e.command for e in effects if isinstance(e, SendCommand)]
    assert isinstance(command, StartRun) and command.app == "reports" and command.input == {
        "cron": "0 * * * *", "tick": "2026-05-04T08:00:00+00:00",
    }
    # Fired again (a restart before the fold caught up): the same messages, duplicates.
    assert fire(state, T8 + timedelta(seconds=3)) == [
        _at(effect, T8 + timedelta(seconds=3)) for effect in effects
    ]


def _at(effect: Effect, ts: datetime) -> Effect:
    if isinstance(effect, WriteEvent):
        return WriteEvent(effect.event.model_copy(update={"ts": ts}))
    assert isinstance(effect, SendCommand)
    return SendCommand(effect.command.model_copy(update={"ts": ts}), effect.resolve_app)


def test_the_first_tick_of_a_definition_is_the_chain_s_next_tick() -> None:
    definition = WorkflowDefinition(project="acme", app="reports", name="digest",
                                    schedule=HOURLY, ts=T8)
    first = first_tick(definition, T8 + timedelta(minutes=10))
    chained = next_tick_of(fire(tick(HOURLY, T8), T8))
    assert first is not None and first.payload.start_at == chained
    assert first.event_id == tick_scheduled(
        "acme", "reports", "digest", HOURLY, chained, T8
    ).event_id


@pytest.mark.parametrize(
    ("missed", "runs_this_tick", "then"),
    [
        ("run_all", True, T8 + timedelta(hours=1)),
        ("run_latest", False, T8 + timedelta(hours=3)),
        ("skip", False, T8 + timedelta(hours=4)),
    ],
)
def test_ticks_missed_during_an_outage_follow_the_schedule_s_policy(
    missed: MissedTicks, runs_this_tick: bool, then: datetime
) -> None:
    schedule = HOURLY.model_copy(update={"missed": missed})
    effects = fire(tick(schedule, T8), T8 + timedelta(hours=3, minutes=20))
    assert started(effects) is runs_this_tick and next_tick_of(effects) == then
    if not runs_this_tick:
        ended = expired(effects)
        assert ended is not None and ended.payload.expired
        assert ended.payload.reason is not None and f"missed={missed!r}" in ended.payload.reason


def test_a_late_tick_with_no_later_tick_due_runs_whatever_the_policy() -> None:
    schedule = HOURLY.model_copy(update={"missed": "skip"})
    assert started(fire(tick(schedule, T8), T8 + timedelta(minutes=40)))


def test_a_start_later_than_its_expires_after_ends_expired() -> None:
    schedule = HOURLY.model_copy(update={"expires_after_ms": 60_000})
    state = tick(schedule, T8)
    assert started(fire(state, T8 + timedelta(seconds=59)))
    effects = fire(state, T8 + timedelta(minutes=5))
    ended = expired(effects)
    assert not started(effects) and ended is not None and ended.payload.expired
    assert next_tick_of(effects) == T8 + timedelta(hours=1)  # the schedule goes on
    state, _ = fold_events([ended], state=state)
    assert run_outcome(state, None)[0] is RunStatus.EXPIRED


def test_a_run_scheduled_with_expires_after_ends_expired_when_started_too_late() -> None:
    scheduled = RunScheduled(
        event_id="e1", project="acme", flow="report", run_id="r1", ts=T8,
        payload=RunScheduledPayload(start_at=T8, app="reports", expires_after_ms=1_000),
    )
    state, _ = fold_events([scheduled])
    (on_time,) = start_effects(state, T8 + timedelta(milliseconds=900))
    assert isinstance(on_time, SendCommand)
    (late,) = start_effects(state, T8 + timedelta(seconds=2))
    assert isinstance(late, WriteEvent) and isinstance(late.event, RunCancelled)
    assert late.event.payload.expired and "expires_after of 1000 ms" in str(late.event.payload)


def test_a_tick_of_a_schedule_the_workflow_no_longer_has_is_cancelled_and_stops() -> None:
    effects = fire(tick(HOURLY, T8), T8, schedule=CronSchedule(cron="0 9 * * *"))
    (ended,) = effects
    assert isinstance(ended, WriteEvent) and isinstance(ended.event, RunCancelled)
    assert not ended.event.payload.expired and "no longer" in str(ended.event.payload.reason)


def test_the_readme_schedule_example_declares_what_it_says() -> None:
    namespace: dict[str, object] = {"steplog": steplog}
    exec(readme_python('cron="0 8 * * *", timezone="Europe/Paris"'), namespace)
    app = namespace["app"]
    assert isinstance(app, steplog.App)
    (definition,) = app.definitions()
    assert definition.name == "digest" and definition.schedule == CronSchedule(
        cron="0 8 * * *", timezone="Europe/Paris", missed="run_latest",
        expires_after_ms=2 * 3_600_000,
    )


def test_a_six_field_cron_reads_seconds_first() -> None:
    every_ten_seconds = CronSchedule(cron="*/10 * * * * *")
    assert ticks(every_ten_seconds, datetime(2026, 5, 4, 8, 0, 3, tzinfo=UTC), 2) == [
        "2026-05-04T08:00:10+00:00", "2026-05-04T08:00:20+00:00",
    ]


def test_a_state_of_format_4_reads_as_a_start_that_never_expires_and_no_tick() -> None:
    scheduled = RunScheduled(
        event_id="e1", project="acme", flow="report", run_id="r1", ts=T8,
        payload=RunScheduledPayload(start_at=T8, app="reports"),
    )
    state, _ = fold_events([scheduled])
    stored = pickle.loads(state.to_bytes()[5:])
    # The scheduled fact's expires_after_ms and schedule, then format 6's runner and
    # retrigger_of.
    assert stored[7][-4:-2] == (None, "")
    format_4 = (*stored[:7], stored[7][:-4], *stored[8:])
    restored = RunState.from_bytes(b"SLRS\x04" + pickle.dumps(format_4))
    assert restored.scheduled == state.scheduled


# --- a wake-up too late ---------------------------------------------------------------------


def test_a_sleep_until_woken_past_its_expires_after_ends_the_run_expired() -> None:
    r = workflow_run()
    nap = StepSleeping(**r._envelope(1, None, 1), step_key="remind-at", payload=StepSleepingPayload(
        wake_at=at(60), kind=StepKind.SLEEP_UNTIL, expires_after_ms=10_000))
    state, _ = fold_events([r.run_started(0, app=APP), nap])
    (wake,) = wanted_timers(state).values()

    (on_time,) = fire_timer(state, wake, at(69))
    assert isinstance(on_time, WriteEvent) and on_time.event.type == "step.completed"
    (late,) = fire_timer(state, wake, at(75))
    assert isinstance(late, WriteEvent) and isinstance(late.event, RunCancelled)
    assert late.event.payload.expired and "'remind-at'" in str(late.event.payload.reason)

    state, effects = fold_events([late.event], state=state)
    assert run_outcome(state, None)[0] is RunStatus.EXPIRED
    assert any(isinstance(e, SendCommand) and e.command.type == "command.cancel_run"
               for e in effects)  # the worker drops the run


# --- the timer service ----------------------------------------------------------------------


def test_the_timer_service_writes_a_learned_schedule_s_first_tick_and_keeps_the_chain() -> None:
    producer = FakeProducer(failures=1)  # the first write is refused: written again
    definition = WorkflowDefinition(project="acme", app="reports", name="digest",
                                    schedule=HOURLY, ts=T8)
    known = WorkflowRegistry()
    known.remember(definition)
    states: dict[bytes, RunState] = {}
    clock = [T8 + timedelta(minutes=10)]
    service = TimerService(states.get, dispatcher(producer, known), clock=lambda: clock[0])

    def written(topic: str) -> list[Any]:
        decode = decode_event if topic == TOPICS.events else decode_command
        return [decode(value) for _, value in producer.on(topic)]

    async def scenario() -> None:
        service.rebuild([])
        service.schedules_learned([definition])
        await until(lambda: len(written(TOPICS.events)) == 1, "the first tick", timeout=10)
        (first,) = written(TOPICS.events)
        due = T8 + timedelta(hours=1)
        assert first.run_id == cron_tick_run_id("acme", "reports", "digest", due)

        # Folded and stored by the fold's host, its start timer set: due an hour later.
        state, effects = fold_events([first])
        states[b"tick"] = state
        clock[0] = T8 + timedelta(hours=1, seconds=1)
        service.apply([(b"tick", effect) for effect in effects if isinstance(effect, SetTimer)])
        await until(lambda: len(written(TOPICS.commands)) == 1, "the tick's start")
        (start,) = written(TOPICS.commands)
        assert isinstance(start, StartRun) and start.run_id == first.run_id
        assert written(TOPICS.events)[1].payload.start_at == T8 + timedelta(hours=2)

    serve(service, scenario)
