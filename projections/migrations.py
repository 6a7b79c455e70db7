"""Steplog's ClickHouse tables, created and evolved by numbered migrations.

Each migration is a list of idempotent statements (`IF NOT EXISTS`), and the versions applied
are recorded in `schema_migrations`. Re-running `migrate` is a no-op; two processes migrating
at once both succeed (every statement is idempotent and the version table keeps one row per
version after merges, which `applied_versions` does not rely on).

Table design in one paragraph: `events` mirrors the log (one row per event, deduplicated by
event_id); `runs` and `steps` hold the folded state, one row per state change, and a `version`
column that grows with every event folded into a run, so that ReplacingMergeTree keeps the
newest row and queries can pick it (argMax by version) before any merge has happened.
"""

from __future__ import annotations

from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

from steplog.errors import ClickHouseError

TS = "DateTime64(6, 'UTC')"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]
    """SQL with `{db}` where the database name goes."""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "events, runs and steps",
        (
            f"""
            CREATE TABLE IF NOT EXISTS {{db}}.events (
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
                log_offset UInt64 COMMENT 'Kafka offset the event was read from',
                ingested_at {TS} DEFAULT now64(6)
            )
            ENGINE = ReplacingMergeTree
            PARTITION BY toYYYYMM(ts)
            ORDER BY (project, flow, run_id, event_id)
            """,
            f"""
            CREATE TABLE IF NOT EXISTS {{db}}.runs (
                project LowCardinality(String),
                flow LowCardinality(String),
                run_id String,
                app String,
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
                trigger_event String,
                retrigger_of String,
                version UInt64 COMMENT 'events folded into this run so far',
                updated_at {TS}
            )
            ENGINE = ReplacingMergeTree(version)
            ORDER BY (project, flow, run_id)
            """,
            f"""
            CREATE TABLE IF NOT EXISTS {{db}}.steps (
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
                version UInt64 COMMENT 'events folded into the run so far',
                updated_at {TS}
            )
            ENGINE = ReplacingMergeTree(version)
            ORDER BY (project, flow, run_id, step_key)
            """,
        ),
    ),
)


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


def migrate(client: Client, database: str) -> list[Migration]:
    """Apply the migrations the database lacks, in order; return the ones applied now."""
    _create_version_table(client, database)
    done = applied_versions(client, database)
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements:
            try:
                client.command(statement.format(db=database))
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
    return applied
