"""Carrying out engine effects: commands, events and signals-topic messages, acknowledged.

The fold, the timer service and the signals agent all describe what must leave the processors
as effects (`effects.py`); `Dispatcher.carry_out` turns a list of them into Kafka messages,
sends them all, and returns only when Kafka has acknowledged every one (acks=all), retrying a
failed send with backoff until it succeeds. Their callers store their own state only after
that, which is the whole crash protocol: a process that dies before the acknowledgements has
not stored the state that would make it forget the effects, so it produces them again after a
restart, with the same derived ids (duplicates, which their consumers drop).

Timer effects are not messages: they are handed back to the caller, which applies them to the
timer service once its state is stored (a due timer is checked against the stored state).

Besides sending, the dispatcher does the two things the fold cannot:

- **app resolution** (`SendCommand.resolve_app`): the registry chooses the app of a child's or
  a scheduled run's `start_run`. A child whose workflow no app defines gets, instead, a
  `step.failed` of its parent's step ("no workflow named X in any app"), with the id a child's
  end would have had (`derived_id("child-end", child_run_id)`). A scheduled start that no app
  can take yet is handed back (the timer service retries it when the registry learns more).
- **flow control** (processors/flow_gate.py): a `start_run` of a workflow that limits its
  starts goes to the flow-control topic instead (unless `SendCommand.admitted`), and a
  `WorkflowRunEnded` of one that counts running runs frees the run's slot there. Every
  `start_run` sent to the workers is marked `flow_checked`; a worker hands an unmarked one
  (a client's, a retrigger) back as a `run.scheduled` when its workflow limits starts
  (producers/held_starts.py), so that it comes through here too.
- **runner pinning** (`runner` on a command): a pinned run's commands go to the
  runner-commands topic, where only workers of that runner name take them (schemas/topics.py).
  A pinned child's `start_run` goes out with the child's `run.scheduled` (due at once, naming
  the runner; id `derived_id("pinned-start", child_run_id)`): the child then has a row from the
  start, `scheduled` until its runner's worker starts it, and `overdue` while that runner is
  away, instead of being invisible in a topic no worker reads yet. Written here rather than by
  the fold because only here is it known that the start goes out at all (the app resolved).
- **parents of child runs** (`EndParentStep`): the child's state names its parent's run,
  workflow, step and attempt, and the dispatcher writes the step's outcome. Children started
  before run.started named the workflow and attempt are found in an index that the fold host
  builds from the parents' states at each recovery (`remember_parents`): after an upgrade, the
  children running then are the only ones without them.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from steplog.errors import EventTooLargeError
from steplog.schemas.base import ErrorInfo, WireModel
from steplog.schemas.codec import encode
from steplog.schemas.commands import ResumeRun, StartRun
from steplog.schemas.events import (
    RunFailed,
    RunFailedPayload,
    RunScheduled,
    RunScheduledPayload,
    StepCompleted,
    StepCompletedPayload,
    StepFailed,
    StepFailedPayload,
)
from steplog.schemas.flow_control import FlowMessage
from steplog.schemas.ids import derived_id
from steplog.schemas.topics import TopicNames

from .fold.effects import (
    ClearTimer,
    Effect,
    EndParentStep,
    ParentStep,
    SendCommand,
    SetTimer,
    WorkflowRunEnded,
    WriteEvent,
    WriteSignalsMessage,
)
from .flow_gate import held_start, released_slot
from .registry import WorkflowRegistry
from .fold.state import InvokeInfo, RunState
from .fold.workflow import is_workflow_run

__all__ = ["Dispatched", "Dispatcher", "Outbox", "Planned", "SendFunction"]

log = logging.getLogger("steplog.processors")

SendFunction = Callable[[str, bytes | None, bytes], Awaitable[Awaitable[object]]]
"""(topic, key, value) -> a future of the broker's acknowledgement (faust's producer.send)."""

_RETRY_FIRST_S = 0.1
_RETRY_MAX_S = 5.0


class Outbox:
    """Messages to send together; `flush` sends them and waits for every acknowledgement."""

    def __init__(self, send: SendFunction) -> None:
        self._send = send
        self._messages: list[tuple[str, bytes | None, bytes]] = []

    def __len__(self) -> int:
        return len(self._messages)

    def add(self, topic: str, key: bytes | None, value: bytes) -> None:
        self._messages.append((topic, key, value))

    async def flush(self) -> None:
        """Send everything added and return once Kafka acknowledged all of it.

        A message whose send failed (after the producer's own retries) is sent again, forever,
        with exponential backoff and jitter: the caller's state must not be stored before its
        effects are out. Sending again may duplicate (the first copy may have landed) and may
        put the copy behind later messages of its key; every message here carries a derived
        id, and the consumers drop duplicates.
        """
        pending, self._messages = self._messages, []
        delay = _RETRY_FIRST_S
        while pending:
            results = await asyncio.gather(
                *(self._send_one(*message) for message in pending), return_exceptions=True
            )
            failed = [m for m, r in zip(pending, results, strict=True) if isinstance(r, Exception)]
            if failed:
                first = next(r for r in results if isinstance(r, Exception))
                log.warning("%d message(s) not acknowledged, sending again in %.1fs: %r",
                            len(failed), delay, first)
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, _RETRY_MAX_S)
            pending = failed

    async def _send_one(self, topic: str, key: bytes | None, value: bytes) -> object:
        acknowledged = await self._send(topic, key, value)
        return await acknowledged


@dataclass(frozen=True, slots=True)
class Planned:
    """An effect and the run it came from (`run_key`: its state key; b"" when none), with the
    log position of the folded event that produced it (None outside the fold)."""

    effect: Effect
    run_key: bytes = b""
    position: tuple[int, int] | None = None


@dataclass
class Dispatched:
    """What `carry_out` hands back: timer changes by run, and starts no app can take yet."""

    timers: list[tuple[bytes, SetTimer | ClearTimer]] = field(default_factory=list)
    unresolved: list[tuple[bytes, SendCommand]] = field(default_factory=list)


class Dispatcher:
    """Turns engine effects into acknowledged messages (see the module docstring)."""

    def __init__(
        self,
        topics: TopicNames,
        send: SendFunction,
        registry: WorkflowRegistry,
        *,
        max_bytes: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.topics = topics
        self.clock = clock
        self.send = send
        self.registry = registry
        self.max_bytes = max_bytes
        self.parents: dict[str, ParentStep] = {}
        """The parent step of each child running at the last recovery, until reported ended
        (only needed for children whose run.started does not name it: `EndParentStep`)."""

    def outbox(self) -> Outbox:
        return Outbox(self.send)

    def remember_parents(self, run_key: bytes, state: RunState) -> None:
        """Learn the running children of a parent's state (the fold host, at each recovery)."""
        if state.ended is not None or not is_workflow_run(state):
            return
        for key, step in state.steps.items():
            invoked = step.winner.parked
            if isinstance(invoked, InvokeInfo) and not step.winner.terminal:
                self.parents[invoked.child_run_id] = ParentStep(
                    state.project, state.flow, state.run_id, key, step.winner.order[0]
                )

    async def carry_out(
        self, planned: Iterable[Planned], outbox: Outbox | None = None
    ) -> Dispatched:
        """Send the messages of `planned` (with whatever `outbox` already holds) and wait for
        their acknowledgements; hand back the timer changes and unresolved starts."""
        outbox = self.outbox() if outbox is None else outbox
        result = Dispatched()
        reported: list[str] = []
        for item in planned:
            effect = item.effect
            if isinstance(effect, SendCommand):
                self._command(item, effect, outbox, result)
            elif isinstance(effect, WriteEvent):
                self._event(outbox, effect.event)
            elif isinstance(effect, WriteSignalsMessage):
                message = effect.message
                outbox.add(self.topics.signals, message.name.encode(),
                           encode(message, max_bytes=self.max_bytes))
            elif isinstance(effect, EndParentStep):
                if self._end_parent_step(outbox, effect):
                    reported.append(effect.child_run_id)
            elif isinstance(effect, SetTimer | ClearTimer):
                result.timers.append((item.run_key, effect))
            elif isinstance(effect, WorkflowRunEnded):
                released = released_slot(
                    self.registry.definition(effect.project, effect.app, effect.workflow), effect
                )
                if released is not None:
                    self._flow_message(outbox, released)
        await outbox.flush()
        for child in reported:
            self.parents.pop(child, None)
        return result

    def _event(self, outbox: Outbox, event: WireModel) -> None:
        run_id = getattr(event, "run_id")
        outbox.add(self.topics.events, run_id.encode(), encode(event, max_bytes=self.max_bytes))

    def _command(
        self, item: Planned, effect: SendCommand, outbox: Outbox, result: Dispatched
    ) -> None:
        command = effect.command
        resolution = effect.resolve_app
        if resolution is not None and isinstance(command, StartRun):
            app = self.registry.resolve(command.project, command.workflow, resolution)
            if app is None:
                if effect.parent is not None:
                    where = (f"in app {resolution.preferred!r}" if resolution.exact
                             else "in any app")
                    self._fail_parent_step(
                        outbox, effect.parent, command.run_id,
                        ErrorInfo(type="WorkflowNotFound",
                                  message=f"no workflow named {command.workflow!r} {where} "
                                          f"of project {command.project!r}"),
                    )
                else:
                    result.unresolved.append((item.run_key, effect))
                return
            if app != command.app:
                command = command.model_copy(update={"app": app})
        held = None
        if isinstance(command, StartRun) and not effect.admitted and command.app is not None:
            held = held_start(
                self.registry.definition(command.project, command.app, command.workflow), command
            )
        if (
            isinstance(command, ResumeRun)
            and command.history_partition is None
            and item.position is not None
        ):
            partition, offset = item.position
            command = command.model_copy(
                update={"history_partition": partition, "history_offset": offset}
            )
        try:
            if isinstance(command, StartRun) and command.runner is not None:
                self._event(outbox, _pinned_schedule(command))
            if held is not None:  # flow control decides when it goes (flow_gate.py)
                self._flow_message(outbox, held)
                return
            if isinstance(command, StartRun):
                # Past the gate: workers hold back only the starts written elsewhere.
                command = command.model_copy(update={"flow_checked": True})
            value = encode(command, max_bytes=self.max_bytes)
        except EventTooLargeError as exc:
            self._too_large(outbox, effect, command, exc)
            return
        topic = self.topics.commands if command.runner is None else self.topics.runner_commands
        outbox.add(topic, command.run_id.encode(), value)

    def _flow_message(self, outbox: Outbox, message: FlowMessage) -> None:
        # Keyed by the start's key value: a key's starts and ends share a partition.
        outbox.add(self.topics.flow_control, message.topic_key.encode(),
                   encode(message, max_bytes=self.max_bytes))

    def _too_large(
        self,
        outbox: Outbox,
        effect: SendCommand,
        command: WireModel,
        exc: EventTooLargeError,
    ) -> None:
        # A command that cannot be sent would leave its run parked for ever; end it loudly.
        log.error("command %s for run %s not sent: %s", getattr(command, "type", "?"),
                  getattr(command, "run_id", "?"), exc)
        error = ErrorInfo(type="CommandTooLarge", message=f"{exc}")
        if effect.parent is not None:
            self._fail_parent_step(outbox, effect.parent, getattr(command, "run_id"), error)
        elif isinstance(command, ResumeRun) and command.workflow:
            self._event(outbox, RunFailed(
                event_id=derived_id("command-too-large", command.run_id, command.command_id),
                project=command.project, flow=command.workflow, run_id=command.run_id,
                ts=command.ts, payload=RunFailedPayload(error=error),
            ))

    def _fail_parent_step(
        self, outbox: Outbox, parent: ParentStep, child_run_id: str, error: ErrorInfo
    ) -> None:
        log.warning("run %s step %s: %s", parent.run_id, parent.step_key, error.message)
        self._event(outbox, StepFailed(
            event_id=derived_id("child-end", child_run_id),
            project=parent.project, flow=parent.flow, run_id=parent.run_id,
            step_key=parent.step_key, attempt=parent.attempt, ts=self.clock(),
            payload=StepFailedPayload(error=error, non_retriable=True),
        ))

    def _end_parent_step(self, outbox: Outbox, effect: EndParentStep) -> bool:
        parent: ParentStep | None
        if effect.parent_flow and effect.parent_step_attempt:
            parent = ParentStep(effect.project, effect.parent_flow, effect.parent_run_id,
                                effect.parent_step_key, effect.parent_step_attempt)
        else:  # a child started before its run.started named them (EndParentStep)
            parent = self.parents.get(effect.child_run_id)
        if parent is None or parent.run_id != effect.parent_run_id:
            # Its parent step waits for ever: a worker that does not copy parent_flow and
            # parent_step_attempt from start_run to run.started, or a child from before them.
            log.error(
                "child run %s ended, but its run.started does not name its parent's workflow "
                "and step attempt and its parent run %s (step %s) is not known here: its "
                "outcome is not reported", effect.child_run_id, effect.parent_run_id,
                effect.parent_step_key,
            )
            return False
        event_id = derived_id("child-end", effect.child_run_id)
        if effect.error is None:
            self._event(outbox, StepCompleted(
                event_id=event_id, project=parent.project, flow=parent.flow,
                run_id=parent.run_id, step_key=parent.step_key, attempt=parent.attempt,
                ts=effect.ts, payload=StepCompletedPayload(output=effect.output),
            ))
        else:
            # The child had its own retries: its failure is the step's last word.
            self._event(outbox, StepFailed(
                event_id=event_id, project=parent.project, flow=parent.flow,
                run_id=parent.run_id, step_key=parent.step_key, attempt=parent.attempt,
                ts=effect.ts, payload=StepFailedPayload(error=effect.error, non_retriable=True),
            ))
        return True


def _pinned_schedule(start: StartRun) -> RunScheduled:
    """The run.scheduled of a child pinned to a runner (module docstring): due at once."""
    return RunScheduled(
        event_id=derived_id("pinned-start", start.run_id),
        project=start.project,
        flow=start.workflow,
        run_id=start.run_id,
        ts=start.ts,
        payload=RunScheduledPayload(
            start_at=start.ts, app=start.app, input=start.input, runner=start.runner
        ),
    )
