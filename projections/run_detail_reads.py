"""One run's detail, read from the projections (`GET /v1/runs/{id}`, the dashboard's run page,
`steplog runs show`): the run by id through run_list's bloom filter (its newest row kept here,
LIMIT 1 BY, rather than FINAL, which would read the granules' neighbours too), its steps and
events by their key prefix (project, flow, run_id) with FINAL within it, its `runs` row by key,
its flow definition and its links. Bound parameters only, as in projections/run_reads.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from clickhouse_connect.driver.client import Client
from pydantic import JsonValue

from .read_models import (
    AttemptView,
    ErrorView,
    FlowEdge,
    FlowGraphView,
    FlowNode,
    RunDetail,
    RunLink,
    RunListItem,
    StepView,
)
from .run_reads import (
    DERIVED_STATUS,
    LIST_SELECT,
    PROJECTS_CONDITION,
    as_utc,
    list_item,
    now_micros,
)

__all__ = ["MAX_ATTEMPTS_PER_STEP", "MAX_LINKS", "MAX_STEPS", "run_detail"]


MAX_STEPS: Final = 1_000
"""Steps shown per run: more than any flow declares; a run past it shows its first 1,000 by key."""
MAX_ATTEMPTS_PER_STEP: Final = 50
"""Attempts shown per step, the newest: a retry policy of more is rare, and its oldest attempts
say nothing the newest do not."""
MAX_LINKS: Final = 100
"""Children and retriggers shown per run, the newest."""
_MAX_EVENTS_PER_STEP: Final = 4 * MAX_ATTEMPTS_PER_STEP
"""Events read per step (an attempt is a start and an end, or a few parking events more)."""

_STEP_COLUMNS: Final = (
    "step_key, kind, status, attempt, started_at, finished_at, duration_ms, error_type, "
    "error_message, error_stack, input, output, metadata, deadline_at"
)
_ATTEMPT_EVENT_TYPES: Final = (
    "step.started", "step.completed", "step.failed", "step.skipped", "step.sleeping",
    "step.waiting", "step.invoked",
)
_ENDS: Final = {"step.completed": "completed", "step.failed": "failed", "step.skipped": "skipped"}
_LINK_SELECT: Final = f"run_id, project, flow, {DERIVED_STATUS} AS derived_status"


def _json(text: str) -> JsonValue:
    """A JSON column's value: '' is no value."""
    value: JsonValue = None if not text else json.loads(text)
    return value


def run_detail(
    client: Client,
    database: str,
    run_id: str,
    *,
    project: str | None = None,
    projects: tuple[str, ...] | None = None,
    now: datetime | None = None,
) -> RunDetail | None:
    """Run `run_id` (in `project`, if named; else the most recently written run of that id;
    among `projects` only, if given) with its steps, each with its attempts, its flow graph and
    its links; None if no run has the id. At most MAX_STEPS steps, MAX_ATTEMPTS_PER_STEP
    attempts per step, MAX_LINKS children and retriggers."""
    now_us = now_micros(now)
    parameters: dict[str, Any] = {"run_id": run_id, "now_us": now_us}
    project_condition = ""
    if project is not None:
        project_condition = " AND project = {project:String}"
        parameters["project"] = project
    if projects is not None:
        project_condition += f" AND {PROJECTS_CONDITION}"
        parameters["projects"] = list(projects)
    # By the bloom filter, without FINAL: the engine keeps each project's newest row.
    rows = client.query(
        f"SELECT {LIST_SELECT} FROM {database}.run_list "
        f"WHERE run_id = {{run_id:String}}{project_condition} "
        "ORDER BY project, version DESC LIMIT 1 BY project",
        parameters=parameters,
    ).result_rows
    if not rows:
        return None
    row = max(rows, key=lambda row: row[-1])  # the most recently written run of that id
    run = list_item(row)
    stuck_after, updated_at = row[-3], row[-1]
    key = {"project": run.project, "flow": run.flow, "run_id": run.run_id}
    in_run = "project = {project:String} AND flow = {flow:String} AND run_id = {run_id:String}"
    run_rows = client.query(
        f"SELECT input, output, error_stack FROM {database}.runs WHERE {in_run} "
        "ORDER BY version DESC LIMIT 1",
        parameters=key,
    ).result_rows
    input_text, output_text, error_stack = run_rows[0] if run_rows else ("", "", "")
    definition = _flow_definition(client, database, run.project, run.flow)
    steps = _steps(client, database, key, in_run, now_us, definition)
    error = None
    if run.error is not None:
        error = ErrorView(type=run.error.type, message=run.error.message,
                          stack=error_stack or None)
    links = _links(client, database, run, now_us)
    return RunDetail(
        run=run,
        input=_json(input_text),
        output=_json(output_text),
        error=error,
        stuck_after=as_utc(stuck_after),
        updated_at=as_utc(updated_at),
        steps=steps,
        graph=_graph(definition, steps) if run.app == "" and definition is not None else None,
        parent=links.get(("id", run.parent_run_id), [None])[0] if run.parent_run_id else None,
        children=links.get(("parent", run.run_id), []),
        retrigger_of=(
            links.get(("id", run.retrigger_of), [None])[0] if run.retrigger_of else None
        ),
        retriggers=links.get(("retrigger", run.run_id), []),
        trigger_data=_json(input_text) if run.trigger_event else None,
    )


