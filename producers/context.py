"""The workflow context: what a workflow function receives (`ctx.run_id`, `ctx.event`, ...)
and its durable steps, `ctx.step.*`.

Each step is carried out by the pass of the run that called the function (producers.run_pass;
the step kinds in producers.step_run and producers.parking_steps).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeAlias

from pydantic import JsonValue

from steplog.schemas.events import StepKind
from steplog.schemas.flows import RetryPolicy

from steplog.durations import Duration, Instant, duration_ms, instant
from .parking_steps import emit_step, invoke_step, sleep_step, wait_step
from .patches import deprecate_patch, patched
from .step_run import NO_INPUT, run_step

if TYPE_CHECKING:
    from .history import RunStart
    from .run_pass import RunPass

__all__ = ["StepTools", "TriggerEvent", "WorkflowContext", "WorkflowFunction"]

WorkflowFunction: TypeAlias = Callable[["WorkflowContext"], Awaitable[Any]]


@dataclass(frozen=True)
class TriggerEvent:
    """`ctx.event`: the signal that started the run (`name`, `data`, its event `id`), or, for a
    run started directly (client.start, run_workflow, a retrigger), its input as `data`."""

    name: str | None
    data: JsonValue
    id: str | None = None

    @classmethod
    def of_start(cls, start: RunStart) -> TriggerEvent:
        """`ctx.event` of a run started as `start` (its run.started)."""
        trigger = start.trigger
        return cls(
            name=trigger.name if trigger else None,
            data=start.input,
            id=trigger.event_id if trigger else None,
        )

    def as_document(self) -> dict[str, JsonValue]:
        """The event as a JSON object: where a wait's `match` path is looked up."""
        return {"name": self.name, "data": self.data}


class WorkflowContext:
    """What a workflow function receives: the run's identity, its trigger event, its steps."""

    def __init__(self, run: RunPass) -> None:
        self._run = run
        self.run_id: str = run.run_id
        self.workflow: str = run.workflow
        self.app: str = run.app
        self.project: str = run.project
        self.runner: str | None = run.runner
        """The runner name of the worker executing this pass (None outside a worker)."""
        self.event: TriggerEvent = run.event
        self.step: StepTools = StepTools(run)

    def patched(self, patch_id: str) -> bool:
        """Whether this run takes the new path of a code change: True for runs that reach
        this call under the new code (a marker step `patched:<id>` is recorded), False for
        runs that went past it under the old code (producers.patches; docs/workflows.md)."""
        return patched(self._run, patch_id)

    def deprecate_patch(self, patch_id: str) -> None:
        """The old path of `patch_id` is deleted: runs that took the new one go on replaying;
        a run that took the old one fails with NonDeterminismError (producers.patches)."""
        deprecate_patch(self._run, patch_id)

    def __repr__(self) -> str:
        return f"WorkflowContext(workflow={self.workflow!r}, run_id={self.run_id!r})"


class StepTools:
    """`ctx.step`: the durable steps. The first argument of each is the step's id, unique in
    the run and stable across passes (it keys the saved result)."""

    def __init__(self, run: RunPass) -> None:
        self._run = run

    async def run(
        self,
        step_id: str,
        fn: Callable[..., Any],
        /,
        *,
        input: JsonValue = NO_INPUT,
        retries: RetryPolicy | None = None,
    ) -> Any:
        """Run `fn` once and return its (JSON) result; later passes return the saved result.

        With `input=`, the input is recorded on the step and handed to fn: `fn(input)`; else
        `fn()`. An `async def` fn is awaited; a plain one runs in a thread, so parallel
        branches overlap. A failure is retried by the workflow's policy (or `retries`);
        when attempts run out, StepFailedError is raised here.
        """
        return await run_step(self._run, step_id, fn, input, retries)

    async def sleep(self, step_id: str, duration: Duration) -> None:
        """Pause the run durably for `duration` ("10s", "5m", "1h", "250ms", or ms)."""
        ms = duration_ms(duration)
        wake_at = self._run.now() + timedelta(milliseconds=ms)
        shown: JsonValue = duration if isinstance(duration, (str, int, float)) else ms
        await sleep_step(self._run, step_id, StepKind.SLEEP, wake_at, {"duration": shown})

    async def sleep_until(
        self, step_id: str, at: Instant, *, expires_after: Duration | None = None
    ) -> None:
        """Pause the run durably until `at` (an aware datetime, ISO 8601 string, epoch ms);
        a time already past returns at once. With `expires_after` ("1h", ms), a wake-up later
        than that after `at` (an outage) ends the run `expired` instead of going on late."""
        wake_at = instant(at)
        expires_after_ms = (
            None if expires_after is None else duration_ms(expires_after, field="expires_after")
        )
        await sleep_step(
            self._run, step_id, StepKind.SLEEP_UNTIL, wake_at, {"until": wake_at.isoformat()},
            expires_after_ms,
        )

    async def wait_for_event(
        self,
        step_id: str,
        *,
        event: str,
        timeout: Duration | None = None,
        match: str | None = None,
        if_: str | None = None,
    ) -> JsonValue:
        """Park until a signal named `event` arrives (the signal's data is returned), or until
        `timeout` elapses (None is returned; no timeout waits forever). With `match`, e.g.
        "data.order_id", only a signal with the trigger event's value at that path counts.
        With `if_`, a CEL condition on the signal, e.g. "event.data.amount > 100 and
        event.data.currency == 'EUR'", only a signal meeting it counts (ExpressionError here
        for one that cannot be compiled). Only signals sent after the run parked count (they
        are not retained)."""
        timeout_ms = None if timeout is None else duration_ms(timeout, field="timeout")
        return await wait_step(self._run, step_id, event, timeout, timeout_ms, match, if_)

    async def run_workflow(
        self,
        step_id: str,
        *,
        name: str,
        data: JsonValue = None,
        app: str | None = None,
        runner: str | None = None,
    ) -> JsonValue:
        """Start workflow `name` as a child run with `data` as its input, park until it ends,
        and return its output; its failure raises ChildRunFailedError here. Without `app`,
        the name is resolved in this run's app first, then in any other. With `runner`, only
        the target app's workers of that runner name (`steplog worker --runner NAME`) execute
        the child; it waits for them, shown `overdue` while none is running."""
        return await invoke_step(self._run, step_id, name, data, app, runner)

    async def emit(
        self, step_id: str, *, name: str, data: JsonValue = None, app: str | None = None
    ) -> None:
        """Send a signal named `name` (once, however often the run is replayed): it starts
        the workflows triggered by it (only `app`'s, when given) and resumes waiting runs."""
        await emit_step(self._run, step_id, name, data, app)
