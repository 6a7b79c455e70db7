"""What the fold asks its host to do: the effects `apply_event` returns beside the new state.

The fold never performs an effect; it describes one, and the host (a faust agent, or replay)
carries it out. Today every effect is a projection change. Durable workflows will add timers
(wake a sleeping step, retry a failed one), commands (start or resume a run) and waits; each
becomes one more frozen dataclass in the `Effect` union, and a host that meets one it does not
handle should fail loudly rather than drop it.

Effects are idempotent by construction: a row carries its version, so writing the same row twice
(a host that crashed after writing and before committing its offset) changes nothing, and
ReplacingMergeTree keeps the highest version per key whatever the order of the writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .rows import RunRow, StepRow

__all__ = ["Effect", "RunKey", "RunRowChanged", "StepKey", "StepRowChanged", "latest_rows"]


@dataclass(frozen=True, slots=True)
class RunRowChanged:
    """Write this row to `runs` (it supersedes every row of the run with a lower version)."""

    row: RunRow


@dataclass(frozen=True, slots=True)
class StepRowChanged:
    """Write this row to `steps` (it supersedes every row of the step with a lower version)."""

    row: StepRow


Effect = RunRowChanged | StepRowChanged
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
    along the effects of one run), so writing only these loses nothing.
    """
    runs: dict[RunKey, RunRow] = {}
    steps: dict[StepKey, StepRow] = {}
    for effect in effects:
        if isinstance(effect, RunRowChanged):
            run = effect.row
            runs[(run.project, run.flow, run.run_id)] = run
        else:
            step = effect.row
            steps[(step.project, step.flow, step.run_id, step.step_key)] = step
    return runs, steps
