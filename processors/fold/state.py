"""What the fold remembers about one run: `RunState`, and how it is stored between batches.

The state is a *function of the set of events folded into it* (and of the flow definition):
every field is either a set-level fact (the ids seen, min and max timestamps), a winner chosen
by a total order that does not depend on arrival (see `fold`), or something derived from those.
That is what makes live processing, re-delivery and replay from offset 0 agree.

Events are not stored. Each winning event is reduced to a small immutable fact (a NamedTuple of
plain values: strings, numbers, UTC datetimes) holding its place in the order and the payload
fields the rows need, with JSON values already rendered as text. Facts are never mutated, so a
copy of the state shares them safely.

Ownership: `apply_event` updates the state it is handed *in place* and returns it. A caller
that needs the state before the event as well keeps `state.copy()`.
"""

from __future__ import annotations

import heapq
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, NamedTuple

from steplog.errors import SteplogError
from steplog.schemas.base import MetadataValue
from steplog.schemas.events import StepKind
from steplog.schemas.statuses import StepStatus

__all__ = [
    "STATE_FORMAT",
    "EventOrder",
    "InvokeInfo",
    "Parked",
    "PauseFact",
    "RunEndFact",
    "RunMismatchError",
    "RunOrder",
    "RunStartFact",
    "RunState",
    "ScheduledFact",
    "SleepInfo",
    "StartFact",
    "StateFormatError",
    "StepFact",
    "StepOrder",
    "StepState",
    "WaitInfo",
]

STATE_FORMAT: Final = 3
"""Version of the `RunState.to_bytes` layout. Bump it whenever a field of the state (or of a
fact) changes meaning or shape: bytes of an unknown format are refused instead of being misread.
Older formats are still read: format 2 (no parent flow and step attempt in the start fact,
which then take their defaults), format 1 (before durable workflows: no parked fact per step,
no scheduled app, no sleep kind, no position), with what they lack left empty."""

_MAGIC: Final = b"SLRS"


class StateFormatError(SteplogError):
    """Bytes that are not a RunState of the format this build reads."""


class RunMismatchError(SteplogError):
    """The fold was handed a state or flow definition of another run than the event's."""


# --- orders -----------------------------------------------------------------------------------
# Tuples compared lexicographically. The event_id at the end makes each a total order over
# distinct events, so a winner never depends on which of two tied events came first.

StepOrder = tuple[int, int, int, datetime, str]
"""(attempt, is_terminal, seq, ts, event_id) of a step event: the highest wins the step."""
RunOrder = tuple[int, int, datetime, str]
"""(attempt, seq, ts, event_id) of a run event or of a step.started."""
EventOrder = tuple[int, datetime, str]
"""(seq, ts, event_id)."""

Meta = Mapping[str, MetadataValue]

# --- what a parked step waits for (kept for timers and waiters) --------------------------------


class SleepInfo(NamedTuple):
    wake_at: datetime
    kind: str = "sleep"
    """`sleep` or `sleep_until` (StepKind), as the step.sleeping said."""


class WaitInfo(NamedTuple):
    event: str
    timeout_at: datetime | None
    match: str | None
    match_value: str
    """JSON text ('' for none)."""


class InvokeInfo(NamedTuple):
    child_run_id: str
    workflow: str
    app: str
    data: str
    """JSON text ('' for none)."""


Parked = SleepInfo | WaitInfo | InvokeInfo


# --- facts: events reduced to what the fold needs ----------------------------------------------


class StepFact(NamedTuple):
    """A step's winning event."""

    order: StepOrder
    type: str
    output: str = ""
    error_type: str = ""
    error_message: str = ""
    error_stack: str = ""
    duration_ms: float | None = None
    retry_at: datetime | None = None
    """For a failure that will be retried: when the next attempt is due."""
    metadata: Meta = {}
    parked: Parked | None = None

    @property
    def attempt(self) -> int:
        return self.order[0]

    @property
    def terminal(self) -> bool:
        return self.order[1] == 1

    @property
    def ts(self) -> datetime:
        return self.order[3]


class StartFact(NamedTuple):
    """A step.started: the start of one attempt of a step."""

    order: RunOrder
    kind: str
    input: str
    metadata: Meta

    @property
    def ts(self) -> datetime:
        return self.order[2]


class ScheduledFact(NamedTuple):
    order: EventOrder
    start_at: datetime
    input: str
    trigger_event: str
    trigger_event_id: str
    app: str = ""
    """The app whose worker starts the run ('' for any app defining the workflow)."""


