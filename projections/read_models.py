"""What the read API answers (`GET /v1/runs`, `/v1/runs/{id}`, `/v1/ops`, `/v1/dead-letters`)
and `steplog runs list | show` print: the run list, one run with its steps and attempts, the
operations summary, the dead letters.

These are the contract between the ClickHouse reads (projections/run_reads.py,
projections/ops_reads.py) and their two faces, the web service and the terminal; the dashboard's
TypeScript types (frontend/src/api.ts) mirror them, and `/v1/openapi.json` is generated from
them. Times are UTC; durations are milliseconds; JSON values the runs carried (input, output,
metadata, trigger data) are passed through as JSON, not as text.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

__all__ = [
    "AttemptView",
    "DeadLetterPage",
    "DeadLetterView",
    "ErrorView",
    "FailureBucket",
    "FlowEdge",
    "FlowGraphView",
    "FlowNode",
    "LagView",
    "OpsSummary",
    "OverduePoint",
    "RunDetail",
    "RunFilter",
    "RunLink",
    "RunListItem",
    "RunPage",
    "SpikeView",
    "StepView",
]

RUN_STATUS_FILTERS = (
    "scheduled", "running", "retrying", "completed", "failed", "cancelled", "interrupted",
    "expired", "overdue", "stuck",
)
"""What `status=` may name: the stored run statuses and the two derived ones."""


class ReadModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RunFilter(ReadModel):
    """The run list's filters, as `GET /v1/runs` and `/runs` take them in the query string."""

    project: str | None = None
    flow: str | None = None
    status: tuple[str, ...] = Field(
        default=(), description="Any of RUN_STATUS_FILTERS (derived statuses included)."
    )
    since: datetime | None = Field(default=None, description="Runs created at or after this.")
    until: datetime | None = Field(default=None, description="Runs created before this.")
    search: str | None = Field(
        default=None,
        description="A run id (or its prefix, at least 4 characters), a trigger event's name "
        "or a trigger event's id.",
    )
    projects: tuple[str, ...] | None = Field(
        default=None,
        description="Only runs of these projects: the projects the caller's key covers, set "
        "by the web service, never by the query string; None: every project.",
    )


class ErrorView(ReadModel):
    type: str
    message: str
    stack: str | None = None


class RunLink(ReadModel):
    """Another run, as a link: a parent, a child, a retrigger."""

    run_id: str
    project: str
    flow: str
    status: str


class RunListItem(ReadModel):
    """One row of the run list."""

    run_id: str
    project: str
    flow: str
    app: str = Field(description="The workflow app; '' for an instrumented run.")
    status: str = Field(description="Derived: overdue and stuck included.")
    recorded_status: str
    created_at: datetime = Field(description="When the run's first event happened.")
    scheduled_for: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None
    trigger_event: str = Field(description="The signal that started it; '' if none.")
    trigger_event_id: str
    parent_run_id: str
    retrigger_of: str
    step_count: int
    failed_step_count: int
    error: ErrorView | None = Field(description="The run's error; its stack only in RunDetail.")


class RunPage(ReadModel):
    """`GET /v1/runs`: newest first, keyset-paged."""

    runs: list[RunListItem]
    next_cursor: str | None = Field(
        description="Pass as `cursor=` for the next (older) page; null on the last page."
    )
    counts: dict[str, int] = Field(
        description="Runs by status (derived) for the filter without its status part."
    )
    newest_version: str = Field(
        description="Changes whenever a run matching the filter was written; the dashboard's "
        "auto-refresh polls `GET /v1/runs/changed` with the same filters and reloads the "
        "page when the version differs."
    )


class AttemptView(ReadModel):
    """One attempt of a step, from its events: when it started and ended, how."""

    attempt: int
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None
    error: ErrorView | None
    output: JsonValue = None


class StepView(ReadModel):
    """One step of a run, as it stands (its latest attempt), with every attempt."""

    step_key: str
    name: str = Field(description="The flow's name for the step, else its key.")
    kind: str
    status: str = Field(description="Derived: stuck included; missing for never-reported steps.")
    attempt: int
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None
    deadline_at: datetime | None
    input: JsonValue = None
    output: JsonValue = None
    error: ErrorView | None = None
    metadata: JsonValue = None
    child_run_id: str | None = Field(
        default=None, description="The child run a run_workflow step started (its link)."
    )
    attempts: list[AttemptView] = Field(description="Oldest first.")


