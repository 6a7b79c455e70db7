"""One pass of a run through its workflow function (producers.run_pass), with a memory sink.

A pass is driven the way the worker drives it: a history in, a pass executed, the events it
wrote read back. The next pass gets the history those events give (`next_history`), which is
what the worker reads from the log; the timer service or signals agent is played by adding
the event it would write.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import JsonValue

from steplog.errors import (
    ChildRunFailedError,
    NonDeterminismError,
    NonRetriableError,
    StepFailedError,
)
from steplog.producers.context import TriggerEvent, WorkflowContext
from steplog.producers.pass_writes import SignalsWrite, WorkflowEvent
from steplog.producers.run_pass import PassOutcome, PassResult, RunPass
from steplog.producers.history import RunHistory
from steplog.schemas.base import ErrorInfo
from steplog.schemas.codec import encode
from steplog.schemas.commands import StepRecord
from steplog.schemas.events import (
    RunFailed,
    RunInterrupted,
    StepCompleted,
    StepCompletedPayload,
    StepFailed,
    StepFailedPayload,
    StepInvoked,
    StepKind,
    StepSleeping,
    StepStarted,
    StepWaiting,
    new_event_id,
)
from steplog.schemas.flows import RetryPolicy
from steplog.schemas.ids import child_run_id, emitted_signal_id, wait_registration_id
from steplog.schemas.signals import Signal, WaitRegistered
from steplog.schemas.statuses import StepStatus

RUN_ID = "run-1"
ORDER: dict[str, JsonValue] = {"id": "ord-7", "amount": 4200}
FAST_RETRIES = RetryPolicy(attempts=3, initial_delay_ms=50, jitter=0.0)

Workflow = Callable[[WorkflowContext], Awaitable[Any]]


class MemoryRunSink:
    """Keeps every write in order (events and signals-topic messages in one list)."""

    def __init__(self) -> None:
        self.writes: list[WorkflowEvent | SignalsWrite] = []
        self._last_seq: dict[str, int] = {}

    async def send_event(self, event: WorkflowEvent) -> Awaitable[object]:
        encode(event)  # what Kafka would get: valid, and within the size limit
        # The fold orders a step's events by seq: they must be written in seq order.
        key = getattr(event, "step_key", "")
        assert event.seq > self._last_seq.get(key, -1), f"{event.type} of {key!r} out of order"
        self._last_seq[key] = event.seq
        self.writes.append(event)
        return _done()

    async def send_signal(self, message: SignalsWrite) -> Awaitable[object]:
        encode(message)
        self.writes.append(message)
        return _done()

    @property
    def events(self) -> list[WorkflowEvent]:
        return [w for w in self.writes if not isinstance(w, (Signal, WaitRegistered))]

    def types(self) -> list[str]:
        """`type:step_key` of each write (`type` alone for signals-topic messages)."""
        return [
            w.type if isinstance(w, (Signal, WaitRegistered)) or not hasattr(w, "step_key")
            else f"{w.type}:{w.step_key}"
            for w in self.writes
        ]


def _done() -> asyncio.Future[object]:
    future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


class Calls:
    """Counts calls of step functions by name (thread-safe: sync steps run in threads)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str, result: Any = None) -> Callable[..., Any]:
        def step(*args: Any) -> Any:
            with self._lock:
                self.counts[name] = self.counts.get(name, 0) + 1
            return result if not args else {"got": args[0]}

        return step


