"""The operations summary (`GET /v1/ops`): seed 003's escalation signals, read from the
projections. Failed runs per flow in 5-minute buckets and whether they spike, the overdue runs
now and over the window, the stuck runs, the dead letters; the processors' lag is handed in (the
web service reads it from Kafka; projections never touch Kafka).

Nothing here runs FINAL over a whole table:
- failures read `run_list` within its key's created_at range: the window plus
  `FAILURE_CREATED_MARGIN`. A run counts in the bucket of its finish; a run whose first event is
  more than the margin older than the window's start and that ends inside it is missed (a run
  that long is not the kind whose failures make a spike, and its failure is on the run list);
- overdue and stuck runs can be of any age, so they are found first without FINAL by the
  condition itself (any row of a run that meets it now, or did: a superset, cheap because it
  reads a few columns and keeps a few rows), and only those runs' rows are read again, the
  newest of each kept and the condition checked on it.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from clickhouse_connect.driver.client import Client

from .read_models import FailureBucket, LagView, OpsSummary, OverduePoint, SpikeView
from .run_reads import LIST_SELECT, PROJECTS_CONDITION, as_utc, list_item, micros

__all__ = [
    "FAILURE_CREATED_MARGIN",
    "SPIKE_FACTOR",
    "SPIKE_MIN_FAILED",
    "SPIKE_RECENT_MINUTES",
    "STUCK_SHOWN",
    "ops_summary",
]

SPIKE_RECENT_MINUTES: Final = 15
"""The recent period a spike is judged on: long enough to hold a few failures of a busy flow,
short enough that an operator hears of it while it is happening."""
SPIKE_MIN_FAILED: Final = 5
"""No spike below this many recent failures: with a quiet baseline (0 or 1 per period), a pair
of failures would be "3x" and page someone for noise."""
SPIKE_FACTOR: Final = 3.0
"""A spike is this many times the baseline (the mean per recent period over the rest of the
window): well outside the hour-to-hour wobble of a steady failure rate."""
FAILURE_CREATED_MARGIN: Final = timedelta(hours=24)
"""How long before the window a run that fails inside it may have begun (module docstring)."""
STUCK_SHOWN: Final = 20
"""The oldest stuck runs listed."""

_AT: Final = "fromUnixTimestamp64Micro({%s:Int64}, 'UTC')"


def _at(name: str) -> str:
    return _AT % name


def ops_summary(
    client: Client,
    database: str,
    *,
    lag: LagView,
    projects: tuple[str, ...] | None = None,
    now: datetime | None = None,
    window: timedelta = timedelta(hours=24),
    bucket_minutes: int = 5,
) -> OpsSummary:
    """The operations page as of `now` (default: the clock) over the `window` before it, of
    the runs of `projects` (None: every project). Dead letters carry no project: counted for
    every project only, 0 otherwise."""
    if bucket_minutes < 1 or window < timedelta(minutes=bucket_minutes):
        raise ValueError(
            f"bucket_minutes={bucket_minutes}, window={window}: expected at least 1 minute "
            "per bucket and a window of at least one bucket"
        )
    end = (now or datetime.now(UTC)).astimezone(UTC)
    bucket = timedelta(minutes=bucket_minutes)
    # Buckets aligned on the epoch (as toStartOfInterval), the last one holding `end`.
    first = _floor(end - window, bucket)
    start = end - window
    parameters: dict[str, Any] = {
        "start_us": micros(start), "end_us": micros(end), "first_us": micros(first),
        "created_from_us": micros(start - FAILURE_CREATED_MARGIN),
        "recent_us": micros(end - timedelta(minutes=SPIKE_RECENT_MINUTES)),
        "bucket_minutes": bucket_minutes, "now_us": micros(end),
    }
    # Every run condition below is ANDed with `scope`: true, or the caller's projects.
    scope = "1"
    if projects is not None:
        scope, parameters["projects"] = PROJECTS_CONDITION, list(projects)
    failures, spike = _failures(client, database, parameters, window, scope)
    overdue_count, overdue_oldest_ms, trend = _overdue(client, database, parameters, first,
                                                       end, bucket, scope)
    stuck_count, stuck = _stuck(client, database, parameters, scope)
    # Dead letters carry no trustworthy project (what could not be read has none): only a
    # reader of every project is told about them; for the others the counts are unknown.
    day: int | None = None
    total: int | None = None
    if projects is None:
        day, total = (int(value) for value in client.query(
            f"SELECT countIf(ts >= {_at('day_us')}), count() FROM {database}.dead_letters FINAL",
            parameters={"day_us": micros(end - timedelta(hours=24))},
        ).result_rows[0])
    return OpsSummary(
        window_start=start, window_end=end, bucket_minutes=bucket_minutes, failures=failures,
        spike=spike, overdue_count=overdue_count, overdue_oldest_ms=overdue_oldest_ms,
        overdue_trend=trend, stuck_count=stuck_count, stuck_runs=stuck,
        dead_letters_24h=day, dead_letters_total=total, lag=lag,
    )


def _floor(at: datetime, bucket: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + (at - epoch) // bucket * bucket


def _failures(
    client: Client, database: str, parameters: dict[str, Any], window: timedelta, scope: str
) -> tuple[list[FailureBucket], SpikeView]:
    rows = client.query(
        "SELECT flow, toStartOfInterval(finished_at, toIntervalMinute({bucket_minutes:UInt32})) "
        "AS bucket, finished_at >= " + _at("recent_us") + " AS recent, "
        "countIf(status = 'failed') AS failed, count() AS finished "
        f"FROM {database}.run_list FINAL "
        f"WHERE created_at >= {_at('created_from_us')} AND finished_at >= {_at('start_us')} "
        f"AND finished_at < {_at('end_us')} AND {scope} "
        "GROUP BY flow, bucket, recent",
        parameters=parameters,
    ).result_rows
    buckets: dict[tuple[str, datetime], list[int]] = defaultdict(lambda: [0, 0])
    recent_failed = older_failed = 0
    recent_flows: set[str] = set()
    for flow, at, recent, failed, finished in rows:
        held = buckets[(flow, as_utc(at) or at)]
        held[0] += failed
        held[1] += finished
        if recent:
            recent_failed += failed
            if failed:
                recent_flows.add(flow)
        else:
            older_failed += failed
    failures = [
        FailureBucket(flow=flow, bucket=at, failed=failed, finished=finished)
        for (flow, at), (failed, finished) in sorted(
            buckets.items(), key=lambda item: (item[0][1], item[0][0])
        )
        if failed
    ]
    return failures, _spike(recent_failed, older_failed, window, sorted(recent_flows))


def _spike(recent: int, older: int, window: timedelta, flows: list[str]) -> SpikeView:
    recent_period = timedelta(minutes=SPIKE_RECENT_MINUTES)
    periods = max((window - recent_period) / recent_period, 1.0)
    baseline = older / periods
    threshold = max(SPIKE_MIN_FAILED, SPIKE_FACTOR * baseline)
    flagged = recent >= threshold
    detail = (
        f"{recent} runs failed in the last {SPIKE_RECENT_MINUTES} minutes against "
        f"{baseline:.1f} per {SPIKE_RECENT_MINUTES} minutes before: "
        + ("a spike" if flagged else f"no spike (one needs {threshold:.0f})")
    )
    return SpikeView(
        flagged=flagged, recent_failed=recent, baseline_failed=round(baseline, 3),
        recent_minutes=SPIKE_RECENT_MINUTES, flows=flows, detail=detail,
    )


_KEY: Final = "project, created_at, run_id"


def _newest_rows_where(database: str, condition: str, columns: str) -> str:
    """SQL (FROM ... WHERE) for the runs whose newest row meets `condition`: the keys of any
    row meeting it (a superset), those keys' rows (`columns` of them, which `condition` must
    name), the newest of each (LIMIT 1 BY: half the cost of FINAL over the same keys,
    measured), the condition again on it."""
    return (
        f"FROM (SELECT {_KEY}, version, {columns} FROM {database}.run_list WHERE ({_KEY}) IN ("
        f"SELECT {_KEY} FROM {database}.run_list WHERE {condition}) "
        f"ORDER BY {_KEY}, version DESC LIMIT 1 BY {_KEY}) WHERE {condition}"
    )


_OVERDUE_COLUMNS: Final = "status, scheduled_for, started_at, finished_at"


_OVERDUE_NOW: Final = (
    "status = 'scheduled' AND scheduled_for IS NOT NULL AND scheduled_for < "
    + _at("now_us")
)
_OVERDUE_IN_WINDOW: Final = (
    "scheduled_for IS NOT NULL AND scheduled_for < " + _at("end_us")
    + " AND (started_at IS NULL OR started_at > " + _at("first_us") + ")"
    + " AND (finished_at IS NULL OR finished_at > " + _at("first_us") + ")"
    + " AND status IN ('scheduled', 'running', 'retrying', 'completed', 'failed', 'cancelled', "
    "'interrupted', 'expired')"
)
"""A run overdue at some time of the window: due before its end, not started nor ended before
its first bucket (the status condition only keeps the rows of runs that ever were scheduled
apart from those a filter on the times already keeps; it is true of every row)."""


def _overdue(
    client: Client,
    database: str,
    parameters: dict[str, Any],
    first: datetime,
    end: datetime,
    bucket: timedelta,
    scope: str,
) -> tuple[int, int | None, list[OverduePoint]]:
    count, oldest = client.query(
        "SELECT count(), toInt64(dateDiff('millisecond', min(scheduled_for), "
        + _at("now_us") + ")) "
        + _newest_rows_where(database, f"{_OVERDUE_NOW} AND {scope}", _OVERDUE_COLUMNS),
        parameters=parameters,
    ).result_rows[0]
    ends = []
    at = first + bucket
    while at < end:
        ends.append(at)
        at += bucket
    ends.append(end)
    rows = client.query(
        "SELECT t, countIf(scheduled_for < t AND (started_at IS NULL OR started_at > t) "
        "AND (finished_at IS NULL OR finished_at > t)) FROM (SELECT scheduled_for, started_at, "
        "finished_at "
        + _newest_rows_where(database, f"{_OVERDUE_IN_WINDOW} AND {scope}", _OVERDUE_COLUMNS)
        + ") "
        # The bucket ends are made in SQL from three numbers: a list of 288 of them as a
        # parameter is long enough for clients to send it as a form, which not every
        # endpoint in front of the engine reads.
        "ARRAY JOIN arrayMap(x -> fromUnixTimestamp64Micro(x, 'UTC'), arrayConcat(arrayMap("
        "i -> {first_us:Int64} + (toInt64(i) + 1) * {bucket_us:Int64}, range({inner:UInt32})), "
        "[{end_us:Int64}])) AS t GROUP BY t",
        parameters={**parameters, "first_us": micros(first), "bucket_us": bucket // timedelta(microseconds=1),
                    "inner": len(ends) - 1, "end_us": micros(end)},
    ).result_rows
    overdue_at = {micros(as_utc(at) or at): int(count) for at, count in rows}
    trend = [OverduePoint(at=at, count=overdue_at.get(micros(at), 0)) for at in ends]
    return int(count), (int(oldest) if count else None), trend


def _stuck(
    client: Client, database: str, parameters: dict[str, Any], scope: str
) -> tuple[int, list[Any]]:
    """How many runs are stuck, and the STUCK_SHOWN oldest (by deadline): their keys first
    (a few columns of every candidate row), then the list columns of those shown only."""
    condition = (
        "status = 'running' AND stuck_after IS NOT NULL AND stuck_after < " + _at("now_us")
        + f" AND {scope}"
    )
    keys = client.query(
        f"SELECT project, run_id, count() OVER () "
        f"{_newest_rows_where(database, condition, 'status, stuck_after')} "
        f"ORDER BY stuck_after, created_at LIMIT {STUCK_SHOWN}",
        parameters=parameters,
    ).result_rows
    if not keys:
        return 0, []
    rows = client.query(
        f"SELECT {LIST_SELECT} FROM {database}.run_list "
        "WHERE run_id IN {ids:Array(String)} AND project IN {projects:Array(String)} "
        f"ORDER BY {_KEY}, version DESC LIMIT 1 BY {_KEY}",
        parameters={**parameters, "ids": [run_id for _, run_id, _ in keys],
                    "projects": sorted({project for project, _, _ in keys})},
    ).result_rows
    items = {(item.project, item.run_id): item for item in map(list_item, rows)}
    shown = [items[(project, run_id)] for project, run_id, _ in keys
             if (project, run_id) in items]
    return int(keys[0][2]), shown
