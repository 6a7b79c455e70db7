"""Flow control's priority: a CEL expression on the start (processors/flow_gate.py), checked
where the workflow is declared (producers/workflow.py); pure, no broker."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from steplog.errors import ExpressionError
from steplog.processors.flow_gate import held_start
from steplog.processors.fold.flow_control import FlowKeyState, apply_flow_message
from steplog.producers.app import App
from steplog.schemas.base import TriggerInfo
from steplog.schemas.commands import StartRun
from steplog.schemas.flow_control import PRIORITY_MAX, Concurrency, FlowControl
from steplog.schemas.flows import WorkflowDefinition
from tests.unit.test_flow_control import rows

TS = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)
PLAN = "event.data.plan == 'enterprise' ? 120 : 0"


def priority_of(expression: str, data: Any) -> tuple[int, str | None]:
    control = FlowControl(concurrency=Concurrency(limit=1), priority=expression)
    definition = WorkflowDefinition(project="acme", app="shop", name="sync",
                                    flow_control=control, ts=TS)
    command = StartRun(command_id="c1", project="acme", run_id="r1", ts=TS, workflow="sync",
                       app="shop", input=data,
                       trigger=TriggerInfo(name="customer.updated", event_id="e1"))
    held = held_start(definition, command)
    assert held is not None
    return held.priority, held.priority_error


@pytest.mark.parametrize(
    ("expression", "data", "expected"),
    [
        (PLAN, {"plan": "enterprise"}, 120),  # the (Inngest's) example
        (PLAN, {"plan": "free"}, 0),
        ("data.tier", {"tier": 3}, 3),  # a dotted path, as before: an expression too
        ("event.data.tier * 10", {"tier": 3}, 30),
        ("event.name == 'customer.updated' ? -5 : 5", None, -5),  # the trigger
        ("data.score", {"score": 2.9}, 2),  # a double is truncated
        ("data.n", {"n": 10**12}, PRIORITY_MAX),  # clamped to the documented range
        ("-data.n", {"n": 10**12}, -PRIORITY_MAX),
    ],
)
def test_the_priority_expression_is_evaluated_on_the_start(
    expression: str, data: Any, expected: int
) -> None:
    assert priority_of(expression, data) == (expected, None)


@pytest.mark.parametrize(
    ("expression", "data", "why"),
    [
        (PLAN, {}, "no field 'plan'"),
        ("data.tier", {"tier": "gold"}, "gave 'gold', not a number"),
        ("data.tier > 1", {"tier": 3}, "gave True, not a number"),
        ("data.tier / 0", {"tier": 3}, "division by zero"),
        ("data.tier +", {"tier": 3}, "is not a valid expression"),  # an unchecked definition
    ],
)
def test_a_start_without_a_priority_value_counts_as_0_with_the_reason(
    expression: str, data: Any, why: str
) -> None:
    priority, error = priority_of(expression, data)
    assert priority == 0
    assert error is not None and error.startswith("priority counted as 0: ") and why in error


def test_the_reason_is_in_the_waiting_starts_row() -> None:
    control = FlowControl(concurrency=Concurrency(limit=1), priority=PLAN)
    definition = WorkflowDefinition(project="acme", app="shop", name="sync",
                                    flow_control=control, ts=TS)
    state = FlowKeyState()
    for run_id in ("r1", "r2"):
        command = StartRun(command_id=run_id, project="acme", run_id=run_id, ts=TS,
                           workflow="sync", app="shop", input={})
        held = held_start(definition, command)
        assert held is not None
        effects = apply_flow_message(state, held, 1_741_942_800_000)
    status, reason = rows(effects)["r2"]
    assert status == "scheduled"
    assert reason.startswith("concurrency: 1 running; priority counted as 0: ")
    assert "no field 'plan'" in reason


async def _sync(ctx: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("event.data.plan ==", "is not a valid expression"),
        ("run.id", "uses 'run'; an expression can use only 'data', 'event'"),
    ],
)
def test_a_bad_priority_is_refused_where_the_workflow_is_declared(
    expression: str, expected: str
) -> None:
    app = App("shop", project="acme")
    with pytest.raises(ExpressionError, match="^workflow 'sync': priority: ") as refused:
        app.workflow("sync", concurrency=Concurrency(limit=1), priority=expression)(_sync)
    assert expected in str(refused.value)
    app.workflow("sync", concurrency=Concurrency(limit=1), priority=PLAN)(_sync)
