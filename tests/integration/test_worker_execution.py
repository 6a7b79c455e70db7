"""The worker against the real broker, driven by commands written here (no processors).

The test plays the processors' part: it writes `start_run` and `resume_run` commands (with the
history and log position the fold would put in them) and reads what the worker writes to the
events, signals and flows topics.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from steplog.producers.app import App
from steplog.producers.context import WorkflowContext
from steplog.producers.control import ControlSender
from steplog.schemas.commands import (
    CancelRun,
    ResumeRun,
    StartRun,
    StepRecord,
    new_command_id,
)
from steplog.schemas.events import (
    RunCompleted,
    RunInterrupted,
    RunStarted,
    RunStartedPayload,
    StepCompleted,
    StepCompletedPayload,
    StepFailed,
    StepKind,
    StepSleeping,
    StepStarted,
    StepStartedPayload,
    StepWaiting,
    new_event_id,
)
from steplog.schemas.flows import RetryPolicy, WorkflowDefinition
from steplog.schemas.ids import derived_id, wait_registration_id
from steplog.schemas.signals import TriggerRegistered, WaitRegistered
from steplog.schemas.statuses import StepStatus
from steplog.settings import Settings
from tests.conftest import wait_for
from tests.workflow_harness import (
    Counter,
    CrashyWorkers,
    LogWatcher,
    Record,
    WorkerThread,
)

# --------------------------------------------------------------------------- commands


@pytest.fixture
def control(topics: Settings) -> Iterator[ControlSender]:
    sender = ControlSender(topics.kafka_bootstrap, max_event_bytes=topics.max_event_bytes)
    try:
        yield sender
    finally:
        sender.close()


@pytest.fixture
def log(topics: Settings) -> Iterator[LogWatcher]:
    with LogWatcher(topics) as watcher:
        yield watcher


def send_command(
    control: ControlSender, settings: Settings, command: StartRun | ResumeRun | CancelRun
) -> None:
    control.send(settings.topics.commands, command.run_id, command)


def start_run(settings: Settings, run_id: str, workflow: str, data: Any = None) -> StartRun:
    return StartRun(
        command_id=new_command_id(), project=settings.project, run_id=run_id,
        ts=datetime.now(UTC), workflow=workflow, app="shop", input=data,
    )


def resume_run(
    settings: Settings,
    run_id: str,
    workflow: str,
    *,
    history: Mapping[str, StepRecord] | None = None,
    position: tuple[int, int] | None = None,
) -> ResumeRun:
    return ResumeRun(
        command_id=new_command_id(), project=settings.project, run_id=run_id,
        ts=datetime.now(UTC), reason="test", workflow=workflow, app="shop",
        history=dict(history or {}),
        history_partition=position[0] if position else None,
        history_offset=position[1] if position else None,
    )


def resume(
    control: ControlSender,
    settings: Settings,
    run_id: str,
    workflow: str,
    position: tuple[int, int] | None,
    history: Mapping[str, StepRecord] | None = None,
) -> None:
    command = resume_run(settings, run_id, workflow, history=history, position=position)
    send_command(control, settings, command)


def completed_output(log: LogWatcher, run_id: str, *, timeout: float = 60) -> Any:
    """The output of the run's run.completed, once it is there."""
    completed = log.wait_for_type(run_id, "run.completed", timeout=timeout)
    assert isinstance(completed, RunCompleted)
    return completed.payload.output


def started_position(log: LogWatcher, run_id: str) -> tuple[int, int]:
    """Where the run's run.started is: the position the fold's first resume reflects."""
    log.wait_for_type(run_id, "run.started")
    record = log.record_of(run_id, "run.started")
    return record.partition, record.offset


def begin(
    control: ControlSender, settings: Settings, log: LogWatcher, workflow: str, data: Any = None
) -> tuple[str, tuple[int, int]]:
    """A run.started as a worker writes it for a start it must not execute at once (one that
    may be a re-delivery), and its position (what the fold's resume carries)."""
    run_id = uuid.uuid4().hex
    started = RunStarted(
        event_id=derived_id("run-start", run_id), project=settings.project, flow=workflow,
        run_id=run_id, ts=datetime.now(UTC), seq=1,
        payload=RunStartedPayload(app="shop", input=data),
    )
    control.send(settings.topics.events, run_id, started)
    return run_id, started_position(log, run_id)


