"""The `steplog` command as a user runs it: a separate process, configured by environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from steplog.settings import Settings
from steplog.topics import topic_specs


def steplog(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from steplog.server.entry import main; main()", *args]
    return subprocess.run(
        command, env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


def env_for(settings: Settings, tmp_path: Path) -> dict[str, str]:
    return {
        "STEPLOG_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "STEPLOG_TOPIC_PREFIX": settings.topic_prefix,
        "STEPLOG_EVENTS_PARTITIONS": "2",
        "STEPLOG_DATA_DIR": str(tmp_path),
        # A path of its own: this pytest process may own the suite's chDB path.
        "STEPLOG_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'clickhouse'}",
    }


def test_a_bad_setting_exits_2_with_one_line_naming_it(tmp_path: Path) -> None:
    result = steplog("topics", "ensure", env={"STEPLOG_EVENTS_PARTITIONS": "lots"})
    assert result.returncode == 2
    assert "STEPLOG_EVENTS_PARTITIONS='lots'" in result.stderr
    assert "Traceback" not in result.stderr


def test_topics_ensure_and_migrate_are_idempotent(settings: Settings, tmp_path: Path) -> None:
    env = env_for(settings, tmp_path)
    first = steplog("topics", "ensure", env=env)
    assert first.returncode == 0, first.stderr
    assert f"{settings.topic_prefix}events" in first.stdout and "created" in first.stdout
    second = steplog("topics", "ensure", env=env)
    assert second.returncode == 0, second.stderr
    assert "created" not in second.stdout
    assert second.stdout.count("unchanged") == len(topic_specs(settings))

    migrated = steplog("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert "applied migration 1" in migrated.stdout
    again = steplog("migrate", env=env)
    assert again.returncode == 0, again.stderr
    assert "applied" not in again.stdout and "up to date" in again.stdout


def test_broker_status_exits_1_when_nothing_runs(tmp_path: Path) -> None:
    result = steplog(
        "broker", "status", "--port", "1", "--data-dir", str(tmp_path / "none"), env={}
    )
    assert result.returncode == 1
    assert '"running": false' in result.stdout