class RunStartFact(NamedTuple):
    order: RunOrder
    app: str
    input: str
    trigger_event: str
    trigger_event_id: str
    parent_run_id: str
    parent_step_key: str
    retrigger_of: str
    # Last, with defaults: format 2's start facts (without them) read as they are.
    parent_flow: str = ""
    parent_step_attempt: int = 0
    """0: not known (a child started before run.started carried it)."""


class RunEndFact(NamedTuple):
    """An explicit run.completed, run.failed or run.cancelled."""

    order: RunOrder
    type: str
    output: str = ""
    error_type: str = ""
    error_message: str = ""
    error_stack: str = ""

    @property
    def ts(self) -> datetime:
        return self.order[2]


class PauseFact(NamedTuple):
    """The latest run.interrupted or run.resumed."""

    order: EventOrder
    interrupted: bool


# --- state -------------------------------------------------------------------------------------


@dataclass(slots=True)
class StepState:
    """One step of a run: its winner, its start, and what is derived from them."""

    events: int
    """Distinct events of this step folded so far: the step row's version."""
    updated_at: datetime
    """Latest ts among them."""
    winner: StepFact
    status: StepStatus
    """Derived from `winner`; kept because the run's counters are updated from its changes."""
    started: StartFact | None = None
    """The earliest step.started of the winning attempt (None if that attempt's start is not
    known: a record_step that only said "success", or a start still in flight)."""
    last_start: StartFact | None = None
    """The latest step.started of any attempt: where the step's kind comes from."""
    deadline_at: datetime | None = None
    """When a running step becomes stuck (None if it is not running or has no deadline)."""
    parked: StepFact | None = None
    """The highest (by StepOrder) step.sleeping / step.waiting / step.invoked of the step, of
    any attempt: the step's kind once it has moved on (a sleep has no step.started, and its
    winner becomes the step.completed that woke it)."""

    def copy(self) -> StepState:
        return StepState(
            self.events,
            self.updated_at,
            self.winner,
            self.status,
            self.started,
            self.last_start,
            self.deadline_at,
            self.parked,
        )

    @property
    def kind(self) -> str:
        """Which SDK call made the step (a StepKind value): its latest step.started's kind,
        else the kind of the event that parked it, else `instrumented`."""
        if self.last_start is not None:
            return self.last_start.kind
        parked = self.parked
        if parked is None or parked.parked is None:
            return StepKind.INSTRUMENTED.value
        info = parked.parked
        if isinstance(info, SleepInfo):
            return info.kind
        if isinstance(info, WaitInfo):
            return StepKind.WAIT_FOR_EVENT.value
        return StepKind.RUN_WORKFLOW.value


