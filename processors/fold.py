"""The fold: `apply_event(state, event, flow) -> (state, effects)`, the state machine of a run.

Pure: no I/O, no clock, no randomness. The processors host it (`host.FoldHost`: state from a
store keyed by run, rows written to ClickHouse) and replay runs the same function over the log
from offset 0, so the two end with identical rows.

**Convergence.** The state after folding a run's events is a function of the *set* of events
(and of the flow definition): any order, any re-delivery, same state, same last row per key.
Every choice below is therefore made by a total order over events that arrival cannot change,
and everything else is a min, a max, a union, or derived from those.

**Step precedence.** A step shows its *winning* event, the highest by
`(attempt, is_terminal, seq, ts, event_id)`: a later attempt beats an earlier one, and within
an attempt completed/failed/skipped beat started/sleeping/waiting/invoked, so a success never
regresses to running when the running event arrives late. Then:

    winner              status       notes
    step.started        running      kind, input, metadata from the attempt's step.started
    step.sleeping       running      wake_at kept for timers
    step.waiting        running      event / timeout kept for waiters
    step.invoked        running      child run kept
    step.completed      completed    output
    step.failed         retrying     when retry_at is set (and not non_retriable)
    step.failed         failed       otherwise: final
    step.skipped        skipped

`started_at` is the earliest step.started of the winning attempt; `finished_at` the ts of a
terminal winner; `duration_ms` the payload's, else finished - started.

**Run status**, recomputed from the state after every event, first match wins:

1. an explicit run.completed / run.failed / run.cancelled: the highest by
   `(attempt, seq, ts, event_id)` decides. An explicit run.completed wins even over a failed
   step: the code that sent it caught the failure and decided the run succeeded;
2. a step whose status is `failed` (final), in a run no worker executes (instrumented: no
   run.started naming an app): the run is failed with the error of the earliest such step (by
   finished_at, then key). A failure that is later superseded (a further attempt) stops
   counting, so the run recovers with it. A durable workflow's run is not: its code gets the
   step's error and may catch it and go on, so only its own run.failed fails it (until then it
   is retrying, interrupted or running, below);
3. the flow graph is known and every graph step is completed or skipped: completed;
4. the latest of run.interrupted / run.resumed (by seq, ts, event_id) is interrupted;
5. a run.scheduled, and neither a run.started nor a step event yet: scheduled;
6. a step is retrying: retrying;
7. otherwise running.

`started_at` is the earliest run.started's ts, else the earliest step event's (a scheduled or
cancelled run that never began has none); `finished_at` is the deciding event's ts (the explicit
event, the failing step's finish, or the last graph step's finish).

**Missing steps.** A graph step that never reported is `missing` once a step downstream of it
has reported, or once the run has ended: an explicit terminal run event or a final step failure
has been folded. Both conditions only ever turn true as events are added, so a `missing` row,
once written, is still right when every event is in, whatever the order (a condition that
could turn false again, such as "the run's status is failed", could leave a row behind that
another order never writes). A missing step that reports later is replaced by its real row.

**Stuck.** A running step's `deadline_at` is its start (for a sleep: its wake_at; for a wait:
its timeout) plus the flow's deadline for it; the run's `stuck_after` is the earliest of its
running steps' deadlines, none once the run is terminal. The views compare them with now().

**Steps left open.** A run that ends (an explicit run.completed / run.failed /
run.cancelled) while a step is still running or retrying leaves that step `interrupted`: a
parallel sibling cancelled when another branch failed, the sleep or wait of a cancelled run,
the retry a cancel made moot. Nothing is left showing `running` under an ended run. Folding the
run's end writes those steps' rows again; the condition only turns true as events are added, and
a step event arriving after the end (a late success) still wins by precedence.

**Versions.** The run row's version is the number of distinct events folded into the run, the
step row's twice the number of distinct events of that step, plus one once the run's end
closed it (so equal versions are equal rows whatever the order; a missing row's is 0), and
updated_at the latest event ts among them: never a clock, so replay
writes what live processing wrote. A step row is emitted when its own events are folded (and
once when the run's end closes it), hence its own count: with the run's, its last row's
version would depend on how its events interleaved with other steps'.

**Re-delivery.** An event whose id was folded already changes nothing; its effects are the
current rows of its run and step (and the run's missing steps) again, which repairs a host that
died after saving the state and before writing the rows. It has no engine effect.

**Engine effects.** After the rows of an event not seen before, `workflow.step_event_effects` /
`run_event_effects` add what the event asks of the engine (commands, timers, events for other
runs; see processors/workflow.py). Timer effects follow from the state (the difference between
the timers the run wants before and after the event), so they converge like the rows; the
others follow the log's order.

**Kind.** A step's kind is its latest step.started's, else the kind of its highest parking
event (step.sleeping, whose payload says sleep or sleep_until; step.waiting; step.invoked), kept
in the state so that a sleep that has woken still shows as a sleep.

Cost: O(1) amortised per event (O(log n) for the earliest deadline), whatever the size of the
run or the order of its events. The run's status reads what is kept current as steps change:
the failed and retrying steps, a count of incomplete graph steps, a heap of running deadlines,
the latest finish of a completed graph. Missing steps are searched only above a step's first
report and never above a step already settled. A run's first event with a flow definition,
and a change of definition, cost O(steps + graph) once; a re-delivered event re-emits the run's
missing rows, O(missing).
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from steplog.schemas.events import (
    Event,
    RunCancelled,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunInterrupted,
    RunScheduled,
    RunStarted,
    StepCompleted,
    StepEvent,
    StepEventEnvelope,
    StepFailed,
    StepInvoked,
    StepKind,
    StepSkipped,
    StepSleeping,
    StepStarted,
    StepWaiting,
)
from steplog.schemas.flows import FlowDefinition
from steplog.schemas.statuses import RunStatus, StepStatus

from .effects import Effect, RunRowChanged, StepRowChanged
from .rows import RunRow, StepRow, json_text
from .state import (
    InvokeInfo,
    Meta,
    PauseFact,
    RunEndFact,
    RunMismatchError,
    RunStartFact,
    RunState,
    ScheduledFact,
    SleepInfo,
    StartFact,
    StepFact,
    StepOrder,
    StepState,
    WaitInfo,
)
from .workflow import run_event_effects, step_event_effects, step_timers, wanted_timers

__all__ = ["FlowGraph", "apply_event", "current_rows", "flow_graph", "fold_events"]

_TERMINAL_STEP_EVENTS: Final = frozenset({"step.completed", "step.failed", "step.skipped"})
_STATUS_BY_WINNER: Final = {
    "step.started": StepStatus.RUNNING,
    "step.sleeping": StepStatus.RUNNING,
    "step.waiting": StepStatus.RUNNING,
    "step.invoked": StepStatus.RUNNING,
    "step.completed": StepStatus.COMPLETED,
    "step.skipped": StepStatus.SKIPPED,
}
_INSTRUMENTED: Final = StepKind.INSTRUMENTED.value
_MISSING: Final = StepStatus.MISSING.value
# Hot-path notes on enums: members are compared by identity, never hashed (Enum.__hash__ is
# Python code), and their text is read from `_value_` (`.value` is a Python property).
_RUNNING: Final = StepStatus.RUNNING
_RETRYING: Final = StepStatus.RETRYING
_FAILED: Final = StepStatus.FAILED
_COMPLETED: Final = StepStatus.COMPLETED
_SKIPPED: Final = StepStatus.SKIPPED
_OPEN_STEP_STATUSES: Final = frozenset({_RUNNING, _RETRYING, StepStatus.SCHEDULED})
_END_STATUS: Final = {
    "run.completed": RunStatus.COMPLETED,
    "run.failed": RunStatus.FAILED,
    "run.cancelled": RunStatus.CANCELLED,
}
_ONE_MS: Final = timedelta(milliseconds=1)


# --- the flow graph, as the fold reads it ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlowGraph:
    """A FlowDefinition's steps, deadlines and reachability, precomputed once per definition."""

    tag: bytes
    """Fingerprint of the definition's content: a state remembers which graph it was folded
    with, and notices when the host hands it another."""
    keys: frozenset[str]
    default_deadline_ms: int | None
    deadlines_ms: Mapping[str, int | None]
    parents: Mapping[str, tuple[str, ...]]
    """For each graph step, the steps with an edge into it."""

    @classmethod
    def of(cls, flow: FlowDefinition) -> FlowGraph:
        keys = [step.sdk_step_key for step in flow.steps]
        parents: dict[str, list[str]] = {key: [] for key in keys}
        for edge in flow.edges:
            parents[edge.target].append(edge.source)
        canonical = json.dumps(
            [
                flow.project,
                flow.slug,
                flow.step_deadline_ms,
                sorted([step.sdk_step_key, step.deadline_ms] for step in flow.steps),
                sorted([edge.source, edge.target] for edge in flow.edges),
            ]
        )
        return cls(
            tag=hashlib.blake2b(canonical.encode(), digest_size=16).digest(),
            keys=frozenset(keys),
            default_deadline_ms=flow.step_deadline_ms,
            deadlines_ms={key: flow.deadline_ms(key) for key in keys},
            parents={key: tuple(sorted(above)) for key, above in parents.items()},
        )

    def deadline_ms(self, step_key: str) -> int | None:
        """As FlowDefinition.deadline_ms: the step's own, else the flow's default."""
        return self.deadlines_ms.get(step_key, self.default_deadline_ms)

    def upstream(self, step_keys: Iterable[str], *, stop: Container[str] = ()) -> set[str]:
        """Every step from which one of `step_keys` is reachable (FlowDefinition.downstream
        reversed), not searching above the steps in `stop`."""
        found: set[str] = set()
        stack = [parent for key in step_keys for parent in self.parents.get(key, ())]
        while stack:
            key = stack.pop()
            if key not in found:
                found.add(key)
                if key not in stop:
                    stack.extend(self.parents.get(key, ()))
        return found


