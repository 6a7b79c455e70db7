"""The fold: `apply_event(state, event, flow) -> (state, effects)`, the state machine of a run.

Pure: no I/O, no clock, no randomness. The processors host it (`fold_host.FoldHost`: state from
a store keyed by run, rows written to ClickHouse) and replay runs the same function over the log
from offset 0, so the two end with identical rows.

**Convergence.** The state after folding a run's events is a function of the *set* of events
(and of the flow definition): any order, any re-delivery, same state, same last row per key.
Every choice below is therefore made by a total order over events that arrival cannot change,
and everything else is a min, a max, a union, or derived from those. One deliberate exception:
`created_at`, the ts of the run's *first* event folded, which must never change once written
(it sorts the run list; see RunState.created_at). Live and replay still agree on it: both fold
a run's events in the log's order.

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

**One pass per event.** An event not seen before is folded once: the state update
(`steps.apply_step_event`, `_apply_run_event` below) changes the state and returns what changed,
a `transition.Transition` (the step's winner before and after, the run's first start or end,
the steps that became missing, the timers wanted before and after). Its rows
(`run_rows.transition_rows`) and engine effects (`workflow.engine_effects`) are read from it
and from the state after the event; nothing else of the state before it is kept.

**Engine effects.** After the rows of an event not seen before come what the event asks of the
engine (commands, timers, events for other runs; see processors/fold/workflow.py). Timer
effects follow from the state (the difference between the timers the run wants before and
after the event), so they converge like the rows; the others follow the log's order.

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

from collections.abc import Iterable
from datetime import datetime

from steplog.schemas.events import (
    Event,
    RunCancelled,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunInterrupted,
    RunScheduled,
    RunStarted,
    StepEventEnvelope,
)
from steplog.schemas.flows import FlowDefinition

from .effects import Effect
from .graph import FlowGraph, graph_for
from .rows import json_text
from .run_rows import run_changed, step_changed, transition_rows
from .state import (
    PauseFact,
    RunEndFact,
    RunMismatchError,
    RunStartFact,
    RunState,
    ScheduledFact,
)
from .steps import adopt_graph, apply_step_event, declare_missing, utc
from .transition import RunTransition, Transition
from .workflow import engine_effects, wanted_timers

__all__ = ["apply_event", "fold_events"]


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
    row, then the engine effects of an event not seen before (processors/fold/workflow.py).
    With `defer_rows`, no row effects are returned: the state notes which rows changed, and
    `take_rows` builds each of them once, from the state as it is then. A host folding a batch
    of events gets the same last row per key for a fraction of the cost (a run's row is
    otherwise rebuilt after every one of its events).

    RunMismatchError if the state or flow belongs to another run than the event.
    """
    if state is None:
        first_ts = utc(event.ts)
        state = RunState(
            project=event.project,
            flow=event.flow,
            run_id=event.run_id,
            updated_at=first_ts,
            created_at=first_ts,
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
    graph = graph_for(state, flow)
    effects: list[Effect] = []
    if (graph.tag if graph is not None else None) != state.flow_tag:
        adopt_graph(state, graph, effects)

    if event.event_id in state.seen:
        if isinstance(event, StepEventEnvelope) and event.step_key in state.steps:
            step_changed(state, event.step_key, effects)
        for key in sorted(state.missing):
            step_changed(state, key, effects)
        run_changed(state, graph, effects)
        return state, effects

    state.seen.add(event.event_id)
    ts = utc(event.ts)
    if ts > state.updated_at:
        state.updated_at = ts
    change: Transition = (
        apply_step_event(state, event, ts, graph)
        if isinstance(event, StepEventEnvelope)
        else _apply_run_event(state, event, ts, graph)
    )
    transition_rows(state, change, graph, effects)
    engine_effects(state, change, effects)
    return state, effects


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


def _apply_run_event(
    state: RunState,
    event: RunEvent,
    ts: datetime,
    graph: FlowGraph | None,
) -> RunTransition:
    """Fold a run event not seen before into the state; what it changed."""
    timers_before = wanted_timers(state)
    first_start = first_end = False
    missing: list[str] = []
    if isinstance(event, RunScheduled):
        scheduled = event.payload
        order = (event.seq, ts, event.event_id)
        if state.scheduled is None or order > state.scheduled.order:
            trigger = scheduled.trigger
            state.scheduled = ScheduledFact(
                order,
                utc(scheduled.start_at),
                json_text(scheduled.input),
                "" if trigger is None else trigger.name,
                "" if trigger is None else trigger.event_id,
                scheduled.app or "",
                scheduled.expires_after_ms,
                "" if scheduled.schedule is None else scheduled.schedule.model_dump_json(),
                scheduled.runner or "",
                scheduled.retrigger_of or "",
            )
    elif isinstance(event, RunStarted):
        started = event.payload
        run_order = (event.attempt, event.seq, ts, event.event_id)
        first_start = state.started is None
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
                started.runner or "",
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
                state.ended = RunEndFact(run_order, event.type, expired=event.payload.expired)
        if first_end and not state.final_failure_seen and graph is not None:
            declare_missing(state, graph.keys, missing)
    else:
        order = (event.seq, ts, event.event_id)
        if state.paused is None or order > state.paused.order:
            state.paused = PauseFact(order, isinstance(event, RunInterrupted))
    timers_after = wanted_timers(state)
    return RunTransition(missing, timers_before, timers_after, event, first_start, first_end)