def shop(settings: Settings, retries: RetryPolicy | None = None) -> App:
    return App("shop", project=settings.project, settings=settings, retries=retries)


# --------------------------------------------------------------------------- tests


def test_a_worker_registers_its_workflows_and_their_triggers(
    topics: Settings, log: LogWatcher
) -> None:
    app = shop(topics)

    @app.workflow("order.process", triggers=["order.placed", "order.retried"])
    async def process(ctx: WorkflowContext) -> None:
        return None

    with WorkerThread(app, topics):
        log.wait(lambda: len(log.on(topics.topics.signals)) >= 2, what="trigger registrations")
    (definition,) = [r for r in log.on(topics.topics.flows)]
    assert isinstance(definition.message, WorkflowDefinition)
    assert definition.key == f"{topics.project}/workflow/shop/order.process".encode()
    assert definition.message.triggers == ["order.placed", "order.retried"]
    registrations = log.on(topics.topics.signals)
    assert {(r.key, r.message.workflow) for r in registrations} == {
        (b"order.placed", "order.process"), (b"order.retried", "order.process")
    }
    assert all(isinstance(r.message, TriggerRegistered) for r in registrations)


def test_a_start_that_may_be_a_redelivery_writes_run_started_and_waits_for_a_resume(
    topics: Settings, log: LogWatcher, control: ControlSender
) -> None:
    counter = Counter()
    app = shop(topics)

    @app.workflow("order.process")
    async def process(ctx: WorkflowContext) -> Any:
        return await ctx.step.run("one", counter.step("one", 1))

    # Written before the worker has its partitions: a previous owner might have handled it.
    run_id = uuid.uuid4().hex
    send_command(control, topics, start_run(topics, run_id, "order.process", {"order_id": "o-1"}))
    with WorkerThread(app, topics) as running:
        started = log.wait_for_type(run_id, "run.started")
        wait_for(lambda: running.worker.stats.runs_started == 1, what="the start counted")
        assert running.worker.stats.passes == 0
    assert isinstance(started, RunStarted)
    assert started.event_id == derived_id("run-start", run_id)
    assert (started.project, started.flow) == (topics.project, "order.process")
    assert (started.payload.app, started.payload.input) == ("shop", {"order_id": "o-1"})
    assert log.types(run_id) == ["run.started"] and counter.counts == {}


def test_a_start_first_seen_here_executes_at_once_and_its_resume_is_dropped(
    topics: Settings, log: LogWatcher, control: ControlSender
) -> None:
    counter = Counter()
    app = shop(topics)

    @app.workflow("order.process")
    async def process(ctx: WorkflowContext) -> Any:
        return await ctx.step.run("one", counter.step("one", 1), input=ctx.event.data)

    with WorkerThread(app, topics) as running:
        run_id = uuid.uuid4().hex
        send_command(control, topics, start_run(topics, run_id, "order.process", "o-2"))
        assert completed_output(log, run_id) == 1
        # The resume the processors send for every run.started brings nothing new.
        resume(control, topics, run_id, "order.process", started_position(log, run_id))
        wait_for(lambda: running.worker.stats.commands == 2, what="the resume read")
        wait_for(lambda: not running.worker._runs, what="the resume handled")
    assert running.worker.stats.passes == 1 and counter.counts == {"one": 1}
    assert log.types(run_id) == [
        "run.started", "step.started:one", "step.completed:one", "run.completed"
    ]


