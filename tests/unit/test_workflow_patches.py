"""`ctx.patched` and `ctx.deprecate_patch` (producers.patches): a code change under runs in
flight, driven by the test harness (one pass of the old code, the rest under the new one)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from steplog.errors import NonDeterminismError, WorkflowError
from steplog.producers.app import App
from steplog.producers.context import WorkflowContext
from steplog.testing import TestedRun, WorkflowTest
from steplog.schemas.events import StepCompleted, StepStarted
from steplog.schemas.statuses import RunStatus, StepStatus

Fee = Callable[[WorkflowContext], Awaitable[object]]


async def old_fee(ctx: WorkflowContext) -> object:
    return await ctx.step.run("fee", lambda: 1)


async def patched_fee(ctx: WorkflowContext) -> object:
    if ctx.patched("new-fee"):
        return await ctx.step.run("fee-v2", lambda: 2)
    return await ctx.step.run("fee", lambda: 1)


async def deprecated_fee(ctx: WorkflowContext) -> object:
    ctx.deprecate_patch("new-fee")
    return await ctx.step.run("fee-v2", lambda: 2)


def checkout(fee: Fee, *, fee_after_sleep: bool = False) -> App:
    """Charge, the fee, a 1h sleep (or the sleep first): `fee` is the code under change."""
    app = App("shop", project="tests")

    @app.workflow("checkout")
    async def run(ctx: WorkflowContext) -> object:
        await ctx.step.run("charge", lambda: 10)
        if fee_after_sleep:
            await ctx.step.sleep("settle", "1h")
            return await fee(ctx)
        amount = await fee(ctx)
        await ctx.step.sleep("settle", "1h")
        return amount

    return app


def in_flight(fee: Fee, **shape: bool) -> TestedRun:
    """A run parked at its sleep after one pass of `fee`'s code."""
    run = WorkflowTest(checkout(fee, **shape)).run("checkout", max_passes=1)
    assert run.waiting_on == ["settle"]
    return run


def test_a_new_run_records_the_marker_and_takes_the_new_path() -> None:
    run = WorkflowTest(checkout(patched_fee)).run("checkout")
    assert run.result() == 2
    assert run.step_keys == ["charge", "patched:new-fee", "fee-v2", "settle"]
    marker = [e for e in run.events if getattr(e, "step_key", "") == "patched:new-fee"]
    assert [type(e) for e in marker] == [StepStarted, StepCompleted]
    assert marker[0].payload.input == {"patch": "new-fee"}  # type: ignore[union-attr]
    assert run.steps["patched:new-fee"].status is StepStatus.COMPLETED


def test_a_run_past_the_patch_under_the_old_code_keeps_the_old_path() -> None:
    run = WorkflowTest(checkout(patched_fee)).resume(in_flight(old_fee))
    assert run.result() == 1
    assert "patched:new-fee" not in run.steps


def test_a_run_that_reaches_the_patch_after_the_change_takes_the_new_path() -> None:
    old = in_flight(old_fee, fee_after_sleep=True)
    run = WorkflowTest(checkout(patched_fee, fee_after_sleep=True)).resume(old)
    assert run.result() == 2
    assert run.step_keys == ["charge", "settle", "patched:new-fee", "fee-v2"]


def test_the_marker_keeps_the_new_path_in_later_passes_and_one_pass_answers_once() -> None:
    answers: list[bool] = []

    async def asks_twice(ctx: WorkflowContext) -> object:
        answers.extend([ctx.patched("new-fee"), ctx.patched("new-fee")])
        return await patched_fee(ctx)

    run = WorkflowTest(checkout(asks_twice)).run("checkout")
    assert run.result() == 2
    assert run.passes == 2  # to the sleep, then after it
    assert answers == [True] * 4
    assert sum(getattr(e, "step_key", "") == "patched:new-fee" for e in run.events) == 2


def test_a_marker_decided_last_is_written_before_the_run_ends() -> None:
    app = App("shop", project="tests")

    @app.workflow("flag")
    async def flag(ctx: WorkflowContext) -> bool:
        return ctx.patched("new-fee")

    run = WorkflowTest(app).run("flag")
    assert run.result() is True
    assert [e.type for e in run.events][-3:] == ["step.started", "step.completed",
                                                 "run.completed"]


def test_deprecate_patch_replays_runs_with_the_marker_and_fails_runs_without() -> None:
    new = in_flight(patched_fee)
    assert WorkflowTest(checkout(deprecated_fee)).resume(new).result() == 2
    old = WorkflowTest(checkout(deprecated_fee)).resume(in_flight(old_fee))
    assert old.status is RunStatus.FAILED
    assert isinstance(old.error, NonDeterminismError)
    assert "took the old path" in str(old.error)


def test_deprecate_patch_still_records_the_marker_so_a_rollback_replays() -> None:
    run = in_flight(deprecated_fee)
    assert "patched:new-fee" in run.steps
    assert WorkflowTest(checkout(patched_fee)).resume(run).result() == 2


def test_dropping_the_call_under_runs_with_the_marker_fails_naming_deprecate_patch() -> None:
    async def extra_step(ctx: WorkflowContext) -> object:
        fee = await ctx.step.run("fee-v2", lambda: 2)
        await ctx.step.run("audit", lambda: None)
        return fee

    run = WorkflowTest(checkout(extra_step)).resume(in_flight(patched_fee))
    assert isinstance(run.error, NonDeterminismError)
    assert "ctx.deprecate_patch('new-fee')" in str(run.error)


@pytest.mark.parametrize("patch_id", ["", "a\nb", 7, "x" * 300])
def test_a_patch_id_that_cannot_be_a_step_key_fails_the_run_naming_it(patch_id: object) -> None:
    app = App("shop", project="tests")

    @app.workflow("bad")
    async def bad(ctx: WorkflowContext) -> bool:
        return ctx.patched(patch_id)  # type: ignore[arg-type]

    run = WorkflowTest(app).run("bad")
    assert isinstance(run.error, WorkflowError)
    assert f"patch id {patch_id!r}" in str(run.error)


def test_step_ids_of_the_markers_prefix_are_refused() -> None:
    app = App("shop", project="tests")

    @app.workflow("bad")
    async def bad(ctx: WorkflowContext) -> object:
        return await ctx.step.run("patched:mine", lambda: 1)

    run = WorkflowTest(app).run("bad")
    assert isinstance(run.error, WorkflowError)
    assert "reserved" in str(run.error)
