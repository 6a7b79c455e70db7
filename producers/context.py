"""The workflow context (`ctx.step.*`) and one pass of a run through its workflow function.

A pass calls the workflow function from the top. Every step asks the run's history first:

    history record          step.run                  sleep / wait / run_workflow    emit
    completed (skipped)     return its output         return its output              return
    failed                  raise StepFailedError     raise (ChildRunFailedError)    -
    retrying                park until retry_at,      -                              -
                            then attempt + 1
    running, interrupted    execute that attempt      park again                     execute
    none                    execute attempt 1         write, then park               execute

**Checkpoints.** Every outcome is written to the events topic and acknowledged (acks=all)
before the function goes on. `step.started` is enqueued without waiting: it precedes the
awaited outcome in the same partition, and the idempotent producer keeps a partition's order,
so the outcome's acknowledgement covers it (its own future is awaited too, for errors).

**Parking.** A step that parks (a sleep, a wait, a child run, a retry not yet due) blocks its
branch for good. The pass ends once nothing is executing and a branch is blocked: the main
task and every task that called a step are cancelled, and the run is parked; whatever resumes
it (a timer, a signal, a child's end) sends a `resume_run` and a new pass replays the history.
Parallel branches (`asyncio.gather`) run as tasks of the same pass: each executes its own
steps, a parked branch waits for the others to complete or park, so one pass does all the
work it can.

**Failures.** A step's exception is written as `step.failed` with `retry_at` while the retry
policy has attempts left (the branch parks); the last attempt, or a NonRetriableError, writes
the final `step.failed` and raises StepFailedError in the workflow code. The function's return
is `run.completed`; an exception escaping it is `run.failed` (siblings still executing are
cancelled first). A NonDeterminismError fails the run even if the code catches it.

**Stopping.** `request_stop("interrupt")` (a graceful worker stop) lets executing steps write
their outcome and blocks every branch at its next step; the pass then writes
`run.interrupted`. `"abandon"` does that without waiting (a stop past its deadline).
`"cancel"` (the run was cancelled) cancels everything at once and writes nothing more.

What the pass writes goes through a `RunSink`: the worker's Kafka producer, or memory in tests.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from time import perf_counter
from typing import Any, Final, Literal, NoReturn, Protocol, TypeAlias

from pydantic import JsonValue

from steplog.errors import (
    ChildRunFailedError,
    EventTooLargeError,
    NonDeterminismError,
    NonRetriableError,
    StepFailedError,
    StepInputError,
    StepOutputError,
    WorkflowError,
)
from steplog.schemas.base import ErrorInfo, new_event_id
from steplog.schemas.codec import DEFAULT_MAX_BYTES, encode
from steplog.schemas.commands import StepRecord
from steplog.schemas.events import (
    RunCompleted,
    RunCompletedPayload,
    RunEvent,
    RunFailed,
    RunFailedPayload,
    RunInterrupted,
    RunInterruptedPayload,
    RunResumed,
    StepCompleted,
    StepCompletedPayload,
    StepEvent,
    StepFailed,
    StepFailedPayload,
    StepInvoked,
    StepInvokedPayload,
    StepKind,
    StepSleeping,
    StepSleepingPayload,
    StepStarted,
    StepStartedPayload,
    StepWaiting,
    StepWaitingPayload,
)
from steplog.schemas.flows import RetryPolicy
from steplog.schemas.limits import CONTROL_CHARACTER, NAME_MAX_CHARS
from steplog.schemas.ids import (
    child_run_id,
    derived_id,
    emitted_signal_id,
    wait_registration_id,
)
from steplog.schemas.signals import Signal, WaitRegistered, resolve_match_path
from steplog.schemas.statuses import StepStatus

from .durations import Duration, Instant, duration_ms, instant
from .recorded_errors import error_message, error_stack, error_type
from .history import RunHistory

__all__ = [
    "PassOutcome",
    "PassResult",
    "RunPass",
    "RunSink",
    "StepTools",
    "TriggerEvent",
    "WorkflowContext",
    "WorkflowFunction",
    "to_json_value",
]

WorkflowEvent: TypeAlias = StepEvent | RunEvent
SignalsWrite: TypeAlias = Signal | WaitRegistered
WorkflowFunction: TypeAlias = Callable[["WorkflowContext"], Awaitable[Any]]

RETRY_CLOCK_SKEW: Final = 2.0
"""Seconds a retry may be early by the worker's clock and still run (after waiting out the
difference): the timer service that sent the resume judged it due by its own clock."""
STARTED_DELAY: Final = 0.005
"""Seconds a step's function runs before its step.started is sent on its own (see
`_execute_run`); a quicker step's start goes out with its outcome."""
_SETTLE_HOPS: Final = 12
"""Event-loop turns with nothing executing before a pass counts as parked: enough for the
branches of nested gathers to replay their memoized steps and reach a step of their own."""
_CANCEL_GRACE: Final = 10.0
_NO_INPUT: Final[Any] = object()


