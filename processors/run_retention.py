"""The `run closed` rule applied to each event as it is folded, live and in replay alike
(`batch_fold.FoldedBatch`): the log's time moves with the event's broker timestamp, and the
event's run is judged by `fold.state_retention.StateRetention` from its end as held (the
state's, or its closed marker's once the state left).

The decision depends only on the records of the run's partition up to the event (their order and
timestamps), never on batch boundaries or on when the store actually dropped a state: a state
past its retention but not yet swept is judged as its marker would be. So replay, which folds the
same records in other batches and never drops a state, dead-letters (counts) the same events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from steplog.errors import InvalidEventError
from steplog.settings import Settings

from .fold.state import RunState
from .fold.state_retention import StateRetention, Verdict

__all__ = [
    "RetainedStates", "RunAdmission", "RunClosedError", "admission_of", "state_retention",
]


class RunClosedError(InvalidEventError):
    """An event for a run that already left the processors' state (dead-lettered). The reason
    is the same words for every run: a metric's label, and what an operator searches for."""

    def __init__(self) -> None:
        super().__init__("run_id", "run closed")


class RetainedStates(Protocol):
    """What the rule reads of a store (`StateStore`, or replay's `HeldStates`)."""

    @property
    def retention(self) -> StateRetention | None: ...
    def advance_log_time(self, partition: int, timestamp_ms: int) -> int: ...
    def ended_at(self, partition: int, state_key: bytes) -> int | None: ...


@dataclass(frozen=True)
class RunAdmission:
    """The rule over one store's states."""

    retention: StateRetention
    states: RetainedStates

    def admit(
        self,
        partition: int,
        timestamp_ms: int,
        state_key: bytes,
        state: RunState | None,
        *,
        in_hand: bool,
    ) -> RunState | None:
        """The state to fold an event read at `timestamp_ms` onto: `state`, or None once the
        run is forgotten (a fresh run). RunClosedError if the run is closed. `in_hand`: the
        state was folded earlier in this batch (its end is its own, the store's is older)."""
        log_ms = self.states.advance_log_time(partition, timestamp_ms)
        ended = state.ended_ms if in_hand and state is not None else (
            self.states.ended_at(partition, state_key)
        )
        verdict = self.retention.verdict(ended, log_ms)
        if verdict is Verdict.CLOSED:
            raise RunClosedError()
        return None if verdict is Verdict.FORGOTTEN else state


def admission_of(states: RetainedStates) -> RunAdmission | None:
    """The rule over `states`, if they are kept with a retention."""
    retention = states.retention
    return None if retention is None else RunAdmission(retention, states)


def state_retention(settings: Settings) -> StateRetention | None:
    """The retention STEPLOG_STATE_RETENTION asks for (None: keep every run's state)."""
    if settings.state_retention_ms is None:
        return None
    return StateRetention(settings.state_retention_ms, settings.state_closed_horizon_ms)
