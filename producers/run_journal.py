"""The journal of a run as one pass sees it: each step's record (its memoized result), which
steps this pass has asked for, and the checks that the workflow's code still asks for the
steps its history holds (else NonDeterminismError, which fails the run even if caught)."""

from __future__ import annotations

from typing import NoReturn

from steplog.errors import NonDeterminismError, StepFailedError, WorkflowError
from steplog.schemas.base import ErrorInfo
from steplog.schemas.commands import StepRecord
from steplog.schemas.events import StepKind
from steplog.schemas.limits import CONTROL_CHARACTER, NAME_MAX_CHARS
from steplog.schemas.statuses import StepStatus

from .history import RunHistory
from .patches import MARKER_PREFIX, patch_of

__all__ = ["RunJournal", "check_step_id", "failed_error"]


class RunJournal:
    """`steps`: each step's record as this pass left it (its own outcomes included)."""

    def __init__(self, history: RunHistory, run_id: str) -> None:
        self.steps: dict[str, StepRecord] = dict(history.steps)
        self._run_id = run_id
        self._visited: set[str] = set()
        self.fatal: NonDeterminismError | None = None
        self.patches: dict[str, bool] = {}
        """Each patch's answer in this pass (producers.patches): the first one holds."""

    def visit(self, step_id: str, kind: StepKind) -> StepRecord | None:
        """The pass asks for a step: its record (None: new), once per pass and of its kind."""
        if step_id in self._visited:
            self.fail_fatally(
                f"step id {step_id!r} is used twice in one pass of run {self._run_id}; a step "
                "id must be unique in its run (derive it from stable data, e.g. "
                "f'charge-{order_id}')"
            )
        self._visited.add(step_id)
        record = self.steps.get(step_id)
        if record is not None and record.kind is not kind:
            self.fail_fatally(
                f"step {step_id!r}: this pass asks for a {kind.value} step where the run's "
                f"history has a {record.kind.value} step {step_id!r}; the workflow's code "
                "changed under a run in flight"
            )
        return record

    def unvisited(self) -> list[str]:
        """The history's steps this pass has not asked for (yet)."""
        return [key for key in self.steps if key not in self._visited]

    def unvisited_completed(self) -> list[str]:
        return [
            key
            for key, record in self.steps.items()
            if record.status is StepStatus.COMPLETED and key not in self._visited
        ]

    def fail_new_step(self, step_id: str, kind: StepKind, unvisited: list[str]) -> NoReturn:
        shown = ", ".join(f"{key!r} ({self.steps[key].kind.value})" for key in unvisited)
        patches = [patch for key in unvisited if (patch := patch_of(key)) is not None]
        hint = "".join(
            f"; the code no longer asks for patch {patch!r}: call "
            f"ctx.deprecate_patch({patch!r}) until the runs that took it have ended"
            for patch in patches
        )
        self.fail_fatally(
            f"this pass asks for a new step {step_id!r} ({kind.value}) where the run's "
            f"history has completed step(s) {shown} that it never asked for: the "
            "workflow's code changed under a run in flight, or it chooses its steps from "
            f"something outside them (the clock, randomness, a read not in a step){hint}"
        )

    def fail_fatally(self, message: str) -> NoReturn:
        self.fatal = NonDeterminismError(message)
        raise self.fatal


def check_step_id(step_id: object) -> None:
    # A step key on the wire (schemas.limits.Name); U+001F also separates ids in derived keys.
    if (not isinstance(step_id, str) or not 1 <= len(step_id) <= NAME_MAX_CHARS
            or CONTROL_CHARACTER.search(step_id)):
        raise WorkflowError(
            f"step id {step_id!r}: expected a string of 1 to {NAME_MAX_CHARS} characters "
            "without control characters"
        )
    if step_id.startswith(MARKER_PREFIX):
        raise WorkflowError(
            f"step id {step_id!r}: ids starting with {MARKER_PREFIX!r} are reserved for the "
            "markers of ctx.patched"
        )


def failed_error(step_id: str, record: StepRecord) -> StepFailedError:
    """What a step that failed for good raises again in every later pass."""
    error = record.error or ErrorInfo(type="Error", message="")
    return StepFailedError(step_id, error.type, error.message, attempt=record.attempt)