# Memo of FlowGraph per definition object. The entry holds the definition itself, so its id
# cannot be reused by another object while the entry exists. A cache, not state: dropping it
# changes nothing but speed.
_GRAPHS: dict[int, tuple[FlowDefinition, FlowGraph]] = {}
_GRAPH_CACHE_SIZE: Final = 256


def flow_graph(flow: FlowDefinition) -> FlowGraph:
    """The FlowGraph of a definition, computed once per definition object."""
    entry = _GRAPHS.get(id(flow))
    if entry is not None and entry[0] is flow:
        return entry[1]
    graph = FlowGraph.of(flow)
    if len(_GRAPHS) >= _GRAPH_CACHE_SIZE:
        _GRAPHS.clear()
    _GRAPHS[id(flow)] = (flow, graph)
    return graph


# --- the fold ----------------------------------------------------------------------------------


def apply_event(
    state: RunState | None,
    event: Event,
    flow: FlowDefinition | None = None,
    *,
    defer_rows: bool = False,
) -> tuple[RunState, list[Effect]]:
    """Fold one event into its run's state; return the state and its effects.

    Takes ownership of `state`: it is updated in place and returned (keep `state.copy()` if
    the state before the event is still needed). None starts a new run.

    `flow` is the run's flow definition if one is known (it decides completion, missing steps
    and deadlines). Hand the same definition with every event of a run: a different one is
    adopted at once (counters and missing steps recomputed), but the rows of steps that get no
    further event keep the deadlines of the old one.

    Effects, in order: rows of steps that just became missing, the event's step row, the run
    row, then the engine effects of an event not seen before (processors/workflow.py).
    With `defer_rows`, no row effects are returned: the state notes which rows changed, and
    `take_rows` builds each of them once, from the state as it is then. A host folding a batch
    of events gets the same last row per key for a fraction of the cost (a run's row is
    otherwise rebuilt after every one of its events).

    RunMismatchError if the state or flow belongs to another run than the event.
    """
    if state is None:
        state = RunState(
            project=event.project, flow=event.flow, run_id=event.run_id, updated_at=_utc(event.ts)
        )
    elif (state.run_id, state.flow, state.project) != (event.run_id, event.flow, event.project):
        raise RunMismatchError(
            f"event {event.event_id}: belongs to run {event.project}/{event.flow}/"
            f"{event.run_id}, but the state is of {state.project}/{state.flow}/{state.run_id}"
        )
    if defer_rows and state.pending_rows is None:
        state.pending_rows = set()
    elif not defer_rows and state.pending_rows is not None:
        raise ValueError(
            f"run {state.run_id}: rows are deferred; take_rows() before folding with rows"
        )
    graph = _graph_for(state, flow)
    effects: list[Effect] = []
    if (graph.tag if graph is not None else None) != state.flow_tag:
        _adopt_graph(state, graph, effects)

    if event.event_id in state.seen:
        if isinstance(event, StepEventEnvelope) and event.step_key in state.steps:
            _step_changed(state, event.step_key, effects)
        for key in sorted(state.missing):
            _step_changed(state, key, effects)
        _run_changed(state, graph, effects)
        return state, effects

    state.seen.add(event.event_id)
    ts = _utc(event.ts)
    if ts > state.updated_at:
        state.updated_at = ts
    if isinstance(event, StepEventEnvelope):
        key = event.step_key
        before = state.steps.get(key)
        old_winner = None if before is None else before.winner
        timers_before = step_timers(state, key)
        _apply_step_event(state, event, ts, graph, effects)
        _run_changed(state, graph, effects)
        effects.extend(step_event_effects(state, event, old_winner, timers_before))
    else:
        was_started, was_ended = state.started is not None, state.ended is not None
        timers_before = wanted_timers(state)
        _apply_run_event(state, event, ts, graph, effects)
        _run_changed(state, graph, effects)
        effects.extend(run_event_effects(state, event, was_started, was_ended, timers_before))
    return state, effects


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
        rows.append(RunRowChanged(_run_row(state, _graph_for(state, flow))))
    return rows


