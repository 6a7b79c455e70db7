"""When a finished run leaves the processors' state (STEPLOG_STATE_RETENTION), as a pure rule on
two numbers: the run's end and the log's time.

The log's time is the newest broker timestamp (ms) of the events read so far in the run's
partition: a function of the log alone, never of the wall clock, so replay (which reads the same
records in the same order) decides exactly what the processors decided. A run's end is its
`finished_at` (the deciding event's ts, as the run row has it) in epoch ms, while the fold calls
it ended (completed, failed or cancelled).

An event for a run is then, by the log's time `now` when it is read:

- `OPEN` while the run has not ended, or `now <= end + retention`: folded as always;
- `CLOSED` while `end + retention < now <= end + retention + horizon`: the run left the state
  (a compact closed marker stands for it, held_states.py) and the event is dead-lettered with
  the reason `run closed`;
- `FORGOTTEN` after that: even the marker is gone (memory stays bounded by the runs that ended
  within `retention + horizon`), so the event starts a run afresh, as any event for an unknown
  run does. Replay forgets at the same point, so it folds the same fresh run.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from steplog.schemas.flows import FlowDefinition
from steplog.schemas.statuses import ENDED_RUN_STATUSES

from .graph import graph_for
from .run_rows import run_outcome
from .state import RunState

__all__ = ["StateRetention", "Verdict", "run_end_ms"]


class Verdict(Enum):
    OPEN = "open"
    CLOSED = "closed"
    FORGOTTEN = "forgotten"


@dataclass(frozen=True)
class StateRetention:
    """How long a finished run's state is kept, and its closed marker after it (ms)."""

    retention_ms: int
    horizon_ms: int

    def __post_init__(self) -> None:
        if self.retention_ms < 0 or self.horizon_ms < 0:
            raise ValueError(
                f"StateRetention({self.retention_ms}, {self.horizon_ms}): expected durations "
                "of 0 ms or more"
            )

    def verdict(self, ended: int | None, log_ms: int) -> Verdict:
        """What an event read at log time `log_ms` is for a run that ended at `ended` (None:
        not ended)."""
        if ended is None or log_ms <= ended + self.retention_ms:
            return Verdict.OPEN
        if log_ms <= ended + self.retention_ms + self.horizon_ms:
            return Verdict.CLOSED
        return Verdict.FORGOTTEN

    def due(self, ended: int, *, marker: bool) -> int:
        """The log time after which a state (or its marker) goes."""
        return ended + self.retention_ms + (self.horizon_ms if marker else 0)


def run_end_ms(state: RunState, flow: FlowDefinition | None) -> int | None:
    """The run's end for the rule (epoch ms of its finished_at) if the fold calls it ended
    with `flow` (the definition it was folded with), else None. The same outcome the run row
    shows (run_rows), so a run is dropped exactly when its row says it ended."""
    status, finished_at, *_ = run_outcome(state, graph_for(state, flow))
    if finished_at is None or status not in ENDED_RUN_STATUSES:
        return None
    return int(finished_at.timestamp() * 1000)
