"""Projection TTLs (STEPLOG_PROJECTION_TTL), applied by `migrate` on the real engine: rows whose
newest event time is older than the TTL go at the next merge; off removes the TTL."""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from steplog.projections.migrations import TTL_COLUMNS, apply_projection_ttl, migrate
from steplog.settings import Settings

DAY_MS = 86_400_000


def test_migrate_applies_the_ttl_changes_it_and_removes_it(
    clickhouse: Client, settings: Settings
) -> None:
    database = settings.clickhouse_database
    migrate(clickhouse, database, projection_ttl_ms=DAY_MS)
    for table in TTL_COLUMNS:
        engine = str(clickhouse.command(
            f"SELECT engine_full FROM system.tables WHERE database = '{database}' "
            f"AND name = '{table}'"))
        assert "+ toIntervalSecond(86400)" in engine, (table, engine)
    assert apply_projection_ttl(clickhouse, database, DAY_MS) == []  # nothing to change

    clickhouse.command(
        f"INSERT INTO {database}.runs (project, flow, run_id, version, updated_at) VALUES "
        "('p', 'f', 'old', 1, '2001-01-01 00:00:00'), ('p', 'f', 'new', 1, now64(6))"
    )
    clickhouse.command(f"OPTIMIZE TABLE {database}.runs FINAL")  # a merge applies the TTL
    assert clickhouse.query(f"SELECT run_id FROM {database}.runs").result_rows == [("new",)]

    migrate(clickhouse, database, projection_ttl_ms=None)  # off: keep forever
    assert all(
        " TTL " not in str(clickhouse.command(
            f"SELECT engine_full FROM system.tables WHERE database = '{database}' "
            f"AND name = '{table}'"))
        for table in TTL_COLUMNS
    )
