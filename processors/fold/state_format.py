"""How a `RunState` is stored between batches (in the processors' changelog and replay's
scratch files): a format header, then the state spelled in builtins, pickled.

Pickle because the state is only ever read back by this code (it is not a wire format and never
leaves the processors' own changelog). What is pickled is the state spelled in builtins (tuples,
dicts, sets, str, int, datetime): pickle encodes those in C, while every dataclass, NamedTuple or
enum costs it a call back into Python, which made a 10-event run take 47 us instead of 9. The
host stores each run it touched after every batch, so this is on the hot path.
"""

from __future__ import annotations

import heapq
import pickle
from datetime import datetime
from typing import Any, Final

from steplog.errors import SteplogError
from steplog.projections.created_at import earliest_known
from steplog.schemas.statuses import StepStatus

from .state import (
    InvokeInfo,
    PauseFact,
    RunEndFact,
    RunStartFact,
    RunState,
    ScheduledFact,
    SleepInfo,
    StartFact,
    StepFact,
    StepState,
    WaitInfo,
)

__all__ = ["STATE_FORMAT", "StateFormatError", "state_from_bytes", "state_to_bytes"]

STATE_FORMAT: Final = 6
"""Version of the `RunState.to_bytes` layout. Bump it whenever a field of the state (or of a
fact) changes meaning or shape: bytes of an unknown format are refused instead of being misread.
Older formats are still read: format 5 (no runner in the scheduled and start facts, no
retrigger_of in the scheduled fact: they take the defaults, a run pinned to no runner and no
re-trigger), format 4 (no expires_after_ms in the scheduled fact
and the sleep fact, no schedule in the scheduled fact, no expired in the end fact: they take
their defaults, a start or wake-up that never expires and a run that did not expire), format 3
(no created_at: it reads as the earliest time the run row knows, projections/created_at.py,
the same stand-in as the `runs` rows written before it), format 2 (also no parent flow and
step attempt in the start fact, which then take their defaults), format 1 (also before
durable workflows: no parked fact per step, no scheduled app, no sleep kind, no position),
with what they lack left empty."""

_MAGIC: Final = b"SLRS"


class StateFormatError(SteplogError):
    """Bytes that are not a RunState of the format this build reads."""


def state_to_bytes(state: RunState) -> bytes:
    """The state as stored: a format header, then a pickle of its builtins."""
    return _MAGIC + bytes((STATE_FORMAT,)) + pickle.dumps(
        _state_to_builtins(state), pickle.HIGHEST_PROTOCOL
    )


def state_from_bytes(data: bytes) -> RunState:
        """Read what `to_bytes` wrote; StateFormatError for anything else or another format."""
        if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 1:
            raise StateFormatError(
                f"RunState bytes: expected the {_MAGIC!r} header, got {bytes(data[:8])!r}"
            )
        found = data[len(_MAGIC)]
        if found not in (1, 2, 3, 4, 5, STATE_FORMAT):
            raise StateFormatError(
                f"RunState bytes: format {found}, expected {STATE_FORMAT} (STATE_FORMAT), 5, 4, "
                "3, 2 or 1; state written by another build cannot be read, rebuild it by replaying "
                "the log"
            )
        try:
            values = pickle.loads(data[len(_MAGIC) + 1 :])
            if found == 1:
                values = _upgrade_from_format_1(values)
            if found < 4:
                values = _upgrade_from_format_3(values)
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
    # Called, not _make: a fact of an older format, shorter, takes the defaults of what it lacks.
    return StepFact._make((*values[:-1], _PARKED_TYPES[parked[0]](*parked[1:])))


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
        state.created_at,
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
        created_at,
    ) = values
    return RunState(
        project=project,
        flow=flow,
        run_id=run_id,
        updated_at=updated_at,
        created_at=created_at,
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


def _upgrade_from_format_3(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """Format 3's builtins (or an upgraded 2's or 1's) in format 4's layout: created_at, which
    they lack, is the stand-in the run row's values give (projections/created_at.py): its
    scheduled_for (the scheduled fact's start_at), its started_at (the first run.started, else
    the first step event: as the run row has it) and updated_at."""
    updated_at, first_step_at, scheduled, first_started_at = (
        values[3], values[6], values[7], values[9]
    )
    created_at = earliest_known(
        None if scheduled is None else scheduled[1], first_started_at or first_step_at, updated_at
    )
    return (*values, created_at)
