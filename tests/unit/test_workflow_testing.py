"""The test harness (producers.testing): a workflow run in-process with the worker's passes,
time, events, children and mocks played by the test; its fixture; the README's examples."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import JsonValue

import steplog

from steplog.errors import (
    ChildRunFailedError,
    NonRetriableError,
    RunFailedError,
    StepFailedError,
    WorkflowNotFoundError,
)
from steplog.producers.app import App, Retries
from steplog.producers.context import WorkflowContext
from steplog.testing import WorkflowTest
from steplog.schemas.statuses import RunStatus, StepStatus
from tests.readme import readme_python

pytest_plugins = ["pytester"]

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def shop() -> App:
    app = App("shop", project="tests", retries=Retries(attempts=3, initial_delay_ms=60_000))

    @app.workflow("order")
    async def order(ctx: WorkflowContext) -> JsonValue:
        data: Any = ctx.event.data
        await ctx.step.sleep("cool-off", "30d")
        reply = await ctx.step.wait_for_event("reply", event="order.reply", timeout="2h",
                                              match="data.order_id")
        checked = await ctx.step.run_workflow("check", name="check", data=data)
        await ctx.step.emit("done", name="order.done", data=data)
        return {"reply": reply, "checked": checked}

    @app.workflow("check")
    async def check(ctx: WorkflowContext) -> JsonValue:
        await ctx.step.sleep("think", "5m")
        data: Any = ctx.event.data
        if data.get("fraud"):
            raise NonRetriableError("looks like fraud")
        return "ok"

    @app.workflow("big-spender")
    async def big_spender(ctx: WorkflowContext) -> JsonValue:
        return await ctx.step.wait_for_event("paid", event="order.paid", timeout="1h",
                                             if_="event.data.amount > 100")

    @app.workflow("waits")
    async def waits(ctx: WorkflowContext) -> JsonValue:
        return await ctx.step.wait_for_event("forever", event="never")

    return app


def test_sleeps_are_skipped_on_the_tests_clock_and_waits_time_out() -> None:
    t = WorkflowTest(shop(), now=T0)
    began = time.monotonic()
    run = t.run("order", {"order_id": 7})
    assert time.monotonic() - began < 5
    assert run.result() == {"reply": None, "checked": "ok"}
    assert run.steps["reply"].output is None  # timed out
    assert run.now == T0 + timedelta(days=30, hours=2, minutes=5)
    assert run.step_keys == ["cool-off", "reply", "check", "done"]
    assert [s.name for s in run.emitted] == ["order.done"]


def test_a_sent_event_resolves_the_wait_it_matches() -> None:
    t = WorkflowTest(shop(), now=T0)
    t.send_event("order.reply", {"order_id": 8, "ok": False})  # another order's
    t.send_event("order.reply", {"order_id": 7, "ok": True})
    run = t.run("order", {"order_id": 7})
    assert run.result() == {"reply": {"order_id": 7, "ok": True}, "checked": "ok"}
    assert run.now == T0 + timedelta(days=30, minutes=5)  # no timeout waited for


def test_a_wait_condition_is_the_signals_agents_own() -> None:
    t = WorkflowTest(shop())
    t.send_event("order.paid", {"amount": 20})
    t.send_event("order.paid", {"amount": 120})
    assert t.run("big-spender").result() == {"amount": 120}


def test_child_runs_run_in_process_and_their_failure_reaches_the_parent() -> None:
    run = WorkflowTest(shop()).run("order", {"order_id": 7, "fraud": True})
    assert run.status is RunStatus.FAILED
    assert isinstance(run.error, ChildRunFailedError)
    child = run.children["check"]
    assert child.status is RunStatus.FAILED and child.step_keys == ["think"]
    with pytest.raises(ChildRunFailedError, match="looks like fraud"):
        run.result()
    again = WorkflowTest(shop()).resume(run)  # ended: nothing runs, the log tells
    assert again.passes == 0 and isinstance(again.error, RunFailedError)


def test_mocked_steps_return_or_raise_instead_of_doing_their_work() -> None:
    t = WorkflowTest(shop())
    t.mock_step("reply", returns={"ok": "mocked"})
    t.mock_step("check", returns="mocked")
    run = t.run("order", {"order_id": 7})
    assert run.result() == {"reply": {"ok": "mocked"}, "checked": "mocked"}
    assert run.children == {}

    t = WorkflowTest(shop())
    t.mock_step("check", raises=NonRetriableError("down"))
    assert isinstance(t.run("order", {"order_id": 7}).error, ChildRunFailedError)


def test_a_mocked_run_step_goes_through_its_retries_on_the_tests_clock() -> None:
    app = App("shop", project="tests", retries=Retries(attempts=3, initial_delay_ms=60_000))
    called: list[str] = []

    @app.workflow("charge")
    async def charge(ctx: WorkflowContext) -> None:
        await ctx.step.run("card", lambda: called.append("real"))

    t = WorkflowTest(app, now=T0)
    t.mock_step("card", raises=RuntimeError("declined"))
    run = t.run("charge")
    assert called == []
    assert isinstance(run.error, StepFailedError)
    assert run.steps["card"].status is StepStatus.FAILED and run.steps["card"].attempt == 3
    assert run.now > T0 + timedelta(minutes=1)  # two backoffs, not waited for


def test_a_run_waiting_for_what_nobody_sends_is_left_running() -> None:
    run = WorkflowTest(shop()).run("waits")
    assert run.status is RunStatus.RUNNING and run.waiting_on == ["forever"]
    with pytest.raises(AssertionError, match="send_event"):
        run.result()


def test_a_child_workflow_the_app_lacks_must_be_mocked() -> None:
    app = App("shop", project="tests")

    @app.workflow("parent")
    async def parent(ctx: WorkflowContext) -> JsonValue:
        return await ctx.step.run_workflow("elsewhere", name="other.app.flow")

    with pytest.raises(WorkflowNotFoundError, match=r"mock_step\('elsewhere'"):
        WorkflowTest(app).run("parent")
    with pytest.raises(WorkflowNotFoundError, match="it defines: parent"):
        WorkflowTest(app).run("nope")


def test_the_fixture_gives_each_test_a_harness_of_the_app(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        import pytest
        from steplog.producers.app import App

        pytest_plugins = ["steplog.testing"]

        @pytest.fixture
        def steplog_app():
            app = App("shop", project="tests")

            @app.workflow("hello")
            async def hello(ctx):
                await ctx.step.sleep("nap", "1d")
                return await ctx.step.run("greet", lambda: "hi")

            return app
    """)
    pytester.makepyfile("""
        def test_hello(workflow_test):
            workflow_test.mock_step("greet", returns="mocked")
            assert workflow_test.run("hello").result() == "mocked"

        def test_mocks_are_not_shared(workflow_test):
            assert workflow_test.run("hello").result() == "hi"
    """)
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)


# ----------------------------------------------------------------- the README's examples


def test_the_readmes_workflow_test_passes() -> None:
    namespace: dict[str, Any] = {
        "charge_card": lambda order: {"charged": order["order_id"]},
        "fetch_user": lambda: {"name": "Ada"},
        "fetch_prefs": lambda: {"email": True},
    }
    exec(readme_python('@app.workflow("order.process"'), namespace)
    exec(readme_python("WorkflowTest(app)"), namespace)
    tests = [name for name in namespace if name.startswith("test_")]
    assert len(tests) == 2
    for name in tests:
        namespace[name]()


def test_the_readmes_patch_example_takes_the_new_path_in_a_new_run() -> None:
    namespace: dict[str, Any] = {
        "steplog": steplog, "compute_fee": lambda: 1, "compute_fee_v2": lambda: 2,
    }
    exec(readme_python("ctx.patched("), namespace)
    run = WorkflowTest(namespace["app"]).run("order.refund", {"amount": 10})
    assert run.result() == {"refunded": 8}
    assert "patched:refund-fee" in run.steps
