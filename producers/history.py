"""A run's history as a worker knows it: the command's step records plus the log after them.

A `resume_run` carries each step's record from the fold's state and the log position that
state reflects. Events written after that position (by a worker that died before its command
was committed, by the timer service, by the signals agent) are read from the run's partition
and merged here, so that a step completed after the command was issued is returned from
memory, not executed again. Pure: no Kafka, no clock.

Merging follows the fold's precedence (processors/fold/run.py), so the worker and the fold agree
on what a step's record is: of a step's events the winner is the highest by
`(attempt, is_terminal)`, ties going to the later in log order; a later attempt replaces a
record, and within an attempt a terminal event (completed, failed, skipped) beats a
non-terminal one (started, sleeping, waiting, invoked). Non-terminal events of one attempt
add up (step.started gives the kind, step.sleeping the wake time, step.invoked the child).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from pydantic import JsonValue

from steplog.schemas.base import TriggerInfo
from steplog.schemas.commands import StartRun, StepRecord
from steplog.schemas.events import (
    Event,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunInterrupted,
    RunResumed,
    RunStarted,
    RunStartedPayload,
    StepCompleted,
    StepFailed,
    StepInvoked,
    StepKind,
    StepSkipped,
    StepSleeping,
    StepStarted,
    StepWaiting,
)
from steplog.schemas.statuses import StepStatus

__all__ = ["RunHistory", "RunStart", "is_terminal_record"]

_TERMINAL_STATUSES: Final = frozenset(
    {StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.RETRYING}
)
"""Statuses a terminal event (completed, failed, skipped) gives: `retrying` is a step.failed
with a retry time, terminal for its attempt."""


def is_terminal_record(record: StepRecord) -> bool:
    """Did the record's attempt end (as opposed to running, parked or interrupted)?"""
    return record.status in _TERMINAL_STATUSES


@dataclass(frozen=True)
class RunStart:
    """What a run was started with (its `run.started`): what the workflow function sees as
    `ctx.event`, and where the run came from."""

    workflow: str
    app: str | None
    input: JsonValue
    trigger: TriggerInfo | None = None
    parent_run_id: str | None = None
    parent_step_key: str | None = None
    retrigger_of: str | None = None

    @classmethod
    def from_event(cls, event: RunStarted) -> RunStart:
        return cls._from(event.flow, event.payload)

    @classmethod
    def from_command(cls, command: StartRun) -> RunStart:
        return cls._from(command.workflow, command)

    @classmethod
    def _from(cls, workflow: str, start: RunStartedPayload | StartRun) -> RunStart:
        # run.started's payload repeats the start_run's fields under the same names.
        return cls(
            workflow=workflow,
            app=start.app,
            input=start.input,
            trigger=start.trigger,
            parent_run_id=start.parent_run_id,
            parent_step_key=start.parent_step_key,
            retrigger_of=start.retrigger_of,
        )


@dataclass
class RunHistory:
    """Each step's record by step key, and what the run's own events say about it."""

    steps: dict[str, StepRecord] = field(default_factory=dict)
    ended: str | None = None
    """The type of a run.completed, run.failed or run.cancelled seen; None while it goes on."""
    interrupted: bool = False
    """The latest of run.interrupted / run.resumed is an interruption: write run.resumed."""
    last_seq: int = 0
    """The highest seq of the events merged (the command's records carry none)."""
    start: RunStart | None = None
    _pause_order: tuple[int, datetime] | None = None

    @classmethod
    def from_records(cls, records: Mapping[str, StepRecord]) -> RunHistory:
        return cls(steps=dict(records))

    def merge(self, events: Iterable[Event]) -> None:
        """Fold `events` (the run's, in log order) into the history."""
        for event in events:
            self.last_seq = max(self.last_seq, event.seq)
            match event:
                case (
                    StepStarted()
                    | StepSleeping()
                    | StepWaiting()
                    | StepInvoked()
                    | StepCompleted()
                    | StepFailed()
                    | StepSkipped()
                ):
                    self._merge_step(event)
                case RunStarted():
                    if self.start is None:
                        self.start = RunStart.from_event(event)
                case RunCompleted() | RunFailed() | RunCancelled():
                    self.ended = event.type
                case RunInterrupted() | RunResumed():
                    order = (event.seq, event.ts)
                    if self._pause_order is None or order >= self._pause_order:
                        self._pause_order = order
                        self.interrupted = isinstance(event, RunInterrupted)
                case _:
                    pass  # run.scheduled: nothing a pass needs

    def _merge_step(
        self,
        event: StepStarted
        | StepSleeping
        | StepWaiting
        | StepInvoked
        | StepCompleted
        | StepFailed
        | StepSkipped,
    ) -> None:
        key = event.step_key
        current = self.steps.get(key)
        terminal = isinstance(event, (StepCompleted, StepFailed, StepSkipped))
        if current is not None:
            if (event.attempt, terminal) < (current.attempt, is_terminal_record(current)):
                return  # an earlier attempt, or a start arriving after its own outcome
            if event.attempt > current.attempt:
                current = None  # a new attempt: nothing of the last one carries over
        base = current or StepRecord(
            kind=_kind_of(event), status=StepStatus.RUNNING, attempt=event.attempt
        )
        updates: dict[str, object] = {"attempt": event.attempt}
        match event:
            case StepStarted():
                updates.update(kind=event.payload.kind, status=StepStatus.RUNNING)
            case StepSleeping():
                updates.update(status=StepStatus.RUNNING, wake_at=event.payload.wake_at)
                if current is None:
                    updates["kind"] = event.payload.kind
            case StepWaiting():
                updates.update(status=StepStatus.RUNNING)
            case StepInvoked():
                updates.update(status=StepStatus.RUNNING, child_run_id=event.payload.child_run_id)
            case StepCompleted():
                updates.update(
                    status=StepStatus.COMPLETED,
                    output=event.payload.output,
                    error=None,
                    retry_at=None,
                )
            case StepFailed():
                payload = event.payload
                retrying = payload.retry_at is not None and not payload.non_retriable
                updates.update(
                    status=StepStatus.RETRYING if retrying else StepStatus.FAILED,
                    error=payload.error,
                    retry_at=payload.retry_at if retrying else None,
                )
            case StepSkipped():
                updates.update(status=StepStatus.SKIPPED)
        self.steps[key] = base.model_copy(update=updates)


def _kind_of(event: Event) -> StepKind:
    """The kind of a step first seen through `event` (a step.started says it outright)."""
    match event:
        case StepStarted():
            return event.payload.kind
        case StepSleeping():
            return event.payload.kind
        case StepWaiting():
            return StepKind.WAIT_FOR_EVENT
        case StepInvoked():
            return StepKind.RUN_WORKFLOW
        case _:
            return StepKind.RUN
