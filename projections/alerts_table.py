"""The `alerts` table (migration 5): one row per transition of an alert, written by the
evaluator (steplog/server/alert_evaluator.py), read by `GET /v1/alerts`."""

from __future__ import annotations

from typing import Any, Final

from clickhouse_connect.driver.client import Client

from .read_models import AlertPage, AlertView
from .run_reads import as_utc, micros

__all__ = ["ALERT_COLUMNS", "alert_page", "write_alert"]

ALERT_COLUMNS: Final = (
    "alert_id", "state", "rule", "project", "flow", "summary", "value", "threshold",
    "fired_at", "at",
)
RECENT_SHOWN: Final = 50


def write_alert(client: Client, database: str, alert: AlertView) -> None:
    """Insert the transition's row. An INSERT ... SELECT of bound parameters, not a client
    insert: on the embedded engine this goes through the SQL endpoint, which takes statements
    whose data is in parameters (steplog/server/sql_guard.py reads no inline data)."""
    values: dict[str, Any] = alert.model_dump()
    values["fired_at"], values["at"] = micros(alert.fired_at), micros(alert.at)
    selected = ", ".join(
        "fromUnixTimestamp64Micro({%s:Int64}, 'UTC')" % name if name in ("fired_at", "at")
        else "{%s:%s}" % (name, "Float64" if name in ("value", "threshold") else "String")
        for name in ALERT_COLUMNS
    )
    client.command(
        f"INSERT INTO {database}.alerts ({', '.join(ALERT_COLUMNS)}) SELECT {selected}",
        parameters=values,
    )


def alert_page(client: Client, database: str, *, projects: tuple[str, ...] | None) -> AlertPage:
    """The alerts firing now and the RECENT_SHOWN newest transitions, of `projects` (None:
    every project; a system-wide alert, of no project, is shown to readers of every project
    only)."""
    scope, parameters = "1", {}
    if projects is not None:
        scope, parameters = "project IN {projects:Array(String)}", {"projects": list(projects)}
    rows = client.query(
        f"SELECT {', '.join(ALERT_COLUMNS)} FROM {database}.alerts FINAL WHERE {scope} "
        f"ORDER BY at DESC, state LIMIT {RECENT_SHOWN}",
        parameters=parameters,
    ).result_rows
    firing_rows = client.query(
        f"SELECT {', '.join(ALERT_COLUMNS)} FROM {database}.alerts FINAL WHERE {scope} "
        "AND state = 'firing' AND alert_id NOT IN (SELECT alert_id FROM "
        f"{database}.alerts WHERE state = 'resolved') ORDER BY fired_at DESC",
        parameters=parameters,
    ).result_rows
    return AlertPage(firing=[_view(row) for row in firing_rows],
                     recent=[_view(row) for row in rows])


def _view(row: Any) -> AlertView:
    values = dict(zip(ALERT_COLUMNS, row, strict=True))
    values["fired_at"], values["at"] = as_utc(values["fired_at"]), as_utc(values["at"])
    return AlertView.model_validate(values)
