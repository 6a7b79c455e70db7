"""Where flow control meets the engine's messages: which `start_run` is held back, and which run
end frees a slot (the dispatcher sends what these return to the flow topic).

A start of a workflow whose definition limits its starts (`FlowControl.limits_starts`) goes
to the flow topic as `flow.start_requested`, under its key value, instead of to the workers;
the flow consumer sends it on when the key's limits allow (processors/fold/flow_control.py).
A run of a workflow with a concurrency limit frees its slot when it ends: `flow.run_ended`,
under the key value its start had (computed again from the same input and trigger, with the
definition known now: a key path changed while runs were going leaves their old keys' slots
taken; docs/workflows.md, Flow control).

A start's priority is its workflow's `priority` expression evaluated here, once, on the start
(`start_priority`); the request carries the value, so the flow consumer only compares numbers.
"""

from __future__ import annotations

import json
import math

from steplog.errors import ExpressionError
from steplog.expressions import compile_expression
from steplog.schemas.commands import StartRun
from steplog.schemas.flow_control import (
    PRIORITY_MAX,
    PRIORITY_NAMES,
    FlowControl,
    FlowRunEnded,
    FlowStartRequested,
    flow_key_value,
    start_document,
)
from steplog.schemas.limits import JsonValue, REASON_MAX_CHARS
from steplog.schemas.flows import WorkflowDefinition
from steplog.schemas.ids import derived_id

from .fold.effects import WorkflowRunEnded

__all__ = ["held_start", "released_slot", "start_priority"]


def held_start(
    definition: WorkflowDefinition | None, command: StartRun
) -> FlowStartRequested | None:
    """The flow topic's request for `command`, if its workflow limits starts (None: send the
    command to the workers as it is)."""
    control = definition.flow_control if definition is not None else None
    if control is None or not control.limits_starts or command.app is None:
        return None
    trigger = command.trigger
    document = start_document(command.input, trigger.name if trigger else "",
                              trigger.event_id if trigger else "")
    priority, priority_error = start_priority(control, document)
    return FlowStartRequested(
        event_id=derived_id("flow-start", command.run_id), project=command.project,
        app=command.app, workflow=command.workflow, key=flow_key_value(control, document),
        ts=command.ts, run_id=command.run_id, priority=priority,
        priority_error=priority_error, control=control, command=command,
    )


def start_priority(
    control: FlowControl, document: dict[str, JsonValue]
) -> tuple[int, str | None]:
    """(priority, why it is 0 instead) of the start `document`: the priority expression's
    integer value (a finite double is truncated) clamped to +-PRIORITY_MAX; 0 and the reason
    when it has none (a missing field, another type, an expression the SDK did not check)."""
    if control.priority is None:
        return 0, None
    try:
        expression = compile_expression(control.priority, field="priority",
                                        names=PRIORITY_NAMES)
        value = expression.evaluate(document)
    except ExpressionError as exc:
        return 0, _reason(f"priority counted as 0: {exc}")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0, _reason(
            f"priority counted as 0: {control.priority!r} gave {value!r}, not a number"
        )
    return max(-PRIORITY_MAX, min(PRIORITY_MAX, int(value))), None


def _reason(text: str) -> str:
    return text if len(text) <= REASON_MAX_CHARS else text[: REASON_MAX_CHARS - 1] + "…"


def released_slot(
    definition: WorkflowDefinition | None, ended: WorkflowRunEnded
) -> FlowRunEnded | None:
    """The flow topic's note that `ended`'s run freed its slot, if its workflow counts running
    runs (None: nothing to free)."""
    control = definition.flow_control if definition is not None else None
    if control is None or control.concurrency is None:
        return None
    data = json.loads(ended.input_json) if ended.input_json else None
    document = start_document(data, ended.trigger_event, ended.trigger_event_id)
    return FlowRunEnded(
        event_id=derived_id("flow-release", ended.run_id), project=ended.project,
        app=ended.app, workflow=ended.workflow, key=flow_key_value(control, document),
        ts=ended.ts, run_id=ended.run_id, reason=ended.reason,
    )
