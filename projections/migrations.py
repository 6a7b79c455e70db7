"""Steplog's ClickHouse tables and views, created and evolved by numbered migrations.

Each migration is a list of idempotent statements (`IF NOT EXISTS`, `CREATE OR REPLACE VIEW`),
and the versions applied are recorded in `schema_migrations`. Re-running `migrate` is a no-op;
two processes migrating at once both succeed.

Design in one paragraph: `events` mirrors the log (one row per event; ReplacingMergeTree on
event_id, so a re-delivered event collapses); `runs` and `steps` hold the folded state, one row
per change, with a `version` that counts the events folded into the run, so ReplacingMergeTree
keeps the newest row; `run_list` holds the columns of `runs` a run list shows, sorted newest
first within a project (the dashboard's and `GET /v1/runs`' reads, projections/run_reads.py);
`flows` holds the latest definition of each flow; `dead_letters` the messages the processors
refused (filled from the DLQ topic, not rebuilt by replay). Analysts read the views:
`runs_current` / `steps_current` give exactly one row per run / step with the derived statuses
(`stuck`, `overdue`) and are correct before any merge (FINAL), `runs_overdue` lists the
scheduled runs due in the past with how late they are, and the `*_minutely` views aggregate
outcomes and duration quantiles. The projection tables (`PROJECTION_TABLES`) are the
ones replay rebuilds under another name and swaps in.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Literal

from clickhouse_connect.driver.client import Client

from steplog.errors import ClickHouseError
from steplog.settings import load_settings

from .created_at import EARLIEST_KNOWN_SQL

log = logging.getLogger("steplog.migrations")

TS = "DateTime64(6, 'UTC')"
PROJECTION_TABLES = ("events", "runs", "steps", "flows", "run_list")
"""The tables replay rebuilds. `run_list` is last: the writer derives its rows from the runs rows
of the same write (`RUN_LIST_COLUMNS`), so a run listed has its steps written already."""

RUN_LIST_COLUMNS = (
    "project", "created_at", "run_id", "flow", "app", "status", "scheduled_for", "started_at",
    "finished_at", "duration_ms", "error_type", "error_message", "parent_run_id",
    "trigger_event", "trigger_event_id", "retrigger_of", "stuck_after", "step_count",
    "failed_step_count", "version", "updated_at",
)
"""`run_list`'s columns: those of `runs` a run list shows (not its input, output, error stack:
the detail reads them from `runs`, by key), under the same names."""


def table_ddl(table: str, qualified_name: str) -> str:
    """CREATE TABLE for one projection table under any name (replay builds beside the live one)."""
    return _TABLES[table].replace("{name}", qualified_name)


_TABLES = {
    "events": f"""
        CREATE TABLE IF NOT EXISTS {{name}} (
            event_id String,
            type LowCardinality(String),
            schema_version UInt16,
            project LowCardinality(String),
            flow LowCardinality(String),
            run_id String,
            step_key String COMMENT 'empty for run events',
            attempt UInt32,
            seq UInt64,
            ts {TS},
            payload String COMMENT 'the typed payload as JSON',
            log_partition UInt32 COMMENT 'Kafka partition the event was read from',
            log_offset UInt64 COMMENT 'Kafka offset the event was read from'
        )
        -- log_offset as the version: an event sent twice (same event_id, two offsets) keeps
        -- the later copy whatever order the rows were inserted in, live or in replay.
        ENGINE = ReplacingMergeTree(log_offset)
        PARTITION BY toYYYYMM(ts)
        ORDER BY (project, flow, run_id, event_id)
    """,
    "runs": f"""
        CREATE TABLE IF NOT EXISTS {{name}} (
            project LowCardinality(String),
            flow LowCardinality(String),
            run_id String,
            app String,
            created_at {TS} DEFAULT {EARLIEST_KNOWN_SQL}
                COMMENT 'the first event''s time; rows older than migration 4 read a stand-in',
            status LowCardinality(String),
            scheduled_for Nullable({TS}),
            started_at Nullable({TS}),
            finished_at Nullable({TS}),
            duration_ms Nullable(Float64),
            input String,
            output String,
            error_type String,
            error_message String,
            error_stack String,
            parent_run_id String,
            parent_step_key String,
            trigger_event String COMMENT 'name of the signal that started the run',
            trigger_event_id String COMMENT 'event_id of that signal',
            retrigger_of String,
            stuck_after Nullable({TS}) COMMENT 'earliest deadline of a running step',
            step_count UInt32,
            failed_step_count UInt32,
            version UInt64 COMMENT 'events folded into this run so far',
            updated_at {TS} COMMENT 'newest event time folded in (not a wall clock)'
        )
        ENGINE = ReplacingMergeTree(version)
        ORDER BY (project, flow, run_id)
    """,
    "steps": f"""
        CREATE TABLE IF NOT EXISTS {{name}} (
            project LowCardinality(String),
            flow LowCardinality(String),
            run_id String,
            step_key String,
            kind LowCardinality(String),
            status LowCardinality(String),
            attempt UInt32,
            started_at Nullable({TS}),
            finished_at Nullable({TS}),
            duration_ms Nullable(Float64),
            error_type String,
            error_message String,
            error_stack String,
            input String,
            output String,
            metadata String,
            deadline_at Nullable({TS}) COMMENT 'running past this is stuck',
            version UInt64 COMMENT '2 x events of this step folded so far, +1 once closed by the run''s end (0: missing)',
            updated_at Nullable({TS}) COMMENT 'newest event time of the step (null: missing)'
        )
        ENGINE = ReplacingMergeTree(version)
        ORDER BY (project, flow, run_id, step_key)
    """,
    "flows": f"""
        CREATE TABLE IF NOT EXISTS {{name}} (
            project LowCardinality(String),
            slug String,
            name String,
            step_deadline_ms Nullable(UInt64),
            steps String COMMENT 'JSON array of steps (sdk_step_key, name, deadline_ms)',
            edges String COMMENT 'JSON array of edges (source, target)',
            defined_at {TS}
        )
        ENGINE = ReplacingMergeTree(defined_at)
        ORDER BY (project, slug)
    """,
    # The run list: newest first, one project or all, within a time range, read in the order of
    # the key (created_at never changes for a run, so a run keeps one key). A run found by id
    # alone (links, search, the detail page) is found by the bloom filters: a few granules
    # instead of the table. Partitions by month bound what a time range reads and what FINAL
    # merges (it never merges across partitions: the partition key is in the sorting key).
    "run_list": f"""
        CREATE TABLE IF NOT EXISTS {{name}} (
            project LowCardinality(String),
            created_at {TS} COMMENT 'the first event''s time (never changes for a run)',
            run_id String,
            flow LowCardinality(String),
            app LowCardinality(String),
            status LowCardinality(String),
            scheduled_for Nullable({TS}),
            started_at Nullable({TS}),
            finished_at Nullable({TS}),
            duration_ms Nullable(Float64),
            error_type String,
            error_message String,
            parent_run_id String,
            trigger_event String,
            trigger_event_id String,
            retrigger_of String,
            stuck_after Nullable({TS}),
            step_count UInt32,
            failed_step_count UInt32,
            version UInt64 COMMENT 'as in runs',
            updated_at {TS},
            INDEX run_id_bloom run_id TYPE bloom_filter(0.01) GRANULARITY 1,
            INDEX parent_bloom parent_run_id TYPE bloom_filter(0.01) GRANULARITY 1,
            INDEX retrigger_bloom retrigger_of TYPE bloom_filter(0.01) GRANULARITY 1,
            INDEX trigger_id_bloom trigger_event_id TYPE bloom_filter(0.01) GRANULARITY 1
        )
        ENGINE = ReplacingMergeTree(version)
        PARTITION BY toYYYYMM(created_at)
        ORDER BY (project, created_at, run_id)
    """,
}

_RUNS_CURRENT = """
    CREATE OR REPLACE VIEW {db}.runs_current AS
    -- `r.status` is the stored column: a bare `status` would be the derived alias below.
    SELECT
        project, flow, run_id, app,
        multiIf(
            r.status = 'running' AND stuck_after IS NOT NULL AND stuck_after < now64(6), 'stuck',
            r.status = 'scheduled' AND scheduled_for IS NOT NULL AND scheduled_for < now64(6),
            'overdue',
            r.status
        ) AS status,
        r.status AS recorded_status,
        scheduled_for, started_at, finished_at, duration_ms, input, output,
        error_type, error_message, error_stack,
        parent_run_id, parent_step_key, trigger_event, trigger_event_id, retrigger_of,
        step_count, failed_step_count, version, updated_at
    FROM {db}.runs AS r FINAL
    """

_STEPS_CURRENT = """
    CREATE OR REPLACE VIEW {db}.steps_current AS
    SELECT
        project, flow, run_id, step_key, kind,
        if(s.status = 'running' AND deadline_at IS NOT NULL AND deadline_at < now64(6),
           'stuck', s.status) AS status,
        s.status AS recorded_status,
        attempt, started_at, finished_at, duration_ms,
        error_type, error_message, error_stack, input, output, metadata,
        deadline_at, version, updated_at
    FROM {db}.steps AS s FINAL
    """

_VIEWS = (
    _RUNS_CURRENT,
    _STEPS_CURRENT,
    """
    CREATE OR REPLACE VIEW {db}.step_outcomes_minutely AS
    SELECT
        project, flow, step_key,
        toStartOfMinute(ts) AS minute,
        countIf(type = 'step.completed') AS completed,
        countIf(type = 'step.failed') AS failed,
        countIf(type = 'step.skipped') AS skipped,
        count() AS outcomes,
        quantileIf(0.5)(JSONExtract(payload, 'duration_ms', 'Nullable(Float64)'),
                        type != 'step.skipped') AS p50_ms,
        quantileIf(0.95)(JSONExtract(payload, 'duration_ms', 'Nullable(Float64)'),
                         type != 'step.skipped') AS p95_ms,
        quantileIf(0.99)(JSONExtract(payload, 'duration_ms', 'Nullable(Float64)'),
                         type != 'step.skipped') AS p99_ms
    FROM {db}.events FINAL
    WHERE type IN ('step.completed', 'step.failed', 'step.skipped')
    GROUP BY project, flow, step_key, minute
    """,
    """
    CREATE OR REPLACE VIEW {db}.run_outcomes_minutely AS
    SELECT
        project, flow,
        toStartOfMinute(finished_at) AS minute,
        countIf(status = 'completed') AS completed,
        countIf(status = 'failed') AS failed,
        countIf(status = 'cancelled') AS cancelled,
        count() AS finished,
        quantile(0.5)(duration_ms) AS p50_ms,
        quantile(0.95)(duration_ms) AS p95_ms,
        quantile(0.99)(duration_ms) AS p99_ms
    FROM {db}.runs FINAL
    WHERE finished_at IS NOT NULL
    GROUP BY project, flow, minute
    """,
)


_RUNS_OVERDUE = """
    CREATE OR REPLACE VIEW {db}.runs_overdue AS
    SELECT
        project, flow, run_id, app, scheduled_for,
        toInt64(dateDiff('millisecond', scheduled_for, now64(6))) AS overdue_by_ms
    FROM {db}.runs FINAL
    WHERE status = 'scheduled' AND scheduled_for IS NOT NULL AND scheduled_for < now64(6)