@dataclass(frozen=True)
class _Definition:
    names: dict[str, str]
    """sdk_step_key -> name, in the definition's order."""
    edges: list[FlowEdge]


def _flow_definition(
    client: Client, database: str, project: str, flow: str
) -> _Definition | None:
    rows = client.query(
        f"SELECT steps, edges FROM {database}.flows FINAL "
        "WHERE project = {project:String} AND slug = {flow:String}",
        parameters={"project": project, "flow": flow},
    ).result_rows
    if not rows:
        return None
    steps, edges = (json.loads(text) for text in rows[0])
    return _Definition(
        names={step["sdk_step_key"]: step.get("name") or step["sdk_step_key"] for step in steps},
        edges=[FlowEdge(source=edge["source"], target=edge["target"]) for edge in edges],
    )


def _steps(
    client: Client,
    database: str,
    key: dict[str, str],
    in_run: str,
    now_us: int,
    definition: _Definition | None,
) -> list[StepView]:
    """The run's steps in the order they ran (by start, then key), missing ones last."""
    parameters = {**key, "now_us": now_us, "max_steps": MAX_STEPS}
    rows = client.query(
        f"SELECT {_STEP_COLUMNS}, if(status = 'running' AND deadline_at IS NOT NULL AND "
        "deadline_at < fromUnixTimestamp64Micro({now_us:Int64}, 'UTC'), 'stuck', status) "
        f"FROM {database}.steps FINAL WHERE {in_run} ORDER BY step_key LIMIT {{max_steps:UInt32}}",
        parameters=parameters,
    ).result_rows
    attempts, children = _attempts(client, database, key, in_run)
    names = {} if definition is None else definition.names
    steps = []
    for (step_key, kind, _status, attempt, started_at, finished_at, duration_ms, error_type,
         error_message, error_stack, input_text, output_text, metadata, deadline_at,
         derived) in rows:
        steps.append(StepView(
            step_key=step_key, name=names.get(step_key, step_key), kind=kind, status=derived,
            attempt=attempt, started_at=as_utc(started_at), finished_at=as_utc(finished_at),
            duration_ms=duration_ms, deadline_at=as_utc(deadline_at), input=_json(input_text),
            output=_json(output_text),
            error=(
                ErrorView(type=error_type, message=error_message, stack=error_stack or None)
                if error_type or error_message else None
            ),
            metadata=_json(metadata), child_run_id=children.get(step_key),
            attempts=attempts.get(step_key, []),
        ))
    never = datetime.max.replace(tzinfo=UTC)
    steps.sort(key=lambda step: (
        step.status == "missing", step.started_at or step.finished_at or never, step.step_key
    ))
    return steps


def _attempts(
    client: Client, database: str, key: dict[str, str], in_run: str
) -> tuple[dict[str, list[AttemptView]], dict[str, str]]:
    """Each step's attempts from its events, oldest first (the newest MAX_ATTEMPTS_PER_STEP),
    and the child run each run_workflow step started (its step.invoked event says which)."""
    rows = client.query(
        f"SELECT step_key, attempt, type, ts, payload FROM {database}.events FINAL "
        f"WHERE {in_run} AND type IN {{types:Array(String)}} "
        "ORDER BY step_key, attempt DESC, seq DESC, ts DESC "
        "LIMIT {per_step:UInt32} BY step_key",
        parameters={**key, "types": list(_ATTEMPT_EVENT_TYPES),
                    "per_step": _MAX_EVENTS_PER_STEP},
    ).result_rows
    by_attempt: dict[str, dict[int, _Attempt]] = {}
    children: dict[str, str] = {}
    for step_key, attempt, event_type, ts, payload in reversed(rows):  # oldest first
        held = by_attempt.setdefault(step_key, {}).setdefault(attempt, _Attempt(attempt))
        document = json.loads(payload) if payload else {}
        held.add(event_type, as_utc(ts), document)
        if event_type == "step.invoked" and isinstance(document.get("child_run_id"), str):
            children[step_key] = document["child_run_id"]
    return {
        step_key: [held.view() for _, held in sorted(attempts.items())][-MAX_ATTEMPTS_PER_STEP:]
        for step_key, attempts in by_attempt.items()
    }, children


