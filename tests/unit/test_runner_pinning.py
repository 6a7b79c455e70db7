"""Runner pinning, the pure parts: what the fold asks for a pinned child, where the dispatcher
sends it, which worker a command is addressed to, and which runner names are usable.

The real stack (two workers of different runner names, a runner that comes late) is
tests/integration/test_runner_pinning_e2e.py.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import cast

import pytest

from steplog.errors import WorkflowError
from steplog.processors.dispatch import Planned
from steplog.processors.fold.effects import RunRowChanged, SendCommand, SetTimer
from steplog.processors.fold.run import apply_event, fold_events
from steplog.processors.fold.state import RunState
from steplog.producers.command_intake import CommandIntake
from steplog.producers.command_commits import CommandCommits
from steplog.producers.run_executor import RunExecutor
from steplog.producers.runner_names import check_runner_name
from steplog.producers.workflow import ServedApp
from steplog.schemas.codec import decode_command, decode_event
from steplog.schemas.commands import CancelRun, ResumeRun, StartRun
from steplog.schemas.events import (
    RunScheduled,
    RunScheduledPayload,
    StepInvoked,
    StepInvokedPayload,
)
from steplog.schemas.ids import derived_id
from steplog.settings import Settings
from tests.unit.test_dispatch import TOPICS, FakeProducer, dispatcher, registry
from tests.unit.test_fold import Run, at
from tests.unit.test_fold_effects import APP, after, commands

GPU = "gpu-1"


def pinned_invoke(r: Run, runner: str | None = GPU) -> StepInvoked:
    return StepInvoked(**r._envelope(1, None, 1), step_key="train", payload=StepInvokedPayload(
        child_run_id="child-1", workflow="fraud.check", data={"n": 1}, runner=runner))


def test_a_pinned_child_is_started_with_its_runner() -> None:
    r = Run(run_id="order-1", flow="order.process")
    _, effects = after([r.run_started(0, app=APP), pinned_invoke(r)])
    (start,) = commands(effects)
    assert isinstance(start, StartRun)
    assert (start.run_id, start.app, start.runner) == ("child-1", APP, GPU)


def test_a_pinned_run_names_its_runner_in_every_command_the_fold_sends() -> None:
    child = Run(run_id="child-1", flow="fraud.check")
    started = child.run_started(0, app=APP, runner=GPU)
    state, effects = after([started])
    (resume,) = commands(effects)
    assert isinstance(resume, ResumeRun) and resume.runner == GPU

    _, effects = apply_event(state, child.run_cancelled(1))
    (cancel,) = [c for c in commands(effects) if isinstance(c, CancelRun)]
    assert cancel.runner == GPU


def test_a_childs_pinned_schedule_shows_it_scheduled_and_sets_no_start_timer() -> None:
    # Its start_run went out with it; a timer would send a second one without the parent.
    child = Run(run_id="child-1", flow="fraud.check")
    scheduled = RunScheduled(**child._envelope(0, 0, 1), payload=RunScheduledPayload(
        start_at=at(0), app=APP, runner=GPU))
    state, effects = apply_event(None, scheduled)
    assert not [e for e in effects if isinstance(e, SetTimer)]
    (row,) = [e.row for e in effects if isinstance(e, RunRowChanged)]
    assert (row.status, row.scheduled_for) == ("scheduled", at(0))

    state, effects = apply_event(state, child.run_started(5, app=APP, runner=GPU))
    (row,) = [e.row for e in effects if isinstance(e, RunRowChanged)]
    assert row.status == "running"


def test_a_state_folded_with_a_runner_reads_back_with_it() -> None:
    child = Run(run_id="child-1", flow="fraud.check")
    state, _ = fold_events([child.run_started(0, app=APP, runner=GPU)])
    assert state is not None
    read = RunState.from_bytes(state.to_bytes())
    assert read.started is not None and read.started.runner == GPU


def test_the_dispatcher_sends_a_pinned_start_to_the_runner_topic_with_the_childs_schedule(
) -> None:
    r = Run(run_id="order-1", flow="order.process")
    _, effects = after([r.run_started(0, app=APP), pinned_invoke(r)])
    producer = FakeProducer()
    asyncio.run(dispatcher(producer, registry((APP, "fraud.check"))).carry_out(
        [Planned(effect) for effect in effects if isinstance(effect, SendCommand)]))

    assert producer.on(TOPICS.commands) == []
    ((key, value),) = producer.on(TOPICS.runner_commands)
    assert key == b"child-1" and decode_command(value).runner == GPU
    ((key, value),) = producer.on(TOPICS.events)
    schedule = decode_event(value)
    assert key == b"child-1" and isinstance(schedule, RunScheduled)
    assert schedule.event_id == derived_id("pinned-start", "child-1")
    assert (schedule.payload.runner, schedule.payload.app, schedule.payload.input) == (
        GPU, APP, {"n": 1})


def test_an_unpinned_child_goes_to_the_commands_topic_alone() -> None:
    r = Run(run_id="order-1", flow="order.process")
    _, effects = after([r.run_started(0, app=APP), pinned_invoke(r, runner=None)])
    producer = FakeProducer()
    asyncio.run(dispatcher(producer, registry((APP, "fraud.check"))).carry_out(
        [Planned(effect) for effect in effects if isinstance(effect, SendCommand)]))
    assert len(producer.on(TOPICS.commands)) == 1
    assert producer.on(TOPICS.runner_commands) == producer.on(TOPICS.events) == []


def intake(runner: str) -> CommandIntake:
    app = SimpleNamespace(project="acme", name=APP, workflows={"fraud.check": None})
    executor = SimpleNamespace(runner=runner)
    return CommandIntake(cast(ServedApp, app), cast(Settings, None),
                         cast(RunExecutor, executor), CommandCommits(), concurrency=1)


@pytest.mark.parametrize(("pin", "runner", "addressed"), [
    (GPU, GPU, True), (GPU, "cpu-1", False), (None, "cpu-1", True),
])
def test_a_command_pinned_to_a_runner_is_for_that_runners_workers_only(
    pin: str | None, runner: str, addressed: bool
) -> None:
    start = StartRun(command_id="c1", project="acme", run_id="child-1", ts=at(0),
                     workflow="fraud.check", app=APP, runner=pin)
    cancel = CancelRun(command_id="c2", project="acme", run_id="child-1", ts=at(0), app=APP,
                       runner=pin)
    assert intake(runner)._addressed_here(start) is addressed
    assert intake(runner)._addressed_here(cancel) is addressed


@pytest.mark.parametrize("bad", ["", "gpu\n1", "x" * 201, 7])
def test_an_unusable_runner_name_is_refused_naming_where_and_what(bad: object) -> None:
    with pytest.raises(WorkflowError, match=r"step 'train': runner: .* is not a runner name"):
        check_runner_name(bad, "step 'train': runner")
