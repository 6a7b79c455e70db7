"""The run list and one run's detail, read from the projections (`GET /v1/runs`,
`/v1/runs/{id}`, the dashboard, `steplog runs list | show`).

Nothing here runs FINAL over a whole table. The list reads `run_list` (sorted by project,
created_at, run_id; migrations.py): a page is one or a few queries over a short time range
below the cursor, FINAL within it (ReplacingMergeTree may still hold a run's older rows).
Where a page needs the whole filter (its counts by status) the read is one aggregate over the
filter's key range. A run found by id alone (the detail, its links, a search) uses run_list's
bloom filters and keeps each run's newest row itself (LIMIT 1 BY, or here: FINAL would read the
granules' neighbours too); its steps and events are read by their key prefix (project, flow,
run_id), FINAL within it, its `runs` row by key, the newest version.

Every query takes its values as bound parameters (`{name:Type}`); times are passed as
microseconds since the epoch, so that no value is ever formatted into the SQL.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from clickhouse_connect.driver.client import Client
from pydantic import JsonValue

from steplog.errors import SteplogError

from .cursors import CursorError, decode_cursor, encode_cursor
from .read_models import (
    RUN_STATUS_FILTERS,
    AttemptView,
    ErrorView,
    FlowEdge,
    FlowGraphView,
    FlowNode,
    RunDetail,
    RunFilter,
    RunLink,
    RunListItem,
    RunPage,
    StepView,
)

__all__ = [
    "MAX_ATTEMPTS_PER_STEP",
    "MAX_LINKS",
    "MAX_STEPS",
    "PROJECTS_CONDITION",
    "CursorError",
    "RunFilterError",
    "list_flows",
    "list_runs",
    "run_detail",
    "runs_changed",
]


class RunFilterError(SteplogError):
    """A run filter's value cannot be used (an unknown status, a limit out of range)."""


MAX_LIMIT: Final = 500
"""The most runs one page holds."""
MAX_STEPS: Final = 1_000
"""Steps shown per run: more than any flow declares; a run past it shows its first 1,000 by key."""
MAX_ATTEMPTS_PER_STEP: Final = 50
"""Attempts shown per step, the newest: a retry policy of more is rare, and its oldest attempts
say nothing the newest do not."""
MAX_LINKS: Final = 100
"""Children and retriggers shown per run, the newest."""
_MAX_EVENTS_PER_STEP: Final = 4 * MAX_ATTEMPTS_PER_STEP
"""Events read per step (an attempt is a start and an end, or a few parking events more)."""
SEARCH_CANDIDATES: Final = 5_000
"""Rows a search reads at most in one go (every recorded row of the runs it matches), to dedupe
and page here; a search matching more is read like a filter, window by window."""
_WINDOWS: Final = (
    timedelta(hours=1), timedelta(days=1), timedelta(days=7), timedelta(days=35), None
)
"""The time ranges a page is looked for in, each below the last (None: everything older). At
the volumes the benchmark loads (33,000 runs a day) the first hour fills a page of 50 without
a filter and with any filter that keeps one run in 30; rarer ones read further back, the whole
table at worst, in five queries."""

# --------------------------------------------------------------------------- SQL pieces

_DERIVED_STATUS: Final = (
    "multiIf(status = 'running' AND stuck_after IS NOT NULL AND stuck_after < {now}, 'stuck', "
    "status = 'scheduled' AND scheduled_for IS NOT NULL AND scheduled_for < {now}, 'overdue', "
    "status)"
).replace("{now}", "fromUnixTimestamp64Micro({now_us:Int64}, 'UTC')")
"""runs_current's multiIf, against a `now` passed in (a page and its counts see one instant)."""

_LIST_COLUMNS: Final = (
    "run_id, project, flow, app, status, created_at, scheduled_for, started_at, finished_at, "
    "duration_ms, trigger_event, trigger_event_id, parent_run_id, retrigger_of, step_count, "
    "failed_step_count, error_type, error_message, stuck_after, version, updated_at"
)
LIST_SELECT: Final = f"{_DERIVED_STATUS} AS derived_status, {_LIST_COLUMNS}"
PROJECTS_CONDITION: Final = "project IN {projects:Array(String)}"
"""The runs of the caller's projects only (RunFilter.projects), bound as `projects`."""


