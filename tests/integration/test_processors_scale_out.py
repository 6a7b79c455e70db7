"""Two `steplog processors` processes in one consumer group, sharing the partitions.

The first process runs the embedded engine and serves SQL; the second writes through that
endpoint, as processes scaled out write to one ClickHouse server. Both join after the topics
exist and before anything is defined, so every flow and workflow definition reaches them while
they run (only one of them holds the flows topic in the flows agent's group), and the runs are
chosen so that parents and their children are folded by different processes.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from steplog.server.health import read_group_members
from steplog.producers.app import App
from steplog.producers.client import Client
from steplog.producers.context import WorkflowContext
from steplog.producers.flows_file import push_flows
from steplog.producers.sender import key_partition
from steplog.schemas.flows import FlowDefinition, FlowEdge, FlowStep
from steplog.schemas.ids import child_run_id
from steplog.credentials import local_admin_key
from steplog.settings import Settings, child_environment
from tests.conftest import (
    RunningProcessors,
    free_port,
    start_processors,
    wait_for,
)
from tests.workflow_harness import WorkerThread

APP = "fan"


def assignment(settings: Settings) -> list[frozenset[int]]:
    """The events partitions each member of the fold's group holds, once the group is stable."""
    members = asyncio.run(read_group_members(
        settings.kafka_bootstrap, settings.processors_group, settings.topics.events))
    return list(members.partitions) if members.state == "Stable" else []


@dataclass
class Pair:
    first: RunningProcessors
    first_log: Path
    second: subprocess.Popen[bytes]
    second_log: Path
    held: list[frozenset[int]]
    """Each process's events partitions (which is which does not matter here)."""

    def split(self, one: str, other: str) -> bool:
        """Whether runs `one` and `other` are folded by different processes."""
        partitions = sorted(set().union(*self.held))
        of = {key_partition(run.encode(), partitions) for run in (one, other)}
        return not any(of <= held for held in self.held)


@pytest.fixture
def pair(stack_settings: Settings, tmp_path: Path) -> Iterator[Pair]:
    first_log = tmp_path / "first.log"
    first = start_processors(stack_settings, first_log)
    second_settings = stack_settings.model_copy(update={
        # It writes through the first one's SQL endpoint: as admin, the only writer.
        "clickhouse_dsn": f"http://default:{local_admin_key(stack_settings)}@127.0.0.1:"
        f"{stack_settings.sql_port}",
        "data_dir": tmp_path / "second",
        "sql_port": free_port(),
    })
    second_log = tmp_path / "second.log"
    with open(second_log, "ab") as log:
        second = subprocess.Popen(
            [sys.executable, "-c", "from steplog.server.entry import main; main()", "processors"],
            env=child_environment(second_settings), stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        seen: list[frozenset[int]] = []

        def both_hold_partitions() -> bool:
            if second.poll() is not None:
                raise AssertionError(f"the second processors exited with {second.returncode}: "
                                     f"{second_log.read_text(errors='replace')[-3000:]}")
            seen[:] = assignment(stack_settings)
            return len(seen) == 2 and all(seen)

        wait_for(both_hold_partitions, timeout=120, what="two members holding partitions")
        yield Pair(first, first_log, second, second_log, list(seen))
    finally:
        if second.poll() is None:
            second.terminate()
            try:
                second.wait(timeout=60)
            except subprocess.TimeoutExpired:
                second.kill()
                second.wait(timeout=30)
        first.stop()


def build_app(settings: Settings) -> App:
    app = App(APP, project=settings.project, settings=settings)

    @app.workflow("parent")
    async def parent(ctx: WorkflowContext) -> Any:
        return await ctx.step.run_workflow("child", name="child", data=ctx.event.data)

    @app.workflow("child")
    async def child(ctx: WorkflowContext) -> Any:
        number = ctx.event.data
        assert isinstance(number, int)
        return await ctx.step.run("double", lambda: number * 2)

    return app


def split_runs(pair: Pair, each: int) -> list[str]:
    """Parent run ids whose child is folded by the other process: `each` parents folded by
    each process (so both start children and both report ends)."""
    partitions = sorted(set().union(*pair.held))
    chosen: list[str] = []
    for held in pair.held:
        candidates = (f"parent-{index}" for index in range(1000))
        mine = [run for run in candidates
                if key_partition(run.encode(), partitions) in held
                and pair.split(run, child_run_id(run, "child"))]
        assert len(mine) >= each
        chosen.extend(mine[:each])
    return chosen


def test_two_processes_share_the_partitions_definitions_and_children(
    pair: Pair, stack_settings: Settings
) -> None:
    sql = pair.first.sql
    # A flow pushed while both run: every process folds with its graph (an upstream step
    # that never reported is `missing`), wherever the run's partition is.
    push_flows(stack_settings, [FlowDefinition(
        project=stack_settings.project, slug="pack", ts=datetime.now(UTC),
        steps=[FlowStep(sdk_step_key="label"), FlowStep(sdk_step_key="ship")],
        edges=[FlowEdge(source="label", target="ship")],
    )])
    partitions = sorted(set().union(*pair.held))
    packs = {key_partition(f"pack-{i}".encode(), partitions): f"pack-{i}" for i in range(100)}
    assert len(packs) == len(partitions)

    with Client(settings=stack_settings) as client:

        def each_run_has_its_graph() -> bool:
            # Reported again on every look: the graph applies from a run's next event on, and
            # the definition may reach a process after the run's first report.
            for run_id in packs.values():
                client.record_step(flow_key="pack", run_id=run_id, step_key="ship",
                                   status="success")
            client.flush(timeout=30)
            statuses = sql.query(
                "SELECT run_id, status FROM steps_current WHERE flow = 'pack' "
                "AND step_key = 'label'"
            ).result_rows
            return {run: status for run, status in statuses} == dict.fromkeys(
                packs.values(), "missing")

        wait_for(each_run_has_its_graph, what="every pack run's `label` to be missing")

        # Workflows defined while both run, and children folded by the other process.
        with WorkerThread(build_app(stack_settings), stack_settings):
            parents = split_runs(pair, 2)
            handles = [client.start("parent", n, app=APP, run_id=run)
                       for n, run in enumerate(parents)]
            assert [handle.result(timeout=60) for handle in handles] == [0, 2, 4, 6]

            # One process leaves: the other takes its partitions and goes on.
            pair.second.terminate()
            assert pair.second.wait(timeout=60) == 0
            wait_for(lambda: assignment(stack_settings) == [frozenset(partitions)],
                     what="the first process to hold every partition")
            later = client.start("parent", 10, app=APP, run_id="parent-after")
            assert later.result(timeout=60) == 20

    children = sorted(
        (child_run_id(run, "child"), run, "completed") for run in [*parents, "parent-after"]
    )
    wait_for(lambda: sorted(tuple(row) for row in sql.query(
        "SELECT run_id, parent_run_id, status FROM runs_current WHERE flow = 'child'"
    ).result_rows) == children, what="every child's row, with its parent")
    for log in (pair.first_log, pair.second_log):
        text = log.read_text(errors="replace")
        assert "ERROR" not in text and "not known here" not in text, text[-3000:]
