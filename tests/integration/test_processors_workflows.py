"""The processors' side of durable workflows against the real broker and `steplog processors`.

The test plays the worker: it writes the events, signals and registrations a worker would, by
hand, and reads back what the processors write on the commands, events and signals topics.
Every wait is on a condition with a deadline; nothing sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from steplog.processors.fold.effects import TimerKind
from steplog.processors.fold.signals import NameTriggers, NameWaits
from steplog.projections.log_reader import read_log, topic_end_offsets
from steplog.schemas.base import ErrorInfo, WireModel, new_event_id
from steplog.schemas.codec import decode_command, decode_dead_letter, decode_event, encode
from steplog.schemas.commands import CancelRun, Command, ResumeRun, StartRun
from steplog.schemas.events import (
    Event,
    RunCancelled,
    RunCompleted,
    RunCompletedPayload,
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
    StepSleeping,
    StepSleepingPayload,
    StepStarted,
    StepStartedPayload,
    StepWaiting,
    StepWaitingPayload,
)
from steplog.schemas.flows import WorkflowDefinition
from steplog.schemas.ids import (
    child_run_id,
    derived_id,
    timer_message_id,
    triggered_run_id,
    wait_registration_id,
    wait_resolution_id,
)
from steplog.schemas.signals import Signal, TriggerRegistered, WaitRegistered
from steplog.settings import Settings
from steplog.server.stack import changelog_specs, processor_config
from steplog.topics import ensure_topics
from tests.conftest import RunningProcessors, start_processors, wait_for

APP = "shop"
M = TypeVar("M")


class Log:
    """Writes what a worker or client would, and reads back what the processors wrote."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.project = settings.project
        self.seq = 0

    def write(self, topic: str, key: str, *messages: WireModel) -> None:
        async def produce() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, acks="all")
            await producer.start()
            try:
                for message in messages:
                    await producer.send_and_wait(topic, encode(message), key=key.encode())
            finally:
                await producer.stop()

        asyncio.run(produce())

    def events(self, *events: Event) -> None:
        for event in events:
            self.write(self.topics.events, event.run_id, event)

    def read(self, topic: str, decode: Callable[[bytes | None], M]) -> list[M]:
        async def consume() -> list[M]:
            return [decode(record.value) async for record in read_log(
                self.settings.kafka_bootstrap, topic)]

        return asyncio.run(consume())

    def commands(self) -> list[Command]:
        return self.read(self.topics.commands, decode_command)

    def wait_for_command(self, what: str, test: Callable[[Command], bool]) -> Command:
        found: list[Command] = []

        def appeared() -> bool:
            found[:] = [command for command in self.commands() if test(command)]
            return bool(found)

        wait_for(appeared, timeout=60, what=what)
        return found[0]

    def wait_for_event(self, what: str, test: Callable[[Event], bool]) -> Event:
        found: list[Event] = []

        def appeared() -> bool:
            found[:] = [e for e in self.read(self.topics.events, decode_event) if test(e)]
            return bool(found)

        wait_for(appeared, timeout=60, what=what)
        return found[0]

    def envelope(self, run_id: str, flow: str, step_key: str | None = None,
                 attempt: int = 1) -> dict[str, Any]:
        self.seq += 1
        fields: dict[str, Any] = dict(
            event_id=new_event_id(), project=self.project, flow=flow, run_id=run_id,
            ts=datetime.now(UTC), seq=self.seq, attempt=attempt,
        )
        if step_key is not None:
            fields["step_key"] = step_key
        return fields

    def start(self, run_id: str, flow: str, **payload: Any) -> None:
        self.events(RunStarted(**{**self.envelope(run_id, flow),
                                  "event_id": derived_id("run-start", run_id)},
                               payload=RunStartedPayload(app=APP, **payload)))

    def resumes(self, run_id: str) -> list[ResumeRun]:
        return [c for c in self.commands() if isinstance(c, ResumeRun) and c.run_id == run_id]

    def wait_for_resumes(self, run_id: str, count: int) -> list[ResumeRun]:
        wait_for(lambda: len(self.resumes(run_id)) >= count, timeout=60,
                 what=f"{count} resume_run command(s) for {run_id}")
        return self.resumes(run_id)