"""
"""Scheduled runs whose start is past (seed 003's "overdue": the engine never got around to
starting them, e.g. no worker defines their workflow yet, or the processors were down)."""


_RUNS_CURRENT_WITH_CREATED_AT = _RUNS_CURRENT.replace(
    "r.status AS recorded_status,", "r.status AS recorded_status, created_at,"
)
"""runs_current as of migration 4: with the run's created_at (migration 1's text stays as it
was applied)."""

_RUNS_CREATED_AT = f"""
    ALTER TABLE {{db}}.runs ADD COLUMN IF NOT EXISTS created_at {TS}
    DEFAULT {EARLIEST_KNOWN_SQL}
    COMMENT 'the first event''s time; rows older than migration 4 read a stand-in'
    AFTER app
"""
"""Rows written before it read created_at as the stand-in the fold gives a state stored before
format 4 (projections/created_at.py): the same run, the same value, wherever it comes from."""

_RUN_LIST_BACKFILL = (
    f"INSERT INTO {{db}}.run_list ({', '.join(RUN_LIST_COLUMNS)}) "
    f"SELECT {', '.join(RUN_LIST_COLUMNS)} FROM {{db}}.runs FINAL"
)
"""Fills run_list from runs. Idempotent: a run's row inserted twice has the same key and
version, so ReplacingMergeTree keeps one, and a newer row the writer added since wins by its
version."""

DEAD_LETTERS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.dead_letters (
  ts DateTime64(6,'UTC') COMMENT 'when the message was refused',
  reason String, field String,
  source_topic LowCardinality(String), source_partition UInt32, source_offset UInt64,
  key_b64 Nullable(String), value_b64 String, value_bytes UInt64, value_truncated Bool,
  dlq_partition UInt32, dlq_offset UInt64
) ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(ts) ORDER BY (ts, dlq_partition, dlq_offset)
"""
"""The messages the processors refused (read back from the DLQ topic); not a projection: replay
does not rebuild it, the DLQ topic is its source."""

