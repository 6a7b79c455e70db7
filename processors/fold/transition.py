"""What one new event changed in its run: the record the state update returns.

`apply_event` folds an event not seen before in one pass: the state update (`steps.
apply_step_event` for a step event, `run._apply_run_event` for a run event) changes the state
and returns a `Transition`, which `run_rows.transition_rows` turns into rows and
`workflow.engine_effects` into engine effects. Whatever those need of the state *before* the
event is in the transition; everything else they read from the state after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from steplog.schemas.events import RunEvent, StepEvent

from .effects import SetTimer, TimerKind
from .state import StepFact

__all__ = ["RunTransition", "StepTransition", "Timers", "Transition"]

Timers = Mapping[tuple[TimerKind, str], SetTimer]
"""Timers by (kind, step_key): a run holds at most one of each."""


# Built positionally, in the fields' order (the base's first): once per event, on the hot path.
@dataclass(slots=True)
class _Change:
    """What any new event changed."""

    missing: list[str]
    """Steps that became missing with the event, in the order they were declared."""
    timers_before: Timers
    """The timers the event can change, as the run wanted them before it."""
    timers_after: Timers
    """The same timers as the run wants them after it."""


@dataclass(slots=True)
class StepTransition(_Change):
    """A step event folded: its step's winner before and after it (the same object when the
    event did not win the step). Its timers are the run's start timer and the step's."""

    event: StepEvent
    old_winner: StepFact | None
    """None: the step's first report."""
    winner: StepFact


@dataclass(slots=True)
class RunTransition(_Change):
    """A run event folded: whether it is the run's first run.started or its first end
    (run.completed / run.failed / run.cancelled). Its timers are every timer of the run."""

    event: RunEvent
    first_start: bool
    first_end: bool


Transition = StepTransition | RunTransition
"""What one new event changed in its run."""