class RunSink(Protocol):
    """Where a pass writes. Each call enqueues at once (so a run's writes keep their order)
    and returns an awaitable that completes when the broker acknowledged the write. Raises
    EventTooLargeError, before enqueueing, for a message over the size limit."""

    async def send_event(self, event: WorkflowEvent) -> Awaitable[object]: ...

    async def send_signal(self, message: SignalsWrite) -> Awaitable[object]: ...


@dataclass(frozen=True)
class TriggerEvent:
    """`ctx.event`: the signal that started the run (`name`, `data`, its event `id`), or, for a
    run started directly (client.start, run_workflow, a retrigger), its input as `data`."""

    name: str | None
    data: JsonValue
    id: str | None = None

    def as_document(self) -> dict[str, JsonValue]:
        """The event as a JSON object: where a wait's `match` path is looked up."""
        return {"name": self.name, "data": self.data}


class PassOutcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    PARKED = "parked"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"
    ABORTED = "aborted"
    """A write failed (Kafka unreachable): nothing is decided, the command must be retried."""


@dataclass(frozen=True)
class PassResult:
    outcome: PassOutcome
    output: JsonValue = None
    error: BaseException | None = None


StopMode = Literal["interrupt", "abandon", "cancel"]


class WorkflowContext:
    """What a workflow function receives: the run's identity, its trigger event, its steps."""

    def __init__(self, run: RunPass) -> None:
        self._run = run
        self.run_id: str = run.run_id
        self.workflow: str = run.workflow
        self.app: str = run.app
        self.project: str = run.project
        self.event: TriggerEvent = run.event
        self.step: StepTools = StepTools(run)

    def __repr__(self) -> str:
        return f"WorkflowContext(workflow={self.workflow!r}, run_id={self.run_id!r})"


class StepTools:
    """`ctx.step`: the durable steps. The first argument of each is the step's id, unique in
    the run and stable across passes (it keys the saved result)."""

    def __init__(self, run: RunPass) -> None:
        self._run = run

    async def run(
        self,
        step_id: str,
        fn: Callable[..., Any],
        /,
        *,
        input: JsonValue = _NO_INPUT,
        retries: RetryPolicy | None = None,
    ) -> Any:
        """Run `fn` once and return its (JSON) result; later passes return the saved result.

        With `input=`, the input is recorded on the step and handed to fn: `fn(input)`; else
        `fn()`. An `async def` fn is awaited; a plain one runs in a thread, so parallel
        branches overlap. A failure is retried by the workflow's policy (or `retries`);
        when attempts run out, StepFailedError is raised here.
        """
        return await self._run.run_step(step_id, fn, input, retries)

    async def sleep(self, step_id: str, duration: Duration) -> None:
        """Pause the run durably for `duration` ("10s", "5m", "1h", "250ms", or ms)."""
        ms = duration_ms(duration)
        wake_at = self._run.now() + timedelta(milliseconds=ms)
        shown: JsonValue = duration if isinstance(duration, (str, int, float)) else ms
        await self._run.sleep_step(step_id, StepKind.SLEEP, wake_at, {"duration": shown})

    async def sleep_until(self, step_id: str, at: Instant) -> None:
        """Pause the run durably until `at` (an aware datetime, ISO 8601 string, epoch ms);
        a time already past returns at once."""
        wake_at = instant(at)
        await self._run.sleep_step(
            step_id, StepKind.SLEEP_UNTIL, wake_at, {"until": wake_at.isoformat()}
        )

    async def wait_for_event(
        self,
        step_id: str,
        *,
        event: str,
        timeout: Duration | None = None,
        match: str | None = None,
    ) -> JsonValue:
        """Park until a signal named `event` arrives (the signal's data is returned), or until
        `timeout` elapses (None is returned; no timeout waits forever). With `match`, e.g.
        "data.order_id", only a signal with the trigger event's value at that path counts.
        Only signals sent after the run parked count (they are not retained)."""
        timeout_ms = None if timeout is None else duration_ms(timeout, field="timeout")
        return await self._run.wait_step(step_id, event, timeout, timeout_ms, match)

    async def run_workflow(
        self, step_id: str, *, name: str, data: JsonValue = None, app: str | None = None
    ) -> JsonValue:
        """Start workflow `name` as a child run with `data` as its input, park until it ends,
        and return its output; its failure raises ChildRunFailedError here. Without `app`,
        the name is resolved in this run's app first, then in any other."""
        return await self._run.invoke_step(step_id, name, data, app)

    async def emit(
        self, step_id: str, *, name: str, data: JsonValue = None, app: str | None = None
    ) -> None:
        """Send a signal named `name` (once, however often the run is replayed): it starts
        the workflows triggered by it (only `app`'s, when given) and resumes waiting runs."""
        await self._run.emit_step(step_id, name, data, app)