def test_a_run_resumes_after_start_sleep_signal_and_wait_timeout(
    processors: RunningProcessors,
) -> None:
    log = Log(processors.settings)
    run_id, flow = "order-1", "order.process"

    log.start(run_id, flow, input={"order": 1})
    (first,) = log.wait_for_resumes(run_id, 1)
    assert (first.app, first.workflow, first.history) == (APP, flow, {})
    assert first.history_partition is not None and first.history_offset is not None

    # A sleep of one second: the timer service completes the step, the fold resumes the run.
    log.events(
        StepStarted(**log.envelope(run_id, flow, "charge"),
                    payload=StepStartedPayload(kind=StepKind.RUN)),
        StepCompleted(**log.envelope(run_id, flow, "charge"),
                      payload=StepCompletedPayload(output={"charged": 42})),
        StepSleeping(**log.envelope(run_id, flow, "settle"), payload=StepSleepingPayload(
            wake_at=datetime.now(UTC) + timedelta(seconds=1))),
    )
    woke = log.wait_for_event("the sleep's step.completed", lambda e: isinstance(
        e, StepCompleted) and e.step_key == "settle")
    assert woke.event_id == timer_message_id(run_id, "settle", 1, TimerKind.WAKE.value)
    second = log.wait_for_resumes(run_id, 2)[1]
    assert second.history["settle"].status == "completed"
    assert second.history["charge"].output == {"charged": 42}
    assert "woke" in second.reason

    # A wait on order.approved, matched on data.order: resolved by the signal that matches.
    waiting = WaitRegistered(
        event_id=wait_registration_id(run_id, "approval", 1), project=log.project,
        name="order.approved", app=APP, flow=flow, run_id=run_id, step_key="approval",
        match="data.order", match_value=1, ts=datetime.now(UTC),
    )
    log.write(log.topics.signals, "order.approved", waiting)
    log.events(StepWaiting(**log.envelope(run_id, flow, "approval"), payload=StepWaitingPayload(
        event="order.approved", match="data.order", match_value=1,
        timeout_at=datetime.now(UTC) + timedelta(hours=1))))
    for order, approver in ((2, "not me"), (1, "ann")):
        log.write(log.topics.signals, "order.approved", Signal(
            event_id=new_event_id(), project=log.project, name="order.approved",
            data={"order": order, "by": approver}, ts=datetime.now(UTC)))
    approved = log.wait_for_event("the wait's step.completed", lambda e: isinstance(
        e, StepCompleted) and e.step_key == "approval")
    assert isinstance(approved, StepCompleted)
    assert approved.event_id == wait_resolution_id(run_id, "approval", 1)
    assert approved.payload.output == {"order": 1, "by": "ann"}
    third = log.wait_for_resumes(run_id, 3)[2]
    assert third.history["approval"].output == {"order": 1, "by": "ann"}

    # A wait whose timeout passes: resolved to null, timed_out.
    log.write(log.topics.signals, "order.shipped", WaitRegistered(
        event_id=wait_registration_id(run_id, "shipping", 1), project=log.project,
        name="order.shipped", app=APP, flow=flow, run_id=run_id, step_key="shipping",
        ts=datetime.now(UTC)))
    log.events(StepWaiting(**log.envelope(run_id, flow, "shipping"), payload=StepWaitingPayload(
        event="order.shipped", timeout_at=datetime.now(UTC) + timedelta(milliseconds=500))))
    expired = log.wait_for_event("the timed-out wait's step.completed", lambda e: isinstance(
        e, StepCompleted) and e.step_key == "shipping")
    assert isinstance(expired, StepCompleted)
    assert expired.payload.timed_out and expired.payload.output is None
    fourth = log.wait_for_resumes(run_id, 4)[3]
    assert fourth.history["shipping"].status == "completed"
    assert fourth.history["shipping"].output is None

    # A retryable failure: the retry is a resume_run at retry_at, with the failure in history.
    log.events(StepFailed(**log.envelope(run_id, flow, "ship"), payload=StepFailedPayload(
        error=ErrorInfo(type="Timeout", message="carrier down"),
        retry_at=datetime.now(UTC) + timedelta(milliseconds=300))))
    fifth = log.wait_for_resumes(run_id, 5)[4]
    assert fifth.command_id == timer_message_id(run_id, "ship", 1, TimerKind.RETRY.value)
    assert fifth.history["ship"].status == "retrying"
    assert fifth.history_offset is not None

    rows = processors.sql.query(
        f"SELECT status, app FROM runs_current WHERE run_id = '{run_id}'").result_rows
    assert rows == [("retrying", APP)]
    kinds: dict[str, str] = {key: kind for key, kind in processors.sql.query(
        f"SELECT step_key, kind FROM steps_current WHERE run_id = '{run_id}'").result_rows}
    assert kinds["settle"] == "sleep" and kinds["approval"] == "wait_for_event"


