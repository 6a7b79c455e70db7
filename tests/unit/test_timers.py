"""The timer service's pure half: the heap of due times, and what a due timer writes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from steplog.processors.fold.effects import (
    AppResolution,
    SendCommand,
    SetTimer,
    TimerKind,
    WriteEvent,
    WriteSignalsMessage,
)
from steplog.processors.fold.run import fold_events
from steplog.processors.timer_service import TimerService
from steplog.processors.registry import WorkflowRegistry
from steplog.processors.fold.state import RunState
from steplog.processors.fold.timers import TimerHeap, fire_timer
from steplog.processors.fold.workflow import wanted_timers
from steplog.schemas.base import TriggerInfo
from steplog.schemas.codec import decode_command, decode_event
from steplog.schemas.commands import ResumeRun, StartRun
from steplog.schemas.events import (
    Event,
    RunScheduled,
    RunScheduledPayload,
    StepCompleted,
    StepCompletedPayload,
)
from steplog.schemas.flows import WorkflowDefinition
from steplog.schemas.ids import timer_message_id
from steplog.schemas.signals import WaitEnded
from tests.unit.test_dispatch import TOPICS, FakeProducer, dispatcher, registry
from tests.unit.test_fold import Run, at
from tests.unit.test_fold_effects import APP, sleeping, waiting

WAKE, RETRY, START, WAIT = TimerKind.WAKE, TimerKind.RETRY, TimerKind.START, TimerKind.WAIT_TIMEOUT


def timer(kind: TimerKind, step_key: str, due: float, attempt: int = 1) -> SetTimer:
    return SetTimer(kind, step_key, attempt, at(due))


# --- the heap ----------------------------------------------------------------------------------


def test_due_timers_come_out_earliest_first_and_only_once() -> None:
    heap = TimerHeap()
    heap.set(b"a", timer(WAKE, "nap", 30))
    heap.set(b"b", timer(RETRY, "charge", 10))
    heap.set(b"c", timer(START, "", 20))
    assert heap.next_due() == at(10)
    assert heap.pop_due(at(25)) == [(b"b", timer(RETRY, "charge", 10)),
                                    (b"c", timer(START, "", 20))]
    assert heap.pop_due(at(25)) == []
    assert len(heap) == 1 and heap.next_due() == at(30)


def test_setting_a_timer_again_replaces_it_and_clearing_forgets_it() -> None:
    heap = TimerHeap()
    heap.set(b"a", timer(WAKE, "nap", 10))
    heap.set(b"a", timer(WAKE, "nap", 50))  # same run, kind and step: replaced
    heap.set(b"a", timer(WAIT, "approval", 20))
    heap.clear(b"a", WAIT, "approval")
    assert heap.next_due() == at(50)  # the stale entries at 10 and 20 are skipped
    assert heap.pop_due(at(100)) == [(b"a", timer(WAKE, "nap", 50))]
    assert heap.next_due() is None and len(heap) == 0


def test_a_timer_can_surface_later_than_it_is_due_and_stays_the_same_timer() -> None:
    heap = TimerHeap()
    heap.set(b"a", timer(RETRY, "charge", 10), at=at(40))
    assert heap.pop_due(at(30)) == []
    assert heap.pop_due(at(40)) == [(b"a", timer(RETRY, "charge", 10))]


def test_the_heap_stays_proportional_to_the_timers_held() -> None:
    heap = TimerHeap()
    for round_ in range(1_000):
        heap.set(b"a", timer(WAKE, "nap", round_))
    assert len(heap) == 1
    assert len(heap._heap) < 200  # rebuilt from the live timers as stale entries pile up
    assert heap.pop_due(at(10_000)) == [(b"a", timer(WAKE, "nap", 999))]


def test_rebuild_holds_what_every_state_wants() -> None:
    r = Run(run_id="order-1", flow="order.process")
    state, _ = fold_events([r.run_started(0, app=APP), sleeping(r, "nap", 1, wake_at=60),
                            waiting(r, "approval", 2, timeout_at=90)])
    scheduled, _ = fold_events([Run(run_id="later").run_scheduled(0, start_at=30)])
    heap = TimerHeap()
    heap.set(b"gone", timer(WAKE, "old", 1))
    heap.rebuild([(b"order-1", state), (b"later", scheduled)])
    assert heap.pop_due(at(100)) == [
        (b"later", timer(START, "", 30)),
        (b"order-1", timer(WAKE, "nap", 60)),
        (b"order-1", timer(WAIT, "approval", 90)),
    ]


# --- firing ------------------------------------------------------------------------------------


def parked_run() -> tuple[Run, list[Event]]:
    r = Run(run_id="order-1", flow="order.process")
    return r, [
        r.run_started(0, app=APP),
        sleeping(r, "nap", 1, wake_at=60),
        waiting(r, "approval", 2, timeout_at=90),
        r.started("charge", 3),
        r.failed("charge", 4, "card network down", retry_at=30),
    ]


def test_a_due_sleep_writes_the_completion_of_its_step() -> None:
    _, events = parked_run()
    state, _ = fold_events(events)
    (effect,) = fire_timer(state, timer(WAKE, "nap", 60), at(61))
    assert effect == WriteEvent(StepCompleted(
        event_id=timer_message_id("order-1", "nap", 1, "wake"), project="acme",
        flow="order.process", run_id="order-1", step_key="nap", attempt=1, ts=at(61),
        payload=StepCompletedPayload(output=None, duration_ms=60_000.0),
    ))


def test_a_due_retry_resumes_the_run_with_its_history_and_position() -> None:
    _, events = parked_run()
    state, _ = fold_events(events)
    state.position = (1, 17)
    (effect,) = fire_timer(state, timer(RETRY, "charge", 30), at(31))
    assert isinstance(effect, SendCommand)
    resume = effect.command
    assert isinstance(resume, ResumeRun)
    assert resume.command_id == timer_message_id("order-1", "charge", 1, "retry")
    assert (resume.app, resume.workflow) == (APP, "order.process")
    assert (resume.history_partition, resume.history_offset) == (1, 17)
    assert resume.history["charge"].status == "retrying"
    assert resume.reason == "retry of step 'charge' (attempt 2)"


def test_a_due_wait_timeout_ends_the_wait_on_the_signals_topic() -> None:
    _, events = parked_run()
    state, _ = fold_events(events)
    assert fire_timer(state, timer(WAIT, "approval", 90), at(90)) == [WriteSignalsMessage(
        WaitEnded(event_id=timer_message_id("order-1", "approval", 1, "wait_timeout"),
                  project="acme", name="order.approved", run_id="order-1",
                  flow="order.process", step_key="approval", attempt=1, reason="timeout",
                  ts=at(90)))]


def test_a_due_start_starts_the_run_in_its_app_or_asks_for_one() -> None:
    r = Run(run_id="later", flow="report.daily")
    scheduled = RunScheduled(**r._envelope(0, None, 1), payload=RunScheduledPayload(
        start_at=at(30), app=APP, input={"day": 1},
        trigger=TriggerInfo(name="cron", event_id="sig-1")))
    state, _ = fold_events([scheduled])
    (effect,) = fire_timer(state, timer(START, "", 30), at(31))
    assert effect == SendCommand(StartRun(
        command_id=timer_message_id("later", "", 1, "start"), project="acme", run_id="later",
        ts=at(31), workflow="report.daily", app=APP, input={"day": 1},
        trigger=TriggerInfo(name="cron", event_id="sig-1"),
    ))

    anywhere, _ = fold_events([r.run_scheduled(0, start_at=30)])
    (effect,) = fire_timer(anywhere, timer(START, "", 30), at(31))
    assert isinstance(effect, SendCommand) and effect.command.app is None
    assert effect.resolve_app == AppResolution(preferred="", exact=False)


def test_a_timer_the_state_no_longer_wants_writes_nothing() -> None:
    r, events = parked_run()
    state, _ = fold_events(events)
    assert fire_timer(None, timer(WAKE, "nap", 60), at(61)) == []
    assert fire_timer(state, timer(WAKE, "nap", 59), at(61)) == []  # replaced by another time
    assert fire_timer(state, timer(WAKE, "unknown", 60), at(61)) == []
    assert fire_timer(state, timer(START, "", 0), at(61)) == []  # never scheduled

    woken, _ = fold_events([*events, r.completed("nap", 60)])
    assert fire_timer(woken, timer(WAKE, "nap", 60), at(61)) == []
    retried, _ = fold_events([*events, r.started("charge", 30, attempt=2)])
    assert fire_timer(retried, timer(RETRY, "charge", 30), at(31)) == []
    cancelled, _ = fold_events([*events, r.run_cancelled(5)])
    assert wanted_timers(cancelled) == {}
    assert fire_timer(cancelled, timer(WAIT, "approval", 90), at(91)) == []


def test_a_scheduled_run_that_started_wants_no_start() -> None:
    r = Run(run_id="later")
    state, _ = fold_events([r.run_scheduled(0, start_at=30), r.run_started(30, app=APP)])
    assert fire_timer(state, timer(START, "", 30), at(31)) == []
    assert isinstance(state, RunState)


# --- the service -------------------------------------------------------------------------------


async def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def parked_and_scheduled(
    producer: FakeProducer,
) -> tuple[TimerService, WorkflowRegistry, dict[bytes, RunState]]:
    """A service over a parked run (its retry due at 30, its wake at 60, its wait's timeout at
    90) and a run scheduled at 30 whose workflow no app defines yet; its clock says 70."""
    _, events = parked_run()
    parked, _ = fold_events(events)
    later, _ = fold_events([Run(run_id="later", flow="report.daily").run_scheduled(0, start_at=30)])
    states: dict[bytes, RunState] = {b"order-1": parked, b"later": later}
    known = registry()
    service = TimerService(states.get, dispatcher(producer, known), clock=lambda: at(70))
    return service, known, states


def define_the_scheduled_workflow(service: TimerService, known: WorkflowRegistry) -> None:
    """An app (`ops`) defines the scheduled run's workflow, as a worker registering it does."""
    known.remember(WorkflowDefinition(project="acme", app="ops", name="report.daily", ts=at(0)))
    service.registry_changed()


