"""Flow definitions: the declared step graph of an instrumented flow (`.steplog/flows.json`).

A definition travels on the flows topic (compacted, key = "<project>/<slug>"), so that the
processors learn graphs the same way they learn everything else (from the log) and replay sees
them too. The graph is what lets the fold call a run `completed` when every declared step
succeeded or was skipped, show steps that never reported as `missing`, and call a step that
runs past its deadline `stuck`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import SCHEMA_VERSION, Name, SchemaVersion, Timestamp, WireModel


class FlowStep(WireModel):
    sdk_step_key: Name = Field(description="The key the SDK reports the step under.")
    name: str | None = Field(None, description="Human name shown on the graph.")
    deadline_ms: int | None = Field(
        None, gt=0, description="A run of this step longer than this is `stuck`; "
        "null uses the flow's step_deadline_ms."
    )


class FlowEdge(WireModel):
    source: Name = Field(description="sdk_step_key of the upstream step.")
    target: Name = Field(description="sdk_step_key of the downstream step.")


class FlowDefinition(WireModel):
    """One flow's declared steps and edges."""

    type: Literal["flow.defined"] = "flow.defined"
    schema_version: SchemaVersion = SCHEMA_VERSION
    project: Name
    slug: Name = Field(description="The flow key runs are reported under (client.run(slug)).")
    name: str | None = None
    step_deadline_ms: int | None = Field(
        None, gt=0, description="Default deadline of a running step; null: never stuck."
    )
    steps: list[FlowStep] = Field(min_length=1)
    edges: list[FlowEdge] = Field(default_factory=list)
    ts: Timestamp = Field(description="When this version of the definition was pushed.")

    @model_validator(mode="after")
    def _graph_is_consistent(self) -> FlowDefinition:
        keys = [step.sdk_step_key for step in self.steps]
        duplicated = sorted({key for key in keys if keys.count(key) > 1})
        if duplicated:
            raise ValueError(f"steps: sdk_step_key {duplicated[0]!r} is declared twice")
        known = set(keys)
        for index, edge in enumerate(self.edges):
            for end in ("source", "target"):
                if getattr(edge, end) not in known:
                    raise ValueError(
                        f"edges[{index}].{end}: {getattr(edge, end)!r} is not one of the "
                        f"flow's steps ({', '.join(keys)})"
                    )
            if edge.source == edge.target:
                raise ValueError(f"edges[{index}]: a step cannot lead to itself")
        return self

    @property
    def key(self) -> str:
        """The flows topic key, and the processors' lookup key."""
        return f"{self.project}/{self.slug}"

    def deadline_ms(self, step_key: str) -> int | None:
        """The deadline of a running step of this flow, if it has one."""
        for step in self.steps:
            if step.sdk_step_key == step_key:
                return step.deadline_ms or self.step_deadline_ms
        return self.step_deadline_ms

    def downstream(self, step_key: str) -> set[str]:
        """Every step reachable from `step_key` along the edges."""
        reached: set[str] = set()
        frontier = [step_key]
        while frontier:
            current = frontier.pop()
            for edge in self.edges:
                if edge.source == current and edge.target not in reached:
                    reached.add(edge.target)
                    frontier.append(edge.target)
        return reached
