"""An app: the workflows one group of workers serves.

    app = steplog.App("shop")

    @app.workflow("order.process", triggers=["order.placed"], retries=steplog.Retries(attempts=3))
    async def process_order(ctx):
        ...

    app.worker().run()

The app's name is the workers' consumer group and what commands are addressed to; its project
stamps every event its runs write. A worker registers each workflow when it starts (a
`workflow.defined` on the flows topic, a `trigger.registered` per trigger on the signals
topic), which is how the processors learn which app runs a name and which names start runs.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TypeVar

from pydantic import ValidationError

from steplog.durations import Duration, duration_ms
from steplog.errors import WorkflowError
from steplog.schemas.base import new_event_id
from steplog.expressions import compile_condition
from steplog.schemas.flow_control import (
    Concurrency,
    Debounce,
    FlowControl,
    RateLimit,
    Throttle,
)
from steplog.schemas.flows import CancelOn, RetryPolicy, WorkflowDefinition
from steplog.schemas.limits import KEY_SEGMENT_PATTERN, NAME_MAX_CHARS
from steplog.schemas.schedules import MissedTicks
from steplog.schemas.signals import WAIT_CONDITION_NAMES, Idempotency, TriggerRegistered
from steplog.settings import Settings, load_settings

from .context import WorkflowFunction
from .schedules import cron_schedule
from .worker import Worker
from .workflow import Workflow

__all__ = [
    "App", "Concurrency", "Debounce", "RateLimit", "Retries", "Throttle", "Workflow", "load_app",
]

Retries = RetryPolicy
"""How a failing step is retried: `Retries(attempts=3, initial_delay_ms=50)`; the defaults are
RetryPolicy's (4 attempts, about 3 s, 1 min and 5 min apart, with jitter)."""

F = TypeVar("F", bound=WorkflowFunction)


class App:
    """A named group of workflows, served by `app.worker()`.

    - name: the app (no "/"); workers of one app share the commands addressed to it.
    - project: stamped on every event of its runs; default STEPLOG_PROJECT.
    - settings: Kafka and topics; default `load_settings()` (read when first needed).
    - retries: the default retry policy of its workflows.
    """

    def __init__(
        self,
        name: str,
        *,
        project: str | None = None,
        settings: Settings | None = None,
        retries: RetryPolicy | None = None,
    ) -> None:
        self._settings = settings
        self.name = name
        self.project = project if project is not None else self.settings.project
        self.retries = retries or RetryPolicy()
        self._workflows: dict[str, Workflow] = {}
        # Checked here, not at the first worker start: the same rules as the definition's.
        _check_segment("App name", name)
        _check_segment("project", self.project)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @property
    def workflows(self) -> Mapping[str, Workflow]:
        """The app's workflows by name."""
        return MappingProxyType(self._workflows)

    def workflow(
        self,
        name: str | None = None,
        *,
        triggers: Iterable[str] = (),
        retries: RetryPolicy | None = None,
        cancel_on: Iterable[CancelOn] = (),
        idempotency: str | None = None,
        idempotency_window: Duration = "24h",
        cron: str | None = None,
        timezone: str | None = None,
        missed: MissedTicks | None = None,
        expires_after: Duration | None = None,
        concurrency: Concurrency | None = None,
        throttle: Throttle | None = None,
        rate_limit: RateLimit | None = None,
        debounce: Debounce | None = None,
        priority: str | None = None,
    ) -> Callable[[F], F]:
        """Register an `async def fn(ctx)` as workflow `name` (default: the function's name).

        triggers: signal names that each start a run (`ctx.event` is the signal).
        retries: the retry policy of its steps (default: the app's).
        cancel_on: signals that cancel a running or waiting run, e.g.
            [CancelOn(event="order.cancelled", match="data.order_id")].
        idempotency: a path into the trigger event, e.g. "data.order_id": signals with one
            value there start one run per `idempotency_window` (fixed windows, default 24 h).
        cron: a run starts at each tick of this cron expression (5 fields, or 6 with seconds
        first), read on the wall clock of `timezone` (IANA, default UTC); `missed`: the ticks
        missed during an outage ("run_latest", the default, "run_all" or "skip");
        `expires_after`: a tick not started that long after its time ends `expired`.
        concurrency, throttle, rate_limit, debounce, priority: flow control, enforced by the
        processors (README, "Flow control"; schemas/flow_control.py).
        The function is returned unchanged.
        """
        cancel_rules = tuple(cancel_on)
        for index, rule in enumerate(cancel_rules):
            if not isinstance(rule, CancelOn):
                raise WorkflowError(f"cancel_on[{index}]: {rule!r} is not a CancelOn(event=...)")
            if rule.condition is not None:
                compile_condition(rule.condition, field=f"cancel_on[{index}].condition",
                                  names=WAIT_CONDITION_NAMES)
        if isinstance(triggers, str):
            raise WorkflowError(
                f"triggers: {triggers!r} is a string; expected a list of event names, "
                f"e.g. triggers=[{triggers!r}]"
            )
        trigger_names = tuple(triggers)

        def register(fn: F) -> F:
            workflow_name = name or str(getattr(fn, "__name__", ""))
            schedule = cron_schedule(workflow_name, cron, timezone, missed, expires_after)
            is_async = inspect.iscoroutinefunction(fn)
            if not is_async:
                raise WorkflowError(
                    f"workflow {workflow_name!r}: expected an async function "
                    f"(async def {workflow_name}(ctx): ...), got {fn!r}"
                )
            if workflow_name in self._workflows:
                raise WorkflowError(
                    f"workflow {workflow_name!r} is already registered in app {self.name!r}"
                )
            try:
                flow_control = _flow_control(concurrency, throttle, rate_limit, debounce, priority)
                workflow = Workflow(
                    workflow_name, fn, trigger_names, retries or self.retries,
                    cancel_on=cancel_rules,
                    idempotency=_idempotency(idempotency, idempotency_window), schedule=schedule, flow_control=flow_control,
                )
                workflow.definition(self.project, self.name)  # the wire rules, checked now
            except ValidationError as exc:
                raise WorkflowError(f"workflow {workflow_name!r}: {_first_problem(exc)}") from None
            self._workflows[workflow_name] = workflow
            return fn

        return register

    def definitions(self) -> list[WorkflowDefinition]:
        """What a worker registers on the flows topic at start, one per workflow."""
        return [w.definition(self.project, self.name) for w in self._workflows.values()]

    def trigger_registrations(self) -> list[TriggerRegistered]:
        """What a worker registers on the signals topic at start, one per trigger."""
        now = datetime.now(UTC)
        return [
            TriggerRegistered(
                event_id=new_event_id(),
                project=self.project,
                name=trigger,
                app=self.name,
                workflow=workflow.name,
                idempotency=workflow.idempotency,
                ts=now,
            )
            for workflow in self._workflows.values()
            for trigger in workflow.triggers
        ]

    def worker(self, *, settings: Settings | None = None, **options: Any) -> Worker:
        """A worker for this app (see `Worker` for the options: concurrency, ...)."""
        return Worker(self, settings=settings, **options)

    def __repr__(self) -> str:
        return f"App({self.name!r}, project={self.project!r}, workflows={list(self._workflows)})"