class _Attempt:
    """One attempt's events, folded into an AttemptView: its earliest start, its end (the last
    completed/failed/skipped event, which decides), else it is running."""

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt
        self.started_at: datetime | None = None
        self.end: tuple[str, datetime | None, dict[str, Any]] | None = None
        self.latest: datetime | None = None

    def add(self, event_type: str, ts: datetime | None, payload: dict[str, Any]) -> None:
        if event_type == "step.started":
            if self.started_at is None or (ts is not None and ts < self.started_at):
                self.started_at = ts
        elif event_type in _ENDS:
            self.end = (event_type, ts, payload)
        if self.latest is None or (ts is not None and ts > self.latest):
            self.latest = ts

    def view(self) -> AttemptView:
        if self.end is None:
            return AttemptView(attempt=self.attempt, status="running",
                               started_at=self.started_at or self.latest, finished_at=None,
                               duration_ms=None, error=None)
        event_type, finished_at, payload = self.end
        duration_ms = payload.get("duration_ms")
        if duration_ms is None and self.started_at is not None and finished_at is not None:
            duration_ms = max((finished_at - self.started_at) / timedelta(milliseconds=1), 0.0)
        error = payload.get("error")
        status = _ENDS[event_type]
        if status == "failed" and payload.get("retry_at") and not payload.get("non_retriable"):
            status = "retrying"
        return AttemptView(
            attempt=self.attempt, status=status, started_at=self.started_at,
            finished_at=finished_at, duration_ms=duration_ms,
            error=(
                None if not isinstance(error, dict) else ErrorView(
                    type=str(error.get("type", "")), message=str(error.get("message", "")),
                    stack=error.get("stack"),
                )
            ),
            output=payload.get("output"),
        )


def _links(
    client: Client, database: str, run: RunListItem, now_us: int
) -> dict[tuple[str, str], list[RunLink]]:
    """The runs linked to `run` (in its project), by (how, id): ("id", x) the run x,
    ("parent", id) its children, ("retrigger", id) its retriggers. One query; each part by its
    own bloom filter (an OR of them would use none), without FINAL: LIMIT 1 BY keeps each
    run's newest row."""
    newest = (
        "ORDER BY created_at DESC, run_id, version DESC LIMIT 1 BY run_id "
        "LIMIT {max_links:UInt32}"
    )
    parts = [
        f"SELECT 'parent' AS how, parent_run_id AS linked, {_LINK_SELECT}, created_at "
        f"FROM {database}.run_list WHERE parent_run_id = {{run_id:String}} "
        f"AND project = {{project:String}} {newest}",
        f"SELECT 'retrigger' AS how, retrigger_of AS linked, {_LINK_SELECT}, created_at "
        f"FROM {database}.run_list WHERE retrigger_of = {{run_id:String}} "
        f"AND project = {{project:String}} {newest}",
    ]
    ids = [linked for linked in (run.parent_run_id, run.retrigger_of) if linked]
    if ids:
        parts.append(
            f"SELECT 'id' AS how, run_id AS linked, {_LINK_SELECT}, created_at "
            f"FROM {database}.run_list WHERE run_id IN {{ids:Array(String)}} "
            f"AND project = {{project:String}} {newest}"
        )
    rows = client.query(
        " UNION ALL ".join(f"({part})" for part in parts),
        parameters={"run_id": run.run_id, "project": run.project, "ids": ids,
                    "now_us": now_us, "max_links": MAX_LINKS},
    ).result_rows
    links: dict[tuple[str, str], list[tuple[datetime, RunLink]]] = {}
    for how, linked, run_id, project, flow, status, created_at in rows:
        links.setdefault((how, linked), []).append(
            (created_at, RunLink(run_id=run_id, project=project, flow=flow, status=status))
        )
    return {
        key: [link for _, link in sorted(found, key=lambda item: item[0], reverse=True)]
        for key, found in links.items()
    }


def _graph(definition: _Definition, steps: list[StepView]) -> FlowGraphView:
    status = {step.step_key: step.status for step in steps}
    return FlowGraphView(
        nodes=[
            FlowNode(id=key, name=name, status=status.get(key, "missing"))
            for key, name in definition.names.items()
        ],
        edges=definition.edges,
    )
