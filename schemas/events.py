"""Run and step events: the envelope on the events topic (key = run_id).

Every event is one fact about one run, in the order its producer saw it (`seq`). The fold reads
only these facts; anything it needs later (an input, a wake-up time, a retry time) must be in a
payload here, because replay from offset 0 has nothing else to go on.

`type` selects the class (and so the payload); `Event` is the union discriminated on it, so a
decoder picks the class from the tag instead of trying each one.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, WithJsonSchema

from .base import (
    SCHEMA_VERSION,
    ErrorInfo,
    MatchPath,
    MessageId,
    Metadata,
    Name,
    SchemaVersion,
    Timestamp,
    TriggerInfo,
    WireModel,
    models_by_type,
    new_event_id,
)
from .limits import Attempt, DelayMs, DurationMs, JsonValue, Reason, Seq
from .schedules import CronSchedule

__all__ = [
    "EVENT_MODELS",
    "EVENT_TYPES",
    "ErrorInfo",
    "Event",
    "EventEnvelope",
    "RunCancelled",
    "RunCancelledPayload",
    "RunCompleted",
    "RunCompletedPayload",
    "RunEvent",
    "RunEventEnvelope",
    "RunFailed",
    "RunFailedPayload",
    "RunInterrupted",
    "RunInterruptedPayload",
    "RunResumed",
    "RunResumedPayload",
    "RunScheduled",
    "RunScheduledPayload",
    "RunStarted",
    "RunStartedPayload",
    "StepCompleted",
    "StepCompletedPayload",
    "StepEvent",
    "StepEventEnvelope",
    "StepFailed",
    "StepFailedPayload",
    "StepInvoked",
    "StepInvokedPayload",
    "SleepKind",
    "StepKind",
    "StepSkipped",
    "StepSkippedPayload",
    "StepSleeping",
    "StepSleepingPayload",
    "StepStarted",
    "StepStartedPayload",
    "StepWaiting",
    "StepWaitingPayload",
    "TriggerInfo",
    "new_event_id",
]

class StepKind(StrEnum):
    """Which SDK call produced a step; the dashboard draws each kind differently."""

    INSTRUMENTED = "instrumented"
    """`run.step(key, fn)` around existing code (the observability face)."""
    RUN = "run"
    SLEEP = "sleep"
    SLEEP_UNTIL = "sleep_until"
    WAIT_FOR_EVENT = "wait_for_event"
    RUN_WORKFLOW = "run_workflow"
    EMIT = "emit"


_SLEEP_KINDS = (StepKind.SLEEP, StepKind.SLEEP_UNTIL)


def _is_sleep_kind(kind: StepKind) -> StepKind:
    if kind not in _SLEEP_KINDS:
        raise ValueError(f"not a sleep; expected one of {', '.join(_SLEEP_KINDS)}")
    return kind


SleepKind = Annotated[
    StepKind,
    AfterValidator(_is_sleep_kind),
    WithJsonSchema({"type": "string", "enum": [kind.value for kind in _SLEEP_KINDS]}),
]
"""The kinds of step that sleep: `sleep` (a duration) and `sleep_until` (an absolute time)."""


# --- the envelope ---------------------------------------------------------------------------


class EventEnvelope(WireModel):
    """Fields every event carries. Subclasses add `type` and a typed `payload`."""

    event_id: MessageId = Field(description="Unique per event; consumers drop re-deliveries.")
    # Declared here (narrowed to a Literal by each event class) only to put it second on the
    # wire, where a person reading a message or a dead letter looks first.
    type: str = Field(description="Which event this is; selects the payload's shape.")
    schema_version: SchemaVersion = SCHEMA_VERSION
    project: Name
    flow: Name = Field(description="Flow slug (instrumentation) or workflow name.")
    run_id: Name = Field(description="The run this event belongs to; also the message key.")
    attempt: Attempt = Field(1, description="Attempt of the step (or run) this event is about.")
    ts: Timestamp = Field(description="When the producer observed the fact, with UTC offset.")
    # seq orders a run's events as the producer saw them. Kafka keeps a partition in order, but
    # two SDK processes reporting on one run (record_step from another service) can interleave,
    # and a timestamp tie is common at millisecond resolution; seq breaks those ties.
    seq: Seq = Field(
        0, description="Order of this event among its run's events, as its producer saw it."
    )


class StepEventEnvelope(EventEnvelope):
    """An event about one step of a run."""

    step_key: Name = Field(description="The step's id, unique within its run.")


class RunEventEnvelope(EventEnvelope):
    """An event about a run as a whole (no step_key)."""


# --- step payloads --------------------------------------------------------------------------


class StepStartedPayload(WireModel):
    kind: StepKind = StepKind.INSTRUMENTED
    input: JsonValue = Field(None, description="The step's recorded input, when it has one.")
    metadata: Metadata = Field(default_factory=dict)


class StepCompletedPayload(WireModel):
    output: JsonValue = Field(None, description="The step's result, memoized for replays.")
    duration_ms: DurationMs | None = None
    timed_out: bool = Field(
        False, description="A wait_for_event that resolved to null because its timeout elapsed."
    )
    metadata: Metadata = Field(default_factory=dict)


class StepFailedPayload(WireModel):
    error: ErrorInfo
    duration_ms: DurationMs | None = None
    # The producer decides the retry schedule and writes it down, so that replaying the log
    # gives the same timers without re-running the backoff computation (or its jitter).
    retry_at: Timestamp | None = Field(
        None, description="When the next attempt is due; null means final: no more attempts."
    )
    non_retriable: bool = Field(False, description="The error said not to retry it.")
    metadata: Metadata = Field(default_factory=dict)


class StepSkippedPayload(WireModel):
    reason: Reason | None = None
    metadata: Metadata = Field(default_factory=dict)


class StepSleepingPayload(WireModel):
    wake_at: Timestamp = Field(description="The absolute time the run wakes up.")
    # The sleep is the step's only event until it wakes, so it says which call made it (the
    # dashboard tells `sleep("1h")` from `sleep_until(renewal)`).
    kind: SleepKind = Field(
        StepKind.SLEEP, description="sleep (a duration) or sleep_until (an absolute time)."
    )
    expires_after_ms: DelayMs | None = Field(
        None, description="Woken later than this after wake_at (an outage), the run ends "
        "`expired` instead of going on late; null: it goes on however late."
    )


class StepWaitingPayload(WireModel):
    event: Name = Field(description="Name of the signal that resumes this step.")
    timeout_at: Timestamp | None = Field(
        None, description="When the wait resolves to null; null waits forever."
    )
    match: MatchPath | None = Field(
        None, description="Dotted path into the signal, e.g. 'data.order_id', to compare."
    )
    match_value: JsonValue = Field(
        None, description="The value `match` must have for the signal to resume this step."
    )


class StepInvokedPayload(WireModel):
    child_run_id: Name
    workflow: Name = Field(description="The child workflow's name.")
    app: Name | None = Field(None, description="Resolve the workflow in this app only.")
    data: JsonValue = Field(None, description="The child run's input.")
    runner: Name | None = Field(
        None, description="Pin the child to this runner of its app: only a worker started "
        "with this runner name executes it; null: any worker of the app."
    )


# --- step events ----------------------------------------------------------------------------


class StepStarted(StepEventEnvelope):
    """A step began executing (an attempt of it: see `attempt`)."""

    type: Literal["step.started"] = "step.started"
    payload: StepStartedPayload = Field(default_factory=StepStartedPayload)


class StepCompleted(StepEventEnvelope):
    """A step finished; its output is memoized, so it never runs again in this run."""

    type: Literal["step.completed"] = "step.completed"
    payload: StepCompletedPayload = Field(default_factory=StepCompletedPayload)


class StepFailed(StepEventEnvelope):
    """An attempt of a step raised; `retry_at` says whether another attempt follows."""

    type: Literal["step.failed"] = "step.failed"
    payload: StepFailedPayload


class StepSkipped(StepEventEnvelope):
    """A step was intentionally not executed in this run."""

    type: Literal["step.skipped"] = "step.skipped"
    payload: StepSkippedPayload = Field(default_factory=StepSkippedPayload)


class StepSleeping(StepEventEnvelope):
    """A sleep or sleep_until step parked the run until `wake_at`."""

    type: Literal["step.sleeping"] = "step.sleeping"
    payload: StepSleepingPayload


class StepWaiting(StepEventEnvelope):
    """A wait_for_event step parked the run until a signal or its timeout."""

    type: Literal["step.waiting"] = "step.waiting"
    payload: StepWaitingPayload


class StepInvoked(StepEventEnvelope):
    """A run_workflow step started a child run; the step completes when the child does."""

    type: Literal["step.invoked"] = "step.invoked"
    payload: StepInvokedPayload


# --- run payloads ---------------------------------------------------------------------------


class RunScheduledPayload(WireModel):
    start_at: Timestamp = Field(description="When the run is due to start.")
    # The timer service builds the start_run from the run's state when start_at is due, and
    # workers take only their app's commands: without the app, the start would go to anyone.
    app: Name | None = Field(None, description="The app whose worker starts the run.")
    input: JsonValue = None
    trigger: TriggerInfo | None = None
    expires_after_ms: DelayMs | None = Field(
        None, description="Not started this long after start_at, the run ends `expired` "
        "instead of starting late; null: it starts however late."
    )
    schedule: CronSchedule | None = Field(
        None, description="Set on a tick of a workflow's cron schedule (start_at is the tick): "
        "when it is due, the next tick is scheduled from it."
    )
    # A pinned child's start_run goes out with this event (processors/dispatch.py) and waits
    # for its runner's worker in the runner-commands topic; a timer would send a second one.
    runner: Name | None = Field(
        None, description="Set on a child run pinned to a runner (run_workflow's `runner`): "
        "its start_run was sent with this event and waits for that runner, so no start timer "
        "is set; the run shows scheduled (then overdue) until the runner starts it."
    )
    retrigger_of: Name | None = Field(
        None, description="Set on a re-trigger handed to flow control by a worker: the run this "
        "one re-runs, carried to its start_run."
    )


class RunStartedPayload(WireModel):
    app: Name | None = None
    input: JsonValue = None
    trigger: TriggerInfo | None = None
    parent_run_id: Name | None = Field(None, description="Set when started by run_workflow.")
    parent_step_key: Name | None = None
    parent_flow: Name | None = Field(
        None, description="The parent run's workflow: with parent_step_attempt, whoever folds "
        "this run's end reports it to the parent's step without asking the process that "
        "started it. Null in runs started before it was added."
    )
    parent_step_attempt: Attempt | None = Field(None, description="Attempt of that step.")
    retrigger_of: Name | None = Field(
        None, description="The run this one re-runs from the start (an operator re-trigger)."
    )
    runner: Name | None = Field(
        None, description="The runner the run is pinned to (its commands go to that runner's "
        "workers only); null: any worker of the app."
    )


class RunCompletedPayload(WireModel):
    output: JsonValue = None


class RunFailedPayload(WireModel):
    error: ErrorInfo


class RunCancelledPayload(WireModel):
    reason: Reason | None = None
    expired: bool = Field(
        False, description="Written by the processors when a scheduled start came too late "
        "(expires_after, or a missed cron tick): the run's status is `expired`."
    )


class RunInterruptedPayload(WireModel):
    reason: Reason | None = None


class RunResumedPayload(WireModel):
    """Empty: the event itself is the fact (an interrupted run goes on)."""


# --- run events -----------------------------------------------------------------------------


class RunScheduled(RunEventEnvelope):
    """A run was created to start later (`start_at`)."""

    type: Literal["run.scheduled"] = "run.scheduled"
    payload: RunScheduledPayload


class RunStarted(RunEventEnvelope):
    """A run began (or a re-trigger of one, see `retrigger_of`)."""

    type: Literal["run.started"] = "run.started"
    payload: RunStartedPayload = Field(default_factory=RunStartedPayload)


class RunCompleted(RunEventEnvelope):
    """A run returned; terminal."""

    type: Literal["run.completed"] = "run.completed"
    payload: RunCompletedPayload = Field(default_factory=RunCompletedPayload)


class RunFailed(RunEventEnvelope):
    """A run failed for good (a step out of retries, non-retriable, or a failed child); terminal."""

    type: Literal["run.failed"] = "run.failed"
    payload: RunFailedPayload


class RunCancelled(RunEventEnvelope):
    """A run was cancelled; terminal."""

    type: Literal["run.cancelled"] = "run.cancelled"
    payload: RunCancelledPayload = Field(default_factory=RunCancelledPayload)


class RunInterrupted(RunEventEnvelope):
    """A run was paused by the platform (e.g. a worker restart); resumable."""

    type: Literal["run.interrupted"] = "run.interrupted"
    payload: RunInterruptedPayload = Field(default_factory=RunInterruptedPayload)


class RunResumed(RunEventEnvelope):
    """An interrupted run goes on."""

    type: Literal["run.resumed"] = "run.resumed"
    payload: RunResumedPayload = Field(default_factory=RunResumedPayload)


StepEvent = (
    StepStarted
    | StepCompleted
    | StepFailed
    | StepSkipped
    | StepSleeping
    | StepWaiting
    | StepInvoked
)
RunEvent = (
    RunScheduled
    | RunStarted
    | RunCompleted
    | RunFailed
    | RunCancelled
    | RunInterrupted
    | RunResumed
)

Event = Annotated[StepEvent | RunEvent, Field(discriminator="type")]
"""Any event on the events topic; validate it with a TypeAdapter (see `codec`)."""

EVENT_MODELS = models_by_type(Event)
"""Each event `type` and its class, in declaration order."""

EVENT_TYPES: tuple[str, ...] = tuple(EVENT_MODELS)