ALERTS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.alerts (
  alert_id String COMMENT 'one firing of one rule for one scope, resolved by the same id',
  state LowCardinality(String) COMMENT 'firing or resolved',
  rule LowCardinality(String), project String, flow String,
  summary String, value Float64, threshold Float64,
  fired_at DateTime64(6,'UTC'), at DateTime64(6,'UTC') COMMENT 'when this transition happened'
) ENGINE = ReplacingMergeTree ORDER BY (alert_id, state)
"""
"""Firing and resolved alerts, one row per transition (steplog/server/alert_evaluator.py); a
transition written twice keeps one row."""

FLOW_STARTS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.flow_starts (
  project String, workflow String, app String,
  flow_key String COMMENT 'the key value (JSON) the start counts under; empty: the workflow',
  run_id String,
  status LowCardinality(String) COMMENT 'scheduled (held back), started or skipped',
  reason String COMMENT 'why it waits, or why it was skipped',
  priority Int32,
  requested_at DateTime64(3,'UTC'), updated_at DateTime64(3,'UTC'),
  version UInt64
) ENGINE = ReplacingMergeTree(version) ORDER BY (project, workflow, run_id)
"""
"""Starts held back by flow control (processors/flow_control_host.py), one row per start, its
latest word winning; not a projection of the events: replay does not rebuild it, the
flow-control topic is its source."""