def _step_changed(state: RunState, key: str, effects: list[Effect]) -> None:
    """The row of step `key` (a reported step's, else its missing row) changed."""
    if state.pending_rows is not None:
        state.pending_rows.add(key)
        return
    step = state.steps.get(key)
    effects.append(
        StepRowChanged(_step_row(state, key, step) if step is not None else _missing_row(state, key))
    )


def _run_changed(state: RunState, graph: FlowGraph | None, effects: list[Effect]) -> None:
    if state.pending_rows is not None:
        state.pending_rows.add(None)
    else:
        effects.append(RunRowChanged(_run_row(state, graph)))


def fold_events(
    events: Iterable[Event], flow: FlowDefinition | None = None, state: RunState | None = None
) -> tuple[RunState, list[Effect]]:
    """Fold a run's events in the order given; the final state and every effect, in order."""
    effects: list[Effect] = []
    for event in events:
        state, produced = apply_event(state, event, flow)
        effects.extend(produced)
    if state is None:
        raise ValueError("fold_events: no events (a run's state begins with its first event)")
    return state, effects


def current_rows(
    state: RunState, flow: FlowDefinition | None = None
) -> tuple[RunRow, list[StepRow]]:
    """The rows the state projects now: its run row, and a row per reported or missing step.

    `flow` must be the definition the state was last folded with.
    """
    graph = _graph_for(state, flow)
    if (graph.tag if graph is not None else None) != state.flow_tag:
        raise RunMismatchError(
            f"run {state.project}/{state.flow}/{state.run_id}: was folded with another flow "
            "definition than the one given; fold an event with it first"
        )
    steps = [_step_row(state, key, step) for key, step in sorted(state.steps.items())]
    steps.extend(_missing_row(state, key) for key in sorted(state.missing))
    return _run_row(state, graph), steps


