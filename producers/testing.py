"""Testing workflows in-process, without Kafka or ClickHouse: `WorkflowTest`.

    from steplog.testing import WorkflowTest   # the public face (steplog/testing.py)

    def test_an_approved_order_is_charged():
        t = WorkflowTest(app)
        t.mock_step("charge", returns={"charge_id": "ch_1"})
        t.send_event("order.approved", {"order_id": 7})
        run = t.run("order.process", {"order_id": 7})
        assert run.result() == {"charge": {"charge_id": "ch_1"}}
        assert run.steps["settle"].status == "completed"     # the 1h sleep, skipped

Each pass of a run is the worker's own (producers.run_pass: the same context, journal, step
kinds and determinism checks), writing to a `MemoryRunLog` instead of Kafka, on a clock the
test owns (`t.now`). Between passes the test plays the processors, writing what they would:

- a sleep: the clock jumps to its wake time and the step completes;
- a retry: the clock jumps to its `retry_at`, and the next pass makes the next attempt;
- a wait_for_event: an event sent with `t.send_event` that the wait matches (its `match` and
  `if_`: the signals agent's own rule, steplog.waits) resolves it, as if sent while the run waited; with none,
  the clock jumps to its timeout and the wait returns None; a wait without a timeout and no
  event leaves the run `running` (`waiting_on` names the step);
- a run_workflow: the child workflow (the same app's, by name) runs to its end on the same
  clock and its output, or its failure, ends the step;
- a step mocked with `t.mock_step(id, returns=..., raises=...)`: a `run` step calls the mock
  instead of its function (its retries apply); a wait or a child step resolves with its value
  at once (or fails with its error).

What is due first happens first: events and children at once, then the earliest time.
`t.resume(run)` goes on with a run another test left (say, under the code before a patch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from pydantic import JsonValue

from steplog.errors import RunFailedError, WorkflowError, WorkflowNotFoundError
from steplog.schemas.base import ErrorInfo, TriggerInfo, new_event_id
from steplog.schemas.events import (
    RunCompleted,
    RunFailed,
    RunStarted,
    RunStartedPayload,
    StepCompleted,
    StepCompletedPayload,
    StepFailed,
    StepFailedPayload,
    StepInvoked,
    StepKind,
)
from steplog.schemas.flows import RetryPolicy
from steplog.schemas.ids import derived_id
from steplog.schemas.signals import Signal, WaitRegistered
from steplog.schemas.statuses import RunStatus, StepStatus
from steplog.schemas.commands import StepRecord
from steplog.waits import signal_resolves

from .context import StepTools, TriggerEvent
from .history import RunHistory
from .memory_run_log import MemoryRunLog
from .pass_writes import WorkflowEvent
from .recorded_errors import error_info
from .run_pass import PassOutcome, PassResult, RunPass
from .step_run import NO_INPUT
from .workflow import Workflow

__all__ = ["StepMock", "TestedApp", "TestedRun", "WorkflowTest"]

MAX_PASSES: Final = 1000
"""Passes of one run before a test gives up on it (a workflow that never settles)."""


class TestedApp(Protocol):
    """What a test needs of an app (`steplog.App` is one): its names and workflows."""

    name: str
    project: str

    @property
    def workflows(self) -> Mapping[str, Workflow]: ...


@dataclass(frozen=True)
class StepMock:
    """What a mocked step returns, or raises."""

    returns: JsonValue = None
    raises: BaseException | None = None

    def __call__(self, *args: object) -> JsonValue:
        if self.raises is not None:
            raise self.raises
        return self.returns


@dataclass
class TestedRun:
    """A run as the test left it: ended, or waiting for something the test did not send."""

    __test__ = False  # not a pytest test class, whatever module imports it

    run_id: str
    workflow: str
    status: RunStatus
    output: JsonValue
    error: BaseException | None
    """What failed the run, as its workflow raised it (StepFailedError, ...); for a run that
    failed before this test resumed it, a RunFailedError."""
    steps: dict[str, StepRecord]
    """Each step's record by step key: status, attempt, output, error (as the fold has it)."""
    events: list[WorkflowEvent]
    """Everything written about the run, in order (its passes' and the processors' part)."""
    emitted: list[Signal]
    children: dict[str, TestedRun]
    """The child runs by the key of the step that started them."""
    waiting_on: list[str]
    passes: int
    now: datetime
    """The test's clock when it left the run."""

    @property
    def step_keys(self) -> list[str]:
        """The steps in the order they were first written."""
        keys = [event.step_key for event in self.events if hasattr(event, "step_key")]
        return list(dict.fromkeys(keys))

    def result(self) -> JsonValue:
        """The run's output; what failed it, raised; AssertionError if it has not ended."""
        if self.status is RunStatus.COMPLETED:
            return self.output
        if self.error is not None:
            raise self.error
        raise AssertionError(
            f"run {self.run_id} of {self.workflow!r} is {self.status.value}, waiting on "
            f"{self.waiting_on or 'nothing'} after {self.passes} passes: send the event it "
            "waits for (send_event) or mock the step (mock_step)"
        )


