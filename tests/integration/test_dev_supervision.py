"""`steplog dev` supervises its processors: a command run while the stack starts waits for its
SQL endpoint instead of taking the engine's files (and migrate goes through it, replay refuses);
a processors process killed is restarted (the reason logged); SIGTERM stops everything it
started."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from steplog.server.sql_http import sql_endpoint_answers
from steplog.server.stack_lock import STACK_FILE
from tests.conftest import start_dev, wait_for
from tests.integration.test_cli import steplog


def processors_children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children
            if b"processors" in Path(f"/proc/{child}/cmdline").read_bytes()]


def test_dev_serves_commands_while_starting_and_restarts_killed_processors(tmp_path: Path) -> None:
    started = start_dev(tmp_path)
    dev, data_dir, kafka_port, sql_port = (
        started.process, started.data_dir, started.kafka_port, started.sql_port
    )
    output = started.output

    try:
        lock = data_dir / "clickhouse" / STACK_FILE
        wait_for(lambda: lock.exists() and lock.read_text().startswith(f"{dev.pid}\n"),
                 timeout=30, what="dev to take the stack lock")
        assert not sql_endpoint_answers(sql_port)  # still starting (the broker first)
        during = steplog("sql", "SELECT 41 + 1 AS n", "-f", "csv",
                         env={"STEPLOG_DATA_DIR": str(data_dir)})
        assert during.returncode == 0, during.stdout + during.stderr
        assert during.stdout.splitlines() == ["n", "42"]
        assert "waiting up to" in during.stderr and f"127.0.0.1:{sql_port}" in during.stderr

        wait_for(lambda: len(processors_children(dev.pid)) == 1, timeout=30,
                 what="dev's processors child")
        [first] = processors_children(dev.pid)
        assert (data_dir / "admin.key").stat().st_mode & 0o777 == 0o600  # made on first start
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: processors_children(dev.pid) not in ([], [first]) and sql_endpoint_answers(sql_port),
                 timeout=90, what=f"a new processors child serving SQL: {output()[-2000:]}")
        assert f"the processors (pid {first}) were killed by SIGKILL: restarting them" in output()
        [second] = processors_children(dev.pid)

        # Commands that would open the files: migrate goes through the endpoint, replay refuses.
        env = {"STEPLOG_DATA_DIR": str(data_dir), "STEPLOG_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka_port}"}
        migrated = steplog("migrate", env=env)
        assert migrated.returncode == 0 and "up to date" in migrated.stdout, migrated.stderr
        refused = steplog("replay", env=env)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert f"process {dev.pid}" in refused.stderr and "stop it first" in refused.stderr

        dev.send_signal(signal.SIGTERM)
        assert dev.wait(timeout=120) == 0, output()[-3000:]
        assert not Path(f"/proc/{second}").exists() or b"(Z)" in Path(
            f"/proc/{second}/stat").read_bytes()
        assert "ClickHousePathLockedError" not in output() and "Traceback" not in output()
    finally:
        started.stop()
