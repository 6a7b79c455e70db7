"""A run's created_at: the ts of the first event folded, set once (it sorts the run list, where
a value that moved would list the run twice), and stored from state format 4; older formats read
the stand-in the `runs` rows before migration 4 read (projections/created_at.py)."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta
from typing import Any

from steplog.processors.fold.run import apply_event, fold_events
from steplog.processors.fold.run_rows import current_rows
from steplog.processors.fold.state import STATE_FORMAT, RunState
from steplog.projections.created_at import earliest_known
from steplog.schemas.events import (
    RunScheduled,
    RunScheduledPayload,
    StepCompleted,
    StepStarted,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RUN: dict[str, Any] = {"project": "acme", "flow": "checkout", "run_id": "r1"}


def started(event_id: str, minutes: float) -> StepStarted:
    return StepStarted(**RUN, event_id=event_id, seq=1, step_key="a",
                       ts=T0 + timedelta(minutes=minutes))


def completed(event_id: str, minutes: float) -> StepCompleted:
    return StepCompleted(**RUN, event_id=event_id, seq=2, step_key="a",
                         ts=T0 + timedelta(minutes=minutes))


def test_created_at_is_the_first_events_ts_even_when_a_later_one_is_older() -> None:
    state, _ = fold_events([completed("e2", 5)])
    assert state.created_at == T0 + timedelta(minutes=5)
    # record_step from a process whose clock is behind: earlier ts, folded later.
    state, effects = apply_event(state, started("e1", 0))
    assert state.created_at == T0 + timedelta(minutes=5)
    run_row, _ = current_rows(state)
    assert run_row.created_at == T0 + timedelta(minutes=5)
    assert run_row.started_at == T0  # the other times still follow the set of events


def test_created_at_survives_a_copy_and_the_stored_form() -> None:
    state, _ = fold_events([started("e1", 3)])
    assert state.copy().created_at == state.created_at
    assert RunState.from_bytes(state.to_bytes()) == state
    assert STATE_FORMAT >= 4


def format_3(state: RunState) -> bytes:
    """The state as format 3 stored it: the same builtins without created_at (the last)."""
    builtins = pickle.loads(state.to_bytes()[5:])
    return b"SLRS\x03" + pickle.dumps(builtins[:-1])


def test_a_format_3_state_reads_created_at_as_the_earliest_time_its_row_knows() -> None:
    state, _ = fold_events([completed("e2", 5), started("e1", 2)])
    restored = RunState.from_bytes(format_3(state))
    run_row, _ = current_rows(state)
    expected = earliest_known(run_row.scheduled_for, run_row.started_at, run_row.updated_at)
    assert restored.created_at == expected == T0 + timedelta(minutes=2)
    # Set once: folding on from the old state keeps it.
    restored, _ = apply_event(restored, completed("e3", -10))
    assert restored.created_at == expected


def test_a_format_3_state_of_a_run_scheduled_ahead_reads_its_newest_event() -> None:
    scheduled = RunScheduled(**RUN, event_id="s1", seq=1, ts=T0,
                             payload=RunScheduledPayload(start_at=T0 + timedelta(hours=1)))
    state, _ = fold_events([scheduled])
    assert RunState.from_bytes(format_3(state)).created_at == T0
