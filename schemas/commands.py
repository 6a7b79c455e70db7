"""Commands: instructions for workers on the commands topic (key = run_id).

Commands are effects of the fold (a timer fired, a signal arrived, a child finished) or of an
operator, and ask a worker to do something; events are what happened. Keying by run_id keeps a
run's commands in order, so a cancel is never overtaken by an earlier resume.

Workers consume commands in one consumer group per app and ignore those of other apps, so a
command names its `app` wherever the producer knows it. A command of a run pinned to a runner
(`run_workflow(..., runner=)`) names its `runner` and goes to the runner-commands topic instead,
where each worker reads in one consumer group per app and runner name and takes only its own
runner's (schemas/topics.py says why a topic of their own).

`start_run` and `resume_run` carry the run's `history`: each step's outcome so far, from the
fold's state, and the events-topic position it reflects (`history_partition`,
`history_offset`). Before executing, the worker reads the run's partition after that offset to
its end and adds what it finds, so a step completed after the command was issued (by a worker
that died before committing) is found in the log rather than repeated.
"""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import uuid4

from pydantic import AfterValidator, Field, WithJsonSchema, model_validator

from .base import (
    SCHEMA_VERSION,
    ErrorInfo,
    MessageId,
    Name,
    SchemaVersion,
    Timestamp,
    TriggerInfo,
    WireModel,
    models_by_type,
)
from .events import StepKind
from .limits import Attempt, JsonValue, KafkaOffset, KafkaPartition, Reason
from .statuses import DERIVED_STEP_STATUSES, StepStatus

__all__ = [
    "COMMAND_MODELS",
    "COMMAND_TYPES",
    "CancelRun",
    "Command",
    "CommandEnvelope",
    "REPORTABLE_STEP_STATUSES",
    "ReportableStepStatus",
    "ResumeRun",
    "StartRun",
    "StepHistory",
    "StepRecord",
    "new_command_id",
]


def new_command_id() -> str:
    """A fresh, unique command id (uuid4, 32 hex digits): workers de-duplicate on it."""
    return uuid4().hex


REPORTABLE_STEP_STATUSES: tuple[StepStatus, ...] = tuple(
    status for status in StepStatus if status not in DERIVED_STEP_STATUSES
)


def _not_derived(status: StepStatus) -> StepStatus:
    if status in DERIVED_STEP_STATUSES:
        expected = ", ".join(REPORTABLE_STEP_STATUSES)
        raise ValueError(f"derived by the views and never sent; expected one of {expected}")
    return status


ReportableStepStatus = Annotated[
    StepStatus,
    AfterValidator(_not_derived),
    WithJsonSchema(
        {
            "type": "string",
            "enum": [status.value for status in REPORTABLE_STEP_STATUSES],
            "title": "ReportableStepStatus",
        }
    ),
]
"""A step status the fold stores (the derived `missing` and `stuck` are never sent)."""


class StepRecord(WireModel):
    """One step's outcome so far, as the fold knows it: what a replayed pass returns or does.

    A `completed` record's output is returned without executing the step; a `retrying` one
    executes attempt `attempt + 1` once `retry_at` is due; a `failed` one raises its error in
    the workflow code; a `running` sleep, wait or child run parks the run again.
    """

    kind: StepKind
    status: ReportableStepStatus
    attempt: Attempt = Field(1, description="The latest attempt the status is about.")
    output: JsonValue = Field(None, description="The memoized result (completed steps).")
    error: ErrorInfo | None = Field(None, description="The last attempt's error, if it failed.")
    retry_at: Timestamp | None = Field(None, description="When the next attempt is due.")
    wake_at: Timestamp | None = Field(None, description="When a sleep step wakes.")
    child_run_id: Name | None = Field(None, description="The child run of a run_workflow step.")


StepHistory = dict[Name, StepRecord]
"""Each step's record by its step key."""


def _check_history_position(partition: int | None, offset: int | None) -> None:
    if (partition is None) != (offset is None):
        missing = "history_offset" if offset is None else "history_partition"
        raise ValueError(
            f"{missing}: required field is missing; history_partition and history_offset "
            "are set together (a position needs both) or not at all"
        )


