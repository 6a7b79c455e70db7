"""The flows topic (compacted): flow definitions and workflow definitions.

A flow definition is the declared step graph of an instrumented flow (`.steplog/flows.json`);
a workflow definition is what a worker registers at start for each workflow of its app (name,
triggers, retry policy). Both travel on the flows topic, so that the processors learn them the
same way they learn everything else (from the log) and replay sees them too. `FlowsMessage` is
their union, discriminated on `type`.

Keys (compaction keeps the latest message per key, so two kinds must never share one):

- a flow: "<project>/<slug>" (`FlowDefinition.key`),
- a workflow: "<project>/workflow/<app>/<name>" (`WorkflowDefinition.key`).

The two spaces cannot meet: a workflow's project and app contain no "/", so every workflow key
starts "<project>/workflow/", and a flow whose key would start that way (a slug "workflow/...",
or a project ending in "/workflow") is refused. Slugs such as "workflow" or "billing/workflow"
stay valid.

A flow's graph is what lets the fold call a run `completed` when every declared step succeeded
or was skipped, show steps that never reported as `missing`, and call a step that runs past its
deadline `stuck`.
"""

from __future__ import annotations

import math
from typing import Annotated, Final, Literal

from pydantic import Field, model_validator

from .base import SCHEMA_VERSION, Name, SchemaVersion, Timestamp, WireModel, models_by_type
from .flow_control import FlowControl
from .limits import Attempt, DeadlineMs, DelayMs, KeySegment, Label, MatchPath
from .schedules import CronSchedule
from .signals import Idempotency, WaitCondition

__all__ = [
    "CancelOn",
    "FLOWS_MESSAGE_MODELS",
    "FLOWS_MESSAGE_TYPES",
    "FlowDefinition",
    "FlowEdge",
    "FlowStep",
    "FlowsMessage",
    "KeySegment",
    "RetryPolicy",
    "WORKFLOW_KEY_SEGMENT",
    "WorkflowDefinition",
    "flow_definition_key",
]


def flow_definition_key(project: str, slug: str) -> str:
    """A flow's key: on the flows topic, and where the processors look its definition up (by
    an event's or a run's project and flow)."""
    return f"{project}/{slug}"


WORKFLOW_KEY_SEGMENT: Final = "workflow"
"""The second segment of every workflow key, and so reserved in flow keys."""