_RUNS_FLOW_WAITING = """
    CREATE OR REPLACE VIEW {db}.runs_flow_waiting AS
    SELECT project, workflow AS flow, run_id, app, flow_key, status, reason, priority,
           requested_at
    FROM {db}.flow_starts FINAL WHERE status = 'scheduled'
"""
"""Runs whose start flow control holds back: `scheduled`, with the reason."""

_STEPS_VERSION_COMMENT = """
    ALTER TABLE {db}.steps COMMENT COLUMN version
    '2 x events of this step folded so far, +1 once closed by the run''s end (0: missing)'
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]
    """SQL with `{db}` where the database name goes (replaced textually: SQL has braces)."""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "events, runs, steps, flows and their views",
        tuple(table_ddl(table, "{db}." + table) for table in ("events", "runs", "steps", "flows"))
        + _VIEWS,
    ),
    Migration(2, "runs_overdue view", (_RUNS_OVERDUE,)),
    Migration(
        3,
        "recorded_status is the stored status in runs_current and steps_current; steps.version",
        (_RUNS_CURRENT, _STEPS_CURRENT, _STEPS_VERSION_COMMENT),
    ),
    Migration(
        4,
        "runs.created_at; run_list (the run list's table) filled from runs; dead_letters",
        (
            _RUNS_CREATED_AT,
            _RUNS_CURRENT_WITH_CREATED_AT,
            table_ddl("run_list", "{db}.run_list"),
            _RUN_LIST_BACKFILL,
            DEAD_LETTERS_DDL,
        ),
    ),
    Migration(5, "alerts", (ALERTS_DDL,)),
    Migration(
        6,
        "projection TTLs (STEPLOG_PROJECTION_TTL) count from these columns",
        tuple(
            f"ALTER TABLE {{db}}.{table} COMMENT COLUMN {column} "
            f"'{comment}; the projection TTL counts from it (STEPLOG_PROJECTION_TTL)'"
            for table, (column, comment) in {
                "events": ("ts", "event time"),
                "runs": ("updated_at", "newest event time folded in (not a wall clock)"),
                "steps": ("updated_at", "newest event time of the step (null: missing)"),
                "run_list": ("updated_at", "newest event time folded in"),
            }.items()
        ),
    ),
    Migration(7, "flow_starts and runs_flow_waiting (flow control)",
              (FLOW_STARTS_DDL, _RUNS_FLOW_WAITING)),
)

TTL_COLUMNS = {
    "events": "ts",
    "runs": "updated_at",
    "steps": "ifNull(updated_at, toDateTime64('2105-12-31 00:00:00', 6, 'UTC'))",
    "run_list": "updated_at",
}
"""The tables a projection TTL applies to, and the time it counts from: the newest event time
folded in (a `missing` step row has none: it is kept). The `*_minutely` aggregates are views
over `runs` and `steps` and follow them; `flows` (one row per flow) and `dead_letters` (its
source is the DLQ topic, with its own retention) are kept."""


def apply_projection_ttl(client: Client, database: str, ttl_ms: int | None) -> list[str]:
    """Give each table of `TTL_COLUMNS` the TTL `ttl_ms` (None: none), altering only those
    whose TTL differs: a MODIFY TTL rewrites the table's parts. What was changed, a sentence
    each. Run by `migrate` every time: a replay's swapped-in tables come without one."""
    changed = []
    for table, column in TTL_COLUMNS.items():
        engine = str(client.command(
            "SELECT engine_full FROM system.tables WHERE database = {db:String} "
            "AND name = {t:String}", parameters={"db": database, "t": table},
        ))
        interval = None if ttl_ms is None else f"toIntervalSecond({max(ttl_ms // 1000, 1)})"
        wanted = f"TTL toDateTime({column}) + {interval}"
        if interval is None and " TTL " in engine:
            _run(client, database, f"ALTER TABLE {{db}}.{table} REMOVE TTL", f"{table}'s TTL")
            changed.append(f"table {database}.{table}: TTL removed")
        # (The engine spells the column's expression its own way: the interval tells.)
        elif interval is not None and f"+ {interval}" not in engine:
            _run(client, database, f"ALTER TABLE {{db}}.{table} MODIFY {wanted}", f"{table}'s TTL")
            changed.append(f"table {database}.{table}: {wanted}")
    return changed


