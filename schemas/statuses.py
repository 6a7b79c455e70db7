"""Run and step statuses: the one vocabulary every layer uses.

Two kinds of status share each enum. *Stored* statuses are what the fold derives from events and
what the `runs` / `steps` tables hold. *Derived* statuses (`overdue`, `stuck`, `missing`) are
computed by the views at query time from a stored status plus the clock or the flow graph; they
are never sent on the wire and never stored, so that a row does not have to be rewritten merely
because time passed.
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

    OVERDUE = "overdue"
    """Derived by the views, never sent: `scheduled` with its start time in the past."""
    STUCK = "stuck"
    """Derived by the views, never sent: a step has been running past its deadline."""


class StepStatus(StrEnum):
    """The status of one step of a run: the run's statuses minus `cancelled`, plus `skipped`."""

    SCHEDULED = "scheduled"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    SKIPPED = "skipped"
    """Intentionally not executed in this run (`run.skip`), as opposed to missing."""

    MISSING = "missing"
    """Derived by the views, never sent: in the flow graph but never reported in this run."""
    STUCK = "stuck"
    """Derived by the views, never sent: running past its deadline."""


DERIVED_RUN_STATUSES = frozenset({RunStatus.OVERDUE, RunStatus.STUCK})
DERIVED_STEP_STATUSES = frozenset({StepStatus.MISSING, StepStatus.STUCK})

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
    row what only the clock or the flow graph can decide.
    """
    word = value.strip().lower()
    status = _ACCEPTED_STEP_STATUSES.get(word)
    if status is not None:
        return status
    expected = ", ".join(_ACCEPTED_STEP_STATUSES)
    if word in {s.value for s in DERIVED_STEP_STATUSES}:
        raise InvalidEventError(
            "status",
            f"{value!r} is derived by the views and never sent; expected one of {expected}",
        )
    raise InvalidEventError("status", f"unknown status {value!r}; expected one of {expected}")
