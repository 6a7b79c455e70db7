"""Golden examples: one canonical message of every type, the test vectors for other SDKs.

`python -m steplog.schemas.export` writes each to `examples/<type>.json`. An SDK in another
language passes when it decodes every file and its encoder writes the same JSON value back.
Ids and timestamps are fixed so that the files only change when the schema does.

They tell one story: a run of the `checkout` workflow of the `shop` app, started by an
`order.created` signal. Its steps run in parallel branches, which is why their times overlap.

`next_minor_document` writes each of them as a writer of the next minor version would
(`examples/next/<type>.json`): the same message with fields this build does not know, at the
top and in every nested model. A reader passes when it reads each as the message it extends
(schemas/COMPATIBILITY.md, "Testing the rules").
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final, TypedDict
from uuid import NAMESPACE_URL, uuid5

from pydantic import JsonValue

from .errors import InvalidEventError

from .base import ErrorInfo, TriggerInfo, WireModel
from .codec import decode_event, encode
from .commands import COMMAND_TYPES, CancelRun, ResumeRun, StartRun, StepRecord
from .dead_letters import DeadLetter
from .events import (
    EVENT_TYPES,
    RunCancelled,
    RunCancelledPayload,
    RunCompleted,
    RunCompletedPayload,
    RunFailed,
    RunFailedPayload,
    RunInterrupted,
    RunInterruptedPayload,
    RunResumed,
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
    StepSkipped,
    StepSkippedPayload,
    StepSleeping,
    StepSleepingPayload,
    StepStarted,
    StepStartedPayload,
    StepWaiting,
    StepWaitingPayload,
)
from .flow_control import Concurrency, FlowControl
from .flows import FlowDefinition, FlowEdge, FlowStep, RetryPolicy, WorkflowDefinition
from .signals import (
    SIGNALS_MESSAGE_TYPES,
    Signal,
    TriggerRegistered,
    WaitEnded,
    WaitRegistered,
)
from .statuses import StepStatus

PROJECT = "acme"
APP = "shop"
FLOW = "checkout"
RUN_ID = "run_01HZX3K9Q8ZP4T6W2M5N7B1C3D"
CHILD_RUN_ID = "run_01HZX3KB2V7R9S0Q4P6N8M1L2K"
_T0 = datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=UTC)


def _id(name: str) -> str:
    # Looks like what new_event_id() makes, but is the same on every machine and every run.
    return uuid5(NAMESPACE_URL, f"https://steplog.invalid/golden/{name}").hex


def _at(seconds: float) -> datetime:
    return _T0 + timedelta(seconds=seconds)


_ORDER: dict[str, JsonValue] = {"order_id": "ord_1042", "amount_cents": 4200, "currency": "EUR"}
_TRIGGER = TriggerInfo(name="order.created", event_id=_id("signal"))


class _RunFields(TypedDict):
    project: str
    flow: str
    run_id: str


_RUN = _RunFields(project=PROJECT, flow=FLOW, run_id=RUN_ID)


def _events() -> list[WireModel]:
    return [
        StepStarted(
            event_id=_id("step.started"),
            **_RUN,
            ts=_at(1),
            seq=2,
            step_key="charge",
            payload=StepStartedPayload(
                kind=StepKind.RUN,
                input={"order_id": "ord_1042", "amount_cents": 4200},
                metadata={"region": "eu-west-1", "items": 3, "express": False},
            ),
        ),
        StepCompleted(
            event_id=_id("step.completed"),
            **_RUN,
            ts=_at(1.25),
            seq=3,
            step_key="charge",
            payload=StepCompletedPayload(
                output={"charge_id": "ch_9a8b7c", "captured": True},
                duration_ms=250.5,
                metadata={"http_status": 200},
            ),
        ),
        StepFailed(
            event_id=_id("step.failed"),
            **_RUN,
            attempt=1,
            ts=_at(2),
            seq=4,
            step_key="reserve-stock",
            payload=StepFailedPayload(
                error=ErrorInfo(
                    type="TimeoutError",
                    message="inventory service did not answer within 5s",
                    stack='Traceback (most recent call last):\n  File "shop.py", line 42, in '
                    "reserve\nTimeoutError: inventory service did not answer within 5s",
                ),
                duration_ms=5000.0,
                retry_at=_at(12),
                metadata={"attempts_left": 2},
            ),
        ),
        StepSkipped(
            event_id=_id("step.skipped"),
            **_RUN,
            ts=_at(3),
            seq=5,
            step_key="apply-coupon",
            payload=StepSkippedPayload(reason="no coupon on the order"),
        ),
        StepSleeping(
            event_id=_id("step.sleeping"),
            **_RUN,
            ts=_at(4),
            seq=6,
            step_key="wait-for-settlement",
            payload=StepSleepingPayload(wake_at=_at(3604)),
        ),
        StepWaiting(
            event_id=_id("step.waiting"),
            **_RUN,
            # A producer in another time zone: offsets other than Z must round-trip too.
            ts=datetime(2025, 3, 14, 11, 26, 58, 589000, tzinfo=timezone(timedelta(hours=2))),
            seq=7,
            step_key="await-approval",
            payload=StepWaitingPayload(
                event="order.approved",
                timeout_at=_at(86405),
                match="data.order_id",
                match_value="ord_1042",
            ),
        ),
        StepInvoked(
            event_id=_id("step.invoked"),
            **_RUN,
            ts=_at(6),
            seq=8,
            step_key="fraud",
            payload=StepInvokedPayload(
                child_run_id=CHILD_RUN_ID,
                workflow="order.fraud-check",
                app="risk",
                data={"order_id": "ord_1042"},
            ),
        ),
        RunScheduled(
            event_id=_id("run.scheduled"),
            **_RUN,
            ts=_at(0),
            seq=0,
            payload=RunScheduledPayload(
                start_at=_at(0.5), app=APP, input=_ORDER, trigger=_TRIGGER
            ),
        ),
        RunStarted(
            event_id=_id("run.started"),
            **_RUN,
            ts=_at(0.5),
            seq=1,
            payload=RunStartedPayload(app=APP, input=_ORDER, trigger=_TRIGGER),
        ),
        RunCompleted(
            event_id=_id("run.completed"),
            **_RUN,
            ts=_at(90000),
            seq=12,
            payload=RunCompletedPayload(output={"status": "shipped", "tracking": None}),
        ),
        RunFailed(
            event_id=_id("run.failed"),
            **_RUN,
            attempt=3,
            ts=_at(90000),
            seq=12,
            payload=RunFailedPayload(
                error=ErrorInfo(
                    type="NonRetriableError", message="card declined: insufficient funds"
                )
            ),
        ),
        RunCancelled(
            event_id=_id("run.cancelled"),
            **_RUN,
            ts=_at(90000),
            seq=12,
            payload=RunCancelledPayload(reason="order withdrawn by the customer"),
        ),
        RunInterrupted(
            event_id=_id("run.interrupted"),
            **_RUN,
            ts=_at(7),
            seq=9,
            payload=RunInterruptedPayload(reason="worker restart"),
        ),
        RunResumed(event_id=_id("run.resumed"), **_RUN, ts=_at(8), seq=10),
    ]


def _signals_messages() -> list[WireModel]:
    return [
        Signal(
            event_id=_id("signal"),
            project=PROJECT,
            name="order.created",
            data=_ORDER,
            app=None,
            ts=_at(-1),
            source_run_id=None,
            source_step_key=None,
        ),
        WaitRegistered(
            event_id=_id("wait.registered"),
            project=PROJECT,
            name="order.approved",
            app=APP,
            flow=FLOW,
            run_id=RUN_ID,
            step_key="await-approval",
            attempt=1,
            match="data.order_id",
            match_value="ord_1042",
            timeout_at=_at(86405),
            ts=_at(4.9),
        ),
        WaitEnded(
            event_id=_id("wait.ended"),
            project=PROJECT,
            name="order.approved",
            run_id=RUN_ID,
            flow=FLOW,
            step_key="await-approval",
            attempt=1,
            reason="timeout",
            ts=_at(86405),
        ),
        TriggerRegistered(
            event_id=_id("trigger.registered"),
            project=PROJECT,
            name="order.created",
            app=APP,
            workflow=FLOW,
            ts=_at(-3600),
        ),
    ]


def _commands() -> list[WireModel]:
    return [
        StartRun(
            command_id=_id("command.start_run"),
            project=PROJECT,
            run_id=RUN_ID,
            ts=_at(-0.5),
            workflow=FLOW,
            app=APP,
            input=_ORDER,
            trigger=_TRIGGER,
            start_at=_at(0.5),
        ),
        ResumeRun(
            command_id=_id("command.resume_run"),
            project=PROJECT,
            run_id=RUN_ID,
            ts=_at(3604),
            reason="timer wait-for-settlement",
            workflow=FLOW,
            app=APP,
            # Every kind of record: a memoized output, a retry that is due later, a skip, the
            # sleep that just woke, a parked wait and a child run still going.
            history={
                "charge": StepRecord(
                    kind=StepKind.RUN,
                    status=StepStatus.COMPLETED,
                    output={"charge_id": "ch_9a8b7c", "captured": True},
                ),
                "reserve-stock": StepRecord(
                    kind=StepKind.RUN,
                    status=StepStatus.RETRYING,
                    attempt=2,
                    error=ErrorInfo(
                        type="TimeoutError",
                        message="inventory service did not answer within 5s",
                    ),
                    retry_at=_at(3660),
                ),
                "apply-coupon": StepRecord(kind=StepKind.RUN, status=StepStatus.SKIPPED),
                "wait-for-settlement": StepRecord(
                    kind=StepKind.SLEEP, status=StepStatus.COMPLETED, wake_at=_at(3604)
                ),
                "await-approval": StepRecord(
                    kind=StepKind.WAIT_FOR_EVENT, status=StepStatus.RUNNING
                ),
                "fraud": StepRecord(
                    kind=StepKind.RUN_WORKFLOW, status=StepStatus.RUNNING, child_run_id=CHILD_RUN_ID
                ),
            },
            # The run's events are on partition 3 (see the dead letter), the last one the fold
            # had folded when it sent this at offset 1041.
            history_partition=3,
            history_offset=1041,
        ),
        CancelRun(
            command_id=_id("command.cancel_run"),
            project=PROJECT,
            run_id=RUN_ID,
            ts=_at(90000),
            reason="order withdrawn by the customer",
            app=APP,
        ),
    ]


def _dead_letter(step_started: WireModel) -> DeadLetter:
    # A real refusal, made the way a processor makes one, so the example's reason is the
    # codec's actual wording: the golden step.started with its attempt written as a string.
    value = encode(step_started).replace(b'"attempt":1', b'"attempt":"2"')
    try:
        decode_event(value)
    except InvalidEventError as error:
        return DeadLetter.for_message(
            error, "steplog.events", 3, 1042, RUN_ID.encode(), value, ts=_at(9)
        )
    raise AssertionError("the golden dead letter's value was accepted")


def golden_messages() -> dict[str, WireModel]:
    """Every golden message by its `type` (the example file's name without `.json`)."""
    events = _events()
    messages = [*events, *_signals_messages(), *_commands(), _dead_letter(events[0])]
    by_type = {str(getattr(m, "type")): m for m in messages}
    # One example per type, no more and no fewer: a type without an example is a type other
    # SDKs have no test vector for.
    expected = {*EVENT_TYPES, *SIGNALS_MESSAGE_TYPES, *COMMAND_TYPES, "dead_letter"}
    if set(by_type) != expected or len(by_type) != len(messages):
        raise AssertionError(f"golden examples do not cover each type once: {sorted(by_type)}")
    return by_type


def golden_flows_messages() -> dict[str, WireModel]:
    """The flows topic's golden messages by `type`: the flow and the workflow definition.
    Separate from golden_messages: neither is an event, signal or command."""
    return {
        message.type: message
        for message in (golden_flow_definition(), golden_workflow_definition())
    }


NEXT_MINOR: Final = 1
"""The minor version the `examples/next` vectors claim: one this build does not know."""

NEXT_FIELD: Final = "added_in_next"
"""The optional field the next minor adds to every model (its value is a nested structure, so
a reader must skip a whole unknown value, not only a scalar)."""

_NEXT_VALUE: Final[JsonValue] = {"since": f"1.{NEXT_MINOR}", "values": [1, 2.5, None, True, "x"]}


def next_minor_document(message: WireModel) -> dict[str, Any]:
    """`message` as the next minor version writes it: `schema_minor` after `schema_version`
    (the announced minor, which this build does not declare), and `NEXT_FIELD` in the message
    and in each model nested in it. Free JSON (inputs, outputs, metadata, signal data) is left
    as it is: a key added there would change the user's value, not the schema."""
    document: dict[str, Any] = json.loads(encode(message))
    _add_next_field(message, document)
    ordered: dict[str, Any] = {}
    for name, value in document.items():
        ordered[name] = value
        if name == "schema_version":
            ordered["schema_minor"] = NEXT_MINOR
    return ordered


def _add_next_field(model: WireModel, document: dict[str, Any]) -> None:
    for name, value in model:
        written = document[name]
        if isinstance(value, WireModel):
            _add_next_field(value, written)
        elif isinstance(value, list):
            for item, item_written in zip(value, written, strict=True):
                if isinstance(item, WireModel):
                    _add_next_field(item, item_written)
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, WireModel):
                    _add_next_field(item, written[key])
    document[NEXT_FIELD] = _NEXT_VALUE


