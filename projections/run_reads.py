"""The run list, read from the projections (`GET /v1/runs`, the dashboard, `steplog runs
list`); one run's detail is projections/run_detail_reads.py, over the SQL pieces here.

Nothing here runs FINAL over a whole table. The list reads `run_list` (sorted by project,
created_at, run_id; migrations.py): a page is one or a few queries over a short time range
below the cursor, FINAL within it (ReplacingMergeTree may still hold a run's older rows).
Where a page needs the whole filter (its counts by status) the read is one aggregate over the
filter's key range. A search by run id or trigger uses run_list's bloom filters and keeps each
run's newest row itself (FINAL would read the granules' neighbours too).

Every query takes its values as bound parameters (`{name:Type}`); times are passed as
microseconds since the epoch, so that no value is ever formatted into the SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from clickhouse_connect.driver.client import Client

from steplog.errors import SteplogError

from .cursors import CursorError, decode_cursor, encode_cursor
from .read_models import (
    RUN_STATUS_FILTERS,
    ErrorView,
    RunFilter,
    RunListItem,
    RunPage,
)

__all__ = [
    "DERIVED_STATUS",
    "LIST_SELECT",
    "PROJECTS_CONDITION",
    "CursorError",
    "RunFilterError",
    "as_utc",
    "list_flows",
    "list_item",
    "list_runs",
    "micros",
    "now_micros",
    "runs_changed",
]


class RunFilterError(SteplogError):
    """A run filter's value cannot be used (an unknown status, a limit out of range)."""


MAX_LIMIT: Final = 500
"""The most runs one page holds."""
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

DERIVED_STATUS: Final = (
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
LIST_SELECT: Final = f"{DERIVED_STATUS} AS derived_status, {_LIST_COLUMNS}"
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


def now_micros(now: datetime | None) -> int:
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
    now_us = now_micros(now)
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
        conditions.append(f"{DERIVED_STATUS} IN {{statuses:Array(String)}}")
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
        f"SELECT {DERIVED_STATUS} AS derived_status, count() FROM {database}.run_list FINAL "
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