def serve(service: TimerService, scenario: Callable[[], Awaitable[None]]) -> None:
    """Run `scenario` while the service runs."""

    async def main() -> None:
        task = asyncio.create_task(service.run())
        try:
            await scenario()
        finally:
            task.cancel()

    asyncio.run(main())


def test_the_service_fires_rebuilt_timers_and_retries_a_start_once_an_app_defines_it() -> None:
    producer = FakeProducer()
    service, known, states = parked_and_scheduled(producer)

    async def scenario() -> None:
        service.rebuild(states.items())  # due at 70: the retry (30) and the wake (60)
        await until(lambda: len(producer.sent) == 2, "the retry and the wake")
        assert {type(decode_event(v)) for _, v in producer.on(TOPICS.events)} == {StepCompleted}
        assert [decode_command(v).type for _, v in producer.on(TOPICS.commands)] == [
            "command.resume_run"]
        assert service.heap.next_due() == at(90)  # the wait's timeout is still ahead

        # The scheduled start found no app: kept aside, started once one defines it.
        define_the_scheduled_workflow(service, known)
        await until(lambda: len(producer.on(TOPICS.commands)) == 2, "the start")
        start = decode_command(producer.on(TOPICS.commands)[1][1])
        assert isinstance(start, StartRun) and (start.run_id, start.app) == ("later", "ops")

        # A timer set due now wakes the sleeping service at once.
        service.apply([(b"order-1", timer(WAIT, "approval", 90))])
        service.apply([(b"order-1", SetTimer(WAIT, "approval", 1, at(90)))])
        assert service.heap.get((b"order-1", WAIT, "approval")) is not None

    serve(service, scenario)


class GatedProducer(FakeProducer):
    """Holds every acknowledgement until `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = 0

    async def send(self, topic: str, key: bytes | None, value: bytes) -> Any:
        self.waiting += 1
        await self.gate.wait()
        return await super().send(topic, key, value)


def test_a_start_whose_workflow_is_defined_while_it_is_fired_is_fired_again() -> None:
    # The app is looked up before the firing waits for its acknowledgements (of the parked
    # run's wake and retry, due at the same time); a workflow registered during that wait must
    # not leave the start set aside until yet another one is.
    producer = GatedProducer()
    service, known, states = parked_and_scheduled(producer)

    async def scenario() -> None:
        service.rebuild(states.items())
        await until(lambda: producer.waiting > 0, "the firing waiting for its acks")
        define_the_scheduled_workflow(service, known)
        producer.gate.set()
        await until(lambda: any(isinstance(decode_command(value), StartRun)
                                for _, value in producer.on(TOPICS.commands)), "the start")
        (start,) = [command for _, value in producer.on(TOPICS.commands)
                    if isinstance(command := decode_command(value), StartRun)]
        assert (start.run_id, start.app) == ("later", "ops")

    serve(service, scenario)