def load_app(target: str) -> App:
    """The App at `target`, "MODULE:ATTRIBUTE" (e.g. "shop.workflows:app"), imported the way
    `python -c "import MODULE"` would from the current directory."""
    module_name, colon, attribute = target.partition(":")
    if not colon or not module_name or not attribute:
        raise WorkflowError(
            f"{target!r}: expected MODULE:APP, e.g. shop.workflows:app (the module's import "
            "path, a colon, and the name of the steplog.App in it)"
        )
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise WorkflowError(
                f"{target!r}: no module named {exc.name!r} (from {os.getcwd()}); run from the "
                "directory the module is imported from, or install its package"
            ) from None
        raise
    found: object = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise WorkflowError(f"{target!r}: module {module_name!r} has no {attribute!r}")
        found = getattr(found, part)
    if not isinstance(found, App):
        raise WorkflowError(
            f"{target!r} is a {type(found).__name__}, not a steplog.App "
            "(app = steplog.App(\"name\"))"
        )
    return found


def _flow_control(
    concurrency: Concurrency | None, throttle: Throttle | None, rate_limit: RateLimit | None,
    debounce: Debounce | None, priority: str | None,
) -> FlowControl | None:
    if (concurrency, throttle, rate_limit, debounce, priority) == (None,) * 5:
        return None
    return FlowControl(concurrency=concurrency, throttle=throttle, rate_limit=rate_limit,
                       debounce=debounce, priority=priority)


def _idempotency(key: str | None, window: Duration) -> Idempotency | None:
    if key is None:
        return None
    # Validated with the definition (a ValidationError naming the field).
    return Idempotency.model_validate(
        {"key": key, "window_ms": duration_ms(window, field="idempotency_window")}
    )


def _check_segment(what: str, value: object) -> None:
    # schemas.limits.KeySegment: it becomes part of a key that '/' separates.
    if (not isinstance(value, str) or len(value) > NAME_MAX_CHARS
            or not re.fullmatch(KEY_SEGMENT_PATTERN, value)):
        raise WorkflowError(
            f"{what}: {value!r} is not usable; expected 1 to {NAME_MAX_CHARS} characters "
            "without '/' or control characters"
        )


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]
