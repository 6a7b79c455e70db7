"""Starts a worker does not carry out itself: those that flow control has to decide first.

A `start_run` written outside the processors (`client.start(..., app=)`, a retrigger) reaches
the workers without passing the processors' flow-control gate (processors/flow_gate.py). When
its workflow's flow control limits starts, the worker does not run it: it writes the run's
`run.scheduled`, due at the start's time, with its app, input and trigger, and the processors
then start it as any scheduled run, through the gate (held back, `scheduled` in
`flow_starts`, until the key's limits let it go, then sent back marked `flow_checked`).

The event's id is derived from the command's, so a start delivered twice writes one event (the
fold drops the copy) and its run is started once: by the processors' start timer, whose
`start_run` carries the timer's own id. The event goes to the events topic, signed like the
worker's other writes, never to the flow-control topic, which only the processors write (its
requests carry commands, and the commands topics are protected by their ACLs alone: README,
Security).

What the scheduled run does not need: a parent (a child's start comes from the processors,
always marked). A re-trigger's `retrigger_of` goes with it to the start_run.
"""

from __future__ import annotations

from steplog.schemas.commands import StartRun
from steplog.schemas.events import RunScheduled, RunScheduledPayload
from steplog.schemas.ids import derived_id

from .workflow import Workflow

__all__ = ["scheduled_instead"]


def scheduled_instead(command: StartRun, workflow: Workflow, app: str) -> RunScheduled | None:
    """The run.scheduled that hands `command` to the processors' gate, or None when the
    worker carries it out itself (already past the gate, or not limited)."""
    control = workflow.flow_control
    if command.flow_checked or control is None or not control.limits_starts:
        return None
    return RunScheduled(
        event_id=derived_id("held-start", command.command_id),
        project=command.project,
        flow=command.workflow,
        run_id=command.run_id,
        ts=command.ts,
        payload=RunScheduledPayload(
            start_at=command.start_at or command.ts, app=command.app or app, input=command.input,
            trigger=command.trigger, retrigger_of=command.retrigger_of,
        ),
    )