def test_resume_run_with_an_empty_history_executes_the_workflow_to_its_end(
    topics: Settings, log: LogWatcher, control: ControlSender
) -> None:
    counter = Counter()
    app = shop(topics)

    @app.workflow("order.process")
    async def process(ctx: WorkflowContext) -> Any:
        a = await ctx.step.run("one", counter.step("one", 1))
        b = await ctx.step.run("two", counter.step("two", 2), input={"order": ctx.event.data})
        c = await ctx.step.run("three", counter.step("three", 3))
        return {"total": a + b + c, "order": ctx.event.data}

    with WorkerThread(app, topics):
        run_id, position = begin(control, topics, log, "order.process", {"order_id": "ord-2"})
        resume(control, topics, run_id, "order.process", position)
        output = completed_output(log, run_id)
    assert output == {"total": 6, "order": {"order_id": "ord-2"}}
    assert log.types(run_id) == [
        "run.started",
        "step.started:one", "step.completed:one",
        "step.started:two", "step.completed:two",
        "step.started:three", "step.completed:three",
        "run.completed",
    ]
    two = [e for e in log.events(run_id) if isinstance(e, StepStarted) and e.step_key == "two"]
    assert two[0].payload.input == {"order": {"order_id": "ord-2"}}
    assert counter.counts == {"one": 1, "two": 1, "three": 1}


def test_a_resume_whose_history_covers_the_workers_own_writes_skips_the_log(
    topics: Settings, log: LogWatcher, control: ControlSender
) -> None:
    app = shop(topics)

    @app.workflow("napper")
    async def napper(ctx: WorkflowContext) -> Any:
        first = await ctx.step.run("one", lambda: 1)
        await ctx.step.sleep("nap", "1h")
        return first

    with WorkerThread(app, topics) as running:
        run_id = uuid.uuid4().hex
        send_command(control, topics, start_run(topics, run_id, "napper"))
        log.wait_for_type(run_id, "step.sleeping")
        parked = log.record_of(run_id, "step.sleeping")
        # What the fold sends once the sleep's step.completed (at or past the worker's last
        # write) is folded: a history that covers everything the worker wrote.
        history = {
            "one": StepRecord(kind=StepKind.RUN, status=StepStatus.COMPLETED, output=1),
            "nap": StepRecord(kind=StepKind.SLEEP, status=StepStatus.COMPLETED),
        }
        send_command(control, topics, resume_run(
            topics, run_id, "napper", history=history,
            position=(parked.partition, parked.offset),
        ))
        assert completed_output(log, run_id) == 1
        assert (running.worker.stats.passes, running.worker.stats.log_reads) == (2, 0)


def test_a_resume_without_a_position_uses_the_start_the_worker_handled(
    topics: Settings, log: LogWatcher, control: ControlSender
) -> None:
    app = shop(topics)

    @app.workflow("echo")
    async def echo(ctx: WorkflowContext) -> Any:
        return await ctx.step.run("echo", lambda x: x, input=ctx.event.data)

    # Back to back, before the worker has its partitions (so the start is not executed at
    # once): the resume is read while the start is still being written.
    run_id = uuid.uuid4().hex
    send_command(control, topics, start_run(topics, run_id, "echo", [1, 2, 3]))
    send_command(control, topics, resume_run(topics, run_id, "echo"))
    with WorkerThread(app, topics):
        assert completed_output(log, run_id) == [1, 2, 3]


def test_a_step_completed_in_the_commands_history_is_not_called_again(
    topics: Settings, log: LogWatcher, control: ControlSender
) -> None:
    counter = Counter()
    app = shop(topics)

    @app.workflow("order.process")
    async def process(ctx: WorkflowContext) -> Any:
        a = await ctx.step.run("one", counter.step("one", 1))
        b = await ctx.step.run("two", counter.step("two", 2))
        return a + b

    history = {"one": StepRecord(kind=StepKind.RUN, status=StepStatus.COMPLETED, output=40)}
    with WorkerThread(app, topics):
        run_id, position = begin(control, topics, log, "order.process")
        send_command(
            control, topics,
            resume_run(topics, run_id, "order.process", history=history, position=position),
        )
        assert completed_output(log, run_id) == 42
    assert counter.counts == {"two": 1}
    assert log.types(run_id) == [
        "run.started", "step.started:two", "step.completed:two", "run.completed"
    ]


