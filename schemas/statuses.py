"""Run and step statuses: the one vocabulary every layer uses.

Three kinds of status share the enums, by who decides them:

- *Reported* statuses are sent on the wire (by the SDK, the ingest API, a worker) and stored as
  the fold derives them from events in the `runs` / `steps` tables.
- `missing` (steps only) is derived by the fold from the flow graph: a step of the graph that
  never reported, once a step downstream of it has reported or the run has ended. Nobody sends
  it; the fold stores it in `steps` like a reported status, and replaces it with the step's
  real row if the step reports later (the fold's module doc, "Missing steps").
- `overdue` and `stuck` are computed by the views at query time from a stored status plus the
  clock; they are never sent and never stored, so that a row does not have to be rewritten
  merely because time passed.

`DERIVED_RUN_STATUSES` / `DERIVED_STEP_STATUSES` are the ones nobody may send (the last two
kinds).
"""

from __future__ import annotations

from enum import StrEnum

from .errors import InvalidEventError


class RunStatus(StrEnum):
    """The status of one run (one execution of a flow or workflow)."""

    SCHEDULED = "scheduled"
    RUNNING = "running"
    RETRYING = "retrying"
    """A step failed transiently and the run is waiting for its next attempt."""
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    """Paused by the platform (e.g. a worker restart); resumable."""
    EXPIRED = "expired"
    """A scheduled start that came too late (its `expires_after`, or a missed cron tick) and
    was not run: its `run.cancelled` says `expired`."""

    OVERDUE = "overdue"
    """Computed by the views, never sent nor stored: `scheduled` with its start time past."""
    STUCK = "stuck"
    """Computed by the views, never sent nor stored: a step is running past its deadline."""


class StepStatus(StrEnum):
    """The status of one step of a run: the run's statuses minus `cancelled` and `expired`,
    plus `skipped`."""

    SCHEDULED = "scheduled"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    SKIPPED = "skipped"
    """Intentionally not executed in this run (`run.skip`), as opposed to missing."""

    MISSING = "missing"
    """Derived by the fold from the flow graph and stored, never sent: in the graph but never
    reported in this run (module doc)."""
    STUCK = "stuck"
    """Computed by the views, never sent nor stored: running past its deadline."""


DERIVED_RUN_STATUSES = frozenset({RunStatus.OVERDUE, RunStatus.STUCK})
DERIVED_STEP_STATUSES = frozenset({StepStatus.MISSING, StepStatus.STUCK})
ENDED_RUN_STATUSES = frozenset(
    {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.EXPIRED}
)
"""A run in one of these has ended: nothing it does changes any more."""

# The SDK vocabularies of the products we imitate (Failpath's running/success/error, the
# pending/succeeded of step timelines) map onto ours, so `record_step(status="success")` works.
_STEP_STATUS_ALIASES: dict[str, StepStatus] = {
    "success": StepStatus.COMPLETED,
    "succeeded": StepStatus.COMPLETED,
    "error": StepStatus.FAILED,
    "pending": StepStatus.SCHEDULED,
}

_ACCEPTED_STEP_STATUSES: dict[str, StepStatus] = {
    **{s.value: s for s in StepStatus if s not in DERIVED_STEP_STATUSES},
    **_STEP_STATUS_ALIASES,
}


def parse_step_status(value: str) -> StepStatus:
    """Read a step status a caller reported, in ours or a seed SDK's words (case-insensitive).

    Derived statuses are refused: a caller that reports `missing` or `stuck` would freeze in a
    row what only the flow graph or the clock can decide.
    """
    word = value.strip().lower()
    status = _ACCEPTED_STEP_STATUSES.get(word)
    if status is not None:
        return status
    expected = ", ".join(_ACCEPTED_STEP_STATUSES)
    if word in {s.value for s in DERIVED_STEP_STATUSES}:
        raise InvalidEventError(
            "status",
            f"{value!r} is derived by Steplog (from the flow graph or the clock) and never "
            f"sent; expected one of {expected}",
        )
    raise InvalidEventError("status", f"unknown status {value!r}; expected one of {expected}")