class WorkflowTest:
    """Runs an app's workflows in-process (module docstring). `now`: where the test's clock
    starts (an aware datetime; default the real time)."""

    __test__ = False

    def __init__(self, app: TestedApp, *, now: datetime | None = None) -> None:
        if now is not None and now.tzinfo is None:
            raise WorkflowError(f"now={now!r}: expected an aware datetime (e.g. tzinfo=UTC)")
        self.app = app
        self.now = now or datetime.now(UTC)
        self.log = MemoryRunLog()
        self._mocks: dict[str, StepMock] = {}
        self._events: list[Signal] = []
        """Sent by the test and not yet delivered to a wait."""

    # ------------------------------------------------------------------ what the test sets

    def mock_step(
        self, step_id: str, *, returns: JsonValue = None, raises: BaseException | None = None
    ) -> None:
        """Every step `step_id` (in any run of the test) returns `returns`, or raises `raises`,
        instead of doing its work."""
        self._mocks[step_id] = StepMock(returns, raises)

    def send_event(self, name: str, data: JsonValue = None) -> None:
        """An event for the next wait that matches it (one wait: the first to ask)."""
        self._events.append(Signal(
            event_id=new_event_id(), project=self.app.project, name=name, data=data,
            ts=self.now,
        ))

    # ------------------------------------------------------------------------ running

    def run(
        self,
        workflow: str,
        data: JsonValue = None,
        *,
        run_id: str | None = None,
        event: str | None = None,
        max_passes: int = MAX_PASSES,
    ) -> TestedRun:
        """Start a run of `workflow` with input `data` (as `ctx.event.data`; `event`: the
        trigger's name, as `ctx.event.name`) and carry it on until it ends or waits for
        something the test did not send; `max_passes` stops it earlier. From a running event
        loop (an async test) await `run_async` instead."""
        return asyncio.run(self.run_async(
            workflow, data, run_id=run_id, event=event, max_passes=max_passes
        ))

    async def run_async(
        self,
        workflow: str,
        data: JsonValue = None,
        *,
        run_id: str | None = None,
        event: str | None = None,
        max_passes: int = MAX_PASSES,
    ) -> TestedRun:
        run_id = run_id or new_event_id()
        trigger = None if event is None else TriggerInfo(name=event, event_id=new_event_id())
        self._start(run_id, workflow, RunStartedPayload(
            app=self.app.name, input=data, trigger=trigger
        ))
        return await self._drive(run_id, max_passes)

    def resume(self, run: TestedRun, *, max_passes: int = MAX_PASSES) -> TestedRun:
        """Carry on a run another test left (its events are copied into this one's log), e.g.
        started under the code from before a change, resumed under the code after it."""
        return asyncio.run(self.resume_async(run, max_passes=max_passes))

    async def resume_async(self, run: TestedRun, *, max_passes: int = MAX_PASSES) -> TestedRun:
        self._adopt(run)
        self.now = max(self.now, run.now)
        return await self._drive(run.run_id, max_passes)

    # ------------------------------------------------------------------------ the passes

    def _start(self, run_id: str, workflow: str, payload: RunStartedPayload) -> None:
        if workflow not in self.app.workflows:
            defined = ", ".join(sorted(self.app.workflows)) or "none"
            raise WorkflowNotFoundError(
                f"workflow {workflow!r} is not defined in app {self.app.name!r} (it defines: "
                f"{defined})"
            )
        self.log.append(RunStarted(
            event_id=derived_id("run-start", run_id), project=self.app.project, flow=workflow,
            run_id=run_id, ts=self.now, seq=_micros(self.now), payload=payload,
        ))

    def _adopt(self, run: TestedRun) -> None:
        if not self.log.events_of(run.run_id):
            for event in run.events:
                self.log.append(event)
        for child in run.children.values():
            self._adopt(child)

    def _history(self, run_id: str) -> RunHistory:
        # What a worker would read from the log: all of the run's events, merged.
        history = RunHistory()
        history.merge(self.log.events_of(run_id))
        return history

    async def _drive(self, run_id: str, max_passes: int) -> TestedRun:
        passes, error = 0, None
        children: dict[str, TestedRun] = {}
        history = self._history(run_id)
        while history.ended is None and passes < max_passes:
            result = await self._pass(run_id, history)
            passes += 1
            error = result.error
            history = self._history(run_id)
            if result.outcome is not PassOutcome.PARKED or passes == max_passes:
                break  # ended, or left as this pass left it
            if not await self._play_processors(run_id, history, children, max_passes):
                break
            history = self._history(run_id)
        return self._tested(run_id, history, error, passes, children)

    async def _pass(self, run_id: str, history: RunHistory) -> PassResult:
        start = history.start
        assert start is not None  # every run of the log starts with its run.started
        workflow = self.app.workflows[start.workflow]
        run_pass = RunPass(
            fn=workflow.fn,
            workflow=workflow.name,
            project=self.app.project,
            app=self.app.name,
            run_id=run_id,
            history=history,
            event=TriggerEvent.of_start(start),
            sink=self.log,
            retries=workflow.retries,
            clock=lambda: self.now,
            started_delay=0.0,
        )
        run_pass.context.step = _MockedSteps(run_pass, self._mocks)
        return await run_pass.execute()

    def _tested(
        self,
        run_id: str,
        history: RunHistory,
        error: BaseException | None,
        passes: int,
        children: dict[str, TestedRun],
    ) -> TestedRun:
        events = self.log.events_of(run_id)
        last = next((e for e in reversed(events) if isinstance(e, (RunCompleted, RunFailed))),
                    None)
        status = RunStatus.RUNNING
        if last is not None:
            status = RunStatus.COMPLETED if isinstance(last, RunCompleted) else RunStatus.FAILED
        return TestedRun(
            run_id=run_id,
            workflow=events[0].flow,
            status=status,
            output=last.payload.output if isinstance(last, RunCompleted) else None,
            error=_failure_of(run_id, last, error) if isinstance(last, RunFailed) else None,
            steps=dict(history.steps),
            events=events,
            emitted=[s for s in self.log.signals if s.source_run_id == run_id],
            children=children,
            waiting_on=[
                key for key, record in history.steps.items()
                if record.status is StepStatus.RUNNING
            ],
            passes=passes,
            now=self.now,
        )

    # ------------------------------------------------------- the processors' part, played

    async def _play_processors(
        self,
        run_id: str,
        history: RunHistory,
        children: dict[str, TestedRun],
        max_passes: int,
    ) -> bool:
        """Write what ends the run's parked steps (module docstring); False if nothing can."""
        start = history.start
        assert start is not None
        ends = _StepEnds(self.app.project, start.workflow, run_id)
        at_once: list[WorkflowEvent] = []
        later: list[tuple[datetime, WorkflowEvent | None]] = []
        for key, record in history.steps.items():
            if record.status is StepStatus.RETRYING and record.retry_at is not None:
                later.append((record.retry_at, None))  # the next pass makes the attempt
                continue
            if record.status is not StepStatus.RUNNING:
                continue
            mock = self._mocks.get(key)
            if mock is not None and record.kind in _RESOLVED_BY_MOCKS:
                at_once.append(ends.of_mock(key, record.attempt, mock, self.now))
                continue
            match record.kind:
                case StepKind.SLEEP | StepKind.SLEEP_UNTIL if record.wake_at is not None:
                    later.append((record.wake_at, ends.completed(key, record.attempt,
                                                                  record.wake_at)))
                case StepKind.WAIT_FOR_EVENT:
                    wait = self._registration(run_id, key, record.attempt)
                    signal = next((s for s in self._events if wait and signal_resolves(wait, s)),
                                  None)
                    if signal is not None:
                        self._events.remove(signal)
                        at_once.append(ends.completed(key, record.attempt, self.now,
                                                      output=signal.data))
                    elif wait is not None and wait.timeout_at is not None:
                        later.append((wait.timeout_at, ends.completed(
                            key, record.attempt, wait.timeout_at, timed_out=True
                        )))
                case StepKind.RUN_WORKFLOW:
                    child = await self._child(run_id, start.workflow, key, record, max_passes)
                    children[key] = child
                    if child.status is RunStatus.COMPLETED:
                        at_once.append(ends.completed(key, record.attempt, self.now,
                                                      output=child.output))
                    elif child.status is RunStatus.FAILED:
                        at_once.append(ends.failed(key, record.attempt, self.now,
                                                   _failure(child)))
                case _:
                    pass
        progressed = bool(at_once)
        if not at_once and later:
            # Nothing happens at once: time passes to whatever is due first.
            self.now = max(self.now, min(at for at, _ in later))
            at_once = [end for at, end in later if at <= self.now and end is not None]
            progressed = True
        for end in at_once:
            self.log.append(end)
        return progressed

    def _registration(self, run_id: str, step_key: str, attempt: int) -> WaitRegistered | None:
        return next((
            r for r in reversed(self.log.registrations)
            if (r.run_id, r.step_key, r.attempt) == (run_id, step_key, attempt)
        ), None)

    async def _child(
        self, run_id: str, workflow: str, step_key: str, record: StepRecord, max_passes: int
    ) -> TestedRun:
        invoked = next(
            e for e in reversed(self.log.events_of(run_id))
            if isinstance(e, StepInvoked) and e.step_key == step_key
        )
        child = invoked.payload
        if not self.log.events_of(child.child_run_id):
            if child.workflow not in self.app.workflows:
                raise WorkflowNotFoundError(
                    f"step {step_key!r} of run {run_id} starts workflow {child.workflow!r}, "
                    f"which app {self.app.name!r} does not define: mock the step "
                    f"(mock_step({step_key!r}, returns=...)) or test an app that defines it"
                )
            self._start(child.child_run_id, child.workflow, RunStartedPayload(
                app=self.app.name, input=child.data, parent_run_id=run_id,
                parent_step_key=step_key, parent_flow=workflow,
                parent_step_attempt=record.attempt,
            ))
        return await self._drive(child.child_run_id, max_passes)