def _create_version_table(client: Client, database: str) -> None:
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    client.command(
        f"""
        CREATE TABLE IF NOT EXISTS {database}.schema_migrations (
            version UInt32,
            name String,
            applied_at {TS} DEFAULT now64(6)
        )
        ENGINE = ReplacingMergeTree
        ORDER BY version
        """
    )


def applied_versions(client: Client, database: str) -> set[int]:
    """The migration versions recorded in the database (empty if it has none)."""
    exists = client.command(
        "SELECT count() FROM system.tables WHERE database = {db:String} "
        "AND name = 'schema_migrations'",
        parameters={"db": database},
    )
    if not exists:
        return set()
    rows = client.query(f"SELECT DISTINCT version FROM {database}.schema_migrations").result_rows
    return {int(row[0]) for row in rows}


def migrate(
    client: Client, database: str, *,
    projection_ttl_ms: int | None | Literal["settings"] = "settings",
) -> list[Migration]:
    """Apply the migrations the database lacks, in order, then `verify_tables` and
    `apply_projection_ttl` (`projection_ttl_ms`; "settings": STEPLOG_PROJECTION_TTL's);
    return the migrations applied now."""
    _create_version_table(client, database)
    done = applied_versions(client, database)
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements:
            try:
                client.command(statement.replace("{db}", database))
            except Exception as exc:
                raise ClickHouseError(
                    f"migration {migration.version} ({migration.name}) failed on "
                    f"database {database!r}: {exc}"
                ) from exc
        client.insert(
            f"{database}.schema_migrations",
            [[migration.version, migration.name]],
            column_names=["version", "name"],
        )
        applied.append(migration)
    for repair in verify_tables(client, database):
        log.warning("%s", repair)
    if isinstance(projection_ttl_ms, str):  # "settings"
        projection_ttl_ms = load_settings().projection_ttl_ms
    for change in apply_projection_ttl(client, database, projection_ttl_ms):
        log.info("%s", change)
    return applied


