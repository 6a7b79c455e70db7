"""The ClickHouse queries Steplog asks of its own tables, in one place: their SQL and their rows.

- **A run's end** (`RUN_END_SQL`, `RunEnd`): the SDK's result handle (over its own HTTP client,
  producers/run_end_lookup.py) and `steplog runs result` (over the analyst's client).
- **A run by id** (`find_run_query`, `RunSummary`): `steplog runs cancel | retrigger | result`.
- **The analyst queries** (`ANALYST_QUERIES`): the README's examples, which the demo prints and a
  test keeps identical to the README's copies, so the documented SQL is SQL that runs.
- **Replay's comparison** (`table_columns_query`, `rows_only_in_sql`): a live table against its
  rebuilt twin.

Nothing here connects or imports clickhouse-connect: the SDK must stay light, so each caller runs
the SQL over the client it has and hands the rows back here to be read.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydantic import JsonValue

from steplog.errors import RunCancelledError, RunExpiredError, RunFailedError
from steplog.schemas.base import ErrorInfo
from steplog.schemas.events import RunCancelled, RunCompleted, RunFailed
from steplog.schemas.statuses import RunStatus

__all__ = [
    "ANALYST_QUERIES",
    "RUN_END_SQL",
    "RUN_END_TYPES",
    "AnalystQuery",
    "RunEnd",
    "RunSummary",
    "find_run_query",
    "rows_only_in_sql",
    "table_columns_query",
]

# --------------------------------------------------------------------------- a run's end

RUN_END_TYPES: Final = ("run.completed", "run.failed", "run.cancelled")
"""The event types that end a run; its first one in the log is its result."""

RUN_END_SQL: Final = (
    "SELECT type, flow, payload FROM events "
    "WHERE project = {project:String} AND run_id = {run_id:String} "
    "AND type IN ('run.completed', 'run.failed', 'run.cancelled') "
    "ORDER BY log_offset LIMIT 1"
)
"""The run's first end event in the `events` table: the run's own end event holds the output
and the error as the worker wrote them, where `runs_current` may rank a later event above a
cancel that was first in the log (producers/run_results.py)."""


@dataclass(frozen=True)
class RunEnd:
    """How a run ended: its first run.completed, run.failed or run.cancelled."""

    run_id: str
    project: str
    workflow: str
    status: RunStatus
    """COMPLETED, FAILED, CANCELLED or EXPIRED (a run.cancelled marked expired)."""
    output: JsonValue = None
    error: ErrorInfo | None = None
    reason: str | None = None

    @classmethod
    def from_event(cls, event: RunCompleted | RunFailed | RunCancelled) -> RunEnd:
        ended = cls(event.run_id, event.project, event.flow, RunStatus.COMPLETED)
        if isinstance(event, RunCompleted):
            return dataclasses.replace(ended, output=event.payload.output)
        if isinstance(event, RunFailed):
            return dataclasses.replace(ended, status=RunStatus.FAILED, error=event.payload.error)
        return dataclasses.replace(
            ended, status=RunStatus.EXPIRED if event.payload.expired else RunStatus.CANCELLED,
            reason=event.payload.reason,
        )

    @classmethod
    def from_row(
        cls, run_id: str, project: str, workflow: str, event_type: str, payload: str
    ) -> RunEnd:
        """From a row of RUN_END_SQL: the event's type and its payload as JSON text."""
        document: Any = json.loads(payload) if payload else {}
        ended = cls(run_id, project, workflow, RunStatus.COMPLETED)
        if event_type == "run.completed":
            return dataclasses.replace(ended, output=document.get("output"))
        if event_type == "run.failed":
            error = ErrorInfo.model_validate(document["error"])
            return dataclasses.replace(ended, status=RunStatus.FAILED, error=error)
        if event_type == "run.cancelled":
            expired = bool(document.get("expired"))
            return dataclasses.replace(
                ended, status=RunStatus.EXPIRED if expired else RunStatus.CANCELLED,
                reason=document.get("reason"),
            )
        raise ValueError(f"{event_type!r} is not a run's end; expected one of {RUN_END_TYPES}")

    def result(self) -> JsonValue:
        """The run's output, or the exception that says why there is none."""
        if self.status is RunStatus.COMPLETED:
            return self.output
        if self.status is RunStatus.FAILED:
            error = self.error or ErrorInfo(type="Error", message="")
            raise RunFailedError(
                self.run_id, self.workflow, error.type, error.message, error.stack
            )
        if self.status is RunStatus.EXPIRED:
            raise RunExpiredError(self.run_id, self.workflow, self.reason)
        raise RunCancelledError(self.run_id, self.workflow, self.reason)


