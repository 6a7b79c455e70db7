"""What one batch of folded events adds to the projection tables.

The fold emits a run row and step rows after every event; a batch keeps only the newest row per
run and per step (the highest version), so a batch of 10,000 events for 500 runs inserts about
500 run rows rather than 10,000. Live processing and replay both build their inserts here, which
is one reason their tables come out the same.
"""

from __future__ import annotations

import json
from typing import Any

from steplog.projections.events_table import EVENT_COLUMNS, event_row
from steplog.projections.writer import TableRows
from steplog.schemas.events import Event
from steplog.schemas.flows import FlowDefinition

from .fold.effects import Effect, RunRowChanged, StepRowChanged
from .fold.rows import RunRow, StepRow, columns

FLOW_COLUMNS = (
    "project", "slug", "name", "step_deadline_ms", "steps", "edges", "defined_at",
)


def flow_row(definition: FlowDefinition) -> tuple[Any, ...]:
    dumped = definition.model_dump(mode="json")
    return (
        definition.project,
        definition.slug,
        definition.name or "",
        definition.step_deadline_ms,
        _compact_json(dumped["steps"]),
        _compact_json(dumped["edges"]),
        definition.ts,
    )


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class ProjectionBatch:
    """Rows collected from a batch, newest per key, ready for `ProjectionWriter.write`."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.runs: dict[tuple[str, str, str], RunRow] = {}
        self.steps: dict[tuple[str, str, str, str], StepRow] = {}
        self.flows: list[tuple[Any, ...]] = []

    def __len__(self) -> int:
        return len(self.events) + len(self.runs) + len(self.steps) + len(self.flows)

    def add_event(self, event: Event, partition: int, offset: int) -> None:
        self.events.append(tuple(event_row(event, partition, offset)))

    def add_effects(self, effects: list[Effect]) -> None:
        """Keep the rows among `effects`; engine effects (commands, timers, ...) are not rows
        and are left to the caller (replay drops them)."""
        for effect in effects:
            if isinstance(effect, RunRowChanged):
                row = effect.row
                key = (row.project, row.flow, row.run_id)
                held = self.runs.get(key)
                if held is None or held.version <= row.version:
                    self.runs[key] = row
            elif isinstance(effect, StepRowChanged):
                step = effect.row
                step_key = (step.project, step.flow, step.run_id, step.step_key)
                held_step = self.steps.get(step_key)
                if held_step is None or held_step.version <= step.version:
                    self.steps[step_key] = step

    def add_flow(self, definition: FlowDefinition) -> None:
        self.flows.append(flow_row(definition))

    def table_rows(self) -> dict[str, TableRows]:
        return {
            "events": TableRows(EVENT_COLUMNS, list(self.events)),
            "flows": TableRows(FLOW_COLUMNS, list(self.flows)),
            "steps": TableRows(columns(StepRow), [row.values() for row in self.steps.values()]),
            "runs": TableRows(columns(RunRow), [row.values() for row in self.runs.values()]),
        }
