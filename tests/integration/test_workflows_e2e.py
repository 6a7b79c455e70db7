"""Durable workflows end to end: a worker, the real broker, `steplog processors` and ClickHouse.

Nothing is played by hand here: runs are started the way users start them (`client.send_event`,
`client.start`, `emit`, `run_workflow`, `steplog runs retrigger`), the processors resume them,
and every assertion reads what an analyst reads, through the processors' SQL endpoint
(`runs_current`, `steps_current`, `events`, `runs_overdue`), plus counters of the side effects
the step functions had. One stack (processors and a worker of app "shop") serves the tests of
this module that can share it; tests that restart or kill processes start their own.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from steplog.server.broker import LocalBroker
from steplog.errors import NonRetriableError, StepFailedError
from steplog.producers.app import App
from steplog.producers.client import Client
from steplog.producers.context import WorkflowContext
from steplog.schemas.events import StepSleeping
from steplog.schemas.flows import RetryPolicy
from steplog.schemas.ids import child_run_id, triggered_run_id
from steplog.schemas.signals import WaitRegistered
from steplog.settings import Settings, child_environment, load_settings
from steplog.topics import ensure_topics, topic_specs
from tests.conftest import (
    RunningProcessors,
    free_port,
    isolated_settings,
    start_processors,
    wait_for,
    with_own_engine,
)
from tests.workflow_harness import Counter, CrashyWorkers, LogWatcher, WorkerThread

APP = "shop"
_RUN_ENDS = frozenset({"completed", "failed", "cancelled"})
FAST_RETRIES = RetryPolicy(attempts=3, initial_delay_ms=100, multiplier=2, jitter=0)


class Probe:
    """What the step functions did, per run: calls counted, moments signalled."""

    def __init__(self) -> None:
        self.calls = Counter()
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def event(self, name: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(name, threading.Event())

    def count(self, name: str) -> int:
        return self.calls.counts.get(name, 0)

    def called(self, name: str) -> None:
        self.calls.step(name, None)()


def build_shop(settings: Settings, probe: Probe) -> App:
    """App "shop": one workflow per primitive; behaviour chosen by each run's input."""
    app = App(APP, project=settings.project, settings=settings, retries=FAST_RETRIES)

    @app.workflow("order.process", triggers=["order.placed"])
    async def process_order(ctx: WorkflowContext) -> Any:
        order = ctx.event.data
        assert isinstance(order, dict)

        def charge(payment: dict[str, Any]) -> dict[str, Any]:
            probe.called(f"charge:{ctx.run_id}")
            return {"charged": payment["amount"], "currency": "EUR"}

        charged = await ctx.step.run(
            "charge", charge, input={"order_id": order["id"], "amount": order["amount"]}
        )
        await ctx.step.sleep_until("long-past", "2001-01-01T00:00:00Z")
        await ctx.step.sleep("settle", "300ms")
        return {"order": order["id"], "charge": charged}

    @app.workflow("flaky")
    async def flaky(ctx: WorkflowContext) -> Any:
        def reserve() -> str:
            probe.called(f"reserve:{ctx.run_id}")
            if probe.count(f"reserve:{ctx.run_id}") <= 2:
                raise ConnectionError(f"inventory refused (call {probe.count(f'reserve:{ctx.run_id}')})")
            return "reserved"

        return await ctx.step.run("reserve", reserve)

    @app.workflow("declined")
    async def declined(ctx: WorkflowContext) -> Any:
        def charge() -> None:
            probe.called(f"declined:{ctx.run_id}")
            raise NonRetriableError("card declined")

        return await ctx.step.run("charge", charge)

    @app.workflow("approval")
    async def approval(ctx: WorkflowContext) -> Any:
        data = ctx.event.data
        assert isinstance(data, dict)
        answer = await ctx.step.wait_for_event(
            "await-approval", event="order.approved", timeout=str(data.get("timeout", "1h")),
            match="data.order_id",
        )
        return {"approval": answer}

    @app.workflow("fraud.check")
    async def fraud_check(ctx: WorkflowContext) -> Any:
        def score(order: Any) -> None:
            raise NonRetriableError(f"no score for {order['id']}")

        return await ctx.step.run("score", score, input=ctx.event.data)

    @app.workflow("checkout")
    async def checkout(ctx: WorkflowContext) -> Any:
        data = ctx.event.data
        assert isinstance(data, dict)
        try:
            verdict = await ctx.step.run_workflow(
                "fraud", name="fraud.check", data={"id": data["id"]}
            )
        except StepFailedError as exc:
            if not data.get("catch"):
                raise
            return {"fraud": f"unavailable: {exc.error_message}"}
        return {"fraud": verdict}

    @app.workflow("announce")
    async def announce(ctx: WorkflowContext) -> Any:
        await ctx.step.emit("notify", name="notification.requested", data=ctx.event.data)
        return "announced"

    for channel in ("email", "sms"):

        def sender(channel: str) -> Any:
            async def send(ctx: WorkflowContext) -> Any:
                return await ctx.step.run("send", lambda: f"{channel} for {ctx.event.data}")

            return send

        app.workflow(f"notify.{channel}", triggers=["notification.requested"])(sender(channel))

    @app.workflow("listener")
    async def listener(ctx: WorkflowContext) -> Any:
        return await ctx.step.wait_for_event(
            "hear", event="notification.requested", timeout="1h", match="data.id"
        )

    @app.workflow("parallel")
    async def parallel(ctx: WorkflowContext) -> Any:
        data = ctx.event.data
        assert isinstance(data, dict)
        slow_started = probe.event(f"slow-started:{ctx.run_id}")

        def fail() -> None:
            assert slow_started.wait(30), "the slow branch never started"
            raise NonRetriableError("payment provider down")

        async def slow() -> str:
            slow_started.set()
            try:
                await asyncio.sleep(float(str(data.get("pack_seconds", 60))))
            except asyncio.CancelledError:
                probe.called(f"slow-cancelled:{ctx.run_id}")
                raise
            return "slow finished"

        results = await asyncio.gather(
            ctx.step.run("pay", fail),
            ctx.step.run("pack", slow),
            return_exceptions=bool(data.get("settle_all")),
        )
        return [r if isinstance(r, str) else type(r).__name__ for r in results]

    @app.workflow("napper")
    async def napper(ctx: WorkflowContext) -> Any:
        await ctx.step.run("before", lambda: probe.called(f"before:{ctx.run_id}"))
        data = ctx.event.data
        await ctx.step.sleep("nap", str(data["nap"]) if isinstance(data, dict) else "1h")
        await ctx.step.run("after", lambda: probe.called(f"after:{ctx.run_id}"))
        return "rested"

    @app.workflow("guardian")
    async def guardian(ctx: WorkflowContext) -> Any:
        return await ctx.step.run_workflow("watch", name="napper")

    return app