@dataclass(slots=True)
class RunState:
    """Everything the fold knows about one run. See the module docstring for ownership."""

    project: str
    flow: str
    run_id: str
    updated_at: datetime
    """Latest event ts folded into the run: the rows' updated_at (never a wall clock)."""
    seen: set[str] = field(default_factory=set)
    """Ids of the events folded so far, to drop re-deliveries. Costs about 100 bytes per event
    (a 32-character id plus its set slot) for as long as the run's state is kept: a run of
    10,000 events holds about 1 MB. The run row's version is its size."""
    steps: dict[str, StepState] = field(default_factory=dict)
    first_step_at: datetime | None = None
    """Earliest ts of a step event: when an instrumented run (no run.started) began."""

    scheduled: ScheduledFact | None = None
    started: RunStartFact | None = None
    """The winning run.started (its payload describes the run)."""
    first_started_at: datetime | None = None
    """Earliest ts of a run.started."""
    ended: RunEndFact | None = None
    paused: PauseFact | None = None

    # Derived from the steps and kept current as each step changes, so that the run's status
    # costs O(1) per event instead of a pass over every step.
    failed: set[str] = field(default_factory=set)
    """Steps whose status is `failed` (final)."""
    retrying: set[str] = field(default_factory=set)
    running_deadlines: dict[str, datetime] = field(default_factory=dict)
    """deadline_at of each running step that has one."""
    final_failure_seen: bool = False
    """A step.failed with no retry has been folded, whether or not it still wins its step.
    Unlike the run's status this only ever goes from False to True, which is what lets a
    `missing` row, once written, stay right (see fold._declare_missing)."""

    # From the flow definition, when there is one.
    flow_tag: bytes | None = None
    """Fingerprint of the flow definition the fields below were computed with."""
    incomplete_graph_steps: int = 0
    """Graph steps neither completed nor skipped; the graph is done at 0."""
    missing: set[str] = field(default_factory=set)
    """Graph steps that never reported and are past the point where they should have."""

    # Caches, invalidated when what they summarise changes; not part of the state's value.
    earliest_failed_cache: str | None = field(default=None, compare=False, repr=False)
    graph_finished_cache: datetime | None = field(default=None, compare=False, repr=False)
    """Latest finish among the graph's steps, once they are all done; None: not known yet."""
    deadline_heap: list[tuple[datetime, str]] = field(
        default_factory=list, compare=False, repr=False
    )
    """A min-heap over running_deadlines, with stale entries dropped lazily, so that the
    earliest deadline costs O(log n) even when steps finish in the order they started (each
    finish removing the minimum). Not stored: rebuilt from running_deadlines on load."""

    pending_rows: set[str | None] | None = field(default=None, compare=False, repr=False)
    """Keys whose rows changed while rows are deferred (`fold.apply_event(defer_rows=True)`):
    step keys, and None for the run's row; None when rows are not deferred. Not stored."""

    position: tuple[int, int] | None = field(default=None, compare=False)
    """(partition, offset) of the newest event folded into the state, set by the host (the
    fold knows no offsets), stored with the state: the log position a `resume_run` built from
    this state reflects (the timer service's retries). Not part of the state's value: replay and
    the tests fold without it."""

    @property
    def version(self) -> int:
        """Distinct events folded into the run: the run row's version."""
        return len(self.seen)

    def copy(self) -> RunState:
        """An independent copy (facts are immutable and shared)."""
        return RunState(
            project=self.project,
            flow=self.flow,
            run_id=self.run_id,
            updated_at=self.updated_at,
            seen=set(self.seen),
            steps={key: step.copy() for key, step in self.steps.items()},
            first_step_at=self.first_step_at,
            scheduled=self.scheduled,
            started=self.started,
            first_started_at=self.first_started_at,
            ended=self.ended,
            paused=self.paused,
            failed=set(self.failed),
            retrying=set(self.retrying),
            running_deadlines=dict(self.running_deadlines),
            final_failure_seen=self.final_failure_seen,
            flow_tag=self.flow_tag,
            incomplete_graph_steps=self.incomplete_graph_steps,
            missing=set(self.missing),
            earliest_failed_cache=self.earliest_failed_cache,
            graph_finished_cache=self.graph_finished_cache,
            deadline_heap=list(self.deadline_heap),
            pending_rows=None if self.pending_rows is None else set(self.pending_rows),
            position=self.position,
        )

    def to_bytes(self) -> bytes:
        """The state as stored in the processors' table: a format header, then a pickle.

        Pickle because the state is only ever read back by this code (it is not a wire format
        and never leaves the processors' own changelog). What is pickled is the state spelled in
        builtins (tuples, dicts, sets, str, int, datetime): pickle encodes those in C, while
        every dataclass, NamedTuple or enum costs it a call back into Python, which made a
        10-event run take 47 us instead of 9. The host stores each run it touched after every
        batch, so this is on the hot path.
        """
        return _MAGIC + bytes((STATE_FORMAT,)) + pickle.dumps(
            _state_to_builtins(self), pickle.HIGHEST_PROTOCOL
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> RunState:
        """Read what `to_bytes` wrote; StateFormatError for anything else or another format."""
        if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 1:
            raise StateFormatError(
                f"RunState bytes: expected the {_MAGIC!r} header, got {bytes(data[:8])!r}"
            )
        found = data[len(_MAGIC)]
        if found not in (1, 2, STATE_FORMAT):
            raise StateFormatError(
                f"RunState bytes: format {found}, expected {STATE_FORMAT} (STATE_FORMAT), 2 or 1; "
                "state written by another build cannot be read, rebuild it by replaying the log"
            )
        try:
            values = pickle.loads(data[len(_MAGIC) + 1 :])
            if found == 1:
                values = _upgrade_from_format_1(values)
            return _state_from_builtins(values)
        except Exception as exc:
            raise StateFormatError(f"RunState bytes: format {found} but unreadable: {exc}") from exc


# --- the stored form: the state in builtins ------------------------------------------------------
# Field by field, in declaration order; the caches are left out (they are rebuilt on demand).
# A change to any field or fact here is a change of STATE_FORMAT.

_PARKED_TYPES: Final[tuple[type[SleepInfo] | type[WaitInfo] | type[InvokeInfo], ...]] = (
    SleepInfo,
    WaitInfo,
    InvokeInfo,
)
_STEP_STATUSES: Final = {status.value: status for status in StepStatus}


def _step_fact_to_builtins(fact: StepFact) -> tuple[Any, ...]:
    parked = fact.parked
    if parked is None:
        return (*fact[:-1], None)
    return (*fact[:-1], (_PARKED_TYPES.index(type(parked)), *parked))


def _step_fact_from_builtins(values: tuple[Any, ...]) -> StepFact:
    parked = values[-1]
    if parked is None:
        return StepFact._make(values)
    return StepFact._make((*values[:-1], _PARKED_TYPES[parked[0]]._make(parked[1:])))


def _heap_of(deadlines: dict[str, datetime]) -> list[tuple[datetime, str]]:
    heap = [(deadline, key) for key, deadline in deadlines.items()]
    heapq.heapify(heap)
    return heap


def _state_to_builtins(state: RunState) -> tuple[Any, ...]:
    return (
        state.project,
        state.flow,
        state.run_id,
        state.updated_at,
        state.seen,
        {
            key: (
                step.events,
                step.updated_at,
                _step_fact_to_builtins(step.winner),
                step.status.value,
                None if step.started is None else tuple(step.started),
                None if step.last_start is None else tuple(step.last_start),
                step.deadline_at,
                None if step.parked is None else _step_fact_to_builtins(step.parked),
            )
            for key, step in state.steps.items()
        },
        state.first_step_at,
        None if state.scheduled is None else tuple(state.scheduled),
        None if state.started is None else tuple(state.started),
        state.first_started_at,
        None if state.ended is None else tuple(state.ended),
        None if state.paused is None else tuple(state.paused),
        state.failed,
        state.retrying,
        state.running_deadlines,
        state.final_failure_seen,
        state.flow_tag,
        state.incomplete_graph_steps,
        state.missing,
        state.position,
    )


def _state_from_builtins(values: tuple[Any, ...]) -> RunState:
    (
        project,
        flow,
        run_id,
        updated_at,
        seen,
        steps,
        first_step_at,
        scheduled,
        started,
        first_started_at,
        ended,
        paused,
        failed,
        retrying,
        running_deadlines,
        final_failure_seen,
        flow_tag,
        incomplete_graph_steps,
        missing,
        position,
    ) = values
    return RunState(
        project=project,
        flow=flow,
        run_id=run_id,
        updated_at=updated_at,
        seen=seen,
        steps={
            key: StepState(
                events,
                step_updated_at,
                _step_fact_from_builtins(winner),
                _STEP_STATUSES[status],
                None if start is None else StartFact(*start),
                None if last_start is None else StartFact(*last_start),
                deadline_at,
                None if parked is None else _step_fact_from_builtins(parked),
            )
            for key, (
                events,
                step_updated_at,
                winner,
                status,
                start,
                last_start,
                deadline_at,
                parked,
            ) in steps.items()
        },
        first_step_at=first_step_at,
        scheduled=None if scheduled is None else ScheduledFact(*scheduled),
        started=None if started is None else RunStartFact(*started),
        first_started_at=first_started_at,
        ended=None if ended is None else RunEndFact(*ended),
        paused=None if paused is None else PauseFact(*paused),
        failed=failed,
        retrying=retrying,
        running_deadlines=running_deadlines,
        deadline_heap=_heap_of(running_deadlines),
        final_failure_seen=final_failure_seen,
        flow_tag=flow_tag,
        incomplete_graph_steps=incomplete_graph_steps,
        missing=missing,
        position=position,
    )


def _upgrade_from_format_1(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """Format 1's builtins in format 2's layout: a sleep's kind `sleep`, no parked fact per
    step (the kind of a sleep that has already woken is then `instrumented`), no scheduled app,
    no position."""

    def fact(winner: tuple[Any, ...]) -> tuple[Any, ...]:
        parked = winner[-1]
        if parked is not None and parked[0] == 0 and len(parked) == 2:  # SleepInfo(wake_at)
            return (*winner[:-1], (*parked, "sleep"))
        return winner

    steps = {
        key: (*step[:2], fact(step[2]), *step[3:], None) for key, step in values[5].items()
    }
    scheduled = values[7]
    return (
        *values[:5],
        steps,
        values[6],
        None if scheduled is None else (*scheduled, ""),
        *values[8:],
        None,
    )