def test_triggers_schedules_children_and_cancellation(processors: RunningProcessors) -> None:
    log = Log(processors.settings)
    project = log.project

    # A trigger, then a signal of its name: a start_run with the derived run id.
    log.write(log.topics.flows, f"{project}/workflow/{APP}/order.process", WorkflowDefinition(
        project=project, app=APP, name="order.process", triggers=["order.placed"],
        ts=datetime.now(UTC)))
    log.write(log.topics.flows, f"{project}/workflow/{APP}/fraud.check", WorkflowDefinition(
        project=project, app=APP, name="fraud.check", ts=datetime.now(UTC)))
    log.write(log.topics.signals, "order.placed", TriggerRegistered(
        event_id=new_event_id(), project=project, name="order.placed", app=APP,
        workflow="order.process", ts=datetime.now(UTC)))
    signal = Signal(event_id=new_event_id(), project=project, name="order.placed",
                    data={"id": 7}, ts=datetime.now(UTC))
    log.write(log.topics.signals, "order.placed", signal)
    triggered_id = triggered_run_id(signal.event_id, APP, "order.process")
    started = log.wait_for_command("the triggered start_run", lambda c: c.run_id == triggered_id)
    assert isinstance(started, StartRun)
    assert (started.workflow, started.app, started.input) == ("order.process", APP, {"id": 7})
    assert started.trigger is not None and started.trigger.event_id == signal.event_id

    # A run scheduled in the past, without an app: started in the app that defines it.
    log.events(RunScheduled(**log.envelope("late-1", "order.process"), payload=RunScheduledPayload(
        start_at=datetime.now(UTC) - timedelta(minutes=5), input={"n": 1})))
    late = log.wait_for_command("the scheduled start_run", lambda c: c.run_id == "late-1")
    assert isinstance(late, StartRun) and late.app == APP and late.input == {"n": 1}
    assert late.command_id == timer_message_id("late-1", "", 1, TimerKind.START.value)

    # Scheduled for a workflow no app defines: it stays scheduled, and shows as overdue.
    log.events(RunScheduled(**log.envelope("orphan-1", "nobody.defines"),
                            payload=RunScheduledPayload(start_at=datetime.now(UTC))))
    wait_for(lambda: processors.sql.query(
        "SELECT count() FROM runs_overdue WHERE run_id = 'orphan-1'").result_rows[0][0] == 1,
        what="the orphan run in runs_overdue")

    # A child run: step.invoked starts it; its run.completed completes the parent's step.
    parent = "parent-1"
    log.start(parent, "order.process")
    log.wait_for_resumes(parent, 1)
    child = child_run_id(parent, "fraud")
    log.events(StepInvoked(**log.envelope(parent, "order.process", "fraud"),
                           payload=StepInvokedPayload(child_run_id=child, workflow="fraud.check",
                                                      data={"amount": 10})))
    child_start = log.wait_for_command("the child's start_run", lambda c: c.run_id == child)
    assert isinstance(child_start, StartRun)
    assert (child_start.workflow, child_start.app, child_start.input) == (
        "fraud.check", APP, {"amount": 10})
    assert (child_start.parent_run_id, child_start.parent_step_key, child_start.parent_flow,
            child_start.parent_step_attempt) == (parent, "fraud", "order.process", 1)
    # As a worker starts it: its run.started repeats where its end goes.
    log.start(child, "fraud.check", parent_run_id=parent, parent_step_key="fraud",
              parent_flow="order.process", parent_step_attempt=1)
    log.wait_for_resumes(child, 1)
    log.events(RunCompleted(**log.envelope(child, "fraud.check"),
                            payload=RunCompletedPayload(output={"verdict": "ok"})))
    outcome = log.wait_for_event("the parent step's step.completed", lambda e: isinstance(
        e, StepCompleted) and e.run_id == parent and e.step_key == "fraud")
    assert isinstance(outcome, StepCompleted) and outcome.payload.output == {"verdict": "ok"}
    assert outcome.event_id == derived_id("child-end", child)
    resumed = log.wait_for_resumes(parent, 2)[1]
    assert resumed.history["fraud"].output == {"verdict": "ok"}

    # A child of a workflow nobody defines: the parent's step fails, and the parent resumes.
    missing = child_run_id(parent, "ghost")
    log.events(StepInvoked(**log.envelope(parent, "order.process", "ghost"),
                           payload=StepInvokedPayload(child_run_id=missing, workflow="ghost")))
    failed = log.wait_for_event("the parent step's step.failed", lambda e: isinstance(
        e, StepFailed) and e.run_id == parent and e.step_key == "ghost")
    assert isinstance(failed, StepFailed)
    assert "no workflow named 'ghost' in any app" in failed.payload.error.message
    assert log.wait_for_resumes(parent, 3)[2].history["ghost"].status == "failed"

    # Cancelling a run: cancel_run for its worker, run.cancelled for its running child.
    second_child = child_run_id(parent, "fraud-2")
    log.events(StepInvoked(**log.envelope(parent, "order.process", "fraud-2"),
                           payload=StepInvokedPayload(child_run_id=second_child,
                                                      workflow="fraud.check")))
    log.wait_for_command("the second child's start_run", lambda c: c.run_id == second_child)
    log.events(RunCancelled(**log.envelope(parent, "order.process")))
    cancel = log.wait_for_command("the cancel_run", lambda c: isinstance(c, CancelRun))
    assert (cancel.run_id, cancel.app) == (parent, APP)
    log.wait_for_event("the child's run.cancelled", lambda e: isinstance(
        e, RunCancelled) and e.run_id == second_child)