@dataclass
class Stack:
    settings: Settings
    processors: RunningProcessors
    client: Client
    log: LogWatcher
    probe: Probe

    def run(self, run_id: str) -> dict[str, Any] | None:
        rows = self.processors.rows("SELECT * FROM runs_current WHERE run_id = {id:String}", id=run_id)
        return rows[0] if rows else None

    def run_ending(self, run_id: str, status: str, *, timeout: float = 60) -> dict[str, Any]:
        """The run's row once runs_current shows `status`; for an end, once every event of
        the run in the log is folded into it (its version counts them), since with paced
        writes the run's last events may come in a later write than its status."""

        def reached() -> bool:
            row = self.run(run_id)
            if row is None or row["status"] != status:
                return False
            logged = {event.event_id for event in self.log.events(run_id)}
            return status not in _RUN_ENDS or row["version"] == len(logged)

        try:
            wait_for(reached, timeout=timeout, what=f"run {run_id} to be {status}")
        except AssertionError:
            raise AssertionError(f"run {run_id} is {self.run(run_id)}; events: "
                                 f"{self.log.types(run_id)}") from None
        row = self.run(run_id)
        assert row is not None
        return row

    def steps(self, run_id: str) -> dict[str, dict[str, Any]]:
        rows = self.processors.rows("SELECT * FROM steps_current WHERE run_id = {id:String}", id=run_id)
        return {row["step_key"]: row for row in rows}

    def events(self, run_id: str) -> list[tuple[str, str, int]]:
        rows = self.processors.rows(
            "SELECT type, step_key, attempt FROM events FINAL WHERE run_id = {id:String} "
            "ORDER BY log_offset", id=run_id,
        )
        return [(row["type"], row["step_key"], row["attempt"]) for row in rows]

    def start(self, workflow: str, data: Any = None) -> str:
        return self.client.start(workflow, data, app=APP)

    def registered_wait(self, run_id: str) -> None:
        """Until the run's wait is on the signals topic (what "parked" means in log order)."""
        self.log.wait(
            lambda: any(
                isinstance(r.message, WaitRegistered) and r.message.run_id == run_id
                for r in self.log.records
            ),
            what=f"the wait of run {run_id}",
        )


