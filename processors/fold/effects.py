"""What the fold asks its host to do: the effects `apply_event` returns beside the new state.

The fold never performs an effect; it describes one, and the host (`fold_host.FoldHost`, or replay)
carries it out. Two families:

- **rows** (`RunRowChanged`, `StepRowChanged`): projection changes. Idempotent by construction:
  a row carries its version, so writing the same row twice (a host that crashed after writing
  and before committing its offset) changes nothing, and ReplacingMergeTree keeps the highest
  version per key whatever the order of the writes. Replay writes these and nothing else.
- **engine** effects of durable workflows: `SendCommand` (a command for a worker),
  `SetTimer` / `ClearTimer` (the run's due times), `WriteEvent` (an event for *another* run),
  `WriteSignalsMessage` (bookkeeping on the signals topic) and `EndParentStep` (a child run
  ended; the host completes its parent's step). Each message they produce carries an id derived
  from what it is about (`steplog.schemas.ids`), so one carried out twice (a batch delivered
  again after a crash) is a duplicate its consumer drops. Replay ignores them: rebuilding the
  tables must never start, resume or cancel anything.

The fold emits engine effects only for events it has not seen: a re-delivered event gives its
rows again and nothing else. A timer effect's run is the run of the event folded (the host
knows it); every other effect names its run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import JsonValue

from steplog.schemas.base import ErrorInfo
from steplog.schemas.commands import Command
from steplog.schemas.events import Event
from steplog.schemas.signals import SignalsMessage

from .rows import RunRow, StepRow

__all__ = [
    "AppResolution",
    "ClearTimer",
    "Effect",
    "EndParentStep",
    "ParentStep",
    "RunKey",
    "RunRowChanged",
    "SendCommand",
    "SetTimer",
    "StepKey",
    "StepRowChanged",
    "TimerKind",
    "WriteEvent",
    "WorkflowRunEnded",
    "WriteSignalsMessage",
    "latest_rows",
]


@dataclass(frozen=True, slots=True)
class RunRowChanged:
    """Write this row to `runs` (it supersedes every row of the run with a lower version)."""

    row: RunRow


@dataclass(frozen=True, slots=True)
class StepRowChanged:
    """Write this row to `steps` (it supersedes every row of the step with a lower version)."""

    row: StepRow


# --- engine effects ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AppResolution:
    """How the host picks the app of a `start_run` from the workflow registry.

    `preferred` first (the calling app of a child run; '' for none), then any other app that
    defines the workflow (the first by name, so the choice does not depend on arrival order);
    `exact`: `preferred` only (a `run_workflow` that named its app).
    """

    preferred: str
    exact: bool


@dataclass(frozen=True, slots=True)
class ParentStep:
    """The `run_workflow` step that started a child run: where the child's outcome goes."""

    project: str
    flow: str
    run_id: str
    step_key: str
    attempt: int


@dataclass(frozen=True, slots=True)
class SendCommand:
    """Send `command` to the commands topic (key: its run_id).

    A `resume_run` of the run being folded has its history filled from the state after the
    event; the host stamps `history_partition` / `history_offset` with that event's position.
    With `resolve_app`, the host chooses the command's app from the registry first; with
    `parent` (a child run), when no app defines the workflow (or the command is too large) it
    fails that step instead of sending anything. A `start_run` of a workflow with flow control
    goes to the flow topic instead, unless `admitted` (flow control let it go: sent as it is).
    """

    command: Command
    resolve_app: AppResolution | None = None
    parent: ParentStep | None = None
    admitted: bool = False


class TimerKind(StrEnum):
    """What a due time means, and so what the timer service writes when it is reached."""

    WAKE = "wake"
    """A sleep's wake_at: step.completed of the sleep step (events topic)."""
    RETRY = "retry"
    """A failed step's retry_at: resume_run (commands topic)."""
    START = "start"
    """A scheduled run's start_at: start_run (commands topic)."""
    WAIT_TIMEOUT = "wait_timeout"
    """A wait's timeout_at: wait.ended(timeout) (signals topic, the name's partition)."""


@dataclass(frozen=True, slots=True)
class SetTimer:
    """The run wants `kind` of `step_key` ('' for the run's start) due at `due`: one timer per
    (kind, step_key); setting it again replaces it. `attempt` is the step attempt it is about
    (it goes into the derived id of what the timer writes)."""

    kind: TimerKind
    step_key: str
    attempt: int
    due: datetime


@dataclass(frozen=True, slots=True)
class ClearTimer:
    """The run no longer wants this timer (its step moved on, or the run ended)."""

    kind: TimerKind
    step_key: str


@dataclass(frozen=True, slots=True)
class WriteEvent:
    """Write `event` to the events topic (key: its run_id); it is about another run than the one
    folded (a child to cancel) or is folded later like any other (a wait resolved)."""

    event: Event


@dataclass(frozen=True, slots=True)
class WriteSignalsMessage:
    """Write `message` to the signals topic (key: its event name)."""

    message: SignalsMessage


@dataclass(frozen=True, slots=True)
class EndParentStep:
    """A child run ended: complete its parent's `run_workflow` step with `output`, or fail it
    with `error`, writing the event with the id `derived_id("child-end", child_run_id)` (one
    outcome per child, whoever writes it first).

    The child's `run.started` names the parent's run, workflow (`flow`) and step attempt, so
    whichever process folds the child's end can write it. A child started before run.started
    carried the workflow and attempt (`parent_flow` '', `parent_step_attempt` 0) is reported
    through the host's index instead, built from the parents' states at each recovery
    (`Dispatcher.remember_parents`): only a process that holds the parent's partition knows.
    """

    project: str
    parent_run_id: str
    parent_step_key: str
    child_run_id: str
    output: JsonValue
    error: ErrorInfo | None
    ts: datetime
    parent_flow: str = ""
    parent_step_attempt: int = 0


@dataclass(frozen=True, slots=True)
class WorkflowRunEnded:
    """A workflow run ended (its first run.completed, run.failed or run.cancelled). When its
    workflow counts running runs (flow control), the host frees the run's slot: the start's
    key is read again from its input and trigger, as it was when the run was held back."""

    project: str
    app: str
    workflow: str
    run_id: str
    input_json: str
    """The run's input as JSON text (as the state keeps it: decoded only if needed)."""
    trigger_event: str
    trigger_event_id: str
    ts: datetime
    reason: str


Effect = (
    RunRowChanged
    | StepRowChanged
    | SendCommand
    | SetTimer
    | ClearTimer
    | WriteEvent
    | WriteSignalsMessage
    | EndParentStep
    | WorkflowRunEnded
)
"""Every effect the fold can return."""

RunKey = tuple[str, str, str]
"""(project, flow, run_id): the key of a `runs` row."""
StepKey = tuple[str, str, str, str]
"""(project, flow, run_id, step_key): the key of a `steps` row."""


def latest_rows(
    effects: Iterable[Effect],
) -> tuple[dict[RunKey, RunRow], dict[StepKey, StepRow]]:
    """The last row per key among `effects`, in their order: what a batch needs to write.

    Within one fold the last row of a key is also its highest version (versions never go down
    along the effects of one run), so writing only these loses nothing. Engine effects are
    skipped.
    """
    runs: dict[RunKey, RunRow] = {}
    steps: dict[StepKey, StepRow] = {}
    for effect in effects:
        if isinstance(effect, RunRowChanged):
            run = effect.row
            runs[(run.project, run.flow, run.run_id)] = run
        elif isinstance(effect, StepRowChanged):
            step = effect.row
            steps[(step.project, step.flow, step.run_id, step.step_key)] = step
    return runs, steps