def execute(
    fn: Workflow,
    history: RunHistory | None = None,
    *,
    event: TriggerEvent | None = None,
    retries: RetryPolicy = FAST_RETRIES,
    during: Callable[[RunPass], Awaitable[None]] | None = None,
) -> tuple[PassResult, MemoryRunSink]:
    async def go() -> tuple[PassResult, MemoryRunSink]:
        sink = MemoryRunSink()
        run_pass = RunPass(
            fn=fn,
            workflow="order.process",
            project="shop",
            app="shop",
            run_id=RUN_ID,
            history=history or RunHistory(),
            event=event or TriggerEvent(name="order.placed", data=ORDER, id="sig-1"),
            sink=sink,
            retries=retries,
            jitter=lambda: 0.0,
        )
        if during is None:
            return await run_pass.execute(), sink
        executing = asyncio.create_task(run_pass.execute())
        await during(run_pass)
        return await executing, sink

    return asyncio.run(asyncio.wait_for(go(), timeout=30))


def next_history(*sinks: MemoryRunSink, extra: Sequence[WorkflowEvent] = ()) -> RunHistory:
    """The history the next pass starts from: what the passes wrote, plus `extra`."""
    history = RunHistory()
    for sink in sinks:
        history.merge(sink.events)
    history.merge(extra)
    return history


def timer_completes(step_key: str, output: Any = None) -> StepCompleted:
    """What the timer service (a sleep) or the signals agent (a wait) writes."""
    return StepCompleted(
        event_id=new_event_id(), project="shop", flow="order.process", run_id=RUN_ID,
        step_key=step_key, ts=datetime.now(UTC), seq=0,
        payload=StepCompletedPayload(output=output),
    )


# --------------------------------------------------------------------------- step.run