def new_stack_settings(kafka_bootstrap: str, clickhouse_dsn: str, directory: Path) -> Settings:
    settings = with_own_engine(
        isolated_settings(kafka_bootstrap, clickhouse_dsn, directory / "steplog"), directory
    )
    asyncio.run(ensure_topics(settings.kafka_bootstrap, topic_specs(settings)))
    return settings


@contextmanager
def running_stack(settings: Settings, probe: Probe, processors_log: Path) -> Iterator[Stack]:
    """Processors, a worker of app "shop", a client and a log watcher; all stopped at the end."""
    processors = start_processors(settings, processors_log)
    try:
        with (
            LogWatcher(settings) as log,
            WorkerThread(build_shop(settings, probe), settings),
            Client(settings=settings) as client,
        ):
            yield Stack(settings, processors, client, log, probe)
    finally:
        processors.stop()


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, clickhouse_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("workflows")
    settings = new_stack_settings(kafka_bootstrap, clickhouse_dsn, directory)
    with running_stack(settings, Probe(), directory / "processors.log") as running:
        yield running


def loads(text: str) -> Any:
    return json.loads(text) if text else None


# --------------------------------------------------------------------------- step.run, sleeps


def test_a_triggered_run_records_its_steps_input_output_and_timings(stack: Stack) -> None:
    event_id = stack.client.send_event("order.placed", {"id": "ord-1", "amount": 4200})
    run_id = triggered_run_id(event_id, APP, "order.process")

    run = stack.run_ending(run_id, "completed")
    assert loads(run["output"]) == {
        "order": "ord-1", "charge": {"charged": 4200, "currency": "EUR"}
    }
    assert (run["trigger_event"], run["trigger_event_id"]) == ("order.placed", event_id)
    assert loads(run["input"]) == {"id": "ord-1", "amount": 4200}
    assert run["app"] == APP and run["parent_run_id"] == ""
    assert run["started_at"] <= run["finished_at"] and run["duration_ms"] >= 300

    steps = stack.steps(run_id)
    assert set(steps) == {"charge", "long-past", "settle"}
    charge = steps["charge"]
    assert (charge["kind"], charge["status"], charge["attempt"]) == ("run", "completed", 1)
    assert loads(charge["input"]) == {"order_id": "ord-1", "amount": 4200}
    assert loads(charge["output"]) == {"charged": 4200, "currency": "EUR"}
    assert charge["started_at"] <= charge["finished_at"] and charge["duration_ms"] >= 0
    # A target in the past wakes at once; a sleep wakes no earlier than asked.
    assert (steps["long-past"]["kind"], steps["long-past"]["status"]) == ("sleep_until", "completed")
    settle = steps["settle"]
    assert (settle["kind"], settle["status"]) == ("sleep", "completed")
    assert settle["finished_at"] - settle["started_at"] >= timedelta(milliseconds=300)
    assert stack.probe.count(f"charge:{run_id}") == 1


