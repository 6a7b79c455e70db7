"""What one pass of a run writes, in the run's order, and what a failed write does to the pass.

Every event of a pass gets the next `seq` (the fold orders a run's events by it, across passes
and workers). Writes go through a `RunSink`; a write the broker refuses (Kafka unreachable)
aborts the pass: nothing more can be checkpointed, so the pass ends undecided and the worker
retries the command.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol, TypeAlias

from steplog.errors import EventTooLargeError
from steplog.schemas.base import new_event_id
from steplog.schemas.events import RunEvent, RunFailed, RunFailedPayload, StepEvent
from steplog.schemas.signals import Signal, WaitRegistered

from .pass_branches import PassBranches
from .recorded_errors import error_info

__all__ = ["PassWrites", "RunSink", "SignalsWrite", "WorkflowEvent", "WriteFailed"]

WorkflowEvent: TypeAlias = StepEvent | RunEvent
SignalsWrite: TypeAlias = Signal | WaitRegistered


class RunSink(Protocol):
    """Where a pass writes. Each call enqueues at once (so a run's writes keep their order)
    and returns an awaitable that completes when the broker acknowledged the write. Raises
    EventTooLargeError, before enqueueing, for a message over the size limit."""

    async def send_event(self, event: WorkflowEvent) -> Awaitable[object]: ...

    async def send_signal(self, message: SignalsWrite) -> Awaitable[object]: ...


class WriteFailed(Exception):
    """A run event (run.resumed, .completed, .failed, .interrupted) was not acknowledged."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class PassWrites:
    """The events of one pass: built with the run's identity and the next seq, enqueued in
    order, acknowledged; `aborted` is the first write that failed."""

    def __init__(
        self,
        *,
        sink: RunSink,
        branches: PassBranches,
        project: str,
        workflow: str,
        run_id: str,
        clock: Callable[[], datetime],
        last_seq: int,
    ) -> None:
        self.sink = sink
        self._branches = branches
        self._project = project
        self._workflow = workflow
        self._run_id = run_id
        self._clock = clock
        # seq orders the run's events for the fold across passes and workers, and the history
        # records carry none: start from the clock (microseconds), above anything seen.
        self._seq = max(last_seq, _epoch_micros(clock()))
        self.aborted: BaseException | None = None
        self._soon: list[WorkflowEvent] = []

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def step_event(
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
            project=self._project,
            flow=self._workflow,
            run_id=self._run_id,
            step_key=step_id,
            attempt=attempt,
            ts=self._clock(),
            seq=self._next_seq(),
            payload=payload,
        )

    def write_soon(self, *events: WorkflowEvent) -> None:
        """Queue events from synchronous code (a patch marker): they are written, and
        acknowledged, before the next event the pass writes, or before it parks."""
        self._soon.extend(events)

    async def write_queued(self) -> None:
        """Write what `write_soon` queued; WriteFailed if the broker refused it."""
        while self._soon:
            event = self._soon.pop(0)  # taken first: a sibling branch must not send it too
            try:
                await (await self.sink.send_event(event))
            except Exception as exc:
                raise WriteFailed(exc) from exc

    async def enqueue(self, event: WorkflowEvent) -> Awaitable[object]:
        """Hand one event to the sink (in order); the returned awaitable is its ack."""
        if self._branches.ended:
            raise asyncio.CancelledError()
        try:
            if self._soon:
                await self.write_queued()
            return await self.sink.send_event(event)
        except WriteFailed as failed:
            raise self._abort(failed.cause) from failed.cause
        except EventTooLargeError:
            raise
        except Exception as exc:
            raise self._abort(exc) from exc

    async def acknowledged(self, *acks: Awaitable[object] | None) -> None:
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
        if self.aborted is None:
            self.aborted = exc
        self._branches.settle()
        return asyncio.CancelledError()

    async def run_event(self, cls: type[Any], payload: Any) -> None:
        """Write a run event and wait for its ack; WriteFailed if the broker refused it."""
        kwargs: dict[str, Any] = {} if payload is None else {"payload": payload}
        event = cls(
            event_id=new_event_id(),
            project=self._project,
            flow=self._workflow,
            run_id=self._run_id,
            ts=self._clock(),
            seq=self._next_seq(),
            **kwargs,
        )
        if self._soon:
            await self.write_queued()
        try:
            await (await self.sink.send_event(event))
        except EventTooLargeError:
            raise  # the event's fault, not the broker's: the caller decides
        except Exception as exc:
            raise WriteFailed(exc) from exc

    async def run_failed(self, error: BaseException) -> None:
        await self.run_event(RunFailed, RunFailedPayload(error=error_info(error)))


def _epoch_micros(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)
