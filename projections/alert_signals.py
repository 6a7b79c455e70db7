"""What the alert rules judge (steplog/server/alert_rules.py), read from the projections: seed
003's escalation signals as numbers at one instant. The processors' lag is Kafka's to tell and
is added by the caller.

Like projections/ops_reads.py, nothing here runs FINAL over a whole table: failures read
`run_list` within its key's created_at range (the window and baseline plus
`FAILURE_CREATED_MARGIN`), and overdue and stuck runs are found by their condition first (a
superset of rows without FINAL), then the newest row of each of those runs is checked again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from clickhouse_connect.driver.client import Client

from .ops_reads import FAILURE_CREATED_MARGIN
from .run_reads import micros

__all__ = ["AlertSignals", "FlowFailures", "read_alert_signals"]

_KEY: Final = "project, created_at, run_id"


@dataclass(frozen=True)
class FlowFailures:
    """One flow's failed runs: ended in the window, and ended in the baseline before it."""

    project: str
    flow: str
    recent: int
    baseline: int


@dataclass(frozen=True)
class AlertSignals:
    at: datetime
    window: timedelta
    baseline: timedelta
    failures: tuple[FlowFailures, ...]
    overdue_now: int
    overdue_window_ago: int
    stuck: int
    dead_letters_recent: int
    lag: int | None
    """Events the processors have not read yet; None when Kafka did not say."""


def _at(name: str) -> str:
    return "fromUnixTimestamp64Micro({%s:Int64}, 'UTC')" % name


def read_alert_signals(
    client: Client, database: str, *, at: datetime, window: timedelta, baseline: timedelta,
    lag: int | None,
) -> AlertSignals:
    """The signals as of `at` over the `window` before it (and the `baseline` before that)."""
    parameters: dict[str, Any] = {
        "end_us": micros(at), "recent_us": micros(at - window),
        "start_us": micros(at - window - baseline),
        "created_from_us": micros(at - window - baseline - FAILURE_CREATED_MARGIN),
    }
    failures = tuple(
        FlowFailures(project=str(project), flow=str(flow), recent=int(recent),
                     baseline=int(older))
        for project, flow, recent, older in client.query(
            f"SELECT project, flow, countIf(finished_at >= {_at('recent_us')}), "
            f"countIf(finished_at < {_at('recent_us')}) FROM {database}.run_list FINAL "
            f"WHERE created_at >= {_at('created_from_us')} AND finished_at >= {_at('start_us')} "
            f"AND finished_at < {_at('end_us')} AND status = 'failed' "
            "GROUP BY project, flow ORDER BY project, flow",
            parameters=parameters,
        ).result_rows
    )
    return AlertSignals(
        at=at, window=window, baseline=baseline, failures=failures,
        overdue_now=_overdue_at(client, database, parameters, "end_us"),
        overdue_window_ago=_overdue_at(client, database, parameters, "recent_us"),
        stuck=_count_newest(
            client, database, parameters,
            f"status = 'running' AND stuck_after IS NOT NULL AND stuck_after < {_at('end_us')}",
            "status, stuck_after",
        ),
        dead_letters_recent=int(client.query(
            f"SELECT count() FROM {database}.dead_letters FINAL "
            f"WHERE ts >= {_at('recent_us')} AND ts < {_at('end_us')}",
            parameters=parameters,
        ).result_rows[0][0]),
        lag=lag,
    )


def _overdue_at(client: Client, database: str, parameters: dict[str, Any], t: str) -> int:
    """Runs overdue at the instant bound as `t`: due before it, not started nor ended by it."""
    condition = (
        f"scheduled_for IS NOT NULL AND scheduled_for < {_at(t)} "
        f"AND (started_at IS NULL OR started_at > {_at(t)}) "
        f"AND (finished_at IS NULL OR finished_at > {_at(t)})"
    )
    return _count_newest(client, database, parameters, condition,
                         "scheduled_for, started_at, finished_at")


def _count_newest(
    client: Client, database: str, parameters: dict[str, Any], condition: str, columns: str
) -> int:
    """How many runs' newest row meets `condition` (which names only `columns`)."""
    return int(client.query(
        f"SELECT count() FROM (SELECT {_KEY}, version, {columns} FROM {database}.run_list "
        f"WHERE ({_KEY}) IN (SELECT {_KEY} FROM {database}.run_list WHERE {condition}) "
        f"ORDER BY {_KEY}, version DESC LIMIT 1 BY {_KEY}) WHERE {condition}",
        parameters=parameters,
    ).result_rows[0][0])
