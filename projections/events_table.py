"""Rows of the `events` table: the log mirrored one event per row."""

from __future__ import annotations

from typing import Any

from steplog.schemas.events import Event

EVENT_COLUMNS = (
    "event_id",
    "type",
    "schema_version",
    "project",
    "flow",
    "run_id",
    "step_key",
    "attempt",
    "seq",
    "ts",
    "payload",
    "log_partition",
    "log_offset",
)


def event_row(event: Event, partition: int, offset: int) -> list[Any]:
    """One `events` row; the payload is stored as its JSON text."""
    return [
        event.event_id,
        event.type,
        event.schema_version,
        event.project,
        event.flow,
        event.run_id,
        getattr(event, "step_key", ""),
        event.attempt,
        event.seq,
        event.ts,
        event.payload.model_dump_json(),
        partition,
        offset,
    ]