class FlowStep(WireModel):
    sdk_step_key: Name = Field(description="The key the SDK reports the step under.")
    name: Label | None = Field(None, description="Human name shown on the graph.")
    deadline_ms: DeadlineMs | None = Field(
        None, description="A run of this step longer than this is `stuck`; "
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
    name: Label | None = None
    step_deadline_ms: DeadlineMs | None = Field(
        None, description="Default deadline of a running step; null: never stuck."
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

    @model_validator(mode="after")
    def _key_is_not_a_workflow_key(self) -> FlowDefinition:
        segments = self.key.split("/")
        if len(segments) > 2 and segments[1] == WORKFLOW_KEY_SEGMENT:
            field, value = ("project", self.project) if "/" in self.project else ("slug", self.slug)
            raise ValueError(
                f"{field}: {value!r} gives the flow key {self.key!r}, whose second segment "
                f"{WORKFLOW_KEY_SEGMENT!r}, followed by more, is reserved for workflow definitions "
                f"('<project>/{WORKFLOW_KEY_SEGMENT}/<app>/<name>'); rename the flow"
            )
        return self

    @property
    def key(self) -> str:
        """The flows topic key, and the processors' lookup key."""
        return flow_definition_key(self.project, self.slug)

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


class RetryPolicy(WireModel):
    """How often a failing step of a workflow is tried, and how long apart.

    The defaults give about 3 s, 1 min and 5 min between the four attempts (seed 003: "a few
    seconds, then a minute, then five minutes"). The worker computes each delay (drawing the
    jitter itself) and writes the resulting `retry_at` into `step.failed`: the fold and replay
    read the time from the log and never recompute it.
    """

    attempts: Attempt = Field(4, description="Attempts in all, including the first.")
    initial_delay_ms: DelayMs = Field(3_000, description="Delay after the first failure.")
    max_delay_ms: DelayMs = Field(300_000, description="No delay is longer than this.")
    multiplier: float = Field(
        20.0, ge=1.0, description="Each delay is the previous one times this, up to the max."
    )
    jitter: float = Field(
        0.2, ge=0.0, le=1.0,
        description="Up to this fraction of a delay is taken off at random, so that runs "
        "failing together do not retry together.",
    )

    @model_validator(mode="after")
    def _max_is_at_least_the_initial_delay(self) -> RetryPolicy:
        if self.max_delay_ms < self.initial_delay_ms:
            raise ValueError(
                f"max_delay_ms: {self.max_delay_ms} is below initial_delay_ms "
                f"{self.initial_delay_ms}; expected at least that"
            )
        return self

    def delay_ms(self, attempt: int, jitter_draw: float) -> int:
        """Milliseconds to wait after attempt `attempt` (1 = the first) failed.

        `initial_delay_ms * multiplier ** (attempt - 1)`, capped at `max_delay_ms`, then
        shortened by `jitter * jitter_draw` of itself; `jitter_draw` is uniform in [0, 1),
        drawn by the caller (so this stays pure). Jitter only ever shortens a delay: the
        schedule's numbers are upper bounds, and for one draw the delays never decrease.
        Whether another attempt follows at all is `is_last_attempt`'s question.
        """
        if attempt < 1:
            raise ValueError(f"attempt: {attempt} is not an attempt; expected 1 or more")
        if not 0.0 <= jitter_draw <= 1.0:
            raise ValueError(f"jitter_draw: {jitter_draw} is outside [0, 1]")
        base = float(self.initial_delay_ms)
        if base > 0 and self.multiplier > 1.0:
            # Compared in logarithms: multiplier ** (attempt - 1) overflows a float long before
            # a (silly, but valid) attempt number runs out.
            growth = (attempt - 1) * math.log(self.multiplier)
            if growth >= math.log(self.max_delay_ms / base):
                base = float(self.max_delay_ms)
            else:
                base *= self.multiplier ** (attempt - 1)
        return round(min(base, self.max_delay_ms) * (1.0 - self.jitter * jitter_draw))

    def is_last_attempt(self, attempt: int) -> bool:
        """True when attempt `attempt` failing means the step failed for good."""
        return attempt >= self.attempts


class CancelOn(WireModel):
    """A signal that cancels a running or waiting run of the workflow (`cancel_on=[...]`)."""

    event: Name = Field(description="The event name whose signals cancel runs.")
    match: MatchPath | None = Field(
        None, description="Only a signal with the run's trigger event's value at this path "
        "cancels it (e.g. 'data.order_id'); null: every signal of the name cancels every run."
    )
    condition: WaitCondition | None = Field(
        None, description="A CEL condition over `event` (the signal) that must also hold."
    )


class WorkflowDefinition(WireModel):
    """A workflow of an app: the signals that start it and how its steps are retried.

    Written by each worker at start for every workflow it serves (the worker also writes one
    `trigger.registered` per trigger to the signals topic, where the signals agent needs it).
    """

    type: Literal["workflow.defined"] = "workflow.defined"
    schema_version: SchemaVersion = SCHEMA_VERSION
    project: KeySegment
    app: KeySegment = Field(description="The app (worker group) that runs the workflow.")
    name: Name = Field(description="The workflow's name; runs report it as their `flow`.")
    triggers: list[Name] = Field(
        default_factory=list, description="Event names that each start a run; no duplicates."
    )
    retries: RetryPolicy = Field(default_factory=RetryPolicy)
    cancel_on: list[CancelOn] = Field(
        default_factory=list, description="Signals that cancel a run of it (see CancelOn)."
    )
    idempotency: Idempotency | None = Field(
        None, description="One triggered run per key and window; null: one per signal."
    )
    schedule: CronSchedule | None = Field(
        None, description="Starts a run at each tick of this cron schedule; null: none."
    )
    flow_control: FlowControl | None = Field(
        None, description="Limits on its starts (schemas/flow_control.py); null: none."
    )
    ts: Timestamp = Field(description="When this version of the definition was registered.")

    @model_validator(mode="after")
    def _triggers_are_unique(self) -> WorkflowDefinition:
        seen: set[str] = set()
        for index, trigger in enumerate(self.triggers):
            if trigger in seen:
                raise ValueError(f"triggers[{index}]: {trigger!r} is listed twice")
            seen.add(trigger)
        return self

    @property
    def key(self) -> str:
        """The flows topic key, and the processors' lookup key (see the module docstring)."""
        return f"{self.project}/{WORKFLOW_KEY_SEGMENT}/{self.app}/{self.name}"


FlowsMessage = Annotated[FlowDefinition | WorkflowDefinition, Field(discriminator="type")]
"""Any message on the flows topic; `codec.decode_flows_message` reads one."""

FLOWS_MESSAGE_MODELS = models_by_type(FlowsMessage)
FLOWS_MESSAGE_TYPES: tuple[str, ...] = tuple(FLOWS_MESSAGE_MODELS)
