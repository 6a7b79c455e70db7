"""Schedules end to end: cron ticks and expires_after on the real broker, `steplog processors`
and ClickHouse, read through the processors' SQL endpoint.

One stack for the module (processors, a worker of app "reports"). Its cron workflow ticks every
two seconds (a six-field expression, seconds first) so that the test need not wait for a
minute to turn.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from steplog.producers.app import App
from steplog.producers.client import Client
from steplog.producers.context import WorkflowContext
from steplog.schemas.schedules import cron_tick_run_id
from tests.conftest import RunningProcessors, start_processors, wait_for
from tests.integration.test_workflows_e2e import new_stack_settings
from tests.workflow_harness import Counter, WorkerThread

APP = "reports"


class Reports:
    """App "reports" on a running stack: what its step functions did, and SQL on the runs."""

    def __init__(self, processors: RunningProcessors, client: Client, calls: Counter) -> None:
        self.processors, self.client, self.calls = processors, client, calls



def build_reports(settings: Any, calls: Counter) -> App:
    app = App(APP, project=settings.project, settings=settings)

    @app.workflow("heartbeat", cron="*/2 * * * * *")
    async def heartbeat(ctx: WorkflowContext) -> Any:
        data = ctx.event.data
        assert isinstance(data, dict)
        tick = data["tick"]
        return await ctx.step.run("beat", calls.step(f"beat:{tick}", tick))

    @app.workflow("reminder")
    async def reminder(ctx: WorkflowContext) -> Any:
        data = ctx.event.data
        if isinstance(data, dict):  # a reminder that waits for its time first
            await ctx.step.sleep_until("until", str(data["at"]),
                                       expires_after=str(data["expires_after"]))
        return await ctx.step.run("remind", calls.step(f"remind:{ctx.run_id}", "sent"))

    return app


@pytest.fixture(scope="module")
def reports(
    kafka_bootstrap: str, clickhouse_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Reports]:
    directory = tmp_path_factory.mktemp("schedules")
    settings = new_stack_settings(kafka_bootstrap, clickhouse_dsn, directory)
    processors = start_processors(settings, directory / "processors.log")
    calls = Counter()
    try:
        with (
            WorkerThread(build_reports(settings, calls), settings),
            Client(settings=settings) as client,
        ):
            yield Reports(processors, client, calls)
    finally:
        processors.stop()


def test_a_cron_workflow_runs_once_at_each_tick(reports: Reports) -> None:
    def completed_ticks() -> list[dict[str, Any]]:
        return reports.processors.rows(
            "SELECT run_id, input, status FROM runs_current WHERE flow = 'heartbeat' "
            "AND status = 'completed' ORDER BY scheduled_for"
        )

    wait_for(lambda: len(completed_ticks()) >= 2, timeout=60, what="two ticks completed")
    runs = completed_ticks()
    ticks = [datetime.fromisoformat(json.loads(run["input"])["tick"]) for run in runs]
    project = reports.client.project
    assert [run["run_id"] for run in runs] == [
        cron_tick_run_id(project, APP, "heartbeat", tick) for tick in ticks
    ]
    assert all(b - a == timedelta(seconds=2) for a, b in zip(ticks, ticks[1:]))
    assert all(reports.calls.counts[f"beat:{tick.isoformat()}"] == 1 for tick in ticks)


def test_a_start_later_than_its_expires_after_ends_expired_and_never_runs(
    reports: Reports,
) -> None:
    past = datetime.now(UTC) - timedelta(minutes=5)
    too_late = reports.client.start("reminder", app=APP, start_at=past, expires_after="1m")
    in_time = reports.client.start("reminder", app=APP, start_at=past, expires_after="1h")

    wait_for(lambda: reports.processors.run_status(too_late) == "expired" and reports.processors.run_status(in_time)
             == "completed", timeout=60, what="one run expired, the other completed")
    assert f"remind:{too_late}" not in reports.calls.counts
    assert reports.calls.counts[f"remind:{in_time}"] == 1


def test_a_wake_up_later_than_its_expires_after_ends_the_run_expired(reports: Reports) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    too_late = reports.client.start(
        "reminder", {"at": past, "expires_after": "1m"}, app=APP
    )
    in_time = reports.client.start("reminder", {"at": past, "expires_after": "1h"}, app=APP)

    wait_for(lambda: reports.processors.run_status(too_late) == "expired" and reports.processors.run_status(in_time)
             == "completed", timeout=60, what="one run expired, the other completed")
    assert f"remind:{too_late}" not in reports.calls.counts
    (sleep,) = reports.processors.rows(
        "SELECT status FROM steps_current WHERE run_id = {id:String}", id=too_late
    )
    assert sleep["status"] == "interrupted"
