"""Cancel on event: what a worker registers for a run of a workflow declared with
`cancel_on=[CancelOn(event="order.cancelled", match="data.order_id")]`, and releases at its end.

A run of such a workflow is cancelled by the first signal of the event that matches it. When
the worker writes the run's `run.started`, it registers one `wait.registered` per CancelOn on
the signals topic, with `cancels_run` set and the step key `$cancel_on.<index>` (a key no step
can have: step ids are the user's, and this one names no step of the run); its `match_value`
is read from the run's trigger event, as a wait's is. The signals consumer resolves it like a
wait (match and condition: steplog/waits.py) but writes `run.cancelled` (seq 0, so an end the
worker wrote first keeps its place) instead of a step's outcome; the fold then stops the run
as for any cancel: its pass in flight, its timers, waits and children.

When the run ends by its own code (completed or failed), the worker writes
`wait.ended(cancelled)` for each registration, so that they do not pile up in the name's
state. Left registered, until a matching signal removes them (writing a `run.cancelled` after
the run's end, which changes nothing): those of a run that ended otherwise (cancelled by a
client or a parent) or whose worker died between its end and the release.

Ids derive from the run and the registration's index: a start handled twice registers the
same waits (duplicates, dropped), a release written twice is a duplicate too.
"""

from __future__ import annotations

import logging
from datetime import datetime

from pydantic import JsonValue

from steplog.schemas.flows import CancelOn
from steplog.schemas.ids import derived_id, wait_registration_id
from steplog.schemas.signals import WaitEnded, WaitRegistered, resolve_match_path

__all__ = ["CANCEL_ON_STEP_PREFIX", "cancel_registrations", "cancel_releases"]

log = logging.getLogger("steplog.worker")

CANCEL_ON_STEP_PREFIX = "$cancel_on."
"""The step key of a cancel registration: this, then the CancelOn's index."""


def cancel_registrations(
    cancel_on: tuple[CancelOn, ...],
    *,
    project: str,
    app: str,
    workflow: str,
    run_id: str,
    trigger_event: dict[str, JsonValue],
    now: datetime,
) -> list[WaitRegistered]:
    """The registrations of a run that just started; `trigger_event` is the run's trigger
    event as a JSON object ({"name": ..., "data": ...}, as `ctx.event.as_document()`)."""
    registrations: list[WaitRegistered] = []
    for index, rule in enumerate(cancel_on):
        match_value: JsonValue = None
        if rule.match is not None:
            found, match_value = resolve_match_path(trigger_event, rule.match)
            if not found:
                # Nothing can match it: no registration, said once, where the operator looks.
                log.warning("run %s of %s: cancel_on %r: match path %r is not in its trigger "
                            "event; no signal of it can cancel the run", run_id, workflow,
                            rule.event, rule.match)
                continue
        step_key = f"{CANCEL_ON_STEP_PREFIX}{index}"
        registrations.append(
            WaitRegistered(
                event_id=wait_registration_id(run_id, step_key, 1),
                project=project,
                name=rule.event,
                app=app,
                flow=workflow,
                run_id=run_id,
                step_key=step_key,
                match=rule.match,
                match_value=match_value,
                condition=rule.condition,
                cancels_run=True,
                ts=now,
            )
        )
    return registrations


def cancel_releases(
    cancel_on: tuple[CancelOn, ...], *, project: str, workflow: str, run_id: str, now: datetime
) -> list[WaitEnded]:
    """What removes a run's registrations once it has ended by its own code."""
    return [
        WaitEnded(
            event_id=derived_id("cancel_on.ended", run_id, str(index)),
            project=project,
            name=rule.event,
            run_id=run_id,
            flow=workflow,
            step_key=f"{CANCEL_ON_STEP_PREFIX}{index}",
            reason="cancelled",
            ts=now,
        )
        for index, rule in enumerate(cancel_on)
    ]
