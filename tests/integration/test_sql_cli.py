"""`steplog sql` and `steplog status` as a user runs them: separate processes, configured by
STEPLOG_* variables, against the real engine, broker and processors."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

from steplog.producers.sender import EventSender
from steplog.schemas.events import StepStarted, StepStartedPayload, new_event_id
from steplog.settings import Settings, child_environment
from tests.conftest import RunningProcessors, free_port, wait_for


def steplog(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("STEPLOG_")}
    return subprocess.run(
        [sys.executable, "-c", "from steplog.server.entry import main; main()", *args],
        env={**inherited, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_sql_opens_the_files_when_no_process_holds_them(tmp_path: Path) -> None:
    env = {
        "STEPLOG_DATA_DIR": str(tmp_path / "steplog"),
        "STEPLOG_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'clickhouse'}",
        "STEPLOG_CLICKHOUSE_DATABASE": f"cli_{uuid.uuid4().hex[:8]}",
        # Nothing listens here: the files are free, so the endpoint must not be needed.
        "STEPLOG_SQL_PORT": str(free_port()),
    }
    assert "up to date" in ok(steplog("migrate", env=env))
    ok(steplog(
        "sql",
        "CREATE TABLE pets (id Int32, name String, born Date, tags Array(String)) "
        "ENGINE = MergeTree ORDER BY id",
        env=env,
    ))
    ok(steplog(
        "sql",
        "INSERT INTO pets VALUES (1, 'ada, the first', '2020-01-02', ['cat']), "
        "(2, '[/not markup]', '2021-03-04', [])",
        env=env,
    ))
    query = "SELECT id, name, born, tags FROM pets ORDER BY id"

    table = ok(steplog("sql", query, env=env))
    assert "ada, the first" in table and "[/not markup]" in table and "2 rows" in table
    assert table.splitlines()[1].split() == ["┃", "id", "┃", "name", "┃", "born", "┃", "tags", "┃"]

    rows = list(csv.reader(io.StringIO(ok(steplog("sql", query, "--format", "csv", env=env)))))
    assert rows == [
        ["id", "name", "born", "tags"],
        ["1", "ada, the first", "2020-01-02", "['cat']"],
        ["2", "[/not markup]", "2021-03-04", "[]"],
    ]

    as_json = json.loads(ok(steplog("sql", query, "-f", "json", env=env)))
    assert as_json == [
        {"id": 1, "name": "ada, the first", "born": "2020-01-02", "tags": ["cat"]},
        {"id": 2, "name": "[/not markup]", "born": "2021-03-04", "tags": []},
    ]
    # The migrated views are there too, empty.
    assert json.loads(ok(steplog("sql", "SELECT count() AS n FROM runs_current", "-f", "json",
                                 env=env))) == [{"n": 0}]

    bad = steplog("sql", "SELEKT 1", env=env)
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "Code: 62" in bad.stderr and "Syntax error" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr + bad.stdout

    missing = steplog("sql", "SELECT * FROM no_such_table", env=env)
    assert missing.returncode == 2 and "Code: 60" in missing.stderr, missing.stderr
    assert "Traceback" not in missing.stderr + missing.stdout


def test_sql_goes_through_the_endpoint_of_the_process_that_holds_the_files(
    processors: RunningProcessors,
) -> None:
    env = child_environment(processors.settings)
    database = processors.settings.clickhouse_database
    # Written over HTTP into the child's engine: only it can have these rows.
    processors.sql.command(f"CREATE TABLE {database}.marks (k String) ENGINE = MergeTree ORDER BY k")
    processors.sql.insert(f"{database}.marks", [["here"], ["there"]], column_names=["k"])

    counted = ok(steplog("sql", "SELECT count() FROM runs_current", env=env))
    assert "count()" in counted and "1 row" in counted
    assert json.loads(ok(steplog("sql", "SELECT count() AS n FROM runs_current", "-f", "json",
                                 env=env))) == [{"n": 0}]
    marks = ok(steplog("sql", "SELECT k FROM marks ORDER BY k", "-f", "csv", env=env))
    assert marks.splitlines() == ["k", "here", "there"]

    bad = steplog("sql", "SELECT * FROM no_such_table", env=env)
    assert bad.returncode == 2 and "Code: 60" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr + bad.stdout

    # The stack's lock file says where it serves SQL: a command configured with another port
    # still finds it (steplog/server/stack_lock.py).
    elsewhere = steplog("sql", "SELECT 1", env={**env, "STEPLOG_SQL_PORT": str(free_port())})
    assert elsewhere.returncode == 0, elsewhere.stdout + elsewhere.stderr


def test_status_reports_a_healthy_stack_then_what_stopped(processors: RunningProcessors) -> None:
    env = child_environment(processors.settings)
    seen: list[subprocess.CompletedProcess[str]] = []

    def healthy() -> bool:
        seen.append(steplog("status", env=env))
        return seen[-1].returncode == 0

    # The endpoint answers before the consumer group has its members.
    wait_for(healthy, timeout=120, what=f"a healthy `steplog status`: {seen[-1:]}")
    lines = {line.split()[1]: line for line in seen[-1].stdout.splitlines()}
    assert lines["kafka"].startswith("ok ")
    assert lines["processors"].startswith("ok ") and "member(s)" in lines["processors"]
    assert lines["sql"].startswith("ok ") and "sql endpoint" in lines["sql"]
    assert f":{processors.settings.sql_port} answers SELECT 1" in lines["sql"]
    assert lines["health"].startswith("ok ") and "projection writes: succeeding" in lines["health"]

    # Events the processors fold: the lag comes back to 0 once their offsets are committed.
    send_step_events(processors.settings, 6)
    wait_for(lambda: healthy() and "lag 0 events" in seen[-1].stdout, timeout=120,
             what=f"the processors' lag back at 0: {seen[-1:]}")
    # Which process holds which partitions (here, the one process all of them).
    assert "1 member(s) holding events partitions 0,1,2 (Stable)" in seen[-1].stdout

    processors.stop()
    # Sent while nothing consumes them: they are the lag.
    send_step_events(processors.settings, 4)
    down = steplog("status", env=env)
    assert down.returncode == 1, down.stdout + down.stderr
    lines = {line.split()[1]: line for line in down.stdout.splitlines()}
    assert lines["kafka"].startswith("ok ")
    assert lines["sql"].startswith("FAIL") and "does not answer" in lines["sql"], down.stdout
    # A static member does not leave its group when it stops (a restart takes its partitions
    # back at once): until its session expires it is a member whose health endpoint is gone.
    assert lines.get("processors", "").startswith("FAIL") or (
        lines.get("health", "").startswith("FAIL") and "does not answer" in lines["health"]
    ), down.stdout
    assert lines["lag"].startswith("ok ") and "lag 4 events" in lines["lag"], down.stdout


def send_step_events(settings: Settings, count: int) -> None:
    sender = EventSender(settings.kafka_bootstrap, settings.topics.events)
    try:
        for index in range(count):
            sender.send_event(StepStarted(
                event_id=new_event_id(), project=settings.project, flow="status",
                run_id=f"run-{uuid.uuid4().hex[:8]}", step_key=f"step-{index}",
                ts=datetime.now(UTC), payload=StepStartedPayload(input={"n": index}),
            ))
        assert sender.flush(timeout=60), sender.stats()
        assert sender.stats().sent == count
    finally:
        sender.close()
