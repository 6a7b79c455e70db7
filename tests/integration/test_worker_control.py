"""What drives workers from outside: the client's control calls and the `steplog` commands
(`worker`, `runs cancel`, `runs retrigger`), against the real broker and engine."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from steplog.producers.client import Client
from steplog.producers.sink import MemorySink
from steplog.schemas.commands import StartRun
from steplog.schemas.events import RunCancelled, RunScheduled
from steplog.schemas.signals import Signal
from steplog.settings import Settings, child_environment
from tests.workflow_harness import LogWatcher

# --------------------------------------------------------------------------- the client


def test_send_event_puts_a_signal_on_the_signals_topic_keyed_by_its_name(topics: Settings) -> None:
    with LogWatcher(topics) as log, Client(settings=topics, sink=MemorySink()) as client:
        event_id = client.send_event("order.placed", {"id": "ord-1"}, app="shop")
        log.wait(lambda: bool(log.on(topics.topics.signals)), what="the signal")
    (record,) = log.on(topics.topics.signals)
    assert record.key == b"order.placed"
    signal_ = record.message
    assert isinstance(signal_, Signal)
    assert (signal_.event_id, signal_.name, signal_.data, signal_.app) == (
        event_id, "order.placed", {"id": "ord-1"}, "shop"
    )
    assert signal_.project == topics.project


def test_start_sends_a_command_to_the_app_or_schedules_the_run(topics: Settings) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    with LogWatcher(topics) as log, Client(settings=topics, sink=MemorySink()) as client:
        now_run = client.start("order.process", {"id": 1}, app="shop")
        later_run = client.start("order.process", {"id": 2}, app="shop", start_at=later)
        anywhere_run = client.start("order.process", {"id": 3}, run_id="my-run-3")
        log.wait(
            lambda: len(log.on(topics.topics.commands)) == 1
            and len(log.on(topics.topics.events)) == 2,
            what="the start command and two scheduled runs",
        )
    (command,) = log.on(topics.topics.commands)
    assert isinstance(command.message, StartRun) and command.key == now_run.encode()
    assert (command.message.workflow, command.message.app, command.message.input) == (
        "order.process", "shop", {"id": 1}
    )
    scheduled = {r.message.run_id: r.message for r in log.on(topics.topics.events)}
    assert anywhere_run == "my-run-3" and set(scheduled) == {later_run, "my-run-3"}
    assert all(isinstance(e, RunScheduled) for e in scheduled.values())
    assert scheduled[later_run].payload.start_at == later
    assert scheduled[later_run].payload.app == "shop"
    assert scheduled["my-run-3"].payload.app is None
    assert scheduled["my-run-3"].payload.input == {"id": 3}


def test_cancel_writes_run_cancelled_that_loses_to_an_ending_already_written(
    topics: Settings,
) -> None:
    with LogWatcher(topics) as log, Client(settings=topics, sink=MemorySink()) as client:
        client.cancel("run-9", flow="order.process", reason="customer asked")
        log.wait(lambda: bool(log.on(topics.topics.events)), what="run.cancelled")
    (record,) = log.on(topics.topics.events)
    assert isinstance(record.message, RunCancelled) and record.key == b"run-9"
    assert (record.message.flow, record.message.payload.reason, record.message.seq) == (
        "order.process", "customer asked", 0
    )


# --------------------------------------------------------------------------- the CLI


def steplog(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from steplog.server.entry import main; main()", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=120,
    )


def cli_environment(settings: Settings, tmp_path: Path) -> dict[str, str]:
    # A chDB path of this test's own: the CLI processes open it one after another.
    return {
        **child_environment(settings),
        "STEPLOG_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'clickhouse'}",
    }


def test_worker_names_a_target_it_cannot_load(topics: Settings, tmp_path: Path) -> None:
    env = cli_environment(topics, tmp_path)
    (tmp_path / "notanapp.py").write_text("app = 42\n")
    cases = {
        "shop": "expected MODULE:APP",
        "no_such_module:app": "no module named 'no_such_module'",
        "notanapp:missing": "has no 'missing'",
        "notanapp:app": "is a int, not a steplog.App",
    }
    for target, expected in cases.items():
        result = steplog("worker", target, env=env, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr


def test_a_cli_worker_registers_its_app_and_stops_cleanly_on_sigterm(
    topics: Settings, tmp_path: Path
) -> None:
    (tmp_path / "billing.py").write_text(
        "import steplog\n"
        "app = steplog.App('billing')\n"
        "@app.workflow('invoice.send', triggers=['order.shipped'])\n"
        "async def send(ctx):\n"
        "    return await ctx.step.run('render', lambda: 'pdf')\n"
    )
    env = cli_environment(topics, tmp_path)
    with LogWatcher(topics) as log:
        process = subprocess.Popen(
            [sys.executable, "-c", "from steplog.server.entry import main; main()",
             "worker", "billing:app"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        try:
            log.wait(lambda: bool(log.on(topics.topics.signals)), what="the trigger registered")
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(30)
    assert process.returncode == 0, output.decode()
    assert b"worker for app 'billing': invoice.send" in output
    assert log.on(topics.topics.signals)[0].message.app == "billing"


def insert_run(env: dict[str, str], run_id: str, *, app: str, status: str) -> None:
    row = (
        f"('{env['STEPLOG_PROJECT']}', 'order.process', '{run_id}', "
        f"'{app}', '{status}', '{json.dumps({'id': 'ord-5'})}', 'order.placed', 'sig-5', 1, "
        "now64(6))"
    )
    done = steplog(
        "sql",
        "INSERT INTO runs (project, flow, run_id, app, status, input, trigger_event, "
        f"trigger_event_id, version, updated_at) VALUES {row}",
        env=env,
    )
    assert done.returncode == 0, done.stderr


def test_runs_cancel_and_retrigger_read_the_run_from_runs_current(
    topics: Settings, tmp_path: Path
) -> None:
    env = cli_environment(topics, tmp_path)
    assert steplog("migrate", env=env).returncode == 0
    parked, ended = uuid.uuid4().hex, uuid.uuid4().hex
    insert_run(env, parked, app="shop", status="running")
    insert_run(env, ended, app="shop", status="completed")

    with LogWatcher(topics) as log:
        cancelled = steplog("runs", "cancel", parked, "--reason", "duplicate order", env=env)
        assert cancelled.returncode == 0, cancelled.stderr
        assert f"cancelled run {parked} of 'order.process'" in cancelled.stdout
        retriggered = steplog("runs", "retrigger", ended, env=env)
        assert retriggered.returncode == 0, retriggered.stderr
        new_run = retriggered.stdout.strip()
        log.wait(
            lambda: bool(log.on(topics.topics.events)) and bool(log.on(topics.topics.commands)),
            what="run.cancelled and the start_run",
        )
    (cancel,) = log.on(topics.topics.events)
    assert isinstance(cancel.message, RunCancelled)
    assert (cancel.message.run_id, cancel.message.flow, cancel.message.payload.reason) == (
        parked, "order.process", "duplicate order"
    )
    (start,) = log.on(topics.topics.commands)
    assert isinstance(start.message, StartRun)
    assert start.message.run_id == new_run != ended
    assert (start.message.workflow, start.message.app, start.message.retrigger_of) == (
        "order.process", "shop", ended
    )
    assert start.message.input == {"id": "ord-5"}
    assert start.message.trigger is not None and start.message.trigger.event_id == "sig-5"

    again = steplog("runs", "cancel", ended, env=env)
    assert again.returncode == 2 and "already ended (completed)" in again.stderr
    missing = steplog("runs", "retrigger", "no-such-run", env=env)
    assert missing.returncode == 2 and "'no-such-run' is not in runs_current" in missing.stderr