class FlowNode(ReadModel):
    id: str = Field(description="The step key.")
    name: str
    status: str = Field(description="The run's step status; 'missing' if never reported.")


class FlowEdge(ReadModel):
    source: str
    target: str


class FlowGraphView(ReadModel):
    """An instrumented run's flow graph (flows.json), each node with this run's status."""

    nodes: list[FlowNode]
    edges: list[FlowEdge]


class RunDetail(ReadModel):
    """`GET /v1/runs/{run_id}`."""

    run: RunListItem
    input: JsonValue = None
    output: JsonValue = None
    error: ErrorView | None = None
    stuck_after: datetime | None
    updated_at: datetime
    steps: list[StepView] = Field(
        description="In the order they ran (by start, then key); missing steps last."
    )
    graph: FlowGraphView | None = Field(
        description="The flow's graph for an instrumented run with a definition; null otherwise."
    )
    parent: RunLink | None
    children: list[RunLink]
    retrigger_of: RunLink | None
    retriggers: list[RunLink]
    trigger_data: JsonValue = Field(
        default=None, description="The trigger event's data (the run's input when a signal "
        "started it); null if none.",
    )


class FailureBucket(ReadModel):
    flow: str
    bucket: datetime = Field(description="Start of the 5-minute bucket.")
    failed: int
    finished: int


class SpikeView(ReadModel):
    """Seed 003's first escalation signal: failures across flows well above their baseline."""

    flagged: bool
    recent_failed: int = Field(description="Failed runs in the last `recent_minutes`.")
    baseline_failed: float = Field(
        description="Mean failed runs per `recent_minutes` over the rest of the window."
    )
    recent_minutes: int
    flows: list[str] = Field(description="Flows that failed in the recent period.")
    detail: str = Field(description="One sentence an operator can read.")


class OverduePoint(ReadModel):
    at: datetime
    count: int


class LagView(ReadModel):
    total: int | None = Field(description="Events the processors have not folded yet.")
    partitions: dict[str, int] = Field(description="'topic[partition]' -> lag.")
    error: str | None = Field(description="Why the lag could not be read, if it could not.")


class OpsSummary(ReadModel):
    """`GET /v1/ops`: the operations page (seed 003's escalation signals)."""

    window_start: datetime
    window_end: datetime
    bucket_minutes: int
    failures: list[FailureBucket] = Field(description="Failed runs per flow and bucket.")
    spike: SpikeView
    overdue_count: int
    overdue_oldest_ms: int | None
    overdue_trend: list[OverduePoint] = Field(description="Overdue runs at each bucket's end.")
    stuck_count: int
    stuck_runs: list[RunListItem] = Field(description="The oldest stuck runs, at most 20.")
    dead_letters_24h: int | None = Field(
        description="Null for a key that does not cover every project (dead letters have none)."
    )
    dead_letters_total: int | None
    lag: LagView


class DeadLetterView(ReadModel):
    ts: datetime
    reason: str
    field: str
    source_topic: str
    partition: int
    offset: int
    key: str | None = Field(description="The key as text (UTF-8, else base64); null if none.")
    value_bytes: int
    value_truncated: bool
    preview: str = Field(description="The value's first bytes as text, for a glance.")


class DeadLetterPage(ReadModel):
    """`GET /v1/dead-letters`: newest first."""

    dead_letters: list[DeadLetterView]
    next_cursor: str | None
    total: int


ActionName = Literal["cancel", "retrigger"]


class AlertView(ReadModel):
    """One transition of an alert (`GET /v1/alerts`): a firing, or the resolution of one (the
    same `alert_id`). `project` and `flow` are empty for a rule over the whole system."""

    alert_id: str
    state: Literal["firing", "resolved"]
    rule: str
    project: str
    flow: str
    summary: str
    value: float
    threshold: float
    fired_at: datetime
    at: datetime


class AlertPage(ReadModel):
    """The alerts firing now, and the newest transitions (firings and resolutions)."""

    firing: list[AlertView]
    recent: list[AlertView]