def test_a_step_failing_twice_then_succeeding_shows_three_attempts(stack: Stack) -> None:
    run_id = stack.start("flaky")

    run = stack.run_ending(run_id, "completed")
    assert loads(run["output"]) == "reserved"
    reserve = stack.steps(run_id)["reserve"]
    assert (reserve["status"], reserve["attempt"]) == ("completed", 3)
    assert [e for e in stack.events(run_id) if e[1] == "reserve"] == [
        ("step.started", "reserve", 1), ("step.failed", "reserve", 1),
        ("step.started", "reserve", 2), ("step.failed", "reserve", 2),
        ("step.started", "reserve", 3), ("step.completed", "reserve", 3),
    ]
    assert stack.probe.count(f"reserve:{run_id}") == 3


def test_a_non_retriable_error_fails_the_step_and_the_run_at_once(stack: Stack) -> None:
    run_id = stack.start("declined")

    run = stack.run_ending(run_id, "failed")
    charge = stack.steps(run_id)["charge"]
    assert (charge["status"], charge["attempt"]) == ("failed", 1)
    assert (charge["error_type"], charge["error_message"]) == ("NonRetriableError", "card declined")
    assert "NonRetriableError: card declined" in charge["error_stack"]
    assert run["error_type"] == "StepFailedError" and "card declined" in run["error_message"]
    assert stack.probe.count(f"declined:{run_id}") == 1


# --------------------------------------------------------------------------- wait_for_event


def test_an_event_sent_right_after_the_wait_is_registered_resumes_the_run(stack: Stack) -> None:
    run_id = stack.start("approval", {"order_id": "ord-7"})
    stack.registered_wait(run_id)
    stack.client.send_event("order.approved", {"order_id": "ord-other", "by": "nobody"})
    stack.client.send_event("order.approved", {"order_id": "ord-7", "by": "ann"})

    run = stack.run_ending(run_id, "completed")
    assert loads(run["output"]) == {"approval": {"order_id": "ord-7", "by": "ann"}}
    wait = stack.steps(run_id)["await-approval"]
    assert (wait["kind"], wait["status"]) == ("wait_for_event", "completed")


def test_a_wait_that_times_out_returns_none(stack: Stack) -> None:
    run_id = stack.start("approval", {"order_id": "ord-8", "timeout": "1s"})

    run = stack.run_ending(run_id, "completed")
    assert loads(run["output"]) == {"approval": None}
    wait = stack.steps(run_id)["await-approval"]
    assert wait["status"] == "completed" and loads(wait["output"]) is None
    assert wait["finished_at"] - wait["started_at"] >= timedelta(seconds=1)


# --------------------------------------------------------------------------- children, emit


def test_a_child_failure_fails_the_parents_step_and_the_parent_may_catch_it(
    stack: Stack,
) -> None:
    uncaught = stack.start("checkout", {"id": "ord-20"})
    caught = stack.start("checkout", {"id": "ord-21", "catch": True})

    failed = stack.run_ending(uncaught, "failed")
    child = stack.run_ending(child_run_id(uncaught, "fraud"), "failed")
    assert (child["flow"], child["parent_run_id"], child["parent_step_key"]) == (
        "fraud.check", uncaught, "fraud"
    )
    assert loads(child["input"]) == {"id": "ord-20"}
    fraud_step = stack.steps(uncaught)["fraud"]
    assert (fraud_step["kind"], fraud_step["status"]) == ("run_workflow", "failed")
    assert "no score for ord-20" in fraud_step["error_message"]
    assert "no score for ord-20" in failed["error_message"]

    recovered = stack.run_ending(caught, "completed")
    (verdict,) = loads(recovered["output"]).values()
    assert verdict.startswith("unavailable: ") and verdict.endswith("no score for ord-21")


def test_emit_starts_every_triggered_workflow_and_resumes_a_waiting_run(stack: Stack) -> None:
    listener = stack.start("listener", {"id": "n-1"})
    stack.registered_wait(listener)
    announcer = stack.start("announce", {"id": "n-1"})

    stack.run_ending(announcer, "completed")
    heard = stack.run_ending(listener, "completed")
    assert loads(heard["output"]) == {"id": "n-1"}
    emitted = stack.processors.rows(
        "SELECT flow, run_id, trigger_event FROM runs_current "
        "WHERE trigger_event = 'notification.requested' AND flow LIKE 'notify.%'"
    )
    assert sorted(row["flow"] for row in emitted) == ["notify.email", "notify.sms"]
    for row in emitted:
        done = stack.run_ending(row["run_id"], "completed")
        assert loads(done["output"]) == f"{row['flow'].split('.')[1]} for {{'id': 'n-1'}}"
    notify = stack.steps(announcer)["notify"]
    assert (notify["kind"], notify["status"]) == ("emit", "completed")


