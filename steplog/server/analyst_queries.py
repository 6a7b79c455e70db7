"""The README's analyst queries, in one place: the demo prints them and a test keeps the README's
copies identical, so the documented SQL is SQL that runs."""

from __future__ import annotations

from dataclasses import dataclass


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