def test_steps_written_after_the_commands_position_are_read_from_the_log_not_repeated(
    topics: Settings, log: LogWatcher, control: ControlSender
) -> None:
    counter = Counter()
    app = shop(topics)

    @app.workflow("order.process")
    async def process(ctx: WorkflowContext) -> Any:
        a = await ctx.step.run("one", counter.step("one", 1))
        b = await ctx.step.run("two", counter.step("two", 2))
        return [a, b]

    with WorkerThread(app, topics):
        run_id, position = begin(control, topics, log, "order.process")
        # What a worker that died before committing its command had written.
        common: dict[str, Any] = dict(
            project=topics.project, flow="order.process", run_id=run_id, step_key="one"
        )
        for event in (
            StepStarted(event_id=new_event_id(), ts=datetime.now(UTC), seq=1,
                        payload=StepStartedPayload(kind=StepKind.RUN), **common),
            StepCompleted(event_id=new_event_id(), ts=datetime.now(UTC), seq=2,
                          payload=StepCompletedPayload(output="from the log"), **common),
        ):
            control.send(topics.topics.events, run_id, event)
        resume(control, topics, run_id, "order.process", position)
        assert completed_output(log, run_id) == ["from the log", 2]
    assert counter.counts == {"two": 1}


def test_a_sleep_writes_step_sleeping_parks_the_run_and_commits_the_command(
    topics: Settings, log: LogWatcher, control: ControlSender
) -> None:
    app = shop(topics)

    @app.workflow("napper")
    async def napper(ctx: WorkflowContext) -> Any:
        await ctx.step.run("before", lambda: "ok")
        await ctx.step.sleep("nap", "1h")
        return await ctx.step.run("after", lambda: "never in this test")

    with WorkerThread(app, topics) as running:
        before = datetime.now(UTC)
        run_id, position = begin(control, topics, log, "napper")
        send_command(control, topics, resume_run(topics, run_id, "napper", position=position))
        sleeping = log.wait_for_type(run_id, "step.sleeping")
        wait_for(lambda: running.worker.stats.parked == 1, what="the pass parked")
        commands = [r for r in log.on(topics.topics.commands) if r.message.run_id == run_id]
        wait_for(
            lambda: all(committed(topics, running.worker.group_id, r) for r in commands),
            what="the commands committed",
        )
    assert isinstance(sleeping, StepSleeping)
    assert sleeping.payload.wake_at - before >= timedelta(minutes=59)
    assert log.types(run_id)[-3:] == [
        "step.completed:before", "step.started:nap", "step.sleeping:nap"
    ]
    assert "run.completed" not in log.types(run_id)


def committed(settings: Settings, group: str, record: Record) -> bool:
    async def offsets() -> dict[TopicPartition, Any]:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            return dict(await admin.list_consumer_group_offsets(group))
        finally:
            await admin.close()

    found = asyncio.run(offsets()).get(TopicPartition(record.topic, record.partition))
    return found is not None and found.offset > record.offset


def test_a_failing_step_writes_step_failed_with_its_retry_time_and_parks(
    topics: Settings, log: LogWatcher, control: ControlSender
) -> None:
    app = shop(topics, retries=RetryPolicy(attempts=3, initial_delay_ms=50))

    def flaky() -> None:
        raise ConnectionError("inventory service refused")

    @app.workflow("order.process")
    async def process(ctx: WorkflowContext) -> Any:
        return await ctx.step.run("reserve", flaky)

    with WorkerThread(app, topics) as running:
        run_id, position = begin(control, topics, log, "order.process")
        resume(control, topics, run_id, "order.process", position)
        failed = log.wait_for_type(run_id, "step.failed")
        wait_for(lambda: running.worker.stats.parked == 1, what="the pass parked")
    assert isinstance(failed, StepFailed)
    assert failed.payload.error.type == "ConnectionError"
    assert failed.payload.retry_at is not None
    assert timedelta(0) < failed.payload.retry_at - failed.ts <= timedelta(milliseconds=50)
    assert "run.failed" not in log.types(run_id)


