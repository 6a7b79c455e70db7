"""Which signal resumes which run, which app runs what, and once per key, end to end.

A worker of app "shop", one of app "backoffice", the real broker, `steplog processors` and
ClickHouse (one stack for the module, as in test_workflows_e2e). Runs are started and resumed
through the public API (`client.start`, `client.send_event`, `run_workflow`, `emit`), and the
assertions read `runs_current` / `steps_current` through the processors' SQL endpoint, plus the
step functions' own counters.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from steplog.producers.app import App
from steplog.producers.client import Client
from steplog.producers.context import WorkflowContext
from steplog.schemas.commands import StartRun
from steplog.schemas.events import RunScheduled
from steplog.schemas.flows import CancelOn
from steplog.schemas.ids import child_run_id, emitted_signal_id, triggered_run_id
from steplog.schemas.signals import WaitEnded
from steplog.settings import Settings
from tests.conftest import start_processors
from tests.integration.test_workflows_e2e import (
    FAST_RETRIES,
    Probe,
    Stack,
    loads,
    new_stack_settings,
)
from tests.workflow_harness import LogWatcher, WorkerThread

PAYMENT_IS_BIG = "event.data.amount > 100 and event.data.currency == 'EUR'"


def build_shop(settings: Settings, probe: Probe) -> App:
    app = App("shop", project=settings.project, settings=settings, retries=FAST_RETRIES)

    @app.workflow("big.payment")
    async def big_payment(ctx: WorkflowContext) -> Any:
        return await ctx.step.wait_for_event(
            "paid", event="payment.made", match="data.order_id", if_=PAYMENT_IS_BIG,
            timeout="1h",
        )

    @app.workflow("gate")
    async def gate(ctx: WorkflowContext) -> Any:
        return await ctx.step.wait_for_event("opened", event="gate.opened", timeout="1h")

    @app.workflow("charge.once")
    async def charge_once(ctx: WorkflowContext) -> Any:
        def charge() -> Any:
            probe.called(f"charge:{ctx.run_id}")
            return ctx.event.data

        return await ctx.step.run("charge", charge)

    @app.workflow("cancellable",
                  cancel_on=[CancelOn(event="order.cancelled", match="data.order_id")])
    async def cancellable(ctx: WorkflowContext) -> Any:
        data = ctx.event.data
        assert isinstance(data, dict)
        await ctx.step.sleep("cool-off", str(data.get("sleep", "1h")))
        return "kept"

    @app.workflow("order.once", triggers=["order.submitted"], idempotency="data.order_id")
    async def order_once(ctx: WorkflowContext) -> Any:
        def charge() -> Any:
            probe.called(f"charge:{ctx.run_id}")
            return ctx.event.data

        return await ctx.step.run("charge", charge)

    @app.workflow("dispatch")
    async def dispatch(ctx: WorkflowContext) -> Any:
        audited = await ctx.step.run_workflow("audit", name="audit", app="backoffice")
        await ctx.step.emit("tell", name="audit.done", data={"by": audited}, app="backoffice")
        return audited

    # Defined in both apps: only the app named by run_workflow / emit may run them.
    @app.workflow("audit")
    async def audit(ctx: WorkflowContext) -> Any:
        return "shop"

    @app.workflow("audit.log", triggers=["audit.done"])
    async def audit_log(ctx: WorkflowContext) -> Any:
        return "shop"

    return app


def build_backoffice(settings: Settings) -> App:
    app = App("backoffice", project=settings.project, settings=settings)

    @app.workflow("audit")
    async def audit(ctx: WorkflowContext) -> Any:
        return "backoffice"

    @app.workflow("audit.log", triggers=["audit.done"])
    async def audit_log(ctx: WorkflowContext) -> Any:
        return "backoffice"

    return app


def build_legacy(settings: Settings, probe: Probe, first_step: str) -> App:
    """App "legacy" as deployed, and again with its first step renamed."""
    app = App("legacy", project=settings.project, settings=settings)

    @app.workflow("legacy.order")
    async def legacy_order(ctx: WorkflowContext) -> Any:
        await ctx.step.run(first_step, lambda: probe.called(f"{first_step}:{ctx.run_id}"))
        await ctx.step.wait_for_event("go", event="legacy.go", match="data.id", timeout="1h")
        return "shipped"

    return app


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, clickhouse_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("matching")
    settings = new_stack_settings(kafka_bootstrap, clickhouse_dsn, directory)
    probe = Probe()
    processors = start_processors(settings, directory / "processors.log")
    try:
        with (
            LogWatcher(settings) as log,
            WorkerThread(build_shop(settings, probe), settings),
            WorkerThread(build_backoffice(settings), settings),
            Client(settings=settings) as client,
        ):
            yield Stack(settings, processors, client, log, probe)
    finally:
        processors.stop()


def test_a_wait_with_a_condition_resumes_only_on_a_signal_that_meets_it(stack: Stack) -> None:
    run_id = stack.start("big.payment", {"order_id": "o-1"})
    stack.registered_wait(run_id)
    for data in (
        {"order_id": "o-1", "amount": 50, "currency": "EUR"},   # too small
        {"order_id": "o-1", "amount": 500, "currency": "USD"},  # another currency
        {"order_id": "o-2", "amount": 500, "currency": "EUR"},  # another order (match)
    ):
        stack.client.send_event("payment.made", data)
    paid = {"order_id": "o-1", "amount": 150, "currency": "EUR"}
    stack.client.send_event("payment.made", paid)

    run = stack.run_ending(run_id, "completed")
    assert loads(run["output"]) == paid
    wait = stack.steps(run_id)["paid"]
    assert loads(wait["input"])["if"] == PAYMENT_IS_BIG


def test_one_event_resumes_every_run_waiting_on_it(stack: Stack) -> None:
    waiting = [stack.start("gate", {"n": n}) for n in range(3)]
    for run_id in waiting:
        stack.registered_wait(run_id)
    stack.client.send_event("gate.opened", {"at": "noon"})

    for run_id in waiting:
        assert loads(stack.run_ending(run_id, "completed")["output"]) == {"at": "noon"}


def test_starts_with_one_idempotency_key_make_one_run(stack: Stack) -> None:
    first = stack.client.start("charge.once", {"try": 1}, app="shop", idempotency_key="ord-9")
    again = stack.client.start("charge.once", {"try": 2}, app="shop", idempotency_key="ord-9")
    other = stack.client.start("charge.once", {"try": 3}, app="shop", idempotency_key="ord-10")

    assert again == first != other
    assert first.result(timeout=60) == again.result(timeout=60) == {"try": 1}
    assert other.result(timeout=60) == {"try": 3}
    # After the run has ended, a duplicate still starts nothing and gets the first's result.
    late = stack.client.start("charge.once", {"try": 4}, app="shop", idempotency_key="ord-9")
    assert late == first and late.result(timeout=60) == {"try": 1}
    assert stack.probe.count(f"charge:{first}") == 1
    assert stack.run_ending(first, "completed")["app"] == "shop"


def test_signals_with_one_key_start_one_run_of_a_workflow_with_idempotency(
    stack: Stack,
) -> None:
    for attempt in (1, 2):
        stack.client.send_event("order.submitted", {"order_id": "o-5", "attempt": attempt})
    scheduled = stack.settings.topics.events

    def both_scheduled() -> bool:
        return sum(isinstance(r.message, RunScheduled) and r.message.flow == "order.once"
                   for r in stack.log.records if r.topic == scheduled) == 2

    stack.log.wait(both_scheduled, what="the run.scheduled of both signals")
    (run_id,) = {r.message.run_id for r in stack.log.records
                 if isinstance(r.message, RunScheduled) and r.message.flow == "order.once"}
    done = stack.run_ending(run_id, "completed")
    assert loads(done["output"]) == {"order_id": "o-5", "attempt": 1}
    assert stack.processors.rows("SELECT run_id FROM runs_current WHERE flow = 'order.once'") == [
        {"run_id": run_id}
    ]
    assert stack.probe.count(f"charge:{run_id}") == 1


def test_a_matching_event_cancels_a_waiting_run_and_a_run_that_ends_releases_its_rule(
    stack: Stack,
) -> None:
    doomed = stack.start("cancellable", {"order_id": "o-1"})
    kept = stack.start("cancellable", {"order_id": "o-2", "sleep": "1s"})
    for run_id in (doomed, kept):
        stack.log.wait_for_type(run_id, "step.sleeping")  # registered before its first pass
    stack.client.send_event("order.cancelled", {"order_id": "o-1"})

    stack.run_ending(doomed, "cancelled")
    assert loads(stack.run_ending(kept, "completed")["output"]) == "kept"
    stack.log.wait(
        lambda: any(isinstance(r.message, WaitEnded) and r.message.run_id == kept
                    for r in stack.log.records),
        what=f"the release of run {kept}'s cancel_on rule",
    )


def test_app_names_which_app_runs_a_child_and_which_apps_workflows_an_emit_starts(
    stack: Stack,
) -> None:
    run_id = stack.start("dispatch", None)

    assert loads(stack.run_ending(run_id, "completed")["output"]) == "backoffice"
    child = stack.run_ending(child_run_id(run_id, "audit"), "completed")
    assert (child["app"], loads(child["output"])) == ("backoffice", "backoffice")
    emitted = emitted_signal_id(run_id, "tell")
    told = stack.run_ending(triggered_run_id(emitted, "backoffice", "audit.log"), "completed")
    assert told["app"] == "backoffice"
    # The signals agent sends a signal's starts together: shop's would be there by now.
    starts = [r.message for r in stack.log.on(stack.settings.topics.commands)
              if isinstance(r.message, StartRun) and r.message.workflow == "audit.log"]
    assert [(s.app, s.trigger.event_id if s.trigger else None) for s in starts] == [
        ("backoffice", emitted)
    ]


def test_a_renamed_step_fails_the_run_before_its_function_runs(stack: Stack) -> None:
    probe, settings = stack.probe, stack.settings
    with WorkerThread(build_legacy(settings, probe, "charge"), settings):
        run_id = stack.client.start("legacy.order", {"id": "L-1"}, app="legacy")
        stack.registered_wait(run_id)
    # Deployed again with the step renamed while the run waits; the event resumes it.
    with WorkerThread(build_legacy(settings, probe, "charge-card"), settings):
        stack.client.send_event("legacy.go", {"id": "L-1"})
        run = stack.run_ending(run_id, "failed")

    assert run["error_type"] == "NonDeterminismError"
    assert "'charge-card'" in run["error_message"] and "'charge'" in run["error_message"]
    assert probe.count(f"charge:{run_id}") == 1
    assert probe.count(f"charge-card:{run_id}") == 0
