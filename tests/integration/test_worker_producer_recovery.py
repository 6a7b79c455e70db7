"""The worker's and the client's idempotent producers after they lose their sequence state, on
the real broker: the broker itself refuses the next batch (OutOfOrderSequenceNumber), as it does
after a batch that expired while its partition had no leader, and the producer is replaced and
the write sent again (producers.renewable_producer) instead of failing for the rest of the run.

The gap is made by moving the producer's own sequence counters ahead, which is what a numbered
batch that failed leaves behind; the broker's answer to it is real."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from steplog.producers.app import App
from steplog.producers.context import WorkflowContext
from steplog.producers.control import ControlSender
from steplog.schemas.commands import StartRun, new_command_id
from steplog.schemas.events import RunCompleted, StepCompleted
from steplog.settings import Settings
from tests.workflow_harness import Counter, LogWatcher, WorkerThread

STEPS = [f"s{n}" for n in range(10)]


def _open_a_gap(producer: AIOKafkaProducer) -> None:
    """Move every partition's next sequence number of `producer` ahead: the broker then
    refuses its next batch to each (OutOfOrderSequenceNumber)."""
    manager = producer._txn_manager
    for partition in list(manager._sequence_numbers):
        manager.increment_sequence_number(partition, 3)


@pytest.fixture
def control(topics: Settings) -> Iterator[ControlSender]:
    sender = ControlSender(topics.kafka_bootstrap, max_event_bytes=topics.max_event_bytes)
    try:
        yield sender
    finally:
        sender.close()


def test_a_worker_whose_producer_lost_its_sequence_completes_the_run_each_step_once(
    topics: Settings, control: ControlSender
) -> None:
    counter = Counter()
    app = App("shop", project=topics.project, settings=topics)
    holder: dict[str, WorkerThread] = {}

    async def break_the_producer() -> str:
        renewable = holder["running"].worker._producer
        assert renewable is not None
        assert renewable._producer is not None
        _open_a_gap(renewable._producer)
        return "broken"

    @app.workflow("order.process")
    async def process(ctx: WorkflowContext) -> Any:
        done = []
        for name in STEPS:
            done.append(await ctx.step.run(name, counter.step(name, name)))
            if name == "s2":
                await ctx.step.run("gap", break_the_producer)
        return done

    with LogWatcher(topics) as log, WorkerThread(app, topics) as running:
        holder["running"] = running
        run_id = uuid.uuid4().hex
        control.send(topics.topics.commands, run_id, StartRun(
            command_id=new_command_id(), project=topics.project, run_id=run_id,
            ts=datetime.now(UTC), workflow="order.process", app="shop",
        ))
        completed = log.wait_for_type(run_id, "run.completed", timeout=30)
        renewals = running.worker._producer.renewals  # type: ignore[union-attr]
    assert isinstance(completed, RunCompleted) and completed.payload.output == STEPS
    assert counter.counts == {name: 1 for name in STEPS}
    assert renewals == 1
    # Every step completed once (a re-sent copy has the same event id, which the fold drops).
    completions = {(e.step_key, e.event_id) for e in log.events(run_id)
                   if isinstance(e, StepCompleted)}
    assert sorted(key for key, _ in completions) == sorted([*STEPS, "gap"])


def test_a_control_call_after_the_producer_lost_its_sequence_is_acknowledged(
    topics: Settings, control: ControlSender
) -> None:
    def start(run_id: str) -> StartRun:
        return StartRun(
            command_id=new_command_id(), project=topics.project, run_id=run_id,
            ts=datetime.now(UTC), workflow="order.process", app="nobody",
        )

    control.send(topics.topics.commands, "run-a", start("run-a"))

    async def gap() -> None:
        assert control._producer is not None
        assert control._producer._producer is not None
        _open_a_gap(control._producer._producer)

    control.submit(gap()).result(10)
    control.send(topics.topics.commands, "run-a", start("run-a"))  # raised SendError before
    control.send(topics.topics.commands, "run-a", start("run-a"))
    assert control._producer is not None and control._producer.renewals == 1
