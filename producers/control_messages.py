"""The control messages a client writes, built and checked: a signal, a run's start (a
`start_run` command, or a `run.scheduled` event when it is due later or no app is named), a
cancel. Pure: `Client` sends what these return through its `ControlSender`.

A start with an idempotency key is always a `run.scheduled` (due now, or at `start_at`) whose
run id and event id are derived from the key and the window it falls in: a second start in the
window is a duplicate event, which the fold drops, so the run is started once, by the
processors' start timer. Two `start_run` commands of one run id could each execute a first
pass (a worker takes a start it sees first for a new run), which is why the key never makes a
`start_run` directly. Windows are fixed (epoch time // the window): two starts on either side
of a window's end start two runs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from steplog.durations import Duration, Instant, duration_ms, instant
from steplog.schemas.base import TriggerInfo, WireModel, new_event_id
from steplog.schemas.codec import validate_command, validate_event, validate_signal
from steplog.schemas.commands import new_command_id
from steplog.schemas.errors import InvalidEventError
from steplog.schemas.ids import derived_id, idempotent_run_id
from steplog.schemas.limits import NAME_MAX_CHARS
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
        expires_after: Duration | None = None,
    ) -> tuple[str, str, WireModel]:
        """(topic, run id, message) of a run's start; with `expires_after`, always a
        run.scheduled: the processors, which start it, are who can tell it came too late."""
        run_id = run_id if run_id is not None else uuid.uuid4().hex
        now = datetime.now(UTC)
        expires_after_ms = (
            None if expires_after is None else duration_ms(expires_after, field="expires_after")
        )
        if app is not None and start_at is None and expires_after_ms is None:
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
        return self.events_topic, run_id, self._scheduled(
            new_event_id(), workflow, data, app, due, run_id, now, expires_after_ms
        )

    def idempotent_start(
        self,
        workflow: str,
        data: object,
        app: str | None,
        start_at: Instant | None,
        key: str,
        window_ms: int,
    ) -> tuple[str, str, WireModel]:
        """(topic, run id, run.scheduled) of a start made once per `key` and window (module
        docstring); the run id is the same for every start of the window."""
        if not isinstance(key, str) or not key or len(key) > NAME_MAX_CHARS:
            raise InvalidEventError(
                "idempotency_key", f"{key!r} is not a key; expected a string of 1 to "
                f"{NAME_MAX_CHARS} characters (e.g. the order id)"
            )
        if window_ms < 1:
            raise InvalidEventError(
                "idempotency_window", f"{window_ms} ms; expected a window of at least 1 ms"
            )
        now = datetime.now(UTC)
        window = int(now.timestamp() * 1000) // window_ms
        run_id = idempotent_run_id(self.project, workflow, key, window_ms, window)
        due = now if start_at is None else instant(start_at, field="start_at")
        event_id = derived_id("idempotent-start", run_id)
        return self.events_topic, run_id, self._scheduled(
            event_id, workflow, data, app, due, run_id, now
        )

    def _scheduled(
        self,
        event_id: str,
        workflow: str,
        data: object,
        app: str | None,
        due: datetime,
        run_id: str,
        now: datetime,
        expires_after_ms: int | None = None,
    ) -> WireModel:
        return validate_event(
            {
                "event_id": event_id,
                "type": "run.scheduled",
                "project": self.project,
                "flow": workflow,
                "run_id": run_id,
                "ts": now,
                "seq": 0,
                "payload": {
                    "start_at": due, "app": app, "input": data,
                    "expires_after_ms": expires_after_ms,
                },
            },
            max_bytes=self.max_event_bytes,
        )

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
