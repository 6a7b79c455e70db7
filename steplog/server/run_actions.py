"""Cancel and re-trigger a run: what `steplog runs cancel | retrigger` and the dashboard's
buttons (`POST /v1/runs/{id}/cancel | retrigger`) do, and when each is refused.

A cancel writes run.cancelled to the events topic (the processors then stop the run's worker,
timers, waits and children); a re-trigger writes a start_run command for the same workflow,
app, input and trigger, recording `retrigger_of`. Both wait for Kafka's acknowledgement, so a
success means the request is in the log, not that the processors have folded it yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from steplog.errors import WorkflowError
from steplog.producers.control import ControlSender
from steplog.producers.control_messages import ControlMessages
from steplog.projections.queries import RunSummary
from steplog.schemas.base import TriggerInfo
from steplog.schemas.statuses import ENDED_RUN_STATUSES
from steplog.record_signer import record_signer
from steplog.settings import Settings

__all__ = ["ActionDone", "RunActions", "check_cancellable", "check_retriggerable"]


def check_cancellable(run_id: str, run: RunSummary) -> None:
    """WorkflowError when there is nothing to cancel."""
    if run.status in ENDED_RUN_STATUSES:
        raise WorkflowError(
            f"run {run_id} of {run.flow!r} already ended ({run.status}); nothing to cancel"
        )


def check_retriggerable(run_id: str, run: RunSummary) -> None:
    """WorkflowError when the run cannot be started again (only workflow runs can)."""
    if not run.app:
        raise WorkflowError(
            f"run {run_id} of {run.flow!r} is not a workflow run (no app recorded); only "
            "runs of durable workflows can be re-triggered"
        )


def trigger_of(run: RunSummary) -> TriggerInfo | None:
    if run.trigger_event and run.trigger_event_id:
        return TriggerInfo(name=run.trigger_event, event_id=run.trigger_event_id)
    return None


@dataclass(frozen=True)
class ActionDone:
    run_id: str
    """The run acted on, or the new run a re-trigger started."""
    message: str


class RunActions:
    """The web service's actions, over one Kafka producer for the life of the process."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._sender = ControlSender(
            settings.kafka_bootstrap, max_event_bytes=settings.max_event_bytes,
            signer=record_signer(settings),
        )

    def _messages(self, project: str) -> ControlMessages:
        topics = self._settings.topics
        return ControlMessages(project, topics, topics.events, self._settings.max_event_bytes)

    async def cancel(self, run_id: str, run: RunSummary, reason: str | None) -> ActionDone:
        check_cancellable(run_id, run)
        topic, key, message = self._messages(run.project).cancel(run_id, run.flow, reason)
        await self._sender.send_async(topic, key, message)
        return ActionDone(run_id, f"cancel of run {run_id} ({run.flow}) is in the log; the "
                          "processors stop its worker, timers, waits and child runs")

    async def retrigger(self, run_id: str, run: RunSummary) -> ActionDone:
        check_retriggerable(run_id, run)
        topic, new_run_id, message = self._messages(run.project).start(
            run.flow, run.input, run.app, None, None, run_id, trigger_of(run)
        )
        await self._sender.send_async(topic, new_run_id, message)
        return ActionDone(new_run_id, f"run {run_id} ({run.flow}) started again as run "
                          f"{new_run_id}")

    def close(self) -> None:
        self._sender.close()
