"""What the fold remembers about one run: `RunState`, and how it is stored between batches.

The state is a *function of the set of events folded into it* (and of the flow definition):
every field is either a set-level fact (the ids seen, min and max timestamps), a winner chosen
by a total order that does not depend on arrival (see `fold`), or something derived from those.
That is what makes live processing, re-delivery and replay from offset 0 agree. The exception
is `created_at`, the first event's ts (its docstring says why, and why live and replay agree).

Events are not stored. Each winning event is reduced to a small immutable fact (a NamedTuple of
plain values: strings, numbers, UTC datetimes) holding its place in the order and the payload
fields the rows need, with JSON values already rendered as text. Facts are never mutated, so a
copy of the state shares them safely.

Ownership: `apply_event` updates the state it is handed *in place* and returns it. A caller
that needs the state before the event as well keeps `state.copy()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

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
    expires_after_ms: int | None = None
    """Woken later than this after wake_at, the run ends expired (fold/schedules.py)."""


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
    expires_after_ms: int | None = None
    """Not started this long after start_at, it ends expired (fold/schedules.py)."""
    schedule: str = ""
    """A cron tick's schedule (CronSchedule as JSON); '' for a run scheduled otherwise."""
    runner: str = ""
    """The runner a pinned child waits for ('' for none): its start_run is already sent, so
    it wants no start timer (fold/workflow.py)."""
    retrigger_of: str = ""
    """The run a held re-trigger re-runs ('' for none; producers/held_starts.py)."""


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
    runner: str = ""
    """The runner the run is pinned to ('' for none): its commands name it."""


class RunEndFact(NamedTuple):
    """An explicit run.completed, run.failed or run.cancelled."""

    order: RunOrder
    type: str
    output: str = ""
    error_type: str = ""
    error_message: str = ""
    error_stack: str = ""
    expired: bool = False
    """A run.cancelled that says the run's start came too late: the run is `expired`."""

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
    created_at: datetime
    """The ts of the first event folded into the run, set with the state and never changed.
    The one field that depends on the order of the events rather than on their set: it is in
    `run_list`'s sorting key, where a value that moved would leave the run listed twice (a
    later event with an earlier ts, from another process's clock, would move a minimum). Live
    processing and replay agree all the same: both fold a run's events in the log's order (one
    partition per run), and a re-delivery continues from a state that already has it."""
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
    `missing` row, once written, stay right (see steps.declare_missing)."""

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

    ended_ms: int | None = field(default=None, compare=False)
    """The run's end (epoch ms of its finished_at) once the fold calls it ended, None before:
    set after each event by the batch fold when a retention is configured
    (fold/state_retention.py), kept beside the state's bytes (the store's index and the
    changelog record's header), not in them. Not part of the state's value."""

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
            created_at=self.created_at,
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
            ended_ms=self.ended_ms,
        )

    def to_bytes(self) -> bytes:
        """The state as stored in the processors' table (fold/state_format.py)."""
        return state_to_bytes(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> RunState:
        """Read what `to_bytes` wrote; StateFormatError for anything else or another format."""
        return state_from_bytes(data)


# Last: state_format reads and builds the classes above (the import would be circular at the
# top); its names are re-exported here, where the state's users look for them.
from .state_format import (  # noqa: E402
    STATE_FORMAT as STATE_FORMAT,
    StateFormatError as StateFormatError,
    state_from_bytes,
    state_to_bytes,
)