# --------------------------------------------------------------------------- parallel steps


def test_a_failing_branch_fails_the_run_and_cancels_its_running_sibling(stack: Stack) -> None:
    run_id = stack.start("parallel", {})

    run = stack.run_ending(run_id, "failed")
    assert "payment provider down" in run["error_message"]
    wait_for(lambda: stack.probe.count(f"slow-cancelled:{run_id}") == 1,
             what="the sibling branch cancelled")
    steps = stack.steps(run_id)
    assert steps["pay"]["status"] == "failed"
    # Nothing left running: the sibling shows interrupted, or, cancelled before its
    # step.started was due (it is written with the outcome for steps shorter than that),
    # leaves no row at all.
    assert steps.get("pack", {"status": "interrupted"})["status"] == "interrupted", steps
    assert "step.completed" not in {t for t, key, _ in stack.events(run_id) if key == "pack"}


def test_return_exceptions_lets_every_branch_finish(stack: Stack) -> None:
    run_id = stack.start("parallel", {"settle_all": True, "pack_seconds": 0.5})

    run = stack.run_ending(run_id, "completed")
    assert loads(run["output"]) == ["StepFailedError", "slow finished"]
    steps = stack.steps(run_id)
    assert (steps["pay"]["status"], steps["pack"]["status"]) == ("failed", "completed")


# --------------------------------------------------------------------------- the lifecycle


def test_cancel_stops_a_sleeping_run_and_its_child(stack: Stack) -> None:
    parent = stack.start("guardian")
    child = child_run_id(parent, "watch")
    stack.log.wait_for_type(child, "step.sleeping")

    stack.client.cancel(parent, flow="guardian", reason="customer asked")

    assert stack.run_ending(parent, "cancelled")["status"] == "cancelled"
    assert stack.run_ending(child, "cancelled")["parent_run_id"] == parent
    assert stack.probe.count(f"before:{child}") == 1
    assert stack.probe.count(f"after:{child}") == 0
    steps = stack.steps(child)
    assert "after" not in steps and steps["nap"]["status"] == "interrupted"
    # The child's end is reported to the parent's step like any child's end.
    watch = stack.steps(parent)["watch"]
    assert (watch["kind"], watch["status"], watch["error_type"]) == (
        "run_workflow", "failed", "RunCancelled"
    )


def test_retrigger_runs_a_finished_run_again_with_its_input_and_trigger(stack: Stack) -> None:
    event_id = stack.client.send_event("order.placed", {"id": "ord-30", "amount": 10})
    first = triggered_run_id(event_id, APP, "order.process")
    stack.run_ending(first, "completed")

    retriggered = subprocess.run(
        [sys.executable, "-c", "from steplog.server.entry import main; main()",
         "runs", "retrigger", first],
        env=child_environment(stack.settings), capture_output=True, text=True, timeout=120,
    )
    assert retriggered.returncode == 0, retriggered.stderr
    second = retriggered.stdout.strip()

    again = stack.run_ending(second, "completed")
    assert second != first and again["retrigger_of"] == first
    assert loads(again["input"]) == {"id": "ord-30", "amount": 10}
    assert (again["trigger_event"], again["trigger_event_id"]) == ("order.placed", event_id)
    assert stack.probe.count(f"charge:{first}") == stack.probe.count(f"charge:{second}") == 1