@dataclass(frozen=True)
class _Where:
    """A WHERE clause's conditions and the parameters they bind."""

    conditions: tuple[str, ...]
    parameters: dict[str, Any]

    def sql(self, *more: str) -> str:
        conditions = (*self.conditions, *more)
        return " AND ".join(conditions) if conditions else "1"


def micros(at: datetime) -> int:
    if at.tzinfo is None:
        raise RunFilterError(f"{at!r}: expected an aware datetime (with a UTC offset)")
    return (at - _EPOCH) // timedelta(microseconds=1)


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _filter_where(run_filter: RunFilter) -> _Where:
    """The filter's conditions without its status part: each is true of every row of a run or
    of none (project, flow, created_at and run_id never change for a run; the trigger only
    goes from unknown to known), so they can be applied before a run's rows are deduplicated."""
    conditions: list[str] = []
    parameters: dict[str, Any] = {}
    if run_filter.project is not None:
        conditions.append("project = {project:String}")
        parameters["project"] = run_filter.project
    if run_filter.projects is not None:
        conditions.append(PROJECTS_CONDITION)
        parameters["projects"] = list(run_filter.projects)
    if run_filter.flow is not None:
        conditions.append("flow = {flow:String}")
        parameters["flow"] = run_filter.flow
    if run_filter.since is not None:
        conditions.append("created_at >= fromUnixTimestamp64Micro({since_us:Int64}, 'UTC')")
        parameters["since_us"] = micros(run_filter.since)
    if run_filter.until is not None:
        conditions.append("created_at < fromUnixTimestamp64Micro({until_us:Int64}, 'UTC')")
        parameters["until_us"] = micros(run_filter.until)
    search = (run_filter.search or "").strip()
    if search:
        matches = ["run_id = {search:String}", "trigger_event = {search:String}",
                   "trigger_event_id = {search:String}"]
        if len(search) >= 4:
            matches.append("startsWith(run_id, {search:String})")
        conditions.append(f"({' OR '.join(matches)})")
        parameters["search"] = search
    return _Where(tuple(conditions), parameters)


def _statuses(run_filter: RunFilter) -> tuple[str, ...]:
    unknown = [status for status in run_filter.status if status not in RUN_STATUS_FILTERS]
    if unknown:
        raise RunFilterError(
            f"status: {unknown} not run statuses; expected any of {list(RUN_STATUS_FILTERS)}"
        )
    return run_filter.status


# --------------------------------------------------------------------------- the list


def as_utc(at: datetime | None) -> datetime | None:
    if at is None:
        return None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def list_item(row: Sequence[Any]) -> RunListItem:
    """A RunListItem from a row of `LIST_SELECT`."""
    (
        derived, run_id, project, flow, app, status, created_at, scheduled_for, started_at,
        finished_at, duration_ms, trigger_event, trigger_event_id, parent_run_id, retrigger_of,
        step_count, failed_step_count, error_type, error_message, _stuck_after, _version,
        _updated_at,
    ) = row
    return RunListItem(
        run_id=run_id, project=project, flow=flow, app=app, status=derived,
        recorded_status=status, created_at=as_utc(created_at),
        scheduled_for=as_utc(scheduled_for), started_at=as_utc(started_at),
        finished_at=as_utc(finished_at), duration_ms=duration_ms, trigger_event=trigger_event,
        trigger_event_id=trigger_event_id, parent_run_id=parent_run_id,
        retrigger_of=retrigger_of, step_count=step_count, failed_step_count=failed_step_count,
        error=(
            ErrorView(type=error_type, message=error_message)
            if error_type or error_message else None
        ),
    )


def _now_us(now: datetime | None) -> int:
    return micros(now or datetime.now(UTC))


