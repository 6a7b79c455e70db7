"""The rows a run's state projects: its `runs` row and one `steps` row per reported or missing
step (the columns are described in processors/fold/run.py: run status, versions, steps left
open), the rows an event's transition changed (`transition_rows`), and the bookkeeping of which
rows changed (`step_changed`, `run_changed`: at once, or deferred to `take_rows`)."""

from __future__ import annotations

import heapq
from datetime import datetime, timedelta
from typing import Final

from steplog.schemas.events import StepKind
from steplog.schemas.flows import FlowDefinition
from steplog.schemas.statuses import RunStatus, StepStatus

from .effects import Effect, RunRowChanged, StepRowChanged
from .graph import FlowGraph, graph_for
from .rows import RunRow, StepRow, json_text
from .state import Meta, RunMismatchError, RunState, StepState
from .transition import RunTransition, Transition

__all__ = [
    "current_rows", "failure_order", "run_changed", "run_outcome", "step_changed", "take_rows",
    "transition_rows",
]

_INSTRUMENTED: Final = StepKind.INSTRUMENTED.value
_MISSING: Final = StepStatus.MISSING.value
_OPEN_STEP_STATUSES: Final = frozenset(
    {StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.SCHEDULED}
)
"""A step in one of these when its run ends is closed as interrupted."""
_END_STATUS: Final = {
    "run.completed": RunStatus.COMPLETED,
    "run.failed": RunStatus.FAILED,
    "run.cancelled": RunStatus.CANCELLED,
}
_ONE_MS: Final = timedelta(milliseconds=1)


def take_rows(state: RunState, flow: FlowDefinition | None = None) -> list[Effect]:
    """The rows that changed since rows were deferred (`apply_event(defer_rows=True)`), built
    from the state as it is now, steps in key order and the run's row last; rows are no longer
    deferred afterwards. `flow` must be the definition the events were folded with."""
    pending, state.pending_rows = state.pending_rows, None
    if not pending:
        return []
    rows: list[Effect] = []
    for key in sorted(key for key in pending if key is not None):
        step = state.steps.get(key)
        if step is not None:
            rows.append(StepRowChanged(_step_row(state, key, step)))
        elif key in state.missing:
            rows.append(StepRowChanged(_missing_row(state, key)))
    if None in pending:
        rows.append(RunRowChanged(_run_row(state, graph_for(state, flow))))
    return rows


def transition_rows(
    state: RunState, change: Transition, graph: FlowGraph | None, effects: list[Effect]
) -> None:
    """The rows an event not seen before changed, in order: the steps that became missing, the
    event's step (or, at the run's first end, the steps it closed), the run."""
    for key in change.missing:
        step_changed(state, key, effects)
    if isinstance(change, RunTransition):
        if change.first_end:
            for key, step in sorted(state.steps.items()):
                if step.status in _OPEN_STEP_STATUSES:
                    step_changed(state, key, effects)
    else:
        step_changed(state, change.event.step_key, effects)
    run_changed(state, graph, effects)


def step_changed(state: RunState, key: str, effects: list[Effect]) -> None:
    """The row of step `key` (a reported step's, else its missing row) changed."""
    if state.pending_rows is not None:
        state.pending_rows.add(key)
        return
    step = state.steps.get(key)
    effects.append(
        StepRowChanged(_step_row(state, key, step) if step is not None else _missing_row(state, key))
    )


def run_changed(state: RunState, graph: FlowGraph | None, effects: list[Effect]) -> None:
    if state.pending_rows is not None:
        state.pending_rows.add(None)
    else:
        effects.append(RunRowChanged(_run_row(state, graph)))


def current_rows(
    state: RunState, flow: FlowDefinition | None = None
) -> tuple[RunRow, list[StepRow]]:
    """The rows the state projects now: its run row, and a row per reported or missing step.

    `flow` must be the definition the state was last folded with.
    """
    graph = graph_for(state, flow)
    if (graph.tag if graph is not None else None) != state.flow_tag:
        raise RunMismatchError(
            f"run {state.project}/{state.flow}/{state.run_id}: was folded with another flow "
            "definition than the one given; fold an event with it first"
        )
    steps = [_step_row(state, key, step) for key, step in sorted(state.steps.items())]
    steps.extend(_missing_row(state, key) for key in sorted(state.missing))
    return _run_row(state, graph), steps


def _ms(delta: timedelta) -> float:
    # Clocks of different processes disagree (record_step from another service); a negative
    # duration would only poison the duration quantiles.
    return max(delta / _ONE_MS, 0.0)


def _run_row(state: RunState, graph: FlowGraph | None) -> RunRow:
    status, finished_at, output, error_type, error_message, error_stack = run_outcome(state, graph)
    started_at = state.first_started_at or state.first_step_at
    duration_ms = (
        None if started_at is None or finished_at is None else _ms(finished_at - started_at)
    )
    started, scheduled = state.started, state.scheduled
    source = started if started is not None and started.trigger_event else scheduled
    return RunRow(
        project=state.project,
        flow=state.flow,
        run_id=state.run_id,
        app=(
            started.app
            if started is not None
            else ("" if scheduled is None else scheduled.app)
        ),
        created_at=state.created_at,
        status=status._value_,
        scheduled_for=None if scheduled is None else scheduled.start_at,
        started_at=started_at,
        finished_at=finished_at,
        duration_ms=duration_ms,
        input=(
            started.input
            if started is not None and started.input
            else ("" if scheduled is None else scheduled.input)
        ),
        output=output,
        error_type=error_type,
        error_message=error_message,
        error_stack=error_stack,
        parent_run_id="" if started is None else started.parent_run_id,
        parent_step_key="" if started is None else started.parent_step_key,
        trigger_event="" if source is None else source.trigger_event,
        trigger_event_id="" if source is None else source.trigger_event_id,
        retrigger_of="" if started is None else started.retrigger_of,
        # Only a terminal outcome has a finish, and a finished run is never stuck.
        stuck_after=None if finished_at is not None else _stuck_after(state),
        step_count=len(state.steps),
        failed_step_count=len(state.failed),
        version=len(state.seen),
        updated_at=state.updated_at,
    )