class _Park(Exception):
    """Internal: the step decided to park its branch (raised and caught inside the pass)."""


class RunPass:
    """One pass of one run through its workflow function (see the module docstring)."""

    def __init__(
        self,
        *,
        fn: WorkflowFunction,
        workflow: str,
        project: str,
        app: str,
        run_id: str,
        history: RunHistory,
        event: TriggerEvent,
        sink: RunSink,
        retries: RetryPolicy,
        clock: Callable[[], datetime] | None = None,
        jitter: Callable[[], float] = random.random,
        retry_skew: float = RETRY_CLOCK_SKEW,
        started_delay: float = STARTED_DELAY,
        max_event_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.fn = fn
        self.workflow = workflow
        self.project = project
        self.app = app
        self.run_id = run_id
        self.event = event
        self.sink = sink
        self.retries = retries
        self._clock = clock or _utc_now
        self._jitter = jitter
        self._retry_skew = retry_skew
        self._started_delay = started_delay
        self.max_event_bytes = max_event_bytes
        self._history: dict[str, StepRecord] = dict(history.steps)
        self._resuming = history.interrupted
        # seq orders the run's events for the fold across passes and workers, and the history
        # records carry none: start from the clock (microseconds), above anything seen.
        self._seq = max(history.last_seq, _epoch_micros(self._clock()))
        self._visited: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._main: asyncio.Task[Any] | None = None
        self._executing = 0
        self._parked = 0
        self._held = 0  # branches blocked by a stop
        self._activity = 0
        self._settled = asyncio.Event()
        self._verifier: asyncio.Task[None] | None = None
        self._stop: StopMode | None = None
        self._stop_reason = ""
        self._ended = False
        self._fatal: NonDeterminismError | None = None
        self._aborted: BaseException | None = None
        self.context = WorkflowContext(self)

    # ------------------------------------------------------------------ the pass as a whole

    def now(self) -> datetime:
        return self._clock()

    @property
    def history(self) -> dict[str, StepRecord]:
        """Each step's record as this pass left it (its own outcomes included)."""
        return self._history

    def request_stop(self, mode: StopMode, reason: str = "worker stopped") -> None:
        """Stop the pass: see the module docstring for the modes. Idempotent; a stronger
        mode (cancel > abandon > interrupt) overrides a weaker one."""
        rank = {"interrupt": 0, "abandon": 1, "cancel": 2}
        if self._stop is not None and rank[self._stop] >= rank[mode]:
            return
        self._stop, self._stop_reason = mode, reason
        if mode == "interrupt":
            self._check_settled()
            return
        self._settled.set()

    async def execute(self) -> PassResult:
        """Run the pass to its end: the run completed, failed, parked or was stopped."""
        if self._resuming:
            try:
                await self._write_run_event(RunResumed, None)
            except _WriteFailed as failed:
                return PassResult(PassOutcome.ABORTED, error=failed.cause)
        main = asyncio.create_task(self._call_function(), name=f"workflow {self.run_id}")
        self._main = main
        settled = asyncio.create_task(self._settled.wait())
        try:
            await asyncio.wait({main, settled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            settled.cancel()
        returned = main.done() and not main.cancelled() and self._stop not in ("cancel", "abandon")
        # Cut short: a branch held at a step by the stop, or one still executing (abandoned),
        # or nothing parked at all (the function was between steps).
        cut_short = self._held > 0 or self._executing > 0 or self._parked == 0
        self._ended = True
        await self._cancel_tasks()
        return await self._finish(main if returned else None, cut_short)

    async def _call_function(self) -> Any:
        return await self.fn(self.context)

    async def _finish(self, main: asyncio.Task[Any] | None, cut_short: bool) -> PassResult:
        """Decide and write how the pass ended. `main`: the function's task if it ended."""
        try:
            if self._aborted is not None:
                return PassResult(PassOutcome.ABORTED, error=self._aborted)
            if self._stop == "cancel":
                return PassResult(PassOutcome.CANCELLED)
            if self._fatal is not None:
                await self._write_run_failed(self._fatal)
                return PassResult(PassOutcome.FAILED, error=self._fatal)
            if main is not None:
                error = main.exception()
                if error is None:
                    return await self._complete(main.result())
                await self._write_run_failed(error)
                return PassResult(PassOutcome.FAILED, error=error)
            if self._stop is not None and cut_short:
                await self._write_run_event(
                    RunInterrupted, RunInterruptedPayload(reason=self._stop_reason)
                )
                return PassResult(PassOutcome.INTERRUPTED)
            return PassResult(PassOutcome.PARKED)
        except _WriteFailed as failed:
            return PassResult(PassOutcome.ABORTED, error=failed.cause)

    async def _complete(self, value: Any) -> PassResult:
        try:
            output = to_json_value(value, f"workflow {self.workflow!r} returned")
            await self._write_run_event(RunCompleted, RunCompletedPayload(output=output))
        except (StepOutputError, EventTooLargeError) as exc:
            error = exc if isinstance(exc, StepOutputError) else StepOutputError(
                f"the output of workflow {self.workflow!r} is too large to store: {exc}"
            )
            await self._write_run_failed(error)
            return PassResult(PassOutcome.FAILED, error=error)
        return PassResult(PassOutcome.COMPLETED, output=output)

    async def _cancel_tasks(self) -> None:
        assert self._main is not None
        pending = [task for task in {self._main, *self._tasks} if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            # A step's thread cannot be cancelled: its await ends at once, the thread goes on
            # unobserved (its outcome is never written; a later pass runs the step again).
            await asyncio.wait(pending, timeout=_CANCEL_GRACE)
        if self._verifier is not None:
            self._verifier.cancel()

    # ------------------------------------------------------------- settling (parking)

    def _check_settled(self) -> None:
        """Called whenever a branch blocks or a step stops executing."""
        if self._executing or self._settled.is_set() or self._verifier is not None:
            return
        if self._parked or self._held or self._stop is not None:
            self._verifier = asyncio.get_running_loop().create_task(self._verify_settled())

    async def _verify_settled(self) -> None:
        # Other branches may be one loop turn away from a step of their own (a gather's
        # callbacks, a memoized step just returned): give them a few turns first.
        mark = self._activity
        for _ in range(_SETTLE_HOPS):
            await asyncio.sleep(0)
        self._verifier = None
        if self._executing == 0 and self._activity == mark:
            self._settled.set()
        else:
            self._check_settled()

    async def _block(self, *, parked: bool) -> NoReturn:
        """Block the calling branch until the pass ends (it is then cancelled)."""
        if parked:
            self._parked += 1
        else:
            self._held += 1
        self._activity += 1
        self._check_settled()
        await asyncio.get_running_loop().create_future()  # never resolved
        raise AssertionError("a parked branch was resumed")  # pragma: no cover

    # ------------------------------------------------------------------ entering a step

    async def _enter(self, step_id: str, kind: StepKind) -> StepRecord | None:
        """Every step call starts here: checks, then the step's record (None: new)."""
        if self._ended:
            raise asyncio.CancelledError()
        task = asyncio.current_task()
        if task is not None and task is not self._main:
            self._tasks.add(task)
        self._activity += 1
        _check_step_id(step_id)
        if self._fatal is not None:
            raise self._fatal
        if self._stop is not None:
            await self._block(parked=False)
        if step_id in self._visited:
            self._fail_fatally(
                f"step id {step_id!r} is used twice in one pass of run {self.run_id}; a step "
                "id must be unique in its run (derive it from stable data, e.g. "
                "f'charge-{order_id}')"
            )
        self._visited.add(step_id)
        record = self._history.get(step_id)
        if record is not None and record.kind is not kind:
            self._fail_fatally(
                f"step {step_id!r}: this pass asks for a {kind.value} step where the run's "
                f"history has a {record.kind.value} step {step_id!r}; the workflow's code "
                "changed under a run in flight"
            )
        return record

    async def _check_new_step(self, step_id: str, kind: StepKind) -> None:
        """About to execute a step the history lacks: in sequential code every completed
        step of the history must have been asked for by now, or the code took another path.

        Checked only in the function's own task: steps of concurrent branches complete in no
        fixed order. Sibling tasks get a few loop turns first to replay their memoized steps
        (a task made with create_task has not run yet when the main task goes on).
        """
        if asyncio.current_task() is not self._main:
            return
        unvisited = self._unvisited_completed()
        if unvisited:
            self._executing += 1  # not settled meanwhile: this branch is about to execute
            try:
                for _ in range(_SETTLE_HOPS):
                    await asyncio.sleep(0)
            finally:
                self._executing -= 1
            unvisited = self._unvisited_completed()
        if unvisited:
            shown = ", ".join(f"{key!r} ({self._history[key].kind.value})" for key in unvisited)
            self._fail_fatally(
                f"this pass asks for a new step {step_id!r} ({kind.value}) where the run's "
                f"history has completed step(s) {shown} that it never asked for: the "
                "workflow's code changed under a run in flight, or it chooses its steps from "
                "something outside them (the clock, randomness, a read not in a step)"
            )

    def _unvisited_completed(self) -> list[str]:
        return [
            key
            for key, record in self._history.items()
            if record.status is StepStatus.COMPLETED and key not in self._visited
        ]

    def _fail_fatally(self, message: str) -> None:
        self._fatal = NonDeterminismError(message)
        raise self._fatal

    # ------------------------------------------------------------------------- step.run

    async def run_step(
        self,
        step_id: str,
        fn: Callable[..., Any],
        input: Any,
        retries: RetryPolicy | None,
    ) -> Any:
        if not callable(fn):
            raise WorkflowError(
                f"step {step_id!r}: expected a function to run, got {type(fn).__name__}"
            )
        record = await self._enter(step_id, StepKind.RUN)
        attempt, due_in = 1, 0.0
        if record is not None:
            status = record.status
            if status is StepStatus.COMPLETED or status is StepStatus.SKIPPED:
                return record.output
            if status is StepStatus.FAILED:
                raise _failed_error(step_id, record)
            if status is StepStatus.RETRYING:
                attempt = record.attempt + 1
                if record.retry_at is not None:
                    due_in = (record.retry_at - self.now()).total_seconds()
                if due_in > self._retry_skew:
                    await self._block(parked=True)
            else:
                attempt = record.attempt  # running or interrupted: that attempt again
        await self._check_new_step(step_id, StepKind.RUN)
        recorded_input = (
            None if input is _NO_INPUT else _input_value(step_id, input, "input")
        )
        self._executing += 1
        try:
            if due_in > 0:
                await asyncio.sleep(due_in)
            outcome = await self._execute_run(step_id, fn, input, recorded_input, attempt, retries)
        except _Park:
            outcome = _PARKED
        finally:
            self._executing -= 1
            self._check_settled()
        if outcome is _PARKED:
            await self._block(parked=True)
        return outcome

    async def _execute_run(
        self,
        step_id: str,
        fn: Callable[..., Any],
        input: Any,
        recorded_input: JsonValue,
        attempt: int,
        retries: RetryPolicy | None,
    ) -> Any:
        started = self._step_event(
            StepStarted, step_id, attempt,
            StepStartedPayload(kind=StepKind.RUN, input=recorded_input),
        )
        if recorded_input is not None:
            try:
                encode(started, max_bytes=self.max_event_bytes)
            except EventTooLargeError as exc:
                raise StepInputError(
                    f"step {step_id!r}: its input is too large to record: {exc}"
                ) from None
        began = perf_counter()
        # step.started is enqueued once the function has run for STARTED_DELAY, or with the
        # outcome when it returns sooner: then both go in one produce request (one round
        # trip per step instead of two). A worker dying meanwhile leaves no trace of the
        # attempt, which the next pass runs again all the same; a longer step shows running.
        call = asyncio.ensure_future(_call(fn, input))
        started_ack: Awaitable[object] | None = None
        try:
            if self._started_delay > 0:
                await asyncio.wait((call,), timeout=self._started_delay)
            started_ack = await self._enqueue(started)
            result = await call
        except asyncio.CancelledError:
            call.cancel()
            raise
        except Exception as exc:
            if started_ack is None:
                started_ack = await self._enqueue(started)
            return await self._step_raised(step_id, attempt, exc, began, retries, started_ack)
        elapsed_ms = (perf_counter() - began) * 1000
        try:
            output = to_json_value(result, f"step {step_id!r} returned")
            completed = self._step_event(
                StepCompleted, step_id, attempt,
                StepCompletedPayload(output=output, duration_ms=elapsed_ms),
            )
            completed_ack = await self._enqueue(completed)
        except (StepOutputError, EventTooLargeError) as exc:
            error = exc if isinstance(exc, StepOutputError) else StepOutputError(
                f"step {step_id!r} returned a value too large to store: {exc}"
            )
            return await self._step_raised(step_id, attempt, error, began, retries, started_ack)
        await self._acknowledged(completed_ack, started_ack)
        self._history[step_id] = StepRecord(
            kind=StepKind.RUN, status=StepStatus.COMPLETED, attempt=attempt, output=output
        )
        return output

    async def _step_raised(
        self,
        step_id: str,
        attempt: int,
        exc: Exception,
        began: float,
        retries: RetryPolicy | None,
        started_ack: Awaitable[object],
    ) -> Any:
        """Write the failed attempt; park for a retry, or raise StepFailedError for good."""
        policy = retries or self.retries
        non_retriable = isinstance(exc, (NonRetriableError, StepOutputError))
        final = non_retriable or policy.is_last_attempt(attempt)
        retry_at = None
        if not final:
            delay = policy.delay_ms(attempt, min(max(self._jitter(), 0.0), 1.0))
            retry_at = self.now() + timedelta(milliseconds=delay)
        info = error_info(exc)
        failed = self._step_event(
            StepFailed, step_id, attempt,
            StepFailedPayload(
                error=info,
                duration_ms=(perf_counter() - began) * 1000,
                retry_at=retry_at,
                non_retriable=non_retriable,
            ),
        )
        await self._acknowledged(await self._enqueue(failed), started_ack)
        self._history[step_id] = StepRecord(
            kind=StepKind.RUN,
            status=StepStatus.FAILED if final else StepStatus.RETRYING,
            attempt=attempt,
            error=info,
            retry_at=retry_at,
        )
        if not final:
            raise _Park()
        raise StepFailedError(step_id, info.type, info.message, attempt=attempt) from exc

    # ----------------------------------------------------------------------- sleeping

    async def sleep_step(
        self, step_id: str, kind: StepKind, wake_at: datetime, input: dict[str, JsonValue]
    ) -> None:
        record = await self._enter(step_id, kind)
        if record is not None:
            if record.status in (StepStatus.COMPLETED, StepStatus.SKIPPED):
                return None
            if record.status is StepStatus.FAILED:
                raise _failed_error(step_id, record)
            if record.wake_at is None:
                # Its step.started is in the log but not its step.sleeping (the worker died
                # between the two): write it, under the id the first write would have had.
                await self._writing(self._sleeping(step_id, kind, record.attempt, wake_at))
            await self._block(parked=True)
        await self._check_new_step(step_id, kind)
        started = self._step_event(
            StepStarted, step_id, 1, StepStartedPayload(kind=kind, input=input)
        )
        if wake_at <= self.now():
            completed = self._step_event(StepCompleted, step_id, 1, StepCompletedPayload())

            async def at_once() -> None:
                started_ack = await self._enqueue(started)
                await self._acknowledged(await self._enqueue(completed), started_ack)

            await self._writing(at_once())
            self._history[step_id] = StepRecord(
                kind=kind, status=StepStatus.COMPLETED, attempt=1, wake_at=wake_at
            )
            return None

        async def park() -> None:
            started_ack = await self._enqueue(started)
            await self._sleeping(step_id, kind, 1, wake_at, started_ack)

        await self._writing(park())
        self._history[step_id] = StepRecord(
            kind=kind, status=StepStatus.RUNNING, attempt=1, wake_at=wake_at
        )
        await self._block(parked=True)

    async def _sleeping(
        self,
        step_id: str,
        kind: StepKind,
        attempt: int,
        wake_at: datetime,
        started_ack: Awaitable[object] | None = None,
    ) -> None:
        sleeping = self._step_event(
            StepSleeping, step_id, attempt, StepSleepingPayload(wake_at=wake_at, kind=kind),
            event_id=derived_id("step.sleeping", self.run_id, step_id, str(attempt)),
        )
        await self._acknowledged(await self._enqueue(sleeping), started_ack)

    # ------------------------------------------------------------------- waiting for events

    async def wait_step(
        self,
        step_id: str,
        event: str,
        timeout: Duration | None,
        timeout_ms: int | None,
        match: str | None,
    ) -> JsonValue:
        match_value: JsonValue = None
        if match is not None:
            found, match_value = resolve_match_path(self.event.as_document(), match)
            if not found:
                raise WorkflowError(
                    f"step {step_id!r}: match path {match!r} is not in the run's trigger "
                    f"event ({_shown(self.event.as_document())}); a wait matches signals "
                    "whose value at the path equals the trigger event's"
                )
        record = await self._enter(step_id, StepKind.WAIT_FOR_EVENT)
        if record is not None:
            if record.status in (StepStatus.COMPLETED, StepStatus.SKIPPED):
                return record.output
            if record.status is StepStatus.FAILED:
                raise _failed_error(step_id, record)
        else:
            await self._check_new_step(step_id, StepKind.WAIT_FOR_EVENT)
        attempt = record.attempt if record is not None else 1
        timeout_at = None
        if timeout_ms is not None:
            timeout_at = self.now() + timedelta(milliseconds=timeout_ms)
        registration = WaitRegistered(
            event_id=wait_registration_id(self.run_id, step_id, attempt),
            project=self.project,
            name=event,
            app=self.app,
            flow=self.workflow,
            run_id=self.run_id,
            step_key=step_id,
            attempt=attempt,
            match=match,
            match_value=match_value,
            timeout_at=timeout_at,
            ts=self.now(),
        )
        # Built in the order they are written: the fold orders a step's events by seq.
        shown_timeout: JsonValue = (
            timeout if isinstance(timeout, (str, int, float)) or timeout is None else timeout_ms
        )
        started = self._step_event(
            StepStarted, step_id, attempt,
            StepStartedPayload(
                kind=StepKind.WAIT_FOR_EVENT,
                input={"event": event, "timeout": shown_timeout, "match": match},
            ),
        )
        waiting = self._step_event(
            StepWaiting, step_id, attempt,
            StepWaitingPayload(
                event=event, timeout_at=timeout_at, match=match, match_value=match_value
            ),
            event_id=derived_id("step.waiting", self.run_id, step_id, str(attempt)),
        )

        async def register() -> None:
            # The registration first, acknowledged: from then on a signal of the name lands
            # behind it in the name's partition and cannot be missed. A run parked again
            # (record running) writes both again under their first ids: duplicates, dropped.
            await (await self.sink.send_signal(registration))
            started_ack = await self._enqueue(started) if record is None else None
            await self._acknowledged(await self._enqueue(waiting), started_ack)

        await self._writing(register())
        if record is None:
            self._history[step_id] = StepRecord(
                kind=StepKind.WAIT_FOR_EVENT, status=StepStatus.RUNNING, attempt=1
            )
        await self._block(parked=True)

    # ---------------------------------------------------------------------- child runs

    async def invoke_step(
        self, step_id: str, name: str, data: JsonValue, app: str | None
    ) -> JsonValue:
        child_data = _input_value(step_id, data, "data")
        record = await self._enter(step_id, StepKind.RUN_WORKFLOW)
        child = child_run_id(self.run_id, step_id)
        if record is not None:
            if record.status in (StepStatus.COMPLETED, StepStatus.SKIPPED):
                return record.output
            if record.status is StepStatus.FAILED:
                error = record.error or ErrorInfo(type="Error", message="the child run failed")
                raise ChildRunFailedError(
                    step_id, record.child_run_id or child, error.type, error.message
                )
            if record.child_run_id is None:
                await self._writing(self._invoked(step_id, record.attempt, child, name, data, app))
            await self._block(parked=True)
        await self._check_new_step(step_id, StepKind.RUN_WORKFLOW)
        started = self._step_event(
            StepStarted, step_id, 1,
            StepStartedPayload(
                kind=StepKind.RUN_WORKFLOW, input={"name": name, "app": app, "data": child_data}
            ),
        )

        async def invoke() -> None:
            started_ack = await self._enqueue(started)
            await self._invoked(step_id, 1, child, name, child_data, app, started_ack)

        await self._writing(invoke())
        self._history[step_id] = StepRecord(
            kind=StepKind.RUN_WORKFLOW, status=StepStatus.RUNNING, attempt=1, child_run_id=child
        )
        await self._block(parked=True)

    async def _invoked(
        self,
        step_id: str,
        attempt: int,
        child: str,
        name: str,
        data: JsonValue,
        app: str | None,
        started_ack: Awaitable[object] | None = None,
    ) -> None:
        invoked = self._step_event(
            StepInvoked, step_id, attempt,
            StepInvokedPayload(child_run_id=child, workflow=name, app=app, data=data),
            event_id=derived_id("step.invoked", self.run_id, step_id, str(attempt)),
        )
        await self._acknowledged(await self._enqueue(invoked), started_ack)

    # ----------------------------------------------------------------------------- emit

    async def emit_step(
        self, step_id: str, name: str, data: JsonValue, app: str | None
    ) -> None:
        signal_data = _input_value(step_id, data, "data")
        record = await self._enter(step_id, StepKind.EMIT)
        if record is not None and record.status in (StepStatus.COMPLETED, StepStatus.SKIPPED):
            return None
        if record is None:
            await self._check_new_step(step_id, StepKind.EMIT)
        attempt = record.attempt if record is not None else 1
        signal = Signal(
            event_id=emitted_signal_id(self.run_id, step_id),
            project=self.project,
            name=name,
            data=signal_data,
            app=app,
            ts=self.now(),
            source_run_id=self.run_id,
            source_step_key=step_id,
        )
        started = self._step_event(
            StepStarted, step_id, attempt,
            StepStartedPayload(
                kind=StepKind.EMIT, input={"name": name, "app": app, "data": signal_data}
            ),
        )

        async def send() -> None:
            started_ack = await self._enqueue(started)
            await (await self.sink.send_signal(signal))
            completed = self._step_event(StepCompleted, step_id, attempt, StepCompletedPayload())
            await self._acknowledged(await self._enqueue(completed), started_ack)

        await self._writing(send())
        self._history[step_id] = StepRecord(
            kind=StepKind.EMIT, status=StepStatus.COMPLETED, attempt=attempt
        )
        return None

    # --------------------------------------------------------------------------- writing

    async def _writing(self, writes: Awaitable[None]) -> None:
        """Run a step's writes counted as executing (the pass cannot settle meanwhile)."""
        self._executing += 1
        try:
            await writes
        finally:
            self._executing -= 1
            self._check_settled()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _step_event(
        self,
        cls: type[Any],
        step_id: str,
        attempt: int,
        payload: Any,
        *,
        event_id: str | None = None,
    ) -> Any:
        return cls(
            event_id=event_id or new_event_id(),
            project=self.project,
            flow=self.workflow,
            run_id=self.run_id,
            step_key=step_id,
            attempt=attempt,
            ts=self.now(),
            seq=self._next_seq(),
            payload=payload,
        )

    async def _enqueue(self, event: WorkflowEvent) -> Awaitable[object]:
        """Hand one event to the sink (in order); the returned awaitable is its ack."""
        if self._ended:
            raise asyncio.CancelledError()
        try:
            return await self.sink.send_event(event)
        except EventTooLargeError:
            raise
        except Exception as exc:
            raise self._abort(exc) from exc

    async def _acknowledged(self, *acks: Awaitable[object] | None) -> None:
        for ack in acks:
            if ack is None:
                continue
            try:
                await ack
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise self._abort(exc) from exc

    def _abort(self, exc: BaseException) -> BaseException:
        """A write failed: nothing can be checkpointed, so the whole pass stops undecided."""
        if self._aborted is None:
            self._aborted = exc
        self._settled.set()
        return asyncio.CancelledError()

    async def _write_run_event(self, cls: type[Any], payload: Any) -> None:
        kwargs: dict[str, Any] = {} if payload is None else {"payload": payload}
        event = cls(
            event_id=new_event_id(),
            project=self.project,
            flow=self.workflow,
            run_id=self.run_id,
            ts=self.now(),
            seq=self._next_seq(),
            **kwargs,
        )
        try:
            await (await self.sink.send_event(event))
        except EventTooLargeError:
            raise  # the event's fault, not the broker's: the caller decides
        except Exception as exc:
            raise _WriteFailed(exc) from exc

    async def _write_run_failed(self, error: BaseException) -> None:
        await self._write_run_event(RunFailed, RunFailedPayload(error=error_info(error)))


class _WriteFailed(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


_PARKED: Final[Any] = object()


# ------------------------------------------------------------------------------ helpers


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _epoch_micros(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def _check_step_id(step_id: object) -> None:
    # A step key on the wire (schemas.limits.Name); U+001F also separates ids in derived keys.
    if (not isinstance(step_id, str) or not 1 <= len(step_id) <= NAME_MAX_CHARS
            or CONTROL_CHARACTER.search(step_id)):
        raise WorkflowError(
            f"step id {step_id!r}: expected a string of 1 to {NAME_MAX_CHARS} characters "
            "without control characters"
        )


async def _call(fn: Callable[..., Any], input: Any) -> Any:
    args = () if input is _NO_INPUT else (input,)
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)
    ):
        return await fn(*args)
    result = await asyncio.to_thread(fn, *args)
    if inspect.isawaitable(result):  # a plain function returning a coroutine
        result = await result
    return result


def _failed_error(step_id: str, record: StepRecord) -> StepFailedError:
    error = record.error or ErrorInfo(type="Error", message="")
    return StepFailedError(step_id, error.type, error.message, attempt=record.attempt)


def _input_value(step_id: str, value: Any, what: str) -> JsonValue:
    try:
        return to_json_value(value, f"the {what} of step {step_id!r}")
    except StepOutputError as exc:
        raise StepInputError(str(exc)) from None


def to_json_value(value: Any, what: str) -> JsonValue:
    """`value` as JSON (tuples become lists), or StepOutputError naming the first part that
    is not JSON (where it is and its type). What is returned is what a replay will see."""
    problem: list[str] = []

    def convert(item: Any, path: str) -> JsonValue:
        if item is None or isinstance(item, (bool, str, int)):
            return item
        if isinstance(item, float):
            if math.isfinite(item):
                return item
            problem.append(f"{path} is {item!r}, which JSON cannot represent")
            raise _NotJson()
        if isinstance(item, (list, tuple)):
            return [convert(element, f"{path}[{index}]") for index, element in enumerate(item)]
        if isinstance(item, dict):
            converted: dict[str, JsonValue] = {}
            for key, element in item.items():
                if not isinstance(key, str):
                    problem.append(
                        f"{path} has a key {key!r} of type {type(key).__name__}; JSON object "
                        "keys are strings"
                    )
                    raise _NotJson()
                converted[key] = convert(element, f"{path}[{key!r}]")
            return converted
        problem.append(f"{path} is a {type(item).__module__}.{type(item).__qualname__}"
                       if type(item).__module__ != "builtins"
                       else f"{path} is a {type(item).__qualname__}")
        raise _NotJson()

    try:
        return convert(value, "value")
    except _NotJson:
        pass
    except RecursionError:
        problem.append("value is nested too deeply")
    raise StepOutputError(
        f"{what} a value that is not JSON-serializable: {problem[-1]}; return JSON "
        "(dict with str keys, list, str, int, float, bool, None)"
    )


class _NotJson(Exception):
    pass


def error_info(exc: BaseException) -> ErrorInfo:
    """The error of a failed step or run as it is written: type, message, stack."""
    return ErrorInfo(type=error_type(exc), message=error_message(exc),
                     stack=error_stack(exc, exc.__traceback__))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."

