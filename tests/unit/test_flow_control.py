"""Flow control's rules (processors/fold/flow_control.py), its options and the gate that holds
starts back (processors/flow_gate.py): pure, no broker."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from steplog.errors import WorkflowError
from steplog.processors.flow_gate import held_start, released_slot
from steplog.processors.fold.effects import SendCommand, WorkflowRunEnded
from steplog.processors.fold.flow_control import (
    FlowEffect,
    FlowKeyState,
    RECENT_RUNS,
    FlowStartChanged,
    apply_flow_message,
)
from steplog.processors.fold.run import fold_events
from steplog.producers.app import App
from steplog.producers.held_starts import scheduled_instead
from steplog.schemas.base import TriggerInfo
from steplog.schemas.commands import StartRun
from steplog.schemas.flow_control import (
    Concurrency,
    Debounce,
    FlowControl,
    FlowRunEnded,
    FlowStartRequested,
    FlowTick,
    RateLimit,
    Throttle,
)
from steplog.schemas.flows import WorkflowDefinition
from steplog.schemas.ids import derived_id
from tests.unit.test_fold import Run, at

T0 = 1_741_942_800_000  # ms


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def request(run_id: str, control: FlowControl, *, priority: int = 0,
            data: Any = None) -> FlowStartRequested:
    command = StartRun(command_id=derived_id("start", run_id), project="acme", run_id=run_id,
                       ts=_at(T0), workflow="sync", app="shop", input=data)
    return FlowStartRequested(event_id=derived_id("flow-start", run_id), project="acme",
                              app="shop", workflow="sync", key='"c1"', ts=_at(T0),
                              run_id=run_id, priority=priority, control=control, command=command)


def ended(run_id: str) -> FlowRunEnded:
    return FlowRunEnded(event_id=derived_id("flow-release", run_id), project="acme", app="shop",
                        workflow="sync", key='"c1"', ts=_at(T0), run_id=run_id)


def tick(due_ms: int) -> FlowTick:
    return FlowTick(event_id=derived_id("flow-tick", str(due_ms)), project="acme", app="shop",
                    workflow="sync", key='"c1"', ts=_at(due_ms), due=_at(due_ms))


def started(effects: list[FlowEffect]) -> list[str]:
    return [e.command.run_id for e in effects if isinstance(e, SendCommand)]


def rows(effects: list[FlowEffect]) -> dict[str, tuple[str, str]]:
    return {e.run_id: (e.status, e.reason) for e in effects if isinstance(e, FlowStartChanged)}


TWO_AT_ONCE = FlowControl(concurrency=Concurrency(limit=2, key="data.customer_id"))


def test_concurrency_lets_the_limit_run_and_the_rest_wait_in_order() -> None:
    state = FlowKeyState()
    first = apply_flow_message(state, request("r1", TWO_AT_ONCE), T0)
    assert (started(first), rows(first)) == (["r1"], {})  # never held back: no row
    assert started(apply_flow_message(state, request("r2", TWO_AT_ONCE), T0 + 1)) == ["r2"]
    third = apply_flow_message(state, request("r3", TWO_AT_ONCE), T0 + 2)
    assert started(third) == []
    assert rows(third) == {"r3": ("scheduled", "concurrency: 2 running")}
    apply_flow_message(state, request("r4", TWO_AT_ONCE), T0 + 3)

    freed = apply_flow_message(state, ended("r1"), T0 + 10)
    assert started(freed) == ["r3"]
    assert rows(freed)["r3"][0] == "started"
    assert started(apply_flow_message(state, ended("r2"), T0 + 11)) == ["r4"]


def test_an_admitted_start_is_the_requested_command_marked_admitted() -> None:
    state = FlowKeyState()
    asked = request("r1", TWO_AT_ONCE)
    (send,) = [e for e in apply_flow_message(state, asked, T0) if isinstance(e, SendCommand)]
    assert send.admitted and send.command == asked.command


def test_a_start_requested_twice_and_an_end_of_no_running_run_change_nothing() -> None:
    state = FlowKeyState()
    apply_flow_message(state, request("r1", TWO_AT_ONCE), T0)
    assert apply_flow_message(state, request("r1", TWO_AT_ONCE), T0 + 1) == []
    assert apply_flow_message(state, ended("elsewhere"), T0 + 2) == []
    apply_flow_message(state, ended("r1"), T0 + 3)
    assert apply_flow_message(state, ended("r1"), T0 + 4) == []  # a second end
    assert apply_flow_message(state, request("r1", TWO_AT_ONCE), T0 + 5) == []  # done already


def test_priority_orders_the_waiting_starts_then_arrival() -> None:
    one = FlowControl(concurrency=Concurrency(limit=1), priority="data.priority")
    state = FlowKeyState()
    apply_flow_message(state, request("first", one), T0)
    for n, (run_id, priority) in enumerate([("low", 0), ("high", 5), ("high-later", 5)]):
        apply_flow_message(state, request(run_id, one, priority=priority), T0 + n)
    order = [started(apply_flow_message(state, ended(run_id), T0 + 100 + n))
             for n, run_id in enumerate(["first", "high", "high-later"])]
    assert order == [["high"], ["high-later"], ["low"]]


def test_throttle_holds_starts_until_the_window_has_room() -> None:
    control = FlowControl(throttle=Throttle(limit=2, period_ms=1_000))
    state = FlowKeyState()
    for n in range(3):
        apply_flow_message(state, request(f"r{n}", control), T0 + n)
    assert state.next_due_ms() == T0 + 1_000  # the first start leaves the window
    assert rows(apply_flow_message(state, request("r3", control), T0 + 5))["r3"] == (
        "scheduled", "throttle: 2 starts per 1000 ms")
    assert started(apply_flow_message(state, tick(T0 + 1_000), T0 + 999)) == ["r2"]
    assert state.next_due_ms() == T0 + 1_001
    assert started(apply_flow_message(state, tick(T0 + 1_001), T0 + 1_001)) == ["r3"]
    assert state.next_due_ms() is None


def test_rate_limit_skips_starts_over_the_limit_with_a_reason() -> None:
    control = FlowControl(rate_limit=RateLimit(limit=1, period_ms=60_000))
    state = FlowKeyState()
    assert started(apply_flow_message(state, request("r1", control), T0)) == ["r1"]
    skipped = apply_flow_message(state, request("r2", control), T0 + 10)
    assert started(skipped) == []
    assert rows(skipped) == {"r2": ("skipped", "rate limit: 1 starts per 60000 ms")}
    assert started(apply_flow_message(state, request("r3", control), T0 + 60_000)) == ["r3"]


def test_debounce_starts_the_last_start_once_the_key_is_quiet() -> None:
    control = FlowControl(debounce=Debounce(period_ms=5_000))
    state = FlowKeyState()
    apply_flow_message(state, request("r1", control, data={"v": 1}), T0)
    replaced = apply_flow_message(state, request("r2", control, data={"v": 2}), T0 + 1_000)
    assert rows(replaced)["r1"] == ("skipped", "debounced: replaced by run r2")
    assert state.next_due_ms() == T0 + 6_000
    assert apply_flow_message(state, tick(T0 + 5_000), T0 + 5_000) == []  # a stale tick
    went = apply_flow_message(state, tick(T0 + 6_000), T0 + 6_000)
    (send,) = [e for e in went if isinstance(e, SendCommand)]
    assert isinstance(send.command, StartRun)
    assert (send.command.run_id, send.command.input) == ("r2", {"v": 2})


def test_the_state_survives_its_changelog_bytes() -> None:
    control = FlowControl(concurrency=Concurrency(limit=1), throttle=Throttle(limit=5,
                          period_ms=1_000), debounce=Debounce(period_ms=10))
    state = FlowKeyState()
    apply_flow_message(state, request("r1", control), T0)
    apply_flow_message(state, tick(T0 + 10), T0 + 10)
    apply_flow_message(state, request("r2", control), T0 + 20)
    apply_flow_message(state, tick(T0 + 30), T0 + 30)
    back = FlowKeyState.from_bytes(state.to_bytes())
    assert back == state
    assert started(apply_flow_message(back, ended("r1"), T0 + 40)) == ["r2"]


def test_the_last_runs_done_with_are_remembered_and_the_oldest_forgotten() -> None:
    state = FlowKeyState()
    for n in range(RECENT_RUNS + 1):
        state.remember(f"run {n}")  # a run id may hold spaces
    back = FlowKeyState.from_bytes(state.to_bytes())
    assert not back.knows("run 0") and back.knows("run 1") and back.knows(f"run {RECENT_RUNS}")
    assert not back.knows("run") and not back.knows("1")  # whole ids only


def test_a_state_of_another_format_is_refused_naming_both() -> None:
    with pytest.raises(ValueError, match="format '{\"waiting\".*'flow-key-state 2'"):
        FlowKeyState.from_bytes(b'{"waiting":[],"running":[]}')


# --- options and the gate ------------------------------------------------------------------


def definition(control: FlowControl | None) -> WorkflowDefinition:
    return WorkflowDefinition(project="acme", app="shop", name="sync", flow_control=control,
                              ts=_at(T0))


def test_the_gate_holds_a_controlled_start_under_its_key_value() -> None:
    control = FlowControl(concurrency=Concurrency(limit=1, key="data.customer.id"),
                          priority="data.rank")
    command = StartRun(command_id="c1", project="acme", run_id="r1", ts=_at(T0), workflow="sync",
                       app="shop", input={"customer": {"id": 7}, "rank": 3},
                       trigger=TriggerInfo(name="customer.updated", event_id="e1"))
    held = held_start(definition(control), command)
    assert held is not None
    assert (held.key, held.priority, held.topic_key) == ("7", 3, "acme/shop/sync/7")
    assert held_start(definition(None), command) is None
    assert held_start(definition(FlowControl(priority="data.rank")), command) is None


def test_a_run_end_frees_the_slot_of_the_key_its_start_had() -> None:
    control = FlowControl(concurrency=Concurrency(limit=1, key="event.name"))
    end = WorkflowRunEnded(project="acme", app="shop", workflow="sync", run_id="r1",
                           input_json='{"a":1}', trigger_event="customer.updated",
                           trigger_event_id="e1", ts=_at(T0), reason="run.completed")
    released = released_slot(definition(control), end)
    assert released is not None and released.key == '"customer.updated"'
    throttled = FlowControl(throttle=Throttle(limit=1, period_ms=10, key="event.name"))
    assert released_slot(definition(throttled), end) is None  # nothing counts running runs


def test_the_fold_says_when_a_workflow_run_ends() -> None:
    run = Run(run_id="r1", flow="sync")
    _, effects = fold_events([run.run_started(0, app="shop"), run.run_completed(1)])
    (end,) = [e for e in effects if isinstance(e, WorkflowRunEnded)]
    assert (end.app, end.workflow, end.run_id, end.ts) == ("shop", "sync", "r1", at(1))


def test_a_run_cancelled_before_it_started_ends_for_flow_control_when_it_starts() -> None:
    run = Run(run_id="r1", flow="sync")
    _, effects = fold_events([run.run_cancelled(0), run.run_started(1, app="shop")])
    (end,) = [e for e in effects if isinstance(e, WorkflowRunEnded)]
    assert (end.app, end.run_id) == ("shop", "r1")


def test_options_of_one_workflow_count_by_one_key() -> None:
    async def sync(ctx: Any) -> None:
        return None

    app = App("shop", project="acme")
    with pytest.raises(WorkflowError, match="concurrency.key='data.a', throttle.key='data.b'"):
        app.workflow("sync", concurrency=Concurrency(limit=1, key="data.a"),
                     throttle=Throttle(limit=1, period_ms=10, key="data.b"))(sync)
    with pytest.raises(ValueError, match="expected a path into the start's 'data'"):
        Concurrency(limit=1, key="customer_id")

    app.workflow("sync", concurrency=Concurrency(limit=3, key="data.customer_id"))(sync)

    (registered,) = app.definitions()
    assert registered.flow_control == FlowControl(
        concurrency=Concurrency(limit=3, key="data.customer_id"))


def test_a_worker_hands_a_start_written_elsewhere_to_the_gate_as_a_scheduled_run() -> None:
    async def sync(ctx: Any) -> None:
        return None

    app = App("shop", project="acme")
    app.workflow("limited", concurrency=Concurrency(limit=1))(sync)
    app.workflow("free", priority="data.rank")(sync)  # a priority alone holds nothing back
    command = StartRun(command_id="c1", project="acme", run_id="r1", ts=_at(T0),
                       workflow="limited", app="shop", input={"n": 1},
                       trigger=TriggerInfo(name="customer.updated", event_id="e1"))
    scheduled = scheduled_instead(command, app.workflows["limited"], "shop")
    assert scheduled is not None
    assert (scheduled.run_id, scheduled.flow, scheduled.payload.start_at) == ("r1", "limited",
                                                                               _at(T0))
    assert (scheduled.payload.app, scheduled.payload.input) == ("shop", {"n": 1})
    assert scheduled.payload.trigger == command.trigger
    again = scheduled_instead(command, app.workflows["limited"], "shop")
    assert again is not None and again.event_id == scheduled.event_id  # a re-delivery: a copy
    checked = command.model_copy(update={"flow_checked": True})
    assert scheduled_instead(checked, app.workflows["limited"], "shop") is None
    free = command.model_copy(update={"workflow": "free"})
    assert scheduled_instead(free, app.workflows["free"], "shop") is None