def test_a_three_step_workflow_checkpoints_every_step_and_completes() -> None:
    calls = Calls()

    async def workflow(ctx: WorkflowContext) -> Any:
        a = await ctx.step.run("a", calls("a", 1))
        b = await ctx.step.run("b", calls("b", 2))
        c = await ctx.step.run("c", calls("c", 3))
        return {"sum": a + b + c, "order": ctx.event.data}

    result, sink = execute(workflow)
    assert result.outcome is PassOutcome.COMPLETED
    assert result.output == {"sum": 6, "order": ORDER}
    assert sink.types() == [
        "step.started:a", "step.completed:a", "step.started:b", "step.completed:b",
        "step.started:c", "step.completed:c", "run.completed",
    ]
    seqs = [e.seq for e in sink.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert calls.counts == {"a": 1, "b": 1, "c": 1}


def test_input_is_recorded_on_the_step_and_handed_to_the_function() -> None:
    calls = Calls()

    async def workflow(ctx: WorkflowContext) -> Any:
        return await ctx.step.run("charge", calls("charge"), input={"order_id": "ord-7"})

    result, sink = execute(workflow)
    assert result.output == {"got": {"order_id": "ord-7"}}
    started = sink.events[0]
    assert isinstance(started, StepStarted)
    assert started.payload.kind is StepKind.RUN
    assert started.payload.input == {"order_id": "ord-7"}


def test_async_step_functions_are_awaited() -> None:
    async def fetch(input: dict[str, int]) -> int:
        await asyncio.sleep(0)
        return input["n"] * 2

    async def workflow(ctx: WorkflowContext) -> Any:
        return await ctx.step.run("double", fetch, input={"n": 21})

    assert execute(workflow)[0].output == 42


def test_a_replayed_pass_returns_saved_results_without_calling_the_functions() -> None:
    calls = Calls()

    async def workflow(ctx: WorkflowContext) -> Any:
        a = await ctx.step.run("a", calls("a", "A"))
        b = await ctx.step.run("b", calls("b", "B"))
        await ctx.step.sleep("settle", "1h")
        c = await ctx.step.run("c", calls("c", "C"))
        return [a, b, c]

    first, sink1 = execute(workflow)
    assert first.outcome is PassOutcome.PARKED
    assert sink1.types()[-2:] == ["step.started:settle", "step.sleeping:settle"]
    sleeping = sink1.events[-1]
    assert isinstance(sleeping, StepSleeping)
    assert sleeping.payload.wake_at > datetime.now(UTC) + timedelta(minutes=59)

    second, sink2 = execute(workflow, next_history(sink1, extra=[timer_completes("settle")]))
    assert second.outcome is PassOutcome.COMPLETED
    assert second.output == ["A", "B", "C"]
    assert calls.counts == {"a": 1, "b": 1, "c": 1}
    assert sink2.types() == ["step.started:c", "step.completed:c", "run.completed"]
    assert min(e.seq for e in sink2.events) > max(e.seq for e in sink1.events)


def test_a_step_that_was_in_flight_when_the_worker_died_runs_again_under_its_attempt() -> None:
    calls = Calls()
    history = RunHistory.from_records({
        "a": StepRecord(kind=StepKind.RUN, status=StepStatus.COMPLETED, output="A"),
        "b": StepRecord(kind=StepKind.RUN, status=StepStatus.RUNNING, attempt=2),
    })

    async def workflow(ctx: WorkflowContext) -> Any:
        return [await ctx.step.run("a", calls("a")), await ctx.step.run("b", calls("b", "B"))]

    result, sink = execute(workflow, history)
    assert result.output == ["A", "B"]
    assert calls.counts == {"b": 1}
    assert [e.attempt for e in sink.events if getattr(e, "step_key", "") == "b"] == [2, 2]


def test_a_result_that_is_not_json_fails_the_step_naming_it_and_the_type() -> None:
    async def workflow(ctx: WorkflowContext) -> Any:
        return await ctx.step.run("stamp", lambda: {"at": datetime.now(UTC)})

    result, sink = execute(workflow)
    assert result.outcome is PassOutcome.FAILED
    failed = next(e for e in sink.events if isinstance(e, StepFailed))
    assert failed.payload.error.type == "StepOutputError"
    assert "step 'stamp'" in failed.payload.error.message
    assert "datetime" in failed.payload.error.message
    assert failed.payload.retry_at is None and failed.payload.non_retriable
    assert isinstance(result.error, StepFailedError)


def test_an_oversized_result_fails_the_step() -> None:
    async def workflow(ctx: WorkflowContext) -> Any:
        return await ctx.step.run("big", lambda: "x" * (2 * 1024 * 1024))

    result, sink = execute(workflow)
    failed = next(e for e in sink.events if isinstance(e, StepFailed))
    assert failed.payload.error.type == "StepOutputError"
    assert "too large" in failed.payload.error.message
    assert result.outcome is PassOutcome.FAILED


@pytest.mark.parametrize(
    ("value", "expected"), [({"at": {1, 2}}, "is a set"), ("x" * (2 * 1024 * 1024), "too large")]
)
def test_a_return_value_that_cannot_be_stored_fails_the_run(value: Any, expected: str) -> None:
    async def workflow(ctx: WorkflowContext) -> Any:
        return value

    result, sink = execute(workflow)
    assert result.outcome is PassOutcome.FAILED
    assert expected in str(result.error) and "workflow 'order.process'" in str(result.error)
    assert sink.types() == ["run.failed"]


# ----------------------------------------------------------------------------- retries


def boom(*_: Any) -> Any:
    raise TimeoutError("inventory service did not answer")


def test_a_failing_step_with_attempts_left_writes_its_retry_time_and_parks() -> None:
    async def workflow(ctx: WorkflowContext) -> Any:
        return await ctx.step.run("reserve", boom)

    before = datetime.now(UTC)
    result, sink = execute(workflow)
    assert result.outcome is PassOutcome.PARKED
    failed = sink.events[-1]
    assert isinstance(failed, StepFailed)
    assert failed.payload.error.type == "TimeoutError"
    assert failed.payload.error.stack and "inventory service" in failed.payload.error.stack
    assert failed.payload.retry_at is not None
    delay = failed.payload.retry_at - before
    assert timedelta(milliseconds=50) <= delay < timedelta(seconds=1)
    assert not failed.payload.non_retriable


def test_the_retry_pass_runs_the_next_attempt_and_the_last_failure_raises_in_the_code() -> None:
    outcomes: list[str] = []

    async def workflow(ctx: WorkflowContext) -> Any:
        try:
            return await ctx.step.run("reserve", boom)
        except StepFailedError as exc:
            outcomes.append(f"{exc.step_key}:{exc.error_type}:{exc.attempt}")
            return "gave up"

    history = RunHistory()
    sinks: list[MemoryRunSink] = []
    for _ in range(3):
        history = RunHistory.from_records({
            key: record.model_copy(update={"retry_at": datetime.now(UTC)})
            if record.retry_at else record
            for key, record in next_history(*sinks).steps.items()
        })
        result, sink = execute(workflow, history)
        sinks.append(sink)
    assert [e.attempt for s in sinks for e in s.events if isinstance(e, StepStarted)] == [1, 2, 3]
    last = [e for e in sinks[-1].events if isinstance(e, StepFailed)][-1]
    assert last.payload.retry_at is None
    assert outcomes == ["reserve:TimeoutError:3"]
    assert result.outcome is PassOutcome.COMPLETED and result.output == "gave up"


def test_a_retry_not_yet_due_parks_again_without_running() -> None:
    calls = Calls()
    history = RunHistory.from_records({
        "reserve": StepRecord(
            kind=StepKind.RUN, status=StepStatus.RETRYING, attempt=1,
            retry_at=datetime.now(UTC) + timedelta(minutes=5),
        )
    })

    async def workflow(ctx: WorkflowContext) -> Any:
        return await ctx.step.run("reserve", calls("reserve"))

    result, sink = execute(workflow, history)
    assert result.outcome is PassOutcome.PARKED
    assert sink.writes == [] and calls.counts == {}


def test_a_non_retriable_error_fails_the_step_at_once() -> None:
    def declined() -> None:
        raise NonRetriableError("card declined")

    async def workflow(ctx: WorkflowContext) -> Any:
        await ctx.step.run("charge", declined)

    result, sink = execute(workflow)
    failed = next(e for e in sink.events if isinstance(e, StepFailed))
    assert failed.payload.non_retriable and failed.payload.retry_at is None
    assert result.outcome is PassOutcome.FAILED
    run_failed = sink.events[-1]
    assert isinstance(run_failed, RunFailed)
    assert run_failed.payload.error.type == "StepFailedError"
    assert "card declined" in run_failed.payload.error.message


def test_a_per_step_policy_overrides_the_workflows() -> None:
    async def workflow(ctx: WorkflowContext) -> Any:
        await ctx.step.run("once", boom, retries=RetryPolicy(attempts=1))

    result, sink = execute(workflow)
    assert result.outcome is PassOutcome.FAILED
    failed = next(e for e in sink.events if isinstance(e, StepFailed))
    assert failed.payload.retry_at is None and not failed.payload.non_retriable


def test_a_step_failed_for_good_in_history_raises_without_running() -> None:
    calls = Calls()
    history = RunHistory.from_records({
        "charge": StepRecord(
            kind=StepKind.RUN, status=StepStatus.FAILED, attempt=3,
            error=ErrorInfo(type="TimeoutError", message="slow"),
        )
    })

    async def workflow(ctx: WorkflowContext) -> Any:
        try:
            await ctx.step.run("charge", calls("charge"))
        except StepFailedError as exc:
            return [exc.error_type, exc.error_message, exc.attempt]

    result, sink = execute(workflow, history)
    assert result.output == ["TimeoutError", "slow", 3] and calls.counts == {}


# ----------------------------------------------------------------------- non-determinism


def test_a_step_id_used_twice_fails_the_run_naming_it() -> None:
    async def workflow(ctx: WorkflowContext) -> Any:
        await ctx.step.run("charge", lambda: 1)
        await ctx.step.run("charge", lambda: 2)

    result, sink = execute(workflow)
    assert result.outcome is PassOutcome.FAILED
    assert isinstance(result.error, NonDeterminismError)
    assert "'charge' is used twice" in str(result.error)
    assert isinstance(sink.events[-1], RunFailed)
    assert sink.events[-1].payload.error.type == "NonDeterminismError"


def test_a_different_kind_where_history_has_a_step_fails_the_run_naming_both() -> None:
    history = RunHistory.from_records(
        {"charge": StepRecord(kind=StepKind.RUN, status=StepStatus.COMPLETED, output=1)}
    )

    async def workflow(ctx: WorkflowContext) -> Any:
        await ctx.step.sleep("charge", "1s")

    result, sink = execute(workflow, history)
    assert isinstance(result.error, NonDeterminismError)
    message = str(result.error)
    assert "'charge'" in message and "sleep step" in message and "run step" in message
    assert sink.types() == ["run.failed"]


def test_a_renamed_step_fails_the_run_before_its_function_runs() -> None:
    calls = Calls()
    history = RunHistory.from_records(
        {"charge": StepRecord(kind=StepKind.RUN, status=StepStatus.COMPLETED, output=1)}
    )

    async def workflow(ctx: WorkflowContext) -> Any:
        await ctx.step.run("charge-card", calls("charge-card"))

    result, sink = execute(workflow, history)
    assert isinstance(result.error, NonDeterminismError)
    assert "'charge-card'" in str(result.error) and "'charge' (run)" in str(result.error)
    assert calls.counts == {} and sink.types() == ["run.failed"]


def test_catching_a_non_determinism_error_does_not_save_the_run() -> None:
    async def workflow(ctx: WorkflowContext) -> Any:
        await ctx.step.run("a", lambda: 1)
        try:
            await ctx.step.run("a", lambda: 2)
        except NonDeterminismError:
            pass
        return "done"

    result, _ = execute(workflow)
    assert result.outcome is PassOutcome.FAILED
    assert isinstance(result.error, NonDeterminismError)


def test_tasks_made_with_create_task_replay_before_a_new_step_is_judged() -> None:
    calls = Calls()

    async def workflow(ctx: WorkflowContext) -> Any:
        background = asyncio.create_task(ctx.step.run("bg", calls("bg", "BG")))
        await ctx.step.sleep("wait", "1h")
        return [await background, await ctx.step.run("after", calls("after", "X"))]

    first, sink1 = execute(workflow)
    assert first.outcome is PassOutcome.PARKED
    second, _ = execute(workflow, next_history(sink1, extra=[timer_completes("wait")]))
    assert second.outcome is PassOutcome.COMPLETED, second.error
    assert second.output == ["BG", "X"]
    assert calls.counts == {"bg": 1, "after": 1}


# ---------------------------------------------------------------------------- parallel


def test_parallel_sync_branches_really_overlap() -> None:
    barrier = threading.Barrier(3, timeout=10)  # breaks unless all three run at once

    def meet(name: str) -> Callable[[], str]:
        def step() -> str:
            barrier.wait()
            return name

        return step

    async def workflow(ctx: WorkflowContext) -> Any:
        return list(await asyncio.gather(
            ctx.step.run("user", meet("user")),
            ctx.step.run("prefs", meet("prefs")),
            ctx.step.run("plan", meet("plan")),
        ))

    result, sink = execute(workflow)
    assert result.output == ["user", "prefs", "plan"]
    assert sorted(sink.types()[:6]) == [
        f"step.{what}:{key}"
        for what in ("completed", "started")
        for key in ("plan", "prefs", "user")
    ]


def test_a_parked_branch_waits_for_its_siblings_then_the_run_parks() -> None:
    calls = Calls()

    async def workflow(ctx: WorkflowContext) -> Any:
        return await asyncio.gather(
            ctx.step.sleep("cool-down", "1h"),
            ctx.step.run("slow", calls("slow", "S")),
        )

    first, sink1 = execute(workflow)
    assert first.outcome is PassOutcome.PARKED
    assert "step.completed:slow" in sink1.types() and "step.sleeping:cool-down" in sink1.types()
    assert "run.completed" not in sink1.types()
    second, _ = execute(workflow, next_history(sink1, extra=[timer_completes("cool-down")]))
    assert second.output == [None, "S"] and calls.counts == {"slow": 1}


def test_a_branch_failing_for_good_fails_the_run_and_cancels_its_siblings() -> None:
    cancelled = asyncio.Event()

    async def never_ends() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def workflow(ctx: WorkflowContext) -> Any:
        await asyncio.gather(
            ctx.step.run("hang", never_ends),
            ctx.step.run("fail", boom, retries=RetryPolicy(attempts=1)),
        )

    result, sink = execute(workflow)
    assert cancelled.is_set()
    assert result.outcome is PassOutcome.FAILED
    assert isinstance(result.error, StepFailedError) and result.error.step_key == "fail"
    assert "step.completed:hang" not in sink.types()
    assert sink.types()[-1] == "run.failed"


def test_return_exceptions_lets_every_branch_finish() -> None:
    calls = Calls()

    async def workflow(ctx: WorkflowContext) -> Any:
        results = await asyncio.gather(
            ctx.step.run("fail", boom, retries=RetryPolicy(attempts=1)),
            ctx.step.run("ok", calls("ok", "fine")),
            return_exceptions=True,
        )
        return [type(r).__name__ if isinstance(r, BaseException) else r for r in results]

    result, _ = execute(workflow)
    assert result.output == ["StepFailedError", "fine"]


# ------------------------------------------------------------------------------ sleeps


def test_a_sleep_whose_target_has_passed_completes_at_once() -> None:
    async def workflow(ctx: WorkflowContext) -> Any:
        await ctx.step.sleep("none", 0)
        await ctx.step.sleep_until("past", "2020-01-01T00:00:00Z")
        return "awake"

    result, sink = execute(workflow)
    assert result.output == "awake"
    assert sink.types() == [
        "step.started:none", "step.completed:none",
        "step.started:past", "step.completed:past", "run.completed",
    ]
    past = sink.events[2]
    assert isinstance(past, StepStarted) and past.payload.kind is StepKind.SLEEP_UNTIL
    assert past.payload.input == {"until": "2020-01-01T00:00:00+00:00"}


def test_sleep_until_parks_until_its_wake_time() -> None:
    renews_at = datetime.now(UTC) + timedelta(days=30)

    async def workflow(ctx: WorkflowContext) -> Any:
        await ctx.step.sleep_until("renewal", renews_at)

    result, sink = execute(workflow)
    assert result.outcome is PassOutcome.PARKED
    sleeping = sink.events[-1]
    assert isinstance(sleeping, StepSleeping)
    assert sleeping.payload.wake_at == renews_at and sleeping.payload.kind is StepKind.SLEEP_UNTIL


# ----------------------------------------------------------------------------- waits


def test_wait_for_event_registers_the_wait_before_parking_on_it() -> None:
    async def workflow(ctx: WorkflowContext) -> Any:
        return await ctx.step.wait_for_event(
            "approval", event="order.approved", timeout="24h", match="data.id"
        )

    result, sink = execute(workflow)
    assert result.outcome is PassOutcome.PARKED
    assert sink.types() == ["wait.registered", "step.started:approval", "step.waiting:approval"]
    registration, started, waiting = sink.writes
    assert isinstance(registration, WaitRegistered)
    assert registration.event_id == wait_registration_id(RUN_ID, "approval", 1)
    assert (registration.name, registration.match, registration.match_value) == (
        "order.approved", "data.id", "ord-7"
    )
    assert isinstance(started, StepStarted)
    assert started.payload.input == {
        "event": "order.approved", "timeout": "24h", "match": "data.id"
    }
    assert isinstance(waiting, StepWaiting)
    assert waiting.payload.match_value == "ord-7"
    assert waiting.payload.timeout_at == registration.timeout_at


def test_a_resolved_wait_returns_the_signal_data_and_a_timed_out_one_none() -> None:
    async def workflow(ctx: WorkflowContext) -> Any:
        return await ctx.step.wait_for_event("approval", event="order.approved", timeout="1h")

    _, sink1 = execute(workflow)
    resolved, _ = execute(
        workflow, next_history(sink1, extra=[timer_completes("approval", {"by": "ann"})])
    )
    assert resolved.output == {"by": "ann"}
    timed_out, _ = execute(workflow, next_history(sink1, extra=[timer_completes("approval")]))
    assert timed_out.outcome is PassOutcome.COMPLETED and timed_out.output is None


def test_a_wait_still_parked_registers_again_under_the_same_ids() -> None:
    async def workflow(ctx: WorkflowContext) -> Any:
        return await ctx.step.wait_for_event("approval", event="order.approved")

    _, sink1 = execute(workflow)
    result, sink2 = execute(workflow, next_history(sink1))
    assert result.outcome is PassOutcome.PARKED
    assert sink2.types() == ["wait.registered", "step.waiting:approval"]
    assert sink2.writes[0].event_id == sink1.writes[0].event_id
    assert sink2.writes[1].event_id == sink1.writes[2].event_id


def test_a_match_path_missing_from_the_trigger_event_is_an_error_in_the_code() -> None:
    async def workflow(ctx: WorkflowContext) -> Any:
        return await ctx.step.wait_for_event("approval", event="x", match="data.nope")

    result, sink = execute(workflow)
    assert result.outcome is PassOutcome.FAILED
    assert "match path 'data.nope'" in str(result.error)


def test_a_wait_with_a_condition_registers_it_and_a_bad_one_fails_the_run_at_the_call() -> None:
    condition = "event.data.amount > 100 and event.data.currency == 'EUR'"

    async def workflow(ctx: WorkflowContext) -> Any:
        return await ctx.step.wait_for_event("approval", event="order.paid", if_=condition)

    result, sink = execute(workflow)
    assert result.outcome is PassOutcome.PARKED
    registration, started, _ = sink.writes
    assert isinstance(registration, WaitRegistered) and registration.condition == condition
    assert isinstance(started, StepStarted)
    assert started.payload.input == {
        "event": "order.paid", "timeout": None, "match": None, "if": condition
    }

    async def bad(ctx: WorkflowContext) -> Any:
        return await ctx.step.wait_for_event("approval", event="order.paid", if_="amount >")

    result, _ = execute(bad)
    assert result.outcome is PassOutcome.FAILED
    assert "step 'approval': if_: 'amount >' is not a valid condition" in str(result.error)


# ----------------------------------------------------------------------- child runs, emit


def test_run_workflow_invokes_a_child_with_a_derived_id_and_returns_its_output() -> None:
    async def workflow(ctx: WorkflowContext) -> Any:
        return await ctx.step.run_workflow("fraud", name="order.fraud-check", data={"id": 7})

    first, sink1 = execute(workflow)
    assert first.outcome is PassOutcome.PARKED
    invoked = sink1.events[-1]
    assert isinstance(invoked, StepInvoked)
    assert invoked.payload.child_run_id == child_run_id(RUN_ID, "fraud")
    assert (invoked.payload.workflow, invoked.payload.app, invoked.payload.data) == (
        "order.fraud-check", None, {"id": 7}
    )
    second, _ = execute(workflow, next_history(sink1, extra=[timer_completes("fraud", "clean")]))
    assert second.output == "clean"


def test_a_failed_child_raises_child_run_failed_error_in_the_parent() -> None:
    async def workflow(ctx: WorkflowContext) -> Any:
        try:
            return await ctx.step.run_workflow("fraud", name="order.fraud-check")
        except ChildRunFailedError as exc:
            return [exc.child_run_id, exc.error_type]

    _, sink1 = execute(workflow)
    child_failed = StepFailed(
        event_id=new_event_id(), project="shop", flow="order.process", run_id=RUN_ID,
        step_key="fraud", ts=datetime.now(UTC),
        payload=StepFailedPayload(error=ErrorInfo(type="ValueError", message="bad card")),
    )
    result, _ = execute(workflow, next_history(sink1, extra=[child_failed]))
    assert result.output == [child_run_id(RUN_ID, "fraud"), "ValueError"]


def test_emit_sends_a_signal_with_a_derived_id_once() -> None:
    async def workflow(ctx: WorkflowContext) -> Any:
        await ctx.step.emit("notify", name="notification.requested", data={"id": 7}, app="mail")
        await ctx.step.sleep("later", "1h")

    _, sink1 = execute(workflow)
    assert sink1.types()[:3] == ["step.started:notify", "signal", "step.completed:notify"]
    signal = sink1.writes[1]
    assert isinstance(signal, Signal)
    assert signal.event_id == emitted_signal_id(RUN_ID, "notify")
    assert (signal.name, signal.data, signal.app) == ("notification.requested", {"id": 7}, "mail")
    assert (signal.source_run_id, signal.source_step_key) == (RUN_ID, "notify")
    _, sink2 = execute(workflow, next_history(sink1, extra=[timer_completes("later")]))
    assert "signal" not in sink2.types()


# ------------------------------------------------------------------------- stopping


def test_a_graceful_stop_lets_the_executing_step_finish_then_interrupts_the_run() -> None:
    entered = threading.Event()
    release = threading.Event()
    calls = Calls()

    def slow() -> str:
        entered.set()
        assert release.wait(10)
        return "done"

    async def workflow(ctx: WorkflowContext) -> Any:
        await ctx.step.run("slow", slow)
        await ctx.step.run("next", calls("next"))

    async def during(run_pass: RunPass) -> None:
        await asyncio.to_thread(entered.wait, 10)
        run_pass.request_stop("interrupt")
        release.set()

    result, sink = execute(workflow, during=during)
    assert result.outcome is PassOutcome.INTERRUPTED
    assert sink.types() == ["step.started:slow", "step.completed:slow", "run.interrupted"]
    assert isinstance(sink.events[-1], RunInterrupted) and calls.counts == {}

    resumed, sink2 = execute(workflow, next_history(sink))
    assert resumed.outcome is PassOutcome.COMPLETED
    assert sink2.types()[0] == "run.resumed" and calls.counts == {"next": 1}


def test_a_cancelled_pass_stops_at_once_and_writes_nothing_more() -> None:
    entered = asyncio.Event()

    async def hang() -> None:
        entered.set()
        await asyncio.Event().wait()

    async def workflow(ctx: WorkflowContext) -> Any:
        await ctx.step.run("hang", hang)

    async def during(run_pass: RunPass) -> None:
        await entered.wait()
        sink = run_pass.sink
        assert isinstance(sink, MemoryRunSink)
        while not sink.writes:  # step.started goes out once the step has run a moment
            await asyncio.sleep(0.001)
        run_pass.request_stop("cancel")

    result, sink = execute(workflow, during=during)
    assert result.outcome is PassOutcome.CANCELLED
    assert sink.types() == ["step.started:hang"]


@pytest.mark.parametrize("bad", ["", "x" * 201, 7])
def test_a_step_id_must_be_a_short_string(bad: object) -> None:
    async def workflow(ctx: WorkflowContext) -> Any:
        await ctx.step.run(bad, lambda: 1)  # type: ignore[arg-type]

    result, _ = execute(workflow)
    assert result.outcome is PassOutcome.FAILED and "step id" in str(result.error)