def committed_everything(settings: Settings) -> bool:
    """Whether the processors' consumer group has committed the events topic to its end (so a
    restart folds nothing again: what it knows comes from the stored states)."""

    async def check() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(f"{settings.topic_prefix}processors")
        finally:
            await admin.close()
        ends = await topic_end_offsets(settings.kafka_bootstrap, settings.topics.events)
        committed = {tp.partition: meta.offset for tp, meta in offsets.items()
                     if tp.topic == settings.topics.events}
        return all(committed.get(partition, 0) >= end for partition, end in enumerate(ends))

    return asyncio.run(check())


def test_timers_are_rebuilt_from_the_stored_run_states_after_a_restart(
    stack_settings: Settings, tmp_path: Path
) -> None:
    log = Log(stack_settings)
    running = start_processors(stack_settings, tmp_path / "processors.log")
    try:
        log.start("sleepy-1", "nap")
        log.wait_for_resumes("sleepy-1", 1)
        wake_at = datetime.now(UTC) + timedelta(seconds=6)
        log.events(StepSleeping(**log.envelope("sleepy-1", "nap", "nap"),
                                payload=StepSleepingPayload(wake_at=wake_at)))
        wait_for(lambda: committed_everything(stack_settings),
                 what="the sleep folded and committed")
        # Stopped before the wake (SIGTERM: a killed member would hold the group for its
        # session timeout); the heap is gone, only the stored state knows the wake_at.
        running.stop()
        stopped_at = datetime.now(UTC)
        assert stopped_at < wake_at, "the processors took too long to stop to test the wake"
        running = start_processors(stack_settings, tmp_path / "processors.log")
        woke = log.wait_for_event("the sleep's step.completed after the restart",
                                  lambda e: isinstance(e, StepCompleted) and e.run_id == "sleepy-1")
        assert woke.ts >= wake_at
        assert log.wait_for_resumes("sleepy-1", 2)[1].history["nap"].status == "completed"
    finally:
        running.stop()


