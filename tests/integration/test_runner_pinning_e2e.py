"""Runner pinning end to end: the real broker, `steplog processors`, ClickHouse (through the
processors' SQL endpoint) and workers of app "lab" with runner names "a" and "b", then "c".

A child pinned to runner "b" is executed by "b" only (its step returns `ctx.runner`); a child
pinned to "c", absent, shows `overdue` until a worker of runner "c" starts, then completes.
Also the at-least-once fix: a copy of a start_run that arrives after the run's first pass ended
is dropped, not run again from an empty history.

One stack for the module. The commands topics have one partition, so that a start sent after
the copy is handled after it (the test waits on that start, not on time).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from steplog.producers.app import App
from steplog.producers.client import Client
from steplog.producers.context import WorkflowContext
from steplog.producers.control import ControlSender
from steplog.schemas.commands import StartRun, new_command_id
from steplog.schemas.ids import child_run_id
from steplog.settings import Settings
from steplog.topics import ensure_topics, topic_specs
from tests.conftest import (
    RunningProcessors,
    isolated_settings,
    start_processors,
    wait_for,
    with_own_engine,
)
from tests.workflow_harness import LogWatcher, WorkerThread

APP = "lab"


@dataclass
class Lab:
    settings: Settings
    processors: RunningProcessors
    client: Client
    log: LogWatcher
    app: App
    workers: list[WorkerThread]
    calls: dict[str, list[str]]
    """Per step (by "<run id>:<step>"), the runner of each call."""

    def ended(self, run_id: str, status: str = "completed") -> dict[str, Any]:
        wait_for(lambda: self.processors.run_status(run_id) == status, timeout=30,
                 what=f"run {run_id} to be {status} (is {self.processors.run_status(run_id)})")
        (row,) = self.processors.rows(
            "SELECT status, output FROM runs_current WHERE run_id = {id:String}", id=run_id)
        return row

    def logged(self, run_id: str, event_type: str) -> None:
        self.log.wait(lambda: event_type in self.log.types(run_id), timeout=30,
                      what=f"{event_type} of run {run_id}")


def build_lab(settings: Settings, calls: dict[str, list[str]]) -> App:
    app = App(APP, project=settings.project, settings=settings)
    lock = threading.Lock()

    def called(ctx: WorkflowContext, step: str) -> str:
        with lock:
            calls.setdefault(f"{ctx.run_id}:{step}", []).append(str(ctx.runner))
        return str(ctx.runner)

    @app.workflow("parent")
    async def parent(ctx: WorkflowContext) -> Any:
        data = ctx.event.data
        assert isinstance(data, dict) and isinstance(data["runner"], str)
        return await ctx.step.run_workflow("child", name="where", runner=data["runner"])

    @app.workflow("where")
    async def where(ctx: WorkflowContext) -> Any:
        return await ctx.step.run("where", lambda: called(ctx, "where"))

    @app.workflow("once")
    async def once(ctx: WorkflowContext) -> Any:
        return await ctx.step.run("count", lambda: called(ctx, "count"))

    return app


@pytest.fixture(scope="module")
def lab(
    kafka_bootstrap: str, clickhouse_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    directory: Path = tmp_path_factory.mktemp("runner-pinning")
    settings = with_own_engine(
        isolated_settings(kafka_bootstrap, clickhouse_dsn, directory / "steplog"), directory
    ).model_copy(update={"commands_partitions": 1})
    asyncio.run(ensure_topics(settings.kafka_bootstrap, topic_specs(settings)))
    calls: dict[str, list[str]] = {}
    app = build_lab(settings, calls)
    processors = start_processors(settings, directory / "processors.log")
    try:
        with (
            LogWatcher(settings) as log,
            WorkerThread(app, settings, runner="a") as a,
            WorkerThread(app, settings, runner="b") as b,
            Client(settings=settings) as client,
        ):
            yield Lab(settings, processors, client, log, app, [a, b], calls)
    finally:
        processors.stop()


def test_a_copy_of_a_start_after_the_first_pass_ended_is_dropped(lab: Lab) -> None:
    run_id = uuid.uuid4().hex
    start = StartRun(command_id=new_command_id(), project=lab.settings.project, run_id=run_id,
                     ts=datetime.now(UTC), workflow="once", app=APP)
    sender = ControlSender(lab.settings.kafka_bootstrap,
                           max_event_bytes=lab.settings.max_event_bytes)
    try:
        sender.send(lab.settings.topics.commands, run_id, start)
        lab.logged(run_id, "run.completed")
        sender.send(lab.settings.topics.commands, run_id, start)  # commands: at-least-once
    finally:
        sender.close()
    behind = lab.client.start("once", None, app=APP)  # on the one partition, after the copy
    lab.logged(behind, "run.completed")
    wait_for(lambda: not any(worker.worker._runs for worker in lab.workers),
             what="the workers to be idle")

    assert len(lab.calls[f"{run_id}:count"]) == 1
    assert lab.log.types(run_id).count("step.started") <= 1
    assert lab.ended(run_id)["status"] == "completed"


def test_a_child_pinned_to_a_runner_is_executed_by_that_runner_only(lab: Lab) -> None:
    parents = [lab.client.start("parent", {"runner": "b"}, app=APP) for _ in range(4)]
    for parent in parents:
        assert json.loads(lab.ended(parent)["output"]) == "b"
        child = child_run_id(parent, "child")
        assert lab.calls[f"{child}:where"] == ["b"]
        assert lab.ended(child)["status"] == "completed"


def test_a_pin_to_an_absent_runner_shows_overdue_until_the_runner_starts(lab: Lab) -> None:
    parent = lab.client.start("parent", {"runner": "c"}, app=APP)
    child = child_run_id(parent, "child")
    lab.ended(child, "overdue")
    assert lab.processors.run_status(parent) == "running"
    assert f"{child}:where" not in lab.calls

    with WorkerThread(lab.app, lab.settings, runner="c"):
        assert json.loads(lab.ended(parent)["output"]) == "c"
    assert lab.calls[f"{child}:where"] == ["c"]