# --------------------------------------------------------------------------- a run by id


@dataclass(frozen=True)
class RunSummary:
    """What `steplog runs cancel | retrigger | result` need of a run: its row in runs_current,
    as `find_run_query` selects it (not the fold's full `RunRow` of the `runs` table)."""

    project: str
    flow: str
    app: str
    input: Any
    trigger_event: str
    trigger_event_id: str
    status: str

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> RunSummary:
        project, flow, app, input_text, trigger_event, trigger_event_id, status = row
        return cls(
            project=str(project),
            flow=str(flow),
            app=str(app),
            input=json.loads(input_text) if input_text else None,
            trigger_event=str(trigger_event),
            trigger_event_id=str(trigger_event_id),
            status=str(status),
        )


def find_run_query(run_id: str, project: str | None) -> tuple[str, dict[str, object]]:
    """The SQL and parameters that select run `run_id` (in `project`, if named) from
    runs_current, one `RunSummary` row per project the id is in."""
    sql = (
        "SELECT project, flow, app, input, trigger_event, trigger_event_id, recorded_status "
        "FROM runs_current WHERE run_id = {run_id:String}"
    )
    parameters: dict[str, object] = {"run_id": run_id}
    if project is not None:
        sql += " AND project = {project:String}"
        parameters["project"] = project
    return sql, parameters


# --------------------------------------------------------------------------- analyst queries


@dataclass(frozen=True)
class AnalystQuery:
    title: str
    sql: str


ANALYST_QUERIES = (
    AnalystQuery(
        "Failure rate per step per hour",
        """SELECT flow, step_key, toStartOfHour(minute) AS hour,
       sum(failed) AS failures, sum(outcomes) AS attempts,
       round(failures / attempts, 3) AS failure_rate
FROM step_outcomes_minutely
GROUP BY flow, step_key, hour
ORDER BY hour DESC, failure_rate DESC""",
    ),
    AnalystQuery(
        "p95 duration per step",
        """SELECT flow, step_key, count() AS finished,
       round(quantile(0.95)(duration_ms), 1) AS p95_ms
FROM steps_current
WHERE status = 'completed'
GROUP BY flow, step_key
ORDER BY p95_ms DESC""",
    ),
    AnalystQuery(
        "Runs stuck now",
        """SELECT r.flow AS flow, r.run_id AS run_id, s.step_key AS step_key,
       s.started_at AS started_at, s.deadline_at AS deadline_at
FROM runs_current AS r
INNER JOIN steps_current AS s USING (project, flow, run_id)
WHERE r.status = 'stuck' AND s.status = 'stuck'
ORDER BY s.deadline_at""",
    ),
    AnalystQuery(
        "The slowest runs of a flow today",
        """SELECT run_id, status, round(duration_ms, 1) AS duration_ms, started_at
FROM runs_current
WHERE flow = 'checkout' AND started_at >= today() AND finished_at IS NOT NULL
ORDER BY duration_ms DESC
LIMIT 5""",
    ),
    AnalystQuery(
        "Steps that needed more than one attempt",
        """SELECT flow, run_id, step_key, attempt, status
FROM steps_current
WHERE attempt > 1
ORDER BY attempt DESC, run_id
LIMIT 10""",
    ),
)


# --------------------------------------------------------------------------- replay's comparison


def table_columns_query(database: str, table: str) -> tuple[str, dict[str, object]]:
    """The SQL and parameters that list a table's column names, in order, one per row."""
    return (
        "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String} "
        "ORDER BY position",
        {"db": database, "t": table},
    )


def rows_only_in_sql(table: str, other: str, columns: str) -> str:
    """The rows of `table` that `other` does not have, both as of FINAL (`columns`: the
    comma-separated column list to compare)."""
    return f"SELECT {columns} FROM {table} FINAL EXCEPT SELECT {columns} FROM {other} FINAL"
