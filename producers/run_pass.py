"""One pass of a run through its workflow function (`ctx.step.*` is producers.context).

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

The pass is split by job: `pass_branches` (the branches and when the pass settles),
`run_journal` (the steps' records and the determinism checks), `pass_writes` (the events it
writes and a failed write), `step_run` (step.run and its retries), `parking_steps` (sleep,
wait_for_event, run_workflow, emit); this module is the pass as a whole.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import JsonValue

from steplog.errors import EventTooLargeError, StepOutputError
from steplog.redaction import BUILT_IN_RULES, SecretRules
from steplog.schemas.codec import DEFAULT_MAX_BYTES
from steplog.schemas.commands import StepRecord
from steplog.schemas.events import (
    RunCompleted,
    RunCompletedPayload,
    RunInterrupted,
    RunInterruptedPayload,
    RunResumed,
    StepKind,
)
from steplog.schemas.flows import RetryPolicy

from .context import TriggerEvent, WorkflowContext, WorkflowFunction
from .history import RunHistory
from .json_values import to_json_value
from .pass_branches import PassBranches, StopMode
from .pass_writes import PassWrites, RunSink, WriteFailed
from .run_journal import RunJournal, check_step_id
from .step_run import RETRY_CLOCK_SKEW, STARTED_DELAY

__all__ = ["PassOutcome", "PassResult", "RunPass"]


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
        secrets: SecretRules = BUILT_IN_RULES,
        runner: str | None = None,
    ) -> None:
        self.fn = fn
        self.runner = runner
        """The runner name of the worker executing the pass (`ctx.runner`)."""
        self.workflow = workflow
        self.project = project
        self.app = app
        self.run_id = run_id
        self.event = event
        self.sink = sink
        self.retries = retries
        self._clock = clock or _utc_now
        self.jitter = jitter
        self.retry_skew = retry_skew
        self.started_delay = started_delay
        self.max_event_bytes = max_event_bytes
        self.secrets = secrets
        """What is redacted from step inputs and outputs before they are written."""
        self._resuming = history.interrupted
        self.branches = PassBranches()
        self.journal = RunJournal(history, run_id)
        self.writes = PassWrites(
            sink=sink, branches=self.branches, project=project, workflow=workflow,
            run_id=run_id, clock=self._clock, last_seq=history.last_seq,
        )
        self.context = WorkflowContext(self)

    def now(self) -> datetime:
        return self._clock()

    @property
    def history(self) -> dict[str, StepRecord]:
        """Each step's record as this pass left it (its own outcomes included)."""
        return self.journal.steps

    def request_stop(self, mode: StopMode, reason: str = "worker stopped") -> None:
        """Stop the pass: see the module docstring for the modes. Idempotent; a stronger
        mode (cancel > abandon > interrupt) overrides a weaker one."""
        self.branches.request_stop(mode, reason)

    # ------------------------------------------------------------------ the pass as a whole

    async def execute(self) -> PassResult:
        """Run the pass to its end: the run completed, failed, parked or was stopped."""
        branches = self.branches
        if self._resuming:
            try:
                await self.writes.run_event(RunResumed, None)
            except WriteFailed as failed:
                return PassResult(PassOutcome.ABORTED, error=failed.cause)
        main = asyncio.create_task(self._call_function(), name=f"workflow {self.run_id}")
        branches.main = main
        await branches.until_settled_or(main)
        stop = branches.stop
        returned = main.done() and not main.cancelled() and stop not in ("cancel", "abandon")
        # Cut short: a branch held at a step by the stop, or one still executing (abandoned),
        # or nothing parked at all (the function was between steps).
        cut_short = branches.held > 0 or branches.executing > 0 or branches.parked == 0
        branches.ended = True
        await branches.cancel_all()
        if main.done() and not main.cancelled():
            # Retrieved here: the paths of _finish that do not use it (a fatal error of the
            # journal, a cancel) would leave asyncio to log it as never retrieved.
            main.exception()
        return await self._finish(main if returned else None, cut_short)

    async def _call_function(self) -> Any:
        return await self.fn(self.context)

    async def _finish(self, main: asyncio.Task[Any] | None, cut_short: bool) -> PassResult:
        """Decide and write how the pass ended. `main`: the function's task if it ended."""
        writes, stop = self.writes, self.branches.stop
        try:
            if writes.aborted is not None:
                return PassResult(PassOutcome.ABORTED, error=writes.aborted)
            if stop == "cancel":
                return PassResult(PassOutcome.CANCELLED)
            if self.journal.fatal is not None:
                await writes.run_failed(self.journal.fatal)
                return PassResult(PassOutcome.FAILED, error=self.journal.fatal)
            if main is not None:
                error = main.exception()
                if error is None:
                    return await self._complete(main.result())
                await writes.run_failed(error)
                return PassResult(PassOutcome.FAILED, error=error)
            if stop is not None and cut_short:
                await writes.run_event(
                    RunInterrupted, RunInterruptedPayload(reason=self.branches.stop_reason)
                )
                return PassResult(PassOutcome.INTERRUPTED)
            await writes.write_queued()  # a patch marker decided after the last write
            return PassResult(PassOutcome.PARKED)
        except WriteFailed as failed:
            return PassResult(PassOutcome.ABORTED, error=failed.cause)

    async def _complete(self, value: Any) -> PassResult:
        try:
            output = to_json_value(value, f"workflow {self.workflow!r} returned")
            await self.writes.run_event(RunCompleted, RunCompletedPayload(output=output))
        except (StepOutputError, EventTooLargeError) as exc:
            error = exc if isinstance(exc, StepOutputError) else StepOutputError(
                f"the output of workflow {self.workflow!r} is too large to store: {exc}"
            )
            await self.writes.run_failed(error)
            return PassResult(PassOutcome.FAILED, error=error)
        return PassResult(PassOutcome.COMPLETED, output=output)

    # ------------------------------------------------------------------ entering a step

    async def enter(self, step_id: str, kind: StepKind) -> StepRecord | None:
        """Every step call starts here: checks, then the step's record (None: new)."""
        if self.branches.ended:
            raise asyncio.CancelledError()
        self.branches.join()
        check_step_id(step_id)
        if self.journal.fatal is not None:
            raise self.journal.fatal
        if self.branches.stop is not None:
            await self.branches.block(parked=False)
        return self.journal.visit(step_id, kind)

    async def check_new_step(self, step_id: str, kind: StepKind) -> None:
        """About to execute a step the history lacks: in sequential code every completed
        step of the history must have been asked for by now, or the code took another path.

        Checked only in the function's own task: steps of concurrent branches complete in no
        fixed order. Sibling tasks get a few loop turns first to replay their memoized steps
        (a task made with create_task has not run yet when the main task goes on).
        """
        if not self.branches.in_main():
            return
        unvisited = self.journal.unvisited_completed()
        if unvisited:
            await self.branches.give_turns()
            unvisited = self.journal.unvisited_completed()
        if unvisited:
            self.journal.fail_new_step(step_id, kind, unvisited)


def _utc_now() -> datetime:
    return datetime.now(UTC)
