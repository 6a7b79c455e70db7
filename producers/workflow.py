"""A workflow as an app declares it and a worker serves it, and what a worker needs of an app.

`producers.app.App` declares workflows and makes workers; the worker knows the app only as a
`ServedApp`, so the two modules do not import each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from steplog.expressions import compile_expression
from steplog.schemas.flow_control import PRIORITY_NAMES, FlowControl
from steplog.schemas.flows import CancelOn, RetryPolicy, WorkflowDefinition
from steplog.schemas.schedules import CronSchedule
from steplog.schemas.signals import Idempotency, TriggerRegistered
from steplog.settings import Settings

from .context import WorkflowFunction

__all__ = ["ServedApp", "Workflow"]


@dataclass(frozen=True)
class Workflow:
    """One workflow of an app: its function and how it is started and retried."""

    name: str
    fn: WorkflowFunction
    triggers: tuple[str, ...]
    retries: RetryPolicy
    cancel_on: tuple[CancelOn, ...] = ()
    idempotency: Idempotency | None = None
    schedule: CronSchedule | None = None
    flow_control: FlowControl | None = None

    def __post_init__(self) -> None:
        priority = self.flow_control.priority if self.flow_control is not None else None
        if priority is not None:
            # Refused here, where it is written, rather than counted as 0 at every start.
            compile_expression(priority, field=f"workflow {self.name!r}: priority",
                               names=PRIORITY_NAMES)

    def definition(self, project: str, app: str) -> WorkflowDefinition:
        return WorkflowDefinition(
            project=project,
            app=app,
            name=self.name,
            triggers=list(self.triggers),
            retries=self.retries,
            cancel_on=list(self.cancel_on),
            idempotency=self.idempotency,
            schedule=self.schedule,
            flow_control=self.flow_control,
            ts=datetime.now(UTC),
        )


class ServedApp(Protocol):
    """The app a worker serves: its name (the consumer group, what commands address), its
    project, settings and workflows, and what the worker registers when it starts."""

    name: str
    project: str

    @property
    def settings(self) -> Settings: ...

    @property
    def workflows(self) -> Mapping[str, Workflow]: ...

    def definitions(self) -> list[WorkflowDefinition]: ...

    def trigger_registrations(self) -> list[TriggerRegistered]: ...