RunOutcome = tuple[RunStatus, datetime | None, str, str, str, str]
"""(status, finished_at, output, error_type, error_message, error_stack)"""


def run_outcome(state: RunState, graph: FlowGraph | None) -> RunOutcome:
    """What a run's row says of its end: its status and, once ended, when and how (the run
    row's columns; also what state retention reads a run's end from)."""
    ended = state.ended
    if ended is not None:
        return (
            RunStatus.EXPIRED if ended.expired else _END_STATUS[ended.type],
            ended.ts,
            ended.output,
            ended.error_type,
            ended.error_message,
            ended.error_stack,
        )
    if state.failed and not _executed_by_a_worker(state):
        winner = state.steps[_earliest_failed(state)].winner
        return (
            RunStatus.FAILED,
            winner.ts,
            "",
            winner.error_type,
            winner.error_message,
            winner.error_stack,
        )
    if graph is not None and state.incomplete_graph_steps == 0:
        finished_at = state.graph_finished_cache
        if finished_at is None:  # the graph just completed, or a winner changed since
            finished_at = max(state.steps[key].winner.ts for key in graph.keys)
            state.graph_finished_cache = finished_at
        return RunStatus.COMPLETED, finished_at, "", "", "", ""
    if state.paused is not None and state.paused.interrupted:
        status = RunStatus.INTERRUPTED
    elif state.scheduled is not None and state.started is None and not state.steps:
        status = RunStatus.SCHEDULED
    elif state.retrying:
        status = RunStatus.RETRYING
    else:
        status = RunStatus.RUNNING
    return status, None, "", "", "", ""


def _executed_by_a_worker(state: RunState) -> bool:
    """A durable workflow's run (its run.started names the app whose worker executes it)."""
    return state.started is not None and state.started.app != ""


def failure_order(state: RunState, key: str) -> tuple[datetime, str]:
    return state.steps[key].winner.ts, key


def _earliest_failed(state: RunState) -> str:
    cached = state.earliest_failed_cache
    if cached is None:
        cached = min(state.failed, key=lambda key: failure_order(state, key))
        state.earliest_failed_cache = cached
    return cached


def _stuck_after(state: RunState) -> datetime | None:
    """The earliest deadline among running steps (entries no longer current are dropped)."""
    heap, deadlines = state.deadline_heap, state.running_deadlines
    while heap:
        deadline, key = heap[0]
        if deadlines.get(key) == deadline:
            return deadline
        heapq.heappop(heap)
    return None


def _step_row(state: RunState, key: str, step: StepState) -> StepRow:
    winner, started = step.winner, step.started
    status = step.status
    # Closed by the run's end (see "Steps left open" above): its version sits between the
    # open row's and that of any row with one more event of the step (see "Versions").
    closed = state.ended is not None and status in _OPEN_STEP_STATUSES
    if closed:
        status = StepStatus.INTERRUPTED
    started_at = None if started is None else started.ts
    finished_at = winner.ts if winner.terminal else None
    duration_ms = winner.duration_ms
    if duration_ms is None and started_at is not None and finished_at is not None:
        duration_ms = _ms(finished_at - started_at)
    metadata: Meta
    if started is None or started.order[3] == winner.order[4]:
        metadata = winner.metadata
    elif winner.metadata:
        metadata = {**started.metadata, **winner.metadata}
    else:
        metadata = started.metadata
    return StepRow(
        project=state.project,
        flow=state.flow,
        run_id=state.run_id,
        step_key=key,
        kind=step.kind,
        status=status._value_,
        attempt=winner.order[0],
        started_at=started_at,
        finished_at=finished_at,
        duration_ms=duration_ms,
        error_type=winner.error_type,
        error_message=winner.error_message,
        error_stack=winner.error_stack,
        input="" if started is None else started.input,
        output=winner.output,
        metadata=json_text(metadata) if metadata else "",
        deadline_at=step.deadline_at,
        version=2 * step.events + closed,
        updated_at=step.updated_at,
    )


def _missing_row(state: RunState, key: str) -> StepRow:
    # Nothing in a missing row depends on when it was declared, so every order of events that
    # declares it writes the same row.
    return StepRow(
        project=state.project,
        flow=state.flow,
        run_id=state.run_id,
        step_key=key,
        kind=_INSTRUMENTED,
        status=_MISSING,
        attempt=0,
        started_at=None,
        finished_at=None,
        duration_ms=None,
        error_type="",
        error_message="",
        error_stack="",
        input="",
        output="",
        metadata="",
        deadline_at=None,
        version=0,
        updated_at=None,
    )