def golden_workflow_definition() -> WorkflowDefinition:
    """The `checkout` workflow of the `shop` app (`examples/workflow.defined.json`), as its
    worker registers it at start."""
    return WorkflowDefinition(
        project=PROJECT,
        app=APP,
        name=FLOW,
        triggers=["order.created"],
        retries=RetryPolicy(
            attempts=4, initial_delay_ms=3_000, max_delay_ms=300_000, multiplier=20.0, jitter=0.2
        ),
        flow_control=FlowControl(
            concurrency=Concurrency(limit=10, key="data.customer_id"), priority="data.priority"
        ),
        ts=_at(-3600),
    )


def golden_flow_definition() -> FlowDefinition:
    """The `checkout` flow's declared graph (`examples/flow.defined.json`), as pushed from
    `.steplog/flows.json` to the flows topic."""
    return FlowDefinition(
        project=PROJECT,
        slug=FLOW,
        name="Checkout",
        step_deadline_ms=30_000,
        steps=[
            FlowStep(sdk_step_key="reserve-stock", name="Reserve stock"),
            FlowStep(sdk_step_key="charge", name="Charge card", deadline_ms=10_000),
            FlowStep(sdk_step_key="apply-coupon", name="Apply coupon"),
            FlowStep(sdk_step_key="send-receipt", name="Send receipt"),
        ],
        edges=[
            FlowEdge(source="reserve-stock", target="charge"),
            FlowEdge(source="apply-coupon", target="charge"),
            FlowEdge(source="charge", target="send-receipt"),
        ],
        ts=_at(-3600),
    )
