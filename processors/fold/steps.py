"""A step event folded into its run's state: the step's winning event (precedence), its status
and deadline, the run's counters kept in step, and the steps that became missing (the rules are
in processors/fold/run.py's docstring), returned as a `StepTransition`. `adopt_graph`
recomputes what depends on the flow graph when a run gets another one."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Final

from steplog.schemas.events import (
    StepCompleted,
    StepEvent,
    StepFailed,
    StepInvoked,
    StepSkipped,
    StepSleeping,
    StepStarted,
    StepWaiting,
)
from steplog.schemas.statuses import StepStatus

from .effects import Effect
from .graph import FlowGraph
from .rows import json_text
from .run_rows import failure_order, step_changed
from .state import (
    InvokeInfo,
    RunState,
    SleepInfo,
    StartFact,
    StepFact,
    StepOrder,
    StepState,
    WaitInfo,
)
from .transition import StepTransition
from .workflow import step_timers

__all__ = ["adopt_graph", "apply_step_event", "declare_missing", "utc"]

_TERMINAL_STEP_EVENTS: Final = frozenset({"step.completed", "step.failed", "step.skipped"})
_STATUS_BY_WINNER: Final = {
    "step.started": StepStatus.RUNNING,
    "step.sleeping": StepStatus.RUNNING,
    "step.waiting": StepStatus.RUNNING,
    "step.invoked": StepStatus.RUNNING,
    "step.completed": StepStatus.COMPLETED,
    "step.skipped": StepStatus.SKIPPED,
}
# Hot-path notes on enums: members are compared by identity, never hashed (Enum.__hash__ is
# Python code), and their text is read from `_value_` (`.value` is a Python property).
_RUNNING: Final = StepStatus.RUNNING
_RETRYING: Final = StepStatus.RETRYING
_FAILED: Final = StepStatus.FAILED
_COMPLETED: Final = StepStatus.COMPLETED
_SKIPPED: Final = StepStatus.SKIPPED


def utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo is UTC else ts.astimezone(UTC)


def apply_step_event(
    state: RunState,
    event: StepEvent,
    ts: datetime,
    graph: FlowGraph | None,
) -> StepTransition:
    """Fold a step event not seen before into the state; what it changed."""
    key = event.step_key
    timers_before = step_timers(state, key)
    missing: list[str] = []
    attempt = event.attempt
    order: StepOrder = (
        attempt,
        1 if event.type in _TERMINAL_STEP_EVENTS else 0,
        event.seq,
        ts,
        event.event_id,
    )
    start = (
        StartFact(
            (attempt, event.seq, ts, event.event_id),
            event.payload.kind._value_,
            json_text(event.payload.input),
            event.payload.metadata,
        )
        if isinstance(event, StepStarted)
        else None
    )
    if state.first_step_at is None or ts < state.first_step_at:
        state.first_step_at = ts

    step = state.steps.get(key)
    old_status: StepStatus | None
    parking = (
        _step_fact(event, order) if isinstance(event, StepSleeping | StepWaiting | StepInvoked)
        else None
    )
    old_winner = None if step is None else step.winner
    if step is None:
        winner = parking if parking is not None else _step_fact(event, order)
        step = StepState(1, ts, winner, _status_of(winner), start, start, parked=parking)
        state.steps[key] = step
        state.graph_finished_cache = None
        old_status = None
    else:
        if parking is not None and (step.parked is None or order > step.parked.order):
            step.parked = parking
        old_status = step.status
        step.events += 1
        if ts > step.updated_at:
            step.updated_at = ts
        # The winner always holds the highest attempt seen (a higher attempt always wins), so
        # its attempt is the one whose step.started the row shows.
        winning_attempt = step.winner.order[0]
        if attempt > winning_attempt:
            step.started = start
        elif (
            start is not None
            and attempt == winning_attempt
            and (step.started is None or start.order < step.started.order)
        ):
            step.started = start
        if start is not None and (step.last_start is None or start.order > step.last_start.order):
            step.last_start = start
        if order > step.winner.order:
            step.winner = parking if parking is not None else _step_fact(event, order)
            step.status = _status_of(step.winner)
            state.graph_finished_cache = None
    _track_step(state, key, step, old_status, graph)

    if old_status is None:  # the step's first report
        state.missing.discard(key)  # its real row, emitted below, replaces the missing one
        if graph is not None:
            # Search no higher than steps that reported or are missing already: everything
            # above those was declared when they reported (or became missing), so each step
            # is visited O(1) times over the run instead of once per report below it.
            settled = _Settled(state)
            declare_missing(state, graph.upstream((key,), stop=settled), missing)
    if (
        isinstance(event, StepFailed)
        and (event.payload.retry_at is None or event.payload.non_retriable)
        and not state.final_failure_seen
    ):
        # Even if this failure never wins its step (a later attempt exists): see _run_has_ended.
        state.final_failure_seen = True
        if graph is not None and state.ended is None:
            declare_missing(state, graph.keys, missing)
    timers_after = step_timers(state, key)
    return StepTransition(missing, timers_before, timers_after, event, old_winner, step.winner)


def _step_fact(event: StepEvent, order: StepOrder) -> StepFact:
    if isinstance(event, StepCompleted):
        completed = event.payload
        return StepFact(
            order,
            event.type,
            output=json_text(completed.output),
            duration_ms=completed.duration_ms,
            metadata=completed.metadata,
        )
    if isinstance(event, StepFailed):
        failed = event.payload
        retry_at = None if failed.non_retriable or failed.retry_at is None else failed.retry_at
        return StepFact(
            order,
            event.type,
            error_type=failed.error.type,
            error_message=failed.error.message,
            error_stack=failed.error.stack or "",
            duration_ms=failed.duration_ms,
            retry_at=None if retry_at is None else utc(retry_at),
            metadata=failed.metadata,
        )
    if isinstance(event, StepStarted | StepSkipped):
        return StepFact(order, event.type, metadata=event.payload.metadata)
    if isinstance(event, StepSleeping):
        sleeping = event.payload
        return StepFact(
            order, event.type, parked=SleepInfo(
                utc(sleeping.wake_at), sleeping.kind._value_, sleeping.expires_after_ms
            )
        )
    if isinstance(event, StepWaiting):
        waiting = event.payload
        return StepFact(
            order,
            event.type,
            parked=WaitInfo(
                waiting.event,
                None if waiting.timeout_at is None else utc(waiting.timeout_at),
                waiting.match,
                json_text(waiting.match_value),
            ),
        )
    invoked = event.payload
    return StepFact(
        order,
        event.type,
        parked=InvokeInfo(
            invoked.child_run_id, invoked.workflow, invoked.app or "", json_text(invoked.data)
        ),
    )


def _status_of(winner: StepFact) -> StepStatus:
    if winner.type == "step.failed":
        return _FAILED if winner.retry_at is None else _RETRYING
    return _STATUS_BY_WINNER[winner.type]


def _track_step(
    state: RunState,
    key: str,
    step: StepState,
    old_status: StepStatus | None,
    graph: FlowGraph | None,
) -> None:
    """Keep the run's counters in step with one step's new status and deadline."""
    new_status = step.status
    if old_status is _FAILED or new_status is _FAILED:
        # A failed step's finish time may have moved, so the cached earliest may be wrong.
        if state.earliest_failed_cache == key:
            state.earliest_failed_cache = None
        if new_status is not _FAILED:
            state.failed.discard(key)
        else:
            state.failed.add(key)
            cached = state.earliest_failed_cache
            if cached is not None and failure_order(state, key) < failure_order(state, cached):
                state.earliest_failed_cache = key
    if new_status is not old_status:
        if old_status is _RETRYING:
            state.retrying.discard(key)
        elif new_status is _RETRYING:
            state.retrying.add(key)
        if graph is not None and key in graph.keys:
            state.incomplete_graph_steps += _is_done(old_status) - _is_done(new_status)
    if new_status is _RUNNING or step.deadline_at is not None:
        deadline = _deadline(key, step, graph)
        if deadline != step.deadline_at:
            step.deadline_at = deadline
            _set_running_deadline(state, key, deadline)


def _is_done(status: StepStatus | None) -> bool:
    """Completed or skipped: what a graph step must be for the graph to be complete."""
    return status is _COMPLETED or status is _SKIPPED


def _deadline(key: str, step: StepState, graph: FlowGraph | None) -> datetime | None:
    if step.status is not _RUNNING or graph is None:
        return None
    deadline_ms = graph.deadlines_ms.get(key, graph.default_deadline_ms)
    if deadline_ms is None:
        return None
    parked = step.winner.parked
    if parked is None:
        base = None if step.started is None else step.started.ts
    elif isinstance(parked, SleepInfo):
        base = parked.wake_at  # asleep on purpose until then: stuck only if it oversleeps
    elif isinstance(parked, WaitInfo):
        base = parked.timeout_at  # None: waits forever on purpose, never stuck
    else:
        base = None  # a child run: stuck is the child's own business
    return None if base is None else base + timedelta(milliseconds=deadline_ms)


def _set_running_deadline(state: RunState, key: str, deadline: datetime | None) -> None:
    deadlines = state.running_deadlines
    if deadline is None:
        deadlines.pop(key, None)  # its heap entry goes stale and is dropped when it surfaces
        return
    deadlines[key] = deadline
    heap = state.deadline_heap
    if len(heap) > 2 * len(deadlines) + 16:  # mostly stale: start over rather than grow
        heap[:] = [(at, running) for running, at in deadlines.items()]
        heapq.heapify(heap)
    else:
        heapq.heappush(heap, (deadline, key))


def declare_missing(state: RunState, candidates: Iterable[str], declared: list[str]) -> None:
    """Mark the candidates that never reported as missing; add them to `declared`."""
    steps, missing = state.steps, state.missing
    for key in sorted(candidates):
        if key not in steps and key not in missing:
            missing.add(key)
            declared.append(key)


class _Settled:
    """The steps whose upstream is known to be reported or missing already (a Container)."""

    __slots__ = ("steps", "missing")

    def __init__(self, state: RunState) -> None:
        self.steps, self.missing = state.steps, state.missing

    def __contains__(self, key: object) -> bool:
        return key in self.steps or key in self.missing


def _run_has_ended(state: RunState) -> bool:
    """Whether steps that never reported are missing now (monotone in the events folded)."""
    return state.ended is not None or state.final_failure_seen


def adopt_graph(state: RunState, graph: FlowGraph | None, effects: list[Effect]) -> None:
    """Recompute what depends on the flow graph, for a run that now has another (or none)."""
    state.flow_tag = None if graph is None else graph.tag
    state.graph_finished_cache = None
    steps = state.steps
    if graph is None:
        state.incomplete_graph_steps = 0
        # Rows already written for missing steps stay; without a graph nothing is missing.
        state.missing = set()
    else:
        state.incomplete_graph_steps = sum(
            1 for key in graph.keys if key not in steps or not _is_done(steps[key].status)
        )
        if _run_has_ended(state):
            candidates: Iterable[str] = graph.keys
        else:
            candidates = graph.upstream(steps)
        # Rows of steps missing under the old graph but not this one stay written (a row
        # cannot be taken back); the state follows the new graph exactly.
        before, state.missing = state.missing, set()
        for key in sorted(candidates):
            if key not in steps:
                state.missing.add(key)
                if key not in before:
                    step_changed(state, key, effects)
    for key, step in steps.items():
        if step.status is _RUNNING:
            deadline = _deadline(key, step, graph)
            if deadline != step.deadline_at:
                step.deadline_at = deadline
                _set_running_deadline(state, key, deadline)

