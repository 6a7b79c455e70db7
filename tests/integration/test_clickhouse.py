"""The ClickHouse side of the foundation: opening the engine, its path lock, the migrations."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from steplog.errors import ClickHouseError
from steplog.projections.migrations import MIGRATIONS, applied_versions, migrate
from steplog.settings import Settings

HOLD_PATH = """
import sys
from steplog.projections.clickhouse import open_clickhouse
open_clickhouse(sys.argv[1]).query("SELECT 1")
print("holding", flush=True)
sys.stdin.readline()
"""

OPEN_PATH = """
import sys
from steplog.errors import ClickHousePathLockedError
from steplog.projections.clickhouse import open_clickhouse
try:
    open_clickhouse(sys.argv[1])
except ClickHousePathLockedError as exc:
    print(exc)
    sys.exit(3)
"""


def test_migrations_create_the_tables_and_are_idempotent(
    clickhouse: Client, settings: Settings
) -> None:
    database = settings.clickhouse_database
    assert applied_versions(clickhouse, database) == {m.version for m in MIGRATIONS}
    assert migrate(clickhouse, database) == []
    tables = {
        row[0]
        for row in clickhouse.query(
            "SELECT name FROM system.tables WHERE database = {db:String}",
            parameters={"db": database},
        ).result_rows
    }
    assert {"events", "runs", "steps", "schema_migrations"} <= tables
    columns = clickhouse.query(f"SELECT * FROM {database}.steps LIMIT 0").column_names
    for column in ("run_id", "step_key", "status", "attempt", "duration_ms", "error_stack"):
        assert column in columns


def test_a_second_process_on_a_chdb_path_is_told_who_holds_it(tmp_path: Path) -> None:
    dsn = f"chdb://{tmp_path / 'engine'}"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_PATH, dsn],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        second = subprocess.run(
            [sys.executable, "-c", OPEN_PATH, dsn], capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 3, second.stderr
        assert f"in use by process {holder.pid}" in second.stdout
        assert "STEPLOG_CLICKHOUSE_DSN" in second.stdout
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    # Once the holder has exited, the path is free again.
    after = subprocess.run(
        [sys.executable, "-c", OPEN_PATH, dsn], capture_output=True, text=True, timeout=120
    )
    assert after.returncode == 0, after.stdout + after.stderr


def test_migrate_recreates_a_dropped_table_and_view_and_says_to_replay(
    clickhouse: Client, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    database = settings.clickhouse_database
    clickhouse.command(f"DROP TABLE {database}.runs")
    clickhouse.command(f"DROP VIEW {database}.runs_current")
    assert migrate(clickhouse, database) == []  # every version was applied already
    # Back, empty, and readable through the view.
    assert clickhouse.command(f"SELECT count() FROM {database}.runs_current") == 0
    said = caplog.text
    assert f"table {database}.runs was missing: recreated empty" in said
    assert "run `steplog replay`" in said and f"view {database}.runs_current" in said
    caplog.clear()
    migrate(clickhouse, database)
    assert "missing" not in caplog.text


def test_a_table_whose_columns_differ_is_an_error_naming_them(
    clickhouse: Client, settings: Settings
) -> None:
    database = settings.clickhouse_database
    clickhouse.command(f"ALTER TABLE {database}.steps DROP COLUMN metadata")
    clickhouse.command(f"ALTER TABLE {database}.steps ADD COLUMN note String")
    with pytest.raises(ClickHouseError) as raised:
        migrate(clickhouse, database)
    message = str(raised.value)
    assert f"table {database}.steps" in message
    assert "missing columns ['metadata']" in message and "unexpected columns ['note']" in message