def test_wait_for_event_registers_the_wait_on_the_signals_topic_before_step_waiting(
    topics: Settings, log: LogWatcher, control: ControlSender
) -> None:
    app = shop(topics)

    @app.workflow("order.process")
    async def process(ctx: WorkflowContext) -> Any:
        return await ctx.step.wait_for_event(
            "approval", event="order.approved", timeout="24h", match="data.order_id"
        )

    with WorkerThread(app, topics):
        run_id, position = begin(control, topics, log, "order.process", {"order_id": "ord-9"})
        resume(control, topics, run_id, "order.process", position)
        waiting = log.wait_for_type(run_id, "step.waiting")
    (registration,) = [
        r for r in log.on(topics.topics.signals) if isinstance(r.message, WaitRegistered)
    ]
    assert registration.key == b"order.approved"
    wait = registration.message
    assert wait.event_id == wait_registration_id(run_id, "approval", 1)
    assert (wait.run_id, wait.step_key, wait.flow, wait.app) == (
        run_id, "approval", "order.process", "shop"
    )
    assert (wait.match, wait.match_value) == ("data.order_id", "ord-9")
    assert isinstance(waiting, StepWaiting)
    assert waiting.payload.timeout_at == wait.timeout_at
    assert wait.ts <= waiting.ts  # acknowledged before step.waiting was even built


def test_cancel_run_stops_a_run_executing_here_and_nothing_more_is_written(
    topics: Settings, log: LogWatcher, control: ControlSender
) -> None:
    release = threading.Event()
    app = shop(topics)

    def hang() -> str:
        release.wait(60)
        return "finished anyway"

    @app.workflow("order.process")
    async def process(ctx: WorkflowContext) -> Any:
        await ctx.step.run("hang", hang)
        return await ctx.step.run("after", lambda: "never")

    try:
        with WorkerThread(app, topics) as running:
            run_id, position = begin(control, topics, log, "order.process")
            resume(control, topics, run_id, "order.process", position)
            log.wait_for_type(run_id, "step.started")
            send_command(control, topics, CancelRun(
                command_id=new_command_id(), project=topics.project, run_id=run_id,
                ts=datetime.now(UTC), app="shop", reason="customer asked",
            ))
            wait_for(lambda: running.worker.stats.cancelled == 1, what="the pass cancelled")
            release.set()
            assert log.types(run_id) == ["run.started", "step.started:hang"]
    finally:
        release.set()


def test_a_graceful_stop_interrupts_the_run_and_the_next_worker_resumes_it(
    topics: Settings, log: LogWatcher, control: ControlSender
) -> None:
    counter = Counter()
    entered, release = threading.Event(), threading.Event()

    def slow() -> str:
        entered.set()
        assert release.wait(60)
        return "slow done"

    def build() -> App:
        app = shop(topics)

        @app.workflow("order.process")
        async def process(ctx: WorkflowContext) -> Any:
            a = await ctx.step.run("slow", slow)
            b = await ctx.step.run("next", counter.step("next", "next done"))
            return [a, b]

        return app

    first = WorkerThread(build(), topics)
    with first:
        run_id, position = begin(control, topics, log, "order.process")
        resume(control, topics, run_id, "order.process", position)
        assert entered.wait(60)
        stopping = threading.Thread(target=first.stop)
        stopping.start()
        wait_for(lambda: first.worker._stopping, what="the stop began")
        release.set()
        stopping.join(60)
    interrupted = log.wait_for_type(run_id, "run.interrupted")
    assert isinstance(interrupted, RunInterrupted)
    assert interrupted.payload.reason == "worker stopped"
    assert "step.completed:slow" in log.types(run_id) and counter.counts == {}

    with WorkerThread(build(), topics):
        assert completed_output(log, run_id) == ["slow done", "next done"]
    types = log.types(run_id)
    assert types.count("step.started:slow") == 1 and counter.counts == {"next": 1}
    order = [types.index(t) for t in ("run.interrupted", "run.resumed", "run.completed")]
    assert order == sorted(order)


def test_a_killed_workers_run_is_finished_by_the_next_repeating_only_the_step_in_flight(
    topics: Settings, log: LogWatcher, control: ControlSender, tmp_path: Path
) -> None:
    with CrashyWorkers(topics, tmp_path) as workers:
        run_id, position = begin(control, topics, log, "crashy")
        send_command(control, topics, resume_run(topics, run_id, "crashy", position=position))
        workers.kill_the_first_in_step_two()
        assert completed_output(log, run_id, timeout=120) == ["one", "two", "three"]
        assert workers.side_effects() == ["one", "two", "two", "three"]
        assert log.types(run_id).count("step.completed:one") == 1
        workers.stop_the_second()
