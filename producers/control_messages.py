"""The control messages a client writes, built and checked: a signal, a run's start (a
`start_run` command, or a `run.scheduled` event when it is due later or no app is named), a
cancel. Pure: `Client` sends what these return through its `ControlSender`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from steplog.durations import Instant, instant
from steplog.schemas.base import TriggerInfo, WireModel, new_event_id
from steplog.schemas.codec import validate_command, validate_event, validate_signal
from steplog.schemas.commands import new_command_id
from steplog.schemas.signals import Signal
from steplog.schemas.topics import TopicNames

__all__ = ["ControlMessages"]


@dataclass(frozen=True)
class ControlMessages:
    """Builds one project's control messages; each method returns where it goes with it."""

    project: str
    topics: TopicNames
    events_topic: str
    """Where run events go (the client's events topic, which may differ from `topics`')."""
    max_event_bytes: int

    def signal(
        self, name: str, data: object, app: str | None, event_id: str | None
    ) -> tuple[str, Signal]:
        message = validate_signal(
            {
                "event_id": event_id or new_event_id(),
                "project": self.project,
                "name": name,
                "data": data,
                "app": app,
                "ts": datetime.now(UTC),
            },
            max_bytes=self.max_event_bytes,
        )
        return self.topics.signals, message

    def start(
        self,
        workflow: str,
        data: object,
        app: str | None,
        start_at: Instant | None,
        run_id: str | None,
        retrigger_of: str | None,
        trigger: TriggerInfo | None,
    ) -> tuple[str, str, WireModel]:
        """(topic, run id, message) of a run's start."""
        run_id = run_id if run_id is not None else uuid.uuid4().hex
        now = datetime.now(UTC)
        if app is not None and start_at is None:
            command = validate_command(
                {
                    "command_id": new_command_id(),
                    "type": "command.start_run",
                    "project": self.project,
                    "run_id": run_id,
                    "ts": now,
                    "workflow": workflow,
                    "app": app,
                    "input": data,
                    "trigger": trigger.model_dump() if trigger is not None else None,
                    "retrigger_of": retrigger_of,
                },
                max_bytes=self.max_event_bytes,
            )
            return self.topics.commands, run_id, command
        due = now if start_at is None else instant(start_at, field="start_at")
        event = validate_event(
            {
                "event_id": new_event_id(),
                "type": "run.scheduled",
                "project": self.project,
                "flow": workflow,
                "run_id": run_id,
                "ts": now,
                "seq": 0,
                "payload": {"start_at": due, "app": app, "input": data},
            },
            max_bytes=self.max_event_bytes,
        )
        return self.events_topic, run_id, event

    def cancel(self, run_id: str, flow: str, reason: str | None) -> tuple[str, str, WireModel]:
        """(topic, run id, message) of a run's cancel."""
        # seq 0: a run.completed or run.failed its worker wrote (any seq above 0) outranks the
        # cancel in the fold, so a run that ended before the cancel was seen keeps its ending.
        event = validate_event(
            {
                "event_id": new_event_id(),
                "type": "run.cancelled",
                "project": self.project,
                "flow": flow,
                "run_id": run_id,
                "ts": datetime.now(UTC),
                "seq": 0,
                "payload": {"reason": reason},
            },
            max_bytes=self.max_event_bytes,
        )
        return self.events_topic, run_id, event