def test_a_run_no_worker_can_start_is_overdue_until_one_comes(stack: Stack) -> None:
    run_id = stack.client.start(
        "stocktake", {"shelf": 4}, start_at=datetime.now(UTC) - timedelta(minutes=5)
    )

    wait_for(lambda: bool(stack.processors.rows(
        "SELECT run_id FROM runs_overdue WHERE run_id = {id:String}", id=run_id
    )), what="the run listed overdue")
    (overdue,) = stack.processors.rows(
        "SELECT flow, overdue_by_ms FROM runs_overdue WHERE run_id = {id:String}", id=run_id
    )
    assert overdue["flow"] == "stocktake" and overdue["overdue_by_ms"] >= 5 * 60 * 1000
    assert stack.run_ending(run_id, "overdue")["recorded_status"] == "scheduled"

    late = App("warehouse", project=stack.settings.project, settings=stack.settings)

    @late.workflow("stocktake")
    async def stocktake(ctx: WorkflowContext) -> Any:
        return await ctx.step.run("count", lambda: {"counted": ctx.event.data})

    with WorkerThread(late, stack.settings):
        run = stack.run_ending(run_id, "completed")
    assert loads(run["output"]) == {"counted": {"shelf": 4}} and run["app"] == "warehouse"
    assert not stack.processors.rows("SELECT run_id FROM runs_overdue WHERE run_id = {id:String}", id=run_id)


# --------------------------------------------------------------------------- restarts, crashes


def test_a_sleep_wakes_on_time_across_a_restart_of_every_process(
    clickhouse_dsn: str, tmp_path: Path
) -> None:
    """Broker, processors and worker all stop while a run sleeps; once they are back the run
    wakes (not before its wake time), and nothing before the sleep runs again."""
    base, port, probe = load_settings(), free_port(), Probe()

    @contextmanager
    def every_process(settings: Settings | None, name: str) -> Iterator[Stack]:
        broker = LocalBroker(data_dir=tmp_path / "kafka", port=port, heap=base.broker_heap,
                             version=base.kafka_version, cache_dir=base.cache_dir)
        broker.start()
        try:
            settings = settings or new_stack_settings(broker.bootstrap, clickhouse_dsn, tmp_path)
            with running_stack(settings, probe, tmp_path / f"processors-{name}.log") as stack:
                yield stack
        finally:
            broker.stop()

    with every_process(None, "before") as stack:
        run_id = stack.start("napper", {"nap": "8s"})
        sleeping = stack.log.wait_for_type(run_id, "step.sleeping")
    assert isinstance(sleeping, StepSleeping)
    assert probe.count(f"before:{run_id}") == 1 and probe.count(f"after:{run_id}") == 0

    with every_process(stack.settings, "after") as stack:
        run = stack.run_ending(run_id, "completed", timeout=120)
        nap = stack.steps(run_id)["nap"]
    assert loads(run["output"]) == "rested"
    assert (nap["kind"], nap["status"]) == ("sleep", "completed")
    assert nap["finished_at"].replace(tzinfo=UTC) >= sleeping.payload.wake_at
    assert probe.count(f"before:{run_id}") == 1 and probe.count(f"after:{run_id}") == 1


def test_a_sigkilled_worker_resumes_without_repeating_completed_steps(
    processors: RunningProcessors, tmp_path: Path
) -> None:
    settings = processors.settings
    with (
        CrashyWorkers(settings, tmp_path) as workers,
        Client(settings=settings) as client,
        LogWatcher(settings) as log,
    ):
        stack = Stack(settings, processors, client, log, Probe())
        run_id = stack.start("crashy")
        workers.kill_the_first_in_step_two()
        run = stack.run_ending(run_id, "completed", timeout=120)
        workers.stop_the_second()
    assert loads(run["output"]) == ["one", "two", "three"]
    # At least once for the step in flight only: "two" ran twice, the others once.
    assert workers.side_effects() == ["one", "two", "two", "three"]
    steps = stack.steps(run_id)
    assert {key: row["status"] for key, row in steps.items()} == {
        "one": "completed", "two": "completed", "three": "completed"
    }
    # The killed attempt's step.started is in the log only if it ran past STARTED_DELAY
    # before the kill; the completed steps each started exactly once.
    started = [key for t, key, _ in stack.events(run_id) if t == "step.started"]
    assert started.count("one") == started.count("three") == 1 and "two" in started
