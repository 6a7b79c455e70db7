"""Signals: named events on the signals topic (key = the signal's name).

A signal comes from outside (`client.send_event`) or from a step's `emit`. Keying by name puts
every signal of one name in one partition, so the processor that starts runs triggered by the
name, and resumes runs parked in `wait_for_event` on it, sees them in order.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, JsonValue

from .base import (
    SCHEMA_VERSION,
    MessageId,
    Name,
    SchemaVersion,
    Timestamp,
    WireModel,
)


class Signal(WireModel):
    """A named event that can start runs and resume waiting steps."""

    event_id: MessageId = Field(description="Unique per signal; consumers drop re-deliveries.")
    type: Literal["signal"] = "signal"
    schema_version: SchemaVersion = SCHEMA_VERSION
    project: Name
    name: Name = Field(description="The event name workflows trigger and wait on.")
    data: JsonValue = Field(None, description="The payload handed to triggered or woken runs.")
    app: str | None = Field(
        None, description="Deliver only to this app's workflows; null delivers to every app."
    )
    ts: Timestamp
    source_run_id: Name | None = Field(None, description="The run whose `emit` sent it, if any.")
    source_step_key: Name | None = None