def _graph_for(state: RunState, flow: FlowDefinition | None) -> FlowGraph | None:
    if flow is None:
        return None
    if (flow.project, flow.slug) != (state.project, state.flow):
        raise RunMismatchError(
            f"flow definition {flow.key} handed to the fold for run "
            f"{state.project}/{state.flow}/{state.run_id}: expected {state.project}/{state.flow}"
        )
    return flow_graph(flow)


def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo is UTC else ts.astimezone(UTC)


def _ms(delta: timedelta) -> float:
    # Clocks of different processes disagree (record_step from another service); a negative
    # duration would only poison the duration quantiles.
    return max(delta / _ONE_MS, 0.0)


# --- step events -------------------------------------------------------------------------------


def _apply_step_event(
    state: RunState,
    event: StepEvent,
    ts: datetime,
    graph: FlowGraph | None,
    effects: list[Effect],
) -> None:
    key = event.step_key
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
            _declare_missing(state, graph.upstream((key,), stop=settled), effects)
    if (
        isinstance(event, StepFailed)
        and (event.payload.retry_at is None or event.payload.non_retriable)
        and not state.final_failure_seen
    ):
        # Even if this failure never wins its step (a later attempt exists): see _run_has_ended.
        state.final_failure_seen = True
        if graph is not None and state.ended is None:
            _declare_missing(state, graph.keys, effects)
    _step_changed(state, key, effects)


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
            retry_at=None if retry_at is None else _utc(retry_at),
            metadata=failed.metadata,
        )
    if isinstance(event, StepStarted | StepSkipped):
        return StepFact(order, event.type, metadata=event.payload.metadata)
    if isinstance(event, StepSleeping):
        sleeping = event.payload
        return StepFact(
            order, event.type, parked=SleepInfo(_utc(sleeping.wake_at), sleeping.kind._value_)
        )
    if isinstance(event, StepWaiting):
        waiting = event.payload
        return StepFact(
            order,
            event.type,
            parked=WaitInfo(
                waiting.event,
                None if waiting.timeout_at is None else _utc(waiting.timeout_at),
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
            if cached is not None and _failure_order(state, key) < _failure_order(state, cached):
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


def _declare_missing(state: RunState, candidates: Iterable[str], effects: list[Effect]) -> None:
    """Mark the candidates that never reported as missing, and emit their rows."""
    steps, missing = state.steps, state.missing
    for key in sorted(candidates):
        if key not in steps and key not in missing:
            missing.add(key)
            _step_changed(state, key, effects)


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


def _adopt_graph(state: RunState, graph: FlowGraph | None, effects: list[Effect]) -> None:
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
                    _step_changed(state, key, effects)
    for key, step in steps.items():
        if step.status is _RUNNING:
            deadline = _deadline(key, step, graph)
            if deadline != step.deadline_at:
                step.deadline_at = deadline
                _set_running_deadline(state, key, deadline)


# --- run events --------------------------------------------------------------------------------


def _apply_run_event(
    state: RunState,
    event: RunEvent,
    ts: datetime,
    graph: FlowGraph | None,
    effects: list[Effect],
) -> None:
    if isinstance(event, RunScheduled):
        scheduled = event.payload
        order = (event.seq, ts, event.event_id)
        if state.scheduled is None or order > state.scheduled.order:
            trigger = scheduled.trigger
            state.scheduled = ScheduledFact(
                order,
                _utc(scheduled.start_at),
                json_text(scheduled.input),
                "" if trigger is None else trigger.name,
                "" if trigger is None else trigger.event_id,
                scheduled.app or "",
            )
    elif isinstance(event, RunStarted):
        started = event.payload
        run_order = (event.attempt, event.seq, ts, event.event_id)
        if state.started is None or run_order > state.started.order:
            trigger = started.trigger
            state.started = RunStartFact(
                run_order,
                started.app or "",
                json_text(started.input),
                "" if trigger is None else trigger.name,
                "" if trigger is None else trigger.event_id,
                started.parent_run_id or "",
                started.parent_step_key or "",
                started.retrigger_of or "",
                started.parent_flow or "",
                started.parent_step_attempt or 0,
            )
        if state.first_started_at is None or ts < state.first_started_at:
            state.first_started_at = ts
    elif isinstance(event, RunCompleted | RunFailed | RunCancelled):
        run_order = (event.attempt, event.seq, ts, event.event_id)
        first_end = state.ended is None
        if state.ended is None or run_order > state.ended.order:
            if isinstance(event, RunCompleted):
                output = json_text(event.payload.output)
                state.ended = RunEndFact(run_order, event.type, output=output)
            elif isinstance(event, RunFailed):
                error = event.payload.error
                state.ended = RunEndFact(
                    run_order, event.type, "", error.type, error.message, error.stack or ""
                )
            else:
                state.ended = RunEndFact(run_order, event.type)
        if first_end and not state.final_failure_seen and graph is not None:
            _declare_missing(state, graph.keys, effects)
        if first_end:
            for key, step in sorted(state.steps.items()):
                if step.status in _OPEN_STEP_STATUSES:
                    _step_changed(state, key, effects)
    else:
        order = (event.seq, ts, event.event_id)
        if state.paused is None or order > state.paused.order:
            state.paused = PauseFact(order, isinstance(event, RunInterrupted))


# --- rows --------------------------------------------------------------------------------------


def _run_row(state: RunState, graph: FlowGraph | None) -> RunRow:
    status, finished_at, output, error_type, error_message, error_stack = _outcome(state, graph)
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


_Outcome = tuple[RunStatus, datetime | None, str, str, str, str]
"""(status, finished_at, output, error_type, error_message, error_stack)"""


def _outcome(state: RunState, graph: FlowGraph | None) -> _Outcome:
    ended = state.ended
    if ended is not None:
        return (
            _END_STATUS[ended.type],
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


def _failure_order(state: RunState, key: str) -> tuple[datetime, str]:
    return state.steps[key].winner.ts, key


def _earliest_failed(state: RunState) -> str:
    cached = state.earliest_failed_cache
    if cached is None:
        cached = min(state.failed, key=lambda key: _failure_order(state, key))
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