_RUNNER_DESCRIPTION = (
    "The runner the run is pinned to: only the app's workers of that runner name carry the "
    "command out (it is on the runner-commands topic); null: any worker of the app."
)
_HISTORY_DESCRIPTION = "Each step's outcome so far by step key, from the fold's state."
_PARTITION_DESCRIPTION = "The events-topic partition the run's events are on."
_OFFSET_DESCRIPTION = (
    "Offset of the last event the history includes; the worker reads the run's partition from "
    "history_offset + 1 to its end before executing. Null: the history reflects no position "
    "(a run with no events yet), and there is nothing to read."
)


class CommandEnvelope(WireModel):
    """Fields every command carries."""

    command_id: MessageId = Field(description="Unique per command; workers drop re-deliveries.")
    # Narrowed to a Literal by each command class; declared here to come second on the wire.
    type: str = Field(description="Which command this is.")
    schema_version: SchemaVersion = SCHEMA_VERSION
    project: Name
    run_id: Name = Field(description="The run the command is about; also the message key.")
    ts: Timestamp


class StartRun(CommandEnvelope):
    """Start a new run of a workflow (now, or at `start_at`)."""

    type: Literal["command.start_run"] = "command.start_run"
    workflow: Name
    app: Name | None = Field(None, description="Run the workflow of this app only.")
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
    retrigger_of: Name | None = Field(None, description="The run this one re-runs from the start.")
    runner: Name | None = Field(None, description=_RUNNER_DESCRIPTION)
    start_at: Timestamp | None = Field(None, description="Start no earlier than this; null: now.")
    history: StepHistory = Field(default_factory=dict, description=_HISTORY_DESCRIPTION)
    history_partition: KafkaPartition | None = Field(None, description=_PARTITION_DESCRIPTION)
    history_offset: KafkaOffset | None = Field(None, description=_OFFSET_DESCRIPTION)
    flow_checked: bool = Field(
        False, description="Sent by the processors, past their flow-control gate (held back "
        "until admitted, or not limited): a worker carries it out as it is. False: a start "
        "written elsewhere (client.start with app, a retrigger), which a worker hands to the "
        "processors as a run.scheduled due now if its workflow's flow control limits starts."
    )

    @model_validator(mode="after")
    def _history_position_is_whole(self) -> StartRun:
        _check_history_position(self.history_partition, self.history_offset)
        return self


class ResumeRun(CommandEnvelope):
    """Run the workflow function again from its memoized steps (a wake-up)."""

    type: Literal["command.resume_run"] = "command.resume_run"
    reason: Reason = Field(description="Why, for the timeline: e.g. 'timer', 'signal order.paid'.")
    workflow: Name | None = Field(None, description="The run's workflow.")
    app: Name | None = Field(None, description="The run's app; workers of other apps ignore it.")
    runner: Name | None = Field(None, description=_RUNNER_DESCRIPTION)
    history: StepHistory = Field(default_factory=dict, description=_HISTORY_DESCRIPTION)
    history_partition: KafkaPartition | None = Field(None, description=_PARTITION_DESCRIPTION)
    history_offset: KafkaOffset | None = Field(None, description=_OFFSET_DESCRIPTION)

    @model_validator(mode="after")
    def _history_position_is_whole(self) -> ResumeRun:
        _check_history_position(self.history_partition, self.history_offset)
        return self


class CancelRun(CommandEnvelope):
    """Stop a run; its running steps are abandoned and it ends `cancelled`."""

    type: Literal["command.cancel_run"] = "command.cancel_run"
    reason: Reason | None = None
    app: Name | None = Field(None, description="The run's app; workers of other apps ignore it.")
    runner: Name | None = Field(None, description=_RUNNER_DESCRIPTION)


Command = Annotated[StartRun | ResumeRun | CancelRun, Field(discriminator="type")]
"""Any command on the commands topic."""

COMMAND_MODELS = models_by_type(Command)
COMMAND_TYPES: tuple[str, ...] = tuple(COMMAND_MODELS)