_RESOLVED_BY_MOCKS: Final = frozenset({StepKind.WAIT_FOR_EVENT, StepKind.RUN_WORKFLOW})


@dataclass(frozen=True)
class _StepEnds:
    """The events that end a run's parked step, as the processors write them."""

    project: str
    workflow: str
    run_id: str

    def completed(
        self, key: str, attempt: int, at: datetime, *, output: JsonValue = None,
        timed_out: bool = False,
    ) -> WorkflowEvent:
        return StepCompleted(
            event_id=new_event_id(), project=self.project, flow=self.workflow,
            run_id=self.run_id, step_key=key, attempt=attempt, ts=at,
            payload=StepCompletedPayload(output=output, timed_out=timed_out),
        )

    def failed(self, key: str, attempt: int, at: datetime, error: ErrorInfo) -> WorkflowEvent:
        # A child had its own retries (and a mock's error is meant): the step's last word.
        return StepFailed(
            event_id=new_event_id(), project=self.project, flow=self.workflow,
            run_id=self.run_id, step_key=key, attempt=attempt, ts=at,
            payload=StepFailedPayload(error=error, non_retriable=True),
        )

    def of_mock(self, key: str, attempt: int, mock: StepMock, at: datetime) -> WorkflowEvent:
        if mock.raises is not None:
            return self.failed(key, attempt, at, error_info(mock.raises))
        return self.completed(key, attempt, at, output=mock.returns)


def _failure_of(run_id: str, failed: RunFailed, raised: BaseException | None) -> BaseException:
    """What failed the run: as its workflow raised it in this test, or as its log says."""
    if raised is not None:
        return raised
    error = failed.payload.error
    return RunFailedError(run_id, failed.flow, error.type, error.message, error.stack)


def _failure(run: TestedRun) -> ErrorInfo:
    failed = next(e for e in reversed(run.events) if isinstance(e, RunFailed))
    return failed.payload.error


class _MockedSteps(StepTools):
    """`ctx.step` of a test's pass: a mocked `run` step calls its mock, not its function."""

    def __init__(self, run: RunPass, mocks: Mapping[str, StepMock]) -> None:
        super().__init__(run)
        self._mocks = mocks

    async def run(
        self,
        step_id: str,
        fn: Callable[..., Any],
        /,
        *,
        input: JsonValue = NO_INPUT,
        retries: RetryPolicy | None = None,
    ) -> Any:
        mock = self._mocks.get(step_id)
        return await super().run(
            step_id, fn if mock is None else mock, input=input, retries=retries
        )


def _micros(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)
