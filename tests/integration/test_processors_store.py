"""`steplog processors` with the embedded engine: a child process owns the chDB path and serves
SQL, is stopped after the processors, dies with them, and stops them when it dies."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from steplog.projections.clickhouse import OWNER_FILE, chdb_path
from steplog.settings import Settings
from tests.conftest import RunningProcessors, wait_for


def store_pid(processors: RunningProcessors) -> int:
    """The pid recorded in the chDB path's owner file: the process that holds the engine."""
    path = chdb_path(processors.settings.clickhouse_dsn)
    assert path is not None
    return int((path / OWNER_FILE).read_text().split()[0])


def parent_of(pid: int) -> int:
    # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces, so after the ")".
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def gone(pid: int) -> bool:
    """The process has exited (and been reaped, or is a zombie no one holds a path for)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_child_of_the_processors_holds_the_engine_and_serves_sql(
    processors: RunningProcessors,
) -> None:
    pid = store_pid(processors)
    assert pid != processors.process.pid
    assert parent_of(pid) == processors.process.pid
    tables = processors.sql.query("SHOW TABLES").result_rows
    assert ("runs",) in tables


def test_sigterm_stops_the_processors_and_then_their_store(processors: RunningProcessors) -> None:
    pid = store_pid(processors)
    processors.stop()
    assert processors.process.returncode == 0
    wait_for(lambda: gone(pid), timeout=30, what="the store process to exit")


def test_killed_processors_take_their_store_with_them(processors: RunningProcessors) -> None:
    pid = store_pid(processors)
    processors.stop(kill=True)
    wait_for(lambda: gone(pid), timeout=30, what="the store process to die with its parent")


def test_a_dead_store_stops_the_processors_with_an_error(
    processors: RunningProcessors, stack_settings: Settings, tmp_path: Path
) -> None:
    os.kill(store_pid(processors), signal.SIGKILL)
    wait_for(lambda: processors.process.poll() is not None, timeout=60,
             what="the processors to exit")
    assert processors.process.returncode != 0
    log = (tmp_path / "processors.log").read_text(errors="replace")
    assert "StoreProcessGoneError" in log and "exited with code -9" in log, log[-3000:]