def list_runs(
    client: Client,
    database: str,
    run_filter: RunFilter,
    *,
    cursor: str | None = None,
    limit: int = 50,
    now: datetime | None = None,
) -> RunPage:
    """A page of runs matching the filter, newest first by (created_at, run_id), from
    `cursor` (a previous page's `next_cursor`; None: the newest); its counts by derived status
    (the filter without its status part) and `newest_version` (as `runs_changed`).

    `now` decides the derived statuses (overdue, stuck); default: the clock.
    CursorError (projections/cursors.py) for a cursor that is not one; RunFilterError for an
    unknown status or a limit outside 1..MAX_LIMIT."""
    if not 1 <= limit <= MAX_LIMIT:
        raise RunFilterError(f"limit: {limit}; expected 1 to {MAX_LIMIT}")
    statuses = _statuses(run_filter)
    where = _filter_where(run_filter)
    now_us = _now_us(now)
    after = None
    if cursor is not None:
        after_at, after_id = decode_cursor(cursor, datetime, str)
        after = (micros(after_at), after_id)
    page: list[RunListItem] | None = None
    counts: dict[str, int] | None = None
    if run_filter.search:
        found = _search(client, database, where, now_us)
        if found is not None:
            page, counts = _page_of(found, statuses, after, limit)
    if page is None:
        page = _page_by_windows(client, database, where, statuses, after, limit, now_us)
    if counts is None:
        counts = _counts(client, database, where, now_us)
    more = len(page) > limit
    page = page[:limit]
    last = page[-1] if more else None
    return RunPage(
        runs=page,
        next_cursor=None if last is None else encode_cursor((last.created_at, last.run_id)),
        counts=counts,
        newest_version=_newest_version(client, database, where),
    )


def _page_by_windows(
    client: Client,
    database: str,
    where: _Where,
    statuses: tuple[str, ...],
    after: tuple[int, str] | None,
    limit: int,
    now_us: int,
) -> list[RunListItem]:
    """limit + 1 runs below `after`, read window by window (_WINDOWS) going back in time: each
    query reads one short key range of each project, FINAL within it, and stops at its LIMIT."""
    parameters = {**where.parameters, "now_us": now_us}
    conditions = list(where.conditions)
    if statuses:
        conditions.append(f"{_DERIVED_STATUS} IN {{statuses:Array(String)}}")
        parameters["statuses"] = list(statuses)
    if after is not None:
        # The keyset: (created_at, run_id) below the cursor's, spelled so the key index uses it.
        conditions.append(
            "created_at <= fromUnixTimestamp64Micro({after_us:Int64}, 'UTC') AND "
            "(created_at < fromUnixTimestamp64Micro({after_us:Int64}, 'UTC') "
            "OR run_id < {after_id:String})"
        )
        parameters["after_us"], parameters["after_id"] = after
    anchor_us = after[0] if after is not None else parameters.get("until_us", now_us)
    floor_us = parameters.get("since_us")
    found: list[RunListItem] = []
    upper: int | None = None  # the first window has no upper bound: clocks run ahead
    for window in _WINDOWS:
        lower = None if window is None else anchor_us - window // timedelta(microseconds=1)
        bounds = []
        if lower is not None:
            bounds.append("created_at >= fromUnixTimestamp64Micro({lower_us:Int64}, 'UTC')")
            parameters["lower_us"] = lower
        if upper is not None:
            bounds.append("created_at < fromUnixTimestamp64Micro({upper_us:Int64}, 'UTC')")
            parameters["upper_us"] = upper
        parameters["want"] = limit + 1 - len(found)
        rows = client.query(
            f"SELECT {LIST_SELECT} FROM {database}.run_list FINAL "
            f"WHERE {' AND '.join([*conditions, *bounds]) or '1'} "
            "ORDER BY created_at DESC, run_id DESC LIMIT {want:UInt32}",
            parameters=parameters,
        ).result_rows
        found.extend(list_item(row) for row in rows)
        if len(found) > limit or lower is None or (floor_us is not None and lower <= floor_us):
            break
        upper = lower
    return found


