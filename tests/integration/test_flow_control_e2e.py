"""Flow control end to end: a worker, the real broker, `steplog processors` and ClickHouse.

Runs are started by signals (`client.send_event`), as users start them; every assertion reads
what an analyst reads, through the processors' SQL endpoint (`runs_current`, `flow_starts`,
`runs_flow_waiting`). One stack serves the module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from steplog.producers.app import App
from steplog.producers.client import Client
from steplog.producers.context import WorkflowContext
from steplog.schemas.flow_control import Concurrency, Debounce, RateLimit
from steplog.schemas.ids import triggered_run_id
from steplog.settings import Settings
from steplog.topics import ensure_topics, topic_specs
from tests.conftest import (
    RunningProcessors,
    isolated_settings,
    start_processors,
    wait_for,
    with_own_engine,
)
from tests.workflow_harness import WorkerThread

APP = "shop"
PLAN = "event.data.plan == 'enterprise' ? 120 : 0"


def build_app(settings: Settings) -> App:
    app = App(APP, project=settings.project, settings=settings)

    @app.workflow("customer.sync", triggers=["customer.updated"],
                  concurrency=Concurrency(limit=1, key="data.customer"))
    async def sync(ctx: WorkflowContext) -> Any:
        data = ctx.event.data
        assert isinstance(data, dict)
        # Runs until the test lets it end: what a concurrency slot is held by.
        await ctx.step.wait_for_event("hold", event="sync.release", match="data.customer",
                                      timeout="2m")
        return data["n"]

    @app.workflow("customer.rank", triggers=["customer.ranked"],
                  concurrency=Concurrency(limit=1, key="data.customer"), priority=PLAN)
    async def rank(ctx: WorkflowContext) -> Any:
        data = ctx.event.data
        assert isinstance(data, dict)
        await ctx.step.wait_for_event("hold", event="rank.release", match="data.customer",
                                      timeout="2m")
        return data.get("plan")

    @app.workflow("customer.reindex", triggers=["customer.edited"],
                  debounce=Debounce(period_ms=300, key="data.customer"))
    async def reindex(ctx: WorkflowContext) -> Any:
        return ctx.event.data

    @app.workflow("customer.notify", triggers=["customer.noticed"],
                  rate_limit=RateLimit(limit=1, period_ms=3_600_000, key="data.customer"))
    async def notify(ctx: WorkflowContext) -> Any:
        return ctx.event.data

    return app


class Stack:
    def __init__(self, settings: Settings, processors: RunningProcessors, client: Client) -> None:
        self.settings = settings
        self.processors = processors
        self.client = client


    def flow_start(self, run_id: str) -> dict[str, Any] | None:
        rows = self.processors.rows("SELECT * FROM flow_starts FINAL WHERE run_id = {id:String}", id=run_id)
        return rows[0] if rows else None

    def send(self, name: str, data: Any, workflow: str) -> str:
        """Send a signal; the id of the run it starts."""
        return triggered_run_id(self.client.send_event(name, data), APP, workflow)


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, clickhouse_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("flow-control")
    settings = with_own_engine(
        isolated_settings(kafka_bootstrap, clickhouse_dsn, directory / "steplog"), directory
    )
    asyncio.run(ensure_topics(settings.kafka_bootstrap, topic_specs(settings)))
    processors = start_processors(settings, directory / "processors.log")
    try:
        with WorkerThread(build_app(settings), settings), Client(settings=settings) as client:
            running = Stack(settings, processors, client)
            _until_the_processors_hold_starts_back(running)
            yield running
    finally:
        processors.stop()


def _until_the_processors_hold_starts_back(stack: Stack) -> None:
    """The processors learn the definitions from the flows topic a moment after the worker wrote
    them: until then a start goes as if nothing limited it. Warm-up pairs of starts of one key
    of the rate-limited workflow until the second of a pair is skipped."""

    def held() -> bool:
        key = {"customer": f"warm-up-{len(tried)}"}
        first, second = (stack.send("customer.noticed", key, "customer.notify") for _ in "12")
        tried.append(second)
        wait_for(lambda: stack.flow_start(second) is not None
                 or stack.processors.run_status(second) is not None, what=f"warm-up run {second}")
        return stack.flow_start(second) is not None

    tried: list[str] = []
    wait_for(held, what="a start held back by flow control")


def test_concurrency_runs_one_run_per_key_and_the_rest_wait_scheduled_in_order(
    stack: Stack,
) -> None:
    a = [stack.send("customer.updated", {"customer": "a", "n": n}, "customer.sync")
         for n in range(3)]
    b = stack.send("customer.updated", {"customer": "b", "n": 9}, "customer.sync")

    wait_for(lambda: stack.processors.run_status(a[0]) == "running" and stack.processors.run_status(b) == "running",
             what="the first run of each customer to run")
    waiting = stack.processors.rows("SELECT run_id, reason FROM runs_flow_waiting "
                         "WHERE flow = 'customer.sync'")
    assert sorted(waiting, key=lambda row: a.index(row["run_id"])) == [
        {"run_id": a[1], "reason": "concurrency: 1 running"},
        {"run_id": a[2], "reason": "concurrency: 1 running"},
    ]  # the order they start in is checked below
    assert stack.processors.run_status(a[1]) is None  # held back: no run yet

    for n in range(3):
        stack.client.send_event("sync.release", {"customer": "a"})
        wait_for(lambda: stack.processors.run_status(a[n]) == "completed", what=f"run {n} of customer a")
        if n < 2:
            wait_for(lambda: stack.processors.run_status(a[n + 1]) == "running", what=f"run {n + 1} to start")
            assert [stack.processors.run_status(run_id) for run_id in a[n + 2:]] == [None] * (1 - n)
    assert stack.processors.rows("SELECT run_id FROM runs_flow_waiting WHERE flow = 'customer.sync'") == []
    stack.client.send_event("sync.release", {"customer": "b"})
    wait_for(lambda: stack.processors.run_status(b) == "completed", what="customer b's run")


def test_rate_limit_skips_a_start_over_the_limit_with_the_reason(stack: Stack) -> None:
    first = stack.send("customer.noticed", {"customer": "x"}, "customer.notify")
    wait_for(lambda: stack.processors.run_status(first) == "completed", what="the first start to complete")
    second = stack.send("customer.noticed", {"customer": "x"}, "customer.notify")

    wait_for(lambda: (stack.flow_start(second) or {}).get("status") == "skipped",
             what="the second start to be skipped")
    skipped = stack.flow_start(second)
    assert skipped is not None
    assert skipped["reason"] == "rate limit: 1 starts per 3600000 ms"
    assert stack.processors.run_status(second) is None


def test_debounce_starts_once_with_the_last_data_after_a_quiet_period(stack: Stack) -> None:
    edits = [stack.send("customer.edited", {"customer": "d", "edit": n}, "customer.reindex")
             for n in range(3)]

    wait_for(lambda: stack.processors.run_status(edits[-1]) == "completed", what="the last edit's run")
    ran = stack.processors.rows("SELECT output FROM runs_current WHERE run_id = {id:String}", id=edits[-1])
    assert ran == [{"output": '{"customer":"d","edit":2}'}]
    for replaced in edits[:-1]:
        row = stack.flow_start(replaced)
        assert row is not None and row["status"] == "skipped", row
        assert stack.processors.run_status(replaced) is None


def test_the_priority_expression_lets_a_later_start_go_first(stack: Stack) -> None:
    runs = [stack.send("customer.ranked", {"customer": "p", "plan": plan}, "customer.rank")
            for plan in ("free", "free", "enterprise")]
    no_plan = stack.send("customer.ranked", {"customer": "p"}, "customer.rank")

    wait_for(lambda: stack.processors.run_status(runs[0]) == "running", what="the first run")
    wait_for(lambda: all(stack.flow_start(run_id) for run_id in [*runs[1:], no_plan]),
             what="the later starts to wait")
    rows = [stack.flow_start(run_id) or {} for run_id in [*runs[1:], no_plan]]
    assert [row["priority"] for row in rows] == [0, 120, 0]
    assert rows[2]["reason"].startswith("concurrency: 1 running; priority counted as 0: ")
    assert "no field 'plan'" in rows[2]["reason"]

    stack.client.send_event("rank.release", {"customer": "p"})
    wait_for(lambda: stack.processors.run_status(runs[2]) == "running",
             what="the enterprise start to go before the free one sent before it")
    assert stack.processors.run_status(runs[1]) is None
    for run_id in (runs[2], runs[1], no_plan):  # then arrival order among equals
        wait_for(lambda: stack.processors.run_status(run_id) == "running", what=f"run {run_id}")
        stack.client.send_event("rank.release", {"customer": "p"})
        wait_for(lambda: stack.processors.run_status(run_id) == "completed", what=f"run {run_id}")


def test_starts_written_with_an_app_wait_their_turn_as_any_other(stack: Stack) -> None:
    # client.start(app=) and a retrigger write start_run for the workers themselves, which
    # hand them to the processors' gate (producers/held_starts.py).
    first = stack.client.start("customer.sync", {"customer": "s", "n": 1}, app=APP)
    second = stack.client.start("customer.sync", {"customer": "s", "n": 2}, app=APP)
    again = stack.client.retrigger(first, workflow="customer.sync", app=APP,
                                   data={"customer": "s", "n": 3})

    wait_for(lambda: stack.processors.run_status(first) == "running", what="the first start")
    wait_for(lambda: all((stack.flow_start(run_id) or {}).get("status") == "scheduled"
                         for run_id in (second, again)), what="the later starts to wait")
    assert (stack.flow_start(second) or {})["reason"] == "concurrency: 1 running"
    assert stack.processors.run_status(second) in ("scheduled", "overdue")

    for run_id in (first, second, again):  # one at a time, in arrival order
        wait_for(lambda: stack.processors.run_status(run_id) == "running", what=f"run {run_id}")
        stack.client.send_event("sync.release", {"customer": "s"})
        wait_for(lambda: stack.processors.run_status(run_id) == "completed", what=f"run {run_id}")
    outputs = [stack.processors.rows("SELECT output FROM runs_current WHERE run_id = "
                                     "{id:String}", id=run_id) for run_id in (first, second, again)]
    assert outputs == [[{"output": "1"}], [{"output": "2"}], [{"output": "3"}]]
    # The re-trigger held on its way keeps its link to the run it re-runs.
    assert stack.processors.rows("SELECT retrigger_of FROM runs_current WHERE run_id = "
                                 "{id:String}", id=again) == [{"retrigger_of": first}]
