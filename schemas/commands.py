"""Commands: instructions for workers on the commands topic (key = run_id).

Commands are effects of the fold (a timer fired, a signal arrived, a child finished) or of an
operator, and ask a worker to do something; events are what happened. Keying by run_id keeps a
run's commands in order, so a cancel is never overtaken by an earlier resume.
"""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import uuid4

from pydantic import Field, JsonValue

from .base import (
    SCHEMA_VERSION,
    MessageId,
    Name,
    SchemaVersion,
    Timestamp,
    TriggerInfo,
    WireModel,
    models_by_type,
)


def new_command_id() -> str:
    """A fresh, unique command id (uuid4, 32 hex digits): workers de-duplicate on it."""
    return uuid4().hex


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
    app: str | None = Field(None, description="Run the workflow of this app only.")
    input: JsonValue = None
    trigger: TriggerInfo | None = None
    parent_run_id: Name | None = Field(None, description="Set when started by run_workflow.")
    parent_step_key: Name | None = None
    retrigger_of: Name | None = Field(None, description="The run this one re-runs from the start.")
    start_at: Timestamp | None = Field(None, description="Start no earlier than this; null: now.")


class ResumeRun(CommandEnvelope):
    """Run the workflow function again from its memoized steps (a wake-up)."""

    type: Literal["command.resume_run"] = "command.resume_run"
    reason: str = Field(description="Why, for the timeline: e.g. 'timer', 'signal order.paid'.")


class CancelRun(CommandEnvelope):
    """Stop a run; its running steps are abandoned and it ends `cancelled`."""

    type: Literal["command.cancel_run"] = "command.cancel_run"
    reason: str | None = None


Command = Annotated[StartRun | ResumeRun | CancelRun, Field(discriminator="type")]
"""Any command on the commands topic."""

COMMAND_MODELS = models_by_type(Command)
COMMAND_TYPES: tuple[str, ...] = tuple(COMMAND_MODELS)