_VIEW_NAME = re.compile(r"VIEW \{db\}\.(\w+)")


def _view_statements() -> dict[str, str]:
    """Each view the migrations create, with the newest statement that creates it."""
    views: dict[str, str] = {}
    for migration in MIGRATIONS:
        for statement in migration.statements:
            found = _VIEW_NAME.search(statement)
            if found:
                views[found.group(1)] = statement
    return views


def verify_tables(client: Client, database: str) -> list[str]:
    """Check that every table and view the migrations made is there (the versions recorded say
    they were made, not that nobody dropped one since) and recreate what is missing: a
    projection table empty (replay rebuilds its rows), a view as the migrations define it.
    Returns what was recreated, one sentence each. A table whose columns differ from the
    definition is a ClickHouseError naming the table and the columns."""
    present = {
        str(name) for (name,) in client.query(
            "SELECT name FROM system.tables WHERE database = {db:String}",
            parameters={"db": database},
        ).result_rows
    }
    repairs = []
    for table in PROJECTION_TABLES:
        if table not in present:
            _run(client, database, table_ddl(table, "{db}." + table), f"recreating {table}")
            if table == "run_list":  # runs holds every row it needs
                _run(client, database, _RUN_LIST_BACKFILL, "refilling run_list from runs")
                repairs.append(f"table {database}.run_list was missing: recreated from runs")
                continue
            repairs.append(
                f"table {database}.{table} was missing: recreated empty; run `steplog replay` "
                "(processors stopped) to rebuild its rows from the log"
            )
        else:
            _compare_columns(client, database, table)
    if "dead_letters" not in present and 4 in applied_versions(client, database):
        _run(client, database, DEAD_LETTERS_DDL, "recreating dead_letters")
        repairs.append(
            f"table {database}.dead_letters was missing: recreated empty (the DLQ topic still "
            "holds what it listed)"
        )
    if "flow_starts" not in present and 7 in applied_versions(client, database):
        _run(client, database, FLOW_STARTS_DDL, "recreating flow_starts")
        repairs.append(
            f"table {database}.flow_starts was missing: recreated empty (each held-back start "
            "shows again at its next change)"
        )
    for view, statement in _view_statements().items():
        if view not in present:
            _run(client, database, statement, f"recreating view {view}")
            repairs.append(f"view {database}.{view} was missing: recreated")
    return repairs


def _compare_columns(client: Client, database: str, table: str) -> None:
    """The table's columns against its definition's, built beside it under a scratch name."""
    scratch = f"_expected_{table}"
    _run(client, database, f"DROP TABLE IF EXISTS {{db}}.{scratch}", "verifying")
    _run(client, database, table_ddl(table, "{db}." + scratch), f"verifying {table}")
    try:
        rows = client.query(
            "SELECT table, name, type FROM system.columns WHERE database = {db:String} "
            "AND table IN ({t:String}, {s:String})",
            parameters={"db": database, "t": table, "s": scratch},
        ).result_rows
    finally:
        _run(client, database, f"DROP TABLE IF EXISTS {{db}}.{scratch}", "verifying")
    found = {str(name): str(kind) for owner, name, kind in rows if owner == table}
    expected = {str(name): str(kind) for owner, name, kind in rows if owner == scratch}
    if found == expected:
        return
    problems = []
    if missing := sorted(expected.keys() - found.keys()):
        problems.append(f"missing columns {missing}")
    if extra := sorted(found.keys() - expected.keys()):
        problems.append(f"unexpected columns {extra}")
    for name in sorted(expected.keys() & found.keys()):
        if expected[name] != found[name]:
            problems.append(f"column {name} is {found[name]}, expected {expected[name]}")
    raise ClickHouseError(
        f"table {database}.{table} does not match its definition: " + "; ".join(problems)
        + f" (drop it and run `steplog replay` to rebuild it, or migrate {database!r} with "
        "the Steplog version that made it)"
    )


def _run(client: Client, database: str, statement: str, doing: str) -> None:
    try:
        client.command(statement.replace("{db}", database))
    except Exception as exc:
        raise ClickHouseError(f"{doing} in database {database!r} failed: {exc}") from exc
