"""Waiting for a run's result (`RunHandle.result`, `steplog runs result`) on the real stack.

The stack of tests/integration/test_workflows_e2e.py (processors, a worker of app "shop", a
client), started once for this module: runs are started the way users start them, and every
result is compared with what `runs_current` says of the run.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from steplog.errors import ResultTimeoutError, RunCancelledError, RunFailedError
from steplog.producers.client import Client
from steplog.producers.run_end_lookup import clickhouse_http_lookup
from steplog.producers.run_results import RunHandle
from steplog.projections.queries import RunEnd
from steplog.schemas.ids import triggered_run_id
from steplog.settings import Settings, child_environment
from tests.conftest import wait_for
from tests.integration import test_workflows_e2e as e2e

APP = e2e.APP
Stack = e2e.Stack
stack = e2e.stack  # the same module-scoped fixture, one stack for this module


def expected_order(order_id: str, amount: int) -> dict[str, Any]:
    return {"order": order_id, "charge": {"charged": amount, "currency": "EUR"}}


def parked(stack: Stack, run_id: str, event_type: str) -> None:
    stack.log.wait_for_type(run_id, event_type)


# --------------------------------------------------------------------------- runs started here


def test_result_returns_what_the_workflow_returned(stack: Stack) -> None:
    handle = stack.client.start("order.process", {"id": "res-1", "amount": 12}, app=APP)

    assert handle.result(timeout=60) == expected_order("res-1", 12)
    # What it was before: the run id, and runs_current agrees with the result.
    assert isinstance(handle, str) and handle == handle.run_id
    row = stack.run_ending(handle, "completed")
    assert json.loads(row["output"]) == expected_order("res-1", 12)


def test_result_async_waits_without_blocking_the_loop(stack: Stack) -> None:
    async def scenario() -> tuple[Any, int]:
        handle = await stack.client.start_async(
            "order.process", {"id": "res-2", "amount": 3}, app=APP
        )
        ticks = 0

        async def tick() -> None:  # the caller's loop stays free while the result is awaited
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        try:
            return await handle.result_async(timeout=60), ticks
        finally:
            ticker.cancel()

    output, ticks = asyncio.run(scenario())
    assert output == expected_order("res-2", 3)
    assert ticks > 5  # the run sleeps 300 ms: the loop ran meanwhile


def test_a_failed_run_raises_its_error_type_and_message(stack: Stack) -> None:
    handle = stack.client.start("declined", app=APP)

    with pytest.raises(RunFailedError) as raised:
        handle.result(timeout=60)

    error = raised.value
    assert (error.run_id, error.workflow) == (handle.run_id, "declined")
    assert error.error_type == "StepFailedError"
    assert "NonRetriableError: card declined" in error.error_message
    row = stack.run_ending(handle, "failed")
    assert (row["error_type"], row["error_message"]) == (error.error_type, error.error_message)


def test_a_cancelled_run_raises_run_cancelled_with_the_reason(stack: Stack) -> None:
    handle = stack.client.start("napper", {"nap": "1h"}, app=APP)
    parked(stack, handle, "step.sleeping")

    stack.client.cancel(handle, flow="napper", reason="no longer needed")

    with pytest.raises(RunCancelledError, match="no longer needed") as raised:
        handle.result(timeout=60)
    assert (raised.value.run_id, raised.value.workflow) == (handle.run_id, "napper")
    stack.run_ending(handle, "cancelled")


def test_a_timeout_names_the_run_and_the_run_goes_on(stack: Stack) -> None:
    handle = stack.client.start("napper", {"nap": "1h"}, app=APP)
    parked(stack, handle, "step.sleeping")

    with pytest.raises(ResultTimeoutError, match=f"run {handle} of workflow 'napper'"):
        handle.result(timeout=0.5)
    with pytest.raises(TimeoutError):
        asyncio.run(handle.result_async(timeout=0.2))

    # The wait gave up, not the run: its end still reaches the same handle later.
    stack.client.cancel(handle, flow="napper", reason="test over")
    with pytest.raises(RunCancelledError):
        handle.result(timeout=60)


def test_one_client_waits_on_many_runs_at_once(stack: Stack) -> None:
    async def scenario() -> list[Any]:
        handles = await asyncio.gather(*(
            stack.client.start_async("order.process", {"id": f"many-{i}", "amount": i}, app=APP)
            for i in range(40)
        ))
        assert len({stack.client._run_end_tail().partition_of(h) for h in handles}) > 1
        return await asyncio.gather(*(h.result_async(timeout=120) for h in handles))

    outputs = asyncio.run(scenario())
    assert outputs == [expected_order(f"many-{i}", i) for i in range(40)]


# --------------------------------------------------------------------------- runs started elsewhere


def test_a_run_started_by_an_event_trigger_can_be_waited_for(stack: Stack) -> None:
    event_id = stack.client.send_event("order.placed", {"id": "res-trig", "amount": 9})
    run_id = triggered_run_id(event_id, APP, "order.process")

    handle = stack.client.run_handle(run_id, workflow="order.process")

    assert handle.mark is None
    assert handle.result(timeout=60) == expected_order("res-trig", 9)


def test_a_run_that_ended_long_before_the_handle_is_answered_from_clickhouse(
    stack: Stack,
) -> None:
    run_id = stack.client.start("order.process", {"id": "res-old", "amount": 1}, app=APP)
    stack.run_ending(run_id, "completed")
    end = stack.log.record_of(run_id, "run.completed")
    # "Long before": the processors have committed past the run's end, so reading the
    # partition from their offset finds nothing; only ClickHouse can answer.
    wait_for(
        lambda: committed_offset(stack.settings, end.partition) > end.offset,
        what="the processors' commit past the run's end",
    )
    asked: list[RunEnd | None] = []
    lookup = clickhouse_http_lookup(stack.settings)

    def counting(run_id: str, project: str) -> RunEnd | None:
        asked.append(lookup(run_id, project))
        return asked[-1]

    with Client(settings=stack.settings, run_end_lookup=counting) as client:
        handle = client.run_handle(run_id)
        assert handle.result(timeout=30) == expected_order("res-old", 1)
    assert len(asked) == 1 and asked[0] is not None


def test_a_handle_for_a_run_of_another_project_waits_for_that_project(stack: Stack) -> None:
    run_id = stack.client.start("order.process", {"id": "res-proj", "amount": 2}, app=APP)
    assert run_id.result(timeout=60) == expected_order("res-proj", 2)

    elsewhere = stack.client.run_handle(run_id, project="another-project")
    with pytest.raises(ResultTimeoutError):
        elsewhere.result(timeout=1)


def committed_offset(settings: Settings, partition: int) -> int:
    async def read() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            tp = TopicPartition(settings.topics.events, partition)
            offsets = await admin.list_consumer_group_offsets(
                settings.processors_group, partitions=[tp]
            )
        finally:
            await admin.close()
        found = offsets.get(tp)
        return int(found.offset) if found is not None else -1

    return asyncio.run(read())


# --------------------------------------------------------------------------- the CLI


def runs_result(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from steplog.server.entry import main; main()", "runs", "result",
         *args],
        env=child_environment(stack.settings), capture_output=True, text=True,
        timeout=120, check=False,
    )


def test_the_cli_prints_the_output_of_a_completed_run(stack: Stack) -> None:
    handle: RunHandle = stack.client.start(
        "order.process", {"id": "res-cli", "amount": 5}, app=APP
    )
    handle.result(timeout=60)

    done = runs_result(stack, handle, "--wait", "60")

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == expected_order("res-cli", 5)


def test_the_cli_exits_1_for_a_failed_run_with_its_error(stack: Stack) -> None:
    handle = stack.client.start("declined", app=APP)

    done = runs_result(stack, handle, "--wait", "60")

    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert f"run {handle} of workflow 'declined' failed: StepFailedError" in done.stderr
    assert "card declined" in done.stderr


def test_the_cli_exits_3_for_a_cancelled_run_and_4_for_one_still_going(stack: Stack) -> None:
    handle = stack.client.start("napper", {"nap": "1h"}, app=APP)
    parked(stack, handle, "step.sleeping")

    going = runs_result(stack, handle, "--wait", "1")
    assert going.returncode == 4, going.stderr
    assert f"run {handle} of workflow 'napper' has not ended within 1s" in going.stderr

    stack.client.cancel(handle, flow="napper", reason="from the cli test")
    stack.run_ending(handle, "cancelled")
    cancelled = runs_result(stack, handle)
    assert cancelled.returncode == 3, cancelled.stderr
    assert "was cancelled: from the cli test" in cancelled.stderr
