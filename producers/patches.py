"""Versioning a workflow's code with runs in flight: `ctx.patched` and `ctx.deprecate_patch`
(Temporal's patching).

    if ctx.patched("new-fee"):
        fee = await ctx.step.run("fee-v2", compute_fee_v2)
    else:
        fee = await ctx.step.run("fee", compute_fee)

A run that reaches the call under the new code records a marker, the step `patched:new-fee`,
and takes the new path, in this pass and in every later one (the marker is in its history).
A run that went past that point under the old code has steps further on in its history that
this pass has not asked for yet: it is replaying, so the call answers False and the run keeps
the old path; nothing is recorded. The first answer of a pass is kept for the rest of it.

Once no run that took the old path is in flight, `ctx.deprecate_patch("new-fee")` replaces the
`if` (the old branch is deleted): it visits the marker of the runs that have one, records it
for new runs (so a rollback to the patched code still replays them), and fails a run that
took the old path with NonDeterminismError. Once no run with the marker is in flight, the call
is deleted too.

The marker is written from a synchronous call: its events are queued on the pass's writes and
go out, acknowledged, before anything else the pass writes (producers.pass_writes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from steplog.errors import WorkflowError
from steplog.schemas.commands import StepRecord
from steplog.schemas.events import (
    StepCompleted,
    StepCompletedPayload,
    StepKind,
    StepStarted,
    StepStartedPayload,
)
from steplog.schemas.limits import CONTROL_CHARACTER, NAME_MAX_CHARS
from steplog.schemas.statuses import StepStatus

if TYPE_CHECKING:
    from .run_pass import RunPass

__all__ = ["MARKER_PREFIX", "deprecate_patch", "marker_key", "patch_of", "patched"]

MARKER_PREFIX: Final = "patched:"
"""Step keys starting with it are patch markers; a workflow's own step ids may not."""


def marker_key(patch_id: object) -> str:
    """The step key of `patch_id`'s marker (WorkflowError for an id that cannot be one)."""
    longest = NAME_MAX_CHARS - len(MARKER_PREFIX)
    if (not isinstance(patch_id, str) or not 1 <= len(patch_id) <= longest
            or CONTROL_CHARACTER.search(patch_id)):
        raise WorkflowError(
            f"patch id {patch_id!r}: expected a string of 1 to {longest} characters without "
            "control characters"
        )
    return MARKER_PREFIX + patch_id


def patch_of(step_key: str) -> str | None:
    """The patch id of a marker's step key; None for any other step."""
    return step_key[len(MARKER_PREFIX):] if step_key.startswith(MARKER_PREFIX) else None


def patched(run: RunPass, patch_id: str) -> bool:
    """Whether this run takes the new path of `patch_id` (module docstring)."""
    key = marker_key(patch_id)
    journal = run.journal
    if journal.fatal is not None:
        raise journal.fatal
    answer = journal.patches.get(patch_id)
    if answer is None:
        if key in journal.steps:
            journal.visit(key, StepKind.RUN)
            answer = True
        else:
            answer = not journal.unvisited()
            if answer:
                _record(run, key, patch_id)
        journal.patches[patch_id] = answer
    return answer


def deprecate_patch(run: RunPass, patch_id: str) -> None:
    """The patch's old path is gone: keep runs with the marker replaying (module docstring)."""
    key = marker_key(patch_id)
    journal = run.journal
    if journal.fatal is not None:
        raise journal.fatal
    if journal.patches.get(patch_id):
        return
    journal.patches[patch_id] = True
    if key in journal.steps:
        journal.visit(key, StepKind.RUN)
        return
    if journal.unvisited():
        journal.fail_fatally(
            f"patch {patch_id!r}: run {run.run_id} reached it under the code from before the "
            "patch and took the old path, which this code removed (deprecate_patch); keep "
            f"`if ctx.patched({patch_id!r}): ... else: ...` until such runs have ended"
        )
    _record(run, key, patch_id)


def _record(run: RunPass, key: str, patch_id: str) -> None:
    writes = run.writes
    run.journal.visit(key, StepKind.RUN)
    writes.write_soon(
        writes.step_event(
            StepStarted, key, 1,
            StepStartedPayload(kind=StepKind.RUN, input={"patch": patch_id}),
        ),
        writes.step_event(StepCompleted, key, 1, StepCompletedPayload(output=True)),
    )
    run.journal.steps[key] = StepRecord(
        kind=StepKind.RUN, status=StepStatus.COMPLETED, attempt=1, output=True
    )