def _search(
    client: Client, database: str, where: _Where, now_us: int
) -> list[RunListItem] | None:
    """Every run a search matches, newest row of each (None if it matches more rows than
    SEARCH_CANDIDATES). Read without FINAL: the conditions hold for all of a run's rows or
    none, so the newest row among those read is the run's newest."""
    rows = client.query(
        f"SELECT {LIST_SELECT} FROM {database}.run_list WHERE {where.sql()} "
        "LIMIT {cap:UInt32}",
        parameters={**where.parameters, "now_us": now_us, "cap": SEARCH_CANDIDATES + 1},
    ).result_rows
    if len(rows) > SEARCH_CANDIDATES:
        return None
    newest: dict[tuple[str, str], tuple[int, Sequence[Any]]] = {}
    for row in rows:
        key, version = (row[2], row[1]), row[-2]
        held = newest.get(key)
        if held is None or held[0] < version:
            newest[key] = (version, row)
    return [list_item(row) for _, row in newest.values()]


def _page_of(
    runs: list[RunListItem],
    statuses: tuple[str, ...],
    after: tuple[int, str] | None,
    limit: int,
) -> tuple[list[RunListItem], dict[str, int]]:
    """limit + 1 runs of `runs` (all the filter matches), and their counts by status."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    ordered = sorted(
        (run for run in runs if not statuses or run.status in statuses),
        key=lambda run: (run.created_at, run.run_id), reverse=True,
    )
    if after is not None:
        ordered = [run for run in ordered if (micros(run.created_at), run.run_id) < after]
    return ordered[: limit + 1], counts


def _counts(client: Client, database: str, where: _Where, now_us: int) -> dict[str, int]:
    rows = client.query(
        f"SELECT {_DERIVED_STATUS} AS derived_status, count() FROM {database}.run_list FINAL "
        f"WHERE {where.sql()} GROUP BY derived_status",
        parameters={**where.parameters, "now_us": now_us},
    ).result_rows
    return {str(status): int(count) for status, count in rows}


def _newest_version(client: Client, database: str, where: _Where) -> str:
    """Rows, newest write and highest version among the filter's rows, without FINAL: any
    insert of a matching run's row changes one of them (a merge that drops superseded rows
    changes the count, which only costs the dashboard one reload). Derived statuses that change
    with the clock alone (a run becoming overdue or stuck) do not change it."""
    count, updated_at, version = client.query(
        f"SELECT count(), toUnixTimestamp64Micro(max(updated_at)), max(version) "
        f"FROM {database}.run_list WHERE {where.sql()}",
        parameters=where.parameters,
    ).result_rows[0]
    return f"{count}-{updated_at}-{version}"


def list_flows(
    client: Client, database: str, *, projects: tuple[str, ...] | None = None
) -> list[tuple[str, str]]:
    """Every (project, flow) that has runs or a definition (of `projects`, if given), sorted:
    the list's filter choices. Reads two LowCardinality columns of run_list (no FINAL: a run's
    rows agree on both)."""
    where = "" if projects is None else f" WHERE {PROJECTS_CONDITION}"
    rows = client.query(
        f"SELECT DISTINCT project, flow FROM {database}.run_list{where} UNION DISTINCT "
        f"SELECT DISTINCT project, slug FROM {database}.flows{where}",
        parameters={} if projects is None else {"projects": list(projects)},
    ).result_rows
    return sorted((str(project), str(flow)) for project, flow in rows)


def runs_changed(client: Client, database: str, run_filter: RunFilter) -> str:
    """The filter's `newest_version` alone (one cheap query): the dashboard polls it and
    reloads the page when it differs from the page's. The filter's status part is ignored."""
    return _newest_version(client, database, _filter_where(run_filter))


# --------------------------------------------------------------------------- one run

_STEP_COLUMNS: Final = (
    "step_key, kind, status, attempt, started_at, finished_at, duration_ms, error_type, "
    "error_message, error_stack, input, output, metadata, deadline_at"
)
_ATTEMPT_EVENT_TYPES: Final = (
    "step.started", "step.completed", "step.failed", "step.skipped", "step.sleeping",
    "step.waiting", "step.invoked",
)
_ENDS: Final = {"step.completed": "completed", "step.failed": "failed", "step.skipped": "skipped"}
_LINK_SELECT: Final = f"run_id, project, flow, {_DERIVED_STATUS} AS derived_status"


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
    now_us = _now_us(now)
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