def test_names_stored_by_fausts_tables_go_on_and_bad_signals_are_dead_letters(
    stack_settings: Settings, tmp_path: Path
) -> None:
    """A stack upgraded from the processors whose signals were a faust agent, with a run parked
    on a wait and a trigger registered: both are only in the changelogs faust's tables wrote
    (the signals that registered them may be gone with the topic's retention)."""
    log = Log(stack_settings)
    config = processor_config(stack_settings)
    project = log.project
    waits = NameWaits()
    waits.waits["w-parked"] = WaitRegistered(
        event_id="w-parked", project=project, name="order.approved", app=APP,
        flow="order.process", run_id="parked-1", step_key="approval", ts=datetime.now(UTC))
    triggers = NameTriggers({(project, APP, "order.process")})

    async def store_as_faust_did() -> None:
        await ensure_topics(stack_settings.kafka_bootstrap, changelog_specs(config, stack_settings))
        producer = AIOKafkaProducer(bootstrap_servers=stack_settings.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            # The changelogs have as many partitions as the signals topic: the default
            # partitioner puts a name where its signals are.
            await producer.send_and_wait(config.waits_changelog, waits.to_bytes(),
                                         key=b"order.approved")
            await producer.send_and_wait(config.triggers_changelog, triggers.to_bytes(),
                                         key=b"order.placed")
            await producer.send_and_wait(log.topics.signals, b"{not json", key=b"order.approved")
        finally:
            await producer.stop()

    asyncio.run(store_as_faust_did())
    misplaced = Signal(event_id=new_event_id(), project=project, name="order.approved",
                       ts=datetime.now(UTC))
    log.write(log.topics.signals, "another.name", misplaced)
    running = start_processors(stack_settings, tmp_path / "processors.log")
    try:
        approved = Signal(event_id=new_event_id(), project=project, name="order.approved",
                          data={"by": "ann"}, ts=datetime.now(UTC))
        placed = Signal(event_id=new_event_id(), project=project, name="order.placed",
                        data={"id": 8}, ts=datetime.now(UTC))
        log.write(log.topics.signals, "order.approved", approved)
        log.write(log.topics.signals, "order.placed", placed)
        resolved = log.wait_for_event("the parked wait's step.completed", lambda e: isinstance(
            e, StepCompleted) and e.run_id == "parked-1")
        assert resolved.event_id == wait_resolution_id("parked-1", "approval", 1)
        assert isinstance(resolved, StepCompleted)
        assert resolved.payload.output == {"by": "ann"}
        triggered = triggered_run_id(placed.event_id, APP, "order.process")
        started = log.wait_for_command("the triggered start_run", lambda c: c.run_id == triggered)
        assert isinstance(started, StartRun) and started.input == {"id": 8}

        # Sent before the effects of the signals after them: in the topic by now (in the
        # partitions of their keys, so in no particular order).
        letters = sorted(log.read(log.topics.dlq, decode_dead_letter), key=lambda x: x.field)
        assert [letter.source_topic for letter in letters] == [log.topics.signals] * 2
        assert [letter.field for letter in letters] == ["", "name"]
        assert "another.name" in letters[1].reason
    finally:
        running.stop()
