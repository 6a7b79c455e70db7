"""`ctx.step.run`: execute a step's function once, checkpoint its outcome, retry its failures.

    history record          step.run
    completed (skipped)     return its output
    failed                  raise StepFailedError
    retrying                park until retry_at, then attempt + 1
    running, interrupted    execute that attempt
    none                    execute attempt 1

A step's exception is written as `step.failed` with `retry_at` while the retry policy has
attempts left (the branch parks); the last attempt, or a NonRetriableError, writes the final
`step.failed` and raises StepFailedError in the workflow code.

Secrets (steplog.redaction) are redacted from the input and output written to the log; this
pass goes on with the values as they were. A later pass of the run (after a sleep, a wait, a
retry, a worker restart) replays the output as the log has it, secrets redacted, so a step
that returns a secret is warned about: return a reference to it (a vault path), or fetch it
inside the step that uses it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final

from pydantic import JsonValue

from steplog.errors import (
    EventTooLargeError,
    NonRetriableError,
    StepFailedError,
    StepInputError,
    StepOutputError,
    WorkflowError,
)
from steplog.schemas.codec import encode
from steplog.schemas.commands import StepRecord
from steplog.schemas.events import (
    StepCompleted,
    StepCompletedPayload,
    StepFailed,
    StepFailedPayload,
    StepKind,
    StepStarted,
    StepStartedPayload,
)
from steplog.schemas.flows import RetryPolicy
from steplog.schemas.statuses import StepStatus

from .json_values import input_value, to_json_value
from .recorded_errors import error_info
from .run_journal import failed_error

if TYPE_CHECKING:
    from .run_pass import RunPass

__all__ = ["NO_INPUT", "RETRY_CLOCK_SKEW", "STARTED_DELAY", "run_step"]

log = logging.getLogger("steplog.worker")

RETRY_CLOCK_SKEW: Final = 2.0
"""Seconds a retry may be early by the worker's clock and still run (after waiting out the
difference): the timer service that sent the resume judged it due by its own clock."""
STARTED_DELAY: Final = 0.005
"""Seconds a step's function runs before its step.started is sent on its own (see
`_execute`); a quicker step's start goes out with its outcome."""
NO_INPUT: Final[Any] = object()
"""`input=` not given: the function is called without arguments and no input is recorded."""


class _Park(Exception):
    """The attempt failed and will be retried: its branch parks."""


_PARKED: Final[Any] = object()


async def run_step(
    run: RunPass,
    step_id: str,
    fn: Callable[..., Any],
    input: Any,
    retries: RetryPolicy | None,
) -> Any:
    if not callable(fn):
        raise WorkflowError(
            f"step {step_id!r}: expected a function to run, got {type(fn).__name__}"
        )
    record = await run.enter(step_id, StepKind.RUN)
    attempt, due_in = 1, 0.0
    if record is not None:
        status = record.status
        if status is StepStatus.COMPLETED or status is StepStatus.SKIPPED:
            return record.output
        if status is StepStatus.FAILED:
            raise failed_error(step_id, record)
        if status is StepStatus.RETRYING:
            attempt = record.attempt + 1
            if record.retry_at is not None:
                due_in = (record.retry_at - run.now()).total_seconds()
            if due_in > run.retry_skew:
                await run.branches.block(parked=True)
        else:
            attempt = record.attempt  # running or interrupted: that attempt again
    await run.check_new_step(step_id, StepKind.RUN)
    recorded_input = None if input is NO_INPUT else input_value(step_id, input, "input")
    with run.branches.executing_step():
        try:
            if due_in > 0:
                await asyncio.sleep(due_in)
            outcome = await _execute(run, step_id, fn, input, recorded_input, attempt, retries)
        except _Park:
            outcome = _PARKED
    if outcome is _PARKED:
        await run.branches.block(parked=True)
    return outcome


async def _execute(
    run: RunPass,
    step_id: str,
    fn: Callable[..., Any],
    input: Any,
    recorded_input: JsonValue,
    attempt: int,
    retries: RetryPolicy | None,
) -> Any:
    writes = run.writes
    started = writes.step_event(
        StepStarted, step_id, attempt,
        StepStartedPayload(kind=StepKind.RUN, input=run.secrets.redact_json(recorded_input)),
    )
    if recorded_input is not None:
        try:
            encode(started, max_bytes=run.max_event_bytes)
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
        if run.started_delay > 0:
            await asyncio.wait((call,), timeout=run.started_delay)
        started_ack = await writes.enqueue(started)
        result = await call
    except asyncio.CancelledError:
        call.cancel()
        raise
    except Exception as exc:
        if started_ack is None:
            started_ack = await writes.enqueue(started)
        return await _raised(run, step_id, attempt, exc, began, retries, started_ack)
    elapsed_ms = (perf_counter() - began) * 1000
    try:
        output = to_json_value(result, f"step {step_id!r} returned")
        recorded = run.secrets.redact_json(output)
        if recorded is not output:
            log.warning(
                "step %r of run %s returned secrets, written to the log as [REDACTED]: a later "
                "pass of the run will replay them as such; return a reference to a secret, not "
                "the secret", step_id, run.run_id,
            )
        completed = writes.step_event(
            StepCompleted, step_id, attempt,
            StepCompletedPayload(output=recorded, duration_ms=elapsed_ms),
        )
        completed_ack = await writes.enqueue(completed)
    except (StepOutputError, EventTooLargeError) as exc:
        error = exc if isinstance(exc, StepOutputError) else StepOutputError(
            f"step {step_id!r} returned a value too large to store: {exc}"
        )
        return await _raised(run, step_id, attempt, error, began, retries, started_ack)
    await writes.acknowledged(completed_ack, started_ack)
    run.journal.steps[step_id] = StepRecord(
        kind=StepKind.RUN, status=StepStatus.COMPLETED, attempt=attempt, output=output
    )
    return output


async def _raised(
    run: RunPass,
    step_id: str,
    attempt: int,
    exc: Exception,
    began: float,
    retries: RetryPolicy | None,
    started_ack: Awaitable[object],
) -> Any:
    """Write the failed attempt; park for a retry, or raise StepFailedError for good."""
    policy = retries or run.retries
    non_retriable = isinstance(exc, (NonRetriableError, StepOutputError))
    final = non_retriable or policy.is_last_attempt(attempt)
    retry_at = None
    if not final:
        delay = policy.delay_ms(attempt, min(max(run.jitter(), 0.0), 1.0))
        retry_at = run.now() + timedelta(milliseconds=delay)
    info = error_info(exc)
    failed = run.writes.step_event(
        StepFailed, step_id, attempt,
        StepFailedPayload(
            error=info,
            duration_ms=(perf_counter() - began) * 1000,
            retry_at=retry_at,
            non_retriable=non_retriable,
        ),
    )
    await run.writes.acknowledged(await run.writes.enqueue(failed), started_ack)
    run.journal.steps[step_id] = StepRecord(
        kind=StepKind.RUN,
        status=StepStatus.FAILED if final else StepStatus.RETRYING,
        attempt=attempt,
        error=info,
        retry_at=retry_at,
    )
    if not final:
        raise _Park()
    raise StepFailedError(step_id, info.type, info.message, attempt=attempt) from exc


async def _call(fn: Callable[..., Any], input: Any) -> Any:
    args = () if input is NO_INPUT else (input,)
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)
    ):
        return await fn(*args)
    result = await asyncio.to_thread(fn, *args)
    if inspect.isawaitable(result):  # a plain function returning a coroutine
        result = await result
    return result
