"""Carrying out engine effects: messages, app resolution, parents of child runs, acks, retries.

The producer is a fake that records what was sent (and can fail); the registry is real.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from typing import Any

from steplog.processors.dispatch import Dispatcher, Planned
from steplog.processors.fold.effects import (
    AppResolution,
    ClearTimer,
    EndParentStep,
    ParentStep,
    SendCommand,
    SetTimer,
    TimerKind,
    WriteEvent,
)
from steplog.processors.fold.run import fold_events
from steplog.processors.registry import WorkflowRegistry
from steplog.processors.fold.workflow import resume_command
from steplog.schemas.base import ErrorInfo
from steplog.schemas.codec import decode_command, decode_event
from steplog.schemas.commands import ResumeRun, StartRun
from steplog.schemas.events import RunFailed, StepCompleted, StepFailed
from steplog.schemas.flows import WorkflowDefinition
from steplog.schemas.ids import derived_id
from steplog.schemas.topics import TopicNames
from tests.unit.test_fold import Run, at
from tests.unit.test_fold_effects import APP, invoked

TOPICS = TopicNames.with_prefix("t.")
NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
PARENT = ParentStep("acme", "order.process", "order-1", "fraud", 1)


class FakeProducer:
    """Records every acknowledged message; the first `failures` sends fail."""

    def __init__(self, failures: int = 0) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.failures = failures

    async def send(self, topic: str, key: bytes | None, value: bytes) -> Any:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if self.failures:
            self.failures -= 1
            future.set_exception(ConnectionError("broker went away"))
        else:
            self.sent.append((topic, key, value))
            future.set_result(None)
        return future

    def on(self, topic: str) -> list[tuple[bytes | None, bytes]]:
        return [(key, value) for sent_to, key, value in self.sent if sent_to == topic]


def registry(*apps_and_workflows: tuple[str, str]) -> WorkflowRegistry:
    known = WorkflowRegistry()
    for app, name in apps_and_workflows:
        known.remember(WorkflowDefinition(project="acme", app=app, name=name, ts=NOW))
    return known


def dispatcher(producer: FakeProducer, known: WorkflowRegistry | None = None,
               max_bytes: int = 1024 * 1024) -> Dispatcher:
    return Dispatcher(TOPICS, producer.send, registry() if known is None else known,
                      max_bytes=max_bytes,
                      clock=lambda: NOW)


def child_start(app: str = APP, exact: bool = False) -> SendCommand:
    return SendCommand(
        StartRun(command_id="c1", project="acme", run_id="child-1", ts=NOW,
                 workflow="fraud.check", app=app, parent_run_id="order-1",
                 parent_step_key="fraud"),
        resolve_app=AppResolution(preferred=app, exact=exact),
        parent=PARENT,
    )


def test_a_resume_of_the_folded_run_is_stamped_with_the_events_position() -> None:
    r = Run(run_id="order-1", flow="order.process")
    state, _ = fold_events([r.run_started(0, app=APP)])
    producer = FakeProducer()
    asyncio.run(dispatcher(producer).carry_out(
        [Planned(SendCommand(resume_command(state, "r1", "started", at(0))), b"k", (2, 41))]))
    ((key, value),) = producer.on(TOPICS.commands)
    command = decode_command(value)
    assert key == b"order-1" and isinstance(command, ResumeRun)
    assert (command.history_partition, command.history_offset) == (2, 41)


def test_every_start_sent_to_the_workers_is_marked_past_the_flow_gate() -> None:
    # Workers hand unmarked starts of a limited workflow back (producers/held_starts.py).
    producer = FakeProducer()
    asyncio.run(dispatcher(producer, registry((APP, "fraud.check"))).carry_out(
        [Planned(child_start()), Planned(SendCommand(child_start().command, admitted=True))]))
    sent = [decode_command(value) for _, value in producer.on(TOPICS.commands)]
    assert [isinstance(c, StartRun) and c.flow_checked for c in sent] == [True, True]


def test_a_child_starts_in_the_calling_app_else_in_another_that_defines_it() -> None:
    producer = FakeProducer()
    known = registry((APP, "fraud.check"), ("risk", "fraud.check"))
    asyncio.run(dispatcher(producer, known).carry_out([Planned(child_start())]))
    assert decode_command(producer.on(TOPICS.commands)[0][1]).app == APP

    producer = FakeProducer()
    known = registry(("risk", "fraud.check"), ("audit", "fraud.check"))
    dispatch = dispatcher(producer, known)
    asyncio.run(dispatch.carry_out([Planned(child_start())]))
    assert decode_command(producer.on(TOPICS.commands)[0][1]).app == "audit"


def test_a_child_no_app_defines_fails_the_parents_step_instead() -> None:
    producer = FakeProducer()
    dispatch = dispatcher(producer, registry(("risk", "other")))
    asyncio.run(dispatch.carry_out([Planned(child_start())]))
    assert producer.on(TOPICS.commands) == []
    ((key, value),) = producer.on(TOPICS.events)
    failed = decode_event(value)
    assert key == b"order-1" and isinstance(failed, StepFailed)
    assert failed.event_id == derived_id("child-end", "child-1")
    assert (failed.flow, failed.step_key, failed.attempt) == ("order.process", "fraud", 1)
    assert failed.payload.non_retriable
    assert failed.payload.error.message == (
        "no workflow named 'fraud.check' in any app of project 'acme'")

    producer = FakeProducer()
    known = registry((APP, "fraud.check"))
    asyncio.run(dispatcher(producer, known).carry_out([Planned(child_start("billing", True))]))
    failed = decode_event(producer.on(TOPICS.events)[0][1])
    assert isinstance(failed, StepFailed)
    assert "no workflow named 'fraud.check' in app 'billing'" in failed.payload.error.message


def test_a_childs_end_completes_or_fails_the_parents_step_it_names() -> None:
    # Any process may fold the child's end: its run.started names the parent's workflow and
    # step attempt, so no index is needed (this dispatcher started nothing).
    producer = FakeProducer()
    dispatch = dispatcher(producer)
    end = EndParentStep(project="acme", parent_run_id="order-1", parent_step_key="fraud",
                        child_run_id="child-1", output={"verdict": "ok"}, error=None, ts=NOW,
                        parent_flow="order.process", parent_step_attempt=2)
    asyncio.run(dispatch.carry_out([Planned(end)]))
    ((key, value),) = producer.on(TOPICS.events)
    completed = decode_event(value)
    assert key == b"order-1" and isinstance(completed, StepCompleted)
    assert (completed.flow, completed.step_key, completed.attempt) == ("order.process", "fraud", 2)
    assert completed.payload.output == {"verdict": "ok"}
    assert completed.event_id == derived_id("child-end", "child-1")

    failure = ErrorInfo(type="WorkflowError", message="fraud suspected")
    asyncio.run(dispatch.carry_out([Planned(dataclasses.replace(
        end, child_run_id="child-2", output=None, error=failure))]))
    failed = decode_event(producer.on(TOPICS.events)[1][1])
    assert isinstance(failed, StepFailed)
    assert failed.payload.error == failure and failed.payload.non_retriable


def test_an_older_childs_end_is_reported_from_the_parents_index_once() -> None:
    # A child whose run.started does not name them: the parent's workflow and attempt come
    # from the index the dispatcher rebuilt from the parents' states.
    producer = FakeProducer()
    dispatch = dispatcher(producer)
    dispatch.parents["child-1"] = PARENT
    end = EndParentStep(project="acme", parent_run_id="order-1", parent_step_key="fraud",
                        child_run_id="child-1", output={"verdict": "ok"}, error=None, ts=NOW)
    asyncio.run(dispatch.carry_out([Planned(end)]))
    completed = decode_event(producer.on(TOPICS.events)[0][1])
    assert isinstance(completed, StepCompleted) and completed.payload.output == {"verdict": "ok"}
    assert (completed.flow, completed.attempt) == ("order.process", 1)
    assert dispatch.parents == {}

    # Reported once: a second end of the same child (a re-delivery) finds no parent here.
    asyncio.run(dispatch.carry_out([Planned(end)]))
    assert len(producer.on(TOPICS.events)) == 1


def test_parents_are_learned_from_the_states_of_runs_with_running_children() -> None:
    r = Run(run_id="order-1", flow="order.process")
    state, _ = fold_events([r.run_started(0, app=APP), invoked(r, "fraud", 1, "child-1"),
                            invoked(r, "done", 2, "child-2"), r.completed("done", 3)])
    dispatch = dispatcher(FakeProducer())
    dispatch.remember_parents(b"k", state)
    assert dispatch.parents == {"child-1": PARENT}


def test_timer_changes_and_unresolved_starts_are_handed_back() -> None:
    timer = SetTimer(TimerKind.WAKE, "nap", 1, NOW)
    start = SendCommand(
        StartRun(command_id="s", project="acme", run_id="later", ts=NOW, workflow="nobody"),
        resolve_app=AppResolution(preferred="", exact=False),
    )
    producer = FakeProducer()
    result = asyncio.run(dispatcher(producer).carry_out([
        Planned(timer, b"run-a"), Planned(ClearTimer(TimerKind.START, ""), b"run-b"),
        Planned(start, b"run-c"),
    ]))
    assert result.timers == [(b"run-a", timer), (b"run-b", ClearTimer(TimerKind.START, ""))]
    assert result.unresolved == [(b"run-c", start)]
    assert producer.sent == []


def test_a_send_that_fails_is_sent_again_until_acknowledged() -> None:
    producer = FakeProducer(failures=2)
    r = Run(run_id="order-1", flow="order.process")
    event = r.completed("nap", 5)
    asyncio.run(dispatcher(producer).carry_out([Planned(WriteEvent(event))]))
    assert [decode_event(value) for _, value in producer.on(TOPICS.events)] == [event]


def test_a_resume_too_large_to_send_fails_the_run_loudly() -> None:
    r = Run(run_id="order-1", flow="order.process")
    state, _ = fold_events([r.run_started(0, app=APP),
                            r.completed("big", 1, output="x" * 4096)])
    producer = FakeProducer()
    asyncio.run(dispatcher(producer, max_bytes=2048).carry_out(
        [Planned(SendCommand(resume_command(state, "r1", "started", at(1))), b"k", (0, 1))]))
    assert producer.on(TOPICS.commands) == []
    failed = decode_event(producer.on(TOPICS.events)[0][1])
    assert isinstance(failed, RunFailed) and failed.payload.error.type == "CommandTooLarge"


def test_the_registry_keeps_the_newest_definition_and_resolves_by_name() -> None:
    known = registry(("b-app", "w"), ("a-app", "w"))
    assert known.apps("acme", "w") == ["a-app", "b-app"]
    assert known.resolve("acme", "w", AppResolution("b-app", exact=True)) == "b-app"
    assert known.resolve("acme", "w", AppResolution("c-app", exact=False)) == "a-app"
    assert known.resolve("acme", "w", AppResolution("c-app", exact=True)) is None
    assert known.resolve("other", "w", AppResolution("", exact=False)) is None
    assert not known.remember(WorkflowDefinition(project="acme", app="a-app", name="w",
                                                 triggers=["x"], ts=NOW))
    assert len(known) == 2
